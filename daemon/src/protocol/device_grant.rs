//! The new device's side of the RFC 8628 device authorization grant on the Matrix OAuth 2.0 API
//! (docs/protocol.md §10), for the own engine: metadata, dynamic registration (with an explicit empty
//! `response_types`, which strict servers need), the device authorization request with the stable
//! scopes (unstable ones as fallback), and token polling that respects `interval` and
//! `slow_down` and stops at the first success (a second exchange is a replay).

use std::time::Duration;

use matrix_sdk::reqwest::{self, StatusCode, header};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tracing::debug;
use url::Url;

use crate::{
    error::LinkError,
    net::{self, BodyError, JSON_LIMIT, Reach},
};
use matrix_linkd_wire::policy;

pub const DEVICE_CODE_GRANT: &str = "urn:ietf:params:oauth:grant-type:device_code";

/// Bounds on the server's numbers (RFC 8628 gives none): a poll interval of 1 to 60 s, slowed by
/// 5 s per `slow_down` up to that, and a device code that lives at most an hour. A larger number,
/// up to `u64::MAX`, must not overflow a deadline.
const MIN_INTERVAL: Duration = Duration::from_secs(1);
const MAX_INTERVAL: Duration = Duration::from_secs(60);
const SLOW_DOWN: Duration = Duration::from_secs(5);
/// Lost token answers in a row the polling rides out before it fails.
const LOST_ANSWERS: u32 = 2;
const MAX_CODE_LIFETIME: Duration = Duration::from_secs(3600);

/// How the grant failed. Messages never quote tokens, codes or server bodies.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GrantError {
    #[error("the homeserver does not use OAuth 2.0 (no auth metadata)")]
    NoOAuth,
    #[error("the OAuth server does not offer the device authorization grant")]
    NoDeviceGrant,
    #[error("the OAuth server does not allow dynamic client registration")]
    NoRegistration,
    #[error("the OAuth server refused the request: {0}")]
    Refused(String),
    #[error("the sign-in was denied")]
    AccessDenied,
    #[error("the sign-in request expired")]
    Expired,
    #[error("the OAuth server could not be reached")]
    Network,
    #[error("the OAuth server's answer is malformed")]
    Malformed,
    #[error("the OAuth server's answer is larger than {0} bytes")]
    TooLarge(usize),
    #[error("the homeserver answered HTTP {0} for its OAuth metadata")]
    Unavailable(u16),
    #[error("the OAuth server names an endpoint we may not use: {0}")]
    BadEndpoint(net::UrlError),
    /// The device code was refused as used (`invalid_grant`) after an answer of the token endpoint
    /// was lost: that request exchanged it, and the tokens it issued never reached us.
    #[error(
        "the OAuth server issued the new session's tokens, but its answer was lost on the way; the \
         new device may be on the account with nobody holding it"
    )]
    TokensLost,
}

pub type Result<T, E = GrantError> = std::result::Result<T, E>;

/// What a failed grant step means for the flow and its caller.
impl From<GrantError> for LinkError {
    fn from(e: GrantError) -> Self {
        match e {
            GrantError::NoOAuth => {
                LinkError::Unsupported("the homeserver does not use OAuth 2.0 sign-in".into())
            }
            GrantError::NoDeviceGrant => LinkError::Unsupported(
                "the OAuth server does not offer the device authorization grant".into(),
            ),
            GrantError::NoRegistration => {
                LinkError::Unsupported("the OAuth server does not allow client registration".into())
            }
            GrantError::AccessDenied => {
                LinkError::LoginFailed("the sign-in was refused on the consent page (access_denied)".into())
            }
            GrantError::Expired => {
                LinkError::Expired("the sign-in request expired before it was approved".into())
            }
            GrantError::Network => LinkError::Network("the OAuth server could not be reached".into()),
            e @ GrantError::TokensLost => LinkError::Network(e.to_string()),
            e @ (GrantError::TooLarge(_) | GrantError::BadEndpoint(_) | GrantError::Malformed) => {
                LinkError::ProtocolError(e.to_string())
            }
            other => LinkError::Network(other.to_string()),
        }
    }
}

/// The parts of the authorization server metadata (RFC 8414) the grant needs.
#[derive(Debug, Clone, Deserialize)]
pub struct Metadata {
    pub issuer: Url,
    pub device_authorization_endpoint: Option<Url>,
    pub token_endpoint: Url,
    pub registration_endpoint: Option<Url>,
    #[serde(default)]
    pub grant_types_supported: Vec<String>,
    pub revocation_endpoint: Option<Url>,
    /// MSC4191: where the user manages their sessions, and what that page can do.
    pub account_management_uri: Option<Url>,
    #[serde(default)]
    pub account_management_actions_supported: Vec<String>,
}

/// The RFC 8628 device authorization response. Secret fields are not `Debug`-printed.
#[derive(Clone, Deserialize)]
pub struct DeviceAuthorization {
    pub device_code: String,
    pub user_code: String,
    pub verification_uri: String,
    pub verification_uri_complete: Option<String>,
    pub expires_in: u64,
    pub interval: Option<u64>,
}

impl std::fmt::Debug for DeviceAuthorization {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "DeviceAuthorization(expires_in={}, interval={:?})", self.expires_in, self.interval)
    }
}

/// Tokens from the token endpoint. Not `Debug`.
#[derive(Clone, Serialize, Deserialize)]
pub struct Tokens {
    pub access_token: String,
    pub refresh_token: Option<String>,
    pub expires_in: Option<u64>,
}

fn network(_: reqwest::Error) -> GrantError {
    GrantError::Network
}

/// The server refused: its `error` code (quoted safely, `policy::quote`), else what was asked.
fn refused(v: &Value, asked: &str) -> GrantError {
    GrantError::Refused(policy::quote(v.get("error").and_then(Value::as_str).unwrap_or(asked)))
}

/// Status and JSON body (at most [`JSON_LIMIT`] bytes). Redirects are not followed, so a 3xx is
/// an answer like any error status.
async fn json(r: reqwest::Response) -> Result<(u16, Value)> {
    net::read_json(r, JSON_LIMIT).await.map_err(|e| match e {
        BodyError::TooLarge(n) => GrantError::TooLarge(n),
        BodyError::Network => GrantError::Network,
    })
}

/// A form-encoded POST to an OAuth endpoint and its JSON answer.
async fn post_form(http: &reqwest::Client, endpoint: Url, pairs: &[(&str, &str)]) -> Result<(u16, Value)> {
    // The serializer is not `Send`: finish it before the first await.
    let body = url::form_urlencoded::Serializer::new(String::new()).extend_pairs(pairs).finish();
    let r = http
        .post(endpoint)
        .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
        .body(body)
        .send()
        .await
        .map_err(network)?;
    json(r).await
}

/// `GET /_matrix/client/v1/auth_metadata`, then the MSC2965 unstable path. Every endpoint we
/// send a code or token to must pass [`net::check_transport`].
pub async fn server_metadata(http: &reqwest::Client, homeserver: &Url, reach: Reach) -> Result<Metadata> {
    // A path that is not there (404: Synapse without OAuth) is the next path's turn; any other
    // failure is the homeserver failing, not a homeserver without OAuth.
    let mut failed = None;
    for path in
        ["_matrix/client/v1/auth_metadata", "_matrix/client/unstable/org.matrix.msc2965/auth_metadata"]
    {
        let url = homeserver.join(path).map_err(|_| GrantError::Malformed)?;
        let r = http.get(url).send().await.map_err(network)?;
        if r.status().is_success() {
            let (_, v) = json(r).await?;
            let m: Metadata = serde_json::from_value(v).map_err(|_| GrantError::Malformed)?;
            let endpoints =
                [Some(&m.issuer), Some(&m.token_endpoint), m.device_authorization_endpoint.as_ref()]
                    .into_iter()
                    .chain([m.registration_endpoint.as_ref(), m.revocation_endpoint.as_ref()])
                    .chain([m.account_management_uri.as_ref()]);
            for endpoint in endpoints.flatten() {
                net::check_transport(endpoint, reach).map_err(GrantError::BadEndpoint)?;
            }
            return Ok(m);
        }
        if r.status() != StatusCode::NOT_FOUND {
            failed = Some(r.status().as_u16());
        }
    }
    Err(failed.map_or(GrantError::NoOAuth, GrantError::Unavailable))
}

/// [`server_metadata`] of a server that must offer the device authorization grant.
pub async fn metadata(http: &reqwest::Client, homeserver: &Url, reach: Reach) -> Result<Metadata> {
    let m = server_metadata(http, homeserver, reach).await?;
    if m.device_authorization_endpoint.is_none()
        || !m.grant_types_supported.iter().any(|g| g == DEVICE_CODE_GRANT)
    {
        return Err(GrantError::NoDeviceGrant);
    }
    Ok(m)
}

/// RFC 7591 registration of a public native client for the device grant; returns the client ID.
pub async fn register(
    http: &reqwest::Client,
    m: &Metadata,
    client_name: &str,
    client_uri: &Url,
) -> Result<String> {
    let endpoint = m.registration_endpoint.clone().ok_or(GrantError::NoRegistration)?;
    let body = json!({
        "client_name": client_name,
        "client_uri": client_uri,
        "application_type": "native",
        "grant_types": [DEVICE_CODE_GRANT, "refresh_token"],
        "response_types": [],
        "token_endpoint_auth_method": "none",
    });
    let r = http
        .post(endpoint)
        .header(header::CONTENT_TYPE, "application/json")
        .body(body.to_string())
        .send()
        .await
        .map_err(network)?;
    let (status, v) = json(r).await?;
    match v.get("client_id").and_then(Value::as_str) {
        Some(id) if (200..300).contains(&status) => Ok(id.to_owned()),
        _ => Err(refused(&v, "registration")),
    }
}

/// A device ID the way the MSC asks: high entropy, `[A-Za-z0-9]`, scope-safe.
pub fn new_device_id() -> String {
    use rand::Rng;
    const CHARS: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    let mut rng = rand::rng();
    (0..16).map(|_| CHARS[rng.random_range(0..CHARS.len())] as char).collect()
}

/// The device authorization request for `device_id`: stable scopes, then the unstable ones if the
/// server rejects those.
pub async fn authorize(
    http: &reqwest::Client,
    m: &Metadata,
    client_id: &str,
    device_id: &str,
) -> Result<DeviceAuthorization> {
    let endpoint = m.device_authorization_endpoint.clone().ok_or(GrantError::NoDeviceGrant)?;
    let mut last = GrantError::Malformed;
    for prefix in ["urn:matrix:client", "urn:matrix:org.matrix.msc2967.client"] {
        let scope = format!("{prefix}:api:* {prefix}:device:{device_id}");
        let (status, v) =
            post_form(http, endpoint.clone(), &[("client_id", client_id), ("scope", &scope)]).await?;
        if (200..300).contains(&status) {
            return serde_json::from_value(v).map_err(|_| GrantError::Malformed);
        }
        let invalid_scope = v.get("error").and_then(Value::as_str) == Some("invalid_scope");
        last = refused(&v, "device authorization");
        if !invalid_scope {
            break;
        }
    }
    Err(last)
}

/// RFC 7009: revokes `token` at `endpoint` (a public client authenticates with its
/// `client_id`). The server answers 200 also for a token it does not know, so success says nothing
/// about validity.
pub async fn revoke(
    http: &reqwest::Client,
    endpoint: &Url,
    client_id: &str,
    token: &str,
    hint: &str,
) -> Result<()> {
    let (status, v) = post_form(
        http,
        endpoint.clone(),
        &[("token", token), ("token_type_hint", hint), ("client_id", client_id)],
    )
    .await?;
    if (200..300).contains(&status) { Ok(()) } else { Err(refused(&v, "revocation")) }
}

/// Ends a session by RFC 7009: the refresh token first (which ends the grant), then the access
/// token, both tried. The first refusal is returned.
pub async fn revoke_session(
    http: &reqwest::Client,
    endpoint: Option<&Url>,
    client_id: &str,
    access_token: &str,
    refresh_token: Option<&str>,
) -> Result<()> {
    let endpoint = endpoint.ok_or_else(|| GrantError::Refused("no revocation endpoint".into()))?;
    let refresh = match refresh_token {
        Some(token) => revoke(http, endpoint, client_id, token, "refresh_token").await,
        None => Ok(()),
    };
    let access = revoke(http, endpoint, client_id, access_token, "access_token").await;
    refresh.and(access)
}

/// RFC 6749 §6: new tokens for `refresh_token`. A rotated-away refresh token gives `invalid_grant`.
pub async fn refresh(
    http: &reqwest::Client,
    m: &Metadata,
    client_id: &str,
    refresh_token: &str,
) -> Result<Tokens> {
    let (status, v) = post_form(
        http,
        m.token_endpoint.clone(),
        &[("grant_type", "refresh_token"), ("refresh_token", refresh_token), ("client_id", client_id)],
    )
    .await?;
    if (200..300).contains(&status) {
        serde_json::from_value(v).map_err(|_| GrantError::Malformed)
    } else {
        Err(refused(&v, "refresh"))
    }
}

/// The waits before each further `whoami` after a transient failure.
const WHOAMI_RETRIES: [Duration; 3] =
    [Duration::from_millis(250), Duration::from_secs(1), Duration::from_secs(2)];

/// `GET /account/whoami` with a fresh token: the user ID and the device ID the homeserver sees.
pub async fn whoami(
    http: &reqwest::Client,
    homeserver: &Url,
    token: &str,
) -> std::result::Result<(matrix_sdk::ruma::OwnedUserId, Option<String>), LinkError> {
    let url = homeserver
        .join("_matrix/client/v3/account/whoami")
        .map_err(|_| LinkError::Failed("bad homeserver URL".into()))?;
    // The last step of a sign-in that the user has already consented to: a homeserver that is
    // briefly unavailable (502/503/504: a worker restarting, its auth service's connection reset)
    // or a lost connection gets a few more tries before the sign-in fails. A GET, so tried again
    // safely.
    let mut waits = WHOAMI_RETRIES.iter();
    let r = loop {
        let sent = http.get(url.clone()).bearer_auth(token).send().await;
        let transient = match &sent {
            Ok(r) => matches!(r.status().as_u16(), 502..=504),
            Err(e) => !e.is_timeout(),
        };
        match waits.next() {
            Some(wait) if transient => {
                debug!(status = ?sent.as_ref().ok().map(|r| r.status().as_u16()), "whoami: tried again");
                tokio::time::sleep(*wait).await;
            }
            _ => {
                break sent
                    .map_err(|_| LinkError::Network("asking the homeserver who we are failed".into()))?;
            }
        }
    };
    if !r.status().is_success() {
        return Err(LinkError::Network(format!("whoami answered HTTP {}", r.status().as_u16())));
    }
    let (_, v) = net::read_json(r, JSON_LIMIT).await.map_err(|e| match e {
        BodyError::TooLarge(_) => LinkError::ProtocolError(format!("whoami answer: {e}")),
        BodyError::Network => LinkError::Network("whoami answer lost".into()),
    })?;
    let user = v
        .get("user_id")
        .and_then(Value::as_str)
        .and_then(|u| matrix_sdk::ruma::OwnedUserId::try_from(u).ok())
        .ok_or_else(|| LinkError::ProtocolError("whoami answer has no user ID".into()))?;
    Ok((user, v.get("device_id").and_then(Value::as_str).map(str::to_owned)))
}

/// Where a device code stands when a flow stops while polling with it: one last token request.
/// (No `Debug`: it may carry tokens.)
pub enum CodeEnd {
    /// The tokens came now (the user approved as the flow stopped): they are to be revoked.
    Issued(Tokens),
    /// The code was used (an earlier answer carried tokens that never reached us), or every look
    /// lost its answer too, so that tokens may exist that nobody holds.
    Used,
    /// No tokens exist for it (pending, denied, expired, or refused).
    Unused,
}

/// The last look at `device_code` for a flow that stopped while polling with it. A look without a
/// definite answer (lost, cut off, a server error: it may have exchanged the code) is followed by
/// another, at most [`LOST_ANSWERS`] more; when none answered, tokens may exist (`Used`).
pub async fn end_code(http: &reqwest::Client, m: &Metadata, client_id: &str, device_code: &str) -> CodeEnd {
    for look in 0..=LOST_ANSWERS {
        if look > 0 {
            tokio::time::sleep(MIN_INTERVAL).await;
        }
        match poll_once(http, m, client_id, device_code).await {
            Ok(Ok(tokens)) => return CodeEnd::Issued(tokens),
            Ok(Err(_)) | Err(GrantError::AccessDenied | GrantError::Expired) => return CodeEnd::Unused,
            Err(GrantError::Refused(error)) if error == policy::quote("invalid_grant") => {
                return CodeEnd::Used;
            }
            Err(_) => {}
        }
    }
    CodeEnd::Used
}

/// What one token request said.
#[derive(Debug, PartialEq, Eq)]
enum Poll {
    Pending,
    SlowDown,
}

async fn poll_once(
    http: &reqwest::Client,
    m: &Metadata,
    client_id: &str,
    device_code: &str,
) -> Result<Result<Tokens, Poll>> {
    let (status, v) = post_form(
        http,
        m.token_endpoint.clone(),
        &[("grant_type", DEVICE_CODE_GRANT), ("device_code", device_code), ("client_id", client_id)],
    )
    .await?;
    if (200..300).contains(&status) {
        return serde_json::from_value(v).map(Ok).map_err(|_| GrantError::Malformed);
    }
    match v.get("error").and_then(Value::as_str) {
        Some("authorization_pending") => Ok(Err(Poll::Pending)),
        Some("slow_down") => Ok(Err(Poll::SlowDown)),
        Some("access_denied") => Err(GrantError::AccessDenied),
        Some("expired_token") => Err(GrantError::Expired),
        Some(_) => Err(refused(&v, "token")),
        None => Err(GrantError::Malformed),
    }
}

/// The poll interval and the code's lifetime the server asked for, within sane bounds.
fn pacing(auth: &DeviceAuthorization) -> (Duration, Duration) {
    let interval = Duration::from_secs(auth.interval.unwrap_or(5)).clamp(MIN_INTERVAL, MAX_INTERVAL);
    let lifetime = Duration::from_secs(auth.expires_in).clamp(MIN_INTERVAL, MAX_CODE_LIFETIME);
    (interval, lifetime)
}

/// Polls the token endpoint every `interval` (default 5 s, +5 s on `slow_down`) until the user
/// decides or the code expires; stops at the first success.
pub async fn poll_tokens(
    http: &reqwest::Client,
    m: &Metadata,
    client_id: &str,
    auth: &DeviceAuthorization,
) -> Result<Tokens> {
    let (mut interval, lifetime) = pacing(auth);
    let deadline = tokio::time::Instant::now() + lifetime;
    // Answers lost in a row, and whether any was: a lost answer may have carried the tokens.
    let (mut lost, mut any_lost) = (0, false);
    loop {
        match poll_once(http, m, client_id, &auth.device_code).await {
            Ok(Ok(tokens)) => return Ok(tokens),
            Ok(Err(Poll::SlowDown)) => {
                interval = (interval + SLOW_DOWN).min(MAX_INTERVAL);
                lost = 0;
            }
            Ok(Err(Poll::Pending)) => lost = 0,
            // The request may have reached the server and the answer not us: the next poll
            // tells which (tokens, still pending, or the code already used).
            Err(e @ (GrantError::Network | GrantError::Malformed | GrantError::TooLarge(_))) => {
                lost += 1;
                any_lost = true;
                if lost > LOST_ANSWERS {
                    return Err(e);
                }
            }
            Err(GrantError::Refused(error)) if any_lost && error == policy::quote("invalid_grant") => {
                return Err(GrantError::TokensLost);
            }
            Err(e) => return Err(e),
        }
        // Past the code's life, one more look only when the last answer was lost (it may have
        // carried the tokens; the look tells).
        if tokio::time::Instant::now() + interval > deadline && lost == 0 {
            return Err(GrantError::Expired);
        }
        tokio::time::sleep(interval).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A homeserver briefly unavailable at the sign-in's last step (Synapse answers 503 when its
    /// auth service's connection was reset) does not fail a sign-in the user consented to; one
    /// that stays unavailable does, after a bounded number of tries.
    /// A homeserver that fails its metadata requests (`503`) is failing, not one without OAuth:
    /// found by the fault-injection campaign (both paths answered `503`, and the flow said the
    /// homeserver does not use OAuth). A `404` on both still means no OAuth.
    #[tokio::test]
    async fn a_failing_metadata_endpoint_is_not_a_server_without_oauth() {
        use wiremock::{Mock, MockServer, ResponseTemplate, matchers::method};
        for (status, expected) in [(503, GrantError::Unavailable(503)), (404, GrantError::NoOAuth)] {
            let server = MockServer::start().await;
            Mock::given(method("GET")).respond_with(ResponseTemplate::new(status)).mount(&server).await;
            let base = Url::parse(&server.uri()).unwrap();
            let got = server_metadata(&net::client(), &base, Reach::ANYWHERE).await.map(|_| ());
            assert_eq!(got.map_err(|e| e.to_string()), Err(expected.to_string()));
        }
    }

    #[tokio::test]
    async fn whoami_rides_out_a_brief_unavailability() {
        use wiremock::{Mock, ResponseTemplate, matchers};
        let server = wiremock::MockServer::start().await;
        let base = Url::parse(&format!("{}/", server.uri())).unwrap();
        Mock::given(matchers::path("/_matrix/client/v3/account/whoami"))
            .respond_with(
                ResponseTemplate::new(503).set_body_json(serde_json::json!({"errcode": "M_UNKNOWN"})),
            )
            .up_to_n_times(1)
            .mount(&server)
            .await;
        Mock::given(matchers::path("/_matrix/client/v3/account/whoami"))
            .respond_with(
                ResponseTemplate::new(200)
                    .set_body_json(serde_json::json!({"user_id": "@a:example.org", "device_id": "D"})),
            )
            .mount(&server)
            .await;
        let (user, device) = whoami(&net::client(), &base, "t").await.unwrap();
        assert_eq!((user.as_str(), device.as_deref()), ("@a:example.org", Some("D")));

        server.reset().await;
        Mock::given(matchers::path("/_matrix/client/v3/account/whoami"))
            .respond_with(ResponseTemplate::new(503))
            .mount(&server)
            .await;
        let err = whoami(&net::client(), &base, "t").await.unwrap_err();
        assert!(err.to_string().contains("503"), "{err}");
        let asked = server.received_requests().await.unwrap().len();
        assert_eq!(asked, 1 + WHOAMI_RETRIES.len(), "bounded tries");
    }

    #[test]
    fn device_ids_are_scope_safe() {
        let id = new_device_id();
        assert_eq!(id.len(), 16);
        assert!(id.bytes().all(|b| b.is_ascii_alphanumeric()));
        assert_ne!(new_device_id(), id);
    }

    #[test]
    fn server_numbers_are_bounded() {
        let mut a = DeviceAuthorization {
            device_code: String::new(),
            user_code: String::new(),
            verification_uri: String::new(),
            verification_uri_complete: None,
            expires_in: u64::MAX,
            interval: Some(u64::MAX),
        };
        assert_eq!(pacing(&a), (MAX_INTERVAL, MAX_CODE_LIFETIME));
        (a.expires_in, a.interval) = (0, Some(0));
        assert_eq!(pacing(&a), (MIN_INTERVAL, MIN_INTERVAL));
        (a.expires_in, a.interval) = (600, None);
        assert_eq!(pacing(&a), (Duration::from_secs(5), Duration::from_secs(600)));
    }

    /// An OAuth server's `error` reaches the log and the caller's `Response.message` one short
    /// line long: no forged log line, no escape sequence, not 8,000 characters.
    #[tokio::test]
    async fn a_servers_error_is_quoted_safely() {
        use wiremock::{Mock, MockServer, ResponseTemplate, matchers::method};
        let server = MockServer::start().await;
        let evil =
            format!("bad\n2026-12-07T00:00:00Z  INFO matrix_linkd: signed in\u{1b}[2J{}", "x".repeat(8000));
        Mock::given(method("POST"))
            .respond_with(ResponseTemplate::new(400).set_body_json(json!({ "error": evil })))
            .mount(&server)
            .await;
        let endpoint = Url::parse(&server.uri()).unwrap();
        let m = Metadata {
            issuer: endpoint.clone(),
            device_authorization_endpoint: Some(endpoint.clone()),
            token_endpoint: endpoint.clone(),
            registration_endpoint: Some(endpoint.clone()),
            grant_types_supported: vec![],
            revocation_endpoint: Some(endpoint.clone()),
            account_management_uri: None,
            account_management_actions_supported: vec![],
        };
        let http = net::client();
        let errors = [
            register(&http, &m, "bot", &endpoint).await.unwrap_err(),
            authorize(&http, &m, "cid", "DEV").await.unwrap_err(),
            refresh(&http, &m, "cid", "rt").await.err().expect("refused"),
            revoke(&http, &endpoint, "cid", "t", "access_token").await.unwrap_err(),
        ];
        for e in errors {
            let message = LinkError::from(e).to_string();
            assert!(!message.contains('\n') && !message.contains('\u{1b}'), "{message:?}");
            assert!(message.chars().count() < 200, "{} characters", message.chars().count());
            assert!(message.contains("bad\\u{a}2026"), "{message:?}");
        }
    }

    #[test]
    fn secrets_are_not_debug_printed() {
        let a = DeviceAuthorization {
            device_code: "DEVCODE".into(),
            user_code: "USERCODE".into(),
            verification_uri: "https://x/".into(),
            verification_uri_complete: None,
            expires_in: 600,
            interval: None,
        };
        let s = format!("{a:?}");
        assert!(!s.contains("DEVCODE") && !s.contains("USERCODE"));
    }
}
