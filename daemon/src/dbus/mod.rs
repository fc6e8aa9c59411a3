//! The D-Bus face of the daemon: names, the Manager and Flow objects, error mapping and caller
//! checks. Holds no crypto; talks to the engine through `protocol::Engine`.

pub mod args;
pub mod caller;
pub mod error;
pub mod flow;
mod handover;
pub mod manager;
mod requests;
mod slots;

pub use slots::Slot;
use slots::Slots;

use std::sync::Arc;

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
    error::Result,
    protocol::{Engine, FlowKind},
};

/// The names on the bus: declared once in the `matrix-linkd-api` crate, which clients share.
pub use matrix_linkd_api::{BUS_NAME, FLOW_INTERFACE, FLOW_PATH_PREFIX, MANAGER_INTERFACE, MANAGER_PATH};

/// What the D-Bus objects share.
pub struct Context {
    pub config: Arc<Config>,
    pub account: Arc<Account>,
    pub engine: Arc<dyn Engine>,
    /// The live flows: grants and delegations side by side (each has its own rendezvous,
    /// notification and consent), a login alone (it replaces the session everything else uses).
    slots: Slots,
}

impl Context {
    pub fn new(config: Arc<Config>, account: Arc<Account>, engine: Arc<dyn Engine>) -> Arc<Self> {
        Arc::new(Self { config, account, engine, slots: Slots::default() })
    }

    /// The paths of the live flows.
    pub fn active(&self) -> Vec<OwnedObjectPath> {
        self.slots.paths()
    }

    /// Takes a slot for a new flow of `kind` by `caller`, within `limits`.
    fn reserve(&self, path: &OwnedObjectPath, caller: &OwnedUniqueName, kind: FlowKind) -> Result<Slot<'_>> {
        self.slots.reserve(&self.config.limits, path, caller, kind)
    }

    /// The flow at `path` has its outcome: its slot counts no more (its path stays taken).
    fn ended(&self, path: &OwnedObjectPath) {
        self.slots.ended(path)
    }

    /// The flow at `path` is gone.
    fn release(&self, path: &OwnedObjectPath) {
        self.slots.release(path)
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
