//! The daemon's own QR login engine (MSC4108 over MSC4388), both wire generations, both roles, both
//! QR directions, on vodozemac (`matrix-linkd-wire`), our rendezvous and device-grant clients, and
//! matrix-sdk's public client, OAuth and encryption APIs for the session it ends with.
//!
//! Rules it keeps (protocol.md §9):
//! - the device that generated the QR code (G) acts on no message before its user typed the right
//!   check code; the scanner (S) shows the code;
//! - the existing device sends `m.login.protocol_accepted` only after local consent (`Approve`,
//!   which also opens the verification URI), and its secrets only once the new device exists;
//! - every exit after the channel exists tells the other device (`m.login.failure` with the
//!   matching reason, or `m.login.declined`), then the rendezvous session is deleted;
//! - no secret (QR bytes, keys, codes, URIs, tokens) reaches a log line or an error message;
//! - every value from the other device or a server passes `wire::policy` before it is used, and
//!   every request goes through `net` (no redirects, capped answers, https or loopback only).
//!
//! The shared core is here; each role has a file of its own (`grant`, `login`).

mod cache;
mod grant;
mod handshake;
mod login;

pub use self::handshake::offers_2024;

use std::{collections::HashMap, sync::Arc, time::Duration};

use async_trait::async_trait;
use futures_util::FutureExt as _;
use matrix_sdk::{Client, reqwest};
use matrix_sdk_base::crypto::types::SecretsBundle;
use serde_json::Value;
use tokio::{
    sync::{Mutex, mpsc, oneshot, watch},
    time::Instant,
};
use tracing::{Instrument, debug, error, info, info_span, warn};
use url::Url;

use self::{
    grant::{GrantFlow, GrantStart},
    handshake::*,
    login::{LoginFlow, LoginStart},
};
use super::{
    DelegationRecords, DelegationRequest, Engine, FlowCommand, FlowEvent, FlowHandle, FlowOutcome, FlowPort,
    GenerationChoice, GrantRequest, LoginRequest, LoginTarget, Secret, SecretsSource, WireProtocol,
    delegation::Delegator,
    device_grant::{self, GrantError},
    link::{self, Link, Pace, Rendezvous, channel_error, delete_later, rendezvous_error},
    rendezvous::{Session2024, SessionLatest},
    wire::{
        channel::{Channel, Generation, Generator, Initiated},
        messages::{DEVICE_AUTHORIZATION_GRANT, DeviceGrant, FailureReason, LoginMessage},
        policy::{self, Refusal},
        qr::{Intent, LoginQr, Prefix},
    },
};
use crate::{
    config::OAuthClient,
    error::{LinkError, Result},
    net,
};

/// The own engine. One instance per daemon; flows run as tasks.
pub struct OwnEngine {
    oauth: OAuthClient,
    http: reqwest::Client,
    /// Dynamic registrations, by issuer: one client ID per OAuth server for the daemon's life.
    client_ids: Arc<Mutex<HashMap<String, String>>>,
    /// Plain http to hosts other than this machine (`security.allow_insecure_http`, tests only).
    allow_http: bool,
    /// Recent answers by homeserver: its OAuth issuer, the generation `auto` picks there.
    issuers: cache::Recent<Url>,
    generations: cache::Recent<Generation>,
}

impl OwnEngine {
    pub fn new(oauth: &OAuthClient, allow_http: bool) -> Self {
        Self {
            oauth: oauth.clone(),
            http: net::client(),
            client_ids: Default::default(),
            allow_http,
            issuers: Default::default(),
            generations: Default::default(),
        }
    }
}

/// What to say to the other device when a flow stops here.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Tell {
    /// Nothing: the other device stopped first, or no channel can carry it.
    Nothing,
    Failure(FailureReason),
    Declined,
}

/// How a flow stopped early: the error for D-Bus and the word for the other device.
#[derive(Debug)]
struct Stop {
    error: Option<LinkError>,
    tell: Tell,
}

impl Stop {
    fn local(error: LinkError, reason: FailureReason) -> Self {
        Self { error: Some(error), tell: Tell::Failure(reason) }
    }
    fn silent(error: LinkError) -> Self {
        Self { error: Some(error), tell: Tell::Nothing }
    }
    fn cancelled() -> Self {
        Self { error: None, tell: Tell::Failure(FailureReason::UserCancelled) }
    }
}

/// Errors of our own steps tell the other device that we gave up.
impl From<LinkError> for Stop {
    fn from(error: LinkError) -> Self {
        let reason = match &error {
            LinkError::DeviceIdInUse => FailureReason::DeviceAlreadyExists,
            LinkError::DeviceNotFound => FailureReason::DeviceNotFound,
            _ => FailureReason::UserCancelled,
        };
        Stop::local(error, reason)
    }
}

type Flow<T> = std::result::Result<T, Stop>;

/// A message (or what it names) that the protocol's rules refuse: the error for D-Bus and what the
/// other device is told.
fn refused(r: Refusal) -> Stop {
    let error = match &r {
        Refusal::PeerFailed(Some(FailureReason::AuthorizationExpired)) => LinkError::Expired(
            "the other device reports that the sign-in request expired (authorization_expired)".into(),
        ),
        Refusal::PeerFailed(Some(reason)) => LinkError::LoginFailed(reason.as_str().to_owned()),
        Refusal::PeerFailed(None) => LinkError::LoginFailed("unknown reason".into()),
        Refusal::PeerDeclined => LinkError::LoginFailed("the other device declined the sign-in".into()),
        Refusal::Unexpected { expected, got } => {
            LinkError::ProtocolError(format!("expected {expected}, the other device sent {got}"))
        }
        Refusal::Undecodable => {
            LinkError::ProtocolError("the other device sent an unreadable message".into())
        }
        Refusal::UnsupportedProtocol => {
            LinkError::Unsupported("the other device speaks no login protocol we speak".into())
        }
        Refusal::BadDeviceId => LinkError::ProtocolError("the new device sent an unusable device ID".into()),
        Refusal::BadConsentPage(e) => {
            LinkError::ProtocolError(format!("the consent page the new device names is refused: {e}"))
        }
        Refusal::BadHomeserver(e) => {
            LinkError::ProtocolError(format!("the homeserver the other device names is refused: {e}"))
        }
    };
    match r.tell() {
        Some(reason) => Stop::local(error, reason),
        None => Stop::silent(error),
    }
}

pub(crate) fn grant_error(e: GrantError) -> LinkError {
    match e {
        GrantError::NoOAuth => LinkError::Unsupported("the homeserver does not use OAuth 2.0 sign-in".into()),
        GrantError::NoDeviceGrant => {
            LinkError::Unsupported("the OAuth server does not offer the device authorization grant".into())
        }
        GrantError::NoRegistration => {
            LinkError::Unsupported("the OAuth server does not allow client registration".into())
        }
        GrantError::AccessDenied => {
            LinkError::LoginFailed("the sign-in was refused on the consent page (access_denied)".into())
        }
        GrantError::Expired => {
            LinkError::Expired("the sign-in request expired before it was approved".into())
        }
        GrantError::Network => LinkError::Network("the OAuth server could not be reached".into()),
        e @ (GrantError::TooLarge(_) | GrantError::BadEndpoint(_) | GrantError::Malformed) => {
            LinkError::ProtocolError(e.to_string())
        }
        other => LinkError::Network(other.to_string()),
    }
}

/// The engine's side of the D-Bus layer: events out, check code and consent in. `Cancel` is
/// watched separately so it can interrupt any step.
struct Ui {
    events: mpsc::UnboundedSender<FlowEvent>,
    commands: mpsc::UnboundedReceiver<FlowCommand>,
}

impl Ui {
    fn emit(&self, ev: FlowEvent) {
        let _ = self.events.send(ev);
    }

    async fn check_code(&mut self) -> Flow<u8> {
        let asked = Instant::now();
        loop {
            match self.commands.recv().await {
                Some(FlowCommand::CheckCode(code)) => {
                    debug!(waited_ms = asked.elapsed().as_millis() as u64, "user answered");
                    return Ok(code);
                }
                Some(other) => debug!(?other, "ignored while waiting for the check code"),
                None => return Err(Stop::cancelled()),
            }
        }
    }

    async fn approval(&mut self) -> Flow<()> {
        let asked = Instant::now();
        loop {
            match self.commands.recv().await {
                Some(FlowCommand::Approve) => {
                    debug!(waited_ms = asked.elapsed().as_millis() as u64, "user answered");
                    return Ok(());
                }
                Some(other) => debug!(?other, "ignored while waiting for consent"),
                None => return Err(Stop::cancelled()),
            }
        }
    }
}

/// Splits `Cancel` (which must interrupt any step) from the commands a step waits for.
pub(crate) fn split_commands(
    mut from_dbus: mpsc::UnboundedReceiver<FlowCommand>,
) -> (mpsc::UnboundedReceiver<FlowCommand>, watch::Receiver<bool>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let (cancel_tx, cancel_rx) = watch::channel(false);
    tokio::spawn(async move {
        while let Some(cmd) = from_dbus.recv().await {
            match cmd {
                FlowCommand::Cancel => break,
                other => {
                    if tx.send(other).is_err() {
                        return;
                    }
                }
            }
        }
        // Cancelled, or the D-Bus side is gone: nobody can consent or type a code any more.
        let _ = cancel_tx.send(true);
    });
    (rx, cancel_rx)
}

/// What a flow leaves behind when it stops: what to tell the other device on, what to delete.
struct Leftovers {
    generation: Generation,
    /// Before the handshake: only a session to delete.
    rv: Option<Rendezvous>,
    /// After it: the channel to tell the other device on.
    link: Option<Link>,
}

impl Leftovers {
    fn new(generation: Generation, rv: Option<Rendezvous>) -> Self {
        Self { generation, rv, link: None }
    }

    /// Tells the other device (when there is a channel and something to say), then deletes the
    /// session once the other device had time to read that.
    async fn close(self, tell: Tell) {
        if let Some(mut link) = self.link {
            let msg = match tell {
                Tell::Nothing => None,
                Tell::Declined => Some(LoginMessage::Declined {}),
                // A 2024 peer does not know this reason.
                Tell::Failure(FailureReason::UnableToOpenVerificationUri)
                    if self.generation == Generation::V2024 =>
                {
                    Some(LoginMessage::failure(FailureReason::UserCancelled))
                }
                Tell::Failure(reason) => Some(LoginMessage::failure(reason)),
            };
            match &msg {
                Some(msg) => {
                    link.tell(msg).await;
                    delete_later(link.rv);
                }
                None => link.rv.delete().await,
            }
        } else if let Some(rv) = self.rv {
            rv.delete().await;
        }
    }
}

/// What a flow starts from: its generation and, when the daemon generated the QR code, the
/// session it created and the code to show.
struct Opening {
    generation: Generation,
    created: Option<(Rendezvous, Vec<u8>)>,
}

/// Runs one flow body under `Cancel` and the overall deadline: shows the QR code (when we made
/// it), then whatever ends the body, the other device is told and the session cleaned up before
/// the result is returned, with the sender for the flow's outcome.
async fn run_flow<T>(
    port: FlowPort,
    opening: Opening,
    deadline: Instant,
    body: impl AsyncFnOnce(&mut Ui, &mut Leftovers) -> Flow<T>,
) -> (oneshot::Sender<FlowOutcome>, std::result::Result<T, Option<LinkError>>) {
    let FlowPort { events, commands, outcome } = port;
    let (commands, mut cancel) = split_commands(commands);
    let mut ui = Ui { events, commands };
    let (rv, qr) = opening.created.unzip();
    if let Some(qr) = qr {
        ui.emit(FlowEvent::QrReady(Secret(qr)));
    }
    let mut leftovers = Leftovers::new(opening.generation, rv);
    // A bug of ours (a panic) in the body still ends the flow the normal way: `Failed`, the other
    // device told, the session deleted.
    let guarded = std::panic::AssertUnwindSafe(body(&mut ui, &mut leftovers)).catch_unwind();
    let result = tokio::select! {
        r = guarded => r.unwrap_or_else(|_| {
            error!("the flow's task panicked; ending it");
            Err(Stop::local(LinkError::Failed("internal error".into()), FailureReason::UserCancelled))
        }),
        _ = cancel.wait_for(|c| *c) => Err(Stop::cancelled()),
        _ = tokio::time::sleep_until(deadline) => Err(Stop::local(
            LinkError::Expired("the flow timed out".into()),
            FailureReason::UserCancelled,
        )),
    };
    let result = match result {
        Ok(v) => {
            // The last reader deletes at once; the last writer leaves the other device time to read.
            if let Some(link) = leftovers.link.take() {
                delete_later(link.rv);
            }
            Ok(v)
        }
        Err(stop) => {
            match &stop.error {
                Some(e) => info!(error = %e, tell = ?stop.tell, "flow stopped"),
                None => info!(tell = ?stop.tell, "flow cancelled"),
            }
            leftovers.close(stop.tell).await;
            Err(stop.error)
        }
    };
    (outcome, result)
}

fn outcome_of<T>(
    r: std::result::Result<T, Option<LinkError>>,
    ok: impl FnOnce(T) -> FlowOutcome,
) -> FlowOutcome {
    match r {
        Ok(v) => ok(v),
        Err(None) => FlowOutcome::Cancelled,
        Err(Some(e)) => FlowOutcome::Failed(e),
    }
}

fn outcome_name(outcome: &FlowOutcome) -> &'static str {
    match outcome {
        FlowOutcome::Success { .. } => "success",
        FlowOutcome::Cancelled => "cancelled",
        FlowOutcome::Failed(_) => "failed",
    }
}

// ---------------------------------------------------------------------------------------------
// The engine

#[async_trait]
impl Engine for OwnEngine {
    async fn start_grant(
        &self,
        client: Client,
        secrets: Arc<dyn SecretsSource>,
        request: GrantRequest,
    ) -> Result<FlowHandle> {
        let scanned =
            request.qr_code.as_ref().map(|b| scanned_qr(&b.0, Intent::Login, self.allow_http)).transpose()?;
        // Fail fast: without the private cross-signing keys there is nothing to share.
        let bundle = secrets.secrets_bundle().await?;
        let homeserver = client.homeserver();
        let token = client.access_token();
        // The consent page the new device names must be on the account's OAuth server.
        let issuer = self
            .issuers
            .get_or(homeserver.as_str(), async || {
                let metadata = device_grant::server_metadata(&self.http, &homeserver, self.allow_http).await;
                metadata.map(|m| m.issuer).map_err(grant_error)
            })
            .await?;
        let (start, opening) = match scanned {
            Some(qr) => {
                let generation = qr_generation(&qr);
                (GrantStart::Scanned(qr), Opening { generation, created: None })
            }
            None => {
                let key = format!("{:?} {homeserver}", request.generation);
                let generation = self
                    .generations
                    .get_or(&key, async || {
                        choose_generation(&self.http, request.generation, &homeserver, token.as_deref()).await
                    })
                    .await?;
                let maker = QrMaker {
                    http: self.http.clone(),
                    generation,
                    homeserver: homeserver.clone(),
                    access_token: token.clone(),
                    intent: Intent::Reciprocate,
                };
                let (rv, generator, qr) = maker.make().await?;
                (GrantStart::Generated(generator, maker), Opening { generation, created: Some((rv, qr)) })
            }
        };
        let (handle, port) = FlowHandle::pair(wire_protocol(opening.generation));
        let flow = GrantFlow {
            http: self.http.clone(),
            client: client.clone(),
            bundle,
            device_creation_timeout: request.device_creation_timeout,
            issuer,
            allow_http: self.allow_http,
        };
        let deadline = Instant::now() + request.timeout;
        let span = info_span!("grant", scanned = opening.created.is_none(), generation = ?opening.generation);
        tokio::spawn(
            async move {
                let (outcome, result) =
                    run_flow(port, opening, deadline, async |ui, left| flow.run(start, ui, left).await).await;
                let user_id = client.user_id().map(|u| u.to_string()).unwrap_or_default();
                let end = outcome_of(result, |device_id| FlowOutcome::Success {
                    user_id,
                    device_id,
                    homeserver_found: None,
                    trust: None,
                });
                info!(outcome = outcome_name(&end), "grant flow ended");
                let _ = outcome.send(end);
            }
            .instrument(span),
        );
        Ok(handle)
    }

    async fn start_login(&self, target: Arc<dyn LoginTarget>, request: LoginRequest) -> Result<FlowHandle> {
        let scanned = request
            .qr_code
            .as_ref()
            .map(|b| scanned_qr(&b.0, Intent::Reciprocate, self.allow_http))
            .transpose()?;
        if let Some(homeserver) = &request.homeserver {
            net::check_transport(homeserver, self.allow_http)
                .map_err(|e| LinkError::InvalidArgs(format!("the homeserver URL is refused: {e}")))?;
        }
        target.prepare().await?;
        match self.start_login_inner(target.clone(), request, scanned).await {
            Ok(handle) => Ok(handle),
            Err(e) => {
                target.abandon().await;
                Err(e)
            }
        }
    }
    async fn start_delegation(
        &self,
        client: Client,
        secrets: Arc<dyn SecretsSource>,
        records: Arc<dyn DelegationRecords>,
        request: DelegationRequest,
    ) -> Result<FlowHandle> {
        let delegator = Delegator {
            http: self.http.clone(),
            allow_http: self.allow_http,
            client_uri: self.oauth.client_uri.clone(),
        };
        delegator.start(client, secrets, records, request).await
    }

    async fn settle(&self, limit: Duration) -> bool {
        link::wait_pending_deletes(limit).await
    }
}

impl OwnEngine {
    async fn start_login_inner(
        &self,
        target: Arc<dyn LoginTarget>,
        request: LoginRequest,
        scanned: Option<LoginQr>,
    ) -> Result<FlowHandle> {
        let (start, opening) = match scanned {
            Some(qr) => {
                let server = match &qr {
                    LoginQr::V2024 { server: Some(server), .. } => server.clone(),
                    LoginQr::V2024 { server: None, .. } => {
                        return Err(LinkError::InvalidQrCode("the QR code names no homeserver".into()));
                    }
                    LoginQr::Msc4388 { base_url, .. } => base_url.clone(),
                };
                let server = policy::homeserver(&server, self.allow_http)
                    .map_err(|_| LinkError::InvalidQrCode("the QR code names no usable homeserver".into()))?;
                let generation = qr_generation(&qr);
                (LoginStart::Scanned { qr, server }, Opening { generation, created: None })
            }
            None => {
                let homeserver = request.homeserver.clone().ok_or_else(|| {
                    LinkError::InvalidArgs(
                        "no homeserver: pass the `homeserver` option or set `homeserver` in config.toml"
                            .into(),
                    )
                })?;
                let generation = choose_generation(&self.http, request.generation, &homeserver, None).await?;
                let maker = QrMaker {
                    http: self.http.clone(),
                    generation,
                    homeserver: homeserver.clone(),
                    access_token: None,
                    intent: Intent::Login,
                };
                let (rv, generator, qr) = maker.make().await?;
                let start = LoginStart::Generated { generator, maker, rendezvous_server: homeserver };
                (start, Opening { generation, created: Some((rv, qr)) })
            }
        };
        let (handle, port) = FlowHandle::pair(wire_protocol(opening.generation));
        let flow = LoginFlow {
            http: self.http.clone(),
            target: target.clone(),
            oauth: self.oauth.clone(),
            client_ids: self.client_ids.clone(),
            device_display_name: request.device_display_name.clone(),
            allow_http: self.allow_http,
        };
        let deadline = Instant::now() + request.timeout;
        let span = info_span!("login", scanned = opening.created.is_none(), generation = ?opening.generation);
        tokio::spawn(
            async move {
                let (outcome, result) =
                    run_flow(port, opening, deadline, async |ui, left| flow.run(start, ui, left).await).await;
                let end = outcome_of(result, |(user_id, device_id, found)| FlowOutcome::Success {
                    user_id,
                    device_id,
                    homeserver_found: Some(found),
                    trust: None,
                });
                if !matches!(end, FlowOutcome::Success { .. }) {
                    target.abandon().await;
                }
                info!(outcome = outcome_name(&end), "login flow ended");
                let _ = outcome.send(end);
            }
            .instrument(span),
        );
        Ok(handle)
    }
}

fn qr_generation(qr: &LoginQr) -> Generation {
    match qr {
        LoginQr::V2024 { .. } => Generation::V2024,
        LoginQr::Msc4388 { .. } => Generation::Latest,
    }
}

#[cfg(test)]
mod tests;
