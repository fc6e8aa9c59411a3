//! Feature `matrix-sdk`: a delegated session as a ready `matrix_sdk::Client`.

use std::{path::Path, time::Duration};

use matrix_sdk::{
    Client, SessionMeta, SessionTokens,
    authentication::oauth::{ClientId, OAuthSession, UserSession},
    config::SyncSettings,
    ruma::{OwnedDeviceId, OwnedUserId, api::client::keys::get_keys},
    store::RoomLoadSettings,
};
use matrix_sdk_base::crypto::types::SecretsBundle;
use serde::Deserialize;

use crate::{ClientError, DelegatedSession, Result, delegation::zeroize_value};

fn matrix(e: impl std::error::Error + Send + Sync + 'static) -> ClientError {
    ClientError::Matrix(Box::new(e))
}

impl DelegatedSession {
    /// A `matrix_sdk::Client` for this device: a SQLite store at `store` (a fresh directory per
    /// device; encrypted with `passphrase` when given), the OAuth session restored, refresh tokens
    /// handled, and the device's trust established as the daemon expects:
    ///
    /// - with `secrets` (`share_secrets`): imports the cross-signing and backup keys
    ///   (`import_secrets_bundle`), which signs the device, uploads its keys and enables the key
    ///   backup. No sync has run yet.
    /// - without: runs the first sync (`sync_once`, whose token the store keeps), which uploads the
    ///   device keys, and checks the homeserver has them; the daemon then signs the device
    ///   (`Response` `trust` = `signed-by-daemon`), which the client sees on a later sync as its
    ///   `verification_state` turning `Verified`.
    ///
    /// matrix-sdk does not keep the tokens: to start again later, save `client.oauth().full_session()`
    /// (and again on each `client.subscribe_to_session_changes()`) somewhere private.
    pub async fn into_client(mut self, store: &Path, passphrase: Option<&str>) -> Result<Client> {
        let user_id = OwnedUserId::try_from(self.user_id.as_str()).map_err(|_| {
            ClientError::Other(format!("the session's user ID {:?} is invalid", self.user_id))
        })?;
        let device_id: OwnedDeviceId = self.device_id.as_str().into();
        let client = Client::builder()
            .homeserver_url(&self.homeserver)
            .sqlite_store(store, passphrase)
            .handle_refresh_tokens()
            .build()
            .await
            .map_err(matrix)?;
        let session = OAuthSession {
            client_id: ClientId::new(self.client_id.clone()),
            user: UserSession {
                meta: SessionMeta { user_id: user_id.clone(), device_id: device_id.clone() },
                tokens: SessionTokens {
                    access_token: std::mem::take(&mut self.access_token),
                    refresh_token: self.refresh_token.take(),
                },
            },
        };
        client.oauth().restore_session(session, RoomLoadSettings::default()).await.map_err(matrix)?;

        if let Some(mut secrets) = self.secrets.take() {
            let bundle = SecretsBundle::deserialize(&secrets);
            zeroize_value(&mut secrets);
            let bundle = bundle.map_err(|_| {
                ClientError::Other("the session's secrets are not an m.login.secrets bundle".into())
            })?;
            // Imports the keys, signs our device with the self-signing key, uploads the device keys
            // with that signature, and connects to the key backup. Must come before the first sync.
            client.encryption().import_secrets_bundle(&bundle).await.map_err(matrix)?;
        } else {
            // matrix-sdk uploads the device keys as part of a sync (its outgoing requests go out
            // before the /sync request, so the keys reach the server at once); it only logs a failed
            // upload, so ask the homeserver, and retry once with the next (incremental) sync.
            let settings = SyncSettings::default().timeout(Duration::ZERO);
            client.sync_once(settings.clone()).await.map_err(matrix)?;
            if !has_device_keys(&client, &user_id, &device_id).await? {
                client.sync_once(settings).await.map_err(matrix)?;
                if !has_device_keys(&client, &user_id, &device_id).await? {
                    return Err(ClientError::Other(
                        "the device keys could not be uploaded: the daemon cannot sign the device".into(),
                    ));
                }
            }
        }
        Ok(client)
    }
}

/// Whether the homeserver has keys for `device_id` (`/keys/query`).
async fn has_device_keys(client: &Client, user_id: &OwnedUserId, device_id: &OwnedDeviceId) -> Result<bool> {
    let mut request = get_keys::v3::Request::new();
    request.device_keys.insert(user_id.clone(), vec![device_id.clone()]);
    let response = client.send(request).await.map_err(matrix)?;
    Ok(response.device_keys.get(user_id).is_some_and(|devices| devices.contains_key(device_id)))
}
