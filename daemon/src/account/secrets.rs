//! The daemon's items in the Secret Service (`org.freedesktop.secrets`): the OAuth session and the
//! key of the encrypted matrix-sdk store, and the delegated devices. Nothing here is ever written
//! anywhere else.

use std::{collections::HashMap, future::Future, pin::Pin, sync::Arc, time::Duration};

use secret_service::{EncryptionType, SecretService};
use tokio::sync::Mutex;

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
    /// JSON of one delegated device (`protocol::delegated::Record`), tagged with its device ID.
    Delegation,
    /// JSON of what a flow made outside the daemon (`protocol::intent::Outside`), tagged with
    /// the flow's intent ID.
    Intent,
}

impl ItemKind {
    fn attribute(self) -> &'static str {
        match self {
            ItemKind::Session => "session",
            ItemKind::StoreKey => "store-key",
            ItemKind::Delegation => "delegation",
            ItemKind::Intent => "intent",
        }
    }
    fn label(self) -> &'static str {
        match self {
            ItemKind::Session => "matrix-linkd: Matrix session",
            ItemKind::StoreKey => "matrix-linkd: store encryption key",
            ItemKind::Delegation => "matrix-linkd: delegated device",
            ItemKind::Intent => "matrix-linkd: flow in progress",
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

/// Access to our items over one long-lived Secret Service session (a D-Bus connection and an
/// encrypted session with the service), made on first use. The session is made again once when an
/// operation fails on it: the service may have restarted, or a call may have left it unusable.
#[derive(Clone, Default)]
pub struct SecretStore {
    service: Arc<Mutex<Option<SecretService<'static>>>>,
}

impl std::fmt::Debug for SecretStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SecretStore")
    }
}

/// One operation on the service; it borrows the session for as long as it runs.
type Op<'a, T> = Pin<Box<dyn Future<Output = Result<T>> + Send + 'a>>;

impl SecretStore {
    async fn connect() -> Result<SecretService<'static>> {
        SecretService::connect(EncryptionType::Dh).await.map_err(storage_error)
    }

    /// Runs `op` on the kept session (made first if there is none). A failure on a session made
    /// earlier is tried once more on a fresh one; a failure on a fresh one is the answer.
    async fn with<T>(&self, op: impl for<'a> Fn(&'a SecretService<'static>) -> Op<'a, T>) -> Result<T> {
        with_timeout(async {
            let mut slot = self.service.lock().await;
            let mut fresh = false;
            loop {
                if slot.is_none() {
                    *slot = Some(Self::connect().await?);
                    fresh = true;
                }
                let service = slot.as_ref().expect("connected above");
                match op(service).await {
                    Err(_) if !fresh => *slot = None,
                    done => return done,
                }
            }
        })
        .await
    }

    /// The secret of `kind`, or `None` when there is no such item.
    pub async fn load(&self, kind: ItemKind) -> Result<Option<Vec<u8>>> {
        self.with(|ss| {
            Box::pin(async move {
                let found = ss.search_items(attributes(kind)).await.map_err(storage_error)?;
                if let Some(item) = found.unlocked.first() {
                    return item.get_secret().await.map(Some).map_err(storage_error);
                }
                if !found.locked.is_empty() {
                    return Err(LinkError::SecretStorage("the keyring is locked".into()));
                }
                Ok(None)
            })
        })
        .await
    }

    /// Stores (or replaces) the secret of `kind` in the default collection, which must be unlocked.
    pub async fn save(&self, kind: ItemKind, secret: &[u8]) -> Result<()> {
        self.create(kind, None, secret, "application/octet-stream").await
    }

    /// Deletes every item of `kind`.
    pub async fn delete(&self, kind: ItemKind) -> Result<()> {
        self.delete_matching(kind, None).await
    }

    /// Stores (or replaces) the item of `kind` tagged `tag`.
    pub async fn save_tagged(&self, kind: ItemKind, tag: &str, secret: &[u8]) -> Result<()> {
        self.create(kind, Some(tag), secret, "application/json").await
    }

    /// Every item of `kind`: its tag and its secret.
    pub async fn load_tagged(&self, kind: ItemKind) -> Result<Vec<(String, Vec<u8>)>> {
        self.with(|ss| {
            Box::pin(async move {
                let found = ss.search_items(attributes(kind)).await.map_err(storage_error)?;
                if !found.locked.is_empty() {
                    return Err(LinkError::SecretStorage("the keyring is locked".into()));
                }
                let mut out = Vec::with_capacity(found.unlocked.len());
                for item in found.unlocked {
                    let tag =
                        item.get_attributes().await.map_err(storage_error)?.remove(TAG).unwrap_or_default();
                    out.push((tag, item.get_secret().await.map_err(storage_error)?));
                }
                Ok(out)
            })
        })
        .await
    }

    /// Deletes the item of `kind` tagged `tag`.
    pub async fn delete_tagged(&self, kind: ItemKind, tag: &str) -> Result<()> {
        self.delete_matching(kind, Some(tag)).await
    }

    async fn create(
        &self,
        kind: ItemKind,
        tag: Option<&str>,
        secret: &[u8],
        content_type: &'static str,
    ) -> Result<()> {
        self.with(|ss| {
            let (tag, secret) = (tag.map(str::to_owned), secret.to_vec());
            Box::pin(async move {
                let collection = ss.get_default_collection().await.map_err(storage_error)?;
                if collection.is_locked().await.map_err(storage_error)? {
                    return Err(LinkError::SecretStorage("the keyring is locked".into()));
                }
                let attributes = match &tag {
                    Some(tag) => tagged(kind, tag),
                    None => attributes(kind),
                };
                collection
                    .create_item(kind.label(), attributes, &secret, true, content_type)
                    .await
                    .map_err(storage_error)?;
                Ok(())
            })
        })
        .await
    }

    async fn delete_matching(&self, kind: ItemKind, tag: Option<&str>) -> Result<()> {
        self.with(|ss| {
            let tag = tag.map(str::to_owned);
            Box::pin(async move {
                let attributes = match &tag {
                    Some(tag) => tagged(kind, tag),
                    None => attributes(kind),
                };
                let found = ss.search_items(attributes).await.map_err(storage_error)?;
                if !found.locked.is_empty() {
                    return Err(LinkError::SecretStorage("the keyring is locked".into()));
                }
                for item in found.unlocked {
                    item.delete().await.map_err(storage_error)?;
                }
                Ok(())
            })
        })
        .await
    }
}
