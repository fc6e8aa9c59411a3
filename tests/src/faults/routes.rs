//! The stand-in's state and what it answers: a homeserver with both generations of rendezvous
//! (2024 `org.matrix.msc4108`, latest `io.element.msc4388`), device lookups and renames, `whoami`,
//! and an OAuth server (metadata, registration, device authorization, tokens, revocation). The
//! connection layer and the faults are `server.rs`.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    time::{Duration, SystemTime},
};

use serde_json::{Value, json};
use tokio::time::Instant;
use url::Url;

use super::{
    Fault,
    server::{Logged, Side},
};

const PATH_2024: &str = "/_matrix/client/unstable/org.matrix.msc4108/rendezvous";
const PATH_LATEST: &str = "/_matrix/client/unstable/io.element.msc4388/rendezvous";
/// How long a rendezvous session lives (Synapse's 2024 default).
pub const SESSION_LIFE: Duration = Duration::from_secs(120);
pub(super) struct Slot {
    /// The 2024 ETag or the latest sequence token, as a counter.
    pub(super) version: u64,
    pub(super) data: String,
    pub(super) expires: Instant,
    pub(super) created_by: Side,
}

/// A device authorization the OAuth stand-in handed out.
pub(super) struct Grant {
    pub(super) device_id: String,
    pub(super) approved: bool,
    pub(super) issued: bool,
}

/// Tokens the OAuth stand-in issued, by token: the device they sign in, and whether revoked.
pub(super) struct Issued {
    pub(super) device_id: String,
    pub(super) revoked: bool,
}

#[derive(Default)]
pub(super) struct State {
    pub(super) grants: HashMap<String, Grant>,
    pub(super) tokens: HashMap<String, Issued>,
    pub(super) plan: BTreeMap<usize, Fault>,
    pub(super) next: usize,
    pub(super) log: Vec<Logged>,
    pub(super) sessions: HashMap<String, Slot>,
    pub(super) made: u64,
    pub(super) devices: HashSet<String>,
    /// The last answer to each step, for a replayed answer.
    pub(super) answered: HashMap<String, Answer>,
    /// The other device stopped acting (a `Silent` fault hit).
    pub(super) silent: bool,
    /// `/versions` does not list the 2024 rendezvous (a server with the latest only).
    pub(super) no_2024: bool,
}

#[derive(Clone)]
pub(super) struct Answer {
    pub(super) status: u16,
    pub(super) headers: Vec<(&'static str, String)>,
    pub(super) body: Vec<u8>,
}

impl Answer {
    pub(super) fn json(status: u16, v: Value) -> Self {
        Answer {
            status,
            headers: vec![("Content-Type", "application/json".into())],
            body: v.to_string().into_bytes(),
        }
    }

    pub(super) fn error(status: u16, errcode: &str) -> Self {
        Self::json(status, json!({ "errcode": errcode, "error": "stand-in" }))
    }

    pub(super) fn bytes(&self) -> Vec<u8> {
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
    } else if path.ends_with("/keys/upload") {
        "keys-upload"
    } else if path.ends_with("/keys/query") {
        "keys-query"
    } else if path.ends_with("/room_keys/version") {
        "backup-version"
    } else if path.contains("/account_data/") {
        "account-data"
    } else {
        "other"
    }
}

/// The step of a request, with the path of an unknown one (for the harness's own log).
pub(super) fn step_name(path: &str) -> String {
    match step_of(path) {
        "other" => format!("other {}", path.split('?').next().unwrap_or(path)),
        known => known.to_owned(),
    }
}

fn http_date(at: SystemTime) -> String {
    httpdate::fmt_http_date(at)
}

/// One request as the stand-in read it.
pub(super) struct Request {
    pub(super) side: Side,
    pub(super) method: String,
    pub(super) path: String,
    /// Names in lower case.
    pub(super) headers: Vec<(String, String)>,
    pub(super) body: Vec<u8>,
}

impl Request {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }
}

impl State {
    /// A new rendezvous session (either generation): its ID.
    fn new_session(&mut self, side: Side, now: Instant) -> String {
        self.made += 1;
        let id = format!("rv{}", self.made);
        let slot = Slot { version: 1, data: String::new(), expires: now + SESSION_LIFE, created_by: side };
        self.sessions.insert(id.clone(), slot);
        id
    }
}

/// What the stand-in answers to one request; sessions past their end are gone first.
pub(super) fn route(s: &mut State, base: &Url, req: &Request) -> Answer {
    let (method, body, side) = (req.method.as_str(), req.body.as_slice(), req.side);
    let header = |name: &str| req.header(name).map(str::to_owned);
    let path = req.path.split('?').next().unwrap_or(&req.path);
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
            let id = s.new_session(side, now);
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
            let id = s.new_session(side, now);
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
        // What a new session's encryption asks for when it imports the secrets (login): its
        // device keys go up, its own keys are looked up; there is no key backup.
        ("POST", p) if p.ends_with("/keys/upload") => {
            Answer::json(200, json!({ "one_time_key_counts": { "signed_curve25519": 50 } }))
        }
        ("POST", p) if p.ends_with("/keys/query") => {
            Answer::json(200, json!({ "device_keys": {}, "failures": {} }))
        }
        ("GET", p) if p.ends_with("/room_keys/version") => Answer::error(404, "M_NOT_FOUND"),
        ("GET", p) if p.contains("/account_data/") => Answer::error(404, "M_NOT_FOUND"),
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
