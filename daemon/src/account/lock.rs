//! One daemon per data directory. Two daemons on one store and one keyring would run flows on the
//! same account at once and wipe each other's session on a failed refresh, whether they share a
//! bus or not: the first holds an exclusive `flock` on `<data dir>/lock` for its whole life, and a
//! second one exits with a clear message.

use std::{
    fs::{DirBuilder, File, OpenOptions},
    os::unix::fs::{DirBuilderExt, OpenOptionsExt},
    path::{Path, PathBuf},
};

use rustix::fs::{FlockOperation, flock};

/// Held for the daemon's life; the lock goes with the file descriptor.
#[derive(Debug)]
pub struct InstanceLock {
    _file: File,
}

#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error("another matrix-linkd is running with the data directory {0} (it holds the lock)")]
    Held(PathBuf),
    #[error("cannot lock the data directory {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
}

impl InstanceLock {
    pub fn acquire(data_dir: &Path) -> Result<Self, LockError> {
        let io = |source| LockError::Io { path: data_dir.to_owned(), source };
        DirBuilder::new().recursive(true).mode(0o700).create(data_dir).map_err(io)?;
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .open(data_dir.join("lock"))
            .map_err(io)?;
        match flock(&file, FlockOperation::NonBlockingLockExclusive) {
            Ok(()) => Ok(Self { _file: file }),
            Err(rustix::io::Errno::WOULDBLOCK) => Err(LockError::Held(data_dir.to_owned())),
            Err(e) => Err(io(e.into())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_holder_is_refused_until_the_first_is_gone() {
        let dir = std::env::temp_dir().join(format!("linkd-lock-test-{}", std::process::id()));
        let first = InstanceLock::acquire(&dir).unwrap();
        assert!(matches!(InstanceLock::acquire(&dir), Err(LockError::Held(_))));
        drop(first);
        assert!(InstanceLock::acquire(&dir).is_ok());
        std::fs::remove_dir_all(&dir).ok();
    }
}
