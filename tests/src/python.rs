//! A Python with dbus-fast (from PyPI) for the examples that pass file descriptors: a venv under
//! the target directory, made once and reused.

use std::{path::PathBuf, process::Command};

use anyhow::{Context as _, Result, ensure};

use crate::workspace_root;

/// The version the examples are tested with.
pub const DBUS_FAST: &str = "dbus-fast==5.2.0";

/// The venv's `python`, with dbus-fast installed. Safe to call from parallel tests (a lock file
/// serialises the first set-up).
pub fn dbus_fast_python() -> Result<PathBuf> {
    let venv = workspace_root().join("target/venv-dbus-fast");
    let python = venv.join("bin/python");
    let ready = venv.join(".ready");
    if ready.exists() {
        return Ok(python);
    }
    std::fs::create_dir_all(workspace_root().join("target"))?;
    let lock = std::fs::File::create(workspace_root().join("target/venv-dbus-fast.lock"))?;
    rustix::fs::flock(&lock, rustix::fs::FlockOperation::LockExclusive)?;
    if !ready.exists() {
        let status =
            Command::new("python3").args(["-m", "venv"]).arg(&venv).status().context("python3 -m venv")?;
        ensure!(status.success(), "python3 -m venv failed (Debian: python3-venv)");
        let status = Command::new(venv.join("bin/pip"))
            .args(["install", "-q", "--disable-pip-version-check", DBUS_FAST])
            .status()
            .context("pip install dbus-fast")?;
        ensure!(status.success(), "pip install {DBUS_FAST} failed");
        std::fs::write(&ready, DBUS_FAST)?;
    }
    Ok(python)
}
