//! Sandboxed callers, for real: fake Flatpaks (a chroot with a `/.flatpak-info`, a process in a
//! Flatpak-named cgroup) and a non-dumpable caller whose `/proc/<pid>/root` the daemon cannot
//! read. Each gets `NotAllowed` unless allow-listed; an ordinary caller of the same daemon is
//! served. Runs as root (mount namespaces, chroot, cgroups, capabilities), as CI does.

use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail, ensure};
use matrix_linkd_tests::api::errors::{NOT_ALLOWED, NOT_SIGNED_IN};
use matrix_linkd_tests::{BUS_NAME, Session, bin_dir, daemon_bin, homeserver::MockHomeserver, test_config};
use zbus::{fdo::DBusProxy, names::BusName};

const APP_ID: &str = "org.example.Evil";

fn caller_bin() -> PathBuf {
    let bin = bin_dir().join("linkd-caller");
    assert!(bin.exists(), "{} is missing: run `cargo build --workspace --all-targets` first", bin.display());
    bin
}

/// Runs a `linkd-caller` command and returns what it printed (an error name or `OK <path>`).
fn answer(cmd: &mut Command) -> Result<String> {
    let out = cmd.stdin(Stdio::null()).output().with_context(|| format!("running {cmd:?}"))?;
    let stdout = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    let stderr = String::from_utf8_lossy(&out.stderr);
    ensure!(out.status.success() && !stdout.is_empty(), "{cmd:?} failed ({}): {stdout} {stderr}", out.status);
    Ok(stdout)
}

/// The caller as an ordinary process of the session.
fn plain_caller(session: &Session) -> Command {
    let mut cmd = session.command(caller_bin());
    cmd.args(["--address", &session.bus_address]);
    cmd
}

fn allow_list_config(hs: &MockHomeserver) -> String {
    format!("{}[security]\nallowed_sandboxed_apps = [\"{APP_ID}\"]\n", test_config(&hs.uri(), 60))
}

/// A fake Flatpak: a root directory holding the host's `/usr` (and its `bin`/`lib` links), `/etc`,
/// `/dev`, `/proc`, `/tmp` (where the private bus listens), the caller binary and a
/// `/.flatpak-info`. The caller runs chrooted into it in a private mount namespace.
struct FakeFlatpak {
    root: PathBuf,
}

impl FakeFlatpak {
    fn new(session: &Session, flatpak_info: &str) -> Result<Self> {
        let root = session.dir.path().join("flatpak-root");
        std::fs::create_dir(&root)?;
        for dir in ["usr", "etc", "dev", "proc", "tmp"] {
            std::fs::create_dir(root.join(dir))?;
        }
        // Mirror the host's top-level links (`bin -> usr/bin` on merged-/usr systems) or bind the
        // real directories.
        for dir in ["bin", "sbin", "lib", "lib64", "lib32", "libx32"] {
            let host = Path::new("/").join(dir);
            match std::fs::read_link(&host) {
                Ok(target) => std::os::unix::fs::symlink(target, root.join(dir))?,
                Err(_) if host.is_dir() => std::fs::create_dir(root.join(dir))?,
                Err(_) => {}
            }
        }
        std::fs::copy(caller_bin(), root.join("linkd-caller"))?;
        std::fs::write(root.join(".flatpak-info"), flatpak_info)?;
        Ok(Self { root })
    }

    /// The caller inside the fake Flatpak.
    fn caller(&self, session: &Session) -> Command {
        const SCRIPT: &str = r#"set -e
root="$1"; shift
for d in usr etc dev proc bin sbin lib lib64 lib32 libx32; do
  if [ -d "$root/$d" ] && [ ! -L "$root/$d" ]; then mount --rbind "/$d" "$root/$d"; fi
done
mount --bind /tmp "$root/tmp"
exec chroot "$root" /linkd-caller "$@""#;
        let mut cmd = session.command("unshare");
        cmd.args(["--mount", "--propagation", "private", "sh", "-c", SCRIPT, "sh"])
            .arg(&self.root)
            .args(["--address", &session.bus_address]);
        cmd
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fake_flatpak_is_refused_unless_allow_listed() -> Result<()> {
    let hs = MockHomeserver::start().await;
    let mut session = Session::start().await?;
    session.write_config(&test_config(&hs.uri(), 60))?;
    let d = session.start_daemon(&[]).await?;
    let flatpak = FakeFlatpak::new(&session, &format!("[Application]\nname={APP_ID}\nruntime=runtime/x\n"))?;

    // The same binary, outside and inside the fake Flatpak.
    assert_eq!(answer(&mut plain_caller(&session))?, NOT_SIGNED_IN);
    assert_eq!(answer(&mut flatpak.caller(&session))?, NOT_ALLOWED);

    // Allow-listed, it is served (the daemon is signed out, hence NotSignedIn).
    session.stop_daemon(d)?;
    session.write_config(&allow_list_config(&hs))?;
    session.start_daemon(&[]).await?;
    assert_eq!(answer(&mut flatpak.caller(&session))?, NOT_SIGNED_IN);
    Ok(())
}

/// An allow-listed sandboxed app may ask for a device of its own, but the user sees who asks: the
/// client registered with the OAuth server (and named in the notification) is the app ID, whatever
/// `client_name` the app passed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_allowed_flatpak_delegates_under_its_app_id() -> Result<()> {
    let hs = MockHomeserver::start().await;
    let mut session = Session::start().await?;
    session.write_config(&allow_list_config(&hs))?;
    session.start_daemon(&[]).await?;
    let alice = hs.existing_device("ALICEDEV").await;
    matrix_linkd_tests::sign_in_daemon(&session, &hs, &alice).await?;
    let flatpak = FakeFlatpak::new(&session, &format!("[Application]\nname={APP_ID}\nruntime=runtime/x\n"))?;
    let mut cmd = flatpak.caller(&session);
    cmd.args(["--method", "StartDelegation", "--option", "client_name=Your Bank", "--hold", "3"]);
    ensure!(answer(&mut cmd)?.starts_with("OK "), "the allow-listed app is served");
    let names: Vec<String> = hs
        .requests_to("registration")
        .await
        .iter()
        .filter_map(|r| serde_json::from_slice::<serde_json::Value>(&r.body).ok())
        .filter_map(|v| v["client_name"].as_str().map(str::to_owned))
        .collect();
    ensure!(names.contains(&APP_ID.to_owned()), "registered as the app ID: {names:?}");
    ensure!(!names.iter().any(|n| n == "Your Bank"), "the app's own name is not used: {names:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flatpak_info_without_an_app_name_is_refused() -> Result<()> {
    let hs = MockHomeserver::start().await;
    let mut session = Session::start().await?;
    session.write_config(&allow_list_config(&hs))?;
    session.start_daemon(&[]).await?;
    let flatpak = FakeFlatpak::new(&session, "[Instance]\ninstance-id=1\n")?;
    assert_eq!(answer(&mut flatpak.caller(&session))?, NOT_ALLOWED);
    Ok(())
}

/// The daemon started by hand, so that it runs without CAP_SYS_PTRACE.
struct OwnDaemon(std::process::Child);

impl Drop for OwnDaemon {
    fn drop(&mut self) {
        self.0.kill().ok();
        self.0.wait().ok();
    }
}

/// Starts the daemon through `setpriv` with CAP_SYS_PTRACE dropped from its bounding and
/// inheritable sets: as root it could otherwise read any process's `/proc/<pid>/root`.
async fn start_daemon_without_ptrace(session: &Session) -> Result<OwnDaemon> {
    let log_path = session.dir.path().join("daemon-no-ptrace.log");
    let child = session
        .command("setpriv")
        .args(["--bounding-set=-sys_ptrace", "--inh-caps=-sys_ptrace"])
        .arg(daemon_bin())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log_path)?)
        .spawn()
        .context("setpriv (util-linux)")?;
    let mut daemon = OwnDaemon(child);
    let log = || std::fs::read_to_string(&log_path).unwrap_or_default();
    let conn = session.connect().await?;
    let dbus = DBusProxy::new(&conn).await?;
    let deadline = Instant::now() + Duration::from_secs(20);
    while !dbus.name_has_owner(BusName::try_from(BUS_NAME)?).await? {
        if let Some(status) = daemon.0.try_wait()? {
            bail!("matrix-linkd exited with {status}: {}", log());
        }
        if Instant::now() > deadline {
            bail!("matrix-linkd did not take its name: {}", log());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // setpriv execs the daemon: the child is the daemon. Check it really lacks the capability.
    let status = std::fs::read_to_string(format!("/proc/{}/status", daemon.0.id()))?;
    let cap_eff = status.lines().find_map(|l| l.strip_prefix("CapEff:")).context("no CapEff")?;
    let cap_eff = u64::from_str_radix(cap_eff.trim(), 16)?;
    const CAP_SYS_PTRACE: u32 = 19;
    ensure!(cap_eff & (1 << CAP_SYS_PTRACE) == 0, "the daemon still has CAP_SYS_PTRACE: {cap_eff:x}");
    Ok(daemon)
}

/// The caller without CAP_SYS_PTRACE either, as an ordinary user's process: the kernel lets a
/// process read another's `/proc/<pid>/root` (same UID, dumpable) only if the other's
/// capabilities are a subset of its own.
fn caller_without_ptrace(session: &Session) -> Command {
    let mut cmd = session.command("setpriv");
    cmd.args(["--bounding-set=-sys_ptrace", "--inh-caps=-sys_ptrace"])
        .arg(caller_bin())
        .args(["--address", &session.bus_address]);
    cmd
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn non_dumpable_caller_is_refused() -> Result<()> {
    let hs = MockHomeserver::start().await;
    let session = Session::start().await?;
    session.write_config(&test_config(&hs.uri(), 60))?;
    let _daemon = start_daemon_without_ptrace(&session).await?;

    // An ordinary caller is served: the refusal is about the unreadable identity, nothing else.
    assert_eq!(answer(&mut caller_without_ptrace(&session))?, NOT_SIGNED_IN);
    // The daemon cannot open the non-dumpable caller's /proc/<pid>/root, so it cannot tell
    // whether the caller is a Flatpak: it must refuse.
    assert_eq!(answer(caller_without_ptrace(&session).arg("--non-dumpable"))?, NOT_ALLOWED);
    let log = std::fs::read_to_string(session.dir.path().join("daemon-no-ptrace.log"))?;
    assert!(log.contains("cannot open its root directory"), "refused for another reason: {log}");
    assert_eq!(answer(&mut caller_without_ptrace(&session))?, NOT_SIGNED_IN);
    Ok(())
}

/// The cgroup v2 hierarchy's mount point (`/sys/fs/cgroup`, or `/sys/fs/cgroup/unified` on hybrid
/// systems).
fn cgroup2_mount() -> Option<PathBuf> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    info.lines().find_map(|line| {
        let (fields, fs) = line.split_once(" - ")?;
        if !fs.starts_with("cgroup2 ") {
            return None;
        }
        fields.split(' ').nth(4).map(PathBuf::from)
    })
}

/// A cgroup removed again on drop (it is empty once the caller has exited).
struct Cgroup(PathBuf);

impl Drop for Cgroup {
    fn drop(&mut self) {
        std::fs::remove_dir(&self.0).ok();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn caller_in_a_flatpak_cgroup_is_refused_unless_allow_listed() -> Result<()> {
    let Some(mount) = cgroup2_mount() else {
        eprintln!("SKIPPED: no cgroup v2 hierarchy is mounted");
        return Ok(());
    };
    let scope = mount.join(format!("app-flatpak-{APP_ID}-{}.scope", std::process::id()));
    if let Err(e) = std::fs::create_dir(&scope) {
        eprintln!("SKIPPED: cannot create the cgroup {}: {e}", scope.display());
        return Ok(());
    }
    let scope = Cgroup(scope);
    // The caller moves itself into the scope before it connects, as `flatpak run` does.
    let in_scope = |session: &Session| {
        let mut cmd = session.command("sh");
        cmd.args(["-c", r#"echo $$ > "$1/cgroup.procs" && shift && exec "$@""#, "sh"])
            .arg(&scope.0)
            .arg(caller_bin())
            .args(["--address", &session.bus_address]);
        cmd
    };

    let hs = MockHomeserver::start().await;
    let mut session = Session::start().await?;
    session.write_config(&test_config(&hs.uri(), 60))?;
    let d = session.start_daemon(&[]).await?;
    assert_eq!(answer(&mut plain_caller(&session))?, NOT_SIGNED_IN);
    // No /.flatpak-info in its root, but the cgroup says Flatpak app org.example.Evil.
    assert_eq!(answer(&mut in_scope(&session))?, NOT_ALLOWED);

    session.stop_daemon(d)?;
    session.write_config(&allow_list_config(&hs))?;
    session.start_daemon(&[]).await?;
    assert_eq!(answer(&mut in_scope(&session))?, NOT_SIGNED_IN);
    Ok(())
}
