//! The D-Bus face of the daemon: names, the Manager and Flow objects, error mapping and caller
//! checks. Holds no crypto; talks to the engine through `protocol::Engine`.

pub mod args;
pub mod caller;
pub mod error;
pub mod flow;
mod handover;
pub mod manager;

use std::sync::{Arc, Mutex};

use std::time::Duration;

use futures_util::StreamExt as _;
use tokio::time::Instant;
use tracing::{info, warn};
use zbus::{
    Connection, connection,
    fdo::{DBusProxy, RequestNameFlags, RequestNameReply},
    names::OwnedUniqueName,
    zvariant::OwnedObjectPath,
};

use crate::{
    account::Account,
    config::Config,
    error::{LinkError, Result},
    protocol::{Engine, FlowKind},
};

pub const BUS_NAME: &str = "io.github.matrix_linkd.Linkd1";
pub const MANAGER_PATH: &str = "/io/github/matrix_linkd/Linkd1";
pub const FLOW_PATH_PREFIX: &str = "/io/github/matrix_linkd/Linkd1/flow";

/// What the D-Bus objects share.
pub struct Context {
    pub config: Arc<Config>,
    pub account: Arc<Account>,
    pub engine: Arc<dyn Engine>,
    /// The live flows: grants and delegations side by side (each has its own rendezvous,
    /// notification and consent), a login alone (it replaces the session everything else uses).
    active: Mutex<Vec<Running>>,
}

/// One live flow, as the limits see it.
struct Running {
    path: OwnedObjectPath,
    caller: OwnedUniqueName,
    kind: FlowKind,
}

/// A reserved flow slot, released on drop unless kept.
pub struct Slot<'a> {
    ctx: &'a Context,
    path: OwnedObjectPath,
    kept: bool,
}

impl Slot<'_> {
    pub fn keep(mut self) {
        self.kept = true;
    }
}

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        if !self.kept {
            self.ctx.release(&self.path);
        }
    }
}

impl Context {
    pub fn new(config: Arc<Config>, account: Arc<Account>, engine: Arc<dyn Engine>) -> Arc<Self> {
        Arc::new(Self { config, account, engine, active: Mutex::new(Vec::new()) })
    }

    /// The paths of the live flows.
    pub fn active(&self) -> Vec<OwnedObjectPath> {
        self.active.lock().expect("active lock").iter().map(|r| r.path.clone()).collect()
    }

    /// Takes a slot for a new flow of `kind` by `caller`, within `limits`.
    fn reserve(&self, path: &OwnedObjectPath, caller: &OwnedUniqueName, kind: FlowKind) -> Result<Slot<'_>> {
        let limits = &self.config.limits;
        let mut active = self.active.lock().expect("active lock");
        if active.iter().any(|r| r.path == *path) {
            return Err(LinkError::InvalidArgs("a flow with this `handle_token` is running".into()));
        }
        if kind == FlowKind::Login && !active.is_empty() {
            return Err(LinkError::Busy("other flows are running; a login must run alone".into()));
        }
        if active.iter().any(|r| r.kind == FlowKind::Login) {
            return Err(LinkError::Busy("a login is running".into()));
        }
        if active.len() >= limits.max_flows {
            return Err(LinkError::Busy(format!("{} flows are running (`limits.max_flows`)", active.len())));
        }
        if active.iter().filter(|r| r.caller == *caller).count() >= limits.max_flows_per_caller {
            return Err(LinkError::Busy(format!(
                "this caller already runs {} flows (`limits.max_flows_per_caller`)",
                limits.max_flows_per_caller
            )));
        }
        active.push(Running { path: path.clone(), caller: caller.clone(), kind });
        Ok(Slot { ctx: self, path: path.clone(), kept: false })
    }

    fn release(&self, path: &OwnedObjectPath) {
        self.active.lock().expect("active lock").retain(|r| r.path != *path);
    }
}

/// How the daemon could not take its place on the bus.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("another matrix-linkd owns {BUS_NAME} on this bus")]
    NameTaken,
    #[error("cannot serve on the session bus: {0}")]
    Bus(#[from] zbus::Error),
}

/// Connects to the session bus, exports the Manager, then takes the well-known name: neither
/// replacing another owner nor letting one replace us, nor waiting in a queue for it.
pub async fn serve(ctx: Arc<Context>) -> Result<Connection, ServeError> {
    let manager = manager::Manager { ctx: ctx.clone() };
    let conn = connection::Builder::session()?.serve_at(MANAGER_PATH, manager)?.build().await?;
    match conn.request_name_with_flags(BUS_NAME, RequestNameFlags::DoNotQueue.into()).await {
        Ok(RequestNameReply::PrimaryOwner | RequestNameReply::AlreadyOwner) => {}
        Ok(RequestNameReply::InQueue | RequestNameReply::Exists) | Err(zbus::Error::NameTaken) => {
            return Err(ServeError::NameTaken);
        }
        Err(e) => return Err(e.into()),
    }
    info!(name = BUS_NAME, "on the session bus");
    tokio::spawn(manager::publish_session(conn.clone(), ctx));
    Ok(conn)
}

/// Resolves when the daemon is no longer reachable under its name: the bus took the name away
/// (`NameLost`) or the bus itself went away. Either way the daemon must leave.
pub async fn name_lost(conn: &Connection) -> &'static str {
    let Ok(dbus) = DBusProxy::new(conn).await else { return "the session bus went away" };
    let Ok(mut lost) = dbus.receive_name_lost().await else { return "the session bus went away" };
    while let Some(signal) = lost.next().await {
        if signal.args().is_ok_and(|a| a.name() == BUS_NAME) {
            return "the bus name was taken away";
        }
    }
    "the session bus went away"
}

/// Cancels the live flows (each peer is told where the engine can), waits for them to end, then
/// for the clean-up they left (rendezvous sessions to delete), all within `limit`.
pub async fn shutdown(conn: &Connection, ctx: &Context, limit: Duration) {
    let deadline = Instant::now() + limit;
    for path in ctx.active() {
        if let Ok(iface) = conn.object_server().interface::<_, flow::Flow>(&path).await {
            let _ = iface.get().await.do_cancel();
        }
    }
    // Telling the other device may wait a moment for its pending write (see `Link::tell`).
    while !ctx.active().is_empty() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    if !ctx.engine.settle(deadline.saturating_duration_since(Instant::now())).await {
        warn!("some rendezvous sessions could not be deleted before the shutdown limit");
    }
}
