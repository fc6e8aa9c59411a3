//! The daemon's items in the Secret Service (`org.freedesktop.secrets`): the OAuth session and the
//! key of the encrypted matrix-sdk store. Nothing here is ever written anywhere else.

use std::{collections::HashMap, time::Duration};

use secret_service::{EncryptionType, SecretService};

use crate::error::{LinkError, Result};

/// The `application` attribute of every item we own.
pub const APPLICATION: &str = "io.github.matrix_linkd";

/// Calls to the keyring that take longer than this are treated as failures: a prompt nobody can
/// answer must not hang a flow.
const CALL_TIMEOUT: Duration = Duration::from_secs(15);

/// One kind of item.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ItemKind {
    /// JSON of the OAuth session: homeserver, client id, user, device, tokens.
    Session,
    /// 32 random bytes that encrypt the matrix-sdk sqlite store.
    StoreKey,
    /// JSON of one delegated device (`protocol::delegation::Record`), tagged with its device ID.
    Delegation,
}

impl ItemKind {
    fn attribute(self) -> &'static str {
        match self {
            ItemKind::Session => "session",
            ItemKind::StoreKey => "store-key",
            ItemKind::Delegation => "delegation",
        }
    }
    fn label(self) -> &'static str {
        match self {
            ItemKind::Session => "matrix-linkd: Matrix session",
            ItemKind::StoreKey => "matrix-linkd: store encryption key",
            ItemKind::Delegation => "matrix-linkd: delegated device",
        }
    }
}

fn attributes(kind: ItemKind) -> HashMap<&'static str, &'static str> {
    HashMap::from([("application", APPLICATION), ("kind", kind.attribute())])
}

/// The attribute that tells items of one kind apart (`Delegation`: the device ID).
const TAG: &str = "device_id";

fn tagged(kind: ItemKind, tag: &str) -> HashMap<&str, &str> {
    let mut a = attributes(kind);
    a.insert(TAG, tag);
    a
}

fn storage_error(e: secret_service::Error) -> LinkError {
    use secret_service::Error as E;
    LinkError::SecretStorage(match e {
        E::Locked => "the keyring is locked".to_owned(),
        E::Unavailable => "no Secret Service on the session bus".to_owned(),
        E::Prompt | E::PromptDisconnected => "the keyring prompt was dismissed".to_owned(),
        E::NoResult => "the Secret Service returned no result".to_owned(),
        E::Zbus(zbus::Error::MethodError(name, _, _)) => format!("the Secret Service answered {name}"),
        E::Zbus(zbus::Error::FDO(e)) if matches!(*e, zbus::fdo::Error::ServiceUnknown(_)) => {
            "no Secret Service on the session bus".to_owned()
        }
        E::ZbusFdo(zbus::fdo::Error::ServiceUnknown(_)) => "no Secret Service on the session bus".to_owned(),
        other => format!("Secret Service error: {other}"),
    })
}

async fn with_timeout<T>(fut: impl std::future::Future<Output = Result<T>>) -> Result<T> {
    tokio::time::timeout(CALL_TIMEOUT, fut)
        .await
        .map_err(|_| LinkError::SecretStorage("the Secret Service did not answer in time".into()))?
}

/// Access to our items. Connects per operation: the daemon touches the keyring rarely.
#[derive(Debug, Clone, Default)]
pub struct SecretStore;

impl SecretStore {
    async fn connect() -> Result<SecretService<'static>> {
        SecretService::connect(EncryptionType::Dh).await.map_err(storage_error)
    }

    /// The secret of `kind`, or `None` when there is no such item.
    pub async fn load(&self, kind: ItemKind) -> Result<Option<Vec<u8>>> {
        with_timeout(async {
            let ss = Self::connect().await?;
            let found = ss.search_items(attributes(kind)).await.map_err(storage_error)?;
            if let Some(item) = found.unlocked.first() {
                return item.get_secret().await.map(Some).map_err(storage_error);
            }
            if !found.locked.is_empty() {
                return Err(LinkError::SecretStorage("the keyring is locked".into()));
            }
            Ok(None)
        })
        .await
    }

    /// Stores (or replaces) the secret of `kind` in the default collection, which must be unlocked.
    pub async fn save(&self, kind: ItemKind, secret: &[u8]) -> Result<()> {
        with_timeout(async {
            let ss = Self::connect().await?;
            let collection = ss.get_default_collection().await.map_err(storage_error)?;
            if collection.is_locked().await.map_err(storage_error)? {
                return Err(LinkError::SecretStorage("the keyring is locked".into()));
            }
            collection
                .create_item(kind.label(), attributes(kind), secret, true, "application/octet-stream")
                .await
                .map_err(storage_error)?;
            Ok(())
        })
        .await
    }

    /// Deletes every item of `kind`.
    pub async fn delete(&self, kind: ItemKind) -> Result<()> {
        self.delete_matching(attributes(kind)).await
    }

    /// Stores (or replaces) the item of `kind` tagged `tag`.
    pub async fn save_tagged(&self, kind: ItemKind, tag: &str, secret: &[u8]) -> Result<()> {
        with_timeout(async {
            let ss = Self::connect().await?;
            let collection = ss.get_default_collection().await.map_err(storage_error)?;
            if collection.is_locked().await.map_err(storage_error)? {
                return Err(LinkError::SecretStorage("the keyring is locked".into()));
            }
            collection
                .create_item(kind.label(), tagged(kind, tag), secret, true, "application/json")
                .await
                .map_err(storage_error)?;
            Ok(())
        })
        .await
    }

    /// Every item of `kind`: its tag and its secret.
    pub async fn load_tagged(&self, kind: ItemKind) -> Result<Vec<(String, Vec<u8>)>> {
        with_timeout(async {
            let ss = Self::connect().await?;
            let found = ss.search_items(attributes(kind)).await.map_err(storage_error)?;
            if !found.locked.is_empty() {
                return Err(LinkError::SecretStorage("the keyring is locked".into()));
            }
            let mut out = Vec::with_capacity(found.unlocked.len());
            for item in found.unlocked {
                let tag = item.get_attributes().await.map_err(storage_error)?.remove(TAG).unwrap_or_default();
                out.push((tag, item.get_secret().await.map_err(storage_error)?));
            }
            Ok(out)
        })
        .await
    }

    /// Deletes the item of `kind` tagged `tag`.
    pub async fn delete_tagged(&self, kind: ItemKind, tag: &str) -> Result<()> {
        self.delete_matching(tagged(kind, tag)).await
    }

    async fn delete_matching(&self, attributes: HashMap<&str, &str>) -> Result<()> {
        with_timeout(async {
            let ss = Self::connect().await?;
            let found = ss.search_items(attributes).await.map_err(storage_error)?;
            if !found.locked.is_empty() {
                return Err(LinkError::SecretStorage("the keyring is locked".into()));
            }
            for item in found.unlocked {
                item.delete().await.map_err(storage_error)?;
            }
            Ok(())
        })
        .await
    }
}
