//! The task behind one `Flow` object: turns the engine's events into state changes (and the
//! approval notification), cancels when the owner leaves the bus, and ends with exactly one
//! unicast `Response`.

use std::sync::{Arc, Mutex};

use matrix_linkd_api::{FLOW_PATH_PREFIX, results};

use tokio::sync::{mpsc, oneshot, watch};
use tracing::{Instrument, debug, info, info_span, warn};
use zbus::{
    Connection,
    names::BusName,
    object_server::{InterfaceRef, SignalEmitter},
    zvariant::{ObjectPath, OwnedObjectPath, Value},
};

use super::{
    Flow, FlowData, FlowSettings, RESPONSE_CANCELLED, RESPONSE_FAILED, RESPONSE_SUCCESS, Results, Shared, ov,
};
use crate::{
    dbus::{context::Context, error::error_name, introspect},
    desktop::{self, Choice},
    error::LinkError,
    protocol::{FlowCommand, FlowEvent, FlowHandle, FlowOutcome, FlowState, Success, kinds},
};

/// Whether this flow speaks to the user through desktop notifications: its kind asks the user,
/// its caller did not say `notify: false`, the config allows them.
fn notifies(ctx: &Context, settings: &FlowSettings) -> bool {
    kinds::rules(settings.kind).asks_user && settings.notify && ctx.config.desktop.notifications
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
    let tree = ctx.tree().await;
    conn.object_server().at(&path, flow.clone()).await?;
    introspect::own_object(conn, &ctx, &path).await?;
    if let Some((node, _)) = path.as_str().rsplit_once('/') {
        introspect::guard(conn, &ctx, &ObjectPath::try_from(node)?, true).await?;
    }
    drop(tree);
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
            if notifies(ctx, &flow.shared.settings) {
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
        FlowOutcome::Success(Success { user_id, device_id, homeserver_found, trust }) => {
            let mut r = Results::new();
            r.insert(results::USER_ID.into(), ov(Value::from(user_id.as_str())));
            if !device_id.is_empty() {
                r.insert(results::DEVICE_ID.into(), ov(Value::from(device_id.as_str())));
            }
            if let Some(found) = homeserver_found {
                r.insert(results::HOMESERVER_FOUND.into(), ov(Value::from(*found)));
            }
            if let Some(trust) = trust {
                r.insert(results::TRUST.into(), ov(Value::from(*trust)));
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
            r.insert(results::ERROR.into(), ov(Value::from(name.as_str())));
            r.insert(results::MESSAGE.into(), ov(Value::from(e.to_string().as_str())));
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
    // The slot is free before anyone hears of the end: an owner that starts its next flow on the
    // `Response` (or on `Wait`'s answer) is not refused `Busy`. The path stays taken until the
    // object is gone.
    ctx.ended(&flow.shared.path);
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
    if notifies(ctx, settings) {
        tokio::spawn(desktop::notify_result(conn.clone(), summary.0, summary.1).in_current_span());
    }
    info!(response = code, "flow ended");
    let path = &flow.shared.path;
    let _tree = ctx.tree().await;
    let _ = conn.object_server().remove::<Flow, _>(path).await;
    if ctx.release(path) {
        remove_caller_node(conn, path).await;
    }
}

/// Takes the caller's node (`/flow/<sender>`) out of the tree after its last flow: zbus removes an
/// object's own node but not the parent it made for it, and the tree would grow by one node for
/// each connection that ever ran a flow. The node goes with the member-less interface that kept it
/// (`introspect::Node`). The caller holds `Context::tree`.
async fn remove_caller_node(conn: &Connection, path: &OwnedObjectPath) {
    let Some((node, _)) = path.as_str().rsplit_once('/') else { return };
    if !node.starts_with(&format!("{FLOW_PATH_PREFIX}/")) {
        return;
    }
    if let Err(e) = introspect::remove_container(conn, node).await {
        debug!(error = %e, "the caller's node was not removed");
    }
}
