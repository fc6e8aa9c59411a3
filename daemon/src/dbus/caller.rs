//! Who is calling: unique name, UID and sandbox, from the bus itself (never from the message).

use std::{os::fd::AsRawFd, time::Instant};

use zbus::{
    Connection,
    fdo::DBusProxy,
    message::Header,
    names::{BusName, OwnedUniqueName, UniqueName},
};

use crate::error::{LinkError, Result};

/// A caller as the bus knows it.
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

/// Asks the bus for the caller's credentials.
pub async fn identify(conn: &Connection, hdr: &Header<'_>) -> Result<Caller> {
    let unique_name = sender(hdr)?;
    let dbus = DBusProxy::new(conn).await.map_err(|e| LinkError::Failed(e.to_string()))?;
    let name: &UniqueName<'_> = &unique_name;
    let creds = dbus
        .get_connection_credentials(BusName::Unique(name.clone()))
        .await
        .map_err(|_| LinkError::AccessDenied("the caller's credentials are unknown".into()))?;
    let pid = creds.process_fd().and_then(|fd| pid_of_pidfd(fd.as_raw_fd())).or(creds.process_id());
    let label =
        creds.linux_security_label().map(|l| String::from_utf8_lossy(l).trim_end_matches('\0').to_owned());
    let sandbox_app = sandbox_app(pid, label.as_deref());
    Ok(Caller { unique_name, uid: creds.unix_user_id(), sandbox_app })
}

/// The PID a pidfd refers to, from `/proc/self/fdinfo` (stable for as long as we hold the fd).
fn pid_of_pidfd(fd: i32) -> Option<u32> {
    let info = std::fs::read_to_string(format!("/proc/self/fdinfo/{fd}")).ok()?;
    info.lines().find_map(|l| l.strip_prefix("Pid:")).and_then(|p| p.trim().parse().ok())
}

/// Flatpak: `/.flatpak-info` in the caller's root, `[Application] name=`. Snap: AppArmor label
/// `snap.<name>.<app>`.
fn sandbox_app(pid: Option<u32>, label: Option<&str>) -> Option<String> {
    if let Some(pid) = pid
        && let Ok(info) = std::fs::read_to_string(format!("/proc/{pid}/root/.flatpak-info"))
    {
        let name = info
            .lines()
            .skip_while(|l| l.trim() != "[Application]")
            .find_map(|l| l.trim().strip_prefix("name="))
            .unwrap_or("unknown-flatpak");
        return Some(name.to_owned());
    }
    if let Some(label) = label
        && let Some(rest) = label.strip_prefix("snap.")
    {
        let name = rest.split(['.', ' ']).next().unwrap_or("unknown-snap");
        return Some(format!("snap.{name}"));
    }
    None
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snap_label() {
        assert_eq!(sandbox_app(None, Some("snap.element.element (enforce)")), Some("snap.element".into()));
        assert_eq!(sandbox_app(None, Some("unconfined")), None);
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
}
