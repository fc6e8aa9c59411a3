//! What the D-Bus objects share: the configuration, the account, the engine and the live flows.

use std::sync::Arc;

use zbus::{names::OwnedUniqueName, zvariant::OwnedObjectPath};

use super::slots::{Slot, Slots};
use crate::{
    account::Account,
    config::Config,
    error::Result,
    protocol::{Engine, FlowKind},
};

/// What the D-Bus objects share.
pub struct Context {
    pub config: Arc<Config>,
    pub account: Arc<Account>,
    pub engine: Arc<dyn Engine>,
    /// The live flows: grants and delegations side by side (each has its own rendezvous,
    /// notification and consent), a login alone (it replaces the session everything else uses).
    slots: Slots,
    /// Held while a flow object is added to the object tree, and while one is taken out with the
    /// node of its caller (`/flow/<sender>`, which zbus leaves behind): a caller's node goes with
    /// its last flow, never from under a flow being added.
    tree: tokio::sync::Mutex<()>,
}

impl Context {
    pub fn new(config: Arc<Config>, account: Arc<Account>, engine: Arc<dyn Engine>) -> Arc<Self> {
        Arc::new(Self { config, account, engine, slots: Slots::default(), tree: Default::default() })
    }

    /// The paths of the live flows.
    pub fn active(&self) -> Vec<OwnedObjectPath> {
        self.slots.paths()
    }

    /// Takes a slot for a new flow of `kind` by `caller`, within `limits`.
    pub(super) fn reserve(
        &self,
        path: &OwnedObjectPath,
        caller: &OwnedUniqueName,
        kind: FlowKind,
    ) -> Result<Slot<'_>> {
        self.slots.reserve(&self.config.limits, path, caller, kind)
    }

    /// The flow at `path` has its outcome: its slot counts no more (its path stays taken).
    pub(super) fn ended(&self, path: &OwnedObjectPath) {
        self.slots.ended(path)
    }

    /// The flow at `path` is gone. Whether its caller has no other flow (its node may go).
    pub(super) fn release(&self, path: &OwnedObjectPath) -> bool {
        self.slots.release(path)
    }

    /// See `tree`.
    pub(super) async fn tree(&self) -> tokio::sync::MutexGuard<'_, ()> {
        self.tree.lock().await
    }
}
