//! Which flows run, as the limits see them: grants and delegations side by side within
//! `limits.max_flows` and `limits.max_flows_per_caller`, a login alone, one flow per object path.

use std::sync::Mutex;

use zbus::{names::OwnedUniqueName, zvariant::OwnedObjectPath};

use crate::{
    config::Limits,
    error::{LinkError, Result},
    protocol::{FlowKind, kinds},
};

/// One live flow.
struct Running {
    path: OwnedObjectPath,
    caller: OwnedUniqueName,
    kind: FlowKind,
    /// The flow has its outcome and is being taken down: it no longer counts against the limits,
    /// but its path stays taken until its object is gone.
    ended: bool,
}

#[derive(Default)]
pub struct Slots {
    list: Mutex<Vec<Running>>,
}

/// A reserved flow slot, released on drop unless kept.
pub struct Slot<'a> {
    slots: &'a Slots,
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
            self.slots.release(&self.path);
        }
    }
}

impl Slots {
    fn list(&self) -> std::sync::MutexGuard<'_, Vec<Running>> {
        self.list.lock().expect("slots lock")
    }

    /// The paths of the flows whose objects exist.
    pub fn paths(&self) -> Vec<OwnedObjectPath> {
        self.list().iter().map(|r| r.path.clone()).collect()
    }

    /// Takes a slot for a new flow of `kind` by `caller` at `path`, within `limits`.
    pub fn reserve(
        &self,
        limits: &Limits,
        path: &OwnedObjectPath,
        caller: &OwnedUniqueName,
        kind: FlowKind,
    ) -> Result<Slot<'_>> {
        let mut list = self.list();
        if list.iter().any(|r| r.path == *path) {
            return Err(LinkError::InvalidArgs("a flow with this `handle_token` is running".into()));
        }
        let running: Vec<&Running> = list.iter().filter(|r| !r.ended).collect();
        if kinds::rules(kind).exclusive && !running.is_empty() {
            return Err(LinkError::Busy(format!(
                "other flows are running; {} must run alone",
                kinds::rules(kind).method
            )));
        }
        if let Some(alone) = running.iter().find(|r| kinds::rules(r.kind).exclusive) {
            return Err(LinkError::Busy(format!("{} is running alone", kinds::rules(alone.kind).method)));
        }
        if running.len() >= limits.max_flows {
            return Err(LinkError::Busy(format!("{} flows are running (`limits.max_flows`)", running.len())));
        }
        if running.iter().filter(|r| r.caller == *caller).count() >= limits.max_flows_per_caller {
            return Err(LinkError::Busy(format!(
                "this caller already runs {} flows (`limits.max_flows_per_caller`)",
                limits.max_flows_per_caller
            )));
        }
        list.push(Running { path: path.clone(), caller: caller.clone(), kind, ended: false });
        Ok(Slot { slots: self, path: path.clone(), kept: false })
    }

    /// The flow at `path` has its outcome: its slot counts no more, its path stays taken.
    pub fn ended(&self, path: &OwnedObjectPath) {
        if let Some(r) = self.list().iter_mut().find(|r| r.path == *path) {
            r.ended = true;
        }
    }

    /// The flow at `path` is gone, its object too. Whether no other flow lives under the same
    /// parent node (the caller's `/flow/<sender>`).
    pub fn release(&self, path: &OwnedObjectPath) -> bool {
        let mut list = self.list();
        list.retain(|r| r.path != *path);
        let node = parent(path);
        !list.iter().any(|r| parent(&r.path) == node)
    }
}

fn parent(path: &OwnedObjectPath) -> &str {
    path.as_str().rsplit_once('/').map_or("", |(parent, _)| parent)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn path(n: u32) -> OwnedObjectPath {
        OwnedObjectPath::try_from(format!("/io/github/matrix_linkd/Linkd1/flow/t{n}")).unwrap()
    }

    fn caller(n: u32) -> OwnedUniqueName {
        OwnedUniqueName::try_from(format!(":1.{n}")).unwrap()
    }

    fn busy<T>(r: Result<T>) -> bool {
        matches!(r, Err(LinkError::Busy(_)))
    }

    #[test]
    fn limits_per_caller_overall_and_for_a_login() {
        let slots = Slots::default();
        let limits = Limits { max_flows: 3, max_flows_per_caller: 2 };
        slots.reserve(&limits, &path(1), &caller(1), FlowKind::Grant).unwrap().keep();
        slots.reserve(&limits, &path(2), &caller(1), FlowKind::Delegation).unwrap().keep();
        assert!(busy(slots.reserve(&limits, &path(3), &caller(1), FlowKind::Grant)));
        slots.reserve(&limits, &path(3), &caller(2), FlowKind::Grant).unwrap().keep();
        assert!(busy(slots.reserve(&limits, &path(4), &caller(3), FlowKind::Grant)));
        assert!(busy(slots.reserve(&limits, &path(4), &caller(3), FlowKind::Login)));
        for n in 1..=3 {
            slots.release(&path(n));
        }
        slots.reserve(&limits, &path(5), &caller(1), FlowKind::Login).unwrap().keep();
        assert!(busy(slots.reserve(&limits, &path(6), &caller(2), FlowKind::Grant)));
        // A slot not kept (the flow could not start) is given back.
        slots.release(&path(5));
        drop(slots.reserve(&limits, &path(7), &caller(1), FlowKind::Grant).unwrap());
        assert!(slots.paths().is_empty());
    }

    /// An ended flow frees its slot at once (its owner may start the next flow on the `Response`),
    /// while its path stays taken until its object is gone.
    #[test]
    fn an_ended_flow_counts_no_more_but_keeps_its_path() {
        let slots = Slots::default();
        let limits = Limits { max_flows: 1, max_flows_per_caller: 1 };
        slots.reserve(&limits, &path(1), &caller(1), FlowKind::Login).unwrap().keep();
        assert!(busy(slots.reserve(&limits, &path(2), &caller(1), FlowKind::Grant)));
        slots.ended(&path(1));
        let same_path = slots.reserve(&limits, &path(1), &caller(1), FlowKind::Grant);
        assert!(matches!(same_path, Err(LinkError::InvalidArgs(_))));
        slots.reserve(&limits, &path(2), &caller(1), FlowKind::Grant).unwrap().keep();
        slots.release(&path(1));
        assert_eq!(slots.paths(), vec![path(2)]);
    }
}
