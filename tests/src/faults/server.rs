//! The stand-in servers of the fault-injection harness: one in-process homeserver that also runs
//! both generations of rendezvous (2024 `org.matrix.msc4108`, latest `io.element.msc4388`), the
//! OAuth server metadata and the device lookups a grant makes. It speaks HTTP/1.1 on raw loopback
//! sockets so that a fault can be any byte-level failure: a reset, a half body, an answer that never
//! comes, the same answer twice on one connection.
//!
//! It listens twice: the daemon's port numbers every request and applies the plan's fault at its
//! index; the other device's port never faults (the faults are the daemon's to survive). Both ports
//! share one state, so a session created on one is read on the other.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    sync::{Arc, Mutex},
    time::{Duration, SystemTime},
};

use serde_json::{Value, json};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    time::Instant,
};
use url::Url;

use super::Fault;

/// Who sent a request: the daemon under test (its requests are numbered and may fault) or the
/// scripted other device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Daemon,
    Peer,
}

/// One request the daemon made, as the harness reports it.
#[derive(Debug, Clone)]
pub struct Logged {
    pub index: usize,
    /// `METHOD what`, e.g. `PUT rendezvous-2024`.
    pub step: String,
    pub fault: Option<Fault>,
}

const PATH_2024: &str = "/_matrix/client/unstable/org.matrix.msc4108/rendezvous";
const PATH_LATEST: &str = "/_matrix/client/unstable/io.element.msc4388/rendezvous";
/// How long a rendezvous session lives (Synapse's 2024 default).
pub const SESSION_LIFE: Duration = Duration::from_secs(120);
/// How far a clock jump moves time (a laptop lid closed over lunch).
pub const CLOCK_JUMP: Duration = Duration::from_secs(600);
/// Extra bytes of an oversized answer: JSON whitespace, so the body stays valid JSON.
const OVERSIZE: usize = 1024 * 1024;

struct Slot {
    /// The 2024 ETag or the latest sequence token, as a counter.
    version: u64,
    data: String,
    expires: Instant,
    created_by: Side,
}

/// A device authorization the OAuth stand-in handed out.
struct Grant {
    device_id: String,
    approved: bool,
    issued: bool,
}

/// Tokens the OAuth stand-in issued, by token: the device they sign in, and whether revoked.
struct Issued {
    device_id: String,
    revoked: bool,
}

#[derive(Default)]
struct State {
    grants: HashMap<String, Grant>,
    tokens: HashMap<String, Issued>,
    plan: BTreeMap<usize, Fault>,
    next: usize,
    log: Vec<Logged>,
    sessions: HashMap<String, Slot>,
    made: u64,
    devices: HashSet<String>,
    /// The last answer to each step, for a replayed answer.
    answered: HashMap<String, Answer>,
    /// The other device stopped acting (a `Silent` fault hit).
    silent: bool,
    /// `/versions` does not list the 2024 rendezvous (a server with the latest only).
    no_2024: bool,
}

#[derive(Clone)]
struct Answer {
    status: u16,
    headers: Vec<(&'static str, String)>,
    body: Vec<u8>,
}

impl Answer {
    fn json(status: u16, v: Value) -> Self {
        Answer {
            status,
            headers: vec![("Content-Type", "application/json".into())],
            body: v.to_string().into_bytes(),
        }
    }

    fn error(status: u16, errcode: &str) -> Self {
        Self::json(status, json!({ "errcode": errcode, "error": "stand-in" }))
    }

    fn bytes(&self) -> Vec<u8> {
        let reason = match self.status {
            200 => "OK",
            201 => "Created",
            202 => "Accepted",
            204 => "No Content",
            304 => "Not Modified",
            404 => "Not Found",
            409 => "Conflict",
            412 => "Precondition Failed",
            _ => "Status",
        };
        let mut head = format!("HTTP/1.1 {} {reason}\r\n", self.status);
        for (name, value) in &self.headers {
            head.push_str(&format!("{name}: {value}\r\n"));
        }
        if self.status != 204 && self.status != 304 {
            head.push_str(&format!("Content-Length: {}\r\n", self.body.len()));
        }
        head.push_str("\r\n");
        let mut out = head.into_bytes();
        out.extend_from_slice(&self.body);
        out
    }
}

/// What the connection does with a request.
enum Action {
    Answer(Vec<u8>),
    /// Abort the connection (RST) after writing these bytes (maybe none).
    Reset(Vec<u8>),
    /// Write these bytes (a head that promises more) and close cleanly.
    Truncate(Vec<u8>),
    /// Never answer; keep the connection until the client gives up.
    Hold,
}

/// The stand-in homeserver, rendezvous and OAuth server.
#[derive(Clone)]
pub struct StandIn {
    state: Arc<Mutex<State>>,
    /// The daemon's address (faults apply here).
    pub daemon_url: Url,
    /// The other device's address (never faults).
    pub peer_url: Url,
}

impl StandIn {
    pub async fn start(plan: BTreeMap<usize, Fault>) -> Self {
        let state = Arc::new(Mutex::new(State { plan, ..Default::default() }));
        let mut urls = Vec::new();
        for side in [Side::Daemon, Side::Peer] {
            let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
            let url = Url::parse(&format!("http://{}/", listener.local_addr().unwrap())).unwrap();
            urls.push(url.clone());
            let state = state.clone();
            tokio::spawn(async move {
                while let Ok((stream, _)) = listener.accept().await {
                    tokio::spawn(serve(stream, state.clone(), side, url.clone()));
                }
            });
        }
        let peer_url = urls.pop().unwrap();
        Self { state, daemon_url: urls.pop().unwrap(), peer_url }
    }

    /// From now on no request faults (the next flow after a faulted one runs clean).
    pub fn clear_plan(&self) {
        let mut s = self.state.lock().unwrap();
        s.plan.clear();
        s.silent = false;
    }

    /// Numbers the daemon's requests from zero again (after the account's own start-up requests).
    pub fn start_counting(&self) {
        let mut s = self.state.lock().unwrap();
        s.next = 0;
        s.log.clear();
    }

    pub fn log(&self) -> Vec<Logged> {
        self.state.lock().unwrap().log.clone()
    }

    /// From now on `/versions` does not offer the 2024 rendezvous.
    pub fn withdraw_2024(&self) {
        self.state.lock().unwrap().no_2024 = true;
    }

    /// The faults of the plan.
    pub fn plan(&self) -> Vec<Fault> {
        self.state.lock().unwrap().plan.values().copied().collect()
    }

    /// How many clock jumps the plan holds.
    pub fn plan_jumps(&self) -> u32 {
        self.state.lock().unwrap().plan.values().filter(|f| **f == Fault::ClockJump).count() as u32
    }

    pub fn silent(&self) -> bool {
        self.state.lock().unwrap().silent
    }

    /// The new device got its token: the homeserver knows it.
    pub fn add_device(&self, id: &str) {
        self.state.lock().unwrap().devices.insert(id.to_owned());
    }

    /// The user consented on the OAuth server's page: every pending authorization is approved.
    pub fn approve(&self) {
        for grant in self.state.lock().unwrap().grants.values_mut() {
            grant.approved = true;
        }
    }

    /// Devices that hold tokens the OAuth server issued and nobody revoked.
    pub fn live_token_devices(&self) -> HashSet<String> {
        let s = self.state.lock().unwrap();
        s.tokens.values().filter(|t| !t.revoked).map(|t| t.device_id.clone()).collect()
    }

    pub fn has_device(&self, id: &str) -> bool {
        self.state.lock().unwrap().devices.contains(id)
    }

    /// Whether the session `id` (its last path segment) still exists and has not expired.
    pub fn session_open(&self, id: &str) -> bool {
        let s = self.state.lock().unwrap();
        s.sessions.get(id).is_some_and(|slot| slot.expires > Instant::now())
    }

    /// Sessions the daemon created that are still open.
    pub fn daemons_open_sessions(&self) -> usize {
        let s = self.state.lock().unwrap();
        let now = Instant::now();
        s.sessions.values().filter(|slot| slot.created_by == Side::Daemon && slot.expires > now).count()
    }
}

/// Reads one request: head and `Content-Length` body. `None` when the client closed.
async fn read_request(
    stream: &mut TcpStream,
    buf: &mut Vec<u8>,
) -> Option<(String, String, Vec<(String, String)>, Vec<u8>)> {
    loop {
        let mut headers = [httparse::EMPTY_HEADER; 64];
        let mut req = httparse::Request::new(&mut headers);
        if let Ok(httparse::Status::Complete(head_len)) = req.parse(buf) {
            let method = req.method?.to_owned();
            let path = req.path?.to_owned();
            let headers: Vec<(String, String)> = req
                .headers
                .iter()
                .map(|h| (h.name.to_ascii_lowercase(), String::from_utf8_lossy(h.value).into_owned()))
                .collect();
            let len = headers
                .iter()
                .find(|(n, _)| n == "content-length")
                .and_then(|(_, v)| v.parse::<usize>().ok())
                .unwrap_or(0);
            while buf.len() < head_len + len {
                let mut chunk = [0u8; 8192];
                let n = stream.read(&mut chunk).await.ok()?;
                if n == 0 {
                    return None;
                }
                buf.extend_from_slice(&chunk[..n]);
            }
            let body = buf[head_len..head_len + len].to_vec();
            buf.drain(..head_len + len);
            return Some((method, path, headers, body));
        }
        if buf.len() > 64 * 1024 {
            return None;
        }
        let mut chunk = [0u8; 8192];
        let n = stream.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

async fn serve(mut stream: TcpStream, state: Arc<Mutex<State>>, side: Side, base: Url) {
    let mut buf = Vec::new();
    while let Some((method, path, headers, body)) = read_request(&mut stream, &mut buf).await {
        let (fault, step) = {
            let mut s = state.lock().unwrap();
            let step = format!("{method} {}", step_name(&path));
            match side {
                Side::Daemon => {
                    let index = s.next;
                    s.next += 1;
                    let fault = s.plan.get(&index).copied();
                    s.log.push(Logged { index, step: step.clone(), fault });
                    (fault, step)
                }
                Side::Peer => (None, step),
            }
        };
        if fault == Some(Fault::ClockJump) {
            tokio::time::advance(CLOCK_JUMP).await;
        }
        let header = |name: &str| headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.clone());
        let action = {
            let mut s = state.lock().unwrap();
            if fault == Some(Fault::Silent) {
                s.silent = true;
            }
            act(&mut s, fault, &step, side, &base, &method, &path, &header, &body)
        };
        match action {
            Action::Answer(bytes) => {
                if stream.write_all(&bytes).await.is_err() {
                    return;
                }
            }
            Action::Reset(bytes) => {
                let _ = stream.write_all(&bytes).await;
                let _ = socket2::SockRef::from(&stream).set_linger(Some(Duration::ZERO));
                return;
            }
            Action::Truncate(bytes) => {
                let _ = stream.write_all(&bytes).await;
                let _ = stream.shutdown().await;
                return;
            }
            Action::Hold => {
                let mut sink = [0u8; 1024];
                while matches!(stream.read(&mut sink).await, Ok(n) if n > 0) {}
                return;
            }
        }
    }
}

/// The step a request is: method and what it is for, without IDs.
fn step_of(path: &str) -> &'static str {
    let path = path.split('?').next().unwrap_or(path);
    if path == "/_matrix/client/versions" {
        "versions"
    } else if path.ends_with("/auth_metadata") {
        "auth-metadata"
    } else if path.starts_with(PATH_2024) {
        "rendezvous-2024"
    } else if path == PATH_LATEST {
        "rendezvous-latest"
    } else if path.starts_with(PATH_LATEST) {
        "rendezvous-latest-session"
    } else if path.contains("/devices/") {
        "device"
    } else if let Some(oauth) = path.strip_prefix("/oauth/") {
        match oauth {
            "register" => "oauth-register",
            "device" => "oauth-device",
            "token" => "oauth-token",
            "revoke" => "oauth-revoke",
            _ => "other",
        }
    } else if path.ends_with("/account/whoami") {
        "whoami"
    } else {
        "other"
    }
}

/// The step of a request, with the path of an unknown one (for the harness's own log).
fn step_name(path: &str) -> String {
    match step_of(path) {
        "other" => format!("other {}", path.split('?').next().unwrap_or(path)),
        known => known.to_owned(),
    }
}

#[allow(clippy::too_many_arguments)]
fn act(
    s: &mut State,
    fault: Option<Fault>,
    step: &str,
    side: Side,
    base: &Url,
    method: &str,
    path: &str,
    header: &dyn Fn(&str) -> Option<String>,
    body: &[u8],
) -> Action {
    // Faults where the request never reaches the homeserver.
    let refused = match fault {
        Some(Fault::Refused) => Some(Action::Reset(Vec::new())),
        Some(Fault::Status(code)) => Some(Action::Answer(
            Answer::error(
                code,
                if matches!(code, 409 | 412) {
                    "M_CONCURRENT_WRITE"
                } else if code == 404 {
                    "M_NOT_FOUND"
                } else {
                    "M_UNKNOWN"
                },
            )
            .bytes(),
        )),
        _ => None,
    };
    if let Some(action) = refused {
        return action;
    }
    let answer = route(s, side, base, method, path, header, body);
    let previous = s.answered.insert(step.to_owned(), answer.clone());
    let bytes = answer.bytes();
    match fault {
        Some(Fault::Reset) => Action::Reset(bytes[..bytes.len() - answer.body.len() / 2 - 1].to_vec()),
        Some(Fault::Truncated) => Action::Truncate(bytes[..bytes.len() - answer.body.len() / 2 - 1].to_vec()),
        Some(Fault::Timeout) => Action::Hold,
        Some(Fault::Oversized) => {
            let mut big = answer.clone();
            big.body.extend(std::iter::repeat_n(b' ', OVERSIZE));
            Action::Answer(big.bytes())
        }
        Some(Fault::Replayed) => Action::Answer(previous.unwrap_or(answer).bytes()),
        Some(Fault::Duplicated) => {
            let mut twice = bytes.clone();
            twice.extend_from_slice(&bytes);
            Action::Answer(twice)
        }
        _ => Action::Answer(bytes),
    }
}

fn http_date(at: SystemTime) -> String {
    httpdate::fmt_http_date(at)
}

fn route(
    s: &mut State,
    side: Side,
    base: &Url,
    method: &str,
    path: &str,
    header: &dyn Fn(&str) -> Option<String>,
    body: &[u8],
) -> Answer {
    let path = path.split('?').next().unwrap_or(path);
    let now = Instant::now();
    s.sessions.retain(|_, slot| slot.expires > now);
    match (method, path) {
        ("GET", "/_matrix/client/versions") => Answer::json(
            200,
            json!({
                "versions": ["v1.1", "v1.5", "v1.11", "v1.12", "v1.13"],
                "unstable_features": { "org.matrix.msc4108": !s.no_2024 }
            }),
        ),
        ("GET", p) if p.ends_with("/auth_metadata") => {
            let issuer = base.join("oauth/").unwrap();
            let at = |p: &str| issuer.join(p).unwrap().to_string();
            Answer::json(
                200,
                json!({
                    "issuer": issuer.as_str(),
                    "authorization_endpoint": at("authorize"),
                    "token_endpoint": at("token"),
                    "device_authorization_endpoint": at("device"),
                    "registration_endpoint": at("register"),
                    "revocation_endpoint": at("revoke"),
                    "grant_types_supported": ["authorization_code", "refresh_token",
                        "urn:ietf:params:oauth:grant-type:device_code"],
                    "response_types_supported": ["code"],
                    "response_modes_supported": ["query", "fragment"],
                    "code_challenge_methods_supported": ["S256"],
                }),
            )
        }
        ("POST", PATH_2024) => {
            s.made += 1;
            let id = format!("rv{}", s.made);
            s.sessions.insert(
                id.clone(),
                Slot { version: 1, data: String::new(), expires: now + SESSION_LIFE, created_by: side },
            );
            let mut a =
                Answer::json(201, json!({ "url": base.join(&format!("{}/{id}", &PATH_2024[1..])).unwrap() }));
            a.headers.extend(headers_2024(1, SESSION_LIFE));
            a
        }
        (_, p) if p.starts_with(PATH_2024) => {
            let id = p.rsplit('/').next().unwrap_or_default().to_owned();
            let Some(slot) = s.sessions.get_mut(&id) else { return Answer::error(404, "M_NOT_FOUND") };
            let etag = format!("\"{}\"", slot.version);
            let left = slot.expires - now;
            match method {
                "GET" if header("if-none-match").as_deref() == Some(etag.as_str()) => Answer {
                    status: 304,
                    headers: headers_2024(slot.version, left).to_vec(),
                    body: Vec::new(),
                },
                "GET" => Answer {
                    status: 200,
                    headers: [("Content-Type", "text/plain".into())]
                        .into_iter()
                        .chain(headers_2024(slot.version, left))
                        .collect(),
                    body: slot.data.clone().into_bytes(),
                },
                "PUT" if header("if-match").is_some_and(|m| m != etag) => {
                    let mut a = Answer::error(412, "M_CONCURRENT_WRITE");
                    a.headers.extend(headers_2024(slot.version, left));
                    a
                }
                "PUT" => {
                    slot.version += 1;
                    slot.data = String::from_utf8_lossy(body).into_owned();
                    Answer {
                        status: 202,
                        headers: headers_2024(slot.version, left).to_vec(),
                        body: Vec::new(),
                    }
                }
                "DELETE" => {
                    s.sessions.remove(&id);
                    Answer { status: 204, headers: Vec::new(), body: Vec::new() }
                }
                _ => Answer::error(405, "M_UNRECOGNIZED"),
            }
        }
        ("GET", PATH_LATEST) => Answer::json(200, json!({ "create_available": true })),
        ("POST", PATH_LATEST) => {
            s.made += 1;
            let id = format!("rv{}", s.made);
            s.sessions.insert(
                id.clone(),
                Slot { version: 1, data: String::new(), expires: now + SESSION_LIFE, created_by: side },
            );
            Answer::json(
                200,
                json!({ "id": id, "sequence_token": "t1", "expires_in_ms": SESSION_LIFE.as_millis() as u64 }),
            )
        }
        (_, p) if p.starts_with(PATH_LATEST) => {
            let id = p.rsplit('/').next().unwrap_or_default().to_owned();
            let Some(slot) = s.sessions.get_mut(&id) else { return Answer::error(404, "M_NOT_FOUND") };
            let left = (slot.expires - now).as_millis() as u64;
            match method {
                "GET" => Answer::json(
                    200,
                    json!({ "sequence_token": format!("t{}", slot.version), "data": slot.data, "expires_in_ms": left }),
                ),
                "PUT" => {
                    let v: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
                    if v.get("sequence_token").and_then(Value::as_str) != Some(&format!("t{}", slot.version))
                    {
                        return Answer::error(409, "M_CONCURRENT_WRITE");
                    }
                    slot.version += 1;
                    slot.data = v.get("data").and_then(Value::as_str).unwrap_or_default().to_owned();
                    Answer::json(200, json!({ "sequence_token": format!("t{}", slot.version) }))
                }
                "DELETE" => {
                    s.sessions.remove(&id);
                    Answer::json(200, json!({}))
                }
                _ => Answer::error(405, "M_UNRECOGNIZED"),
            }
        }
        ("POST", "/oauth/register") => {
            s.made += 1;
            Answer::json(201, json!({ "client_id": format!("client{}", s.made) }))
        }
        ("POST", "/oauth/device") => {
            let form = form(body);
            let scope = form.get("scope").cloned().unwrap_or_default();
            let device_id = scope.rsplit(":device:").next().unwrap_or_default().to_owned();
            s.made += 1;
            let code = format!("dc{}", s.made);
            s.grants.insert(code.clone(), Grant { device_id, approved: false, issued: false });
            let page = base.join("oauth/device").unwrap();
            Answer::json(
                200,
                json!({
                    "device_code": code,
                    "user_code": "FAULTS",
                    "verification_uri": page.as_str(),
                    "verification_uri_complete": format!("{page}?user_code=FAULTS"),
                    "expires_in": 600,
                    "interval": 1,
                }),
            )
        }
        ("POST", "/oauth/token") => {
            let form = form(body);
            let code = form.get("device_code").cloned().unwrap_or_default();
            let Some(grant) = s.grants.get_mut(&code) else {
                return Answer::json(400, json!({ "error": "invalid_grant" }));
            };
            if !grant.approved {
                return Answer::json(400, json!({ "error": "authorization_pending" }));
            }
            if grant.issued {
                return Answer::json(400, json!({ "error": "invalid_grant" }));
            }
            grant.issued = true;
            let device_id = grant.device_id.clone();
            s.made += 1;
            let (access, refresh) = (format!("at{}", s.made), format!("rt{}", s.made));
            for token in [&access, &refresh] {
                s.tokens.insert(token.clone(), Issued { device_id: device_id.clone(), revoked: false });
            }
            s.devices.insert(device_id);
            Answer::json(
                200,
                json!({ "access_token": access, "refresh_token": refresh, "token_type": "Bearer", "expires_in": 300 }),
            )
        }
        ("POST", "/oauth/revoke") => {
            let form = form(body);
            let token = form.get("token").cloned().unwrap_or_default();
            // Revoking either token ends the device's session (as MAS does).
            if let Some(device) = s.tokens.get(&token).map(|t| t.device_id.clone()) {
                for t in s.tokens.values_mut().filter(|t| t.device_id == device) {
                    t.revoked = true;
                }
                s.devices.remove(&device);
            }
            Answer::json(200, json!({}))
        }
        ("GET", "/_matrix/client/v3/account/whoami") => {
            let token = header("authorization").unwrap_or_default();
            let token = token.strip_prefix("Bearer ").unwrap_or_default();
            match s.tokens.get(token) {
                Some(t) if !t.revoked => {
                    Answer::json(200, json!({ "user_id": "@example:localhost", "device_id": t.device_id }))
                }
                _ => Answer::error(401, "M_UNKNOWN_TOKEN"),
            }
        }
        ("PUT", p) if p.contains("/devices/") => Answer::json(200, json!({})),
        ("GET", p) if p.contains("/devices/") => {
            let id = p.rsplit('/').next().unwrap_or_default();
            if s.devices.contains(id) {
                Answer::json(200, json!({ "device_id": id }))
            } else {
                Answer::error(404, "M_NOT_FOUND")
            }
        }
        _ => Answer::error(404, "M_UNRECOGNIZED"),
    }
}

/// A form body's fields.
fn form(body: &[u8]) -> HashMap<String, String> {
    url::form_urlencoded::parse(body).into_owned().collect()
}

/// `ETag`, `Date` and `Expires` of a 2024 session with `left` to live.
fn headers_2024(version: u64, left: Duration) -> [(&'static str, String); 3] {
    let now = SystemTime::now();
    [("ETag", format!("\"{version}\"")), ("Date", http_date(now)), ("Expires", http_date(now + left))]
}
