//! What a sandboxed app may do, per app and per permission, as xdg-desktop-portal keeps such
//! answers: in its permission store (`matrix_linkd_api::permissions`), so that
//! `flatpak permission-show APP` and `flatpak permission-reset APP` work on them.
//!
//! - Programs outside a sandbox are the user's own: everything, as before.
//! - An app listed in `security.allowed_sandboxed_apps` (the administrator's override) may
//!   delegate, grant and log in without being asked; handing it the secrets is still the user's
//!   answer.
//! - Otherwise the user is asked once per permission, in a notification with Allow / Deny, and the
//!   answer is remembered. No answer (or no notification server, or `desktop.notifications` off)
//!   is a refusal that is not remembered: the app may ask again later.
//!
//! Whatever the answers, a sandboxed app never hides the notifications (`notify: false`), never
//! starts detached flows, never signs the daemon out, and sees and revokes only the devices it
//! got itself (see `manager.rs`).

use std::{collections::HashMap, time::Duration};

use matrix_linkd_api::permissions as store;
use tracing::{debug, info, warn};
use zbus::{Connection, zvariant::OwnedValue};

use crate::{
    config::Config,
    desktop::{self, Choice},
    error::{LinkError, Result},
};

/// How long a `Start*` call waits for the user's answer to a permission question.
const ASK_WAIT: Duration = Duration::from_secs(60);
/// How long one call to the permission store may take.
const STORE_TIMEOUT: Duration = Duration::from_secs(5);

/// One thing a sandboxed app may be allowed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Permission {
    Delegate,
    ShareSecrets,
    Grant,
    Login,
}

impl Permission {
    /// The entry in our table of the permission store.
    pub fn id(self) -> &'static str {
        match self {
            Permission::Delegate => store::DELEGATE,
            Permission::ShareSecrets => store::SHARE_SECRETS,
            Permission::Grant => store::GRANT,
            Permission::Login => store::LOGIN,
        }
    }

    /// What the app asks to do, as the question says it.
    fn what(self) -> &'static str {
        match self {
            Permission::Delegate => "get a Matrix device of its own on your account",
            Permission::ShareSecrets => "receive your cross-signing and key backup secrets with its device",
            Permission::Grant => "sign other devices in to your Matrix account",
            Permission::Login => "sign this computer in to a Matrix account",
        }
    }
}

/// The store's answer for `app` and `permission`: `Ok(None)` when nothing is remembered, `Err`
/// when there is no store to ask.
async fn remembered(
    conn: &Connection,
    app: &str,
    permission: Permission,
) -> std::result::Result<Option<bool>, ()> {
    let body = (store::TABLE, permission.id());
    let call = conn.call_method(
        Some(store::STORE_BUS_NAME),
        store::STORE_PATH,
        Some(store::STORE_INTERFACE),
        "Lookup",
        &body,
    );
    let reply = match tokio::time::timeout(STORE_TIMEOUT, call).await {
        Ok(Ok(reply)) => reply,
        Ok(Err(zbus::Error::MethodError(name, _, _))) if name.as_str() == store::STORE_NOT_FOUND => {
            return Ok(None);
        }
        Ok(Err(e)) => {
            debug!(error = %e, "permission store lookup failed");
            return Err(());
        }
        Err(_) => return Err(()),
    };
    let (apps, _data): (HashMap<String, Vec<String>>, OwnedValue) =
        reply.body().deserialize().map_err(|_| ())?;
    Ok(apps.get(app).and_then(|answer| match answer.first().map(String::as_str) {
        Some(store::YES) => Some(true),
        Some(store::NO) => Some(false),
        _ => None,
    }))
}

/// Keeps the user's answer; `false` when it cannot be kept.
async fn remember(conn: &Connection, app: &str, permission: Permission, allowed: bool) -> bool {
    let answer = [if allowed { store::YES } else { store::NO }];
    let body = (store::TABLE, true, permission.id(), app, &answer[..]);
    let call = conn.call_method(
        Some(store::STORE_BUS_NAME),
        store::STORE_PATH,
        Some(store::STORE_INTERFACE),
        "SetPermission",
        &body,
    );
    matches!(tokio::time::timeout(STORE_TIMEOUT, call).await, Ok(Ok(_)))
}

/// May the sandboxed app `app` have `permission`? Asks the user when nobody answered yet.
pub async fn check(conn: &Connection, config: &Config, app: &str, permission: Permission) -> Result<()> {
    let listed = config.security.allowed_sandboxed_apps.iter().any(|a| a == app);
    if listed && permission != Permission::ShareSecrets {
        return Ok(());
    }
    let what = permission.what();
    let denied = || {
        LinkError::NotAllowed(format!(
            "the user did not allow {app} to {what} (`flatpak permission-reset {app}` forgets the answer)"
        ))
    };
    let stored = remembered(conn, app, permission).await;
    match stored {
        Ok(Some(true)) => return Ok(()),
        Ok(Some(false)) => return Err(denied()),
        Ok(None) => {}
        Err(()) => debug!("no permission store: an answer would not be remembered"),
    }
    if !config.desktop.notifications {
        return Err(LinkError::NotAllowed(format!(
            "{app} may not {what}: it is not allow-listed and the user cannot be asked (desktop.notifications \
             is off)"
        )));
    }
    info!(app, permission = permission.id(), "asking the user about a sandboxed app");
    let choice = desktop::ask_permission(conn, app, what, ASK_WAIT).await;
    let Some(choice) = choice else {
        return Err(LinkError::NotAllowed(format!(
            "{app} may not {what}: the user was asked and has not answered (or cannot be asked)"
        )));
    };
    let allowed = choice == Choice::Approve;
    if stored.is_ok() && !remember(conn, app, permission, allowed).await {
        warn!(app, permission = permission.id(), "the user's answer could not be remembered");
    }
    if allowed { Ok(()) } else { Err(denied()) }
}

/// Whether the sandboxed app `app` may use the daemon at all (read the account's details): it is
/// allow-listed, or the user allowed it something.
pub async fn may_use(conn: &Connection, config: &Config, app: &str) -> bool {
    if config.security.allowed_sandboxed_apps.iter().any(|a| a == app) {
        return true;
    }
    for permission in [Permission::Delegate, Permission::ShareSecrets, Permission::Grant, Permission::Login] {
        if remembered(conn, app, permission).await == Ok(Some(true)) {
            return true;
        }
    }
    false
}
