//! Who is calling: unique name, UID and sandbox (Flatpak or Snap app id), from the bus and the
//! caller's process, never from the message.
//!
//! It fails closed: a caller whose process cannot be inspected, or has gone, is refused with
//! `NotAllowed`, never taken for an unsandboxed one. The process is pinned by a pidfd (the bus's
//! `ProcessFD`, else one opened at once from its `ProcessID`); once everything is read, the pidfd
//! must show the process still alive (so its PID was not reused meanwhile) and, for a PID-opened
//! pidfd, the bus must still report that PID for the name.
//!
//! Any of these makes the caller sandboxed (when more than one speaks, they must agree):
//! - `/.flatpak-info` in its root, read as xdg-desktop-portal's `xdp-app-info-flatpak.c` does: the
//!   root must open; a missing file means no Flatpak, any other error means refusal;
//! - its cgroup: a `app-flatpak-<app id>-<n>.scope` or `snap.<name>.…` segment;
//! - the Snap AppArmor label the bus reports, `snap.<name>.<app>`.

use std::{
    io::Read as _,
    os::fd::{AsFd, AsRawFd, OwnedFd},
    time::Instant,
};

use rustix::{
    event::{PollFd, PollFlags, Timespec, poll},
    fs::{CWD, FileType, Mode, OFlags, fstat, openat},
    process::{Pid, PidfdFlags, pidfd_open},
};
use zbus::{
    Connection,
    fdo::DBusProxy,
    message::Header,
    names::{BusName, OwnedUniqueName, UniqueName},
};

use crate::error::{LinkError, Result};

/// A caller as the bus and its process tell it.
#[derive(Debug, Clone)]
pub struct Caller {
    pub unique_name: OwnedUniqueName,
    pub uid: Option<u32>,
    /// Flatpak or Snap app id when the caller runs in a sandbox.
    pub sandbox_app: Option<String>,
}

/// Who may drive a flow.
#[derive(Debug, Clone)]
pub enum Owner {
    /// Only the connection that started it.
    Name(OwnedUniqueName),
    /// `detached`: any unsandboxed connection of this UID, until the deadline.
    Uid { uid: u32, until: Instant },
}

impl Owner {
    pub fn allows(&self, caller: &Caller) -> bool {
        match self {
            Owner::Name(n) => *n == caller.unique_name,
            Owner::Uid { uid, until } => {
                caller.sandbox_app.is_none() && caller.uid == Some(*uid) && Instant::now() < *until
            }
        }
    }
}

pub fn sender(hdr: &Header<'_>) -> Result<OwnedUniqueName> {
    hdr.sender()
        .map(|s| OwnedUniqueName::from(s.to_owned()))
        .ok_or_else(|| LinkError::AccessDenied("the call has no sender".into()))
}

/// The refusal of a caller whose identity cannot be established.
fn unidentified(why: impl std::fmt::Display) -> LinkError {
    LinkError::NotAllowed(format!("cannot tell whether the caller is sandboxed, so it is refused: {why}"))
}

/// Asks the bus for the caller's credentials and reads its process through a pidfd.
pub async fn identify(conn: &Connection, hdr: &Header<'_>) -> Result<Caller> {
    let unique_name = sender(hdr)?;
    let dbus = DBusProxy::new(conn).await.map_err(|e| LinkError::Failed(e.to_string()))?;
    let name: &UniqueName<'_> = &unique_name;
    let bus_name = || BusName::Unique(name.clone());
    let creds = dbus
        .get_connection_credentials(bus_name())
        .await
        .map_err(|_| unidentified("the bus does not know its credentials"))?;
    let uid = creds.unix_user_id();
    let label =
        creds.linux_security_label().map(|l| String::from_utf8_lossy(l).trim_end_matches('\0').to_owned());
    let (pidfd, pid, pid_from_bus) = match creds.process_fd() {
        Some(fd) => {
            let fd = fd.as_fd().try_clone_to_owned().map_err(|e| LinkError::Failed(e.to_string()))?;
            let pid = pid_of_pidfd(&fd)?;
            (fd, pid, false)
        }
        None => {
            let pid = creds.process_id().ok_or_else(|| unidentified("the bus does not know its process"))?;
            (open_pidfd(pid)?, pid, true)
        }
    };
    let process = tokio::task::spawn_blocking(move || Process::read(&pidfd, pid))
        .await
        .map_err(|e| LinkError::Failed(format!("identifying the caller: {e}")))??;
    // A pidfd opened from a bare PID is the caller's only if the connection is still there with
    // that PID (the pidfd being alive rules out a reuse after we opened it).
    if pid_from_bus && dbus.get_connection_unix_process_id(bus_name()).await.ok() != Some(pid) {
        return Err(unidentified("it left the bus while it was identified"));
    }
    let sandbox_app = sandbox_app(&process, uid, label.as_deref())?;
    Ok(Caller { unique_name, uid, sandbox_app })
}

/// Sandboxed callers need to be allow-listed in the config.
pub fn check_allowed(caller: &Caller, allowed: &[String]) -> Result<()> {
    match &caller.sandbox_app {
        Some(app) if !allowed.iter().any(|a| a == app) => Err(LinkError::NotAllowed(format!(
            "sandboxed app `{app}` is not allowed; add it to security.allowed_sandboxed_apps"
        ))),
        _ => Ok(()),
    }
}

/// A pidfd for `pid`; an error when the process has gone.
fn open_pidfd(pid: u32) -> Result<OwnedFd> {
    let pid = i32::try_from(pid).ok().and_then(Pid::from_raw).ok_or_else(|| unidentified("invalid PID"))?;
    pidfd_open(pid, PidfdFlags::empty()).map_err(|e| unidentified(format!("cannot pin its process: {e}")))
}

/// The PID a pidfd refers to, from `/proc/self/fdinfo`; an error when the process has gone
/// (`Pid: -1`) or is outside our PID namespace (`Pid: 0`).
fn pid_of_pidfd(pidfd: &OwnedFd) -> Result<u32> {
    let info = std::fs::read_to_string(format!("/proc/self/fdinfo/{}", pidfd.as_raw_fd()))
        .map_err(|e| unidentified(format!("cannot read its pidfd: {e}")))?;
    let pid = info.lines().find_map(|l| l.strip_prefix("Pid:")).and_then(|p| p.trim().parse::<i64>().ok());
    match pid {
        Some(pid) if pid > 0 => u32::try_from(pid).map_err(|_| unidentified("invalid PID")),
        Some(-1) => Err(unidentified("its process has exited")),
        _ => Err(unidentified("its pidfd names no process of ours")),
    }
}

/// An error unless the pidfd's process is still running (a pidfd polls readable once it exits).
fn ensure_alive(pidfd: &OwnedFd) -> Result<()> {
    let mut fds = [PollFd::new(pidfd, PollFlags::IN)];
    let ready = poll(&mut fds, Some(&Timespec { tv_sec: 0, tv_nsec: 0 }))
        .map_err(|e| unidentified(format!("cannot poll its pidfd: {e}")))?;
    if ready == 0 { Ok(()) } else { Err(unidentified("its process has exited")) }
}

/// What the caller's process says about itself, from `/proc`.
#[derive(Debug, Default)]
struct Process {
    /// `/proc/<pid>/cgroup`.
    cgroup: String,
    /// `/proc/<pid>/status`, when readable.
    status: Option<String>,
    /// `/.flatpak-info` in its root; `None` when there is none.
    flatpak_info: Option<String>,
}

/// Big enough for any real `/.flatpak-info`, cgroup or status file.
const MAX_FILE: u64 = 64 * 1024;

impl Process {
    /// Reads `/proc/<pid>`, where `pid` is the pidfd's process; an error when anything needed
    /// cannot be read or the process has gone by the end.
    fn read(pidfd: &OwnedFd, pid: u32) -> Result<Self> {
        // Entries read through this directory fd belong to the process that had `pid` when it was
        // opened; that is the pidfd's process if it is still alive at the end.
        let dir = openat(
            CWD,
            format!("/proc/{pid}"),
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| unidentified(format!("cannot open /proc/{pid}: {e}")))?;
        let cgroup = read_small_file(&dir, "cgroup")
            .map_err(|e| unidentified(format!("cannot read its cgroup: {e}")))?;
        let status = read_small_file(&dir, "status").ok();
        let root = openat(
            &dir,
            "root",
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC | OFlags::NONBLOCK | OFlags::NOCTTY,
            Mode::empty(),
        )
        .map_err(|e| unidentified(format!("cannot open its root directory: {e}")))?;
        let flatpak_info = match read_small_file(&root, ".flatpak-info") {
            Ok(text) => Some(text),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(unidentified(format!("cannot read its /.flatpak-info: {e}"))),
        };
        ensure_alive(pidfd)?;
        Ok(Self { cgroup, status, flatpak_info })
    }
}

/// A small regular file `name` under `dir`, without following a last symlink or blocking on a FIFO.
fn read_small_file(dir: impl AsFd, name: &str) -> std::io::Result<String> {
    let fd = openat(
        dir,
        name,
        OFlags::RDONLY | OFlags::CLOEXEC | OFlags::NOCTTY | OFlags::NONBLOCK | OFlags::NOFOLLOW,
        Mode::empty(),
    )?;
    if FileType::from_raw_mode(fstat(&fd)?.st_mode) != FileType::RegularFile {
        return Err(std::io::Error::other("not a regular file"));
    }
    let mut text = String::new();
    std::fs::File::from(fd).take(MAX_FILE + 1).read_to_string(&mut text)?;
    if text.len() as u64 > MAX_FILE {
        return Err(std::io::Error::other("too large"));
    }
    Ok(text)
}

/// The caller's sandbox app id, if any, from what its process and the bus say; an error when they
/// disagree or something cannot be read.
fn sandbox_app(process: &Process, bus_uid: Option<u32>, label: Option<&str>) -> Result<Option<String>> {
    if let (Some(bus_uid), Some(status)) = (bus_uid, &process.status) {
        let (real, effective) = status_uids(status).ok_or_else(|| unidentified("its status has no UID"))?;
        // The bus records the effective UID at connect time (SO_PEERCRED).
        if bus_uid != real && bus_uid != effective {
            return Err(unidentified(format!("the bus says UID {bus_uid}, its process runs as UID {real}")));
        }
    }
    let signs = [
        ("/.flatpak-info", process.flatpak_info.as_deref().map(flatpak_info_app).transpose()?),
        ("cgroup", cgroup_app(&process.cgroup)?),
        ("security label", label.map(label_app).transpose()?.flatten()),
    ];
    let mut found: Option<(&str, String)> = None;
    for (source, app) in signs {
        match (&found, app) {
            (_, None) => {}
            (None, Some(app)) => found = Some((source, app)),
            (Some((first, seen)), Some(app)) if *seen != app => {
                return Err(unidentified(format!("its {first} says `{seen}` but its {source} says `{app}`")));
            }
            (Some(_), Some(_)) => {}
        }
    }
    Ok(found.map(|(_, app)| app))
}

/// Real and effective UID from `/proc/<pid>/status` (`Uid: real effective saved fs`).
fn status_uids(status: &str) -> Option<(u32, u32)> {
    let mut ids = status.lines().find_map(|l| l.strip_prefix("Uid:"))?.split_whitespace();
    Some((ids.next()?.parse().ok()?, ids.next()?.parse().ok()?))
}

/// The app id of a `.flatpak-info` key file: `[Application] name=`, or `[Runtime] name=` when it
/// has a `[Runtime]` group (as xdg-desktop-portal reads it). An error without a valid one.
fn flatpak_info_app(info: &str) -> Result<String> {
    let mut group = "";
    let mut has_runtime = false;
    let (mut app_name, mut runtime_name) = (None, None);
    for line in info.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')) {
        if let Some(g) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            group = g;
            has_runtime |= g == "Runtime";
        } else if let Some((key, value)) = line.split_once('=')
            && key.trim() == "name"
        {
            // As in GKeyFile, the last one wins.
            match group {
                "Application" => app_name = Some(value.trim()),
                "Runtime" => runtime_name = Some(value.trim()),
                _ => {}
            }
        }
    }
    let name = if has_runtime { runtime_name } else { app_name };
    match name {
        Some(name) if valid_app_id(name) => Ok(name.to_owned()),
        Some(name) => Err(unidentified(format!("its /.flatpak-info names an invalid app id `{name}`"))),
        None => Err(unidentified("its /.flatpak-info names no app")),
    }
}

/// The sandbox `/proc/<pid>/cgroup` names: a Flatpak app scope `app-flatpak-<app id>-<n>.scope`
/// (`<app id>`) or a Snap unit `snap.<name>.<app>…` (`snap.<name>`), in any hierarchy.
fn cgroup_app(cgroup: &str) -> Result<Option<String>> {
    let mut found: Option<String> = None;
    let mut lines = 0;
    for line in cgroup.lines().filter(|l| !l.is_empty()) {
        lines += 1;
        // `<id>:<controllers>:<path>`; the path may itself contain ':'.
        let path = line.splitn(3, ':').nth(2).ok_or_else(|| unidentified("its cgroup file is malformed"))?;
        for segment in path.split('/') {
            let Some(app) = cgroup_segment_app(segment)? else { continue };
            match &found {
                Some(seen) if *seen != app => {
                    return Err(unidentified(format!("its cgroups name both `{seen}` and `{app}`")));
                }
                _ => found = Some(app),
            }
        }
    }
    if lines == 0 {
        return Err(unidentified("its cgroup file is empty"));
    }
    Ok(found)
}

fn cgroup_segment_app(segment: &str) -> Result<Option<String>> {
    if let Some(rest) = segment.strip_prefix("app-flatpak-") {
        let app = rest
            .strip_suffix(".scope")
            .and_then(|r| r.rsplit_once('-'))
            .filter(|(app, n)| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()) && valid_app_id(app));
        return match app {
            Some((app, _)) => Ok(Some(app.to_owned())),
            None => Err(unidentified(format!("cannot read the Flatpak cgroup `{segment}`"))),
        };
    }
    if let Some(rest) = segment.strip_prefix("snap.") {
        return snap_app(rest).map(Some);
    }
    Ok(None)
}

/// Snap from the AppArmor label: `snap.<name>.<app> (enforce)` → `snap.<name>`.
fn label_app(label: &str) -> Result<Option<String>> {
    label.strip_prefix("snap.").map(snap_app).transpose()
}

/// `<name>.<app>…` (after `snap.`) → `snap.<name>`.
fn snap_app(rest: &str) -> Result<String> {
    match rest.split(['.', ' ']).next() {
        Some(name) if !name.is_empty() => Ok(format!("snap.{name}")),
        _ => Err(unidentified("its Snap has no name")),
    }
}

/// A Flatpak app id: at least two dot-separated elements of `[A-Za-z0-9_-]`, none empty or
/// starting with a digit, at most 255 bytes.
fn valid_app_id(id: &str) -> bool {
    id.len() <= 255
        && id.contains('.')
        && id.split('.').all(|e| {
            !e.is_empty()
                && !e.starts_with(|c: char| c.is_ascii_digit())
                && e.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        })
}

#[cfg(test)]
mod tests {
    use std::process::Command;

    use super::*;

    fn refused<T: std::fmt::Debug>(r: Result<T>) -> bool {
        matches!(r, Err(LinkError::NotAllowed(_)))
    }

    #[test]
    fn cgroup_lines() {
        let v2 = "0::/user.slice/user-1000.slice/user@1000.service/app.slice/app-flatpak-org.gnome.Maps-4242.scope\n";
        assert_eq!(cgroup_app(v2).unwrap(), Some("org.gnome.Maps".into()));
        let hyphen = "0::/app.slice/app-flatpak-io.github.some-app.Name-12.scope\n";
        assert_eq!(cgroup_app(hyphen).unwrap(), Some("io.github.some-app.Name".into()));
        let v1 =
            "12:pids:/user.slice\n1:name=systemd:/user.slice/app-flatpak-org.x.App-7.scope\n0::/user.slice\n";
        assert_eq!(cgroup_app(v1).unwrap(), Some("org.x.App".into()));
        let snap = "0::/user.slice/user@1000.service/app.slice/snap.element.element-0b3c9a7e-5d1f-4e2b-9c51-37e9d3f5a1aa.scope\n";
        assert_eq!(cgroup_app(snap).unwrap(), Some("snap.element".into()));
        let hook = "0::/system.slice/snap.lxd.hook.configure-1234.scope";
        assert_eq!(cgroup_app(hook).unwrap(), Some("snap.lxd".into()));

        let host = "0::/user.slice/user-1000.slice/user@1000.service/app.slice/app-gnome-org.gnome.Terminal-1.scope\n";
        assert_eq!(cgroup_app(host).unwrap(), None);
        assert_eq!(cgroup_app("0::/\n").unwrap(), None);
        assert_eq!(cgroup_app("0::/system.slice/snapd.service\n").unwrap(), None);
        assert_eq!(cgroup_app("0::/system.slice/snap-core-123.mount\n").unwrap(), None);

        // Flatpak- or Snap-named but unreadable, contradictory, empty or malformed: refused.
        assert!(refused(cgroup_app("0::/app-flatpak-org.x.App.scope\n")));
        assert!(refused(cgroup_app("0::/app-flatpak-org.x.App-12a.scope\n")));
        assert!(refused(cgroup_app("0::/app-flatpak-NotAnId-1.scope\n")));
        assert!(refused(cgroup_app("0::/snap..x.scope\n")));
        assert!(refused(cgroup_app(
            "1:name=systemd:/app-flatpak-org.a.A-1.scope\n0::/app-flatpak-org.b.B-2.scope\n"
        )));
        assert!(refused(cgroup_app("")));
        assert!(refused(cgroup_app("garbage\n")));
    }

    #[test]
    fn flatpak_info() {
        let app = "[Application]\nname=org.example.Evil\nruntime=runtime/org.gnome.Platform/x86_64/47\n\n[Instance]\ninstance-id=1\nname=other\n";
        assert_eq!(flatpak_info_app(app).unwrap(), "org.example.Evil");
        assert_eq!(flatpak_info_app("# c\n [Application] \n name = org.x.App \n").unwrap(), "org.x.App");
        let runtime = "[Runtime]\nname=org.freedesktop.Platform\n[Instance]\nbranch=24.08\n";
        assert_eq!(flatpak_info_app(runtime).unwrap(), "org.freedesktop.Platform");

        assert!(refused(flatpak_info_app("")));
        assert!(refused(flatpak_info_app("[Instance]\ninstance-id=1\n")));
        assert!(refused(flatpak_info_app("[Instance]\nname=org.x.App\n")));
        assert!(refused(flatpak_info_app("[Application]\nname=\n")));
        assert!(refused(flatpak_info_app("[Application]\nname=no-dots\n")));
        assert!(refused(flatpak_info_app("[Application]\nname=org.x.App evil\n")));
        // A [Runtime] group takes the runtime's name, as the portal does; without one, refused.
        assert!(refused(flatpak_info_app("[Application]\nname=org.x.App\n[Runtime]\n")));
    }

    /// `/.flatpak-info` is read only as a small regular file: a symlink or a FIFO there is an
    /// error (so a refusal), not a hang or a file elsewhere; only a missing file is "no Flatpak".
    #[test]
    fn flatpak_info_file_kinds() {
        let dir = std::env::temp_dir().join(format!("linkd-caller-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let dirfd =
            openat(CWD, &dir, OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC, Mode::empty()).unwrap();
        let kind = |name: &str| read_small_file(&dirfd, name).map_err(|e| e.kind());
        assert_eq!(kind("missing"), Err(std::io::ErrorKind::NotFound));
        std::fs::write(dir.join("info"), "[Application]\nname=org.x.App\n").unwrap();
        assert_eq!(kind("info").unwrap(), "[Application]\nname=org.x.App\n");
        std::os::unix::fs::symlink(dir.join("info"), dir.join("link")).unwrap();
        assert!(kind("link").is_err_and(|k| k != std::io::ErrorKind::NotFound));
        assert!(Command::new("mkfifo").arg(dir.join("fifo")).status().unwrap().success());
        assert!(kind("fifo").is_err_and(|k| k != std::io::ErrorKind::NotFound));
        std::fs::write(dir.join("big"), vec![b'#'; MAX_FILE as usize + 1]).unwrap();
        assert!(kind("big").is_err_and(|k| k != std::io::ErrorKind::NotFound));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn snap_label() {
        assert_eq!(label_app("snap.element.element (enforce)").unwrap(), Some("snap.element".into()));
        assert_eq!(label_app("snap.lxd.hook.configure").unwrap(), Some("snap.lxd".into()));
        assert_eq!(label_app("unconfined").unwrap(), None);
        assert_eq!(label_app("snap-update-ns.element (enforce)").unwrap(), None);
        assert!(refused(label_app("snap.")));
    }

    #[test]
    fn status_uid() {
        let status = "Name:\tx\nUid:\t1000\t1001\t1000\t1000\nGid:\t1000\t1000\t1000\t1000\n";
        assert_eq!(status_uids(status), Some((1000, 1001)));
        assert_eq!(status_uids("Name:\tx\n"), None);
    }

    #[test]
    fn sandbox_from_all_signs() {
        let host = || Process { cgroup: "0::/user.slice\n".into(), ..Default::default() };
        let status = Some("Uid:\t1000\t1000\t1000\t1000\n".to_owned());
        assert_eq!(sandbox_app(&host(), Some(1000), None).unwrap(), None);
        assert_eq!(
            sandbox_app(&Process { status: status.clone(), ..host() }, Some(1000), None).unwrap(),
            None
        );
        // The bus's UID is not the process's: a reused PID, say.
        assert!(refused(sandbox_app(&Process { status: status.clone(), ..host() }, Some(1001), None)));

        let info = Some("[Application]\nname=org.x.App\n".to_owned());
        let flatpak = Process { flatpak_info: info.clone(), ..host() };
        assert_eq!(sandbox_app(&flatpak, None, None).unwrap(), Some("org.x.App".into()));
        // The cgroup alone is enough (no /.flatpak-info to read).
        let scope = Process { cgroup: "0::/app-flatpak-org.x.App-3.scope\n".into(), ..host() };
        assert_eq!(sandbox_app(&scope, None, None).unwrap(), Some("org.x.App".into()));
        let both = Process { flatpak_info: info.clone(), ..scope };
        assert_eq!(sandbox_app(&both, None, Some("unconfined")).unwrap(), Some("org.x.App".into()));
        let other_scope =
            Process { cgroup: "0::/app-flatpak-org.y.App-3.scope\n".into(), flatpak_info: info, ..host() };
        assert!(refused(sandbox_app(&other_scope, None, None)));

        let snap = "snap.element.element (enforce)";
        assert_eq!(sandbox_app(&host(), None, Some(snap)).unwrap(), Some("snap.element".into()));
        let snap_scope = Process { cgroup: "0::/snap.element.element-1.scope\n".into(), ..host() };
        assert_eq!(sandbox_app(&snap_scope, None, Some(snap)).unwrap(), Some("snap.element".into()));
        assert!(refused(sandbox_app(&snap_scope, None, Some("snap.other.other (enforce)"))));
    }

    #[test]
    fn allow_list() {
        let c = Caller {
            unique_name: OwnedUniqueName::try_from(":1.5").unwrap(),
            uid: Some(1),
            sandbox_app: Some("org.x.App".into()),
        };
        assert!(matches!(check_allowed(&c, &[]), Err(LinkError::NotAllowed(_))));
        assert!(check_allowed(&c, &["org.x.App".into()]).is_ok());
    }

    #[test]
    fn a_live_caller_is_read() {
        let mut child = Command::new("sleep").arg("30").spawn().unwrap();
        let pid = child.id();
        // `spawn` returns after the fork; under load the child may not have run `exec` yet, and
        // until then its name is this test thread's.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default() != "sleep\n" {
            assert!(std::time::Instant::now() < deadline, "sleep did not start");
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        let pidfd = open_pidfd(pid).unwrap();
        let read = Process::read(&pidfd, pid);
        child.kill().ok();
        child.wait().ok();
        let process = read.unwrap();
        assert!(process.flatpak_info.is_none());
        assert!(!process.cgroup.is_empty());
        assert!(process.status.is_some_and(|s| s.contains("Name:\tsleep")));
    }

    /// A caller whose process has gone and been reaped: its pidfd says so, and neither it nor
    /// the bare PID may be used to identify it.
    #[test]
    fn a_caller_that_has_gone_is_refused() {
        let mut child = Command::new("true").spawn().unwrap();
        let pid = child.id();
        let pidfd = open_pidfd(pid).unwrap();
        child.wait().unwrap();
        assert!(refused(pid_of_pidfd(&pidfd)));
        assert!(refused(ensure_alive(&pidfd)));
        assert!(refused(Process::read(&pidfd, pid)));
        assert!(refused(open_pidfd(pid)));
    }

    /// Exited but not yet reaped (a zombie): its /proc entry is still there, but it is gone.
    #[test]
    fn a_zombie_caller_is_refused() {
        let mut child = Command::new("true").spawn().unwrap();
        let pid = child.id();
        let pidfd = open_pidfd(pid).unwrap();
        let mut fds = [PollFd::new(&pidfd, PollFlags::IN)];
        let deadline = Timespec { tv_sec: 10, tv_nsec: 0 };
        assert_eq!(poll(&mut fds, Some(&deadline)).unwrap(), 1, "`true` did not exit");
        assert_eq!(pid_of_pidfd(&pidfd).unwrap(), pid);
        assert!(std::path::Path::new(&format!("/proc/{pid}")).exists());
        let read = Process::read(&pidfd, pid);
        child.wait().unwrap();
        assert!(refused(read));
    }

    #[test]
    fn this_process_is_alive_and_unsandboxed() {
        let pid = std::process::id();
        let pidfd = open_pidfd(pid).unwrap();
        assert_eq!(pid_of_pidfd(&pidfd).unwrap(), pid);
        ensure_alive(&pidfd).unwrap();
        let process = Process::read(&pidfd, pid).unwrap();
        let uid = rustix::process::geteuid().as_raw();
        assert_eq!(sandbox_app(&process, Some(uid), None).unwrap(), None);
    }
}
