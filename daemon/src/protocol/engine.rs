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
//! - no secret (QR bytes, keys, codes, URIs, tokens) reaches a log line or an error message.

use std::{collections::HashMap, sync::Arc, time::Duration};

use async_trait::async_trait;
use matrix_sdk::{
    Client, SessionMeta, SessionTokens,
    authentication::oauth::{ClientId, OAuthSession, UserSession},
    reqwest,
    ruma::{OwnedDeviceId, OwnedUserId, api::client::device::get_device},
    store::RoomLoadSettings,
};
use matrix_sdk_base::crypto::types::SecretsBundle;
use serde_json::Value;
use tokio::{
    sync::{Mutex, mpsc, oneshot, watch},
    time::Instant,
};
use tracing::{Instrument, debug, info, info_span, warn};
use url::Url;

use super::{
    Engine, FlowCommand, FlowEvent, FlowHandle, FlowOutcome, FlowPort, GenerationChoice, GrantRequest,
    LoginRequest, LoginTarget, Secret, SecretsSource, WireProtocol,
    device_grant::{self, GrantError},
    link::{Link, Pace, Rendezvous, channel_error, delete_later, rendezvous_error},
    rendezvous::{self, Session2024, SessionLatest},
    wire::{
        channel::{Channel, Generation, Generator, Initiated},
        messages::{
            BackupSecrets, CrossSigningSecrets, DEVICE_AUTHORIZATION_GRANT, DeviceGrant, FailureReason,
            HomeserverRef, LoginMessage,
        },
        qr::{Intent, LoginQr, Prefix},
    },
};
use crate::{
    config::OAuthClient,
    error::{LinkError, Result},
};

/// How long the new device may take to appear after `m.login.success` is checked this often.
const DEVICE_POLL: Duration = Duration::from_millis(250);

/// The own engine. One instance per daemon; flows run as tasks.
pub struct OwnEngine {
    oauth: OAuthClient,
    http: reqwest::Client,
    /// Dynamic registrations, by issuer: one client ID per OAuth server for the daemon's life.
    client_ids: Arc<Mutex<HashMap<String, String>>>,
}

impl OwnEngine {
    pub fn new(oauth: &OAuthClient) -> Self {
        Self { oauth: oauth.clone(), http: rendezvous::http_client(), client_ids: Default::default() }
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

/// The message arrived where another was due.
fn unexpected(msg: &LoginMessage, expected: &'static str) -> Stop {
    match msg {
        LoginMessage::Failure { reason, .. } => Stop::silent(peer_failure(reason)),
        LoginMessage::Declined {} => {
            Stop::silent(LinkError::LoginFailed("the sign-in was declined on the new device".into()))
        }
        other => Stop::local(
            LinkError::ProtocolError(format!("expected {expected}, the other device sent {}", other.kind())),
            FailureReason::UnexpectedMessageReceived,
        ),
    }
}

/// The other device's `m.login.failure`: its reason passes through (known reasons only, so an
/// unknown text cannot smuggle anything into our messages).
fn peer_failure(reason: &str) -> LinkError {
    const KNOWN: [&str; 7] = [
        "authorization_expired",
        "device_already_exists",
        "device_not_found",
        "unexpected_message_received",
        "unsupported_protocol",
        "user_cancelled",
        "unable_to_open_verification_uri",
    ];
    match reason {
        "authorization_expired" => LinkError::Expired(
            "the other device reports that the sign-in request expired (authorization_expired)".into(),
        ),
        r if KNOWN.contains(&r) => LinkError::LoginFailed(r.to_owned()),
        _ => LinkError::LoginFailed("unknown reason".into()),
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
    let result = tokio::select! {
        r = body(&mut ui, &mut leftovers) => r,
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

/// Reads a scanned QR code and checks it is the other device's kind.
fn scanned_qr(bytes: &[u8], want: Intent) -> Result<LoginQr> {
    let qr = LoginQr::parse(bytes).map_err(|e| LinkError::InvalidQrCode(e.to_string()))?;
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
    left.link = Some(Link { rv, channel, scanned: true, our_turn: true });
    Ok(())
}

/// G: waits for S's LoginInitiate (a person scans first), answers LoginOk, then asks its user for
/// the check code. Nothing S sends is read before the code matched.
async fn generator_handshake(generator: Generator, ui: &mut Ui, left: &mut Leftovers) -> Flow<()> {
    let rv = left.rv.as_mut().expect("session created");
    let (initiate, aads) = rv.wait(Pace::Human).await?;
    let ok_aad = rv.send_aad();
    let (channel, ok) =
        generator.accept(&initiate, &aads[0], &ok_aad).map_err(|e| Stop::silent(channel_error(e)))?;
    rv.send(&ok).await.map_err(rendezvous_error)?;
    debug!(message = "login_ok", "rendezvous write");
    let rv = left.rv.take().expect("set above");
    left.link = Some(Link { rv, channel, scanned: false, our_turn: false });
    ui.emit(FlowEvent::WaitingForCheckCode);
    let typed = ui.check_code().await?;
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
    let Ok(url) = homeserver.join("_matrix/client/versions") else { return false };
    let Ok(r) = http.get(url).send().await else { return false };
    let Ok(bytes) = r.bytes().await else { return false };
    let Ok(v) = serde_json::from_slice::<Value>(&bytes) else { return false };
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
            let qr = LoginQr::Msc4388 {
                prefix: Prefix::Unstable,
                intent,
                key,
                rendezvous_id: session.id().to_owned(),
                base_url: LoginQr::qr_base_url(homeserver),
            };
            Ok((Rendezvous::latest(session, homeserver.clone()), generator, qr.encode()))
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Grant: the daemon is the signed-in existing device

struct GrantFlow {
    http: reqwest::Client,
    client: Client,
    bundle: SecretsBundle,
    device_creation_timeout: Duration,
}

impl GrantFlow {
    async fn run(&self, start: GrantStart, ui: &mut Ui, left: &mut Leftovers) -> Flow<String> {
        match start {
            GrantStart::Scanned(qr) => {
                let rv = join(&self.http, &qr).await?;
                scanner_handshake(rv, qr.key(), left).await?;
                show_check_code(ui, &link(left).channel);
                let homeserver = self.client.homeserver();
                let protocols = match left.generation {
                    Generation::V2024 => LoginMessage::Protocols {
                        protocols: vec![DEVICE_AUTHORIZATION_GRANT.into()],
                        homeserver: Some(homeserver.to_string()),
                        base_url: None,
                    },
                    Generation::Latest => LoginMessage::Protocols {
                        protocols: vec![DEVICE_AUTHORIZATION_GRANT.into()],
                        homeserver: None,
                        base_url: Some(homeserver.to_string()),
                    },
                };
                link(left).send(&protocols).await?;
            }
            GrantStart::Generated(generator) => {
                generator_handshake(generator, ui, left).await?;
            }
        }
        // The new device's user types the code (when it generated) and it registers first.
        let pace = if ui_scanned(left) { Pace::Human } else { Pace::Now };
        let (msg, _) = link(left).recv(pace).await?;
        let (device_id, uri) = match msg {
            LoginMessage::Protocol { protocol, device_authorization_grant: Some(grant), device_id }
                if protocol == DEVICE_AUTHORIZATION_GRANT =>
            {
                (device_id, grant.verification_uri_complete.unwrap_or(grant.verification_uri))
            }
            LoginMessage::Protocol { .. } => {
                return Err(Stop::local(
                    LinkError::ProtocolError("the new device asked for an unsupported login protocol".into()),
                    FailureReason::UnsupportedProtocol,
                ));
            }
            other => return Err(unexpected(&other, "m.login.protocol")),
        };
        if device_id.is_empty() || device_id.len() > 255 || device_id.chars().any(char::is_control) {
            return Err(Stop::local(
                LinkError::ProtocolError("the new device sent an unusable device ID".into()),
                FailureReason::UnexpectedMessageReceived,
            ));
        }
        if !matches!(Url::parse(&uri).map(|u| u.scheme().to_owned()).as_deref(), Ok("https" | "http")) {
            return Err(Stop::local(
                LinkError::ProtocolError("the verification URI is not an http(s) URL".into()),
                FailureReason::UnableToOpenVerificationUri,
            ));
        }
        let device = OwnedDeviceId::from(device_id.as_str());
        if self.device_exists(&device).await? {
            return Err(LinkError::DeviceIdInUse.into());
        }
        ui.emit(FlowEvent::WaitingForApproval {
            verification_uri: Secret(uri),
            peer_device_id: Some(device_id.clone()),
        });
        // The D-Bus layer opens the verification URI on `Approve`, before this returns. Meanwhile
        // we keep an eye on the session: the new device may give up while our user decides.
        tokio::select! {
            approved = ui.approval() => approved?,
            early = link(left).recv(Pace::Watch) => {
                let (msg, _) = early?;
                return Err(unexpected(&msg, "nothing before consent"));
            }
        }
        info!("consent given");
        link(left).send(&LoginMessage::ProtocolAccepted {}).await?;
        ui.emit(FlowEvent::WaitingForToken { user_code: None });
        let (msg, _) = link(left).recv(Pace::Human).await?;
        if !matches!(msg, LoginMessage::Success {}) {
            return Err(unexpected(&msg, "m.login.success"));
        }
        ui.emit(FlowEvent::SyncingSecrets);
        self.wait_for_device(&device).await?;
        link(left).send(&secrets_message(&self.bundle)).await?;
        info!("secrets sent");
        Ok(device_id)
    }

    /// `GET /devices/{id}` (percent-encoded by ruma) with our session: 200 = exists, 404 = free.
    async fn device_exists(&self, device: &OwnedDeviceId) -> Flow<bool> {
        match self.client.send(get_device::v3::Request::new(device.clone())).await {
            Ok(_) => Ok(true),
            Err(e) if e.as_client_api_error().is_some_and(|c| c.status_code.as_u16() == 404) => Ok(false),
            Err(_) => {
                Err(LinkError::Network("asking the homeserver about the new device failed".into()).into())
            }
        }
    }

    async fn wait_for_device(&self, device: &OwnedDeviceId) -> Flow<()> {
        let until = Instant::now() + self.device_creation_timeout;
        loop {
            if self.device_exists(device).await? {
                return Ok(());
            }
            if Instant::now() + DEVICE_POLL > until {
                return Err(LinkError::DeviceNotFound.into());
            }
            tokio::time::sleep(DEVICE_POLL).await;
        }
    }
}

/// Whether we scanned (S): the other device's user still has a code to type.
fn ui_scanned(left: &Leftovers) -> bool {
    left.link.as_ref().is_some_and(|l| l.scanned)
}

fn secrets_message(bundle: &SecretsBundle) -> LoginMessage {
    // Through JSON: the SDK's types keep their fields private to their serde form.
    let v = serde_json::to_value(bundle).unwrap_or(Value::Null);
    let s = |p: &str| v.pointer(p).and_then(Value::as_str).unwrap_or_default().to_owned();
    LoginMessage::Secrets {
        cross_signing: CrossSigningSecrets {
            master_key: s("/cross_signing/master_key"),
            self_signing_key: s("/cross_signing/self_signing_key"),
            user_signing_key: s("/cross_signing/user_signing_key"),
        },
        backup: v.get("backup").filter(|b| !b.is_null()).map(|_| BackupSecrets {
            algorithm: s("/backup/algorithm"),
            key: s("/backup/key"),
            backup_version: s("/backup/backup_version"),
        }),
    }
}

enum GrantStart {
    Scanned(LoginQr),
    Generated(Generator),
}

// ---------------------------------------------------------------------------------------------
// Login: the daemon is the new device

struct LoginFlow {
    http: reqwest::Client,
    target: Arc<dyn LoginTarget>,
    oauth: OAuthClient,
    client_ids: Arc<Mutex<HashMap<String, String>>>,
    device_display_name: String,
}

/// The OAuth side of a login in progress.
struct Grant {
    client: Client,
    metadata: device_grant::Metadata,
    client_id: String,
    device_id: String,
    authorization: device_grant::DeviceAuthorization,
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
            LinkError::LoginFailed("the sign-in was denied on the other device".into())
        }
        GrantError::Expired => {
            LinkError::Expired("the sign-in request expired before it was approved".into())
        }
        GrantError::Network => LinkError::Network("the OAuth server could not be reached".into()),
        other => LinkError::Network(other.to_string()),
    }
}

impl LoginFlow {
    async fn run(&self, start: LoginStart, ui: &mut Ui, left: &mut Leftovers) -> Flow<(String, String)> {
        let grant = match start {
            LoginStart::Scanned { qr, server } => {
                // Fail fast, before the other device's user is asked anything.
                let prepared = self.prepare(&server).await?;
                let rv = join(&self.http, &qr).await?;
                scanner_handshake(rv, qr.key(), left).await?;
                show_check_code(ui, &link(left).channel);
                let grant = self.authorize(prepared).await?;
                link(left).send(&protocol_message(&grant)).await?;
                grant
            }
            LoginStart::Generated(generator) => {
                generator_handshake(generator, ui, left).await?;
                let (msg, _) = link(left).recv(Pace::Now).await?;
                let server = match &msg {
                    LoginMessage::Protocols { protocols, homeserver, base_url } => {
                        if !protocols.iter().any(|p| p == DEVICE_AUTHORIZATION_GRANT) {
                            return Err(Stop::local(
                                LinkError::Unsupported(
                                    "the other device offers no login protocol we speak".into(),
                                ),
                                FailureReason::UnsupportedProtocol,
                            ));
                        }
                        let named = base_url.as_deref().or(homeserver.as_deref()).unwrap_or_default();
                        match HomeserverRef::parse(named) {
                            Some(HomeserverRef::Url(u)) => u.to_string(),
                            Some(HomeserverRef::ServerName(n)) => n,
                            None => {
                                return Err(Stop::local(
                                    LinkError::ProtocolError(
                                        "the other device named no usable homeserver".into(),
                                    ),
                                    FailureReason::UnexpectedMessageReceived,
                                ));
                            }
                        }
                    }
                    other => return Err(unexpected(other, "m.login.protocols")),
                };
                let prepared = self.prepare(&server).await?;
                let grant = self.authorize(prepared).await?;
                link(left).send(&protocol_message(&grant)).await?;
                grant
            }
        };
        let (msg, _) = link(left).recv(Pace::Human).await?;
        if !matches!(msg, LoginMessage::ProtocolAccepted {}) {
            return Err(unexpected(&msg, "m.login.protocol_accepted"));
        }
        ui.emit(FlowEvent::WaitingForToken {
            user_code: Some(Secret(grant.authorization.user_code.clone())),
        });
        let tokens =
            device_grant::poll_tokens(&self.http, &grant.metadata, &grant.client_id, &grant.authorization)
                .await
                .map_err(|e| match e {
                    GrantError::AccessDenied => Stop { error: Some(grant_error(e)), tell: Tell::Declined },
                    GrantError::Expired => Stop::local(grant_error(e), FailureReason::AuthorizationExpired),
                    other => Stop::from(grant_error(other)),
                })?;
        let homeserver = grant.client.homeserver();
        let user_id = whoami(&self.http, &homeserver, &tokens.access_token, &grant.device_id).await?;
        let session = OAuthSession {
            client_id: ClientId::new(grant.client_id.clone()),
            user: UserSession {
                meta: SessionMeta { user_id: user_id.clone(), device_id: grant.device_id.as_str().into() },
                tokens: SessionTokens {
                    access_token: tokens.access_token.clone(),
                    refresh_token: tokens.refresh_token.clone(),
                },
            },
        };
        grant
            .client
            .oauth()
            .restore_session(session, RoomLoadSettings::default())
            .await
            .map_err(|_| LinkError::Failed("cannot set up the new session".into()))?;
        link(left).send(&LoginMessage::Success {}).await?;
        ui.emit(FlowEvent::SyncingSecrets);
        let (msg, plain) = link(left).recv(Pace::Machine).await?;
        if !matches!(msg, LoginMessage::Secrets { .. }) {
            return Err(unexpected(&msg, "m.login.secrets"));
        }
        // The last message: nobody reads after us.
        if let Some(link) = left.link.take() {
            link.rv.delete().await;
        }
        let bundle: SecretsBundle = serde_json::from_slice(&plain).map_err(|_| {
            Stop::silent(LinkError::ProtocolError("the secrets from the other device are malformed".into()))
        })?;
        // Imports the keys, signs our device with the self-signing key and uploads keys and
        // signature together; then connects to the key backup. Any failure is fatal.
        grant.client.encryption().import_secrets_bundle(&bundle).await.map_err(|_| {
            Stop::silent(LinkError::Failed(
                "importing the secrets or uploading the signed device keys failed".into(),
            ))
        })?;
        info!("secrets imported, device cross-signed");
        rename_device(&grant.client, &self.device_display_name).await;
        self.target.adopt(grant.client).await.map_err(Stop::silent)?;
        Ok((user_id.to_string(), grant.device_id))
    }

    /// The new session's client (keyring and store first: nothing is written without them), the
    /// OAuth metadata and our client registration.
    async fn prepare(&self, server: &str) -> Flow<(Client, device_grant::Metadata, String)> {
        let client = self.target.new_client(server).await?;
        let homeserver = client.homeserver();
        let metadata = device_grant::metadata(&self.http, &homeserver).await.map_err(grant_error)?;
        let issuer = metadata.issuer.to_string();
        let cached = self.client_ids.lock().await.get(&issuer).cloned();
        let client_id = match cached {
            Some(id) => id,
            None => {
                let id = device_grant::register(
                    &self.http,
                    &metadata,
                    &self.oauth.client_name,
                    &self.oauth.client_uri,
                )
                .await
                .map_err(grant_error)?;
                self.client_ids.lock().await.insert(issuer, id.clone());
                id
            }
        };
        Ok((client, metadata, client_id))
    }

    async fn authorize(
        &self,
        (client, metadata, client_id): (Client, device_grant::Metadata, String),
    ) -> Flow<Grant> {
        let device_id = device_grant::new_device_id();
        let authorization = device_grant::authorize(&self.http, &metadata, &client_id, &device_id)
            .await
            .map_err(grant_error)?;
        Ok(Grant { client, metadata, client_id, device_id, authorization })
    }
}

fn protocol_message(grant: &Grant) -> LoginMessage {
    LoginMessage::Protocol {
        protocol: DEVICE_AUTHORIZATION_GRANT.into(),
        device_authorization_grant: Some(DeviceGrant {
            verification_uri: grant.authorization.verification_uri.clone(),
            verification_uri_complete: grant.authorization.verification_uri_complete.clone(),
        }),
        device_id: grant.device_id.clone(),
    }
}

/// `GET /account/whoami` with the fresh token: who we are. A device other than the one we asked
/// for is logged (and ours kept): the scope names it.
async fn whoami(http: &reqwest::Client, homeserver: &Url, token: &str, device_id: &str) -> Flow<OwnedUserId> {
    let url = homeserver
        .join("_matrix/client/v3/account/whoami")
        .map_err(|_| LinkError::Failed("bad homeserver URL".into()))?;
    let r = http
        .get(url)
        .bearer_auth(token)
        .send()
        .await
        .map_err(|_| LinkError::Network("asking the homeserver who we are failed".into()))?;
    if !r.status().is_success() {
        return Err(LinkError::Network(format!("whoami answered HTTP {}", r.status().as_u16())).into());
    }
    let bytes = r.bytes().await.map_err(|_| LinkError::Network("whoami answer lost".into()))?;
    let v: Value = serde_json::from_slice(&bytes)
        .map_err(|_| LinkError::ProtocolError("whoami answer malformed".into()))?;
    if v.get("device_id").and_then(Value::as_str).is_some_and(|d| d != device_id) {
        warn!("the homeserver reports another device ID than the one requested");
    }
    v.get("user_id")
        .and_then(Value::as_str)
        .and_then(|u| OwnedUserId::try_from(u).ok())
        .ok_or_else(|| LinkError::ProtocolError("whoami answer has no user ID".into()).into())
}

/// Best effort: the device works without a display name.
async fn rename_device(client: &Client, name: &str) {
    let Some(device_id) = client.device_id() else { return };
    let rename = client.rename_device(device_id, name);
    match tokio::time::timeout(Duration::from_secs(10), rename).await {
        Ok(Ok(_)) => {}
        Ok(Err(_)) | Err(_) => warn!("could not set the device display name"),
    }
}

enum LoginStart {
    Scanned { qr: LoginQr, server: String },
    Generated(Generator),
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
        let scanned = request.qr_code.as_ref().map(|b| scanned_qr(&b.0, Intent::Login)).transpose()?;
        // Fail fast: without the private cross-signing keys there is nothing to share.
        let bundle = secrets.secrets_bundle().await?;
        let homeserver = client.homeserver();
        let token = client.access_token();
        let (start, opening) = match scanned {
            Some(qr) => {
                let generation = qr_generation(&qr);
                (GrantStart::Scanned(qr), Opening { generation, created: None })
            }
            None => {
                let generation =
                    choose_generation(&self.http, request.generation, &homeserver, token.as_deref()).await?;
                let (rv, generator, qr) =
                    create(&self.http, generation, &homeserver, token.as_deref(), Intent::Reciprocate)
                        .await?;
                (GrantStart::Generated(generator), Opening { generation, created: Some((rv, qr)) })
            }
        };
        let (handle, port) = FlowHandle::pair(wire_protocol(opening.generation));
        let flow = GrantFlow {
            http: self.http.clone(),
            client: client.clone(),
            bundle,
            device_creation_timeout: request.device_creation_timeout,
        };
        let deadline = Instant::now() + request.timeout;
        let span = info_span!("grant", scanned = opening.created.is_none(), generation = ?opening.generation);
        tokio::spawn(
            async move {
                let (outcome, result) =
                    run_flow(port, opening, deadline, async |ui, left| flow.run(start, ui, left).await).await;
                let user_id = client.user_id().map(|u| u.to_string()).unwrap_or_default();
                let end = outcome_of(result, |device_id| FlowOutcome::Success { user_id, device_id });
                info!(outcome = outcome_name(&end), "grant flow ended");
                let _ = outcome.send(end);
            }
            .instrument(span),
        );
        Ok(handle)
    }

    async fn start_login(&self, target: Arc<dyn LoginTarget>, request: LoginRequest) -> Result<FlowHandle> {
        let scanned = request.qr_code.as_ref().map(|b| scanned_qr(&b.0, Intent::Reciprocate)).transpose()?;
        target.prepare().await?;
        match self.start_login_inner(target.clone(), request, scanned).await {
            Ok(handle) => Ok(handle),
            Err(e) => {
                target.abandon().await;
                Err(e)
            }
        }
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
                if HomeserverRef::parse(&server).is_none() {
                    return Err(LinkError::InvalidQrCode("the QR code names no usable homeserver".into()));
                }
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
                let (rv, generator, qr) =
                    create(&self.http, generation, &homeserver, None, Intent::Login).await?;
                (LoginStart::Generated(generator), Opening { generation, created: Some((rv, qr)) })
            }
        };
        let (handle, port) = FlowHandle::pair(wire_protocol(opening.generation));
        let flow = LoginFlow {
            http: self.http.clone(),
            target: target.clone(),
            oauth: self.oauth.clone(),
            client_ids: self.client_ids.clone(),
            device_display_name: request.device_display_name.clone(),
        };
        let deadline = Instant::now() + request.timeout;
        let span = info_span!("login", scanned = opening.created.is_none(), generation = ?opening.generation);
        tokio::spawn(
            async move {
                let (outcome, result) =
                    run_flow(port, opening, deadline, async |ui, left| flow.run(start, ui, left).await).await;
                let end =
                    outcome_of(result, |(user_id, device_id)| FlowOutcome::Success { user_id, device_id });
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
    fn peer_reasons_pass_through_by_name_only() {
        assert_eq!(peer_failure("user_cancelled"), LinkError::LoginFailed("user_cancelled".into()));
        assert_eq!(
            peer_failure("unable_to_open_verification_uri"),
            LinkError::LoginFailed("unable_to_open_verification_uri".into())
        );
        assert!(matches!(peer_failure("authorization_expired"), LinkError::Expired(_)));
        // An unknown reason is tolerated, but its text is not repeated.
        assert_eq!(peer_failure("<script>"), LinkError::LoginFailed("unknown reason".into()));
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
    fn unexpected_messages_are_answered_but_peer_failures_are_not() {
        let failure = LoginMessage::failure(FailureReason::DeviceNotFound);
        let stop = unexpected(&failure, "m.login.secrets");
        assert_eq!(stop.tell, Tell::Nothing);
        assert_eq!(stop.error, Some(LinkError::LoginFailed("device_not_found".into())));
        let stop = unexpected(&LoginMessage::Declined {}, "m.login.success");
        assert_eq!(stop.tell, Tell::Nothing);
        let stop = unexpected(&LoginMessage::Success {}, "m.login.protocol");
        assert_eq!(stop.tell, Tell::Failure(FailureReason::UnexpectedMessageReceived));
        assert!(matches!(stop.error, Some(LinkError::ProtocolError(_))));
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
        let plain = secrets_message(&bundle).encode();
        // What the new device gets: a secrets message that reads back as the same bundle.
        assert!(matches!(LoginMessage::decode(&plain), Ok(LoginMessage::Secrets { backup: Some(_), .. })));
        let back: SecretsBundle = serde_json::from_slice(&plain).unwrap();
        assert_eq!(serde_json::to_value(&back).unwrap(), json);
        // Without a backup there is no backup field.
        let mut no_backup = json.clone();
        no_backup.as_object_mut().unwrap().remove("backup");
        let bundle: SecretsBundle = serde_json::from_value(no_backup).unwrap();
        assert!(matches!(secrets_message(&bundle), LoginMessage::Secrets { backup: None, .. }));
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
        assert!(scanned_qr(&reciprocate, Intent::Reciprocate).is_ok());
        assert!(matches!(scanned_qr(&reciprocate, Intent::Login), Err(LinkError::InvalidQrCode(_))));
        let login = LoginQr::Msc4388 {
            prefix: Prefix::Stable,
            intent: Intent::Login,
            key: [7; 32],
            rendezvous_id: "01J".into(),
            base_url: "https://hs.example".into(),
        }
        .encode();
        assert!(matches!(qr_generation(&scanned_qr(&login, Intent::Login).unwrap()), Generation::Latest));
        assert!(matches!(scanned_qr(b"MATRIX\x02\x00", Intent::Login), Err(LinkError::InvalidQrCode(_))));
    }
}
