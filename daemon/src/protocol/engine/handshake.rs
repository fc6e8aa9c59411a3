//! The QR codes and the secure-channel handshakes of both sides: reading a scanned code (and
//! refusing servers we may not use), making ours (again when one expires unscanned), joining and
//! creating rendezvous sessions, and the scanner's and the generator's handshakes.

use super::*;

/// Reads a scanned QR code and checks it is the other device's kind and names servers we may use:
/// https, or http only to this machine.
pub(super) fn scanned_qr(bytes: &[u8], want: Intent, reach: Reach) -> Result<LoginQr> {
    let qr = LoginQr::parse(bytes).map_err(|e| LinkError::InvalidQrCode(e.to_string()))?;
    let bad =
        |what: &str, e: policy::UrlError| LinkError::InvalidQrCode(format!("the {what} is refused: {e}"));
    match &qr {
        LoginQr::V2024 { rendezvous_url, server, .. } => {
            policy::http_url(rendezvous_url, reach).map_err(|e| bad("rendezvous URL", e))?;
            if let Some(server) = server {
                policy::homeserver(server, reach).map_err(|e| bad("homeserver", e))?;
            }
        }
        LoginQr::Msc4388 { base_url, .. } => {
            policy::http_url(base_url, reach).map_err(|e| bad("base URL", e))?;
        }
    }
    if qr.intent() != want {
        return Err(LinkError::InvalidQrCode(match want {
            Intent::Login => {
                "this QR code was shown by a signed-in device; scan the one on the new device".into()
            }
            Intent::Reciprocate => "this QR code was shown by a device that wants to sign in; scan the one \
                                    on a signed-in device"
                .into(),
        }));
    }
    Ok(qr)
}

pub(super) fn wire_protocol(g: Generation) -> WireProtocol {
    match g {
        Generation::V2024 => WireProtocol::V2024,
        Generation::Latest => WireProtocol::Msc4388,
    }
}

/// Joins the session of a scanned QR code. Never sends an access token: the server is foreign.
pub(super) async fn join(http: &reqwest::Client, qr: &LoginQr) -> Result<Rendezvous> {
    match qr {
        LoginQr::V2024 { rendezvous_url, .. } => {
            let url = Url::parse(rendezvous_url)
                .map_err(|_| LinkError::InvalidQrCode("the rendezvous URL is not a URL".into()))?;
            let mut session = Session2024::join(http, url);
            // The first read learns the ETag (and the session's end); it holds no data yet.
            session.poll().await.map_err(LinkError::from)?;
            Ok(Rendezvous::V2024(session))
        }
        LoginQr::Msc4388 { rendezvous_id, base_url, .. } => {
            let base = Url::parse(base_url)
                .map_err(|_| LinkError::InvalidQrCode("the base URL is not a URL".into()))?;
            let session = SessionLatest::join(http, &base, rendezvous_id).await.map_err(LinkError::from)?;
            Ok(Rendezvous::latest(session, base))
        }
    }
}

/// S: sends LoginInitiate, waits for LoginOk, returns the channel. The caller shows the check code.
pub(super) async fn scanner_handshake(rv: Rendezvous, key: &[u8; 32], left: &mut Leftovers) -> Flow<()> {
    let (pending, initiate) =
        Initiated::start(rv.generation(), key, &rv.send_aad()).map_err(LinkError::from)?;
    // In the journal before we write: a daemon killed from here on deletes the session on its
    // next start, which ends the other device's flow.
    left.hold_rendezvous(rv).await?;
    left.rv.as_mut().expect("just set").send(&initiate).await.map_err(LinkError::from)?;
    debug!(message = "login_initiate", "rendezvous write");
    let rv = left.rv.as_mut().expect("just set");
    let (ok, aads) = rv.wait(Pace::Machine).await?;
    // LoginOk opens under either form of the base URL and either response label; the form that
    // opened is kept for the rest of the link (`Link::new`).
    let channel = pending.confirm(&ok, &aads).map_err(|e| Stop::silent(LinkError::from(e)))?;
    let rv = left.rv.take().expect("set above");
    left.link = Some(Link::new(rv, channel, true, true));
    Ok(())
}

/// How close to its announced end a session must be for a "gone" to count as its expiry (and not
/// as someone deleting it).
const EXPIRY_SLACK: Duration = Duration::from_secs(1);

/// A QR code's session that ends sooner than this after it was made is short-lived: the next one
/// comes only after [`replace_backoff`].
const MIN_QR_LIFE: Duration = Duration::from_secs(10);

/// The wait before replacing the `n`th short-lived session in a row: 2, 4, 8, 16, then 30 s.
fn replace_backoff(n: u32) -> Duration {
    Duration::from_secs((1u64 << n.min(5)).min(30))
}

/// Makes the rendezvous session and the QR code the daemon shows: at the start, and again each
/// time one expires before anybody scanned it (Synapse's 2024 sessions live 60 s; a person may
/// take longer to find their phone).
pub(super) struct QrMaker {
    pub(super) http: reqwest::Client,
    pub(super) generation: Generation,
    pub(super) homeserver: Url,
    /// Ours, for creating a latest-generation session on our own homeserver (grant only).
    pub(super) access_token: Option<String>,
    pub(super) intent: Intent,
    pub(super) reach: Reach,
}

impl QrMaker {
    pub(super) async fn make(&self) -> Result<(Rendezvous, Generator, Vec<u8>)> {
        create(
            &self.http,
            self.generation,
            &self.homeserver,
            self.access_token.as_deref(),
            self.intent,
            self.reach,
        )
        .await
    }
}

/// G: waits for S's LoginInitiate (a person scans first), answers LoginOk, then asks its user for
/// the check code. Nothing S sends is read before the code matched. A session that reaches its end
/// unscanned is replaced by a new one with a new QR code, until the flow's own time-out.
pub(super) async fn generator_handshake(
    mut generator: Generator,
    maker: &QrMaker,
    ui: &mut Ui,
    left: &mut Leftovers,
) -> Flow<()> {
    let mut made = Instant::now();
    let mut short_lived = 0;
    let (initiate, aads) = loop {
        let rv = left.rv.as_mut().expect("session created");
        let waited = rv.wait(Pace::Human).await;
        let ran_out = rv.expires_at().is_some_and(|end| Instant::now() + EXPIRY_SLACK >= end);
        match waited {
            Ok(found) => break found,
            Err(LinkError::Expired(_)) if ran_out => {
                // A server whose sessions die at once (a life of 1 ms, `Expires` equal to `Date`)
                // must not make us create sessions in a tight loop for the whole flow.
                if made.elapsed() < MIN_QR_LIFE {
                    short_lived += 1;
                    let wait = replace_backoff(short_lived);
                    warn!(
                        seconds = wait.as_secs(),
                        "the rendezvous session lived only briefly; waiting before a new one"
                    );
                    tokio::time::sleep(wait).await;
                } else {
                    short_lived = 0;
                }
                let (rv, replacement, qr) = maker.make().await?;
                made = Instant::now();
                info!("the QR code expired unscanned; showing a new one");
                left.hold_rendezvous(rv).await?;
                generator = replacement;
                ui.emit(FlowEvent::QrReady(Secret(qr)));
            }
            Err(e) => return Err(e.into()),
        }
    };
    let rv = left.rv.as_mut().expect("session created");
    // LoginInitiate opens under either form of the base URL; LoginOk and everything after are bound
    // to the form that opened it (`Link::new`).
    let ok_aads = rv.send_aads();
    let (channel, ok) =
        generator.accept(&initiate, &aads, &ok_aads).map_err(|e| Stop::silent(LinkError::from(e)))?;
    rv.send(&ok).await.map_err(LinkError::from)?;
    debug!(message = "login_ok", "rendezvous write");
    let rv = left.rv.take().expect("set above");
    left.link = Some(Link::new(rv, channel, false, false));
    ui.emit(FlowEvent::WaitingForCheckCode);
    let link = left.link.as_mut().expect("set above");
    // Nothing the other device writes is read now, but a session it deleted ends the flow.
    let typed = tokio::select! {
        typed = ui.check_code() => typed?,
        gone = link.watch() => return Err(Stop::silent(gone)),
    };
    let link = left.link.as_ref().expect("set above");
    if typed != link.channel.check_code() {
        warn!("wrong check code");
        return Err(Stop::local(LinkError::InvalidCheckCode, FailureReason::UserCancelled));
    }
    info!("check code confirmed");
    Ok(())
}

pub(super) fn link(left: &mut Leftovers) -> &mut Link {
    left.link.as_mut().expect("handshake done")
}

pub(super) fn show_check_code(ui: &Ui, channel: &Channel) {
    ui.emit(FlowEvent::ShowCheckCode(Secret(channel.check_code())));
}

/// Which generation to generate a QR code in: the caller's or the config's choice; `auto` takes
/// 2024 (every shipping client scans it) where the server offers it, else the latest.
/// `offers_2024` says whether the server's `/versions` offers 2024 (the engine's cached answer).
pub(super) async fn choose_generation(
    http: &reqwest::Client,
    choice: GenerationChoice,
    homeserver: &Url,
    access_token: Option<&str>,
    offers_2024: impl AsyncFnOnce() -> bool,
) -> Result<Generation> {
    match choice {
        GenerationChoice::V2024 => Ok(Generation::V2024),
        GenerationChoice::Latest => Ok(Generation::Latest),
        GenerationChoice::Auto => {
            if offers_2024().await {
                return Ok(Generation::V2024);
            }
            match SessionLatest::discover(http, homeserver, access_token).await {
                Ok(true) => Ok(Generation::Latest),
                // Not advertised either way: try 2024 and let the server's answer speak.
                _ => Ok(Generation::V2024),
            }
        }
    }
}

/// G: creates the session and the QR code. `server` goes into a 2024 reciprocate code.
pub(super) async fn create(
    http: &reqwest::Client,
    generation: Generation,
    homeserver: &Url,
    access_token: Option<&str>,
    intent: Intent,
    reach: Reach,
) -> Result<(Rendezvous, Generator, Vec<u8>)> {
    let generator = Generator::new(generation);
    let key = generator.public_key();
    match generation {
        Generation::V2024 => {
            let session = Session2024::create(http, homeserver, reach).await.map_err(LinkError::from)?;
            let qr = LoginQr::V2024 {
                intent,
                key,
                rendezvous_url: session.url().to_string(),
                // matrix-sdk writes a URL here and both SDKs accept one.
                server: (intent == Intent::Reciprocate).then(|| homeserver.to_string()),
            };
            Ok((Rendezvous::V2024(session), generator, qr.encode()))
        }
        Generation::Latest => {
            let session =
                SessionLatest::create(http, homeserver, access_token).await.map_err(LinkError::from)?;
            let qr = latest_qr(intent, key, session.id(), homeserver);
            Ok((Rendezvous::latest(session, homeserver.clone()), generator, qr.encode()))
        }
    }
}

/// The latest-generation code for our session: the base URL written exactly as it goes into the
/// AAD (normalised, with the `/` of a root path), so a peer that follows the MSC text ("the base
/// URL from the QR code") computes the same AAD as the Element SDKs and we do.
pub(super) fn latest_qr(intent: Intent, key: [u8; 32], rendezvous_id: &str, homeserver: &Url) -> LoginQr {
    LoginQr::Msc4388 {
        prefix: Prefix::Unstable,
        intent,
        key,
        rendezvous_id: rendezvous_id.to_owned(),
        base_url: homeserver.to_string(),
    }
}
