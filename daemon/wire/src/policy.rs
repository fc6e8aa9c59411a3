//! What a value from across the boundary may ask of us: the checks the engine applies to every
//! decrypted message from the other device and to every URL that a QR code, a message or a server
//! names. Pure, so they are unit-tested and fuzzed (`fuzz/fuzz_targets/engine_messages.rs`) without
//! the Matrix SDK; the engine in the daemon calls exactly these.
//!
//! The rules:
//! - plain `http` only to this machine (loopback), unless the user allowed it for tests;
//! - the consent page the new device names must be on the account's own OAuth server (same
//!   origin as its issuer), else a lying device could send our user to a page of its choosing;
//! - at each step only the one message the protocol expects; the other device's own
//!   `m.login.failure`/`m.login.declined` ends the flow without an answer.

use url::{Host, Url};

use crate::messages::{DEVICE_AUTHORIZATION_GRANT, FailureReason, HomeserverRef, LoginMessage};

/// Why a URL is refused. Never quotes the URL (it may carry a code).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum UrlError {
    #[error("it is not an absolute http(s) URL")]
    NotHttp,
    #[error("it uses plain http to a host that is not this machine")]
    InsecureHttp,
    #[error("it carries a user name or password")]
    Credentials,
    #[error("it is not on the account's OAuth server")]
    ForeignOrigin,
}

/// How much of a server's own word (an OAuth `error` code) goes into a log line or an error
/// message.
pub const QUOTE_LIMIT: usize = 64;

/// A server's own word, made safe to quote in a log line or an error message: characters that are
/// not plain printable text (newlines, escape sequences, bidirectional overrides) are escaped as
/// `\u{…}`, and the text is cut to [`QUOTE_LIMIT`] characters (`…` marks a cut). OAuth error codes
/// are short printable ASCII, so these pass unchanged.
pub fn quote(text: &str) -> String {
    let mut out = String::new();
    for (n, c) in text.chars().enumerate() {
        if n == QUOTE_LIMIT {
            out.push('…');
            break;
        }
        if c.is_ascii_graphic() || c == ' ' || (!c.is_ascii() && !c.is_control() && !c.is_whitespace()) {
            out.push(c);
        } else {
            out.extend(c.escape_unicode());
        }
    }
    out
}

/// `localhost`, `127.0.0.0/8`, `::1`.
pub fn is_loopback(host: &Host<&str>) -> bool {
    match host {
        Host::Domain(d) => d.eq_ignore_ascii_case("localhost"),
        Host::Ipv4(ip) => ip.is_loopback(),
        Host::Ipv6(ip) => ip.is_loopback(),
    }
}

/// A server name (`host[:port]`, IPv6 in brackets) that names this machine.
pub fn is_loopback_name(server_name: &str) -> bool {
    Url::parse(&format!("http://{server_name}/"))
        .ok()
        .and_then(|u| u.host().map(|h| is_loopback(&h)))
        .unwrap_or(false)
}

/// https anywhere; http only to loopback, or anywhere when `allow_http` (tests, by config).
pub fn check_transport(url: &Url, allow_http: bool) -> Result<(), UrlError> {
    let Some(host) = url.host() else { return Err(UrlError::NotHttp) };
    match url.scheme() {
        "https" => Ok(()),
        "http" if allow_http || is_loopback(&host) => Ok(()),
        "http" => Err(UrlError::InsecureHttp),
        _ => Err(UrlError::NotHttp),
    }
}

/// Parses an absolute http(s) URL that we will send requests (and maybe tokens) to.
pub fn http_url(s: &str, allow_http: bool) -> Result<Url, UrlError> {
    let url = Url::parse(s).map_err(|_| UrlError::NotHttp)?;
    if !url.username().is_empty() || url.password().is_some() {
        return Err(UrlError::Credentials);
    }
    check_transport(&url, allow_http)?;
    Ok(url)
}

/// A homeserver named by the other device or a QR code: a URL that passes [`check_transport`], or
/// a server name (resolved later, over https unless it is loopback).
pub fn homeserver(named: &str, allow_http: bool) -> Result<HomeserverRef, UrlError> {
    match HomeserverRef::parse(named).ok_or(UrlError::NotHttp)? {
        HomeserverRef::Url(u) => http_url(u.as_str(), allow_http).map(HomeserverRef::Url),
        name => Ok(name),
    }
}

/// The consent page the new device asks our user to open: an http(s) URL on the same origin as
/// the account's OAuth `issuer`, returned normalised (as the URL parser serialises it, without a
/// fragment).
pub fn consent_page(uri: &str, issuer: &Url, allow_http: bool) -> Result<Url, UrlError> {
    let mut url = http_url(uri, allow_http)?;
    if url.origin() != issuer.origin() {
        return Err(UrlError::ForeignOrigin);
    }
    url.set_fragment(None);
    Ok(url)
}

/// Why the engine stops on a message, and what it tells the other device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// The other device sent `m.login.failure`: its reason if it is a known one (an unknown text
    /// is not repeated). Not answered.
    PeerFailed(Option<FailureReason>),
    /// The other device sent `m.login.declined`. Not answered.
    PeerDeclined,
    /// Another message than the one due.
    Unexpected { expected: &'static str, got: &'static str },
    /// The plaintext is not a message we know.
    Undecodable,
    /// The other device asked for (or offers only) a login protocol we do not speak.
    UnsupportedProtocol,
    /// The new device's ID is empty, too long or has control characters.
    BadDeviceId,
    /// The consent page is not one we may open.
    BadConsentPage(UrlError),
    /// The homeserver the other device names is not one we may use.
    BadHomeserver(UrlError),
}

impl Refusal {
    /// What the other device is told (`None`: it stopped first).
    pub fn tell(&self) -> Option<FailureReason> {
        match self {
            Refusal::PeerFailed(_) | Refusal::PeerDeclined => None,
            Refusal::UnsupportedProtocol => Some(FailureReason::UnsupportedProtocol),
            Refusal::BadConsentPage(_) => Some(FailureReason::UnableToOpenVerificationUri),
            Refusal::Unexpected { .. }
            | Refusal::Undecodable
            | Refusal::BadDeviceId
            | Refusal::BadHomeserver(_) => Some(FailureReason::UnexpectedMessageReceived),
        }
    }
}

const KNOWN_REASONS: [FailureReason; 7] = [
    FailureReason::AuthorizationExpired,
    FailureReason::DeviceAlreadyExists,
    FailureReason::DeviceNotFound,
    FailureReason::UnexpectedMessageReceived,
    FailureReason::UnsupportedProtocol,
    FailureReason::UserCancelled,
    FailureReason::UnableToOpenVerificationUri,
];

/// `msg` arrived where `expected` was due.
pub fn unexpected(msg: &LoginMessage, expected: &'static str) -> Refusal {
    match msg {
        LoginMessage::Failure { reason, .. } => {
            Refusal::PeerFailed(KNOWN_REASONS.iter().copied().find(|r| r.as_str() == reason))
        }
        LoginMessage::Declined {} => Refusal::PeerDeclined,
        other => Refusal::Unexpected { expected, got: other.kind() },
    }
}

/// Decodes a decrypted plaintext.
pub fn decode(plain: &[u8]) -> Result<LoginMessage, Refusal> {
    LoginMessage::decode(plain).map_err(|_| Refusal::Undecodable)
}

/// A message that must be of one kind and carries nothing we use (`m.login.success`,
/// `m.login.protocol_accepted`).
pub fn expect_signal(msg: &LoginMessage, expected: &'static str) -> Result<(), Refusal> {
    if msg.kind() == expected && matches!(msg, LoginMessage::Success {} | LoginMessage::ProtocolAccepted {}) {
        Ok(())
    } else {
        Err(unexpected(msg, expected))
    }
}

/// A new device's request to sign in, as the existing device accepts it.
#[derive(Clone, PartialEq, Eq)]
pub struct SignInRequest {
    pub device_id: String,
    /// `verification_uri_complete` when given, else `verification_uri`; checked and normalised.
    pub consent_page: Url,
}

impl std::fmt::Debug for SignInRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SignInRequest(<redacted>)")
    }
}

/// Existing device: the new device's `m.login.protocol`.
pub fn sign_in_request(msg: &LoginMessage, issuer: &Url, allow_http: bool) -> Result<SignInRequest, Refusal> {
    let (device_id, grant) = match msg {
        LoginMessage::Protocol { protocol, device_authorization_grant: Some(grant), device_id }
            if protocol == DEVICE_AUTHORIZATION_GRANT =>
        {
            (device_id, grant)
        }
        LoginMessage::Protocol { .. } => return Err(Refusal::UnsupportedProtocol),
        other => return Err(unexpected(other, "m.login.protocol")),
    };
    if device_id.is_empty() || device_id.len() > 255 || device_id.chars().any(char::is_control) {
        return Err(Refusal::BadDeviceId);
    }
    let uri = grant.verification_uri_complete.as_deref().unwrap_or(&grant.verification_uri);
    let consent_page = consent_page(uri, issuer, allow_http).map_err(Refusal::BadConsentPage)?;
    Ok(SignInRequest { device_id: device_id.clone(), consent_page })
}

/// New device: the existing device's `m.login.protocols`, and the homeserver it names.
pub fn offered_homeserver(msg: &LoginMessage, allow_http: bool) -> Result<HomeserverRef, Refusal> {
    let LoginMessage::Protocols { protocols, homeserver: hs, base_url } = msg else {
        return Err(unexpected(msg, "m.login.protocols"));
    };
    if !protocols.iter().any(|p| p == DEVICE_AUTHORIZATION_GRANT) {
        return Err(Refusal::UnsupportedProtocol);
    }
    let named = base_url.as_deref().or(hs.as_deref()).unwrap_or_default();
    homeserver(named, allow_http).map_err(Refusal::BadHomeserver)
}

/// New device: the existing device's `m.login.secrets` (its full form is read by the SDK).
pub fn expect_secrets(msg: &LoginMessage) -> Result<(), Refusal> {
    match msg {
        LoginMessage::Secrets { .. } => Ok(()),
        other => Err(unexpected(other, "m.login.secrets")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::messages::DeviceGrant;

    fn issuer() -> Url {
        Url::parse("https://account.example.org/").unwrap()
    }

    #[test]
    fn quoted_server_words_are_one_short_line() {
        assert_eq!(quote("invalid_grant"), "invalid_grant");
        let forged = quote("x\n2026-12-07T00:00:00Z INFO signed in\u{1b}[2J");
        assert!(!forged.contains('\n') && !forged.contains('\u{1b}'), "{forged}");
        assert!(forged.starts_with("x\\u{a}2026"), "{forged}");
        let long = quote(&"e".repeat(8000));
        assert_eq!(long.chars().count(), QUOTE_LIMIT + 1);
        assert!(long.ends_with('…'));
    }

    #[test]
    fn transport_is_https_or_loopback() {
        let ok = |s: &str| http_url(s, false);
        assert!(ok("https://matrix.example.org").is_ok());
        assert!(ok("http://127.0.0.1:8008/").is_ok());
        assert!(ok("http://127.9.9.9/").is_ok());
        assert!(ok("http://localhost:8008").is_ok());
        assert!(ok("http://[::1]:8008").is_ok());
        assert_eq!(ok("http://matrix.example.org"), Err(UrlError::InsecureHttp));
        assert_eq!(ok("http://10.0.0.1"), Err(UrlError::InsecureHttp));
        assert_eq!(ok("http://localhost.evil.example"), Err(UrlError::InsecureHttp));
        assert_eq!(ok("ftp://matrix.example.org"), Err(UrlError::NotHttp));
        assert_eq!(ok("file:///etc/passwd"), Err(UrlError::NotHttp));
        assert_eq!(ok("https://user:pw@matrix.example.org"), Err(UrlError::Credentials));
        assert!(http_url("http://matrix.example.org", true).is_ok());
        assert!(
            is_loopback_name("localhost:8448")
                && is_loopback_name("127.0.0.1")
                && is_loopback_name("[::1]:1")
        );
        assert!(!is_loopback_name("matrix.org") && !is_loopback_name("not a name"));
    }

    #[test]
    fn consent_page_must_be_on_the_issuer() {
        let page =
            consent_page("https://ACCOUNT.example.org:443/link?code=AB#frag", &issuer(), false).unwrap();
        assert_eq!(page.as_str(), "https://account.example.org/link?code=AB");
        for bad in [
            "http://phish.invalid/link",
            "https://phish.invalid/link",
            "https://account.example.org.phish.invalid/link",
            "https://account.example.org@phish.invalid/link",
            "https://account.example.org:8443/link",
            "http://account.example.org/link",
            "javascript:alert(1)",
        ] {
            assert!(consent_page(bad, &issuer(), false).is_err(), "{bad}");
        }
        // A loopback OAuth server (development, tests) over http.
        let local = Url::parse("http://127.0.0.1:18080/").unwrap();
        assert!(consent_page("http://127.0.0.1:18080/device?user_code=X", &local, false).is_ok());
        assert_eq!(consent_page("http://127.0.0.1:9/device", &local, false), Err(UrlError::ForeignOrigin));
    }

    fn protocol(uri: &str, complete: Option<&str>, device: &str) -> LoginMessage {
        LoginMessage::Protocol {
            protocol: DEVICE_AUTHORIZATION_GRANT.into(),
            device_authorization_grant: Some(DeviceGrant {
                verification_uri: uri.into(),
                verification_uri_complete: complete.map(str::to_owned),
            }),
            device_id: device.into(),
        }
    }

    #[test]
    fn sign_in_requests() {
        let r = sign_in_request(
            &protocol(
                "https://account.example.org/link",
                Some("https://account.example.org/link?c=1"),
                "NEW",
            ),
            &issuer(),
            false,
        )
        .unwrap();
        assert_eq!(
            (r.device_id.as_str(), r.consent_page.as_str()),
            ("NEW", "https://account.example.org/link?c=1")
        );
        // The complete URI is the one opened, so it is the one checked.
        let lying = protocol("https://account.example.org/link", Some("http://phish.invalid/"), "NEW");
        let refused = sign_in_request(&lying, &issuer(), false).unwrap_err();
        assert_eq!(refused, Refusal::BadConsentPage(UrlError::InsecureHttp));
        assert_eq!(refused.tell(), Some(FailureReason::UnableToOpenVerificationUri));
        let bad_id = protocol("https://account.example.org/link", None, "A\nB");
        assert_eq!(sign_in_request(&bad_id, &issuer(), false), Err(Refusal::BadDeviceId));
        let other = LoginMessage::Protocol {
            protocol: "something_else".into(),
            device_authorization_grant: None,
            device_id: "X".into(),
        };
        assert_eq!(sign_in_request(&other, &issuer(), false), Err(Refusal::UnsupportedProtocol));
        assert_eq!(
            sign_in_request(&LoginMessage::Success {}, &issuer(), false),
            Err(Refusal::Unexpected { expected: "m.login.protocol", got: "m.login.success" })
        );
    }

    #[test]
    fn peer_stops_are_not_answered_and_unknown_reasons_not_repeated() {
        let failure = |r: &str| LoginMessage::Failure { reason: r.into(), homeserver: None };
        assert_eq!(
            unexpected(&failure("device_not_found"), "x"),
            Refusal::PeerFailed(Some(FailureReason::DeviceNotFound))
        );
        assert_eq!(unexpected(&failure("<script>"), "x"), Refusal::PeerFailed(None));
        assert_eq!(unexpected(&LoginMessage::Declined {}, "x").tell(), None);
        assert_eq!(expect_signal(&LoginMessage::Declined {}, "m.login.success"), Err(Refusal::PeerDeclined));
        assert!(expect_signal(&LoginMessage::Success {}, "m.login.success").is_ok());
        assert!(expect_signal(&LoginMessage::Success {}, "m.login.protocol_accepted").is_err());
    }

    #[test]
    fn offered_homeservers() {
        let protocols = |hs: &str| LoginMessage::Protocols {
            protocols: vec![DEVICE_AUTHORIZATION_GRANT.into()],
            homeserver: Some(hs.into()),
            base_url: None,
        };
        assert!(matches!(
            offered_homeserver(&protocols("localhost"), false),
            Ok(HomeserverRef::ServerName(_))
        ));
        assert!(matches!(
            offered_homeserver(&protocols("https://hs.example.org/"), false),
            Ok(HomeserverRef::Url(_))
        ));
        assert_eq!(
            offered_homeserver(&protocols("http://hs.example.org/"), false),
            Err(Refusal::BadHomeserver(UrlError::InsecureHttp))
        );
        assert_eq!(
            offered_homeserver(&protocols("not a name/"), false),
            Err(Refusal::BadHomeserver(UrlError::NotHttp))
        );
        let none = LoginMessage::Protocols { protocols: vec!["x".into()], homeserver: None, base_url: None };
        assert_eq!(offered_homeserver(&none, false), Err(Refusal::UnsupportedProtocol));
    }
}
