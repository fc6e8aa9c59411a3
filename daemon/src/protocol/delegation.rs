//! Delegation: the signed-in daemon provisions a new device of a local program's own (a light
//! client, a bot, an applet), with the user's consent, and hands the session over through a file
//! descriptor. No QR code, no rendezvous, no peer: the daemon runs the RFC 8628 device
//! authorization grant itself for a client it registers in the program's name.
//!
//! Two trust modes: with `share_secrets` the session carries the private cross-signing keys and
//! the backup key (the `m.login.secrets` form) and the program signs its own device; without, no
//! private key leaves the daemon, which signs the new device with its self-signing key once the
//! program uploaded the device's keys.
//!
//! Tokens issued for a flow that then fails or is cancelled are revoked (RFC 7009). What was
//! delegated is remembered (`DelegationRecords`) so that it can be listed and ended later.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use matrix_sdk::{
    Client, reqwest,
    ruma::{OwnedDeviceId, OwnedUserId, api::client::device::get_device},
};
use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio::{sync::mpsc, time::Instant};
use tracing::{Instrument, debug, info, info_span, warn};
use url::Url;

use super::{
    DelegationRecords, DelegationRequest, FlowCommand, FlowEvent, FlowHandle, FlowOutcome, FlowPort, Secret,
    SecretsSource, WireProtocol,
    device_grant::{self, GrantError, Metadata, Tokens},
    engine::{grant_error, split_commands},
    wire::policy,
};
use crate::error::{LinkError, Result};

/// How often the new device's keys are looked for once the session was taken.
const KEYS_POLL: Duration = Duration::from_secs(1);
/// Bound on the revocations a failed flow leaves behind, and on waiting for the homeserver to
/// forget a device after its session was revoked.
const CLEANUP_LIMIT: Duration = Duration::from_secs(10);
/// The MSC4191 action that asks the account management page to end one session.
pub const SESSION_END: &str = "org.matrix.session_end";

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
            Trust::SecretsShared => "secrets-shared",
            Trust::SignedByDaemon => "signed-by-daemon",
        }
    }
}

/// What a delegation flow needs from the daemon.
pub struct Delegator {
    pub http: reqwest::Client,
    pub allow_http: bool,
    /// `client_uri` of the registrations (the daemon's own; the program has none to give).
    pub client_uri: Url,
}

/// What a flow leaves to clean up when it does not end well.
#[derive(Default)]
struct Leftovers {
    /// Tokens issued for the new device, with the client they belong to.
    issued: Option<(String, Tokens)>,
    /// The device ID the record was kept under.
    remembered: Option<String>,
}

/// The flow's world: the account, what it shares, where it records, how it talks to the D-Bus side.
struct Run {
    delegator: Delegator,
    client: Client,
    user_id: OwnedUserId,
    metadata: Metadata,
    bundle: Option<matrix_sdk_base::crypto::types::SecretsBundle>,
    records: std::sync::Arc<dyn DelegationRecords>,
    request: DelegationRequest,
    events: mpsc::UnboundedSender<FlowEvent>,
    commands: mpsc::UnboundedReceiver<FlowCommand>,
}

impl Delegator {
    /// Checks what can be checked before the flow exists (signed in, the keys the chosen trust
    /// mode needs, an OAuth server that offers the device grant and registration), then runs the
    /// flow as a task.
    pub async fn start(
        self,
        client: Client,
        secrets: std::sync::Arc<dyn SecretsSource>,
        records: std::sync::Arc<dyn DelegationRecords>,
        request: DelegationRequest,
    ) -> Result<FlowHandle> {
        let user_id = client.user_id().map(ToOwned::to_owned).ok_or(LinkError::NotSignedIn)?;
        let bundle = if request.share_secrets {
            Some(secrets.secrets_bundle().await?)
        } else {
            let status = client.encryption().cross_signing_status().await;
            if !status.is_some_and(|s| s.has_self_signing) {
                return Err(LinkError::MissingSecrets(
                    "this device does not hold the self-signing key to sign the new device with".into(),
                ));
            }
            None
        };
        let metadata = device_grant::metadata(&self.http, &client.homeserver(), self.allow_http)
            .await
            .map_err(grant_error)?;
        if metadata.registration_endpoint.is_none() {
            return Err(grant_error(GrantError::NoRegistration));
        }
        let (handle, port) = FlowHandle::pair(WireProtocol::None);
        let FlowPort { events, commands, outcome } = port;
        let (commands, mut cancel) = split_commands(commands);
        let deadline = Instant::now() + request.timeout;
        let mut run =
            Run { delegator: self, client, user_id, metadata, bundle, records, request, events, commands };
        let span = info_span!("delegation", share_secrets = run.request.share_secrets);
        tokio::spawn(
            async move {
                let mut left = Leftovers::default();
                let result = tokio::select! {
                    r = run.body(&mut left) => r.map_err(Some),
                    _ = cancel.wait_for(|c| *c) => Err(None),
                    _ = tokio::time::sleep_until(deadline) => {
                        Err(Some(LinkError::Expired("the flow timed out".into())))
                    }
                };
                let end = match result {
                    Ok((device_id, trust)) => {
                        info!(trust = trust.as_str(), "delegated device signed in");
                        FlowOutcome::Success {
                            user_id: run.user_id.to_string(),
                            device_id,
                            homeserver_found: None,
                            trust: Some(trust.as_str()),
                        }
                    }
                    Err(error) => {
                        match &error {
                            Some(e) => info!(error = %e, "delegation stopped"),
                            None => info!("delegation cancelled"),
                        }
                        run.clean_up(left).await;
                        error.map(FlowOutcome::Failed).unwrap_or(FlowOutcome::Cancelled)
                    }
                };
                let _ = outcome.send(end);
            }
            .instrument(span),
        );
        Ok(handle)
    }
}

impl Run {
    fn emit(&self, ev: FlowEvent) {
        let _ = self.events.send(ev);
    }

    /// Waits for one command. `Cancel` never reaches here: it closes the channel and ends the flow
    /// from outside (`start`'s `select!`), so a closed channel waits for that to happen.
    async fn wait_for(&mut self, wanted: fn(&FlowCommand) -> bool) -> Result<()> {
        loop {
            match self.commands.recv().await {
                Some(cmd) if wanted(&cmd) => return Ok(()),
                Some(other) => debug!(?other, "ignored in this state"),
                None => std::future::pending::<()>().await,
            }
        }
    }

    async fn body(&mut self, left: &mut Leftovers) -> Result<(String, Trust)> {
        let http = self.delegator.http.clone();
        let client_id = device_grant::register(
            &http,
            &self.metadata,
            &self.request.client_name,
            &self.delegator.client_uri,
        )
        .await
        .map_err(grant_error)?;
        let device_id = device_grant::new_device_id();
        let auth = device_grant::authorize(&http, &self.metadata, &client_id, &device_id)
            .await
            .map_err(grant_error)?;
        let page = auth.verification_uri_complete.as_deref().unwrap_or(&auth.verification_uri);
        let page =
            policy::consent_page(page, &self.metadata.issuer, self.delegator.allow_http).map_err(|e| {
                LinkError::ProtocolError(format!("the OAuth server's consent page is refused: {e}"))
            })?;
        self.emit(FlowEvent::WaitingForApproval {
            verification_uri: Secret(page.into()),
            peer_device_id: Some(device_id.clone()),
            user_code: Some(Secret(auth.user_code.clone())),
        });
        // The D-Bus layer opens the consent page on `Approve`, before this returns.
        self.wait_for(|c| matches!(c, FlowCommand::Approve)).await?;
        info!("consent page opened; polling for the user's decision");
        self.emit(FlowEvent::WaitingForToken { user_code: None });
        let tokens =
            device_grant::poll_tokens(&http, &self.metadata, &client_id, &auth).await.map_err(grant_error)?;
        left.issued = Some((client_id.clone(), tokens.clone()));
        let homeserver = self.client.homeserver();
        let (user, seen_device) = device_grant::whoami(&http, &homeserver, &tokens.access_token).await?;
        if user != self.user_id || seen_device.is_some_and(|d| d != device_id) {
            return Err(LinkError::ProtocolError(
                "the homeserver gave the new session another account or device".into(),
            ));
        }
        self.records
            .remember(Record {
                device_id: device_id.clone(),
                client_name: self.request.client_name.clone(),
                device_display_name: self.request.device_display_name.clone(),
                created: SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0),
                client_id: client_id.clone(),
                access_token: tokens.access_token.clone(),
                refresh_token: tokens.refresh_token.clone(),
            })
            .await?;
        left.remembered = Some(device_id.clone());
        rename_device(&self.client, &device_id, &self.request.device_display_name).await;
        let document = self.session_document(&homeserver, &client_id, &device_id, &tokens);
        self.emit(FlowEvent::SessionReady(Secret(document)));
        let keys_deadline = Instant::now() + self.request.keys_timeout;
        let limit = self.request.keys_timeout.as_secs();
        tokio::time::timeout_at(keys_deadline, self.wait_for(|c| matches!(c, FlowCommand::SessionTaken)))
            .await
            .map_err(|_| LinkError::Expired(format!("the session was not taken within {limit} s")))??;
        info!("session handed over");
        if self.bundle.is_some() {
            return Ok((device_id, Trust::SecretsShared));
        }
        let device = OwnedDeviceId::from(device_id.as_str());
        tokio::time::timeout_at(keys_deadline, self.sign_when_keys_appear(&device)).await.map_err(
            |_| LinkError::Expired(format!("the new device did not upload its keys within {limit} s")),
        )??;
        info!("new device signed with our self-signing key");
        Ok((device_id, Trust::SignedByDaemon))
    }

    /// The JSON handed over through `TakeSession`.
    fn session_document(&self, homeserver: &Url, client_id: &str, device_id: &str, t: &Tokens) -> Vec<u8> {
        let mut doc = json!({
            "homeserver": homeserver.as_str(),
            "user_id": self.user_id.as_str(),
            "device_id": device_id,
            "issuer": self.metadata.issuer.as_str(),
            "client_id": client_id,
            "access_token": t.access_token,
            "refresh_token": t.refresh_token,
            "expires_in": t.expires_in,
        });
        if let Some(bundle) = &self.bundle {
            doc["secrets"] = serde_json::to_value(bundle).unwrap_or_default();
        }
        serde_json::to_vec(&doc).unwrap_or_default()
    }

    /// Asks the homeserver for our devices until the new one has keys, then signs it.
    async fn sign_when_keys_appear(&self, device: &OwnedDeviceId) -> Result<()> {
        let encryption = self.client.encryption();
        loop {
            if let Err(e) = encryption.request_user_identity(&self.user_id).await {
                debug!(error = %e, "keys query failed; trying again");
            }
            let found = encryption
                .get_device(&self.user_id, device)
                .await
                .map_err(|_| LinkError::Failed("cannot read our crypto store".into()))?;
            if let Some(found) = found {
                if found.is_cross_signed_by_owner() {
                    return Ok(());
                }
                return found.verify().await.map_err(|_| {
                    LinkError::Failed("signing the new device or uploading the signature failed".into())
                });
            }
            tokio::time::sleep(KEYS_POLL).await;
        }
    }

    /// After a failure or a cancel: the tokens go, and so does the record.
    async fn clean_up(&self, left: Leftovers) {
        if let Some((client_id, tokens)) = &left.issued {
            let revoked = tokio::time::timeout(
                CLEANUP_LIMIT,
                revoke_tokens(&self.delegator.http, &self.metadata, client_id, tokens),
            )
            .await;
            match revoked {
                Ok(true) => info!("the new device's tokens were revoked"),
                _ => {
                    warn!("the new device's tokens could not be revoked; end its session on the account page")
                }
            }
        }
        if let Some(device_id) = &left.remembered
            && let Err(e) = self.records.forget(device_id).await
        {
            warn!(error = %e, "could not forget the delegation record");
        }
    }
}

/// RFC 7009 for both tokens of a session. `true` when the server accepted both requests.
async fn revoke_tokens(http: &reqwest::Client, m: &Metadata, client_id: &str, tokens: &Tokens) -> bool {
    let mut ok = true;
    if let Some(refresh) = &tokens.refresh_token {
        ok &= device_grant::revoke(http, m, client_id, refresh, "refresh_token").await.is_ok();
    }
    ok & device_grant::revoke(http, m, client_id, &tokens.access_token, "access_token").await.is_ok()
}

/// Best effort: the device works without a display name.
async fn rename_device(client: &Client, device_id: &str, name: &str) {
    let device = OwnedDeviceId::from(device_id);
    match tokio::time::timeout(Duration::from_secs(10), client.rename_device(&device, name)).await {
        Ok(Ok(_)) => {}
        _ => debug!("could not set the new device's display name"),
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
            Ended::Revoked => "revoked",
            Ended::AccountPage(_) => "account-page",
        }
    }
}

/// Ends the session of a delegated device: by RFC 7009 revocation when the daemon still holds a
/// valid token of it, else (unless `revoke_only`) by naming the account management page that
/// ends it (MSC4191 `org.matrix.session_end`).
pub async fn end_session(
    http: &reqwest::Client,
    allow_http: bool,
    client: &Client,
    record: &Record,
    revoke_only: bool,
) -> Result<Option<Ended>> {
    let homeserver = client.homeserver();
    let m = device_grant::server_metadata(http, &homeserver, allow_http).await.map_err(grant_error)?;
    if let Some(tokens) = valid_tokens(http, &homeserver, &m, record).await {
        revoke_tokens(http, &m, &record.client_id, &tokens).await;
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
    page.query_pairs_mut().append_pair("action", SESSION_END).append_pair("device_id", &record.device_id);
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

/// Whether the homeserver forgot `device_id`, waiting a little for a session end to reach it.
async fn device_gone(client: &Client, device_id: &str) -> bool {
    let until = Instant::now() + CLEANUP_LIMIT;
    loop {
        if device_known(client, device_id).await == Some(false) {
            return true;
        }
        if Instant::now() >= until {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// `GET /devices/{id}` with the daemon's session: `Some(false)` on 404, `None` when unsure.
pub async fn device_known(client: &Client, device_id: &str) -> Option<bool> {
    match client.send(get_device::v3::Request::new(OwnedDeviceId::from(device_id))).await {
        Ok(_) => Some(true),
        Err(e) if e.as_client_api_error().is_some_and(|c| c.status_code.as_u16() == 404) => Some(false),
        Err(_) => None,
    }
}

/// A name a caller may choose (`client_name`, `device_display_name`) or give (a device ID): 1 to
/// 64 characters, no control characters, not blank.
pub fn valid_name(name: &str) -> bool {
    let n = name.chars().count();
    (1..=64).contains(&n) && !name.chars().any(char::is_control) && !name.trim().is_empty()
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
        };
        let s = format!("{r:?}");
        assert!(s.contains("DEV") && !s.contains("SECRET"), "{s}");
    }

    #[test]
    fn client_names_are_bounded_and_printable() {
        assert!(valid_name("Fractal") && valid_name(&"x".repeat(64)));
        assert!(!valid_name("") && !valid_name("   ") && !valid_name(&"x".repeat(65)));
        assert!(!valid_name("a\nb") && !valid_name("a\u{7}"));
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
}
