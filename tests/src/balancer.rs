//! A load balancer in front of the stack's Synapse, as in deployments whose workers do not share
//! rendezvous state at once (element-hq/synapse#18155): a reverse proxy on 127.0.0.1 that forwards
//! every request unchanged and streams the answers back, except that
//!
//! - once [`Balancer::lag`] is called, the first `PUT` of each payload to a rendezvous session
//!   meets a worker that has not caught up: the proxy answers it itself, `412` (2024) or `409`
//!   (latest) as Synapse words them; the same write again is forwarded;
//! - every answer's `Date` (and `Expires`, `Last-Modified`) is two hours ahead of our clock;
//! - a 2024 session's URL names the balancer, not Synapse: its `public_baseurl` would be ours.
//!
//! Only our engine's writes meet the lagging worker (matrix-sdk 0.18 gives up at the first `412`).
//! It tells, per rendezvous session, how many writes each side made and how many it refused. The
//! sides strictly alternate on a session, and in both generations the device that scanned the QR
//! code writes first (the login initiation), the one that showed it second.

use std::{
    convert::Infallible,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, SystemTime},
};

use anyhow::Result;
use bytes::Bytes;
use http_body_util::{BodyExt, Either, Full};
use hyper::{
    Method, Request, Response, StatusCode,
    body::Incoming,
    header::{self, HeaderMap, HeaderValue},
    server::conn::http1,
    service::service_fn,
};
use hyper_util::{
    client::legacy::{Client, connect::HttpConnector},
    rt::{TokioExecutor, TokioIo},
};
use url::Url;

/// How far the balancer's clock is ahead of ours.
pub const SKEW: Duration = Duration::from_secs(2 * 3600);

/// Writes from clients whose `User-Agent` starts so meet the lagging worker.
const RETRYING_AGENT: &str = "matrix-linkd/";

type Body = Either<Incoming, Full<Bytes>>;

/// The rendezvous API of a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Api {
    /// MSC4108 2024: ETag preconditions, `412` on a conflict.
    V2024,
    /// MSC4388: `sequence_token` preconditions, `409` on a conflict.
    Latest,
}

/// A count for each side of a rendezvous session.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Sides {
    /// The device that scanned the QR code (it writes first).
    pub scanner: u32,
    /// The device that showed the QR code (it writes second).
    pub shower: u32,
}

impl Sides {
    fn of(&mut self, write: usize) -> &mut u32 {
        if write.is_multiple_of(2) { &mut self.scanner } else { &mut self.shower }
    }
}

/// What the balancer saw of one rendezvous session.
#[derive(Debug, Clone)]
pub struct SessionReport {
    pub api: Api,
    /// Distinct payloads written.
    pub writes: Sides,
    /// Writes refused by the balancer itself (conflicts it made up).
    pub conflicts: Sides,
}

struct Session {
    path: String,
    /// Each distinct payload, in the order of its first write.
    payloads: Vec<Bytes>,
    report: SessionReport,
}

struct State {
    client: Client<HttpConnector, Body>,
    /// `http://127.0.0.1:<port>` of Synapse and of the balancer.
    upstream: String,
    origin: String,
    lagging: AtomicBool,
    sessions: Mutex<Vec<Session>>,
}

/// The balancer; stops when dropped.
pub struct Balancer {
    url: Url,
    state: Arc<State>,
    task: tokio::task::JoinHandle<()>,
}

impl Balancer {
    /// Starts a balancer in front of `upstream` (the stack's Synapse) on a free loopback port.
    pub async fn start(upstream: &Url) -> Result<Self> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let origin = format!("http://{}", listener.local_addr()?);
        let state = Arc::new(State {
            client: Client::builder(TokioExecutor::new()).build_http(),
            upstream: upstream.origin().ascii_serialization(),
            origin: origin.clone(),
            lagging: AtomicBool::new(false),
            sessions: Mutex::new(Vec::new()),
        });
        let task = tokio::spawn(accept(listener, state.clone()));
        Ok(Self { url: format!("{origin}/").parse()?, state, task })
    }

    /// The balancer's base URL (`http://127.0.0.1:<port>/`): a homeserver URL for clients.
    pub fn url(&self) -> &Url {
        &self.url
    }

    /// From now on the first write of each payload meets a worker that has not caught up.
    pub fn lag(&self) {
        self.state.lagging.store(true, Ordering::Relaxed);
    }

    /// Every rendezvous session written to so far, in the order of its first write.
    pub fn sessions(&self) -> Vec<SessionReport> {
        self.state.sessions.lock().expect("balancer lock").iter().map(|s| s.report.clone()).collect()
    }
}

impl Drop for Balancer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A task per connection; they end with this one (the `JoinSet` aborts them when dropped).
async fn accept(listener: tokio::net::TcpListener, state: Arc<State>) {
    let mut connections = tokio::task::JoinSet::new();
    while let Ok((stream, _)) = listener.accept().await {
        let state = state.clone();
        connections.spawn(async move {
            let service = service_fn(move |req| {
                let state = state.clone();
                async move { Ok::<_, Infallible>(handle(&state, req).await) }
            });
            let _ = http1::Builder::new().serve_connection(TokioIo::new(stream), service).await;
        });
        while connections.try_join_next().is_some() {}
    }
}

/// A write to a rendezvous session, and its API: Synapse's 2024 sessions live at
/// `…/_synapse/client/rendezvous/<id>`, MSC4388 ones at `…/io.element.msc4388/rendezvous/<id>`
/// (stable: `…/v1/rendezvous/<id>`).
fn rendezvous_write(method: &Method, path: &str) -> Option<Api> {
    let (collection, id) = path.rsplit_once('/')?;
    if method != Method::PUT || id.is_empty() || !collection.ends_with("/rendezvous") {
        return None;
    }
    let latest = collection.ends_with("/io.element.msc4388/rendezvous")
        || collection.ends_with("/_matrix/client/v1/rendezvous");
    Some(if latest { Api::Latest } else { Api::V2024 })
}

async fn handle(state: &State, req: Request<Incoming>) -> Response<Body> {
    let path = req.uri().path().to_owned();
    let creates_2024 = req.method() == Method::POST && path.ends_with("/org.matrix.msc4108/rendezvous");
    let req = match rendezvous_write(req.method(), &path) {
        None => req.map(Either::Left),
        Some(api) => {
            let ours = req
                .headers()
                .get(header::USER_AGENT)
                .and_then(|v| v.to_str().ok())
                .is_some_and(|a| a.starts_with(RETRYING_AGENT));
            let (parts, body) = req.into_parts();
            let Ok(body) = body.collect().await.map(|b| b.to_bytes()) else {
                return own_answer(StatusCode::BAD_REQUEST, "{}");
            };
            if state.first_write(&path, api, &body, ours) {
                return match api {
                    Api::V2024 => own_answer(
                        StatusCode::PRECONDITION_FAILED,
                        r#"{"errcode":"M_UNKNOWN","error":"ETag does not match","org.matrix.msc4108.errcode":"M_CONCURRENT_WRITE"}"#,
                    ),
                    Api::Latest => own_answer(
                        StatusCode::CONFLICT,
                        r#"{"errcode":"IO_ELEMENT_MSC4388_CONCURRENT_WRITE","error":"sequence_token does not match"}"#,
                    ),
                };
            }
            Request::from_parts(parts, Either::Right(Full::new(body)))
        }
    };
    let mut answer = match state.forward(req).await {
        Ok(answer) => answer.map(Either::Left),
        Err(_) => return own_answer(StatusCode::BAD_GATEWAY, "{}"),
    };
    if creates_2024 && answer.status().is_success() {
        answer = state.name_us_in(answer).await;
    }
    skew_dates(answer.headers_mut());
    answer
}

impl State {
    /// Records a write of `payload`; whether the balancer refuses it (the first of that payload,
    /// while lagging).
    fn first_write(&self, path: &str, api: Api, payload: &Bytes, ours: bool) -> bool {
        let mut sessions = self.sessions.lock().expect("balancer lock");
        let i = match sessions.iter().position(|s| s.path == path) {
            Some(i) => i,
            None => {
                let report = SessionReport { api, writes: Sides::default(), conflicts: Sides::default() };
                sessions.push(Session { path: path.to_owned(), payloads: Vec::new(), report });
                sessions.len() - 1
            }
        };
        let session = &mut sessions[i];
        if session.payloads.contains(payload) {
            return false;
        }
        let write = session.payloads.len();
        session.payloads.push(payload.clone());
        *session.report.writes.of(write) += 1;
        let refuse = ours && self.lagging.load(Ordering::Relaxed);
        if refuse {
            *session.report.conflicts.of(write) += 1;
        }
        refuse
    }

    /// The request, unchanged, to Synapse.
    async fn forward(&self, mut req: Request<Body>) -> Result<Response<Incoming>> {
        let path = req.uri().path_and_query().map_or("/", |p| p.as_str());
        *req.uri_mut() = format!("{}{path}", self.upstream).parse()?;
        Ok(self.client.request(req).await?)
    }

    /// A 2024 create answer whose session URL names the balancer instead of Synapse.
    async fn name_us_in(&self, answer: Response<Body>) -> Response<Body> {
        let (mut parts, body) = answer.into_parts();
        let body = body.collect().await.map(|b| b.to_bytes()).unwrap_or_default();
        let body = String::from_utf8_lossy(&body).replace(&self.upstream, &self.origin);
        parts.headers.remove(header::CONTENT_LENGTH);
        parts.headers.remove(header::TRANSFER_ENCODING);
        Response::from_parts(parts, Either::Right(Full::new(Bytes::from(body))))
    }
}

/// An answer of the balancer itself (JSON, as Synapse's).
fn own_answer(status: StatusCode, json: &'static str) -> Response<Body> {
    let mut answer = Response::new(Either::Right(Full::new(Bytes::from_static(json.as_bytes()))));
    *answer.status_mut() = status;
    answer.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    skew_dates(answer.headers_mut());
    answer
}

/// The balancer's clock: `Date` is now + [`SKEW`]; `Expires` and `Last-Modified` move as much.
fn skew_dates(headers: &mut HeaderMap) {
    let skewed = |t: SystemTime| HeaderValue::from_str(&httpdate::fmt_http_date(t + SKEW)).ok();
    if let Some(v) = skewed(SystemTime::now()) {
        headers.insert(header::DATE, v);
    }
    for name in [header::EXPIRES, header::LAST_MODIFIED] {
        let moved = headers
            .get(&name)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| httpdate::parse_http_date(v).ok())
            .and_then(skewed);
        if let Some(v) = moved {
            headers.insert(name, v);
        }
    }
}
