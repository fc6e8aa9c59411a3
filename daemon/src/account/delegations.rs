//! What the daemon delegated: one Secret Service item per delegated device, holding the
//! `protocol::delegated::Record` (with the tokens as handed over, for a later revocation).

use async_trait::async_trait;
use tracing::warn;

use super::{Account, secrets::ItemKind};
use crate::{
    error::{LinkError, Result},
    protocol::{DelegationRecords, delegated::Record},
};

impl Account {
    /// Every delegation kept, oldest first. An item that does not parse is skipped (and said).
    pub async fn delegations(&self) -> Result<Vec<Record>> {
        let mut records: Vec<Record> = self
            .secrets
            .load_tagged(ItemKind::Delegation)
            .await?
            .into_iter()
            .filter_map(|(tag, bytes)| match serde_json::from_slice::<Record>(&bytes) {
                Ok(r) if r.device_id == tag => Some(r),
                _ => {
                    warn!("a delegation item in the keyring is unreadable; skipped");
                    None
                }
            })
            .collect();
        records.sort_by_key(|r| r.created);
        Ok(records)
    }

    /// The delegation of `device_id`; `DeviceNotFound` when this daemon did not delegate it.
    pub async fn delegation(&self, device_id: &str) -> Result<Record> {
        self.delegations()
            .await?
            .into_iter()
            .find(|r| r.device_id == device_id)
            .ok_or(LinkError::DeviceNotFound)
    }
}

#[async_trait]
impl DelegationRecords for Account {
    async fn remember(&self, record: Record) -> Result<()> {
        let json =
            serde_json::to_vec(&record).map_err(|_| LinkError::Failed("cannot encode a record".into()))?;
        self.secrets.save_tagged(ItemKind::Delegation, &record.device_id, &json).await
    }

    async fn forget(&self, device_id: &str) -> Result<()> {
        self.secrets.delete_tagged(ItemKind::Delegation, device_id).await
    }
}
