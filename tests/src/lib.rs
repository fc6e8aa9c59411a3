//! Test harness: a private `dbus-daemon`, a real unlocked gnome-keyring on it, the real
//! `matrix-linkd` binary, and helpers to drive it. Nothing here touches the caller's own session
//! bus, keyring or home directory, and nothing mutates the test process's environment.

pub mod balancer;
pub mod faults;
pub mod homeserver;
pub mod hostile;
mod inspect;
pub mod jspeer;
pub mod light;
mod notifications;
pub mod peers;
pub mod portal;
pub mod python;
pub mod stack;

pub use inspect::{fds_added, open_fds};
pub use notifications::{NotificationMonitor, Notifications, SeenNotification, start_xvfb};

use std::{
    io::{BufRead, BufReader, Write},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use tempfile::TempDir;
use zbus::{Connection, fdo::DBusProxy, names::BusName};

/// The D-Bus contract (names, enums, error names, option and result keys), as the daemon and
/// the client library take it.
pub use matrix_linkd_client::api;
pub use matrix_linkd_client::api::{BUS_NAME, MANAGER_PATH};

/// The workspace's build output directory (`target/debug`), from this test binary's location. The
/// programs in it are those of the tree under test: see [`ensure_built`].
pub fn bin_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    // target/debug/deps/<test> or target/debug/<bin> -> target/debug
    let dir = exe.parent().expect("executable dir");
    let dir =
        if dir.ends_with("deps") { dir.parent().expect("target dir").to_owned() } else { dir.to_owned() };
    ensure_built(&dir);
    dir
}

/// The workspace's programs the suites run, with the source folders each is built from.
const PROGRAMS: [(&str, &[&str]); 4] = [
    ("matrix-linkd", &["daemon", "api"]),
    ("matrix-link", &["client-lib", "api"]),
    ("matrix-link-gtk", &["gtk", "client-lib", "api"]),
    ("matrix-linkd-example-light-client", &["examples/light-client", "client-lib", "api"]),
];

/// `cargo test` builds the programs of the test's own package only; the daemon, the CLI and the
/// desktop app are other packages. So a suite run after an edit would run a stale daemon. Once per
/// test process: when a program is missing or older than a source file it is built from (or the
/// lock file), the workspace is built as `make test` builds it (`cargo build --workspace
/// --all-targets`, the same feature set as the tests, so nothing else is rebuilt).
/// `LINKD_NO_REBUILD=1` runs the programs as they are (a developer editing while a suite runs).
fn ensure_built(dir: &Path) {
    static BUILT: std::sync::Once = std::sync::Once::new();
    BUILT.call_once(|| {
        if std::env::var_os("LINKD_NO_REBUILD").is_some() {
            return;
        }
        let root = workspace_root();
        let Some(stale) = PROGRAMS.iter().find(|(program, sources)| {
            let built = std::fs::metadata(dir.join(program)).and_then(|m| m.modified()).ok();
            let newest = sources
                .iter()
                .map(|s| root.join(s))
                .chain([root.join("Cargo.lock")])
                .filter_map(|p| newest_source(&p))
                .max();
            match (built, newest) {
                (Some(built), Some(newest)) => newest > built,
                (None, _) => true,
                (Some(_), None) => false,
            }
        }) else {
            return;
        };
        eprintln!("{} is older than its sources: building the workspace first", stale.0);
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let status = Command::new(cargo)
            .args(["build", "--workspace", "--all-targets"])
            .current_dir(&root)
            .status()
            .expect("run cargo");
        assert!(status.success(), "building the workspace failed: the tests would run stale programs");
    });
}

/// The newest modification time of the Rust sources, manifests and interface files under `path`
/// (or of `path` itself when it is a file).
fn newest_source(path: &Path) -> Option<std::time::SystemTime> {
    let meta = std::fs::metadata(path).ok()?;
    if meta.is_file() {
        return meta.modified().ok();
    }
    let mut newest = None;
    for entry in std::fs::read_dir(path).ok()?.flatten() {
        let p = entry.path();
        let name = entry.file_name();
        let name = name.to_string_lossy();
        let t = if p.is_dir() {
            if name == "target" || name.starts_with('.') { None } else { newest_source(&p) }
        } else if name.ends_with(".rs") || name == "Cargo.toml" || name.ends_with(".xml") {
            entry.metadata().and_then(|m| m.modified()).ok()
        } else {
            None
        };
        newest = newest.max(t);
    }
    newest
}

/// The daemon binary, built from the tree under test. `LINKD_DAEMON_BIN` runs the suites against
/// another build (an older commit's, to see a new test fail there).
pub fn daemon_bin() -> PathBuf {
    if let Some(bin) = std::env::var_os("LINKD_DAEMON_BIN") {
        return PathBuf::from(bin);
    }
    bin_dir().join("matrix-linkd")
}

/// The workspace root.
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_owned()
}

/// One private desktop session: home, runtime dir, bus, optionally a keyring.
pub struct Session {
    pub dir: TempDir,
    pub bus_address: String,
    bus: Child,
    daemons: Vec<Child>,
}

pub struct SessionOptions {
    /// Start and unlock gnome-keyring (`org.freedesktop.secrets`) on the bus.
    pub keyring: bool,
    /// A D-Bus service directory holding our activation file.
    pub activation: bool,
}

impl Default for SessionOptions {
    fn default() -> Self {
        Self { keyring: true, activation: false }
    }
}

impl Session {
    pub async fn start() -> Result<Self> {
        Self::start_with(SessionOptions::default()).await
    }

    pub async fn start_with(opts: SessionOptions) -> Result<Self> {
        let dir = tempfile::Builder::new().prefix("linkd-test-").tempdir()?;
        for sub in ["home", "runtime", "bus", "services", "home/.config", "home/.local/share"] {
            std::fs::create_dir_all(dir.path().join(sub))?;
        }
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir.path().join("runtime"), std::fs::Permissions::from_mode(0o700))?;
        let servicedir = if opts.activation {
            let template =
                std::fs::read_to_string(workspace_root().join(format!("systemd/{BUS_NAME}.service.in")))?;
            let file = template.replace("@bindir@", &bin_dir().display().to_string());
            std::fs::write(dir.path().join(format!("services/{BUS_NAME}.service")), file)?;
            format!("<servicedir>{}</servicedir>", dir.path().join("services").display())
        } else {
            String::new()
        };
        let config = format!(
            r#"<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>session</type>
  <listen>unix:dir={}</listen>
  <auth>EXTERNAL</auth>
  <!-- The stock session bus's limits (/usr/share/dbus-1/session.conf): a message of up to
       1 GB passes, so a test can send the daemon what any program on a user's bus could. -->
  <limit name="max_incoming_bytes">1000000000</limit>
  <limit name="max_outgoing_bytes">1000000000</limit>
  <limit name="max_message_size">1000000000</limit>
  {servicedir}
  <policy context="default">
    <allow send_destination="*" eavesdrop="true"/>
    <allow eavesdrop="true"/>
    <allow own="*"/>
  </policy>
</busconfig>"#,
            dir.path().join("bus").display()
        );
        let config_path = dir.path().join("bus.conf");
        std::fs::write(&config_path, config)?;
        let mut cmd = Command::new("dbus-daemon");
        cmd.arg(format!("--config-file={}", config_path.display()))
            .args(["--nofork", "--print-address=1"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        Self::apply_env(&mut cmd, dir.path(), None);
        let mut bus = cmd.spawn().context("dbus-daemon (apt-get install dbus-daemon)")?;
        let mut line = String::new();
        BufReader::new(bus.stdout.take().unwrap()).read_line(&mut line)?;
        let bus_address = line.trim().to_owned();
        if bus_address.is_empty() {
            bail!("dbus-daemon printed no address");
        }
        let session = Session { dir, bus_address, bus, daemons: Vec::new() };
        if opts.keyring {
            session.start_keyring()?;
        }
        Ok(session)
    }

    fn apply_env(cmd: &mut Command, root: &Path, bus: Option<&str>) {
        cmd.env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("HOME", root.join("home"))
            .env("XDG_RUNTIME_DIR", root.join("runtime"))
            .env("XDG_CONFIG_HOME", root.join("home/.config"))
            .env("XDG_DATA_HOME", root.join("home/.local/share"))
            .env("XDG_CONFIG_DIRS", root.join("etc-xdg"));
        if let Some(bus) = bus {
            cmd.env("DBUS_SESSION_BUS_ADDRESS", bus);
        }
        // Trust roots as the user's session has them (the proxy stack's CA: stack/proxy.sh).
        for var in ["SSL_CERT_FILE", "SSL_CERT_DIR"] {
            if let Some(v) = std::env::var_os(var) {
                cmd.env(var, v);
            }
        }
    }

    /// A command that runs inside this session (its bus, home and XDG dirs).
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut cmd = Command::new(program);
        Self::apply_env(&mut cmd, self.dir.path(), Some(&self.bus_address));
        cmd
    }

    /// gnome-keyring with an unlocked `login` collection, started before anything touches
    /// `org.freedesktop.secrets` (see test-stack.md).
    fn start_keyring(&self) -> Result<()> {
        let mut child = self
            .command("gnome-keyring-daemon")
            .args(["--unlock", "--components=secrets"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .context("gnome-keyring-daemon (apt-get install gnome-keyring)")?;
        child.stdin.take().unwrap().write_all(b"test-keyring-password")?;
        let out = child.wait_with_output()?;
        if !out.status.success() {
            bail!("gnome-keyring-daemon --unlock failed");
        }
        // It daemonizes and exits with the bus. Wait until the name is there.
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let st = self
                .command("busctl")
                .args(["--user", "status", "org.freedesktop.secrets"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()?;
            if st.success() {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("gnome-keyring did not take org.freedesktop.secrets");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("home/.local/share/matrix-linkd")
    }

    pub fn config_path(&self) -> PathBuf {
        self.dir.path().join("home/.config/matrix-linkd/config.toml")
    }

    /// Writes the daemon's config file.
    pub fn write_config(&self, toml: &str) -> Result<()> {
        std::fs::create_dir_all(self.config_path().parent().unwrap())?;
        std::fs::write(self.config_path(), toml)?;
        Ok(())
    }

    pub fn log_path(&self, n: usize) -> PathBuf {
        self.dir.path().join(format!("daemon-{n}.log"))
    }

    /// Starts the real daemon binary on this bus and waits for its name.
    pub async fn start_daemon(&mut self, extra_args: &[&str]) -> Result<usize> {
        self.start_daemon_with(extra_args, &[]).await
    }

    /// [`Session::start_daemon`] with more environment (`LINKD_HOLD_AT` of a crash test).
    pub async fn start_daemon_with(&mut self, extra_args: &[&str], env: &[(&str, &str)]) -> Result<usize> {
        let n = self.daemons.len();
        let log = std::fs::File::create(self.log_path(n))?;
        let child = self
            .command(daemon_bin())
            .args(extra_args)
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()?;
        self.daemons.push(child);
        let conn = self.connect().await?;
        let dbus = DBusProxy::new(&conn).await?;
        let deadline = Instant::now() + Duration::from_secs(20);
        while !dbus.name_has_owner(BusName::try_from(BUS_NAME)?).await? {
            if let Some(status) = self.daemons[n].try_wait()? {
                bail!("matrix-linkd exited with {status}: {}", self.log(n));
            }
            if Instant::now() > deadline {
                bail!("matrix-linkd did not take its name: {}", self.log(n));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(n)
    }

    /// The daemon's session as kept in the Secret Service (JSON), if any.
    pub fn kept_session(&self) -> Option<serde_json::Value> {
        let out = self
            .command("secret-tool")
            .args(["lookup", "application", "io.github.matrix_linkd", "kind", "session"])
            .output()
            .ok()?;
        if !out.status.success() {
            return None;
        }
        serde_json::from_slice(&out.stdout).ok()
    }

    /// How many daemons this session started (the last one is `daemons_started() - 1`).
    pub fn daemons_started(&self) -> usize {
        self.daemons.len()
    }

    /// PID of daemon `n`.
    pub fn daemon_pid(&self, n: usize) -> u32 {
        self.daemons[n].id()
    }

    /// Kills this session's bus (as when a desktop session ends under its programs).
    pub fn kill_bus(&mut self) {
        self.bus.kill().ok();
        self.bus.wait().ok();
    }

    /// Waits (at most `timeout`) for daemon `n` to exit; its status.
    pub fn wait_daemon_exit(&mut self, n: usize, timeout: Duration) -> Result<std::process::ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.daemons[n].try_wait()? {
                return Ok(status);
            }
            if Instant::now() > deadline {
                bail!("matrix-linkd {n} is still running");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Whether daemon `n` still runs.
    pub fn daemon_running(&mut self, n: usize) -> bool {
        matches!(self.daemons[n].try_wait(), Ok(None))
    }

    /// Stops daemon `n` with SIGTERM and waits for it.
    pub fn stop_daemon(&mut self, n: usize) -> Result<std::process::ExitStatus> {
        let pid = self.daemons[n].id();
        Command::new("kill").args(["-TERM", &pid.to_string()]).status()?;
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Some(st) = self.daemons[n].try_wait()? {
                return Ok(st);
            }
            if Instant::now() > deadline {
                self.daemons[n].kill().ok();
                bail!("matrix-linkd did not stop on SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn log(&self, n: usize) -> String {
        std::fs::read_to_string(self.log_path(n)).unwrap_or_default()
    }

    /// A new connection to this session's bus.
    pub async fn connect(&self) -> Result<Connection> {
        Ok(zbus::connection::Builder::address(self.bus_address.as_str())?.build().await?)
    }

    /// A `matrix-linkd-client` on a new connection.
    pub async fn client(&self) -> Result<matrix_linkd_client::Linkd> {
        Ok(matrix_linkd_client::Linkd::with_connection(self.connect().await?).await?)
    }

    /// Waits until the daemon's `SessionState` equals `state`.
    /// Waits until the daemon's restore at start has ended (`SessionState` no longer Unknown or
    /// Restoring): a test that reads the session right after the daemon took its name would
    /// otherwise race the restore on a loaded machine.
    pub async fn wait_session_settled(&self, timeout: Duration) -> Result<api::SessionState> {
        use api::SessionState::{Restoring, Unknown};
        let linkd = self.client().await?;
        let deadline = Instant::now() + timeout;
        loop {
            let now = api::SessionState::from_u32(linkd.manager().session_state().await?);
            if !matches!(now, Unknown | Restoring) {
                return Ok(now);
            }
            if Instant::now() > deadline {
                bail!("SessionState stayed {now:?}: the restore at start did not end");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub async fn wait_session_state(&self, state: api::SessionState, timeout: Duration) -> Result<()> {
        let linkd = self.client().await?;
        let deadline = Instant::now() + timeout;
        loop {
            let now = api::SessionState::from_u32(linkd.manager().session_state().await?);
            if now == state {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("SessionState stayed {now:?}, wanted {state:?}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        for d in &mut self.daemons {
            d.kill().ok();
            d.wait().ok();
        }
        // gnome-keyring leaves with the bus.
        self.bus.kill().ok();
        self.bus.wait().ok();
        if std::thread::panicking() {
            for n in 0..self.daemons.len() {
                eprintln!("--- matrix-linkd log {n} ---\n{}", self.log(n));
            }
        }
        if std::env::var_os("LINKD_KEEP_TEST_DIRS").is_some() {
            let dir = std::mem::replace(&mut self.dir, tempfile::tempdir().expect("tempdir"));
            eprintln!("kept {}", dir.keep().display());
        }
    }
}

/// The last table of every test config: the servers of a test run on this machine, which a daemon
/// refuses to reach unless told this is a test set-up. Ends with `[security]`, so a test can add
/// keys of that table after it.
pub const LOCAL_TEST_SETUP: &str = "[security]\nallow_local_addresses = true\n";

/// Config for tests: fast, quiet, nothing opened on the desktop.
/// `Properties.Get(SessionState)` on the Manager, as a bare call on `conn`: one that may start the
/// daemon through D-Bus activation (a proxy would first ask who owns the name).
pub async fn read_session_state(conn: &zbus::Connection) -> Result<u32> {
    let reply = conn
        .call_method(
            Some(BUS_NAME),
            MANAGER_PATH,
            Some("org.freedesktop.DBus.Properties"),
            "Get",
            &(api::MANAGER_INTERFACE, "SessionState"),
        )
        .await?;
    Ok(u32::try_from(reply.body().deserialize::<zbus::zvariant::OwnedValue>()?)?)
}

pub fn test_config(homeserver: &str, flow_timeout: u64) -> String {
    format!(
        "homeserver = \"{homeserver}\"\nlog_level = \"debug\"\n[timeouts]\nflow = {flow_timeout}\ndevice_creation = 10\n[desktop]\nopen_uri = false\n{LOCAL_TEST_SETUP}"
    )
}

/// Follows `flow` until it reaches `state`; fails if it ends first.
pub async fn wait_state(
    flow: &mut matrix_linkd_client::Flow,
    state: matrix_linkd_client::State,
) -> Result<()> {
    use matrix_linkd_client::FlowEvent;
    if flow.state() == state {
        return Ok(());
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        match tokio::time::timeout_at(deadline, flow.next_event()).await {
            Err(_) => bail!("flow stayed in {:?}, wanted {state:?}", flow.state()),
            Ok(Err(e)) => bail!("flow error while waiting for {state:?}: {e}"),
            Ok(Ok(None)) => bail!("flow ended while waiting for {state:?}"),
            Ok(Ok(Some(FlowEvent::State(s)))) if s == state => return Ok(()),
            Ok(Ok(Some(_))) => {}
        }
    }
}

/// Signs the daemon in as a new device: the daemon shows the QR code, `existing` scans it.
/// Returns the daemon's user and device ID.
pub async fn sign_in_daemon(
    session: &Session,
    hs: &homeserver::MockHomeserver,
    existing: &matrix_sdk::Client,
) -> Result<matrix_linkd_client::SignedIn> {
    use matrix_linkd_client::{LoginOptions, State};
    let linkd = session.client().await?;
    let mut flow =
        linkd.start_login(LoginOptions { homeserver: Some(hs.uri()), ..Default::default() }).await?;
    wait_state(&mut flow, State::QrReady).await?;
    let qr = flow.qr_code(api::qr_formats::RAW).await?;
    hs.plan_login();
    let mut peer = peers::grant_scanning(existing.clone(), qr);
    let code = peer.shown_code().await?;
    wait_state(&mut flow, State::WaitingForCheckCode).await?;
    flow.check_code(code).await?;
    let signed_in = tokio::time::timeout(Duration::from_secs(60), flow.result()).await??;
    peer.finish().await?.map_err(|e| anyhow::anyhow!("existing device: {e}"))?;
    Ok(signed_in)
}

/// A session whose daemon is signed in (by a QR login from `ALICEDEV`).
pub struct SignedInSetup {
    /// First, so that it drops first: the daemon is gone before its mock homeserver goes back to
    /// wiremock's pool, from which another test could take it while a late request of this
    /// daemon was still on its way.
    pub session: Session,
    pub hs: homeserver::MockHomeserver,
    pub alice: matrix_sdk::Client,
    pub daemon: usize,
    pub signed_in: matrix_linkd_client::SignedIn,
}

/// A mock homeserver, a private session and the daemon on it, signed out. Returns the daemon's
/// index in the session.
pub async fn signed_out_setup(flow_timeout: u64) -> Result<(homeserver::MockHomeserver, Session, usize)> {
    let hs = homeserver::MockHomeserver::start().await;
    let mut session = Session::start().await?;
    session.write_config(&test_config(&hs.uri(), flow_timeout))?;
    let daemon = session.start_daemon(&[]).await?;
    session.wait_session_settled(Duration::from_secs(30)).await?;
    Ok((hs, session, daemon))
}

pub async fn signed_in_setup(flow_timeout: u64) -> Result<SignedInSetup> {
    let (hs, session, daemon) = signed_out_setup(flow_timeout).await?;
    let alice = hs.existing_device("ALICEDEV").await;
    let signed_in = sign_in_daemon(&session, &hs, &alice).await?;
    Ok(SignedInSetup { hs, session, alice, daemon, signed_in })
}

/// The D-Bus error name of a client error, to compare with `api::errors` (`NOT_SIGNED_IN`,
/// `ACCESS_DENIED`, …).
pub fn error_name<T: std::fmt::Debug>(r: std::result::Result<T, matrix_linkd_client::ClientError>) -> String {
    match r {
        Ok(v) => format!("unexpected success: {v:?}"),
        Err(e) => e.name().map(str::to_owned).unwrap_or_else(|| format!("not a daemon error: {e}")),
    }
}

/// Builds a 2024 QR code: `MATRIX 02 <intent> <key> <u16 len> <rendezvous URL> [<u16 len> <server>]`.
pub fn qr_2024(intent: u8, rendezvous_url: &str, server: Option<&str>) -> Vec<u8> {
    let mut out = b"MATRIX\x02".to_vec();
    out.push(intent);
    out.extend_from_slice(&[7u8; 32]);
    out.extend_from_slice(&(rendezvous_url.len() as u16).to_be_bytes());
    out.extend_from_slice(rendezvous_url.as_bytes());
    if let Some(s) = server {
        out.extend_from_slice(&(s.len() as u16).to_be_bytes());
        out.extend_from_slice(s.as_bytes());
    }
    out
}

/// Grant options for tests: no desktop side effects.
pub fn quiet_grant() -> matrix_linkd_client::GrantOptions {
    matrix_linkd_client::GrantOptions { notify: false, open_uri: false, ..Default::default() }
}

/// The daemon shows a QR code for a grant and `new_device` (matrix-sdk) scans it; returns once the
/// daemon waits for the check code, with the code the new device shows.
pub async fn grant_scanned_by(
    linkd: &matrix_linkd_client::Linkd,
    options: matrix_linkd_client::GrantOptions,
    new_device: matrix_sdk::Client,
) -> Result<(
    matrix_linkd_client::Flow,
    peers::Peer<matrix_sdk::authentication::oauth::qrcode::QRCodeLoginError>,
    u8,
)> {
    use matrix_linkd_client::State;
    let mut flow = linkd.start_grant(options).await?;
    wait_state(&mut flow, State::QrReady).await?;
    let mut peer = peers::login_scanning(new_device, flow.qr_code(api::qr_formats::RAW).await?);
    let code = peer.shown_code().await?;
    wait_state(&mut flow, State::WaitingForCheckCode).await?;
    Ok((flow, peer, code))
}
