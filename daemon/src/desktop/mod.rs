//! Desktop glue: notifications, opening the verification URI, QR rendering. Every piece is
//! optional at run time: with no notification server or portal, flows still work over D-Bus.

pub mod qr;

use std::time::Duration;

use notify_rust::{Notification, NotificationResponse, Timeout};
use tracing::{debug, info, warn};

const APP_NAME: &str = "matrix-linkd";

/// The user's answer to the approval notification.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Choice {
    Approve,
    Deny,
}

/// Whether the notification server can show buttons.
async fn server_has_actions() -> bool {
    let caps = tokio::task::spawn_blocking(notify_rust::get_capabilities);
    match tokio::time::timeout(Duration::from_secs(5), caps).await {
        Ok(Ok(Ok(caps))) => caps.iter().any(|c| c == "actions"),
        _ => false,
    }
}

/// Shows "approve this new device?" and waits for a click. `None` when there is no notification
/// server, it has no actions, or the notification was closed without a choice: the D-Bus owner
/// can still call `Approve`/`Cancel`.
pub async fn ask_approval() -> Option<Choice> {
    let with_actions = server_has_actions().await;
    let mut n = Notification::new();
    n.appname(APP_NAME)
        .summary("Sign in a new device?")
        .body(
            "A device asks to sign in to your Matrix account through this computer. \
             Approve only if you started this yourself.",
        )
        .icon("dialog-password")
        .timeout(Timeout::Never);
    if with_actions {
        n.action("default", "Approve").action("deny", "Deny");
    }
    let handle = match n.show_async().await {
        Ok(h) => h,
        Err(e) => {
            debug!(error = %e, "no notification server");
            return None;
        }
    };
    if !with_actions {
        return None;
    }
    let mut choice = None;
    handle
        .wait_for_action_async(|response| {
            choice = match response {
                NotificationResponse::Default => Some(Choice::Approve),
                NotificationResponse::Action(a) if a == "default" => Some(Choice::Approve),
                NotificationResponse::Action(a) if a == "deny" => Some(Choice::Deny),
                _ => None,
            }
        })
        .await;
    info!(?choice, "approval notification answered");
    choice
}

/// A one-line result notification. Never carries a secret.
pub async fn notify_result(summary: &str, body: &str) {
    let mut n = Notification::new();
    n.appname(APP_NAME).summary(summary).body(body).timeout(Timeout::Milliseconds(10_000));
    if let Err(e) = n.show_async().await {
        debug!(error = %e, "result notification not shown");
    }
}

/// Opens `uri` in the user's browser: the OpenURI portal first, `xdg-open` second.
pub async fn open_uri(uri: &str) -> bool {
    let Ok(parsed) = ashpd::Uri::parse(uri) else {
        warn!("verification URI is not a valid URI; not opening it");
        return false;
    };
    let portal = ashpd::desktop::open_uri::OpenFileRequest::default().ask(false).send_uri(&parsed);
    match tokio::time::timeout(Duration::from_secs(10), portal).await {
        Ok(Ok(_)) => {
            info!("verification URI opened through the OpenURI portal");
            return true;
        }
        Ok(Err(e)) => debug!(error = %e, "OpenURI portal unavailable"),
        Err(_) => debug!("OpenURI portal did not answer"),
    }
    let spawned = tokio::process::Command::new("xdg-open")
        .arg(uri)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status();
    match tokio::time::timeout(Duration::from_secs(10), spawned).await {
        Ok(Ok(status)) if status.success() => {
            info!("verification URI opened with xdg-open");
            true
        }
        _ => {
            warn!("could not open the verification URI; the caller must show it");
            false
        }
    }
}
