//! A stand-in for xdg-desktop-portal on the test's private bus: `org.freedesktop.portal.Desktop`
//! with `Screenshot` (captures the Xvfb screen with ImageMagick's `import` and answers its
//! `file://` URI through the Request's `Response` signal) and `OpenURI` (records the URI, as a
//! browser would get it, and answers success) and `FileChooser.OpenFile` (answers the file the
//! test chose; GTK uses the portal with `GDK_DEBUG=portals`).

use std::{
    collections::HashMap,
    path::PathBuf,
    sync::{Arc, Mutex},
};

use anyhow::Result;
use zbus::{
    Connection,
    message::Header,
    names::BusName,
    zvariant::{OwnedObjectPath, OwnedValue, Value},
};

const PATH: &str = "/org/freedesktop/portal/desktop";

#[derive(Default)]
pub struct Seen {
    /// The screenshots the portal took (files).
    pub screenshots: Vec<PathBuf>,
    /// The URIs it was asked to open.
    pub opened: Vec<String>,
    /// How many times a file was asked for.
    pub files_asked: usize,
    /// The file the next `OpenFile` picks (the user's choice); none: the user cancels.
    pub next_file: Option<PathBuf>,
}

pub struct Portal {
    _conn: Connection,
    pub seen: Arc<Mutex<Seen>>,
}

fn request_path(
    header: &Header<'_>,
    options: &HashMap<String, OwnedValue>,
) -> zbus::fdo::Result<OwnedObjectPath> {
    let sender = header.sender().map(|s| s.trim_start_matches(':').replace('.', "_")).unwrap_or_default();
    let token = options
        .get("handle_token")
        .and_then(|v| <&str>::try_from(&**v).ok())
        .map(str::to_owned)
        .unwrap_or_else(|| format!("t{}", rand::random::<u32>()));
    OwnedObjectPath::try_from(format!("{PATH}/request/{sender}/{token}"))
        .map_err(|e| zbus::fdo::Error::InvalidArgs(e.to_string()))
}

/// Emits `Response` on the request object, shortly after the method returned its handle, to the
/// caller only (as xdg-desktop-portal does: GTK listens without a match rule).
fn respond(
    conn: Connection,
    header: &Header<'_>,
    path: OwnedObjectPath,
    code: u32,
    results: HashMap<String, OwnedValue>,
) {
    let caller = header.sender().map(|s| BusName::from(s.to_owned()));
    tokio::spawn(async move {
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        let _ = conn
            .emit_signal(
                caller,
                path.as_str(),
                "org.freedesktop.portal.Request",
                "Response",
                &(code, results),
            )
            .await;
    });
}

struct Screenshot {
    display: String,
    dir: PathBuf,
    seen: Arc<Mutex<Seen>>,
}

#[zbus::interface(name = "org.freedesktop.portal.Screenshot")]
impl Screenshot {
    async fn screenshot(
        &self,
        #[zbus(header)] header: Header<'_>,
        #[zbus(connection)] conn: &Connection,
        _parent_window: &str,
        options: HashMap<String, OwnedValue>,
    ) -> zbus::fdo::Result<OwnedObjectPath> {
        let path = request_path(&header, &options)?;
        let n = self.seen.lock().unwrap().screenshots.len();
        let file = self.dir.join(format!("portal-screenshot-{n}.png"));
        let status = tokio::process::Command::new("import")
            .args(["-display", &self.display, "-window", "root"])
            .arg(&file)
            .status()
            .await
            .map_err(|e| zbus::fdo::Error::Failed(e.to_string()))?;
        let mut results = HashMap::new();
        let code = if status.success() {
            self.seen.lock().unwrap().screenshots.push(file.clone());
            let uri = format!("file://{}", file.display());
            results.insert("uri".to_owned(), OwnedValue::try_from(Value::from(uri)).expect("string value"));
            0
        } else {
            2
        };
        respond(conn.clone(), &header, path.clone(), code, results);
        Ok(path)
    }

    #[zbus(property)]
    fn version(&self) -> u32 {
        2
    }
}

struct OpenUri {
    seen: Arc<Mutex<Seen>>,
}

#[zbus::interface(name = "org.freedesktop.portal.OpenURI")]
impl OpenUri {
    #[zbus(name = "OpenURI")]
    async fn open_uri(
        &self,
        #[zbus(header)] header: Header<'_>,
        #[zbus(connection)] conn: &Connection,
        _parent_window: &str,
        uri: &str,
        options: HashMap<String, OwnedValue>,
    ) -> zbus::fdo::Result<OwnedObjectPath> {
        let path = request_path(&header, &options)?;
        self.seen.lock().unwrap().opened.push(uri.to_owned());
        respond(conn.clone(), &header, path.clone(), 0, HashMap::new());
        Ok(path)
    }

    #[zbus(property)]
    fn version(&self) -> u32 {
        4
    }
}

struct FileChooser {
    seen: Arc<Mutex<Seen>>,
}

#[zbus::interface(name = "org.freedesktop.portal.FileChooser")]
impl FileChooser {
    async fn open_file(
        &self,
        #[zbus(header)] header: Header<'_>,
        #[zbus(connection)] conn: &Connection,
        _parent_window: &str,
        _title: &str,
        options: HashMap<String, OwnedValue>,
    ) -> zbus::fdo::Result<OwnedObjectPath> {
        let path = request_path(&header, &options)?;
        let file = {
            let mut seen = self.seen.lock().unwrap();
            seen.files_asked += 1;
            seen.next_file.take()
        };
        let mut results = HashMap::new();
        let code = match file {
            Some(f) => {
                let uris = vec![format!("file://{}", f.display())];
                results
                    .insert("uris".to_owned(), OwnedValue::try_from(Value::from(uris)).expect("array value"));
                0
            }
            None => 1,
        };
        respond(conn.clone(), &header, path.clone(), code, results);
        Ok(path)
    }

    #[zbus(property)]
    fn version(&self) -> u32 {
        3
    }
}

impl Portal {
    pub async fn start(bus_address: &str, display: &str, dir: PathBuf) -> Result<Self> {
        let seen = Arc::new(Mutex::new(Seen::default()));
        let conn = zbus::connection::Builder::address(bus_address)?
            .serve_at(PATH, Screenshot { display: display.to_owned(), dir, seen: seen.clone() })?
            .serve_at(PATH, OpenUri { seen: seen.clone() })?
            .serve_at(PATH, FileChooser { seen: seen.clone() })?
            .name("org.freedesktop.portal.Desktop")?
            .build()
            .await?;
        Ok(Self { _conn: conn, seen })
    }
}
