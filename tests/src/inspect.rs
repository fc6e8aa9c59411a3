//! What a daemon process holds: its names and connections on a session's bus, its open files.

use anyhow::Result;
use zbus::{fdo::DBusProxy, names::BusName};

use crate::Session;

impl Session {
    /// The unique name that owns `name` on this bus.
    pub async fn owner_of(&self, name: &str) -> Result<String> {
        let conn = self.connect().await?;
        let dbus = DBusProxy::new(&conn).await?;
        Ok(dbus.get_name_owner(BusName::try_from(name)?).await?.to_string())
    }

    /// How many connections process `pid` has on this bus.
    pub async fn bus_connections_of(&self, pid: u32) -> Result<usize> {
        let conn = self.connect().await?;
        let dbus = DBusProxy::new(&conn).await?;
        let mut n = 0;
        for name in dbus.list_names().await? {
            if name.starts_with(':')
                && let Ok(owner_pid) = dbus.get_connection_unix_process_id(name.as_ref()).await
                && owner_pid == pid
            {
                n += 1;
            }
        }
        Ok(n)
    }
}

/// What process `pid` has open, one entry per file descriptor: the path of a file, or its kind
/// (`socket`, `pipe`, `anon_inode:[eventfd]`, …) with the inode number left out, sorted.
pub fn open_fds(pid: u32) -> Result<Vec<String>> {
    let mut fds = Vec::new();
    for entry in std::fs::read_dir(format!("/proc/{pid}/fd"))? {
        // A descriptor closed between the listing and the read is not open.
        let Ok(target) = std::fs::read_link(entry?.path()) else { continue };
        let target = target.display().to_string();
        fds.push(match target.split_once(":[") {
            Some((kind, _)) if kind == "socket" || kind == "pipe" => kind.to_owned(),
            _ => target,
        });
    }
    fds.sort();
    Ok(fds)
}

/// The entries of `after` that `before` does not hold (as many times as they are extra).
pub fn fds_added(before: &[String], after: &[String]) -> Vec<String> {
    let mut left = before.to_vec();
    after
        .iter()
        .filter(|fd| match left.iter().position(|b| b == *fd) {
            Some(i) => {
                left.swap_remove(i);
                false
            }
            None => true,
        })
        .cloned()
        .collect()
}
