//! The stand-in servers of the fault-injection harness, as the daemon reaches them: HTTP/1.1 on raw
//! loopback sockets, so that a fault can be any byte-level failure (a reset, a half body, an answer
//! that never comes, the same answer twice on one connection). What they answer is `routes.rs`.
//!
//! It listens twice: the daemon's port numbers every request and applies the plan's fault at its
//! index; the other device's port never faults (the faults are the daemon's to survive). Both ports
//! share one state, so a session created on one is read on the other.

use std::{
    collections::{BTreeMap, HashSet},
    sync::{Arc, Mutex},
    time::Duration,
};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    time::Instant,
};
use url::Url;

use super::{
    Fault,
    routes::{Answer, Request, State, route, step_name},
};

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

/// How far a clock jump moves time (a laptop lid closed over lunch).
pub const CLOCK_JUMP: Duration = Duration::from_secs(600);
/// Extra bytes of an oversized answer: JSON whitespace, so the body stays valid JSON.
const OVERSIZE: usize = 1024 * 1024;

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
async fn read_request(stream: &mut TcpStream, buf: &mut Vec<u8>, side: Side) -> Option<Request> {
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
            return Some(Request { side, method, path, headers, body });
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
    while let Some(req) = read_request(&mut stream, &mut buf, side).await {
        let (fault, step) = {
            let mut s = state.lock().unwrap();
            let step = format!("{} {}", req.method, step_name(&req.path));
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
        let action = {
            let mut s = state.lock().unwrap();
            if fault == Some(Fault::Silent) {
                s.silent = true;
            }
            act(&mut s, fault, &step, &base, &req)
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

/// Applies the request's fault (if any) around what the stand-in answers.
fn act(s: &mut State, fault: Option<Fault>, step: &str, base: &Url, req: &Request) -> Action {
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
    let answer = route(s, base, req);
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
