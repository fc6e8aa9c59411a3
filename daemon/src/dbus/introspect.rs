//! The `org.freedesktop.DBus.Introspectable` interface of the daemon's object tree, in place of
//! zbus's own: zbus describes a node with its whole subtree, so introspecting `/` or the Manager
//! listed every live flow's path, and with it the unique name of every program running one, to
//! any program on the bus. Here a node is described as dbus-daemon and GDBus describe one (its
//! interfaces and the names of its children), and a sandboxed app sees only its own flows: under
//! `…/flow` its own node alone, and introspecting another program's flow is `AccessDenied` (the
//! standard error, as for the flows' property reads). A program outside any sandbox (the user's
//! own) sees every flow, as it may read every flow's state. A caller the daemon cannot identify is
//! refused.
//!
//! zbus puts its own Introspectable on every node it makes and takes away a node that has nothing
//! but the standard interfaces left when one of them is removed. So the nodes without an object of
//! ours (`/` down to the Manager's parent, `…/flow`, and each caller's `…/flow/<sender>`) carry
//! [`Node`], an interface with no members that this description leaves out, before zbus's
//! Introspectable is swapped for [`Guarded`]; a caller's node goes with its [`Node`] after its
//! last flow.

use std::{collections::BTreeSet, fmt::Write as _, sync::Arc};

use matrix_linkd_api::{FLOW_PATH_PREFIX, MANAGER_PATH, flow_sender, sender_of};
use zbus::{
    Connection, ObjectServer, fdo, interface,
    message::Header,
    names::InterfaceName,
    object_server::Interface,
    zvariant::{ObjectPath, OwnedObjectPath},
};

use super::{Context, caller, flow::Flow, manager::Manager, properties::ReadOnly};

const INTROSPECTABLE: &str = "org.freedesktop.DBus.Introspectable";

/// A member-less interface that keeps a node of ours without an object in zbus's tree.
pub struct Node;

#[interface(name = "io.github.matrix_linkd.Linkd1.Node")]
impl Node {}

/// Our `org.freedesktop.DBus.Introspectable`.
pub struct Guarded {
    pub ctx: Arc<Context>,
}

/// Puts [`Guarded`] in place of zbus's Introspectable at `path`; `container` for a node without an
/// object of ours, which gets a [`Node`] first (idempotent).
pub async fn guard(
    conn: &Connection,
    ctx: &Arc<Context>,
    path: &ObjectPath<'_>,
    container: bool,
) -> zbus::Result<()> {
    let server = conn.object_server();
    if container {
        server.at(path, Node).await?;
    }
    let _ = server.remove_named(path, InterfaceName::from_static_str_unchecked(INTROSPECTABLE)).await;
    server.at(path, Guarded { ctx: ctx.clone() }).await?;
    Ok(())
}

/// Our standard interfaces on an object of ours (the Manager, a flow), once it is exported at
/// `path`: the read-only Properties (`properties::take_over`) and [`Guarded`].
pub async fn own_object(conn: &Connection, ctx: &Arc<Context>, path: &ObjectPath<'_>) -> zbus::Result<()> {
    super::properties::take_over(conn, path).await?;
    guard(conn, ctx, path, false).await
}

/// The nodes above the Manager and the flows' parent, and the Manager's own standard interfaces,
/// before the daemon takes its name.
pub async fn guard_tree(conn: &Connection, ctx: &Arc<Context>) -> zbus::Result<()> {
    let mut at = String::new();
    let mut containers = vec!["/".to_owned()];
    for part in MANAGER_PATH.split('/').filter(|p| !p.is_empty()) {
        at.push('/');
        at.push_str(part);
        if at != MANAGER_PATH {
            containers.push(at.clone());
        }
    }
    containers.push(FLOW_PATH_PREFIX.to_owned());
    for path in &containers {
        guard(conn, ctx, &ObjectPath::try_from(path.as_str())?, true).await?;
    }
    own_object(conn, ctx, &ObjectPath::from_static_str_unchecked(MANAGER_PATH)).await
}

/// Takes a caller's `…/flow/<sender>` node out of the tree (after its last flow).
pub async fn remove_container(conn: &Connection, path: &str) -> zbus::Result<bool> {
    conn.object_server().remove::<Node, _>(path).await
}

/// The children of `path` in our tree, as far as `sees` lets the caller see flows.
fn children(path: &str, flows: &[OwnedObjectPath], sees: impl Fn(&str) -> bool) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let below = if path == "/" { "/".to_owned() } else { format!("{path}/") };
    for tree_path in [MANAGER_PATH, FLOW_PATH_PREFIX].into_iter().chain(flows.iter().map(|p| p.as_str())) {
        let Some(rest) = tree_path.strip_prefix(&below) else { continue };
        let child = rest.split('/').next().unwrap_or_default();
        if child.is_empty() {
            continue;
        }
        if sender_of(tree_path).is_some_and(|s| !sees(s)) {
            continue;
        }
        names.insert(child.to_owned());
    }
    names
}

/// The standard Peer interface, which every node carries (zbus's own, whose type is not public).
const PEER_XML: &str = r#"  <interface name="org.freedesktop.DBus.Peer">
    <method name="Ping">
    </method>
    <method name="GetMachineId">
      <arg name="machine_id" type="s" direction="out"/>
    </method>
  </interface>
"#;

#[interface(name = "org.freedesktop.DBus.Introspectable")]
impl Guarded {
    async fn introspect(
        &self,
        #[zbus(object_server)] server: &ObjectServer,
        #[zbus(connection)] conn: &Connection,
        #[zbus(header)] header: Header<'_>,
    ) -> fdo::Result<String> {
        let path = header.path().ok_or_else(|| fdo::Error::InvalidArgs("no object path".into()))?.to_string();
        let caller = caller::identify(conn, &header)
            .await
            .map_err(|_| fdo::Error::AccessDenied("cannot tell which program is asking".into()))?;
        let own = flow_sender(caller.unique_name.as_str());
        let sees = |sender: &str| caller.sandbox_app.is_none() || sender == own;
        if sender_of(&path).is_some_and(|s| !sees(s)) {
            return Err(fdo::Error::AccessDenied("a sandboxed app sees only its own flows".into()));
        }
        let mut xml = String::from(
            "<!DOCTYPE node PUBLIC \"-//freedesktop//DTD D-BUS Object Introspection 1.0//EN\"\n \
             \"http://www.freedesktop.org/standards/dbus/1.0/introspect.dtd\">\n<node>\n",
        );
        xml.push_str(PEER_XML);
        Interface::introspect_to_writer(self, &mut xml, 2);
        if path == MANAGER_PATH {
            let manager = server.interface::<_, Manager>(MANAGER_PATH).await?;
            manager.get().await.introspect_to_writer(&mut xml, 2);
            ReadOnly.introspect_to_writer(&mut xml, 2);
        } else if let Ok(flow) = server.interface::<_, Flow>(path.as_str()).await {
            flow.get().await.introspect_to_writer(&mut xml, 2);
            ReadOnly.introspect_to_writer(&mut xml, 2);
        } else {
            fdo::Properties.introspect_to_writer(&mut xml, 2);
        }
        for child in children(&path, &self.ctx.active(), sees) {
            let _ = writeln!(xml, "  <node name=\"{child}\"/>");
        }
        xml.push_str("</node>\n");
        Ok(xml)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn paths(p: &[&str]) -> Vec<OwnedObjectPath> {
        p.iter().map(|p| OwnedObjectPath::try_from(*p).unwrap()).collect()
    }

    #[test]
    fn children_are_one_level_and_only_the_flows_a_caller_sees() {
        let flows = paths(&[
            &format!("{FLOW_PATH_PREFIX}/1_42/t1"),
            &format!("{FLOW_PATH_PREFIX}/1_42/t2"),
            &format!("{FLOW_PATH_PREFIX}/1_7/a"),
        ]);
        let all = |_: &str| true;
        assert_eq!(children("/", &flows, all), BTreeSet::from(["io".to_owned()]));
        assert_eq!(children(MANAGER_PATH, &flows, all), BTreeSet::from(["flow".to_owned()]));
        assert_eq!(
            children(FLOW_PATH_PREFIX, &flows, all),
            BTreeSet::from(["1_42".to_owned(), "1_7".to_owned()])
        );
        let own = |s: &str| s == "1_7";
        assert_eq!(children(FLOW_PATH_PREFIX, &flows, own), BTreeSet::from(["1_7".to_owned()]));
        assert_eq!(children(&format!("{FLOW_PATH_PREFIX}/1_42"), &flows, all).len(), 2);
        assert!(children(&format!("{FLOW_PATH_PREFIX}/1_42/t1"), &flows, all).is_empty());
    }
}
