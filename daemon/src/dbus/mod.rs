//! The D-Bus face of the daemon: names, the Manager and Flow objects, error mapping and caller
//! checks. Holds no crypto; talks to the engine through `protocol::Engine`.

pub mod caller;
pub mod error;
pub mod flow;
pub mod manager;

use std::sync::{Arc, Mutex};

use tracing::info;
use zbus::{Connection, connection, zvariant::OwnedObjectPath};

use crate::{
    account::Account,
    config::Config,
    error::{LinkError, Result},
    protocol::Engine,
};

pub const BUS_NAME: &str = "io.github.matrix_linkd.Linkd1";
pub const MANAGER_PATH: &str = "/io/github/matrix_linkd/Linkd1";
pub const FLOW_PATH_PREFIX: &str = "/io/github/matrix_linkd/Linkd1/flow";

/// What the D-Bus objects share.
pub struct Context {
    pub config: Arc<Config>,
    pub account: Arc<Account>,
    pub engine: Arc<dyn Engine>,
    /// The one live flow: the rendezvous, the keyring and the session are one of a kind.
    active: Mutex<Option<OwnedObjectPath>>,
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
        Arc::new(Self { config, account, engine, active: Mutex::new(None) })
    }

    pub fn active(&self) -> Option<OwnedObjectPath> {
        self.active.lock().expect("active lock").clone()
    }

    fn reserve(&self, path: &OwnedObjectPath) -> Result<Slot<'_>> {
        let mut active = self.active.lock().expect("active lock");
        if active.is_some() {
            return Err(LinkError::Busy("another flow is running".into()));
        }
        *active = Some(path.clone());
        Ok(Slot { ctx: self, path: path.clone(), kept: false })
    }

    fn release(&self, path: &OwnedObjectPath) {
        let mut active = self.active.lock().expect("active lock");
        if active.as_ref() == Some(path) {
            *active = None;
        }
    }
}

/// Connects to the session bus, exports the Manager, then takes the well-known name.
pub async fn serve(ctx: Arc<Context>) -> zbus::Result<Connection> {
    let manager = manager::Manager { ctx: ctx.clone() };
    let conn =
        connection::Builder::session()?.serve_at(MANAGER_PATH, manager)?.name(BUS_NAME)?.build().await?;
    info!(name = BUS_NAME, "on the session bus");
    tokio::spawn(manager::publish_session(conn.clone(), ctx));
    Ok(conn)
}

/// Cancels the live flow (the peer is told where the engine can) and waits for it to end.
pub async fn shutdown(conn: &Connection, ctx: &Context) {
    let Some(path) = ctx.active() else { return };
    if let Ok(iface) = conn.object_server().interface::<_, flow::Flow>(&path).await {
        let _ = iface.get().await.do_cancel();
    }
    // Telling the other device may wait a moment for its pending write (see `Link::tell`).
    for _ in 0..80 {
        if ctx.active().is_none() {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}
