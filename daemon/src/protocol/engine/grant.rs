//! Grant: the daemon is the signed-in existing device and lets a new device in.

use matrix_sdk::ruma::{OwnedDeviceId, api::client::device::get_device};

use super::*;
use crate::protocol::wire::{
    messages::{BackupSecrets, CrossSigningSecrets},
    policy,
};

/// How often the new device's existence is checked after `m.login.success`.
const DEVICE_POLL: Duration = Duration::from_millis(250);

pub(super) struct GrantFlow {
    pub(super) http: reqwest::Client,
    pub(super) client: Client,
    pub(super) bundle: SecretsBundle,
    pub(super) device_creation_timeout: Duration,
    /// The account's OAuth issuer: the consent page must be on its origin.
    pub(super) issuer: Url,
    pub(super) allow_http: bool,
}

impl GrantFlow {
    pub(super) async fn run(&self, start: GrantStart, ui: &mut Ui, left: &mut Leftovers) -> Flow<String> {
        match start {
            GrantStart::Scanned(qr) => {
                let rv = join(&self.http, &qr).await?;
                scanner_handshake(rv, qr.key(), left).await?;
                show_check_code(ui, &link(left).channel);
                let homeserver = self.client.homeserver();
                let protocols = match left.generation {
                    Generation::V2024 => LoginMessage::Protocols {
                        protocols: vec![DEVICE_AUTHORIZATION_GRANT.into()],
                        homeserver: Some(homeserver.to_string()),
                        base_url: None,
                    },
                    Generation::Latest => LoginMessage::Protocols {
                        protocols: vec![DEVICE_AUTHORIZATION_GRANT.into()],
                        homeserver: None,
                        base_url: Some(homeserver.to_string()),
                    },
                };
                link(left).send(&protocols).await?;
            }
            GrantStart::Generated(generator, maker) => {
                generator_handshake(generator, &maker, ui, left).await?;
            }
        }
        // The new device's user types the code (when it generated) and it registers first.
        let pace = if ui_scanned(left) { Pace::Human } else { Pace::Now };
        let (msg, _) = link(left).recv(pace).await?;
        let request = policy::sign_in_request(&msg, &self.issuer, self.allow_http).map_err(refused)?;
        let device_id = request.device_id;
        let device = OwnedDeviceId::from(device_id.as_str());
        if self.device_exists(&device).await? {
            return Err(LinkError::DeviceIdInUse.into());
        }
        ui.emit(FlowEvent::WaitingForApproval {
            verification_uri: Secret(request.consent_page.into()),
            peer_device_id: Some(device_id.clone()),
            user_code: None,
        });
        // The D-Bus layer opens the verification URI on `Approve`, before this returns. Meanwhile
        // we keep an eye on the session: the new device may give up while our user decides.
        tokio::select! {
            approved = ui.approval() => approved?,
            early = link(left).recv(Pace::Watch) => {
                let (msg, _) = early?;
                return Err(refused(policy::unexpected(&msg, "nothing before consent")));
            }
        }
        info!("consent given");
        link(left).send(&LoginMessage::ProtocolAccepted {}).await?;
        ui.emit(FlowEvent::WaitingForToken { user_code: None });
        let (msg, _) = link(left).recv(Pace::Human).await?;
        policy::expect_signal(&msg, "m.login.success").map_err(refused)?;
        ui.emit(FlowEvent::SyncingSecrets);
        self.wait_for_device(&device).await?;
        link(left).send(&secrets_message(&self.bundle)).await?;
        info!("secrets sent");
        Ok(device_id)
    }

    /// `GET /devices/{id}` (percent-encoded by ruma) with our session: 200 = exists, 404 = free.
    async fn device_exists(&self, device: &OwnedDeviceId) -> Flow<bool> {
        match self.client.send(get_device::v3::Request::new(device.clone())).await {
            Ok(_) => Ok(true),
            Err(e) if e.as_client_api_error().is_some_and(|c| c.status_code.as_u16() == 404) => Ok(false),
            Err(_) => {
                Err(LinkError::Network("asking the homeserver about the new device failed".into()).into())
            }
        }
    }

    async fn wait_for_device(&self, device: &OwnedDeviceId) -> Flow<()> {
        let until = Instant::now() + self.device_creation_timeout;
        loop {
            if self.device_exists(device).await? {
                return Ok(());
            }
            if Instant::now() + DEVICE_POLL > until {
                return Err(LinkError::DeviceNotFound.into());
            }
            tokio::time::sleep(DEVICE_POLL).await;
        }
    }
}

/// Whether we scanned (S): the other device's user still has a code to type.
fn ui_scanned(left: &Leftovers) -> bool {
    left.link.as_ref().is_some_and(|l| l.scanned)
}

pub(super) fn secrets_message(bundle: &SecretsBundle) -> LoginMessage {
    // Through JSON: the SDK's types keep their fields private to their serde form.
    let v = serde_json::to_value(bundle).unwrap_or(Value::Null);
    let s = |p: &str| v.pointer(p).and_then(Value::as_str).unwrap_or_default().to_owned();
    LoginMessage::Secrets {
        cross_signing: CrossSigningSecrets {
            master_key: s("/cross_signing/master_key"),
            self_signing_key: s("/cross_signing/self_signing_key"),
            user_signing_key: s("/cross_signing/user_signing_key"),
        },
        backup: v.get("backup").filter(|b| !b.is_null()).map(|_| BackupSecrets {
            algorithm: s("/backup/algorithm"),
            key: s("/backup/key"),
            backup_version: s("/backup/backup_version"),
        }),
    }
}

pub(super) enum GrantStart {
    Scanned(LoginQr),
    Generated(Generator, QrMaker),
}
