//! A homeserver for fast tests: matrix-sdk's `MatrixMockServer` (versions, OAuth metadata and
//! registration, crypto endpoints) plus our own stateful pieces: a multi-session 2024 rendezvous,
//! a device authorization grant with a plan of token answers, `whoami` by token, and device
//! existence checks (404 first, 200 after).

use std::{
    collections::{HashMap, VecDeque},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::Duration,
};

use matrix_sdk::{
    Client,
    authentication::oauth::{
        ClientRegistrationData,
        registration::{ApplicationType, ClientMetadata, Localized, OAuthGrantType},
    },
    ruma::{OwnedUserId, UserId, serde::Raw},
    test_utils::mocks::MatrixMockServer,
};
use serde_json::json;
use wiremock::{
    Mock, Request, Respond, ResponseTemplate,
    http::Method,
    matchers::{method, path, path_regex},
};

/// The test user everybody signs in as.
pub const USER: &str = "@alice:localhost";

/// What the token endpoint answers next.
#[derive(Debug, Clone)]
pub enum TokenAnswer {
    Tokens { access: String, refresh: String },
    Error(&'static str),
}

#[derive(Default)]
struct TokenPlan {
    queue: Mutex<VecDeque<TokenAnswer>>,
    /// access token -> user
    users: Mutex<HashMap<String, OwnedUserId>>,
    /// access token -> device, for tokens planned for a known device (else `WHOAMI`)
    devices: Mutex<HashMap<String, String>>,
    /// The device of the latest device authorization: tokens handed out go to it.
    next_device: Mutex<Option<String>>,
    issued: Mutex<Vec<String>>,
}

/// The token endpoint, answering from the plan.
struct Token(Arc<TokenPlan>);

impl Respond for Token {
    fn respond(&self, _req: &Request) -> ResponseTemplate {
        match self.0.queue.lock().unwrap().pop_front() {
            None => ResponseTemplate::new(400).set_body_json(json!({"error": "authorization_pending"})),
            Some(TokenAnswer::Error(e)) => ResponseTemplate::new(400).set_body_json(json!({ "error": e })),
            Some(TokenAnswer::Tokens { access, refresh }) => {
                self.0.issued.lock().unwrap().push(access.clone());
                if let Some(device) = self.0.next_device.lock().unwrap().clone() {
                    self.0.devices.lock().unwrap().entry(access.clone()).or_insert(device);
                }
                ResponseTemplate::new(200).set_body_json(json!({
                    "access_token": access,
                    "refresh_token": refresh,
                    "token_type": "Bearer",
                    "expires_in": 3600,
                }))
            }
        }
    }
}

/// `whoami` answered from the token map.
struct WhoAmI(Arc<TokenPlan>);

/// `whoami` answered from the token map after a delay (a slow or far homeserver).
struct SlowWhoAmI(Arc<TokenPlan>, Duration);

impl Respond for SlowWhoAmI {
    fn respond(&self, req: &Request) -> ResponseTemplate {
        WhoAmI(self.0.clone()).respond(req).set_delay(self.1)
    }
}

impl Respond for WhoAmI {
    fn respond(&self, req: &Request) -> ResponseTemplate {
        let token = req
            .headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or_default()
            .to_owned();
        let device = self.0.devices.lock().unwrap().get(&token).cloned().unwrap_or_else(|| "WHOAMI".into());
        match self.0.users.lock().unwrap().get(&token) {
            Some(user) => {
                ResponseTemplate::new(200).set_body_json(json!({"user_id": user, "device_id": device}))
            }
            None => ResponseTemplate::new(401)
                .set_body_json(json!({"errcode": "M_UNKNOWN_TOKEN", "error": "unknown token"})),
        }
    }
}

/// Device authorization with a fresh user code per request, 1 s interval (or, once `extreme` is
/// set, `u64::MAX` for both numbers, as a hostile server might send).
struct DeviceAuthorization {
    base: String,
    counter: AtomicU64,
    codes: Arc<Mutex<Vec<String>>>,
    extreme: Arc<AtomicBool>,
    tokens: Arc<TokenPlan>,
}

impl Respond for DeviceAuthorization {
    fn respond(&self, req: &Request) -> ResponseTemplate {
        // The device the scope asks for: tokens issued next are that device's (`whoami`).
        let body = String::from_utf8_lossy(&req.body).into_owned();
        let scope = url::form_urlencoded::parse(body.as_bytes()).find(|(k, _)| k == "scope").map(|(_, v)| v);
        if let Some(device) =
            scope.as_deref().and_then(|s| s.split(' ').find_map(|p| p.rsplit_once(":device:")))
        {
            *self.tokens.next_device.lock().unwrap() = Some(device.1.to_owned());
        }
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        let user_code = format!("UC{:04}{}", n, &random_hex(3).to_uppercase());
        self.codes.lock().unwrap().push(user_code.clone());
        ResponseTemplate::new(200).set_body_json(json!({
            "device_code": format!("devicecode{n}"),
            "user_code": user_code,
            "verification_uri": format!("{}/link", self.base),
            "verification_uri_complete": format!("{}/link?code={user_code}", self.base),
            "expires_in": if self.extreme.load(Ordering::Relaxed) { u64::MAX } else { 600 },
            "interval": if self.extreme.load(Ordering::Relaxed) { u64::MAX } else { 1 },
        }))
    }
}

/// `GET /devices/{id}`: 404 the first time an ID is asked for (before consent), 200 after.
#[derive(Default)]
struct Devices {
    seen: Arc<Mutex<HashMap<String, u32>>>,
}

impl Respond for Devices {
    fn respond(&self, req: &Request) -> ResponseTemplate {
        let id = req.url.path().rsplit('/').next().unwrap_or_default().to_owned();
        if req.method == Method::PUT {
            return ResponseTemplate::new(200).set_body_json(json!({}));
        }
        let mut seen = self.seen.lock().unwrap();
        let n = seen.entry(id.clone()).or_insert(0);
        *n = n.saturating_add(1);
        if *n == 1 || *n == u32::MAX {
            ResponseTemplate::new(404)
                .set_body_json(json!({"errcode": "M_NOT_FOUND", "error": "no such device"}))
        } else {
            let id = percent_decode(&id);
            ResponseTemplate::new(200).set_body_json(json!({"device_id": id, "display_name": "new device"}))
        }
    }
}

fn percent_decode(s: &str) -> String {
    url::form_urlencoded::parse(format!("x={s}").as_bytes())
        .next()
        .map(|(_, v)| v.into_owned())
        .unwrap_or_default()
}

/// The 2024 rendezvous (ETag API), many sessions at once, each living `ttl` seconds from its
/// creation (60 s, as on Synapse, unless changed), with an expiry switch.
#[derive(Clone, Default)]
pub struct Rendezvous {
    base: String,
    state: Arc<Mutex<Slots>>,
    expired: Arc<AtomicBool>,
    requests: Arc<AtomicU64>,
    ttl: Arc<AtomicU64>,
    /// The next sessions' lifetime and how many of them are left to live it (then `ttl` again).
    next_ttls: Arc<Mutex<(u64, u64)>>,
    /// Behind a "load balancer": the daemon's first write of each payload meets a worker that has
    /// not caught up (412), and every `Date` is two hours ahead.
    lagging: Arc<AtomicBool>,
}

#[derive(Default)]
struct Slots {
    next_id: u64,
    /// id -> (ETag, payload, end of life)
    by_id: HashMap<String, (u64, Vec<u8>, std::time::SystemTime)>,
    /// Payloads whose first write was refused already (`lagging`).
    refused: std::collections::HashSet<Vec<u8>>,
}

fn with_headers(
    t: ResponseTemplate,
    etag: u64,
    expires: std::time::SystemTime,
    skew: u64,
) -> ResponseTemplate {
    let now = std::time::SystemTime::now();
    let skew = std::time::Duration::from_secs(skew);
    t.insert_header("ETag", format!("\"{etag}\""))
        .insert_header("Date", httpdate::fmt_http_date(now + skew))
        .insert_header("Expires", httpdate::fmt_http_date(expires + skew))
        .insert_header("Last-Modified", httpdate::fmt_http_date(now + skew))
}

impl Respond for Rendezvous {
    fn respond(&self, req: &Request) -> ResponseTemplate {
        self.requests.fetch_add(1, Ordering::Relaxed);
        let not_found = || {
            ResponseTemplate::new(404)
                .set_body_json(json!({ "errcode": "M_NOT_FOUND", "error": "not found" }))
        };
        let lagging = self.lagging.load(Ordering::Relaxed);
        let skew = if lagging { 7200 } else { 0 };
        let with_headers = |t, etag, expires| with_headers(t, etag, expires, skew);
        let mut st = self.state.lock().unwrap();
        let st = &mut *st;
        if req.method == Method::POST {
            st.next_id += 1;
            let id = format!("s{}", st.next_id);
            let ttl = {
                let mut next = self.next_ttls.lock().unwrap();
                match (*next, self.ttl.load(Ordering::Relaxed)) {
                    ((secs, left @ 1..), _) => {
                        *next = (secs, left - 1);
                        secs
                    }
                    (_, 0) => 60,
                    (_, s) => s,
                }
            };
            let expires = std::time::SystemTime::now() + std::time::Duration::from_secs(ttl);
            st.by_id.insert(id.clone(), (1, req.body.clone(), expires));
            let url = format!("{}/rendezvous/{id}", self.base);
            return with_headers(ResponseTemplate::new(201).set_body_json(json!({ "url": url })), 1, expires);
        }
        if self.expired.load(Ordering::Relaxed) {
            return not_found();
        }
        let id = req.url.path().rsplit('/').next().unwrap_or_default().to_owned();
        let Some((etag, body, expires)) = st.by_id.get_mut(&id) else { return not_found() };
        let expires = *expires;
        if std::time::SystemTime::now() >= expires && req.method != Method::DELETE {
            return not_found();
        }
        let header = |name: &str| req.headers.get(name).and_then(|v| v.to_str().ok()).map(str::to_owned);
        let current = Some(format!("\"{etag}\""));
        match req.method {
            Method::GET => {
                if header("if-none-match") == current {
                    return with_headers(ResponseTemplate::new(304), *etag, expires);
                }
                with_headers(
                    ResponseTemplate::new(200).set_body_raw(body.clone(), "text/plain"),
                    *etag,
                    expires,
                )
            }
            Method::PUT => {
                let ours = header("user-agent").is_some_and(|a| a.starts_with("matrix-linkd/"));
                if lagging && ours && st.refused.insert(req.body.clone()) {
                    return ResponseTemplate::new(412).set_body_json(
                        json!({ "errcode": "M_UNKNOWN", "org.matrix.msc4108.errcode": "M_CONCURRENT_WRITE" }),
                    );
                }
                if header("if-match") != current {
                    return ResponseTemplate::new(412).set_body_json(
                        json!({ "errcode": "M_UNKNOWN", "org.matrix.msc4108.errcode": "M_CONCURRENT_WRITE" }),
                    );
                }
                *body = req.body.clone();
                *etag += 1;
                with_headers(ResponseTemplate::new(202), *etag, expires)
            }
            Method::DELETE => {
                st.by_id.remove(&id);
                ResponseTemplate::new(204)
            }
            _ => ResponseTemplate::new(405),
        }
    }
}

/// The mock homeserver of one test.
pub struct MockHomeserver {
    pub server: MatrixMockServer,
    tokens: Arc<TokenPlan>,
    token_counter: AtomicU64,
    rendezvous: Rendezvous,
    user_codes: Arc<Mutex<Vec<String>>>,
    extreme_numbers: Arc<AtomicBool>,
    devices: Arc<Mutex<HashMap<String, u32>>>,
}

impl MockHomeserver {
    pub async fn start() -> Self {
        let server = MatrixMockServer::new().await;
        let base = server.uri();
        server.mock_versions().ok().mount().await;
        server.mock_crypto_endpoints_preset().await;
        server.oauth().mock_server_metadata().ok().mount().await;
        server.oauth().mock_registration().ok().mount().await;
        server.oauth().mock_revocation().ok().mount().await;
        let tokens = Arc::new(TokenPlan::default());
        let devices = Arc::new(Mutex::new(HashMap::new()));
        let user_codes = Arc::new(Mutex::new(Vec::new()));
        let extreme_numbers = Arc::new(AtomicBool::new(false));
        Mock::given(method("POST"))
            .and(path("/oauth2/device"))
            .respond_with(DeviceAuthorization {
                base: base.clone(),
                counter: AtomicU64::new(0),
                codes: user_codes.clone(),
                extreme: extreme_numbers.clone(),
                tokens: tokens.clone(),
            })
            .mount(server.server())
            .await;
        Mock::given(method("POST"))
            .and(path("/oauth2/token"))
            .respond_with(Token(tokens.clone()))
            .mount(server.server())
            .await;
        Mock::given(method("GET"))
            .and(path("/_matrix/client/v3/account/whoami"))
            .respond_with(WhoAmI(tokens.clone()))
            .mount(server.server())
            .await;
        Mock::given(path_regex(r"^/_matrix/client/v3/devices/.+"))
            .respond_with(Devices { seen: devices.clone() })
            .mount(server.server())
            .await;
        let rendezvous = Rendezvous { base: base.clone(), ..Default::default() };
        Mock::given(method("POST"))
            .and(path("/_matrix/client/unstable/org.matrix.msc4108/rendezvous"))
            .respond_with(rendezvous.clone())
            .mount(server.server())
            .await;
        Mock::given(path_regex(r"^/rendezvous/"))
            .respond_with(rendezvous.clone())
            .mount(server.server())
            .await;
        Self {
            server,
            tokens,
            token_counter: AtomicU64::new(0),
            rendezvous,
            user_codes,
            extreme_numbers,
            devices,
        }
    }

    /// From now on `GET /devices/{id}` finds `id` (as if the device had been created).
    pub fn device_exists(&self, id: &str) {
        *self.devices.lock().unwrap().entry(id.to_owned()).or_insert(0) = 1;
    }

    /// From now on `GET /devices/{id}` does not find `id` (as if its session had ended).
    pub fn device_gone(&self, id: &str) {
        self.devices.lock().unwrap().insert(id.to_owned(), u32::MAX - 1);
    }

    /// Requests the mock received whose path contains `part`.
    pub async fn requests_to(&self, part: &str) -> Vec<wiremock::Request> {
        let all = self.server.server().received_requests().await.unwrap_or_default();
        all.into_iter().filter(|r| r.url.path().contains(part)).collect()
    }

    pub fn uri(&self) -> String {
        self.server.uri()
    }

    /// Mints a token the crypto mocks know for `USER` (numbering follows the mock's counter).
    fn mint(&self, device: &str) -> (String, matrix_sdk::test_utils::client::MockClientBuilder) {
        let n = self.token_counter.fetch_add(1, Ordering::Relaxed);
        let user = UserId::parse(USER).unwrap();
        let builder = self
            .server
            .client_builder_for_crypto_end_to_end(&user, &matrix_sdk::ruma::OwnedDeviceId::from(device));
        let token = format!("TOKEN_{n}");
        self.tokens.users.lock().unwrap().insert(token.clone(), user);
        (token, builder)
    }

    /// The next successful token answer: a token the crypto mocks accept for `USER`.
    pub fn plan_login(&self) -> String {
        let (token, _) = self.mint("UNUSED");
        self.tokens
            .queue
            .lock()
            .unwrap()
            .push_back(TokenAnswer::Tokens { access: token.clone(), refresh: format!("REFRESH_{token}") });
        token
    }

    /// [`Self::plan_login`] for a token whose `whoami` names `device`.
    pub fn plan_login_as(&self, device: &str) -> String {
        let token = self.plan_login();
        self.tokens.devices.lock().unwrap().insert(token.clone(), device.to_owned());
        token
    }

    /// From now on `whoami` answers after `delay`.
    pub async fn slow_whoami(&self, delay: Duration) {
        Mock::given(method("GET"))
            .and(path("/_matrix/client/v3/account/whoami"))
            .respond_with(SlowWhoAmI(self.tokens.clone(), delay))
            .with_priority(1)
            .mount(self.server.server())
            .await;
    }

    /// The homeserver stops accepting `token` (as if it expired or was revoked).
    pub fn forget_token(&self, token: &str) {
        self.tokens.users.lock().unwrap().remove(token);
    }

    /// The next token answer is an OAuth error (`expired_token`, `access_denied`, …).
    pub fn plan_token_error(&self, error: &'static str) {
        self.tokens.queue.lock().unwrap().push_back(TokenAnswer::Error(error));
    }

    /// A signed-in existing device of `USER` with complete cross-signing.
    pub async fn existing_device(&self, device: &str) -> Client {
        let (_, builder) = self.mint(device);
        let client = builder.build().await;
        client.encryption().bootstrap_cross_signing(None).await.expect("bootstrap cross-signing");
        client
    }

    /// A signed-out client on this server, to play the new device.
    pub async fn new_device(&self) -> Client {
        Client::builder().homeserver_url(self.uri()).build().await.expect("new device client")
    }

    /// From now on every rendezvous session is gone (404).
    pub fn expire_rendezvous(&self) {
        self.rendezvous.expired.store(true, Ordering::Relaxed);
    }

    pub fn rendezvous_requests(&self) -> u64 {
        self.rendezvous.requests.load(Ordering::Relaxed)
    }

    /// Rendezvous sessions created from now on live `secs` seconds.
    pub fn set_rendezvous_ttl(&self, secs: u64) {
        self.rendezvous.ttl.store(secs, Ordering::Relaxed);
    }

    /// The next `count` rendezvous sessions live `secs` seconds, the ones after them as before:
    /// unlike `set_rendezvous_ttl`, not raced by the test's own reaction time.
    pub fn set_next_rendezvous_ttls(&self, secs: u64, count: u64) {
        *self.rendezvous.next_ttls.lock().unwrap() = (secs, count);
    }

    /// From now on the rendezvous sits behind a lagging load balancer: the daemon's first write of
    /// each payload is refused (412), and the server's clock is two hours ahead.
    pub fn lag_rendezvous(&self) {
        self.rendezvous.lagging.store(true, Ordering::Relaxed);
    }

    /// Rendezvous sessions created so far.
    pub fn rendezvous_sessions_created(&self) -> u64 {
        self.rendezvous.state.lock().unwrap().next_id
    }

    /// Rendezvous sessions created and not deleted.
    pub fn open_rendezvous_sessions(&self) -> usize {
        self.rendezvous.state.lock().unwrap().by_id.len()
    }

    /// From now on `/_matrix/client/versions` answers 404: the homeserver cannot be found by probing.
    pub async fn hide_versions(&self) {
        Mock::given(method("GET"))
            .and(path("/_matrix/client/versions"))
            .respond_with(ResponseTemplate::new(404))
            .with_priority(1)
            .mount(self.server.server())
            .await;
    }

    /// From now on the device authorization answers `expires_in` and `interval` of `u64::MAX`.
    pub fn send_extreme_numbers(&self) {
        self.extreme_numbers.store(true, Ordering::Relaxed);
    }

    pub fn user_codes(&self) -> Vec<String> {
        self.user_codes.lock().unwrap().clone()
    }

    pub fn issued_tokens(&self) -> Vec<String> {
        self.tokens.issued.lock().unwrap().clone()
    }
}

/// Registration data for test new devices (the mock registers any client).
pub fn registration() -> ClientRegistrationData {
    let metadata = ClientMetadata::new(
        ApplicationType::Native,
        vec![OAuthGrantType::DeviceCode],
        Localized::new(url::Url::parse("https://example.org/").unwrap(), []),
    );
    ClientRegistrationData::new(Raw::new(&metadata).unwrap())
}

fn random_hex(n: usize) -> String {
    use rand::RngCore;
    let mut b = vec![0u8; n];
    rand::rng().fill_bytes(&mut b);
    hex::encode(b)
}
