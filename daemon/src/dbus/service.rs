//! The daemon's place on the session bus: taking the name (after the Manager is exported),
//! noticing when it is lost, and the shutdown that cancels the live flows first.

use std::{sync::Arc, time::Duration};

use futures_util::StreamExt as _;
use matrix_linkd_api::{BUS_NAME, MANAGER_PATH};
use tokio::time::Instant;
use tracing::{info, warn};
use zbus::{
    Connection,
    fdo::{DBusProxy, RequestNameFlags, RequestNameReply},
};

use super::{bounded, context::Context, flow, introspect, manager};

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
    let conn = bounded::session_builder().await?.serve_at(MANAGER_PATH, manager)?.build().await?;
    introspect::guard_tree(&conn, &ctx).await?;
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
