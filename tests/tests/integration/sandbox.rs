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
    format!("{}allowed_sandboxed_apps = [\"{APP_ID}\"]\n", test_config(&hs.uri(), 60))
}

/// A fake Flatpak: a root directory holding the host's `/usr` (and its `bin`/`lib` links), `/etc`,
/// `/dev`, `/proc`, `/tmp` (where the private bus listens), the caller binary and a
/// `/.flatpak-info`. The caller runs chrooted into it in a private mount namespace.
struct FakeFlatpak {
    root: PathBuf,
}

impl FakeFlatpak {
    /// The fake Flatpak of the app `APP_ID`.
    fn app(session: &Session) -> Result<Self> {
        Self::new(session, &format!("[Application]\nname={APP_ID}\nruntime=runtime/x\n"))
    }

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
    let flatpak = FakeFlatpak::app(&session)?;

    // The same binary, outside and inside the fake Flatpak.
    assert_eq!(answer(&mut plain_caller(&session))?, NOT_SIGNED_IN);
    assert_eq!(answer(&mut flatpak.caller(&session))?, NOT_ALLOWED);
    // It reads whether the daemon is there, not the account's details.
    ensure!(answer(flatpak.caller(&session).args(["--get", "Version"]))?.starts_with("OK "));
    for property in ["UserId", "DeviceId", "Homeserver"] {
        let read = answer(flatpak.caller(&session).args(["--get", property]))?;
        assert_eq!(read, "org.freedesktop.DBus.Error.AccessDenied", "{property}");
    }

    // Allow-listed, it is served (the daemon is signed out, hence NotSignedIn).
    session.stop_daemon(d)?;
    session.write_config(&allow_list_config(&hs))?;
    session.start_daemon(&[]).await?;
    assert_eq!(answer(&mut flatpak.caller(&session))?, NOT_SIGNED_IN);
    Ok(())
}

/// Introspection shows a sandboxed app no other program's flows: zbus described a node with its
/// whole subtree, so `/` or `…/flow` listed every live flow's path (which names the program that
/// runs it), and another program's flow could be introspected. Now the sandboxed app sees the
/// tree down to `…/flow` without the other program's node, and introspecting that program's flow
/// is `AccessDenied`; the program itself (outside any sandbox) sees its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sandboxed_app_cannot_introspect_other_programs_flows() -> Result<()> {
    let hs = MockHomeserver::start().await;
    let mut session = Session::start().await?;
    session.write_config(&test_config(&hs.uri(), 60))?;
    session.start_daemon(&[]).await?;
    let flatpak = FakeFlatpak::app(&session)?;

    // An ordinary program's login flow, held open.
    let mut holder = Held(
        plain_caller(&session)
            .args(["--method", "StartLogin", "--hold", "60"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()?,
    );
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(holder.0.stdout.take().context("stdout")?),
        &mut line,
    )?;
    let flow = line.trim().strip_prefix("OK ").with_context(|| format!("no flow: {line}"))?.to_owned();
    let (sender_node, _) = flow.rsplit_once('/').context("a flow path")?;
    let sender = sender_node.rsplit('/').next().unwrap_or_default().to_owned();

    let seen = |cmd: &mut Command, path: &str| answer(cmd.args(["--introspect", path]));
    let prefix = matrix_linkd_tests::api::FLOW_PATH_PREFIX;
    for path in ["/", "/io/github/matrix_linkd", matrix_linkd_tests::MANAGER_PATH, prefix] {
        let nodes = seen(&mut flatpak.caller(&session), path)?;
        assert!(nodes.starts_with("OK"), "{path}: {nodes}");
        assert!(!nodes.contains(&sender), "{path} showed the sandboxed app another program's flow: {nodes}");
    }
    for path in [sender_node, flow.as_str()] {
        assert_eq!(
            seen(&mut flatpak.caller(&session), path)?,
            "org.freedesktop.DBus.Error.AccessDenied",
            "{path}"
        );
    }
    // The program outside any sandbox sees the flows.
    assert!(seen(&mut plain_caller(&session), prefix)?.contains(&sender));
    Ok(())
}

/// A caller holding its flow, ended however the test ends.
struct Held(std::process::Child);

impl Drop for Held {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
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
    let flatpak = FakeFlatpak::app(&session)?;
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

/// An allow-listed sandboxed app may use the daemon, but it is not the user: it cannot hide the
/// notifications, take the secrets unasked, sign the daemon out, or see or revoke the device of
/// another program; and an app that is not allowed reads none of the account's details.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_allow_listed_app_is_not_the_user() -> Result<()> {
    use matrix_linkd_client::{DelegateOptions, State};
    use matrix_linkd_tests::{api::errors::DEVICE_NOT_FOUND, wait_state};
    let hs = MockHomeserver::start().await;
    let mut session = Session::start().await?;
    session.write_config(&allow_list_config(&hs))?;
    session.start_daemon(&[]).await?;
    let alice = hs.existing_device("ALICEDEV").await;
    matrix_linkd_tests::sign_in_daemon(&session, &hs, &alice).await?;

    // A program outside any sandbox holds a device of its own.
    let linkd = session.client().await?;
    let options = DelegateOptions {
        client_name: "Desktop bot".into(),
        share_secrets: true,
        notify: Some(false),
        open_uri: Some(false),
        ..Default::default()
    };
    let mut flow = linkd.start_delegation(options).await?;
    wait_state(&mut flow, State::WaitingForApproval).await?;
    let device_id = flow.proxy().peer_device_id().await?;
    hs.plan_login_as(&device_id);
    flow.approve().await?;
    wait_state(&mut flow, State::SyncingSecrets).await?;
    drop(flow.take_session().await?);
    flow.result().await?;
    hs.device_exists(&device_id);
    ensure!(linkd.list_delegations().await?.len() == 1);

    let flatpak = FakeFlatpak::app(&session)?;
    let call = |args: &[&str]| {
        let mut cmd = flatpak.caller(&session);
        cmd.args(args);
        answer(&mut cmd)
    };
    assert_eq!(call(&["--method", "StartDelegation", "--option", "notify=b:false"])?, NOT_ALLOWED);
    assert_eq!(call(&["--method", "StartGrant", "--option", "notify=b:false"])?, NOT_ALLOWED);
    // The secrets need the user's own answer, and nobody can be asked here (no notification
    // server): refused, not taken for granted.
    assert_eq!(call(&["--method", "StartDelegation", "--option", "share_secrets=b:true"])?, NOT_ALLOWED);
    assert_eq!(call(&["--method", "ListDelegations"])?, "OK 0", "another program's device is not listed");
    assert_eq!(call(&["--method", "RevokeDelegation", "--arg", &device_id])?, DEVICE_NOT_FOUND);
    assert_eq!(call(&["--method", "SignOut"])?, NOT_ALLOWED);
    ensure!(call(&["--get", "UserId"])?.starts_with("OK "), "an allowed app reads the account");
    // Nothing of it happened.
    ensure!(linkd.list_delegations().await?.len() == 1, "the other program's device is still there");
    ensure!(
        linkd.manager().session_state().await? == matrix_linkd_client::SessionState::SignedIn as u32,
        "still signed in"
    );
    Ok(())
}

/// A sandboxed app that is not allow-listed is asked about, in a notification with Allow / Deny,
/// once per permission; the answer is kept in xdg-desktop-portal's permission store (the real
/// `xdg-permission-store`), where `flatpak permission-show` lists it and `flatpak
/// permission-reset` forgets it, and the app is asked again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sandboxed_app_is_asked_once_and_the_answer_is_remembered() -> Result<()> {
    use matrix_linkd_tests::portal::PermissionStore;
    let hs = MockHomeserver::start().await;
    let mut session = Session::start().await?;
    session.write_config(&test_config(&hs.uri(), 60))?;
    let _store = PermissionStore::start(&session).await?;
    let notifications = session.start_notifications()?;
    let monitor = session.monitor_notifications().await?;
    session.start_daemon(&[]).await?;
    let alice = hs.existing_device("ALICEDEV").await;
    matrix_linkd_tests::sign_in_daemon(&session, &hs, &alice).await?;
    let flatpak = FakeFlatpak::app(&session)?;
    let question = format!("Allow {APP_ID}?");
    let questions = || monitor.notifications().into_iter().filter(|n| n.summary == question).count();

    // Asked: the call waits for the user's answer.
    let ask_and_answer = |pick: &'static str, asked_before: usize| {
        let mut cmd = flatpak.caller(&session);
        cmd.args(["--method", "StartGrant"]).stdin(Stdio::null()).stdout(Stdio::piped());
        let questions = &questions;
        let notifications = &notifications;
        let session = &session;
        async move {
            let child = cmd.spawn()?;
            let deadline = Instant::now() + Duration::from_secs(30);
            while questions() == asked_before {
                ensure!(Instant::now() < deadline, "the user was not asked");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            notifications.pick_in_menu(Some(pick))?;
            session.dunstctl(&["context"])?;
            let out = tokio::task::spawn_blocking(move || child.wait_with_output()).await??;
            anyhow::Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
        }
    };
    let first = ask_and_answer("#Allow (", 0).await?;
    ensure!(first.starts_with("OK "), "allowed: {first}");
    let kept = PermissionStore::lookup(&session, "grant").await?;
    assert_eq!(kept.get(APP_ID), Some(&vec!["yes".to_owned()]), "{kept:?}");
    if Path::new("/usr/bin/flatpak").exists() {
        let shown = session.command("flatpak").args(["permission-show", APP_ID]).output()?;
        let shown = String::from_utf8_lossy(&shown.stdout);
        ensure!(
            shown.contains("matrix-linkd") && shown.contains("grant") && shown.contains("yes"),
            "{shown}"
        );
    }

    // Remembered: not asked again.
    ensure!(answer(flatpak.caller(&session).args(["--method", "StartGrant"]))?.starts_with("OK "));
    assert_eq!(questions(), 1, "asked once");

    // Forgotten as users forget portal answers; asked again, and a denial is kept too.
    if Path::new("/usr/bin/flatpak").exists() {
        let reset = session.command("flatpak").args(["permission-reset", APP_ID]).status()?;
        ensure!(reset.success(), "flatpak permission-reset");
    } else {
        use matrix_linkd_tests::api::permissions as p;
        session
            .connect()
            .await?
            .call_method(
                Some(p::STORE_BUS_NAME),
                p::STORE_PATH,
                Some(p::STORE_INTERFACE),
                "DeletePermission",
                &(p::TABLE, p::GRANT, APP_ID),
            )
            .await?;
    }
    let second = ask_and_answer("#Deny (", 1).await?;
    assert_eq!(second, NOT_ALLOWED);
    let kept = PermissionStore::lookup(&session, "grant").await?;
    assert_eq!(kept.get(APP_ID), Some(&vec!["no".to_owned()]), "{kept:?}");
    assert_eq!(answer(flatpak.caller(&session).args(["--method", "StartGrant"]))?, NOT_ALLOWED);
    assert_eq!(questions(), 2, "a denial is remembered too");
    Ok(())
}
