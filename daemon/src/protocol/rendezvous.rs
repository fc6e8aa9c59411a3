//! Rendezvous clients for both generations (docs/protocol.md §5): the 2024 ETag API and the latest
//! `sequence_token` API. One session = one mutable slot on a homeserver; the protocol strictly
//! alternates, so a client sends, then polls until the other side's write shows up.
//!
//! Never send an access token to a rendezvous URL taken from a scanned QR code: only `create`
//! on our own homeserver (latest generation) may carry one.

use std::time::Duration;

use matrix_sdk::reqwest::{self, StatusCode, header};
use serde_json::{Value, json};
use url::Url;

use crate::net::{self, BodyError, RENDEZVOUS_LIMIT};

/// Largest payload a rendezvous session holds.
pub const MAX_PAYLOAD: usize = 4096;

/// A session gone this long before its announced end was lost, not run out (clocks are not
/// involved: the end is the server's `Expires` − `Date`).
const LOST_SLACK: Duration = Duration::from_secs(5);

/// How often a write refused as a conflict is tried again, when the slot shows nobody else wrote.
const CONFLICT_RETRIES: u32 = 3;

fn conflict_backoff(attempt: u32) -> Duration {
    Duration::from_millis(50 * u64::from(attempt))
}

/// Longest session life we believe a server about: no real session lives longer, and a larger
/// number (up to `u64::MAX`) must not overflow a deadline.
pub const MAX_TTL: Duration = Duration::from_secs(3600);

const PATH_2024: &str = "_matrix/client/unstable/org.matrix.msc4108/rendezvous";
const PATH_LATEST_UNSTABLE: &str = "_matrix/client/unstable/io.element.msc4388/rendezvous";

/// How a rendezvous request failed. Never carries the session URL or payload.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RendezvousError {
    #[error("the rendezvous session expired or was deleted")]
    Expired,
    /// Gone well before the end its server announced: the other device ended it, or a homeserver
    /// with workers lost it (a worker without the session answered).
    #[error("the rendezvous session is gone before its end")]
    Lost,
    /// The server creates sessions only for signed-in devices (Synapse's
    /// `msc4388_mode: authenticated` answers 401 `M_MISSING_TOKEN` where the MSC says 403).
    #[error("the rendezvous server creates sessions only for signed-in devices")]
    SignInRequired,
    #[error("the other device wrote at the same time (concurrent write)")]
    Conflict,
    #[error("the payload is too large for the rendezvous server")]
    TooLarge,
    #[error("the server offers no rendezvous here (HTTP {0})")]
    Unavailable(u16),
    #[error("the rendezvous server answered HTTP {0}")]
    Status(u16),
    #[error("the rendezvous server could not be reached")]
    Network,
    #[error("the rendezvous server's answer is malformed: {0}")]
    Malformed(&'static str),
    #[error("the rendezvous server's answer is larger than {0} bytes")]
    AnswerTooLarge(usize),
    #[error("the rendezvous server answered with a redirect (HTTP {0}), which is not followed")]
    Redirect(u16),
    #[error("the session URL the rendezvous server answered is refused: {0}")]
    RefusedUrl(net::UrlError),
    #[error(
        "the rendezvous server refused our write as a conflict although the session still holds what \
         we last read: a proxy in front of the homeserver alters ETags (often gzip compression; \
         serve /_matrix/client/*/rendezvous uncompressed, or keep ETags unchanged)"
    )]
    AlteredEtag,
}

impl RendezvousError {
    /// The request reached the server but its answer did not come back whole (cut off, too large,
    /// unreadable): a write may have landed.
    fn answer_lost(&self) -> bool {
        matches!(self, Self::Network | Self::AnswerTooLarge(_) | Self::Malformed(_))
    }
}

/// What a rendezvous failure means for the flow and its caller.
impl From<RendezvousError> for crate::error::LinkError {
    fn from(e: RendezvousError) -> Self {
        use crate::error::LinkError;
        match e {
            RendezvousError::Expired => {
                LinkError::Expired("the rendezvous session expired or the other device ended it".into())
            }
            RendezvousError::Lost => LinkError::Expired(
                "the rendezvous session is gone before its end: the other device ended it, or the \
                 homeserver lost it (with workers, every request of a session must reach the same \
                 worker: route /rendezvous/ by session, or keep sessions in shared storage)"
                    .into(),
            ),
            RendezvousError::SignInRequired => LinkError::Unsupported(
                "the homeserver creates rendezvous sessions only for signed-in devices (Synapse: \
                 experimental_features msc4388_mode = \"authenticated\"): scan the QR code that a \
                 signed-in device shows instead"
                    .into(),
            ),
            RendezvousError::Unavailable(_) => {
                LinkError::Unsupported("the homeserver offers no rendezvous session here".into())
            }
            RendezvousError::Conflict => {
                LinkError::ProtocolError("someone else wrote to the rendezvous session".into())
            }
            RendezvousError::Network => {
                LinkError::Network("the rendezvous server could not be reached".into())
            }
            e @ (RendezvousError::AnswerTooLarge(_)
            | RendezvousError::Redirect(_)
            | RendezvousError::Malformed(_)
            | RendezvousError::RefusedUrl(_)
            | RendezvousError::AlteredEtag) => LinkError::ProtocolError(e.to_string()),
            other => LinkError::Network(other.to_string()),
        }
    }
}

pub type Result<T, E = RendezvousError> = std::result::Result<T, E>;

fn network(_: reqwest::Error) -> RendezvousError {
    RendezvousError::Network
}

fn body_error(e: BodyError) -> RendezvousError {
    match e {
        BodyError::TooLarge(n) => RendezvousError::AnswerTooLarge(n),
        BodyError::Network => RendezvousError::Network,
    }
}

/// The body of a rendezvous answer, at most [`RENDEZVOUS_LIMIT`] bytes.
async fn body(r: reqwest::Response) -> Result<Vec<u8>> {
    net::read_capped(r, RENDEZVOUS_LIMIT).await.map_err(body_error)
}

async fn errcode(r: reqwest::Response) -> (u16, String) {
    let status = r.status().as_u16();
    let body: Value = body(r).await.ok().and_then(|b| serde_json::from_slice(&b).ok()).unwrap_or(Value::Null);
    let code = body
        .get("org.matrix.msc4108.errcode")
        .or_else(|| body.get("errcode"))
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned();
    (status, code)
}

fn map_error(status: u16, code: &str) -> RendezvousError {
    match (status, code) {
        (404, "M_NOT_FOUND") => RendezvousError::Expired,
        (401, "M_MISSING_TOKEN" | "M_UNKNOWN_TOKEN") => RendezvousError::SignInRequired,
        (404, _) | (401, _) | (403, _) | (405, _) => RendezvousError::Unavailable(status),
        (409, _) | (412, _) => RendezvousError::Conflict,
        (413, _) => RendezvousError::TooLarge,
        (300..=399, _) => RendezvousError::Redirect(status),
        (s, _) => RendezvousError::Status(s),
    }
}

/// A create answered "not found": there is no session to have expired; the server offers none here.
fn creating(e: RendezvousError) -> RendezvousError {
    if e == RendezvousError::Expired { RendezvousError::Unavailable(404) } else { e }
}

/// The moment `ttl` from now, for a `ttl` a server told us: at most [`MAX_TTL`] ahead.
pub fn deadline_in(ttl: Duration) -> tokio::time::Instant {
    tokio::time::Instant::now() + ttl.min(MAX_TTL)
}

/// `Expires` − `Date` of a 2024 rendezvous response: the session's remaining life by the server's
/// own clock.
fn ttl_of(headers: &header::HeaderMap) -> Option<Duration> {
    let date = |name| {
        headers
            .get(name)
            .and_then(|v: &header::HeaderValue| v.to_str().ok())
            .and_then(|v| httpdate::parse_http_date(v).ok())
    };
    date(header::EXPIRES)?.duration_since(date(header::DATE)?).ok()
}

/// The session's ETag as the homeserver made it. Proxies that compress rewrite it on the way: nginx
/// weakens it (`W/"T"`), Apache appends the encoding (`"T-gzip"`). The homeserver compares
/// `If-Match` strictly, so we keep the strong tag it sent: a weak prefix and an encoding suffix
/// are taken off.
fn etag_of(headers: &header::HeaderMap) -> Option<String> {
    let tag = headers.get(header::ETAG)?.to_str().ok()?.trim();
    let tag = tag.strip_prefix("W/").unwrap_or(tag);
    let Some(inner) = tag.strip_prefix('"').and_then(|t| t.strip_suffix('"')) else {
        return Some(tag.to_owned());
    };
    let inner = ["-gzip", "-br", "-deflate", "-zstd"]
        .iter()
        .find_map(|suffix| inner.strip_suffix(suffix).filter(|rest| !rest.is_empty()))
        .unwrap_or(inner);
    Some(format!("\"{inner}\""))
}

fn check_size(payload: &str) -> Result<()> {
    if payload.len() > MAX_PAYLOAD { Err(RendezvousError::TooLarge) } else { Ok(()) }
}

/// A 2024 session (`org.matrix.msc4108`): an absolute URL, ETag preconditions, `text/plain`.
#[derive(Clone)]
pub struct Session2024 {
    http: reqwest::Client,
    url: Url,
    etag: Option<String>,
    expires_at: Option<tokio::time::Instant>,
    /// We created the session or wrote to it: only then may we delete it. A scanned code's URL
    /// that we never wrote to may be anybody's (or any local service's) resource.
    owned: bool,
    /// The other device's answer, found while a write of ours was being made sure of: the next
    /// read.
    early: Option<String>,
}

impl std::fmt::Debug for Session2024 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Session2024(<redacted>)")
    }
}

impl Session2024 {
    /// Whether the homeserver offers the 2024 rendezvous: its `/versions` lists
    /// `org.matrix.msc4108`. `None` when `/versions` could not be read.
    pub async fn offered(http: &reqwest::Client, homeserver: &Url) -> Option<bool> {
        let v = net::resolve::versions(http, homeserver).await?;
        Some(v.pointer("/unstable_features/org.matrix.msc4108").and_then(Value::as_bool).unwrap_or(false))
    }

    /// Creates a session on `homeserver` (G). The session URL the server answers is held to the
    /// same rules as every URL from outside (`reach`): it is polled, and it goes into our QR code.
    pub async fn create(http: &reqwest::Client, homeserver: &Url, reach: net::Reach) -> Result<Self> {
        let endpoint =
            homeserver.join(PATH_2024).map_err(|_| RendezvousError::Malformed("homeserver URL"))?;
        let r = http
            .post(endpoint)
            .header(header::CONTENT_TYPE, "text/plain")
            // Synapse insists on a Content-Length, which an empty body does not get by itself.
            .header(header::CONTENT_LENGTH, "0")
            .body("")
            .send()
            .await
            .map_err(network)?;
        if r.status() != StatusCode::CREATED && r.status() != StatusCode::OK {
            let (s, code) = errcode(r).await;
            return Err(creating(map_error(s, &code)));
        }
        let etag = etag_of(r.headers());
        let expires_at = ttl_of(r.headers()).map(deadline_in);
        let body: Value = serde_json::from_slice(&body(r).await?)
            .map_err(|_| RendezvousError::Malformed("create response is not JSON"))?;
        let url = body
            .get("url")
            .and_then(Value::as_str)
            .and_then(|u| Url::parse(u).ok())
            .ok_or(RendezvousError::Malformed("create response has no url"))?;
        net::check_transport(&url, reach).map_err(RendezvousError::RefusedUrl)?;
        if !url.username().is_empty() || url.password().is_some() {
            return Err(RendezvousError::RefusedUrl(net::UrlError::Credentials));
        }
        Ok(Self { http: http.clone(), url, etag, expires_at, owned: true, early: None })
    }

    /// Joins the session at `url` from a scanned QR code (S).
    pub fn join(http: &reqwest::Client, url: Url) -> Self {
        Self { http: http.clone(), url, etag: None, expires_at: None, owned: false, early: None }
    }

    /// When the session ends, as the server last told us (`Expires` − `Date`: no clock skew).
    pub fn expires_at(&self) -> Option<tokio::time::Instant> {
        self.expires_at
    }

    pub fn url(&self) -> &Url {
        &self.url
    }

    /// Writes `payload` over the other side's last write.
    /// A write refused as a conflict (`412`) is looked into: when the slot still holds what we
    /// last saw (a worker behind a load balancer that had not caught up) the identical write is
    /// tried again; when it holds our own payload (an earlier try went through, its answer was
    /// lost) the write is done; when the other device wrote, it is a real conflict.
    ///
    /// A write whose answer was lost (a reset, a time-out, a proxy that closed) may have landed:
    /// it is tried once more as is, and the session counts as ours to delete. When by then the
    /// slot holds another payload, the other device has already answered our write: the write is
    /// done and that answer is the next read (a stranger's write would not open on the channel).
    pub async fn send(&mut self, payload: &str) -> Result<()> {
        check_size(payload)?;
        let (mut attempt, mut lost) = (0, false);
        loop {
            match self.put(payload).await {
                Err(RendezvousError::Network) if !lost => {
                    lost = true;
                    self.owned = true;
                }
                // Refused again and again while the slot holds what we last read: nobody else
                // wrote, our precondition itself is what fails.
                Err(RendezvousError::Conflict) if attempt == CONFLICT_RETRIES => {
                    return match self.poll().await? {
                        None => Err(RendezvousError::AlteredEtag),
                        Some(found) => self.written_over(found, payload, lost),
                    };
                }
                Err(RendezvousError::Conflict) => {
                    // One conditional read tells what the slot holds now.
                    if let Some(found) = self.poll().await? {
                        return self.written_over(found, payload, lost);
                    }
                    attempt += 1;
                    tokio::time::sleep(conflict_backoff(attempt)).await;
                }
                other => return other,
            }
        }
    }

    /// A conflicting write found `found` in the slot: our own payload (done), the other device's
    /// answer to a write of ours whose answer was lost (done; the answer is the next read), or a
    /// real conflict.
    fn written_over(&mut self, found: String, payload: &str, lost: bool) -> Result<()> {
        if found == payload {
            self.owned = true;
            Ok(())
        } else if lost {
            self.early = Some(found);
            Ok(())
        } else {
            Err(RendezvousError::Conflict)
        }
    }

    async fn put(&mut self, payload: &str) -> Result<()> {
        let mut req = self
            .http
            .put(self.url.clone())
            .header(header::CONTENT_TYPE, "text/plain")
            .body(payload.to_owned());
        if let Some(etag) = &self.etag {
            req = req.header(header::IF_MATCH, etag);
        }
        let r = req.send().await.map_err(network)?;
        if !r.status().is_success() {
            let (s, code) = errcode(r).await;
            return Err(map_error(s, &code));
        }
        self.etag = etag_of(r.headers());
        self.owned = true;
        Ok(())
    }

    /// One read: `Some(payload)` when the slot changed since our last read or write.
    pub async fn poll(&mut self) -> Result<Option<String>> {
        if let Some(early) = self.early.take() {
            return Ok(Some(early));
        }
        let mut req = self.http.get(self.url.clone());
        if let Some(etag) = &self.etag {
            req = req.header(header::IF_NONE_MATCH, etag);
        }
        let r = req.send().await.map_err(network)?;
        match r.status() {
            StatusCode::NOT_MODIFIED => Ok(None),
            s if s.is_success() => {
                let etag = etag_of(r.headers());
                let ttl = ttl_of(r.headers());
                // The new ETag is kept only with the body it belongs to: a read dropped half-way
                // (a flow step that ends while this one is in flight) must not mark the message
                // as seen, or the next conditional read would answer 304 and lose it.
                let body = String::from_utf8(body(r).await?)
                    .map_err(|_| RendezvousError::Malformed("payload is not text"))?;
                self.etag = etag;
                if let Some(ttl) = ttl {
                    self.expires_at = Some(deadline_in(ttl));
                }
                Ok((!body.is_empty()).then_some(body))
            }
            _ => {
                let (s, code) = errcode(r).await;
                Err(self.lost_early(map_error(s, &code)))
            }
        }
    }

    /// An `Expired` answer long before the end the server announced is a session lost (or ended
    /// by the other device), not one that ran out.
    fn lost_early(&self, e: RendezvousError) -> RendezvousError {
        let early = self.expires_at.is_some_and(|end| tokio::time::Instant::now() + LOST_SLACK < end);
        if e == RendezvousError::Expired && early { RendezvousError::Lost } else { e }
    }

    /// Ends the session early, if it is ours (created or written by us); errors are of no
    /// consequence.
    pub async fn delete(&self) {
        if self.owned {
            let _ = self.http.delete(self.url.clone()).send().await;
        }
    }
}

/// A latest-generation session (`io.element.msc4388`): an ID on a base URL, `sequence_token`
/// compare-and-swap, JSON bodies.
#[derive(Clone)]
pub struct SessionLatest {
    http: reqwest::Client,
    base: Url,
    id: String,
    token: String,
    expires_in: Duration,
    /// We created the session or wrote to it: only then may we delete it.
    owned: bool,
}

impl std::fmt::Debug for SessionLatest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SessionLatest(<redacted>)")
    }
}

fn latest_endpoint(base: &Url) -> Result<Url> {
    let mut base = base.clone();
    if !base.path().ends_with('/') {
        base.set_path(&format!("{}/", base.path()));
    }
    base.join(PATH_LATEST_UNSTABLE).map_err(|_| RendezvousError::Malformed("base URL"))
}

async fn json_of(r: reqwest::Response) -> Result<Value> {
    if !r.status().is_success() {
        let (s, code) = errcode(r).await;
        return Err(map_error(s, &code));
    }
    serde_json::from_slice(&body(r).await?).map_err(|_| RendezvousError::Malformed("not JSON"))
}

fn field(v: &Value, name: &'static str) -> Result<String> {
    v.get(name).and_then(Value::as_str).map(str::to_owned).ok_or(RendezvousError::Malformed(name))
}

impl SessionLatest {
    /// `GET …/rendezvous`: may this client create sessions here?
    pub async fn discover(http: &reqwest::Client, base: &Url, access_token: Option<&str>) -> Result<bool> {
        let mut req = http.get(latest_endpoint(base)?);
        if let Some(t) = access_token {
            req = req.bearer_auth(t);
        }
        match json_of(req.send().await.map_err(network)?).await {
            Ok(v) => Ok(v.get("create_available").and_then(Value::as_bool).unwrap_or(false)),
            // The MSC answers an unauthenticated client 403; Synapse in `msc4388_mode:
            // authenticated` answers 401 `M_MISSING_TOKEN`. Both mean: not for this client.
            Err(RendezvousError::SignInRequired | RendezvousError::Unavailable(401 | 403)) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Creates a session (G), on our own homeserver or a configured default.
    pub async fn create(http: &reqwest::Client, base: &Url, access_token: Option<&str>) -> Result<Self> {
        let mut req = http.post(latest_endpoint(base)?).header(header::CONTENT_TYPE, "application/json");
        if let Some(t) = access_token {
            req = req.bearer_auth(t);
        }
        let v = json_of(req.body(json!({ "data": "" }).to_string()).send().await.map_err(network)?)
            .await
            .map_err(creating)?;
        let expires_in =
            Duration::from_millis(v.get("expires_in_ms").and_then(Value::as_u64).unwrap_or(120_000));
        Ok(Self {
            http: http.clone(),
            base: base.clone(),
            id: field(&v, "id")?,
            token: field(&v, "sequence_token")?,
            expires_in,
            owned: true,
        })
    }

    /// Joins the session `id` from a scanned QR code (S): reads the current token.
    pub async fn join(http: &reqwest::Client, base: &Url, id: &str) -> Result<Self> {
        let mut s = Self {
            http: http.clone(),
            base: base.clone(),
            id: id.to_owned(),
            token: String::new(),
            expires_in: Duration::ZERO,
            owned: false,
        };
        let v = json_of(s.http.get(s.session_url()?).send().await.map_err(network)?).await?;
        s.token = field(&v, "sequence_token")?;
        s.expires_in = Duration::from_millis(v.get("expires_in_ms").and_then(Value::as_u64).unwrap_or(0));
        Ok(s)
    }

    /// The session's own URL (where it is read, written and deleted).
    pub fn session_url(&self) -> Result<Url> {
        let mut u = latest_endpoint(&self.base)?;
        u.path_segments_mut().map_err(|_| RendezvousError::Malformed("base URL"))?.push(&self.id);
        Ok(u)
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    /// A session value without a server, for tests of what is computed from it.
    #[cfg(test)]
    pub(crate) fn for_test(base: &Url, id: &str, token: &str) -> Self {
        Self {
            http: reqwest::Client::new(),
            base: base.clone(),
            id: id.to_owned(),
            token: token.to_owned(),
            expires_in: Duration::from_secs(120),
            owned: false,
        }
    }

    /// The last token seen: the precondition (and AAD token) of our next write.
    pub fn token(&self) -> &str {
        &self.token
    }

    /// Time to live reported by the server at create/join.
    pub fn expires_in(&self) -> Duration {
        self.expires_in.min(MAX_TTL)
    }

    /// Writes `data` with the current token as precondition. A lost answer is retried once with
    /// the identical payload (the server treats that as idempotent).
    ///
    /// A write refused as a conflict (`409`) is looked into as for 2024: the identical body again
    /// while the token is still ours (never another payload under the same token: its AAD binds
    /// it), done when the slot holds our data, a real conflict when the other device wrote.
    pub async fn send(&mut self, data: &str) -> Result<()> {
        check_size(data)?;
        let body = json!({ "sequence_token": self.token, "data": data }).to_string();
        let (mut lost, mut conflicts) = (0, 0);
        loop {
            let sent = self
                .http
                .put(self.session_url()?)
                .header(header::CONTENT_TYPE, "application/json")
                .body(body.clone())
                .send()
                .await;
            match sent {
                Ok(r) => match json_of(r).await.inspect_err(|e| self.owned |= e.answer_lost()) {
                    Ok(v) => {
                        self.token = field(&v, "sequence_token")?;
                        self.owned = true;
                        return Ok(());
                    }
                    Err(RendezvousError::Conflict) if conflicts < CONFLICT_RETRIES => {
                        let v = json_of(self.http.get(self.session_url()?).send().await.map_err(network)?)
                            .await?;
                        let token = field(&v, "sequence_token")?;
                        if token != self.token {
                            if v.get("data").and_then(Value::as_str) == Some(data) {
                                self.token = token;
                                self.owned = true;
                                return Ok(());
                            }
                            // After a lost answer the other device may have answered our write
                            // already, bound to a token we never saw: nothing to read it with.
                            return Err(RendezvousError::Conflict);
                        }
                        conflicts += 1;
                        tokio::time::sleep(conflict_backoff(conflicts)).await;
                    }
                    Err(e) => return Err(e),
                },
                // The answer was lost: the write may have landed (the session is ours to delete).
                Err(_) if lost == 0 => {
                    lost += 1;
                    self.owned = true;
                }
                Err(e) => return Err(network(e)),
            }
        }
    }

    /// One read: `Some((data, aad_token))` when the token changed, where `aad_token` is the
    /// token we held before (the precondition of the other side's write).
    pub async fn poll(&mut self) -> Result<Option<(String, String)>> {
        let v = json_of(self.http.get(self.session_url()?).send().await.map_err(network)?).await?;
        let token = field(&v, "sequence_token")?;
        if token == self.token {
            return Ok(None);
        }
        let data = field(&v, "data")?;
        let previous = std::mem::replace(&mut self.token, token);
        Ok(Some((data, previous)))
    }

    /// Ends the session early, if it is ours (created or written by us).
    pub async fn delete(&self) {
        if !self.owned {
            return;
        }
        if let Ok(u) = self.session_url() {
            let _ = self.http.delete(u).send().await;
        }
    }
}

/// The client for rendezvous requests: [`net::client`] (no redirects, short time limits).
pub fn http_client() -> reqwest::Client {
    net::client()
}

#[cfg(test)]
mod tests;
