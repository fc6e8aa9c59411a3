//! The daemon's own signed-in session: restored at start from the Secret Service and the
//! encrypted store, created by a login flow, kept fresh as tokens refresh, wiped by `SignOut`.

mod delegations;
mod intents;
mod lock;
mod secrets;

use std::{
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use async_trait::async_trait;
pub use lock::{InstanceLock, LockError};
use matrix_linkd_api::capabilities;
use matrix_sdk::{
    Client, SessionChange, SessionMeta, SessionTokens, SqliteStoreConfig,
    authentication::oauth::{ClientId, OAuthSession, UserSession},
    ruma::{OwnedDeviceId, OwnedUserId},
    store::RoomLoadSettings,
};
use matrix_sdk_base::crypto::OlmMachine;
use rand::RngCore;
pub use secrets::{APPLICATION, ItemKind, SecretStore};
use serde::{Deserialize, Serialize};
use tokio::sync::{Mutex, watch};
use tracing::{debug, info, warn};
use url::Url;

use crate::{
    error::{LinkError, Result},
    protocol::{AccountPort, LoginTarget, device_grant},
};

/// The Manager's `SessionState` property: declared once in the `matrix-linkd-api` crate.
pub use matrix_linkd_api::SessionState;

/// What the Manager publishes about the session. No secrets.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SessionInfo {
    pub state: SessionState,
    pub user_id: String,
    pub device_id: String,
    pub homeserver: String,
    pub capabilities: Vec<String>,
}

/// The session as kept in the Secret Service. Deliberately not `Debug`.
#[derive(Serialize, Deserialize)]
struct StoredSession {
    homeserver: Url,
    client_id: String,
    user_id: OwnedUserId,
    device_id: OwnedDeviceId,
    access_token: String,
    refresh_token: Option<String>,
}

impl StoredSession {
    fn from_client(client: &Client) -> Result<Self> {
        let session = client
            .oauth()
            .full_session()
            .ok_or_else(|| LinkError::Failed("the client has no OAuth session".into()))?;
        Ok(Self {
            homeserver: client.homeserver(),
            client_id: session.client_id.as_str().to_owned(),
            user_id: session.user.meta.user_id,
            device_id: session.user.meta.device_id,
            access_token: session.user.tokens.access_token,
            refresh_token: session.user.tokens.refresh_token,
        })
    }

    fn into_oauth_session(self) -> (Url, OAuthSession) {
        let session = OAuthSession {
            client_id: ClientId::new(self.client_id),
            user: UserSession {
                meta: SessionMeta { user_id: self.user_id, device_id: self.device_id },
                tokens: SessionTokens { access_token: self.access_token, refresh_token: self.refresh_token },
            },
        };
        (self.homeserver, session)
    }
}

/// The one session of the daemon.
pub struct Account {
    me: std::sync::Weak<Account>,
    store_dir: PathBuf,
    /// The intent journal's public part (`intents.rs`).
    journal_dir: PathBuf,
    /// The intents of this daemon's own flows (a restart's clean-up leaves them alone).
    own_intents: std::sync::Mutex<std::collections::HashSet<String>>,
    secrets: SecretStore,
    info: watch::Sender<SessionInfo>,
    client: Mutex<Option<Client>>,
    /// The store key of a login in progress, already kept in the keyring.
    pending_key: Mutex<Option<[u8; 32]>>,
    watcher: std::sync::Mutex<Option<tokio::task::JoinHandle<()>>>,
    /// The crypto store opened once for the secrets every grant shares (see `secrets_bundle`),
    /// dropped whenever the session changes.
    exporter: Mutex<Option<OlmMachine>>,
}

impl Account {
    pub fn new(data_dir: &Path) -> Arc<Self> {
        Arc::new_cyclic(|me| Self {
            me: me.clone(),
            store_dir: data_dir.join("store"),
            journal_dir: data_dir.join("journal"),
            own_intents: Default::default(),
            secrets: SecretStore::default(),
            info: watch::Sender::new(SessionInfo { state: SessionState::Unknown, ..Default::default() }),
            client: Mutex::new(None),
            pending_key: Mutex::new(None),
            watcher: std::sync::Mutex::new(None),
            exporter: Mutex::new(None),
        })
    }

    pub fn info(&self) -> SessionInfo {
        self.info.borrow().clone()
    }

    /// Waits until a restore in progress has finished.
    pub async fn settled(&self) {
        let mut rx = self.info.subscribe();
        let _ = rx.wait_for(|i| !matches!(i.state, SessionState::Unknown | SessionState::Restoring)).await;
    }

    pub fn subscribe(&self) -> watch::Receiver<SessionInfo> {
        self.info.subscribe()
    }

    fn set_state(&self, state: SessionState) {
        self.info.send_modify(|i| {
            *i = SessionInfo { state, ..Default::default() };
        });
    }

    /// The signed-in client, restoring first if an earlier restore failed.
    pub async fn client(self: &Arc<Self>) -> Result<Client> {
        if self.info().state == SessionState::Error {
            self.restore().await;
        }
        self.client.lock().await.clone().ok_or(LinkError::NotSignedIn)
    }

    /// Restores the kept session, if any. Never fails: the outcome is the session state.
    pub async fn restore(self: &Arc<Self>) {
        let mut slot = self.client.lock().await;
        if slot.is_some() {
            return;
        }
        self.set_state(SessionState::Restoring);
        match self.restore_inner().await {
            Ok(Some(client)) => {
                info!("session restored");
                self.exporter.lock().await.take();
                *slot = Some(client.clone());
                drop(slot);
                self.publish_signed_in(&client).await;
            }
            Ok(None) => {
                info!("no kept session: signed out");
                self.set_state(SessionState::SignedOut);
            }
            Err(e) => {
                warn!(error = %e, "cannot restore the session");
                self.set_state(SessionState::Error);
            }
        }
    }

    async fn restore_inner(&self) -> Result<Option<Client>> {
        let Some(raw) = self.secrets.load(ItemKind::Session).await? else {
            // A store without a session cannot be used; it would only leak disk space.
            wipe_dir(&self.store_dir).await;
            return Ok(None);
        };
        let stored: StoredSession = serde_json::from_slice(&raw)
            .map_err(|_| LinkError::SecretStorage("the kept session is unreadable".into()))?;
        let key =
            self.secrets.load(ItemKind::StoreKey).await?.ok_or_else(|| {
                LinkError::SecretStorage("the store key is missing from the keyring".into())
            })?;
        let key = store_key(&key)?;
        let (homeserver, session) = stored.into_oauth_session();
        // From here the kept session is the daemon's state: `SignedIn` as soon as the keyring has
        // answered, not after the store is opened and the homeserver asked (a start-up's
        // `SessionState` waited ~40 ms for those). Whoever needs the client waits for it (this
        // restore holds it); a store that cannot be opened turns the state to `Error`, a session
        // the homeserver no longer accepts to `SignedOut`, as before.
        self.publish(SessionInfo {
            state: SessionState::SignedIn,
            user_id: session.user.meta.user_id.to_string(),
            device_id: session.user.meta.device_id.to_string(),
            homeserver: homeserver.to_string(),
            capabilities: SIGNED_IN_CAPABILITIES.iter().map(|c| (*c).to_owned()).collect(),
        });
        let client = self.build_client(homeserver, &key).await?;
        client
            .oauth()
            .restore_session(session, RoomLoadSettings::default())
            .await
            .map_err(|e| LinkError::Failed(format!("cannot restore the session from the store: {e}")))?;
        self.watch_session(&client);
        // Ask the homeserver whether the session still holds. An expired access token is
        // refreshed here (the watcher keeps the new tokens); a revoked session is dropped. Being
        // offline is no reason to forget a session.
        match tokio::time::timeout(Duration::from_secs(15), client.whoami()).await {
            Ok(Ok(_)) => {}
            Ok(Err(e))
                if matches!(
                    e.client_api_error_kind(),
                    Some(matrix_sdk::ruma::api::error::ErrorKind::UnknownToken(_))
                ) =>
            {
                warn!("the homeserver no longer accepts the kept session: signed out");
                self.secrets.delete(ItemKind::Session).await?;
                self.secrets.delete(ItemKind::StoreKey).await?;
                wipe_dir(&self.store_dir).await;
                return Ok(None);
            }
            Ok(Err(e)) if refresh_refused(&e) => {
                warn!("the OAuth server refused to refresh the kept session: signed out");
                self.secrets.delete(ItemKind::Session).await?;
                self.secrets.delete(ItemKind::StoreKey).await?;
                wipe_dir(&self.store_dir).await;
                return Ok(None);
            }
            Ok(Err(_)) | Err(_) => warn!("could not check the session with the homeserver; keeping it"),
        }
        Ok(Some(client))
    }

    /// A client for the homeserver at `homeserver` (resolved by `net::resolve`: matrix-sdk does no
    /// discovery of its own here).
    async fn build_client(&self, homeserver: Url, key: &[u8; 32]) -> Result<Client> {
        create_private_dir(&self.store_dir).await?;
        let builder = Client::builder()
            .sqlite_store_with_config_and_cache_path(store_config(&self.store_dir, key), None::<&Path>)
            .handle_refresh_tokens()
            .homeserver_url(homeserver);
        builder.build().await.map_err(|e| {
            use matrix_sdk::ClientBuildError as B;
            match e {
                B::AutoDiscovery(_) | B::Http(_) => {
                    LinkError::Network("cannot reach or discover the homeserver".into())
                }
                B::SqliteStore(_) => LinkError::Failed("cannot open the encrypted store".into()),
                other => LinkError::Failed(format!("cannot set up the Matrix client: {other}")),
            }
        })
    }

    /// Publishes the session at once; the homeserver's login protocols follow in `Capabilities`
    /// when the engine has asked (`offered`).
    async fn publish_signed_in(&self, client: &Client) {
        self.publish(SessionInfo {
            state: SessionState::SignedIn,
            user_id: client.user_id().map(|u| u.to_string()).unwrap_or_default(),
            device_id: client.device_id().map(|d| d.to_string()).unwrap_or_default(),
            homeserver: client.homeserver().to_string(),
            capabilities: SIGNED_IN_CAPABILITIES.iter().map(|c| (*c).to_owned()).collect(),
        });
    }

    /// Publishes `info` unless it is what is published already (a restore publishes the kept
    /// session first, then the same from the client: one change, one `PropertiesChanged`). The
    /// login protocols added to `Capabilities` (`offered`) are kept for the same session.
    fn publish(&self, info: SessionInfo) {
        self.info.send_if_modified(|i| {
            let same_session =
                i.state == info.state && i.user_id == info.user_id && i.device_id == info.device_id;
            if !same_session {
                *i = info;
                return true;
            }
            if i.homeserver == info.homeserver {
                return false;
            }
            i.homeserver = info.homeserver;
            true
        });
    }

    /// The login protocols the homeserver of the session on `device_id` offers: added to
    /// `Capabilities` unless the session changed meanwhile.
    pub fn offered(&self, device_id: &str, protocols: Vec<String>) {
        self.info.send_if_modified(|i| {
            let same = i.state == SessionState::SignedIn && i.device_id == device_id;
            if same {
                i.capabilities.extend(protocols);
            }
            same
        });
    }

    /// Persists refreshed tokens; drops the session when the server no longer knows it.
    fn watch_session(&self, client: &Client) {
        let mut changes = client.subscribe_to_session_changes();
        let weak = self.me.clone();
        let client = client.clone();
        let task = tokio::spawn(async move {
            loop {
                let change = match changes.recv().await {
                    Ok(c) => c,
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {
                        SessionChange::TokensRefreshed
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
                };
                let Some(account) = weak.upgrade() else { return };
                match change {
                    SessionChange::TokensRefreshed => match StoredSession::from_client(&client) {
                        Ok(stored) => {
                            if let Err(e) = account.save_session(&stored).await {
                                warn!(error = %e, "cannot persist refreshed tokens");
                            } else {
                                debug!("refreshed tokens persisted");
                            }
                        }
                        Err(e) => warn!(error = %e, "refreshed session unreadable"),
                    },
                    SessionChange::UnknownToken(_) => {
                        warn!("the homeserver no longer accepts our session: signing out locally");
                        account.wipe().await.ok();
                        return;
                    }
                }
            }
        });
        if let Some(old) = self.watcher.lock().expect("watcher lock").replace(task) {
            old.abort();
        }
    }

    async fn save_session(&self, stored: &StoredSession) -> Result<()> {
        let json = serde_json::to_vec(stored).map_err(|e| LinkError::Failed(e.to_string()))?;
        self.secrets.save(ItemKind::Session, &json).await
    }

    /// Revokes the daemon's device and tokens, then wipes the store and our keyring items.
    pub async fn sign_out(&self) -> Result<()> {
        let client = self.client.lock().await.clone().ok_or(LinkError::NotSignedIn)?;
        let revoked = match tokio::time::timeout(Duration::from_secs(20), revoke(&client)).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(reason)) => {
                warn!(reason, "token revocation failed");
                Err(LinkError::Network(
                    "signed out here, but the homeserver could not be told; remove the device from another client"
                        .into(),
                ))
            }
            Err(_) => Err(LinkError::Network(
                "signed out here, but the homeserver did not answer; remove the device from another client"
                    .into(),
            )),
        };
        self.wipe().await?;
        info!("signed out");
        revoked
    }

    /// Forgets the session locally: keyring items, store, client.
    async fn wipe(&self) -> Result<()> {
        if let Some(task) = self.watcher.lock().expect("watcher lock").take() {
            task.abort();
        }
        let mut slot = self.client.lock().await;
        self.secrets.delete(ItemKind::Session).await?;
        self.secrets.delete(ItemKind::StoreKey).await?;
        self.secrets.delete(ItemKind::Delegation).await?;
        *slot = None;
        self.exporter.lock().await.take();
        wipe_dir(&self.store_dir).await;
        self.set_state(SessionState::SignedOut);
        Ok(())
    }

    async fn fresh_store_key(&self) -> Result<[u8; 32]> {
        let mut key = [0u8; 32];
        rand::rng().fill_bytes(&mut key);
        self.secrets.save(ItemKind::StoreKey, &key).await?;
        Ok(key)
    }
}

#[async_trait]
impl LoginTarget for Account {
    async fn prepare(&self) -> Result<()> {
        if self.client.lock().await.is_some() {
            return Err(LinkError::AlreadySignedIn);
        }
        // The key goes to the keyring before any byte reaches the disk: no keyring, no store.
        let key = self.fresh_store_key().await?;
        *self.pending_key.lock().await = Some(key);
        Ok(())
    }

    async fn new_client(&self, homeserver: &Url) -> Result<Client> {
        if self.client.lock().await.is_some() {
            return Err(LinkError::AlreadySignedIn);
        }
        let key = match *self.pending_key.lock().await {
            Some(key) => key,
            None => self.fresh_store_key().await?,
        };
        wipe_dir(&self.store_dir).await;
        self.build_client(homeserver.clone(), &key).await
    }

    async fn adopt(&self, client: Client) -> Result<()> {
        self.pending_key.lock().await.take();
        let stored = StoredSession::from_client(&client)?;
        self.save_session(&stored).await?;
        self.exporter.lock().await.take();
        *self.client.lock().await = Some(client.clone());
        self.watch_session(&client);
        self.publish_signed_in(&client).await;
        info!("signed in; session kept in the Secret Service");
        Ok(())
    }

    async fn abandon(&self) {
        self.pending_key.lock().await.take();
        if self.client.lock().await.is_none() {
            wipe_dir(&self.store_dir).await;
            self.secrets.delete(ItemKind::StoreKey).await.ok();
        }
    }
}

#[async_trait]
impl AccountPort for Account {
    async fn signed_in(&self) -> Result<Client> {
        let me = self.me.upgrade().ok_or(LinkError::NotSignedIn)?;
        me.client().await
    }
}

#[async_trait]
impl crate::protocol::SecretsSource for Account {
    /// The private cross-signing keys and the backup key, for a grant. matrix-sdk 0.18 keeps the
    /// signed-in client's `OlmMachine` to itself, so the store is opened a second time, once: the
    /// machine is kept and every later grant reads from it (the cross-signing keys are held in
    /// memory, the backup key is read from the store on each export). The signed-in client's own
    /// view is asked first: if it no longer holds every private cross-signing key (an identity
    /// reset seen since), nothing is shared.
    async fn secrets_bundle(&self) -> Result<matrix_sdk_base::crypto::types::SecretsBundle> {
        let missing = || {
            LinkError::MissingSecrets(
                "this device does not hold the private cross-signing keys to share".into(),
            )
        };
        let client = self.client.lock().await.clone().ok_or(LinkError::NotSignedIn)?;
        if !client.encryption().cross_signing_status().await.is_some_and(|s| s.is_complete()) {
            return Err(missing());
        }
        let mut slot = self.exporter.lock().await;
        if slot.is_none() {
            let key = self.secrets.load(ItemKind::StoreKey).await?.ok_or_else(|| {
                LinkError::SecretStorage("the store key is missing from the keyring".into())
            })?;
            *slot = Some(open_exporter(&self.store_dir, &store_key(&key)?).await?.ok_or_else(missing)?);
        }
        let machine = slot.as_ref().expect("just filled");
        machine.store().export_secrets_bundle().await.map_err(|_| missing())
    }
}

/// How the encrypted store is opened. The daemon does not sync: its store is small and little used,
/// so matrix-sdk's low-memory settings (a connection per core, not four; a 500 kB page cache per
/// connection, not 2 MiB; a 2 MB journal limit) cost it nothing but resident memory saved.
fn store_config(store_dir: &Path, key: &[u8; 32]) -> SqliteStoreConfig {
    SqliteStoreConfig::with_low_memory_config(store_dir).key(Some(key))
}

/// An `OlmMachine` over the store at `store_dir`, opened with its `key`, for exporting the secrets
/// bundle: matrix-sdk 0.18 only exports from a store opened with a passphrase, and ours is opened
/// with a raw key. `None` when the store holds no account.
async fn open_exporter(store_dir: &Path, key: &[u8; 32]) -> Result<Option<OlmMachine>> {
    use matrix_sdk_base::crypto::store::CryptoStore as _;
    let store = matrix_sdk::SqliteCryptoStore::open_with_config(&store_config(store_dir, key))
        .await
        .map_err(|_| LinkError::Failed("cannot open the encrypted store".into()))?;
    let Some(account) =
        store.load_account().await.map_err(|_| LinkError::Failed("cannot read the store".into()))?
    else {
        return Ok(None);
    };
    let machine = OlmMachine::with_store(&account.user_id, &account.device_id, store, None)
        .await
        .map_err(|_| LinkError::Failed("cannot load the crypto store".into()))?;
    debug!("crypto store opened for sharing secrets");
    Ok(Some(machine))
}

/// The secrets bundle (private cross-signing keys, backup key) of the store at `store_dir`,
/// opened with its `key`. `None` when the store holds no account.
pub async fn export_secrets_bundle(
    store_dir: &Path,
    key: &[u8; 32],
) -> Result<Option<matrix_sdk_base::crypto::types::SecretsBundle>> {
    let Some(machine) = open_exporter(store_dir, key).await? else { return Ok(None) };
    let bundle = machine.store().export_secrets_bundle().await.map_err(|_| {
        LinkError::MissingSecrets("this device does not hold the private cross-signing keys to share".into())
    })?;
    Ok(Some(bundle))
}

/// RFC 7009 revocation of the refresh token (which ends the grant) and the access token, through
/// the protocol's one revocation (`device_grant::revoke_session`): matrix-sdk's `OAuth::logout`
/// refuses http endpoints, which local and test servers use. The SDK's own HTTP client carries it.
/// Errors are fixed strings: a server response may quote the token.
async fn revoke(client: &Client) -> std::result::Result<(), &'static str> {
    let oauth = client.oauth();
    let client_id = oauth.client_id().ok_or("no client id")?.as_str().to_owned();
    let metadata = oauth.server_metadata().await.map_err(|_| "server metadata unavailable")?;
    let tokens = client.session_tokens().ok_or("no tokens")?;
    device_grant::revoke_session(
        client.http_client(),
        Some(&metadata.revocation_endpoint),
        &client_id,
        &tokens.access_token,
        tokens.refresh_token.as_deref(),
    )
    .await
    .map_err(|_| "the revocation endpoint refused the request or could not be reached")
}

/// The OAuth server answered the refresh with an error (`invalid_grant`, …): the grant is gone.
/// A network failure is not a refusal.
fn refresh_refused(e: &matrix_sdk::HttpError) -> bool {
    use matrix_sdk::{
        HttpError, RefreshTokenError,
        authentication::oauth::{OAuthError, qrcode::RequestTokenError},
    };
    match e {
        HttpError::RefreshToken(RefreshTokenError::RefreshTokenRequired) => true,
        HttpError::RefreshToken(RefreshTokenError::OAuth(oauth)) => {
            matches!(&**oauth, OAuthError::RefreshToken(RequestTokenError::ServerResponse(_)))
        }
        _ => false,
    }
}

fn store_key(bytes: &[u8]) -> Result<[u8; 32]> {
    bytes.try_into().map_err(|_| LinkError::SecretStorage("the kept store key is malformed".into()))
}

/// What a signed-in daemon can do whatever its homeserver offers; the login protocols it offers
/// follow (`Account::offered`).
const SIGNED_IN_CAPABILITIES: [&str; 2] = [capabilities::GRANT, capabilities::DELEGATE];

async fn create_private_dir(dir: &Path) -> Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    let dir = dir.to_owned();
    tokio::task::spawn_blocking(move || std::fs::DirBuilder::new().recursive(true).mode(0o700).create(&dir))
        .await
        .map_err(|e| LinkError::Failed(e.to_string()))?
        .map_err(|e| LinkError::Failed(format!("cannot create the store directory: {e}")))
}

async fn wipe_dir(dir: &Path) {
    match tokio::fs::remove_dir_all(dir).await {
        Ok(()) => debug!("store directory removed"),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => warn!(error = %e, "cannot remove the store directory"),
    }
}
