//! The `org.freedesktop.DBus.Properties` interface of our objects, in place of zbus's own: the same
//! reads (each property's getter, with its caller checks), but `Set` of one of our properties (all
//! are read-only) answers `org.freedesktop.DBus.Error.PropertyReadOnly`, as the D-Bus
//! specification has it, where zbus answered an error of its own.

use std::collections::HashMap;

use matrix_linkd_api::{FLOW_INTERFACE, MANAGER_INTERFACE};
use zbus::{
    Connection, ObjectServer, fdo, interface,
    message::Header,
    names::InterfaceName,
    object_server::{Interface, SignalEmitter},
    zvariant::{ObjectPath, OwnedValue, Value},
};

use super::{flow::Flow, manager::Manager};

const PROPERTIES: &str = "org.freedesktop.DBus.Properties";

/// Our `org.freedesktop.DBus.Properties`, exported at the Manager's path and at each flow's.
pub struct ReadOnly;

/// Puts [`ReadOnly`] in place of zbus's own Properties interface at `path`, where one of our
/// objects is exported already (so the node stays).
pub async fn take_over(conn: &Connection, path: &ObjectPath<'_>) -> zbus::Result<()> {
    let server = conn.object_server();
    server.remove_named(path, InterfaceName::from_static_str_unchecked(PROPERTIES)).await?;
    server.at(path, ReadOnly).await?;
    Ok(())
}

/// The property `name` of the interface `I` at the call's path, read through its getter.
async fn read<I: Interface>(
    server: &ObjectServer,
    conn: &Connection,
    header: &Header<'_>,
    emitter: &SignalEmitter<'_>,
    name: &str,
) -> Option<fdo::Result<OwnedValue>> {
    let path = header.path()?;
    let iface = server.interface::<_, I>(path).await.ok()?;
    let object = iface.get().await;
    Interface::get(&*object, name, server, conn, Some(header), emitter).await
}

async fn read_all<I: Interface>(
    server: &ObjectServer,
    conn: &Connection,
    header: &Header<'_>,
    emitter: &SignalEmitter<'_>,
) -> fdo::Result<HashMap<String, OwnedValue>> {
    let path = header.path().ok_or_else(|| fdo::Error::InvalidArgs("no object path".into()))?;
    let iface = server
        .interface::<_, I>(path)
        .await
        .map_err(|_| fdo::Error::UnknownInterface(format!("no {} here", I::name())))?;
    let object = iface.get().await;
    Interface::get_all(&*object, server, conn, Some(header), emitter).await
}

fn unknown(interface: &str, property: &str) -> fdo::Error {
    fdo::Error::UnknownProperty(format!("no property `{property}` in `{interface}` here"))
}

#[interface(name = "org.freedesktop.DBus.Properties")]
impl ReadOnly {
    async fn get(
        &self,
        interface_name: InterfaceName<'_>,
        property_name: &str,
        #[zbus(object_server)] server: &ObjectServer,
        #[zbus(connection)] conn: &Connection,
        #[zbus(header)] header: Header<'_>,
        #[zbus(signal_emitter)] emitter: SignalEmitter<'_>,
    ) -> fdo::Result<OwnedValue> {
        let read = match interface_name.as_str() {
            MANAGER_INTERFACE => read::<Manager>(server, conn, &header, &emitter, property_name).await,
            FLOW_INTERFACE => read::<Flow>(server, conn, &header, &emitter, property_name).await,
            _ => None,
        };
        read.unwrap_or_else(|| Err(unknown(&interface_name, property_name)))
    }

    async fn get_all(
        &self,
        interface_name: InterfaceName<'_>,
        #[zbus(object_server)] server: &ObjectServer,
        #[zbus(connection)] conn: &Connection,
        #[zbus(header)] header: Header<'_>,
        #[zbus(signal_emitter)] emitter: SignalEmitter<'_>,
    ) -> fdo::Result<HashMap<String, OwnedValue>> {
        match interface_name.as_str() {
            MANAGER_INTERFACE => read_all::<Manager>(server, conn, &header, &emitter).await,
            FLOW_INTERFACE => read_all::<Flow>(server, conn, &header, &emitter).await,
            other => Err(fdo::Error::UnknownInterface(format!("no `{other}` here"))),
        }
    }

    /// Every property of ours is read-only.
    #[allow(clippy::too_many_arguments, reason = "the arguments zbus hands a Properties method")]
    async fn set(
        &self,
        interface_name: InterfaceName<'_>,
        property_name: &str,
        _value: Value<'_>,
        #[zbus(object_server)] server: &ObjectServer,
        #[zbus(connection)] conn: &Connection,
        #[zbus(header)] header: Header<'_>,
        #[zbus(signal_emitter)] emitter: SignalEmitter<'_>,
    ) -> fdo::Result<()> {
        let exists = match interface_name.as_str() {
            MANAGER_INTERFACE => {
                read::<Manager>(server, conn, &header, &emitter, property_name).await.is_some()
            }
            FLOW_INTERFACE => read::<Flow>(server, conn, &header, &emitter, property_name).await.is_some(),
            _ => false,
        };
        if exists {
            Err(fdo::Error::PropertyReadOnly(format!("`{property_name}` is read-only")))
        } else {
            Err(unknown(&interface_name, property_name))
        }
    }

    /// As the standard interface declares it; zbus emits it for our objects' properties.
    #[zbus(signal)]
    async fn properties_changed(
        emitter: &SignalEmitter<'_>,
        interface_name: InterfaceName<'_>,
        changed_properties: HashMap<&str, Value<'_>>,
        invalidated_properties: &[&str],
    ) -> zbus::Result<()>;
}
