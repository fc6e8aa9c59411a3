//! The intent journal (`protocol::intent`) as the account keeps it: one file per flow in
//! `journal/` of the data directory with the public facts (kind, step, start), and one Secret
//! Service item per flow, tagged with its ID, with what would let someone act (the rendezvous URL,
//! the device code, tokens). The item is written before the file and removed before it: the file
//! is the step's commit, so what a file names its item holds (the item may be one step ahead,
//! which is the newer truth: a step is written before what it names is made).

use std::path::{Path, PathBuf};

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use tracing::warn;

use super::{Account, secrets::ItemKind};
use crate::{
    error::{LinkError, Result},
    protocol::intent::{Intent, Journal, Kind, Outside},
};

/// What the journal file says: nothing secret.
#[derive(Serialize, Deserialize)]
struct Public {
    id: String,
    kind: Kind,
    step: String,
    started: u64,
}

fn io_error(e: std::io::Error) -> LinkError {
    LinkError::Failed(format!("cannot write the intent journal: {e}"))
}

/// Replaces `path` with `bytes` so that a kill leaves the old or the new file, never half of one.
fn write_durably(dir: &Path, path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::{io::Write as _, os::unix::fs::DirBuilderExt as _};
    std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir)?;
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)?;
    std::fs::File::open(dir)?.sync_all()
}

impl Account {
    fn intent_path(&self, id: &str) -> PathBuf {
        self.journal_dir.join(format!("{id}.json"))
    }
}

#[async_trait]
impl Journal for Account {
    async fn write(&self, intent: &Intent) -> Result<()> {
        self.own_intents.lock().expect("not poisoned").insert(intent.id.clone());
        let public = Public {
            id: intent.id.clone(),
            kind: intent.kind,
            step: intent.step.clone(),
            started: intent.started,
        };
        let secret = serde_json::to_vec(&intent.outside).map_err(|e| LinkError::Failed(e.to_string()))?;
        self.secrets.save_tagged(ItemKind::Intent, &intent.id, &secret).await?;
        let file = serde_json::to_vec_pretty(&public).map_err(|e| LinkError::Failed(e.to_string()))?;
        let (dir, path) = (self.journal_dir.clone(), self.intent_path(&intent.id));
        tokio::task::spawn_blocking(move || write_durably(&dir, &path, &file))
            .await
            .map_err(|e| LinkError::Failed(e.to_string()))?
            .map_err(io_error)
    }

    async fn remove(&self, id: &str) -> Result<()> {
        self.secrets.delete_tagged(ItemKind::Intent, id).await?;
        match tokio::fs::remove_file(self.intent_path(id)).await {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(io_error(e)),
            _ => {}
        }
        self.own_intents.lock().expect("not poisoned").remove(id);
        Ok(())
    }

    async fn left(&self) -> Result<Vec<Intent>> {
        let mut entries = match tokio::fs::read_dir(&self.journal_dir).await {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(io_error(e)),
        };
        let mut public = Vec::new();
        while let Some(entry) = entries.next_entry().await.map_err(io_error)? {
            let path = entry.path();
            if path.extension().is_some_and(|e| e == "tmp") {
                let _ = tokio::fs::remove_file(&path).await;
                continue;
            }
            let parsed =
                tokio::fs::read(&path).await.ok().and_then(|b| serde_json::from_slice::<Public>(&b).ok());
            match parsed {
                Some(p) if self.own_intents.lock().expect("not poisoned").contains(&p.id) => {}
                Some(p) => public.push(p),
                None => {
                    warn!(path = %path.display(), "an unreadable intent file; removed");
                    let _ = tokio::fs::remove_file(&path).await;
                }
            }
        }
        // No flow was left: the keyring is not asked (every start-up would pay a round trip).
        if public.is_empty() {
            return Ok(Vec::new());
        }
        let secret = self.secrets.load_tagged(ItemKind::Intent).await?;
        // An item without a file: a kill came between the two writes of a flow's first step, which
        // names nothing outside (removed at the next start that finds a file).
        for (tag, _) in &secret {
            let own = self.own_intents.lock().expect("not poisoned").contains(tag);
            if !own && !public.iter().any(|p| p.id == *tag) {
                let _ = self.secrets.delete_tagged(ItemKind::Intent, tag).await;
            }
        }
        let left = public
            .into_iter()
            .map(|p| {
                let outside = secret
                    .iter()
                    .find(|(tag, _)| *tag == p.id)
                    .and_then(|(_, bytes)| serde_json::from_slice::<Outside>(bytes).ok())
                    .unwrap_or_default();
                Intent { id: p.id, kind: p.kind, step: p.step, started: p.started, outside }
            })
            .collect();
        Ok(left)
    }
}
