//! matrix-js-sdk 43 as the other device: `stack/node/js-peer.mjs` run with Node 22, exchanging
//! QR bytes, check codes and URIs with the test through files.

use std::{
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use serde_json::Value;

use crate::{stack::Stack, workspace_root};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Existing,
    New,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Scan,
    Generate,
}

/// A running js-sdk peer.
pub struct JsPeer {
    pub dir: tempfile::TempDir,
    child: Child,
}

impl JsPeer {
    pub fn start(stack: &Stack, role: Role, mode: Mode, login: &str) -> Result<Self> {
        let dir = tempfile::Builder::new().prefix("js-peer-").tempdir()?;
        let node_dir = workspace_root().join("stack/node");
        let log = std::fs::File::create(dir.path().join("peer.log"))?;
        let child = Command::new(node_dir.join("node_modules/.bin/node"))
            .arg(node_dir.join("js-peer.mjs"))
            .args(["--role", if role == Role::Existing { "existing" } else { "new" }])
            .args(["--mode", if mode == Mode::Scan { "scan" } else { "generate" }])
            .arg("--dir")
            .arg(dir.path())
            .args(["--homeserver", stack.synapse.as_str(), "--login", login, "--timeout", "150"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .context("node js-peer.mjs (stack/install.sh installs it)")?;
        Ok(Self { dir, child })
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Waits for the peer to write `name`.
    pub async fn read(&mut self, name: &str, timeout: Duration) -> Result<String> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(s) = std::fs::read_to_string(self.path(name)) {
                return Ok(s.trim().to_owned());
            }
            if name != "result.json" && self.path("result.json").exists() {
                bail!("js peer ended before writing {name}: {}", self.result_text());
            }
            if Instant::now() > deadline {
                bail!("js peer did not write {name} in time; log:\n{}", self.log());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Hands the peer a file (atomically).
    pub fn write(&self, name: &str, content: &str) -> Result<()> {
        let tmp = self.path(&format!(".{name}.tmp"));
        std::fs::write(&tmp, content)?;
        std::fs::rename(tmp, self.path(name))?;
        Ok(())
    }

    pub async fn qr(&mut self) -> Result<Vec<u8>> {
        Ok(hex::decode(self.read("qr.hex", Duration::from_secs(60)).await?)?)
    }

    pub async fn check_code(&mut self) -> Result<u8> {
        Ok(self.read("checkcode", Duration::from_secs(60)).await?.parse()?)
    }

    /// The outcome the peer wrote; waits for it.
    pub async fn result(&mut self) -> Result<Value> {
        let text = self.read("result.json", Duration::from_secs(150)).await?;
        let _ = tokio::task::block_in_place(|| self.child.wait());
        Ok(serde_json::from_str(&text)?)
    }

    /// Stops the peer (SIGTERM: it writes its result) and returns what it wrote.
    pub async fn stop(&mut self) -> Result<Value> {
        let _ = Command::new("kill").arg(self.child.id().to_string()).status();
        self.result().await
    }

    fn result_text(&self) -> String {
        std::fs::read_to_string(self.path("result.json")).unwrap_or_default()
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.path("peer.log")).unwrap_or_default()
    }
}

impl Drop for JsPeer {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = Command::new("kill").arg(self.child.id().to_string()).status();
            let _ = self.child.wait();
        }
    }
}
