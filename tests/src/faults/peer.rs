//! The other device of a fault-injection case: a scripted new device that a grant lets in, or a
//! scripted existing device that lets the daemon in (a login), on either generation, scanning the
//! daemon's QR code or showing its own. It runs on the daemon's
//! own wire code (channel, rendezvous clients) over the stand-in's clean port, and records what it
//! saw: whether the channel came up, whether and when it was told that the flow ended, and whether
//! the secrets came before the user's check code, consent and its own device.

use std::sync::{
    Arc, Mutex,
    atomic::{AtomicBool, Ordering},
};

use matrix_linkd::{
    net::{self, Reach},
    protocol::{
        link::{Link, Pace, Rendezvous},
        rendezvous::{Session2024, SessionLatest},
        wire::{
            channel::{Generation, Generator, Initiated},
            messages::{CrossSigningSecrets, DEVICE_AUTHORIZATION_GRANT, DeviceGrant, LoginMessage},
            qr::{Intent, LoginQr, Prefix},
        },
    },
};
use tokio::{sync::mpsc, time::Instant};
use url::Url;

use super::server::StandIn;

/// What the harness did for the daemon's user, as the peer sees it when the secrets arrive.
#[derive(Default)]
pub struct Gates {
    /// The daemon's user typed the check code (the daemon generated the QR code).
    pub code_typed: AtomicBool,
    /// The daemon's user consented (`Approve`).
    pub approved: AtomicBool,
}

/// When the secrets arrived, what had happened before.
#[derive(Debug, Clone, Copy)]
pub struct SecretsSeen {
    pub code_typed: bool,
    pub approved: bool,
    pub device_present: bool,
}

/// What the other device saw.
#[derive(Debug, Default, Clone)]
pub struct Report {
    /// The secure channel came up (it can be told things).
    pub channel: bool,
    /// The rendezvous session it reads (its last path segment or ID).
    pub session: Option<String>,
    /// `m.login.failure` (its reason) or `m.login.declined`, and when.
    pub told: Option<(String, Instant)>,
    pub secrets: Option<SecretsSeen>,
    /// Its own reads failed (the session went away, the channel broke): it knows the flow ended.
    pub stopped: Option<String>,
}

pub type Shared = Arc<Mutex<Report>>;

/// The daemon scanned: the peer generated the QR code and the daemon shows the check code, which
/// reaches the peer's user through `typed`.
pub struct Generated {
    pub qr: Vec<u8>,
    pub typed: mpsc::UnboundedSender<u8>,
    pub task: tokio::task::JoinHandle<()>,
}

/// Which device the peer plays.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// The new device of a grant.
    NewDevice,
    /// The existing device of a login: it names the homeserver, consents, sends the secrets.
    Existing,
}

/// The other device's end of a case.
pub struct Peer {
    pub server: StandIn,
    /// The device ID the new device asks for.
    pub device: String,
    pub gates: Arc<Gates>,
    pub report: Shared,
    pub role: Role,
}

fn to_peer(server: &StandIn, url: &Url) -> Url {
    let mut u = url.clone();
    u.set_port(server.peer_url.port()).expect("port");
    u
}

fn to_daemon(server: &StandIn, url: &Url) -> Url {
    let mut u = url.clone();
    u.set_port(server.daemon_url.port()).expect("port");
    u
}

impl Peer {
    pub fn new(server: &StandIn, device: &str, gates: Arc<Gates>, role: Role) -> Self {
        Self { server: server.clone(), device: device.to_owned(), gates, report: Default::default(), role }
    }

    /// The daemon showed `qr`: scan it and play the new device. `code` gets the check code this
    /// device shows, for the daemon's user to type.
    pub fn scan(&self, qr: Vec<u8>, code: mpsc::UnboundedSender<u8>) -> tokio::task::JoinHandle<()> {
        let me = self.clone_parts();
        tokio::spawn(async move {
            if let Err(e) = me.scan_inner(qr, code).await {
                me.report.lock().unwrap().stopped.get_or_insert(e);
            }
        })
    }

    /// Makes this device's QR code (a session on the clean port, named by the daemon's port in the
    /// code) and plays the new device once the daemon scanned it.
    pub async fn generate(&self, generation: Generation) -> Result<Generated, String> {
        let http = net::client();
        let generator = Generator::new(generation);
        let key = generator.public_key();
        // A new device's code asks to be let in; an existing device's offers to let one in and
        // names its homeserver.
        let (intent, server) = match self.role {
            Role::NewDevice => (Intent::Login, None),
            Role::Existing => (Intent::Reciprocate, Some(self.server.daemon_url.to_string())),
        };
        let (rv, qr) = match generation {
            Generation::V2024 => {
                let s = Session2024::create(&http, &self.server.peer_url, Reach::ANYWHERE)
                    .await
                    .map_err(|e| format!("the other device could not create its session: {e}"))?;
                let qr = LoginQr::V2024 {
                    intent,
                    key,
                    rendezvous_url: to_daemon(&self.server, s.url()).to_string(),
                    server,
                };
                (Rendezvous::V2024(s), qr)
            }
            Generation::Latest => {
                let s = SessionLatest::create(&http, &self.server.peer_url, None)
                    .await
                    .map_err(|e| format!("the other device could not create its session: {e}"))?;
                let qr = LoginQr::Msc4388 {
                    prefix: Prefix::Unstable,
                    intent,
                    key,
                    rendezvous_id: s.id().to_owned(),
                    base_url: self.server.daemon_url.to_string(),
                };
                (Rendezvous::latest(s, self.server.daemon_url.clone()), qr)
            }
        };
        self.report.lock().unwrap().session = Some(session_id(&rv));
        let (typed, typed_rx) = mpsc::unbounded_channel();
        let me = self.clone_parts();
        let task = tokio::spawn(async move {
            if let Err(e) = me.generated_inner(rv, generator, typed_rx).await {
                me.report.lock().unwrap().stopped.get_or_insert(e);
            }
        });
        Ok(Generated { qr: qr.encode(), typed, task })
    }

    fn clone_parts(&self) -> Self {
        Self {
            server: self.server.clone(),
            device: self.device.clone(),
            gates: self.gates.clone(),
            report: self.report.clone(),
            role: self.role,
        }
    }

    /// Stops acting once the plan made this device silent.
    async fn alive(&self) {
        if self.server.silent() {
            std::future::pending::<()>().await;
        }
    }

    async fn scan_inner(&self, qr: Vec<u8>, code: mpsc::UnboundedSender<u8>) -> Result<(), String> {
        let http = net::client();
        let qr = LoginQr::parse(&qr).map_err(|e| e.to_string())?;
        let rv = match &qr {
            LoginQr::V2024 { rendezvous_url, .. } => {
                let url = to_peer(&self.server, &Url::parse(rendezvous_url).map_err(|e| e.to_string())?);
                let mut s = Session2024::join(&http, url);
                s.poll().await.map_err(|e| format!("join: {e}"))?;
                Rendezvous::V2024(s)
            }
            LoginQr::Msc4388 { rendezvous_id, base_url, .. } => {
                let base = Url::parse(base_url).map_err(|e| e.to_string())?;
                let s = SessionLatest::join(&http, &to_peer(&self.server, &base), rendezvous_id)
                    .await
                    .map_err(|e| format!("join: {e}"))?;
                Rendezvous::latest(s, base)
            }
        };
        self.report.lock().unwrap().session = Some(session_id(&rv));
        self.alive().await;
        let mut rv = rv;
        let (pending, initiate) =
            Initiated::start(rv.generation(), qr.key(), &rv.send_aad()).map_err(|e| e.to_string())?;
        rv.send(&initiate).await.map_err(|e| format!("initiate: {e}"))?;
        let (ok, aads) = rv.wait(Pace::Machine).await.map_err(|e| format!("login ok: {e}"))?;
        let channel = pending.confirm(&ok, &aads).map_err(|e| format!("confirm: {e}"))?;
        let _ = code.send(channel.check_code());
        self.report.lock().unwrap().channel = true;
        let mut link = Link::new(rv, channel, true, true);
        match self.role {
            Role::NewDevice => self.new_device(&mut link).await,
            Role::Existing => self.existing_device(&mut link, true).await,
        }
    }

    async fn generated_inner(
        &self,
        mut rv: Rendezvous,
        generator: Generator,
        mut typed: mpsc::UnboundedReceiver<u8>,
    ) -> Result<(), String> {
        let (initiate, aads) = rv.wait(Pace::Machine).await.map_err(|e| format!("initiate: {e}"))?;
        self.alive().await;
        let (channel, ok) =
            generator.accept(&initiate, &aads, &rv.send_aads()).map_err(|e| format!("accept: {e}"))?;
        rv.send(&ok).await.map_err(|e| format!("login ok: {e}"))?;
        self.report.lock().unwrap().channel = true;
        let mut link = Link::new(rv, channel, false, false);
        // This device's user types the code the daemon shows; nothing is read before.
        let shown = typed.recv().await.ok_or("no check code shown")?;
        if shown != link.channel.check_code() {
            return Err("the daemon showed a wrong check code".into());
        }
        if self.role == Role::Existing {
            // The daemon scanned our code, which names the homeserver: it asks to sign in at once.
            return self.existing_device(&mut link, false).await;
        }
        let msg = self.recv(&mut link).await?;
        if !matches!(msg, LoginMessage::Protocols { ref protocols, .. } if protocols.iter().any(|p| p == DEVICE_AUTHORIZATION_GRANT))
        {
            return Err(format!("expected m.login.protocols, got {}", msg.kind()));
        }
        self.new_device(&mut link).await
    }

    /// After the handshake: asks to sign in, gets its token once accepted, says so, takes the
    /// secrets.
    async fn new_device(&self, link: &mut Link) -> Result<(), String> {
        self.alive().await;
        let consent = self.server.daemon_url.join("oauth/device").expect("URL");
        link.send(&LoginMessage::Protocol {
            protocol: DEVICE_AUTHORIZATION_GRANT.into(),
            device_authorization_grant: Some(DeviceGrant {
                verification_uri: consent.to_string(),
                verification_uri_complete: Some(format!("{consent}?user_code=FAULTS")),
            }),
            device_id: self.device.clone(),
        })
        .await
        .map_err(|e| format!("protocol: {e}"))?;
        let msg = self.recv(link).await?;
        if msg != (LoginMessage::ProtocolAccepted {}) {
            return Err(format!("expected m.login.protocol_accepted, got {}", msg.kind()));
        }
        self.alive().await;
        self.server.add_device(&self.device);
        link.send(&LoginMessage::Success {}).await.map_err(|e| format!("success: {e}"))?;
        let msg = self.recv(link).await?;
        if !matches!(msg, LoginMessage::Secrets { .. }) {
            return Err(format!("expected m.login.secrets, got {}", msg.kind()));
        }
        self.report.lock().unwrap().secrets = Some(SecretsSeen {
            code_typed: self.gates.code_typed.load(Ordering::SeqCst),
            approved: self.gates.approved.load(Ordering::SeqCst),
            device_present: self.server.has_device(&self.device),
        });
        Ok(())
    }

    /// After the handshake, as the existing device: names the homeserver (when the daemon showed
    /// the code), takes the daemon's sign-in request, consents on the OAuth page, waits for the
    /// daemon's success and sends the secrets.
    async fn existing_device(&self, link: &mut Link, name_homeserver: bool) -> Result<(), String> {
        self.alive().await;
        if name_homeserver {
            let here = self.server.daemon_url.to_string();
            let protocols = vec![DEVICE_AUTHORIZATION_GRANT.to_owned()];
            let msg = match link.rv.generation() {
                Generation::V2024 => {
                    LoginMessage::Protocols { protocols, homeserver: Some(here), base_url: None }
                }
                Generation::Latest => {
                    LoginMessage::Protocols { protocols, homeserver: None, base_url: Some(here) }
                }
            };
            link.send(&msg).await.map_err(|e| format!("protocols: {e}"))?;
        }
        let msg = self.recv(link).await?;
        let LoginMessage::Protocol { device_id, device_authorization_grant: Some(_), .. } = msg else {
            return Err(format!("expected m.login.protocol, got {}", msg.kind()));
        };
        self.alive().await;
        // This device's user consents on the OAuth server's page.
        self.gates.approved.store(true, Ordering::SeqCst);
        self.server.approve();
        link.send(&LoginMessage::ProtocolAccepted {}).await.map_err(|e| format!("accepted: {e}"))?;
        let msg = self.recv(link).await?;
        if msg != (LoginMessage::Success {}) {
            return Err(format!("expected m.login.success, got {}", msg.kind()));
        }
        self.alive().await;
        // As an existing device does: the secrets go only to a device that exists.
        let device_present = self.server.has_device(&device_id);
        if !device_present {
            return Err("the new device does not exist".into());
        }
        link.send(&secrets()).await.map_err(|e| format!("secrets: {e}"))?;
        self.report.lock().unwrap().secrets = Some(SecretsSeen {
            code_typed: self.gates.code_typed.load(Ordering::SeqCst),
            approved: true,
            device_present,
        });
        Ok(())
    }

    /// The next message; an end (`m.login.failure`, `m.login.declined`) is recorded as told.
    async fn recv(&self, link: &mut Link) -> Result<LoginMessage, String> {
        let (msg, _) = link.recv(Pace::Machine).await.map_err(|e| format!("read: {e}"))?;
        if let LoginMessage::Failure { reason, .. } = &msg {
            self.report.lock().unwrap().told = Some((reason.clone(), Instant::now()));
            return Err(format!("told: {reason}"));
        }
        if msg == (LoginMessage::Declined {}) {
            self.report.lock().unwrap().told = Some(("declined".into(), Instant::now()));
            return Err("told: declined".into());
        }
        Ok(msg)
    }
}

/// The secrets an existing device sends (cross-signing keys only: no key backup to look for).
fn secrets() -> LoginMessage {
    LoginMessage::Secrets {
        cross_signing: CrossSigningSecrets {
            master_key: super::case::SEED_MASTER.into(),
            self_signing_key: super::case::SEED_SELF_SIGNING.into(),
            user_signing_key: super::case::SEED_USER_SIGNING.into(),
        },
        backup: None,
    }
}

fn session_id(rv: &Rendezvous) -> String {
    match rv {
        Rendezvous::V2024(s) => s.url().path().rsplit('/').next().unwrap_or_default().to_owned(),
        Rendezvous::Latest { session, .. } => session.id().to_owned(),
    }
}
