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

mod grant;
mod login;

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
    login::{LoginFlow, LoginStart},
};
use super::{
    Engine, FlowCommand, FlowEvent, FlowHandle, FlowOutcome, FlowPort, GenerationChoice, GrantRequest,
    LoginRequest, LoginTarget, Secret, SecretsSource, WireProtocol,
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
}

impl OwnEngine {
    pub fn new(oauth: &OAuthClient, allow_http: bool) -> Self {
        Self { oauth: oauth.clone(), http: net::client(), client_ids: Default::default(), allow_http }
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

fn grant_error(e: GrantError) -> LinkError {
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
fn split_commands(
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
// QR codes and handshakes

/// Reads a scanned QR code and checks it is the other device's kind and names servers we may use:
/// https, or http only to this machine.
fn scanned_qr(bytes: &[u8], want: Intent, allow_http: bool) -> Result<LoginQr> {
    let qr = LoginQr::parse(bytes).map_err(|e| LinkError::InvalidQrCode(e.to_string()))?;
    let bad =
        |what: &str, e: policy::UrlError| LinkError::InvalidQrCode(format!("the {what} is refused: {e}"));
    match &qr {
        LoginQr::V2024 { rendezvous_url, server, .. } => {
            policy::http_url(rendezvous_url, allow_http).map_err(|e| bad("rendezvous URL", e))?;
            if let Some(server) = server {
                policy::homeserver(server, allow_http).map_err(|e| bad("homeserver", e))?;
            }
        }
        LoginQr::Msc4388 { base_url, .. } => {
            policy::http_url(base_url, allow_http).map_err(|e| bad("base URL", e))?;
        }
    }
    if qr.intent() != want {
        return Err(LinkError::InvalidQrCode(match want {
            Intent::Login => {
                "this QR code was shown by a signed-in device; scan the one on the new device".into()
            }
            Intent::Reciprocate => "this QR code was shown by a device that wants to sign in; scan the one \
                                    on a signed-in device"
                .into(),
        }));
    }
    Ok(qr)
}

fn wire_protocol(g: Generation) -> WireProtocol {
    match g {
        Generation::V2024 => WireProtocol::V2024,
        Generation::Latest => WireProtocol::Msc4388,
    }
}

/// Joins the session of a scanned QR code. Never sends an access token: the server is foreign.
async fn join(http: &reqwest::Client, qr: &LoginQr) -> Result<Rendezvous> {
    match qr {
        LoginQr::V2024 { rendezvous_url, .. } => {
            let url = Url::parse(rendezvous_url)
                .map_err(|_| LinkError::InvalidQrCode("the rendezvous URL is not a URL".into()))?;
            let mut session = Session2024::join(http, url);
            // The first read learns the ETag (and the session's end); it holds no data yet.
            session.poll().await.map_err(rendezvous_error)?;
            Ok(Rendezvous::V2024(session))
        }
        LoginQr::Msc4388 { rendezvous_id, base_url, .. } => {
            let base = Url::parse(base_url)
                .map_err(|_| LinkError::InvalidQrCode("the base URL is not a URL".into()))?;
            let session = SessionLatest::join(http, &base, rendezvous_id).await.map_err(rendezvous_error)?;
            Ok(Rendezvous::latest(session, base))
        }
    }
}

/// S: sends LoginInitiate, waits for LoginOk, returns the channel. The caller shows the check code.
async fn scanner_handshake(mut rv: Rendezvous, key: &[u8; 32], left: &mut Leftovers) -> Flow<()> {
    let (pending, initiate) =
        Initiated::start(rv.generation(), key, &rv.send_aad()).map_err(channel_error)?;
    let sent = rv.send(&initiate).await;
    left.rv = Some(rv);
    sent.map_err(rendezvous_error)?;
    debug!(message = "login_initiate", "rendezvous write");
    let rv = left.rv.as_mut().expect("just set");
    let (ok, aads) = rv.wait(Pace::Machine).await?;
    // The handshake opens once: the first AAD is the normalised one every implementation uses.
    let channel = pending.confirm(&ok, &aads[0]).map_err(|e| Stop::silent(channel_error(e)))?;
    let rv = left.rv.take().expect("set above");
    left.link = Some(Link::new(rv, channel, true, true));
    Ok(())
}

/// How close to its announced end a session must be for a "gone" to count as its expiry (and not
/// as someone deleting it).
const EXPIRY_SLACK: Duration = Duration::from_secs(1);

/// Makes the rendezvous session and the QR code the daemon shows: at the start, and again each
/// time one expires before anybody scanned it (Synapse's 2024 sessions live 60 s; a person may
/// take longer to find their phone).
pub(super) struct QrMaker {
    http: reqwest::Client,
    generation: Generation,
    homeserver: Url,
    /// Ours, for creating a latest-generation session on our own homeserver (grant only).
    access_token: Option<String>,
    intent: Intent,
}

impl QrMaker {
    async fn make(&self) -> Result<(Rendezvous, Generator, Vec<u8>)> {
        create(&self.http, self.generation, &self.homeserver, self.access_token.as_deref(), self.intent).await
    }
}

/// G: waits for S's LoginInitiate (a person scans first), answers LoginOk, then asks its user for
/// the check code. Nothing S sends is read before the code matched. A session that reaches its end
/// unscanned is replaced by a new one with a new QR code, until the flow's own time-out.
async fn generator_handshake(
    mut generator: Generator,
    maker: &QrMaker,
    ui: &mut Ui,
    left: &mut Leftovers,
) -> Flow<()> {
    let (initiate, aads) = loop {
        let rv = left.rv.as_mut().expect("session created");
        let waited = rv.wait(Pace::Human).await;
        let ran_out = rv.expires_at().is_some_and(|end| Instant::now() + EXPIRY_SLACK >= end);
        match waited {
            Ok(found) => break found,
            Err(LinkError::Expired(_)) if ran_out => {
                let (rv, replacement, qr) = maker.make().await?;
                info!("the QR code expired unscanned; showing a new one");
                left.rv = Some(rv);
                generator = replacement;
                ui.emit(FlowEvent::QrReady(Secret(qr)));
            }
            Err(e) => return Err(e.into()),
        }
    };
    let rv = left.rv.as_mut().expect("session created");
    let ok_aad = rv.send_aad();
    let (channel, ok) =
        generator.accept(&initiate, &aads[0], &ok_aad).map_err(|e| Stop::silent(channel_error(e)))?;
    rv.send(&ok).await.map_err(rendezvous_error)?;
    debug!(message = "login_ok", "rendezvous write");
    let rv = left.rv.take().expect("set above");
    left.link = Some(Link::new(rv, channel, false, false));
    ui.emit(FlowEvent::WaitingForCheckCode);
    let link = left.link.as_mut().expect("set above");
    // Nothing the other device writes is read now, but a session it deleted ends the flow.
    let typed = tokio::select! {
        typed = ui.check_code() => typed?,
        gone = link.watch() => return Err(Stop::silent(gone)),
    };
    let link = left.link.as_ref().expect("set above");
    if typed != link.channel.check_code() {
        warn!("wrong check code");
        return Err(Stop::local(LinkError::InvalidCheckCode, FailureReason::UserCancelled));
    }
    info!("check code confirmed");
    Ok(())
}

fn link(left: &mut Leftovers) -> &mut Link {
    left.link.as_mut().expect("handshake done")
}

fn show_check_code(ui: &Ui, channel: &Channel) {
    ui.emit(FlowEvent::ShowCheckCode(Secret(channel.check_code())));
}

/// Which generation to generate a QR code in: the caller's or the config's choice; `auto` takes
/// 2024 (every shipping client scans it) where the server offers it, else the latest.
async fn choose_generation(
    http: &reqwest::Client,
    choice: GenerationChoice,
    homeserver: &Url,
    access_token: Option<&str>,
) -> Result<Generation> {
    match choice {
        GenerationChoice::V2024 => Ok(Generation::V2024),
        GenerationChoice::Latest => Ok(Generation::Latest),
        GenerationChoice::Auto => {
            if offers_2024(http, homeserver).await {
                return Ok(Generation::V2024);
            }
            match SessionLatest::discover(http, homeserver, access_token).await {
                Ok(true) => Ok(Generation::Latest),
                // Not advertised either way: try 2024 and let the server's answer speak.
                _ => Ok(Generation::V2024),
            }
        }
    }
}

/// `/versions` lists `org.matrix.msc4108`.
pub async fn offers_2024(http: &reqwest::Client, homeserver: &Url) -> bool {
    let Some(v) = net::resolve::versions(http, homeserver).await else { return false };
    v.pointer("/unstable_features/org.matrix.msc4108").and_then(Value::as_bool).unwrap_or(false)
}

/// G: creates the session and the QR code. `server` goes into a 2024 reciprocate code.
async fn create(
    http: &reqwest::Client,
    generation: Generation,
    homeserver: &Url,
    access_token: Option<&str>,
    intent: Intent,
) -> Result<(Rendezvous, Generator, Vec<u8>)> {
    let generator = Generator::new(generation);
    let key = generator.public_key();
    match generation {
        Generation::V2024 => {
            let session = Session2024::create(http, homeserver).await.map_err(rendezvous_error)?;
            let qr = LoginQr::V2024 {
                intent,
                key,
                rendezvous_url: session.url().to_string(),
                // matrix-sdk writes a URL here and both SDKs accept one.
                server: (intent == Intent::Reciprocate).then(|| homeserver.to_string()),
            };
            Ok((Rendezvous::V2024(session), generator, qr.encode()))
        }
        Generation::Latest => {
            let session =
                SessionLatest::create(http, homeserver, access_token).await.map_err(rendezvous_error)?;
            let qr = latest_qr(intent, key, session.id(), homeserver);
            Ok((Rendezvous::latest(session, homeserver.clone()), generator, qr.encode()))
        }
    }
}

/// The latest-generation code for our session: the base URL written exactly as it goes into the
/// AAD (normalised, with the `/` of a root path), so a peer that follows the MSC text ("the base
/// URL from the QR code") computes the same AAD as the Element SDKs and we do.
fn latest_qr(intent: Intent, key: [u8; 32], rendezvous_id: &str, homeserver: &Url) -> LoginQr {
    LoginQr::Msc4388 {
        prefix: Prefix::Unstable,
        intent,
        key,
        rendezvous_id: rendezvous_id.to_owned(),
        base_url: homeserver.to_string(),
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
        let issuer = device_grant::server_metadata(&self.http, &homeserver, self.allow_http)
            .await
            .map_err(grant_error)?
            .issuer;
        let (start, opening) = match scanned {
            Some(qr) => {
                let generation = qr_generation(&qr);
                (GrantStart::Scanned(qr), Opening { generation, created: None })
            }
            None => {
                let generation =
                    choose_generation(&self.http, request.generation, &homeserver, token.as_deref()).await?;
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
mod tests {
    use super::*;

    #[test]
    fn refusals_tell_the_other_device_what_the_protocol_says() {
        let stop = refused(policy::unexpected(&LoginMessage::failure(FailureReason::DeviceNotFound), "x"));
        assert_eq!(
            (stop.tell, stop.error),
            (Tell::Nothing, Some(LinkError::LoginFailed("device_not_found".into())))
        );
        let expired = LoginMessage::failure(FailureReason::AuthorizationExpired);
        assert!(matches!(refused(policy::unexpected(&expired, "x")).error, Some(LinkError::Expired(_))));
        let unknown = LoginMessage::Failure { reason: "<script>".into(), homeserver: None };
        assert_eq!(
            refused(policy::unexpected(&unknown, "x")).error,
            Some(LinkError::LoginFailed("unknown reason".into()))
        );
        assert_eq!(refused(Refusal::PeerDeclined).tell, Tell::Nothing);
        let stop = refused(policy::unexpected(&LoginMessage::Success {}, "m.login.protocol"));
        assert_eq!(stop.tell, Tell::Failure(FailureReason::UnexpectedMessageReceived));
        assert!(matches!(stop.error, Some(LinkError::ProtocolError(_))));
        let stop = refused(Refusal::BadConsentPage(policy::UrlError::ForeignOrigin));
        assert_eq!(stop.tell, Tell::Failure(FailureReason::UnableToOpenVerificationUri));
        assert!(matches!(stop.error, Some(LinkError::ProtocolError(m)) if m.contains("consent page")));
    }

    #[test]
    fn local_errors_tell_the_matching_reason() {
        let tell = |e: LinkError| Stop::from(e).tell;
        assert_eq!(tell(LinkError::DeviceIdInUse), Tell::Failure(FailureReason::DeviceAlreadyExists));
        assert_eq!(tell(LinkError::DeviceNotFound), Tell::Failure(FailureReason::DeviceNotFound));
        assert_eq!(tell(LinkError::Network("x".into())), Tell::Failure(FailureReason::UserCancelled));
        assert_eq!(Stop::cancelled().tell, Tell::Failure(FailureReason::UserCancelled));
    }

    #[test]
    fn secrets_bundle_round_trips_through_the_message() {
        let json = serde_json::json!({
            "cross_signing": {
                "master_key": "bWFzdGVybWFzdGVybWFzdGVybWFzdGVybWFzdGVyMDE",
                "self_signing_key": "c2VsZnNlbGZzZWxmc2VsZnNlbGZzZWxmc2VsZnNlbGY",
                "user_signing_key": "dXNlcnVzZXJ1c2VydXNlcnVzZXJ1c2VydXNlcnVzZXI",
            },
            "backup": {
                "algorithm": "m.megolm_backup.v1.curve25519-aes-sha2",
                "key": "a2V5a2V5a2V5a2V5a2V5a2V5a2V5a2V5a2V5a2V5a2U",
                "backup_version": "7",
            }
        });
        let bundle: SecretsBundle = serde_json::from_value(json.clone()).unwrap();
        let plain = grant::secrets_message(&bundle).encode();
        // What the new device gets: a secrets message that reads back as the same bundle.
        assert!(matches!(LoginMessage::decode(&plain), Ok(LoginMessage::Secrets { backup: Some(_), .. })));
        let back: SecretsBundle = serde_json::from_slice(&plain).unwrap();
        assert_eq!(serde_json::to_value(&back).unwrap(), json);
        // Without a backup there is no backup field.
        let mut no_backup = json.clone();
        no_backup.as_object_mut().unwrap().remove("backup");
        let bundle: SecretsBundle = serde_json::from_value(no_backup).unwrap();
        assert!(matches!(grant::secrets_message(&bundle), LoginMessage::Secrets { backup: None, .. }));
    }

    #[test]
    fn scanned_codes_must_be_the_other_devices_kind() {
        let reciprocate = LoginQr::V2024 {
            intent: Intent::Reciprocate,
            key: [7; 32],
            rendezvous_url: "https://hs.example/_synapse/client/rendezvous/01J".into(),
            server: Some("hs.example".into()),
        }
        .encode();
        assert!(scanned_qr(&reciprocate, Intent::Reciprocate, false).is_ok());
        assert!(matches!(scanned_qr(&reciprocate, Intent::Login, false), Err(LinkError::InvalidQrCode(_))));
        let login = LoginQr::Msc4388 {
            prefix: Prefix::Stable,
            intent: Intent::Login,
            key: [7; 32],
            rendezvous_id: "01J".into(),
            base_url: "https://hs.example".into(),
        }
        .encode();
        assert!(matches!(
            qr_generation(&scanned_qr(&login, Intent::Login, false).unwrap()),
            Generation::Latest
        ));
        assert!(matches!(
            scanned_qr(b"MATRIX\x02\x00", Intent::Login, false),
            Err(LinkError::InvalidQrCode(_))
        ));
    }

    /// Plain http only to this machine: a QR code may not send us (or our tokens) anywhere in clear.
    #[test]
    fn scanned_codes_name_https_or_loopback_servers_only() {
        let code = |url: &str, server: &str| {
            LoginQr::V2024 {
                intent: Intent::Reciprocate,
                key: [7; 32],
                rendezvous_url: url.into(),
                server: Some(server.into()),
            }
            .encode()
        };
        let local = code("http://127.0.0.1:8008/rendezvous/1", "http://127.0.0.1:8008");
        assert!(scanned_qr(&local, Intent::Reciprocate, false).is_ok());
        let clear_rendezvous = code("http://hs.example.org/rendezvous/1", "hs.example.org");
        let clear_server = code("https://hs.example.org/rendezvous/1", "http://hs.example.org");
        for bad in [&clear_rendezvous, &clear_server] {
            match scanned_qr(bad, Intent::Reciprocate, false) {
                Err(LinkError::InvalidQrCode(m)) => assert!(m.contains("plain http"), "{m}"),
                other => panic!("{other:?}"),
            }
            assert!(scanned_qr(bad, Intent::Reciprocate, true).is_ok(), "allowed by config");
        }
    }

    #[test]
    fn latest_codes_carry_the_base_url_as_the_aad_does() {
        use crate::protocol::wire::aad::{aad, aad_raw};
        let homeserver = Url::parse("https://matrix.example.org").unwrap();
        let LoginQr::Msc4388 { base_url, .. } = latest_qr(Intent::Login, [7; 32], "01J", &homeserver) else {
            panic!("a latest code");
        };
        assert_eq!(base_url, "https://matrix.example.org/");
        // A peer that binds to the QR's base URL as written binds to what we do.
        assert_eq!(aad_raw(&base_url, "01J", "T"), aad(&homeserver, "01J", "T"));
        let parsed = LoginQr::parse(&latest_qr(Intent::Login, [7; 32], "01J", &homeserver).encode()).unwrap();
        assert!(
            matches!(parsed, LoginQr::Msc4388 { base_url, .. } if base_url == "https://matrix.example.org/")
        );
    }

    /// A panic in a flow's body (a bug of ours) still ends the flow as `Failed`, tells the other
    /// device and deletes the rendezvous session.
    #[tokio::test]
    async fn a_panicking_flow_still_tells_and_cleans_up() {
        use wiremock::{Mock, MockServer, ResponseTemplate, matchers::method};
        let server = MockServer::start().await;
        Mock::given(method("PUT"))
            .respond_with(ResponseTemplate::new(202).insert_header("ETag", "\"2\""))
            .mount(&server)
            .await;
        Mock::given(method("DELETE")).respond_with(ResponseTemplate::new(204)).mount(&server).await;
        let url = Url::parse(&format!("{}/rendezvous/1", server.uri())).unwrap();
        let rv = Rendezvous::V2024(Session2024::join(&net::client(), url));
        let generator = Generator::new(Generation::V2024);
        let (pending, initiate) = Initiated::start(Generation::V2024, &generator.public_key(), &[]).unwrap();
        let (channel, ok) = generator.accept(&initiate, &[], &[]).unwrap();
        let mut theirs = pending.confirm(&ok, &[]).unwrap();

        let (_handle, port) = FlowHandle::pair(WireProtocol::V2024);
        let opening = Opening { generation: Generation::V2024, created: None };
        let body = async move |_: &mut Ui, left: &mut Leftovers| -> Flow<()> {
            left.link = Some(Link::new(rv, channel, true, true));
            panic!("a bug in a flow step");
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        let (_outcome, result) = run_flow(port, opening, deadline, body).await;
        assert_eq!(result.err(), Some(Some(LinkError::Failed("internal error".into()))));

        let requests = server.received_requests().await.unwrap();
        let told = requests.iter().find(|r| r.method.as_str() == "PUT").expect("the other device was told");
        let plain = theirs.open(std::str::from_utf8(&told.body).unwrap(), &[]).unwrap();
        assert_eq!(
            LoginMessage::decode(&plain).unwrap(),
            LoginMessage::failure(FailureReason::UserCancelled)
        );
        assert!(link::wait_pending_deletes(Duration::from_secs(10)).await);
        let requests = server.received_requests().await.unwrap();
        assert!(requests.iter().any(|r| r.method.as_str() == "DELETE"), "the session was not deleted");
    }
}
