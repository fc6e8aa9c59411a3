//! What the daemon keeps of the devices it delegated to local programs (the flow that makes one
//! is `engine/delegation.rs`), and how such a session ends: by RFC 7009 revocation while the
//! daemon still holds a valid token of it, else on the account management page.

use std::time::Duration;

use matrix_linkd_api::{results::trust, revoke};
use matrix_sdk::{Client, reqwest};
use serde::{Deserialize, Serialize};
use tokio::time::Instant;
use tracing::warn;
use url::Url;

use super::{
    device_grant::{self, Metadata, Tokens},
    devices,
};
use crate::{
    error::{LinkError, Result},
    net::Reach,
};

/// Bound on waiting for the homeserver to forget a device after its session was revoked.
const FORGET_LIMIT: Duration = Duration::from_secs(10);
/// The account management action that ends one device's session, as spec v1.18 names it.
pub const DEVICE_DELETE: &str = "org.matrix.device_delete";
/// Its earlier MSC4191 name, which servers (MAS) still advertise beside it.
pub const SESSION_END: &str = "org.matrix.session_end";

/// The action to ask the account page for, as the server advertises its actions: the stable name
/// first, else the earlier one; a server that lists neither gets the stable name.
pub fn end_action(supported: &[String]) -> &'static str {
    let offers = |a: &str| supported.iter().any(|s| s == a);
    if !offers(DEVICE_DELETE) && offers(SESSION_END) { SESSION_END } else { DEVICE_DELETE }
}

/// What the daemon keeps of one delegated device (in the Secret Service). Not `Debug`-printed
/// beyond its public parts.
#[derive(Clone, Serialize, Deserialize)]
pub struct Record {
    pub device_id: String,
    pub client_name: String,
    pub device_display_name: String,
    /// Seconds since the Unix epoch.
    pub created: u64,
    pub client_id: String,
    /// The tokens as handed over: valid until the program refreshes them (rotation).
    pub access_token: String,
    pub refresh_token: Option<String>,
    /// The sandboxed app the device is for (its Flatpak or Snap app ID); `None` for a program
    /// outside a sandbox. A sandboxed app sees and revokes only its own devices.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub app_id: Option<String>,
}

impl std::fmt::Debug for Record {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Record")
            .field("device_id", &self.device_id)
            .field("client_name", &self.client_name)
            .field("created", &self.created)
            .finish_non_exhaustive()
    }
}

/// How a delegated device got verified: the `trust` entry of the `Response`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trust {
    /// The program got the keys and signs its own device.
    SecretsShared,
    /// The daemon signed the device with its self-signing key.
    SignedByDaemon,
}

impl Trust {
    pub fn as_str(self) -> &'static str {
        match self {
            Trust::SecretsShared => trust::SECRETS_SHARED,
            Trust::SignedByDaemon => trust::SIGNED_BY_DAEMON,
        }
    }
}

/// How `RevokeDelegation` ended a delegated session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ended {
    /// Revoked with a token the daemon still held; the homeserver no longer knows the device.
    Revoked,
    /// The user must confirm on this account management page.
    AccountPage(Url),
}

impl Ended {
    pub fn as_str(&self) -> &'static str {
        match self {
            Ended::Revoked => revoke::REVOKED,
            Ended::AccountPage(_) => revoke::ACCOUNT_PAGE,
        }
    }
}

/// Ends the session of a delegated device: by RFC 7009 revocation when the daemon still holds a
/// valid token of it, else (unless `revoke_only`) by naming the account management page that
/// ends it (the advertised action, `org.matrix.device_delete` first: [`end_action`]).
pub async fn end_session(
    http: &reqwest::Client,
    reach: Reach,
    client: &Client,
    record: &Record,
    revoke_only: bool,
) -> Result<Option<Ended>> {
    let homeserver = client.homeserver();
    let m = device_grant::server_metadata(http, &homeserver, reach).await?;
    if let Some(tokens) = valid_tokens(http, &homeserver, &m, record).await {
        let _ = revoke(http, &m, &record.client_id, &tokens).await;
        if device_gone(client, &record.device_id).await {
            return Ok(Some(Ended::Revoked));
        }
        warn!("the session was revoked but the homeserver still knows the device");
    }
    if revoke_only {
        return Ok(None);
    }
    let mut page = m.account_management_uri.clone().ok_or_else(|| {
        LinkError::Unsupported(
            "no valid token of that session is left and the OAuth server names no account page".into(),
        )
    })?;
    let action = end_action(&m.account_management_actions_supported);
    page.query_pairs_mut().append_pair("action", action).append_pair("device_id", &record.device_id);
    Ok(Some(Ended::AccountPage(page)))
}

/// A token of the delegated session that the server still honours. The refresh token is the
/// honest test: the OAuth server answers it at once (`invalid_grant` once the program rotated it),
/// while a homeserver may keep accepting an access token it cached (Synapse: for minutes). Only a
/// session without a refresh token is judged by its access token.
async fn valid_tokens(
    http: &reqwest::Client,
    homeserver: &Url,
    m: &Metadata,
    record: &Record,
) -> Option<Tokens> {
    if let Some(refresh) = record.refresh_token.as_deref() {
        return device_grant::refresh(http, m, &record.client_id, refresh).await.ok();
    }
    match device_grant::whoami(http, homeserver, &record.access_token).await {
        Ok((_, Some(device))) if device == record.device_id => {
            Some(Tokens { access_token: record.access_token.clone(), refresh_token: None, expires_in: None })
        }
        _ => None,
    }
}

/// RFC 7009 for both tokens of a delegated session (`Ok` when the server accepted both).
pub async fn revoke(http: &reqwest::Client, m: &Metadata, client_id: &str, tokens: &Tokens) -> Result<()> {
    device_grant::revoke_session(
        http,
        m.revocation_endpoint.as_ref(),
        client_id,
        &tokens.access_token,
        tokens.refresh_token.as_deref(),
    )
    .await
    .map_err(Into::into)
}

/// Whether the homeserver forgot `device_id`, waiting a little for a session end to reach it.
async fn device_gone(client: &Client, device_id: &str) -> bool {
    let until = Instant::now() + FORGET_LIMIT;
    loop {
        if devices::known(client, device_id).await == Some(false) {
            return true;
        }
        if Instant::now() >= until {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// A name a caller may choose (`client_name`, `device_display_name`) or give (a device ID): 1 to
/// 64 characters, not blank, and none that a person cannot see for what it is: no control or
/// format characters (bidirectional overrides such as U+202E, zero-width ones), no line or
/// paragraph separators, nothing private-use or unassigned. The name reaches the consent page,
/// the homeserver's device list and `ListDelegations` as given.
pub fn valid_name(name: &str) -> bool {
    use unicode_properties::{GeneralCategory as G, UnicodeGeneralCategory as _};
    let hidden = |c: char| {
        matches!(
            c.general_category(),
            G::Control | G::Format | G::LineSeparator | G::ParagraphSeparator | G::PrivateUse | G::Unassigned
        )
    };
    let n = name.chars().count();
    (1..=64).contains(&n) && !name.chars().any(hidden) && !name.trim().is_empty()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_do_not_print_tokens() {
        let r = Record {
            device_id: "DEV".into(),
            client_name: "bot".into(),
            device_display_name: "bot".into(),
            created: 1,
            client_id: "cid".into(),
            access_token: "ACCESS-SECRET".into(),
            refresh_token: Some("REFRESH-SECRET".into()),
            app_id: None,
        };
        let s = format!("{r:?}");
        assert!(s.contains("DEV") && !s.contains("SECRET"), "{s}");
    }

    #[test]
    fn client_names_are_bounded_and_printable() {
        assert!(valid_name("Fractal") && valid_name(&"x".repeat(64)));
        assert!(!valid_name("") && !valid_name("   ") && !valid_name(&"x".repeat(65)));
        assert!(!valid_name("a\nb") && !valid_name("a\u{7}"));
        for hidden in ['\u{202E}', '\u{200B}', '\u{2028}', '\u{2029}', '\u{FEFF}', '\u{E000}', '\u{061C}'] {
            assert!(!valid_name(&format!("evil{hidden}gpj.exe")), "{:?}", hidden);
        }
        assert!(valid_name("Élément — ünïcode ✓ 日本"));
        assert_eq!(Trust::SignedByDaemon.as_str(), "signed-by-daemon");
    }

    #[test]
    fn revoke_only_needs_no_page_and_pages_carry_the_action() {
        let mut page = Url::parse("https://auth.example/account").unwrap();
        page.query_pairs_mut().append_pair("action", SESSION_END).append_pair("device_id", "AB CD");
        assert_eq!(
            page.as_str(),
            "https://auth.example/account?action=org.matrix.session_end&device_id=AB+CD"
        );
        assert_eq!(Ended::AccountPage(page).as_str(), "account-page");
    }

    #[test]
    fn the_advertised_end_action_is_used_the_stable_one_first() {
        let list = |a: &[&str]| a.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        // MAS advertises both names.
        assert_eq!(end_action(&list(&[SESSION_END, DEVICE_DELETE, "org.matrix.profile"])), DEVICE_DELETE);
        assert_eq!(end_action(&list(&["org.matrix.profile", SESSION_END])), SESSION_END);
        assert_eq!(end_action(&list(&[])), DEVICE_DELETE);
    }
}
