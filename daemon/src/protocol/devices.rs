//! The account's devices on the homeserver, as every flow kind asks about them (docs/protocol.md
//! §11): whether one exists, and its display name.

use std::time::Duration;

use matrix_sdk::{
    Client,
    ruma::{OwnedDeviceId, api::client::device::get_device},
};
use tracing::warn;

/// How long a best-effort rename may take.
const RENAME_LIMIT: Duration = Duration::from_secs(10);

/// `GET /devices/{id}` (percent-encoded by ruma) with the account's session: `Some(true)` on 200,
/// `Some(false)` on 404, `None` when the homeserver did not say.
pub async fn known(client: &Client, device_id: &str) -> Option<bool> {
    match client.send(get_device::v3::Request::new(OwnedDeviceId::from(device_id))).await {
        Ok(_) => Some(true),
        Err(e) if e.as_client_api_error().is_some_and(|c| c.status_code.as_u16() == 404) => Some(false),
        Err(_) => None,
    }
}

/// Sets the display name of the account's device `device_id`. Best effort: a device works without
/// one.
pub async fn rename(client: &Client, device_id: &str, name: &str) {
    let device = OwnedDeviceId::from(device_id);
    match tokio::time::timeout(RENAME_LIMIT, client.rename_device(&device, name)).await {
        Ok(Ok(_)) => {}
        Ok(Err(_)) | Err(_) => warn!("could not set the device's display name"),
    }
}
