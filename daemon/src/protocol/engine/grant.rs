//! Grant: the daemon is the signed-in existing device and lets a new device in.

use super::{handshake::*, *};
use crate::protocol::{
    GrantRequest,
    wire::messages::{BackupSecrets, CrossSigningSecrets},
};

/// How often the new device's existence is checked after `m.login.success`.
const DEVICE_POLL: Duration = Duration::from_millis(250);

impl OwnEngine {
    /// Checks the scanned code, the secrets to share and the account's OAuth server, makes the
    /// QR code when the daemon shows it, then runs the flow on the runner.
    pub(super) async fn start_grant(
        &self,
        account: Arc<dyn AccountPort>,
        request: GrantRequest,
    ) -> Result<FlowHandle> {
        let client = account.signed_in().await?;
        let scanned =
            request.qr_code.as_ref().map(|b| scanned_qr(&b.0, Intent::Login, self.reach)).transpose()?;
        // Fail fast: without the private cross-signing keys there is nothing to share.
        let bundle = account.secrets_bundle().await?;
        let homeserver = client.homeserver();
        let token = client.access_token();
        // The consent page the new device names must be on the account's OAuth server.
        let issuer = self
            .issuers
            .get_or(homeserver.as_str(), async || {
                let metadata = device_grant::server_metadata(self.http(), &homeserver, self.reach).await;
                metadata.map(|m| m.issuer).map_err(LinkError::from)
            })
            .await?;
        let (start, opening) = match scanned {
            Some(qr) => {
                let generation = qr_generation(&qr);
                (GrantStart::Scanned(qr), Opening { generation, created: None })
            }
            None => {
                let key = format!("{:?} {homeserver}", request.generation);
                let generation = self
                    .generations
                    .get_or(&key, async || {
                        let offers_2024 = async || self.offers_2024(&homeserver).await;
                        choose_generation(
                            self.http(),
                            request.generation,
                            &homeserver,
                            token.as_deref(),
                            offers_2024,
                        )
                        .await
                    })
                    .await?;
                let maker = QrMaker {
                    http: self.http().clone(),
                    generation,
                    homeserver: homeserver.clone(),
                    access_token: token.clone(),
                    reach: self.reach,
                    intent: Intent::Reciprocate,
                };
                let (rv, generator, qr) = maker.make().await?;
                (GrantStart::Generated(generator, maker), Opening { generation, created: Some((rv, qr)) })
            }
        };
        let (handle, port) = FlowHandle::pair(wire_protocol(opening.generation));
        let span = info_span!("grant", scanned = opening.created.is_none(), generation = ?opening.generation);
        let (left, first) = opening.split(self, account.clone(), Kind::Grant).await?;
        let flow = GrantFlow {
            http: self.http().clone(),
            client,
            bundle,
            device_creation_timeout: request.device_creation_timeout,
            issuer,
            reach: self.reach,
        };
        tokio::spawn(
            runner::run(port, request.timeout, first, left, async move |ui, left| {
                flow.run(start, ui, left).await
            })
            .instrument(span),
        );
        Ok(handle)
    }
}

struct GrantFlow {
    http: reqwest::Client,
    client: Client,
    bundle: SecretsBundle,
    device_creation_timeout: Duration,
    /// The account's OAuth issuer: the consent page must be on its origin.
    issuer: Url,
    reach: Reach,
}

impl GrantFlow {
    async fn run(&self, start: GrantStart, ui: &mut Ui, left: &mut Leftovers) -> Flow<Success> {
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
        let request = policy::sign_in_request(&msg, &self.issuer, self.reach)?;
        let device_id = request.device_id;
        if self.device_exists(&device_id).await? {
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
                return Err(policy::unexpected(&msg, "nothing before consent").into());
            }
        }
        info!("consent given");
        link(left).send(&LoginMessage::ProtocolAccepted {}).await?;
        ui.emit(FlowEvent::WaitingForToken { user_code: None });
        let (msg, _) = link(left).recv(Pace::Human).await?;
        policy::expect_signal(&msg, "m.login.success")?;
        ui.emit(FlowEvent::SyncingSecrets);
        self.wait_for_device(&device_id).await?;
        link(left).send(&secrets_message(&self.bundle)).await?;
        info!("secrets sent");
        let user_id = self.client.user_id().map(|u| u.to_string()).unwrap_or_default();
        Ok(Success { user_id, device_id, homeserver_found: None, trust: None })
    }

    /// Whether the new device exists on the homeserver: 200 = yes, 404 = no, else the flow fails.
    async fn device_exists(&self, device_id: &str) -> Flow<bool> {
        devices::known(&self.client, device_id).await.ok_or_else(|| {
            LinkError::Network("asking the homeserver about the new device failed".into()).into()
        })
    }

    async fn wait_for_device(&self, device: &str) -> Flow<()> {
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

enum GrantStart {
    Scanned(LoginQr),
    Generated(Generator, QrMaker),
}
