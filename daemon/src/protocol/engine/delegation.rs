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
//! delegated is remembered (`DelegationRecords`) so that it can be listed and ended later
//! (`protocol::delegated`).

use std::time::{SystemTime, UNIX_EPOCH};

use matrix_sdk::ruma::{OwnedDeviceId, OwnedUserId};
use serde_json::json;
use tracing::warn;

use super::*;
use crate::protocol::{
    DelegationRecords, DelegationRequest,
    delegated::{self, Record, Trust},
    device_grant::{Metadata, Tokens},
    devices,
    wire::policy,
};

/// How often the new device's keys are looked for once the session was taken.
const KEYS_POLL: Duration = Duration::from_secs(1);
/// Bound on the revocations a failed flow leaves behind.
const CLEANUP_LIMIT: Duration = Duration::from_secs(10);

impl OwnEngine {
    /// Checks what can be checked before the flow exists (signed in, the keys the chosen trust
    /// mode needs, an OAuth server that offers the device grant and registration), then runs the
    /// flow on the runner.
    pub(super) async fn start_delegation(
        &self,
        account: Arc<dyn AccountPort>,
        request: DelegationRequest,
    ) -> Result<FlowHandle> {
        let client = account.signed_in().await?;
        let user_id = client.user_id().map(ToOwned::to_owned).ok_or(LinkError::NotSignedIn)?;
        let bundle = if request.share_secrets {
            Some(account.secrets_bundle().await?)
        } else {
            let status = client.encryption().cross_signing_status().await;
            if !status.is_some_and(|s| s.has_self_signing) {
                return Err(LinkError::MissingSecrets(
                    "this device does not hold the self-signing key to sign the new device with".into(),
                ));
            }
            None
        };
        let metadata = device_grant::metadata(self.http(), &client.homeserver(), self.reach).await?;
        if metadata.registration_endpoint.is_none() {
            return Err(GrantError::NoRegistration.into());
        }
        let (handle, port) = FlowHandle::pair(WireProtocol::None);
        let timeout = request.timeout;
        let span = info_span!("delegation", share_secrets = request.share_secrets);
        let journal: Arc<dyn Journal> = account.clone();
        let records: Arc<dyn DelegationRecords> = account;
        let left = Leftovers {
            noted: Noted::open(journal, Kind::Delegation).await?,
            http: self.http().clone(),
            metadata: metadata.clone(),
            records: records.clone(),
            issued: None,
            remembered: None,
            polling: None,
            unheld: None,
        };
        let flow = DelegationFlow {
            http: self.http().clone(),
            reach: self.reach,
            client_uri: self.oauth.client_uri.clone(),
            client,
            user_id,
            metadata,
            bundle,
            records,
            request,
        };
        tokio::spawn(
            runner::run(port, timeout, None, left, async move |ui, left| flow.run(ui, left).await)
                .instrument(span),
        );
        Ok(handle)
    }
}

/// The flow's world: the account, what it shares, where it records.
struct DelegationFlow {
    http: reqwest::Client,
    reach: Reach,
    /// `client_uri` of the registrations (the daemon's own; the program has none to give).
    client_uri: Url,
    client: Client,
    user_id: OwnedUserId,
    metadata: Metadata,
    bundle: Option<SecretsBundle>,
    records: Arc<dyn DelegationRecords>,
    request: DelegationRequest,
}

/// What a delegation leaves to undo when it does not end well: the tokens issued for the new
/// device, and the record kept of it.
struct Leftovers {
    http: reqwest::Client,
    metadata: Metadata,
    records: Arc<dyn DelegationRecords>,
    /// Tokens issued for the new device, with the client they belong to.
    issued: Option<(String, Tokens)>,
    /// The device ID the record was kept under.
    remembered: Option<String>,
    /// While polling for tokens: the client and the device code.
    polling: Option<(String, String)>,
    /// The record (without tokens) to keep should the tokens turn out lost or unrevocable.
    unheld: Option<Record>,
    /// The flow's intent: what a restart cleans up should the daemon be killed mid-flow.
    noted: Noted,
}

#[async_trait]
impl Cleanup for Leftovers {
    /// No other device to tell: the tokens go, and so does the record, unless something may live
    /// on that only a record lets the user end (tokens that could not be revoked, or that were
    /// issued and lost on the way).
    async fn stopped(&mut self, _: Tell) {
        let mut keep = None;
        // Stopped while polling (the deadline, a cancel, a lid closed): a last look settles
        // whether tokens exist that nobody holds.
        if let Some((client_id, code)) = self.polling.take() {
            let end = device_grant::end_code(&self.http, &self.metadata, &client_id, &code);
            match tokio::time::timeout(CLEANUP_LIMIT, end).await {
                Ok(device_grant::CodeEnd::Issued(tokens)) => self.issued = Some((client_id, tokens)),
                Ok(device_grant::CodeEnd::Unused) => {}
                // Used, or no answer in time: tokens may exist that nobody holds.
                Ok(device_grant::CodeEnd::Used) | Err(_) => {
                    warn!(
                        "the new device's tokens may have been issued and lost on the way; its record is kept"
                    );
                    keep = self.unheld.clone();
                }
            }
        }
        if let Some((client_id, tokens)) = self.issued.take() {
            let revoked = tokio::time::timeout(
                CLEANUP_LIMIT,
                delegated::revoke(&self.http, &self.metadata, &client_id, &tokens),
            )
            .await;
            match revoked {
                Ok(Ok(())) => info!("the new device's tokens were revoked"),
                _ => {
                    warn!(
                        "the new device's tokens could not be revoked; its record is kept for RevokeDelegation"
                    );
                    keep = self.unheld.clone().map(|r| Record {
                        access_token: tokens.access_token.clone(),
                        refresh_token: tokens.refresh_token.clone(),
                        ..r
                    });
                }
            }
        }
        match keep {
            Some(record) => {
                if let Err(e) = self.records.remember(record).await {
                    warn!(error = %e, "could not record the device that may live on");
                }
            }
            None => {
                if let Some(device_id) = self.remembered.take()
                    && let Err(e) = self.records.forget(&device_id).await
                {
                    warn!(error = %e, "could not forget the delegation record");
                }
            }
        }
        self.noted.close().await;
    }

    async fn succeeded(&mut self) {
        self.noted.close().await;
    }
}

impl DelegationFlow {
    async fn run(&self, ui: &mut Ui, left: &mut Leftovers) -> Flow<Success> {
        let http = &self.http;
        let client_id =
            device_grant::register(http, &self.metadata, &self.request.client_name, &self.client_uri)
                .await
                .map_err(LinkError::from)?;
        let device_id = device_grant::new_device_id();
        let auth = device_grant::authorize(http, &self.metadata, &client_id, &device_id)
            .await
            .map_err(LinkError::from)?;
        // Tokens lost on the way (an answer cut off, the flow stopped mid-request) leave a device
        // nobody holds: a record without tokens (kept when the flow fails) lists it, and
        // `RevokeDelegation` ends it on the account page.
        let unheld = self.record(&client_id, &device_id, None);
        // In the journal before the consent page can approve the code: a daemon killed from here
        // on takes a last look at it on its next start, revokes what it yields or keeps the record.
        left.noted
            .note("code", |o| {
                o.homeserver = Some(self.client.homeserver());
                o.client_id = Some(client_id.clone());
                o.device_code = Some(auth.device_code.clone());
                o.record = Some(unheld.clone());
            })
            .await?;
        let page = auth.verification_uri_complete.as_deref().unwrap_or(&auth.verification_uri);
        let page = policy::consent_page(page, &self.metadata.issuer, self.reach).map_err(|e| {
            LinkError::ProtocolError(format!("the OAuth server's consent page is refused: {e}"))
        })?;
        ui.emit(FlowEvent::WaitingForApproval {
            verification_uri: Secret(page.into()),
            peer_device_id: Some(device_id.clone()),
            user_code: Some(Secret(auth.user_code.clone())),
        });
        // The D-Bus layer opens the consent page on `Approve`, before this returns.
        ui.approval().await?;
        info!("consent page opened; polling for the user's decision");
        ui.emit(FlowEvent::WaitingForToken { user_code: None });
        left.unheld = Some(unheld.clone());
        left.polling = Some((client_id.clone(), auth.device_code.clone()));
        let tokens = match device_grant::poll_tokens(http, &self.metadata, &client_id, &auth).await {
            Ok(tokens) => tokens,
            Err(GrantError::TokensLost) => {
                left.polling = None;
                if let Err(e) = self.records.remember(unheld).await {
                    warn!(error = %e, "could not record the device whose tokens were lost");
                }
                return Err(LinkError::from(GrantError::TokensLost).into());
            }
            Err(e) => return Err(LinkError::from(e).into()),
        };
        left.polling = None;
        left.noted.hold("tokens-received").await;
        left.issued = Some((client_id.clone(), tokens.clone()));
        // Until the program took them, a restart revokes these.
        left.noted.note("tokens", |o| o.tokens = Some(tokens.clone())).await?;
        let homeserver = self.client.homeserver();
        let (user, seen_device) = device_grant::whoami(http, &homeserver, &tokens.access_token).await?;
        if user != self.user_id || seen_device.is_some_and(|d| d != device_id) {
            return Err(LinkError::ProtocolError(
                "the homeserver gave the new session another account or device".into(),
            )
            .into());
        }
        self.records.remember(self.record(&client_id, &device_id, Some(&tokens))).await?;
        left.remembered = Some(device_id.clone());
        left.noted.note("recorded", |o| o.recorded = true).await?;
        devices::rename(&self.client, &device_id, &self.request.device_display_name).await;
        let document = self.session_document(&homeserver, &client_id, &device_id, &tokens);
        ui.emit(FlowEvent::SessionReady(Secret(document)));
        let keys_deadline = Instant::now() + self.request.keys_timeout;
        let limit = self.request.keys_timeout.as_secs();
        tokio::time::timeout_at(keys_deadline, ui.session_taken())
            .await
            .map_err(|_| LinkError::Expired(format!("the session was not taken within {limit} s")))??;
        info!("session handed over");
        left.noted.note("handed-over", |o| o.handed_over = true).await?;
        let trust = if self.bundle.is_some() {
            Trust::SecretsShared
        } else {
            let device = OwnedDeviceId::from(device_id.as_str());
            tokio::time::timeout_at(keys_deadline, self.sign_when_keys_appear(&device)).await.map_err(
                |_| LinkError::Expired(format!("the new device did not upload its keys within {limit} s")),
            )??;
            info!("new device signed with our self-signing key");
            Trust::SignedByDaemon
        };
        info!(trust = trust.as_str(), "delegated device signed in");
        Ok(Success {
            user_id: self.user_id.to_string(),
            device_id,
            homeserver_found: None,
            trust: Some(trust.as_str()),
        })
    }

    /// What is kept of the delegation: without tokens when they were lost on the way.
    fn record(&self, client_id: &str, device_id: &str, tokens: Option<&Tokens>) -> Record {
        Record {
            device_id: device_id.to_owned(),
            client_name: self.request.client_name.clone(),
            device_display_name: self.request.device_display_name.clone(),
            created: SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0),
            client_id: client_id.to_owned(),
            access_token: tokens.map(|t| t.access_token.clone()).unwrap_or_default(),
            refresh_token: tokens.and_then(|t| t.refresh_token.clone()),
            app_id: self.request.app_id.clone(),
        }
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
}
