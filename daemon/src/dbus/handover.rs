//! Handing a secret to the flow's owner as a file descriptor: a sealed memfd, so it never sits in
//! a message body other programs may see, on disk, or in a pipe buffer someone else could drain.

use std::{io::Write as _, os::fd::OwnedFd};

use rustix::fs::{MemfdFlags, SealFlags, SeekFrom};

/// A memfd holding `bytes`, positioned at its start, sealed against any change.
pub fn sealed_memfd(bytes: &[u8]) -> std::io::Result<OwnedFd> {
    let fd =
        rustix::fs::memfd_create("matrix-linkd-session", MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING)?;
    let mut file = std::fs::File::from(fd);
    file.write_all(bytes)?;
    rustix::fs::seek(&file, SeekFrom::Start(0))?;
    rustix::fs::fcntl_add_seals(
        &file,
        SealFlags::SHRINK | SealFlags::GROW | SealFlags::WRITE | SealFlags::SEAL,
    )?;
    Ok(OwnedFd::from(file))
}

#[cfg(test)]
mod tests {
    use std::io::Read as _;

    use super::*;

    #[test]
    fn reads_back_from_the_start_and_cannot_be_changed() {
        let fd = sealed_memfd(b"{\"a\":1}").unwrap();
        let mut file = std::fs::File::from(fd);
        let mut text = String::new();
        file.read_to_string(&mut text).unwrap();
        assert_eq!(text, "{\"a\":1}");
        assert!(file.write_all(b"x").is_err(), "sealed against writes");
        assert!(file.set_len(0).is_err(), "sealed against shrinking");
    }
}
