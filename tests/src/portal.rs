//! An `org.freedesktop.portal.OpenURI` stand-in on a private bus: it records each URI the daemon
//! asks to open and answers the request as xdg-desktop-portal does (`Request.Response` 0 on the
//! request's object), so the daemon neither waits for an answer nor falls back to `xdg-open`.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use anyhow::Result;
use zbus::zvariant::{OwnedObjectPath, OwnedValue};

use crate::Session;

#[derive(Clone, Default)]
pub struct OpenUriPortal {
    opened: Arc<Mutex<Vec<String>>>,
}

impl OpenUriPortal {
    /// Serves the portal on `session`'s bus as `org.freedesktop.portal.Desktop`, for as long as
    /// the returned connection lives.
    pub async fn serve(session: &Session) -> Result<(Self, zbus::Connection)> {
        let portal = Self::default();
        let conn = zbus::connection::Builder::address(session.bus_address.as_str())?
            .serve_at("/org/freedesktop/portal/desktop", portal.clone())?
            .name("org.freedesktop.portal.Desktop")?
            .build()
            .await?;
        Ok((portal, conn))
    }

    /// The URIs opened so far, in order.
    pub fn opened(&self) -> Vec<String> {
        self.opened.lock().unwrap().clone()
    }
}

#[zbus::interface(name = "org.freedesktop.portal.OpenURI")]
impl OpenUriPortal {
    #[zbus(name = "OpenURI")]
    fn open_uri(
        &self,
        _parent_window: &str,
        uri: &str,
        options: HashMap<String, OwnedValue>,
        #[zbus(header)] hdr: zbus::message::Header<'_>,
        #[zbus(connection)] conn: &zbus::Connection,
    ) -> OwnedObjectPath {
        self.opened.lock().unwrap().push(uri.to_owned());
        let sender = hdr.sender().map(|s| s.trim_start_matches(':').replace('.', "_")).unwrap_or_default();
        let token =
            options.get("handle_token").and_then(|v| <&str>::try_from(&**v).ok()).unwrap_or("t").to_owned();
        let path =
            OwnedObjectPath::try_from(format!("/org/freedesktop/portal/desktop/request/{sender}/{token}"))
                .expect("request path");
        let (conn, reply_path) = (conn.clone(), path.clone());
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(50)).await;
            let results: HashMap<String, OwnedValue> = HashMap::new();
            let _ = conn
                .emit_signal(
                    None::<()>,
                    &reply_path,
                    "org.freedesktop.portal.Request",
                    "Response",
                    &(0u32, results),
                )
                .await;
        });
        path
    }

    #[zbus(property, name = "version")]
    fn version(&self) -> u32 {
        4
    }
}

/// The real permission store of xdg-desktop-portal (`xdg-permission-store`, Debian package
/// `xdg-desktop-portal`) on a session's bus, keeping its tables in the session's private home.
/// Stopped when dropped.
pub struct PermissionStore {
    child: std::process::Child,
}

impl PermissionStore {
    pub const PROGRAM: &str = "/usr/libexec/xdg-permission-store";

    /// Starts it (`--replace`, no D-Bus activation on the private bus) and waits for its name.
    pub async fn start(session: &Session) -> Result<Self> {
        use zbus::names::BusName;
        let child = session
            .command(Self::PROGRAM)
            .arg("--replace")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .map_err(|e| anyhow::anyhow!("{} (apt-get install xdg-desktop-portal): {e}", Self::PROGRAM))?;
        let store = Self { child };
        let conn = session.connect().await?;
        let dbus = zbus::fdo::DBusProxy::new(&conn).await?;
        let name = BusName::try_from(crate::api::permissions::STORE_BUS_NAME)?;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        while !dbus.name_has_owner(name.clone()).await? {
            anyhow::ensure!(tokio::time::Instant::now() < deadline, "the permission store did not start");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(store)
    }

    /// The answers kept for `id` in our table: app ID → values.
    pub async fn lookup(session: &Session, id: &str) -> Result<HashMap<String, Vec<String>>> {
        use crate::api::permissions as p;
        let conn = session.connect().await?;
        let reply = conn
            .call_method(
                Some(p::STORE_BUS_NAME),
                p::STORE_PATH,
                Some(p::STORE_INTERFACE),
                "Lookup",
                &(p::TABLE, id),
            )
            .await;
        match reply {
            Ok(msg) => Ok(msg.body().deserialize::<(HashMap<String, Vec<String>>, OwnedValue)>()?.0),
            Err(zbus::Error::MethodError(name, _, _)) if name.as_str().ends_with(".NotFound") => {
                Ok(HashMap::new())
            }
            Err(e) => Err(e.into()),
        }
    }
}

impl Drop for PermissionStore {
    fn drop(&mut self) {
        self.child.kill().ok();
        self.child.wait().ok();
    }
}
