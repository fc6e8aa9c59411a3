//! Login: the daemon is the new device and gets signed in.

use matrix_sdk::{
    SessionMeta, SessionTokens,
    authentication::oauth::{ClientId, OAuthSession, UserSession},
    encryption::BundleImportError,
    ruma::OwnedUserId,
    store::RoomLoadSettings,
};

use super::{handshake::*, *};
use crate::protocol::{LoginRequest, LoginTarget, wire::messages::HomeserverRef};

impl OwnEngine {
    /// Checks the scanned code or the homeserver, makes sure the session can be kept, makes the QR
    /// code when the daemon shows it, then runs the flow on the runner. Whatever fails, the
    /// half-made store goes.
    pub(super) async fn start_login(
        &self,
        account: Arc<dyn AccountPort>,
        request: LoginRequest,
    ) -> Result<FlowHandle> {
        let scanned = request
            .qr_code
            .as_ref()
            .map(|b| scanned_qr(&b.0, Intent::Reciprocate, self.reach))
            .transpose()?;
        if let Some(HomeserverRef::Url(homeserver)) = &request.homeserver {
            net::check_transport(homeserver, self.reach)
                .map_err(|e| LinkError::InvalidArgs(format!("the homeserver URL is refused: {e}")))?;
        }
        let journal: Arc<dyn Journal> = account.clone();
        let target: Arc<dyn LoginTarget> = account;
        target.prepare().await?;
        match self.spawn_login(target.clone(), journal, request, scanned).await {
            Ok(handle) => Ok(handle),
            Err(e) => {
                target.abandon().await;
                Err(e)
            }
        }
    }

    async fn spawn_login(
        &self,
        target: Arc<dyn LoginTarget>,
        journal: Arc<dyn Journal>,
        request: LoginRequest,
        scanned: Option<LoginQr>,
    ) -> Result<FlowHandle> {
        let (start, opening) = match scanned {
            Some(qr) => {
                let server = match &qr {
                    LoginQr::V2024 { server: Some(server), .. } => server.clone(),
                    LoginQr::V2024 { server: None, .. } => {
                        return Err(LinkError::InvalidQrCode("the QR code names no homeserver".into()));
                    }
                    LoginQr::Msc4388 { base_url, .. } => base_url.clone(),
                };
                let server = policy::homeserver(&server, self.reach)
                    .map_err(|_| LinkError::InvalidQrCode("the QR code names no usable homeserver".into()))?;
                let generation = qr_generation(&qr);
                (LoginStart::Scanned { qr, server }, Opening { generation, created: None })
            }
            None => {
                let named = request.homeserver.clone().ok_or_else(|| {
                    LinkError::InvalidArgs(
                        "no homeserver: pass the `homeserver` option or set `homeserver` in config.toml"
                            .into(),
                    )
                })?;
                let homeserver = net::resolve::given(self.http(), &named, self.reach).await?;
                let offers_2024 = async || self.offers_2024(&homeserver).await;
                let generation =
                    choose_generation(self.http(), request.generation, &homeserver, None, offers_2024)
                        .await?;
                let maker = QrMaker {
                    http: self.http().clone(),
                    generation,
                    homeserver: homeserver.clone(),
                    access_token: None,
                    reach: self.reach,
                    intent: Intent::Login,
                };
                let (rv, generator, qr) = maker.make().await?;
                let start = LoginStart::Generated { generator, maker, rendezvous_server: homeserver };
                (start, Opening { generation, created: Some((rv, qr)) })
            }
        };
        let (handle, port) = FlowHandle::pair(wire_protocol(opening.generation));
        let span = info_span!("login", scanned = opening.created.is_none(), generation = ?opening.generation);
        let (left, first) = opening.split(self, journal, Kind::Login).await?;
        let flow = LoginFlow {
            http: self.http().clone(),
            target: target.clone(),
            oauth: self.oauth.clone(),
            client_ids: self.client_ids.clone(),
            device_display_name: request.device_display_name,
            reach: self.reach,
        };
        let left = (left, Abandon(target));
        tokio::spawn(
            runner::run(port, request.timeout, first, left, async move |ui, left| {
                flow.run(start, ui, &mut left.0).await
            })
            .instrument(span),
        );
        Ok(handle)
    }
}

/// A login that does not end signed in forgets the store it began.
struct Abandon(Arc<dyn LoginTarget>);

#[async_trait]
impl Cleanup for Abandon {
    async fn stopped(&mut self, _: Tell) {
        self.0.abandon().await;
    }
}

struct LoginFlow {
    http: reqwest::Client,
    target: Arc<dyn LoginTarget>,
    oauth: OAuthClient,
    client_ids: Arc<Mutex<HashMap<String, String>>>,
    device_display_name: String,
    reach: Reach,
}

/// The OAuth side of a login in progress.
struct Grant {
    client: Client,
    metadata: device_grant::Metadata,
    client_id: String,
    device_id: String,
    authorization: device_grant::DeviceAuthorization,
}

impl LoginFlow {
    async fn run(&self, start: LoginStart, ui: &mut Ui, left: &mut Leftovers) -> Flow<Success> {
        // The secure channel first, then the homeserver: whatever fails after a scan reaches the
        // other device, which would otherwise wait for the rendezvous to expire.
        let (server, rendezvous_server) = match start {
            LoginStart::Scanned { qr, server } => {
                let rendezvous_server = rendezvous_server_of(&qr);
                let rv = join(&self.http, &qr).await?;
                scanner_handshake(rv, qr.key(), left).await?;
                show_check_code(ui, &link(left).channel);
                (server, rendezvous_server)
            }
            LoginStart::Generated { generator, maker, rendezvous_server } => {
                generator_handshake(generator, &maker, ui, left).await?;
                let (msg, _) = link(left).recv(Pace::Now).await?;
                let server = policy::offered_homeserver(&msg, self.reach)?;
                (server, Some(rendezvous_server))
            }
        };
        let (prepared, found) = self.prepare(&server, rendezvous_server.as_ref()).await?;
        let grant = self.authorize(prepared).await?;
        // In the journal before the other device can approve it: a daemon killed from here on
        // takes a last look at the code on its next start and revokes what it yields.
        left.noted
            .note("code", |o| {
                o.homeserver = Some(grant.client.homeserver());
                o.client_id = Some(grant.client_id.clone());
                o.device_code = Some(grant.authorization.device_code.clone());
            })
            .await?;
        link(left).send(&protocol_message(&grant)).await?;
        // Where we scanned, the other device's user still types the check code first; where we
        // showed the QR code, our own user typed it and the existing device answers as a machine
        // (matrix-sdk's accepts before its user consents): read it as one, so that the first
        // token request goes out as soon as the answer is there.
        let pace = if link(left).scanned { Pace::Human } else { Pace::Machine };
        let (msg, _) = link(left).recv(pace).await?;
        policy::expect_signal(&msg, "m.login.protocol_accepted")?;
        ui.emit(FlowEvent::WaitingForToken {
            user_code: Some(Secret(grant.authorization.user_code.clone())),
        });
        let tokens =
            device_grant::poll_tokens(&self.http, &grant.metadata, &grant.client_id, &grant.authorization)
                .await
                .map_err(|e| match e {
                    GrantError::AccessDenied => Stop { error: Some(e.into()), tell: Tell::Declined },
                    GrantError::Expired => Stop::local(e.into(), FailureReason::AuthorizationExpired),
                    other => Stop::from(LinkError::from(other)),
                })?;
        // Until the session is kept (`adopt`), a stop or a restart revokes these.
        left.noted.note("tokens", |o| o.tokens = Some(tokens.clone())).await?;
        let homeserver = grant.client.homeserver();
        let user_id = whoami(&self.http, &homeserver, &tokens.access_token, &grant.device_id).await?;
        check_server_name(&user_id, &server)?;
        let session = OAuthSession {
            client_id: ClientId::new(grant.client_id.clone()),
            user: UserSession {
                meta: SessionMeta { user_id: user_id.clone(), device_id: grant.device_id.as_str().into() },
                tokens: SessionTokens {
                    access_token: tokens.access_token.clone(),
                    refresh_token: tokens.refresh_token.clone(),
                },
            },
        };
        grant
            .client
            .oauth()
            .restore_session(session, RoomLoadSettings::default())
            .await
            .map_err(|_| LinkError::Failed("cannot set up the new session".into()))?;
        link(left).send(&LoginMessage::Success {}).await?;
        ui.emit(FlowEvent::SyncingSecrets);
        let (msg, plain) = link(left).recv(Pace::Machine).await?;
        policy::expect_secrets(&msg)?;
        // The last message: nobody reads after us.
        if let Some(link) = left.link.take() {
            link.rv.delete().await;
        }
        let bundle: SecretsBundle = serde_json::from_slice(&plain).map_err(|_| {
            Stop::silent(LinkError::ProtocolError("the secrets from the other device are malformed".into()))
        })?;
        // Imports the keys, signs our device with the self-signing key and uploads keys and
        // signature together; then connects to the key backup. Any failure is fatal.
        // A homeserver that did not take the keys is a network failure like any other request's;
        // anything else is ours (the store).
        grant.client.encryption().import_secrets_bundle(&bundle).await.map_err(|e| {
            Stop::silent(match e {
                BundleImportError::DeviceKeys(matrix_sdk::Error::Http(_)) => {
                    LinkError::Network("the homeserver did not take the new device's signed keys".into())
                }
                _ => LinkError::Failed(
                    "importing the secrets or uploading the signed device keys failed".into(),
                ),
            })
        })?;
        info!("secrets imported, device cross-signed");
        devices::rename(&grant.client, &grant.device_id, &self.device_display_name).await;
        self.target.adopt(grant.client).await.map_err(Stop::silent)?;
        Ok(Success {
            user_id: user_id.to_string(),
            device_id: grant.device_id,
            homeserver_found: Some(found.as_str()),
            trust: None,
        })
    }

    /// The new session's client (keyring and store first: nothing is written without them), the
    /// OAuth metadata and our client registration; and how the homeserver was found.
    async fn prepare(
        &self,
        server: &HomeserverRef,
        rendezvous_server: Option<&Url>,
    ) -> Flow<(Prepared, net::resolve::Found)> {
        let (homeserver, found) =
            net::resolve::homeserver(&self.http, server, rendezvous_server, self.reach).await?;
        let client = self.target.new_client(&homeserver).await?;
        let metadata =
            device_grant::metadata(&self.http, &homeserver, self.reach).await.map_err(LinkError::from)?;
        let issuer = metadata.issuer.to_string();
        let cached = self.client_ids.lock().await.get(&issuer).cloned();
        let client_id = match cached {
            Some(id) => id,
            None => {
                let id = device_grant::register(
                    &self.http,
                    &metadata,
                    &self.oauth.client_name,
                    &self.oauth.client_uri,
                )
                .await
                .map_err(LinkError::from)?;
                self.client_ids.lock().await.insert(issuer, id.clone());
                id
            }
        };
        Ok(((client, metadata, client_id), found))
    }

    async fn authorize(&self, (client, metadata, client_id): Prepared) -> Flow<Grant> {
        let device_id = device_grant::new_device_id();
        let authorization = device_grant::authorize(&self.http, &metadata, &client_id, &device_id)
            .await
            .map_err(LinkError::from)?;
        Ok(Grant { client, metadata, client_id, device_id, authorization })
    }
}

fn protocol_message(grant: &Grant) -> LoginMessage {
    LoginMessage::Protocol {
        protocol: DEVICE_AUTHORIZATION_GRANT.into(),
        device_authorization_grant: Some(DeviceGrant {
            verification_uri: grant.authorization.verification_uri.clone(),
            verification_uri_complete: grant.authorization.verification_uri_complete.clone(),
        }),
        device_id: grant.device_id.clone(),
    }
}

/// `GET /account/whoami` with the fresh token: who we are. A device other than the one we asked
/// for is logged (and ours kept): the scope names it.
async fn whoami(http: &reqwest::Client, homeserver: &Url, token: &str, device_id: &str) -> Flow<OwnedUserId> {
    let (user, device) = device_grant::whoami(http, homeserver, token).await?;
    if device.is_some_and(|d| d != device_id) {
        warn!("the homeserver reports another device ID than the one requested");
    }
    Ok(user)
}

enum LoginStart {
    Scanned {
        qr: LoginQr,
        server: HomeserverRef,
    },
    /// We show the QR code, on a rendezvous session at `rendezvous_server`.
    Generated {
        generator: Generator,
        maker: QrMaker,
        rendezvous_server: Url,
    },
}

/// The new session's client, the OAuth server's metadata and our client ID there.
type Prepared = (Client, device_grant::Metadata, String);

/// The homeserver a scanned code's rendezvous session lives on: the origin of a 2024 rendezvous
/// URL, the base URL of a latest one. A last resort for finding the homeserver.
fn rendezvous_server_of(qr: &LoginQr) -> Option<Url> {
    let url = match qr {
        LoginQr::V2024 { rendezvous_url, .. } => Url::parse(rendezvous_url).ok()?.join("/").ok()?,
        LoginQr::Msc4388 { base_url, .. } => Url::parse(base_url).ok()?,
    };
    Some(url)
}

/// The account the token belongs to must be on the server the other device named (when it named
/// one): a homeserver found by a fallback must not sign us in to someone else's server.
fn check_server_name(user_id: &OwnedUserId, named: &HomeserverRef) -> Flow<()> {
    match named {
        HomeserverRef::ServerName(name) if !user_id.server_name().as_str().eq_ignore_ascii_case(name) => {
            Err(LinkError::ProtocolError(format!(
                "the homeserver found for `{name}` signed us in on `{}`",
                user_id.server_name()
            ))
            .into())
        }
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_account_must_be_on_the_named_server() {
        let user = OwnedUserId::try_from("@alice:example.org").unwrap();
        assert!(check_server_name(&user, &HomeserverRef::ServerName("example.org".into())).is_ok());
        assert!(check_server_name(&user, &HomeserverRef::ServerName("EXAMPLE.org".into())).is_ok());
        let other = check_server_name(&user, &HomeserverRef::ServerName("localhost".into())).unwrap_err();
        assert!(matches!(other.error, Some(LinkError::ProtocolError(_))));
        assert_ne!(other.tell, Tell::Nothing, "the other device is told");
        // A homeserver named by URL carries no server name to compare.
        let url = HomeserverRef::Url(Url::parse("https://matrix.example.net/").unwrap());
        assert!(check_server_name(&user, &url).is_ok());
    }

    #[test]
    fn the_rendezvous_server_of_a_scanned_code() {
        let v2024 = LoginQr::V2024 {
            intent: Intent::Reciprocate,
            key: [7; 32],
            rendezvous_url: "https://hs.example.org:8448/_synapse/client/rendezvous/01J".into(),
            server: Some("example.org".into()),
        };
        assert_eq!(rendezvous_server_of(&v2024).unwrap().as_str(), "https://hs.example.org:8448/");
        let latest = LoginQr::Msc4388 {
            prefix: crate::protocol::wire::qr::Prefix::Stable,
            intent: Intent::Reciprocate,
            key: [7; 32],
            rendezvous_id: "01J".into(),
            base_url: "https://hs.example.org/matrix".into(),
        };
        assert_eq!(rendezvous_server_of(&latest).unwrap().as_str(), "https://hs.example.org/matrix");
    }
}
