//! One `Flow` object per running flow: its properties, owner-only methods, and the task that
//! turns engine events into state changes and ends with exactly one unicast `Response`.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Instant,
};

use tokio::sync::{mpsc, oneshot, watch};
use tracing::{Instrument, debug, info, info_span, warn};
use zbus::{
    Connection, interface,
    message::Header,
    names::{BusName, OwnedUniqueName},
    object_server::{InterfaceRef, SignalEmitter},
    zvariant::{OwnedObjectPath, OwnedValue, Value},
};

use super::{
    Context,
    args::Checked,
    caller::{self, Owner},
    error::{Error, error_name},
};
use crate::{
    desktop::{self, Choice, qr::QrFormat},
    error::LinkError,
    protocol::{FlowCommand, FlowEvent, FlowHandle, FlowKind, FlowOutcome, FlowState, Secret, WireProtocol},
};

pub const INTERFACE: &str = "io.github.matrix_linkd.Linkd1.Flow";

/// `Response` codes.
const RESPONSE_SUCCESS: u32 = 0;
const RESPONSE_CANCELLED: u32 = 1;
const RESPONSE_FAILED: u32 = 2;

pub type Results = HashMap<String, OwnedValue>;

/// What the D-Bus layer decided when the flow started.
pub struct FlowSettings {
    pub kind: FlowKind,
    pub owner: Owner,
    /// The connection that called `Start*`: `Response` goes there.
    pub starter: OwnedUniqueName,
    pub detached: bool,
    pub notify: bool,
    pub open_uri: bool,
    pub expires_at_us: u64,
    /// Delegation: the program's name, for the approval notification.
    pub client_name: Option<String>,
}

#[derive(Default)]
struct FlowData {
    state: Option<FlowState>,
    error_name: String,
    qr: Option<Secret<Vec<u8>>>,
    check_code: Option<Secret<u8>>,
    check_code_sent: bool,
    verification_uri: Option<Secret<String>>,
    user_code: Option<Secret<String>>,
    peer_device_id: Option<String>,
    approved: bool,
    /// Delegation: the session document until `TakeSession` hands it over.
    session: Option<Secret<Vec<u8>>>,
    /// QR codes shown so far (`QrCodeSerial`).
    qr_serial: u32,
    /// The approval notification's task, ended with the flow.
    approval: Option<desktop::ApprovalTask>,
}

struct Shared {
    path: OwnedObjectPath,
    settings: FlowSettings,
    protocol: WireProtocol,
    data: Mutex<FlowData>,
    commands: mpsc::UnboundedSender<FlowCommand>,
    result: watch::Sender<Option<(u32, Results)>>,
}

/// The exported object. Cheap to clone; all state is shared.
#[derive(Clone)]
pub struct Flow {
    shared: Arc<Shared>,
}

fn ov(v: Value<'_>) -> OwnedValue {
    OwnedValue::try_from(v).expect("plain values convert")
}

impl Flow {
    fn data(&self) -> std::sync::MutexGuard<'_, FlowData> {
        self.shared.data.lock().expect("flow data lock")
    }

    fn current_state(&self) -> FlowState {
        self.data().state.unwrap_or(FlowState::Starting)
    }

    async fn check_owner(&self, conn: &Connection, hdr: &Header<'_>) -> Result<(), Error> {
        let allowed = match &self.shared.settings.owner {
            // The common case needs no round trip to the bus.
            Owner::Name(n) => caller::sender(hdr).map(|s| s == *n)?,
            owner => owner.allows(&caller::identify(conn, hdr).await?),
        };
        if allowed {
            Ok(())
        } else {
            Err(LinkError::AccessDenied("only the process that started this flow may use it".into()).into())
        }
    }

    /// Owner check for the secret getters. Without a header (an internal call) nothing is given.
    async fn check_owner_opt(&self, conn: &Connection, hdr: Option<Header<'_>>) -> zbus::fdo::Result<()> {
        let denied = || zbus::fdo::Error::AccessDenied("only the owner of this flow may read this".into());
        let hdr = hdr.ok_or_else(denied)?;
        self.check_owner(conn, &hdr).await.map_err(|_| denied())
    }

    /// Consent, from the `Approve` call or the notification's button.
    fn do_approve(&self) -> Result<(), LinkError> {
        let uri = {
            let mut d = self.data();
            if d.state != Some(FlowState::WaitingForApproval) || d.approved {
                return Err(LinkError::InvalidState("nothing is waiting for approval".into()));
            }
            d.approved = true;
            d.verification_uri.clone()
        };
        if self.shared.settings.open_uri
            && let Some(Secret(uri)) = uri
        {
            tokio::spawn(async move {
                desktop::open_uri(&uri).await;
            });
        }
        info!("flow approved");
        self.shared
            .commands
            .send(FlowCommand::Approve)
            .map_err(|_| LinkError::InvalidState("the flow has ended".into()))
    }

    pub fn do_cancel(&self) -> Result<(), LinkError> {
        if self.current_state().is_final() {
            return Err(LinkError::InvalidState("the flow has ended".into()));
        }
        self.shared
            .commands
            .send(FlowCommand::Cancel)
            .map_err(|_| LinkError::InvalidState("the flow has ended".into()))
    }
}

#[interface(name = "io.github.matrix_linkd.Linkd1.Flow")]
impl Flow {
    /// The two-digit code shown on the other device. Valid only in `WaitingForCheckCode`.
    async fn check_code(
        &self,
        code: Checked<u8>,
        #[zbus(header)] hdr: Header<'_>,
        #[zbus(connection)] conn: &Connection,
    ) -> Result<(), Error> {
        self.check_owner(conn, &hdr).await?;
        let code = code.get()?;
        if code > 99 {
            return Err(LinkError::InvalidArgs("the check code has two digits (0-99)".into()).into());
        }
        {
            let mut d = self.data();
            if d.state != Some(FlowState::WaitingForCheckCode) || d.check_code_sent {
                return Err(LinkError::InvalidState("no check code is expected now".into()).into());
            }
            d.check_code_sent = true;
        }
        self.shared
            .commands
            .send(FlowCommand::CheckCode(code))
            .map_err(|_| LinkError::InvalidState("the flow has ended".into()))?;
        Ok(())
    }

    /// Consent to let the new device in. Valid only in `WaitingForApproval`.
    async fn approve(
        &self,
        #[zbus(header)] hdr: Header<'_>,
        #[zbus(connection)] conn: &Connection,
    ) -> Result<(), Error> {
        self.check_owner(conn, &hdr).await?;
        self.do_approve()?;
        Ok(())
    }

    /// Refuse or stop. Valid in every live state; the peer is told where the protocol allows.
    async fn cancel(
        &self,
        #[zbus(header)] hdr: Header<'_>,
        #[zbus(connection)] conn: &Connection,
    ) -> Result<(), Error> {
        self.check_owner(conn, &hdr).await?;
        self.do_cancel()?;
        Ok(())
    }

    /// The QR code the daemon shows: `raw`, `png`, `svg` or `utf8`.
    #[zbus(out_args("qr_code"))]
    async fn get_qr_code(
        &self,
        format: Checked<String>,
        #[zbus(header)] hdr: Header<'_>,
        #[zbus(connection)] conn: &Connection,
    ) -> Result<Vec<u8>, Error> {
        self.check_owner(conn, &hdr).await?;
        let format: QrFormat = format.get()?.parse()?;
        let qr = self.data().qr.clone();
        let Some(Secret(bytes)) = qr else {
            return Err(LinkError::InvalidState("this flow has no QR code to show".into()).into());
        };
        Ok(desktop::qr::render(&bytes, format)?)
    }

    /// Blocks until the flow ends; returns what `Response` carries.
    #[zbus(out_args("response", "results"))]
    async fn wait(
        &self,
        #[zbus(header)] hdr: Header<'_>,
        #[zbus(connection)] conn: &Connection,
    ) -> Result<(u32, Results), Error> {
        self.check_owner(conn, &hdr).await?;
        let mut rx = self.shared.result.subscribe();
        let r = rx
            .wait_for(Option::is_some)
            .await
            .map_err(|_| LinkError::Failed("the flow vanished".into()))?
            .clone()
            .expect("waited for Some");
        Ok((r.0, r.1.iter().map(|(k, v)| (k.clone(), v.try_clone().expect("plain value"))).collect()))
    }

    /// Delegation: the new device's session, once, as a sealed memfd (never in a message body).
    #[zbus(out_args("session"))]
    async fn take_session(
        &self,
        #[zbus(header)] hdr: Header<'_>,
        #[zbus(connection)] conn: &Connection,
    ) -> Result<zbus::zvariant::OwnedFd, Error> {
        self.check_owner(conn, &hdr).await?;
        let document = {
            let mut d = self.data();
            if self.shared.settings.kind != FlowKind::Delegation || d.state != Some(FlowState::SyncingSecrets)
            {
                return Err(LinkError::InvalidState("no session is ready to be taken".into()).into());
            }
            d.session.take().ok_or_else(|| LinkError::InvalidState("the session was already taken".into()))?
        };
        let fd = super::handover::sealed_memfd(&document.0)
            .map_err(|e| LinkError::Failed(format!("cannot hand the session over: {e}")))?;
        drop(document);
        info!("session taken by the owner");
        self.shared
            .commands
            .send(FlowCommand::SessionTaken)
            .map_err(|_| LinkError::InvalidState("the flow has ended".into()))?;
        Ok(fd.into())
    }

    #[zbus(property(emits_changed_signal = "const"))]
    fn kind(&self) -> u32 {
        self.shared.settings.kind as u32
    }

    #[zbus(property(emits_changed_signal = "const"))]
    fn protocol(&self) -> u32 {
        self.shared.protocol as u32
    }

    #[zbus(property)]
    fn state(&self) -> u32 {
        self.current_state() as u32
    }

    #[zbus(property(emits_changed_signal = "const"))]
    fn expires_at(&self) -> u64 {
        self.shared.settings.expires_at_us
    }

    #[zbus(property)]
    fn error_name(&self) -> String {
        self.data().error_name.clone()
    }

    /// Which QR code is shown: one more each time an expired one is replaced.
    #[zbus(property)]
    fn qr_code_serial(&self) -> u32 {
        self.data().qr_serial
    }

    #[zbus(property(emits_changed_signal = "invalidates"))]
    async fn check_code_to_show(
        &self,
        #[zbus(header)] hdr: Option<Header<'_>>,
        #[zbus(connection)] conn: &Connection,
    ) -> zbus::fdo::Result<u8> {
        self.check_owner_opt(conn, hdr).await?;
        Ok(self.data().check_code.as_ref().map(|c| c.0).unwrap_or(0))
    }

    #[zbus(property(emits_changed_signal = "invalidates"))]
    async fn verification_uri(
        &self,
        #[zbus(header)] hdr: Option<Header<'_>>,
        #[zbus(connection)] conn: &Connection,
    ) -> zbus::fdo::Result<String> {
        self.check_owner_opt(conn, hdr).await?;
        Ok(self.data().verification_uri.as_ref().map(|c| c.0.clone()).unwrap_or_default())
    }

    #[zbus(property(emits_changed_signal = "invalidates"))]
    async fn user_code(
        &self,
        #[zbus(header)] hdr: Option<Header<'_>>,
        #[zbus(connection)] conn: &Connection,
    ) -> zbus::fdo::Result<String> {
        self.check_owner_opt(conn, hdr).await?;
        Ok(self.data().user_code.as_ref().map(|c| c.0.clone()).unwrap_or_default())
    }

    #[zbus(property(emits_changed_signal = "invalidates"))]
    async fn peer_device_id(
        &self,
        #[zbus(header)] hdr: Option<Header<'_>>,
        #[zbus(connection)] conn: &Connection,
    ) -> zbus::fdo::Result<String> {
        self.check_owner_opt(conn, hdr).await?;
        Ok(self.data().peer_device_id.clone().unwrap_or_default())
    }

    /// The end of the flow, unicast to the owner, exactly once.
    #[zbus(signal)]
    async fn response(emitter: &SignalEmitter<'_>, response: u32, results: Results) -> zbus::Result<()>;
}

/// Exports the flow object and runs it until its end.
pub async fn start(
    ctx: Arc<Context>,
    conn: &Connection,
    path: OwnedObjectPath,
    settings: FlowSettings,
    handle: FlowHandle,
) -> zbus::Result<()> {
    let FlowHandle { protocol, events, commands, outcome } = handle;
    let flow = Flow {
        shared: Arc::new(Shared {
            path: path.clone(),
            settings,
            protocol,
            data: Mutex::new(FlowData::default()),
            commands,
            result: watch::Sender::new(None),
        }),
    };
    conn.object_server().at(&path, flow.clone()).await?;
    let iface: InterfaceRef<Flow> = conn.object_server().interface(&path).await?;
    let span = info_span!("flow", id = %short_id(&path), kind = ?flow.shared.settings.kind);
    let conn = conn.clone();
    tokio::spawn(run(ctx, conn, flow, iface, events, outcome).instrument(span));
    Ok(())
}

/// A non-secret tag for log lines: the handle token part of the path.
fn short_id(path: &OwnedObjectPath) -> String {
    path.as_str().rsplit('/').next().unwrap_or_default().to_owned()
}

async fn run(
    ctx: Arc<Context>,
    conn: Connection,
    flow: Flow,
    iface: InterfaceRef<Flow>,
    mut events: mpsc::UnboundedReceiver<FlowEvent>,
    mut outcome: oneshot::Receiver<FlowOutcome>,
) {
    info!("flow started");
    let emitter = iface.signal_emitter().clone();
    set_state(&flow, &iface, FlowState::Starting).await;
    // The owner watch runs as its own task: a future that is only polled inside this loop's
    // `select!` could be left suspended while it holds the connection's write lock, and the state
    // signals sent from `apply` would then wait for it forever.
    let watch = {
        let (conn, shared) = (conn.clone(), flow.shared.clone());
        tokio::spawn(
            async move {
                owner_gone(&conn, &shared.settings).await;
                let commands = &shared.commands;
                info!("owner left the bus: cancelling");
                let _ = commands.send(FlowCommand::Cancel);
            }
            .in_current_span(),
        )
    };
    let end = loop {
        tokio::select! {
            Some(ev) = events.recv() => apply(&ctx, &conn, &flow, &iface, ev).await,
            out = &mut outcome => break out.unwrap_or(FlowOutcome::Failed(LinkError::Failed("the engine stopped".into()))),
        }
    };
    watch.abort();
    finish(&ctx, &conn, &flow, &iface, &emitter, end).await;
}

/// Resolves when the flow's owner leaves the bus. Never for detached flows.
async fn owner_gone(conn: &Connection, settings: &FlowSettings) {
    if settings.detached {
        return std::future::pending().await;
    }
    let name = settings.starter.clone();
    let Ok(dbus) = zbus::fdo::DBusProxy::new(conn).await else { return std::future::pending().await };
    let Ok(mut changes) = dbus.receive_name_owner_changed_with_args(&[(0, name.as_str())]).await else {
        return std::future::pending().await;
    };
    // The owner may have left before we subscribed.
    if !dbus.name_has_owner(BusName::Unique(name.as_ref())).await.unwrap_or(true) {
        return;
    }
    use futures_util::StreamExt;
    while let Some(signal) = changes.next().await {
        if let Ok(args) = signal.args()
            && args.new_owner().is_none()
        {
            return;
        }
    }
    std::future::pending().await
}

async fn set_state(flow: &Flow, iface: &InterfaceRef<Flow>, state: FlowState) {
    flow.data().state = Some(state);
    debug!(?state, "state");
    let _ = iface.get().await.state_changed(iface.signal_emitter()).await;
}

async fn apply(
    ctx: &Arc<Context>,
    conn: &Connection,
    flow: &Flow,
    iface: &InterfaceRef<Flow>,
    ev: FlowEvent,
) {
    let em = iface.signal_emitter();
    match ev {
        FlowEvent::QrReady(qr) => {
            {
                let mut d = flow.data();
                d.qr = Some(qr);
                d.qr_serial += 1;
            }
            let _ = iface.get().await.qr_code_serial_changed(em).await;
            set_state(flow, iface, FlowState::QrReady).await;
        }
        FlowEvent::WaitingForCheckCode => set_state(flow, iface, FlowState::WaitingForCheckCode).await,
        FlowEvent::ShowCheckCode(code) => {
            flow.data().check_code = Some(code);
            let _ = iface.get().await.check_code_to_show_invalidate(em).await;
            set_state(flow, iface, FlowState::ShowingCheckCode).await;
        }
        FlowEvent::WaitingForApproval { verification_uri, peer_device_id, user_code } => {
            let mut request = desktop::ApprovalRequest::new(peer_device_id.as_deref(), &verification_uri.0);
            if let Some(name) = &flow.shared.settings.client_name {
                request = request.for_client(name);
            }
            let has_user_code = user_code.is_some();
            {
                let mut d = flow.data();
                d.verification_uri = Some(verification_uri);
                d.peer_device_id = peer_device_id;
                if user_code.is_some() {
                    d.user_code = user_code;
                }
            }
            let i = iface.get().await;
            let _ = i.verification_uri_invalidate(em).await;
            let _ = i.peer_device_id_invalidate(em).await;
            if has_user_code {
                let _ = i.user_code_invalidate(em).await;
            }
            drop(i);
            set_state(flow, iface, FlowState::WaitingForApproval).await;
            if flow.shared.settings.kind != FlowKind::Login
                && flow.shared.settings.notify
                && ctx.config.desktop.notifications
            {
                // On the daemon's own connection; the task ends with the flow (see `finish`).
                let decider = flow.clone();
                let task = desktop::spawn_approval(conn.clone(), request, move |choice| match choice {
                    Choice::Approve => {
                        if let Err(e) = decider.do_approve() {
                            debug!(error = %e, "approval from notification ignored");
                        }
                    }
                    Choice::Deny => {
                        let _ = decider.do_cancel();
                    }
                });
                flow.data().approval = Some(task);
            }
        }
        FlowEvent::WaitingForToken { user_code } => {
            if let Some(code) = user_code {
                flow.data().user_code = Some(code);
                let _ = iface.get().await.user_code_invalidate(em).await;
            }
            set_state(flow, iface, FlowState::WaitingForToken).await;
        }
        FlowEvent::SyncingSecrets => set_state(flow, iface, FlowState::SyncingSecrets).await,
        FlowEvent::SessionReady(document) => {
            flow.data().session = Some(document);
            set_state(flow, iface, FlowState::SyncingSecrets).await;
        }
    }
}

async fn finish(
    ctx: &Arc<Context>,
    conn: &Connection,
    flow: &Flow,
    iface: &InterfaceRef<Flow>,
    emitter: &SignalEmitter<'static>,
    outcome: FlowOutcome,
) {
    let (state, code, results, summary) = match &outcome {
        FlowOutcome::Success { user_id, device_id, homeserver_found, trust } => {
            let mut r = Results::new();
            r.insert("user_id".into(), ov(Value::from(user_id.as_str())));
            if !device_id.is_empty() {
                r.insert("device_id".into(), ov(Value::from(device_id.as_str())));
            }
            if let Some(found) = homeserver_found {
                r.insert("homeserver_found".into(), ov(Value::from(*found)));
            }
            if let Some(trust) = trust {
                r.insert("trust".into(), ov(Value::from(*trust)));
            }
            (
                FlowState::Done,
                RESPONSE_SUCCESS,
                r,
                ("New device signed in", "The device can now read your encrypted messages."),
            )
        }
        FlowOutcome::Cancelled => (
            FlowState::Cancelled,
            RESPONSE_CANCELLED,
            Results::new(),
            ("Device linking cancelled", "No device was signed in."),
        ),
        FlowOutcome::Failed(e) => {
            let name = error_name(e);
            flow.data().error_name = name.clone();
            let _ = iface.get().await.error_name_changed(emitter).await;
            let mut r = Results::new();
            r.insert("error".into(), ov(Value::from(name.as_str())));
            r.insert("message".into(), ov(Value::from(e.to_string().as_str())));
            warn!(error = %name, "flow failed");
            (FlowState::Failed, RESPONSE_FAILED, r, ("Device linking failed", "No device was signed in."))
        }
    };
    set_state(flow, iface, state).await;
    // The approval notification goes with the flow, whether or not it was answered. Its task
    // is bounded; it must not hold up the `Response`.
    let approval = flow.data().approval.take();
    if let Some(approval) = approval {
        tokio::spawn(approval.finish().in_current_span());
    }
    {
        // Secrets go as soon as they are of no use.
        let mut d = flow.data();
        d.qr = None;
        d.check_code = None;
        d.verification_uri = None;
        d.user_code = None;
        d.session = None;
    }
    let settings = &flow.shared.settings;
    let unicast = emitter.clone().set_destination(BusName::Unique(settings.starter.as_ref()));
    if let Err(e) = Flow::response(
        &unicast,
        code,
        results.iter().map(|(k, v)| (k.clone(), v.try_clone().expect("plain"))).collect(),
    )
    .await
    {
        debug!(error = %e, "Response not delivered (owner gone?)");
    }
    flow.shared.result.send_replace(Some((code, results)));
    if settings.kind != FlowKind::Login && settings.notify && ctx.config.desktop.notifications {
        tokio::spawn(desktop::notify_result(conn.clone(), summary.0, summary.1).in_current_span());
    }
    info!(response = code, "flow ended");
    let _ = conn.object_server().remove::<Flow, _>(&flow.shared.path).await;
    ctx.release(&flow.shared.path);
}

/// Seconds since the epoch plus `d`, in microseconds, for `ExpiresAt`.
pub fn expires_at_us(d: std::time::Duration) -> u64 {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    (now + d).as_micros() as u64
}

/// Deadline for a detached owner, matching `ExpiresAt`.
pub fn detached_until(d: std::time::Duration) -> Instant {
    Instant::now() + d
}
