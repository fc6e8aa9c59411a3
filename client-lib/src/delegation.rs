//! Delegation: a light client (a bot, a terminal or GTK client, a Shell extension) asks the
//! signed-in daemon for a Matrix device of its own, with the user's consent, and receives the new
//! session through a file descriptor (`StartDelegation`, `Flow.TakeSession`).
//!
//! ```no_run
//! # async fn demo() -> Result<(), matrix_linkd_client::ClientError> {
//! use matrix_linkd_client::{DelegateOptions, Linkd};
//! let linkd = Linkd::connect().await?;
//! // The user consents from the daemon's notification; we wait for the session.
//! let session = linkd
//!     .delegate(DelegateOptions { client_name: "My bot".into(), ..Default::default() })
//!     .await?;
//! println!("signed in as {} on device {}", session.user_id, session.device_id);
//! # Ok(()) }
//! ```
//!
//! Two trust modes (`share_secrets`):
//! - `false` (default, least privilege): no private key leaves the daemon. The client must upload
//!   its device keys soon after taking the session (within the daemon's `timeouts.delegation_keys`;
//!   `DelegatedSession::into_client` does it); the daemon then signs the device with its
//!   self-signing key. Until then the flow must stay alive (see [`Linkd::delegate`]).
//! - `true`: the session carries the cross-signing private keys and the backup key (`secrets`); the
//!   client imports them and signs its own device.

use std::{
    collections::HashMap,
    fmt,
    io::{Read, Seek, SeekFrom},
    os::fd::OwnedFd,
    time::{Duration, SystemTime},
};

use serde::{Deserialize, Serialize};
use zbus::zvariant::Value;
use zeroize::{Zeroize, Zeroizing};

use crate::{ClientError, Flow, FlowEvent, Linkd, Result, State, api};

/// The largest session `Flow::take_session` reads (1 MiB); a bigger one is refused.
pub const SESSION_SIZE_LIMIT: u64 = 1 << 20;

/// Options of `StartDelegation`.
#[derive(Debug, Clone)]
pub struct DelegateOptions {
    /// The program's name, shown to the user and registered with the OAuth server (RFC 7591
    /// `client_name`); 1 to 64 printable characters. Default "Matrix client".
    pub client_name: String,
    /// Display name of the new device; the daemon's default is `client_name`.
    pub device_display_name: Option<String>,
    /// `true`: the session carries the cross-signing and backup keys and the client signs its own
    /// device. `false` (default): the daemon signs the device once the client uploaded its keys.
    pub share_secrets: bool,
    /// Show the daemon's notifications (Approve/Deny, result); `None`: the daemon's default (on).
    pub notify: Option<bool>,
    /// On Approve, open the consent page in the browser; `None`: the daemon's default (on).
    pub open_uri: Option<bool>,
    /// Bind the flow to the user instead of this connection, until it expires: it survives this
    /// process (e.g. a CLI that hands the session to another program). Refused to sandboxed callers.
    pub detached: bool,
    /// [`Linkd::delegate`] only: call `Approve` itself in `WaitingForApproval`, which opens the
    /// consent page (for a program with its own UI that already asked the user). Default `false`:
    /// the user approves from the daemon's notification.
    pub approve: bool,
}

impl Default for DelegateOptions {
    fn default() -> Self {
        Self {
            client_name: "Matrix client".into(),
            device_display_name: None,
            share_secrets: false,
            notify: None,
            open_uri: None,
            detached: false,
            approve: false,
        }
    }
}

/// The session `Flow.TakeSession` hands over: a new device of the signed-in account.
///
/// `Debug` prints no token and no secret; the tokens and secrets are zeroed on drop (best effort:
/// copies made by serialization are not). Serialize it only to a place as private as a keyring.
#[derive(Serialize, Deserialize)]
pub struct DelegatedSession {
    /// The homeserver's client API base URL.
    pub homeserver: String,
    pub user_id: String,
    pub device_id: String,
    /// The OAuth server's issuer.
    pub issuer: String,
    /// The OAuth client the daemon registered for this program.
    pub client_id: String,
    pub access_token: String,
    #[serde(default)]
    pub refresh_token: Option<String>,
    /// Lifetime of the access token in seconds, when it has one.
    #[serde(default)]
    pub expires_in: Option<u64>,
    /// With `share_secrets`: `{"cross_signing": {"master_key", "self_signing_key",
    /// "user_signing_key"}, "backup": {"algorithm", "key", "backup_version"}}` (m.login.secrets).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secrets: Option<serde_json::Value>,
}

struct Redacted;

impl fmt::Debug for Redacted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

impl fmt::Debug for DelegatedSession {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DelegatedSession")
            .field("homeserver", &self.homeserver)
            .field("user_id", &self.user_id)
            .field("device_id", &self.device_id)
            .field("access_token", &Redacted)
            .field("refresh_token", &self.refresh_token.as_ref().map(|_| Redacted))
            .field("expires_in", &self.expires_in)
            .field("secrets", &self.secrets.as_ref().map(|_| Redacted))
            .finish_non_exhaustive()
    }
}

impl Drop for DelegatedSession {
    fn drop(&mut self) {
        self.access_token.zeroize();
        self.refresh_token.zeroize();
        if let Some(secrets) = self.secrets.as_mut() {
            zeroize_value(secrets);
        }
    }
}

/// Zeroes every string in a JSON value (object keys are not secret).
pub(crate) fn zeroize_value(value: &mut serde_json::Value) {
    match value {
        serde_json::Value::String(s) => s.zeroize(),
        serde_json::Value::Array(items) => items.iter_mut().for_each(zeroize_value),
        serde_json::Value::Object(map) => map.values_mut().for_each(zeroize_value),
        _ => {}
    }
}

impl DelegatedSession {
    /// Parses the session JSON. Errors name the position only, never the content.
    pub fn from_json(bytes: &[u8]) -> Result<Self> {
        serde_json::from_slice(bytes).map_err(|e| {
            ClientError::Other(format!(
                "the session is not the expected JSON (line {}, column {})",
                e.line(),
                e.column()
            ))
        })
    }

    /// Whether the session carries the cross-signing and backup keys.
    pub fn has_secrets(&self) -> bool {
        self.secrets.is_some()
    }
}

/// Reads a session from `fd`: from offset 0 to its end, at most [`SESSION_SIZE_LIMIT`] bytes.
fn read_session(fd: OwnedFd) -> Result<DelegatedSession> {
    let mut file = std::fs::File::from(fd);
    let io = |e: std::io::Error| ClientError::Other(format!("cannot read the session: {e}"));
    // A memfd is read from offset 0; a pipe cannot seek and is read from where it is.
    let _ = file.seek(SeekFrom::Start(0));
    // Reserve up front so that the buffer is not reallocated (and copied) while reading.
    let size = file.metadata().map(|m| m.len()).unwrap_or(0).min(SESSION_SIZE_LIMIT);
    let mut buf = Zeroizing::new(Vec::with_capacity(size as usize + 1));
    file.take(SESSION_SIZE_LIMIT + 1).read_to_end(&mut buf).map_err(io)?;
    if buf.len() as u64 > SESSION_SIZE_LIMIT {
        return Err(ClientError::Other("the session is larger than 1 MiB".into()));
    }
    DelegatedSession::from_json(&buf)
}

/// A device the daemon delegated (`ListDelegations`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delegation {
    pub device_id: String,
    pub client_name: String,
    pub device_display_name: String,
    pub created: SystemTime,
}

/// How `RevokeDelegation` ended the device's session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Revoked {
    /// The daemon revoked the session's token; the device is gone.
    Revoked,
    /// The daemon held no valid token any more: it opened the account management page for the
    /// user to confirm; the device leaves the list once the homeserver no longer knows it.
    AccountPage,
}

impl Revoked {
    fn parse(how: &str) -> Result<Self> {
        match how {
            api::revoke::REVOKED => Ok(Revoked::Revoked),
            api::revoke::ACCOUNT_PAGE => Ok(Revoked::AccountPage),
            other => Err(ClientError::Other(format!("the daemon answered an unknown revocation {other:?}"))),
        }
    }
}

impl Linkd {
    /// Starts a delegation (`StartDelegation`); the flow is subscribed to before it exists.
    ///
    /// Follow it with [`Flow::next_event`]: `WaitingForApproval` (the user consents from the
    /// daemon's notification, or call [`Flow::approve`]), `WaitingForToken`, then `SyncingSecrets`,
    /// where [`Flow::take_session`] hands over the session. Keep the flow (and this connection)
    /// alive until it ends: a flow whose owner leaves the bus is cancelled and the daemon revokes the
    /// tokens it issued (unless `detached`).
    pub async fn start_delegation(&self, options: DelegateOptions) -> Result<Flow> {
        let token = crate::new_token();
        let mut opts: HashMap<&str, Value<'_>> = HashMap::new();
        opts.insert(api::options::HANDLE_TOKEN, Value::from(token.clone()));
        opts.insert(api::options::DETACHED, Value::from(options.detached));
        opts.insert(api::options::CLIENT_NAME, Value::from(options.client_name));
        opts.insert(api::options::SHARE_SECRETS, Value::from(options.share_secrets));
        if let Some(name) = options.device_display_name {
            opts.insert(api::options::DEVICE_DISPLAY_NAME, Value::from(name));
        }
        if let Some(notify) = options.notify {
            opts.insert(api::options::NOTIFY, Value::from(notify));
        }
        if let Some(open_uri) = options.open_uri {
            opts.insert(api::options::OPEN_URI, Value::from(open_uri));
        }
        self.start(&token, |m| async move { m.start_delegation(opts).await }).await
    }

    /// The whole delegation for a program that lets the daemon's notification ask the user (or,
    /// with `options.approve`, approves itself, which opens the consent page): starts the flow,
    /// follows it and returns the session once the daemon hands it over. A cancelled or failed flow
    /// is `ClientError::Cancelled` or `ClientError::Daemon`.
    ///
    /// The flow is not over when this returns: without `share_secrets` the daemon waits for the
    /// device's keys to sign them. A task on the current Tokio runtime keeps the flow (and the bus
    /// connection) until it ends, so dropping this `Linkd` does not cancel it; the program must
    /// upload the device keys (`DelegatedSession::into_client`, feature `matrix-sdk`, does) within
    /// the daemon's `timeouts.delegation_keys`, or the daemon revokes the session. To learn the outcome
    /// (`SignedIn::trust`), use [`Linkd::start_delegation`], [`Flow::take_session`] and
    /// [`Flow::result`] instead.
    pub async fn delegate(&self, options: DelegateOptions) -> Result<DelegatedSession> {
        if !options.approve && options.notify == Some(false) {
            return Err(ClientError::Other(
                "nobody could consent: leave the notification on or approve from the program".into(),
            ));
        }
        let approve = options.approve;
        let mut flow = self.start_delegation(options).await?;
        let mut state = flow.state();
        let mut approved = false;
        loop {
            match state {
                State::WaitingForApproval if approve && !approved => {
                    flow.approve().await?;
                    approved = true;
                }
                State::SyncingSecrets => {
                    let session = flow.take_session().await;
                    if session.is_err() {
                        // Nobody could use the tokens: let the daemon revoke them now.
                        flow.cancel().await.ok();
                    }
                    tokio::spawn(async move {
                        let _ = flow.result().await;
                    });
                    return session;
                }
                _ => {}
            }
            match flow.next_event().await? {
                Some(FlowEvent::State(s)) => state = s,
                Some(FlowEvent::QrCodeReplaced(_)) => {}
                None => {
                    flow.result().await?;
                    return Err(ClientError::Other(
                        "the delegation ended without handing over a session".into(),
                    ));
                }
            }
        }
    }

    /// The devices the daemon delegated and the homeserver still knows (`ListDelegations`).
    pub async fn list_delegations(&self) -> Result<Vec<Delegation>> {
        Ok(self
            .manager
            .list_delegations()
            .await?
            .into_iter()
            .map(|(device_id, client_name, device_display_name, created)| Delegation {
                device_id,
                client_name,
                device_display_name,
                created: SystemTime::UNIX_EPOCH
                    .checked_add(Duration::from_secs(created))
                    .unwrap_or(SystemTime::UNIX_EPOCH),
            })
            .collect())
    }

    /// Ends a delegated device's session (`RevokeDelegation`).
    pub async fn revoke_delegation(&self, device_id: &str) -> Result<Revoked> {
        Revoked::parse(&self.manager.revoke_delegation(device_id).await?)
    }
}

impl Flow {
    /// The session of a delegation in `SyncingSecrets` (`TakeSession`, once): the fd's content, at
    /// most 1 MiB of JSON.
    pub async fn take_session(&self) -> Result<DelegatedSession> {
        let fd: OwnedFd = self.proxy.take_session().await?.into();
        tokio::task::spawn_blocking(move || read_session(fd))
            .await
            .map_err(|e| ClientError::Other(format!("reading the session: {e}")))?
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    const JSON: &str = r#"{
        "homeserver": "https://matrix.example.org/",
        "user_id": "@alice:example.org",
        "device_id": "DELEGATED1",
        "issuer": "https://auth.example.org/",
        "client_id": "01JCLIENT",
        "access_token": "mat_SECRETACCESS",
        "refresh_token": "mar_SECRETREFRESH",
        "expires_in": 300,
        "secrets": {
            "cross_signing": {
                "master_key": "SECRETMASTER",
                "self_signing_key": "SECRETSELF",
                "user_signing_key": "SECRETUSER"
            },
            "backup": {"algorithm": "m.megolm_backup.v1.curve25519-aes-sha2", "key": "SECRETBACKUP", "backup_version": "1"}
        },
        "future_field": true
    }"#;

    #[test]
    fn debug_redacts_tokens_and_secrets() {
        let session = DelegatedSession::from_json(JSON.as_bytes()).unwrap();
        for text in [format!("{session:?}"), format!("{session:#?}")] {
            assert!(!text.contains("SECRET"), "{text}");
            assert!(!text.contains("mat_") && !text.contains("mar_"), "{text}");
            assert!(text.contains("@alice:example.org") && text.contains("DELEGATED1"), "{text}");
            assert!(text.contains("https://matrix.example.org/"), "{text}");
            assert!(text.contains("<redacted>"), "{text}");
        }
        assert!(session.has_secrets());
    }

    #[test]
    fn parses_and_round_trips() {
        let session = DelegatedSession::from_json(JSON.as_bytes()).unwrap();
        assert_eq!(session.refresh_token.as_deref(), Some("mar_SECRETREFRESH"));
        assert_eq!(session.expires_in, Some(300));
        let again = DelegatedSession::from_json(&serde_json::to_vec(&session).unwrap()).unwrap();
        assert_eq!(again.access_token, session.access_token);
        assert_eq!(again.secrets, session.secrets);

        let minimal = r#"{"homeserver":"h","user_id":"@u:h","device_id":"D","issuer":"i",
            "client_id":"c","access_token":"t","refresh_token":null,"expires_in":null}"#;
        let session = DelegatedSession::from_json(minimal.as_bytes()).unwrap();
        assert!(session.refresh_token.is_none() && session.expires_in.is_none() && !session.has_secrets());
        assert!(!String::from_utf8(serde_json::to_vec(&session).unwrap()).unwrap().contains("secrets"));
    }

    #[test]
    fn errors_do_not_quote_the_session() {
        let bad = r#"{"homeserver":"h","user_id":"@u:h","device_id":"D","issuer":"i",
            "client_id":"c","access_token":"t","expires_in":"SECRETVALUE"}"#;
        let err = DelegatedSession::from_json(bad.as_bytes()).unwrap_err().to_string();
        assert!(!err.contains("SECRETVALUE"), "{err}");
    }

    #[test]
    fn zeroize_walks_values() {
        let mut value: serde_json::Value = serde_json::from_str(JSON).unwrap();
        zeroize_value(&mut value);
        assert!(!value.to_string().contains("SECRET"));
    }

    fn fd_with(bytes: &[u8]) -> OwnedFd {
        let mut file = tempfile::tempfile().unwrap();
        file.write_all(bytes).unwrap();
        // Left at its end: read_session reads from offset 0 all the same.
        file.into()
    }

    #[test]
    fn reads_fd_from_start_with_a_cap() {
        let session = read_session(fd_with(JSON.as_bytes())).unwrap();
        assert_eq!(session.device_id, "DELEGATED1");

        let mut big = JSON.as_bytes().to_vec();
        big.resize(SESSION_SIZE_LIMIT as usize + 1, b' ');
        let err = read_session(fd_with(&big)).unwrap_err().to_string();
        assert!(err.contains("1 MiB"), "{err}");
    }

    #[test]
    fn revocation_answers() {
        assert_eq!(Revoked::parse("revoked").unwrap(), Revoked::Revoked);
        assert_eq!(Revoked::parse("account-page").unwrap(), Revoked::AccountPage);
        assert!(Revoked::parse("maybe").is_err());
    }

    #[test]
    fn default_options() {
        let o = DelegateOptions::default();
        assert_eq!(o.client_name, "Matrix client");
        assert!(!o.share_secrets && !o.approve && !o.detached && o.notify.is_none());
    }
}
