//! What a value from across the boundary may ask of us: the checks the engine applies to every
//! decrypted message from the other device and to every URL that a QR code, a message or a server
//! names. Pure, so they are unit-tested and fuzzed (`fuzz/fuzz_targets/engine_messages.rs`) without
//! the Matrix SDK; the engine in the daemon calls exactly these.
//!
//! The rules:
//! - no server on this machine (loopback), on the link (link-local) or at an unspecified address,
//!   unless the config says this is a test set-up ([`Reach::local_addresses`]): a QR code from a
//!   stranger's picture must not reach the local services of the user's machine;
//! - plain `http` only to this machine (when it may be reached at all), unless the user allowed it
//!   for tests ([`Reach::insecure_http`]);
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
    #[error(
        "it names this machine, a link-local or an unspecified address (set security.allow_local_addresses \
         for a test set-up)"
    )]
    LocalAddress,
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

/// Which servers a flow may reach beyond https to public and private-network addresses. Both are
/// test set-ups, set in the config's `[security]` table.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Reach {
    /// Plain http to any host (`security.allow_insecure_http`).
    pub insecure_http: bool,
    /// This machine (loopback), link-local and unspecified addresses
    /// (`security.allow_local_addresses`). Plain http to loopback comes with it.
    pub local_addresses: bool,
}

impl Reach {
    /// Everything: what the tests' own clients use.
    pub const ANYWHERE: Reach = Reach { insecure_http: true, local_addresses: true };
}

/// `localhost` (and names under `.localhost`), `127.0.0.0/8`, `::1`.
pub fn is_loopback(host: &Host<&str>) -> bool {
    match host {
        Host::Domain(d) => is_localhost(d),
        Host::Ipv4(ip) => ip.is_loopback(),
        Host::Ipv6(ip) => ip.is_loopback() || ip.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback()),
    }
}

fn is_localhost(name: &str) -> bool {
    let name = name.trim_end_matches('.').to_ascii_lowercase();
    name == "localhost" || name.ends_with(".localhost")
}

/// An address a QR code or another device must not make us reach: this machine (loopback), the
/// link (`169.254.0.0/16`, `fe80::/10`, where cloud metadata services live) or an unspecified
/// address (`0.0.0.0`, `::`, which reach this machine). Private networks (`10/8`, `192.168/16`,
/// `fc00::/7`) are not in it: self-hosted homeservers live there.
pub fn is_local_ip(ip: std::net::IpAddr) -> bool {
    use std::net::IpAddr;
    match ip {
        IpAddr::V4(v4) => v4.is_loopback() || v4.is_link_local() || v4.is_unspecified(),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => is_local_ip(IpAddr::V4(v4)),
            None => v6.is_loopback() || v6.is_unspecified() || v6.is_unicast_link_local(),
        },
    }
}

/// [`is_local_ip`] for a URL's host: an address literal, or `localhost`. Other names are checked
/// when they are resolved (the daemon's HTTP client drops such addresses).
pub fn is_local(host: &Host<&str>) -> bool {
    match host {
        Host::Domain(d) => is_localhost(d),
        Host::Ipv4(ip) => is_local_ip((*ip).into()),
        Host::Ipv6(ip) => is_local_ip((*ip).into()),
    }
}

/// A server name (`host[:port]`, IPv6 in brackets) that names this machine.
pub fn is_loopback_name(server_name: &str) -> bool {
    Url::parse(&format!("http://{server_name}/"))
        .ok()
        .and_then(|u| u.host().map(|h| is_loopback(&h)))
        .unwrap_or(false)
}

/// https to any host but local ones ([`is_local`]); those only when `reach.local_addresses`. Plain
/// http only to loopback (when local addresses may be reached), or anywhere when
/// `reach.insecure_http`.
pub fn check_transport(url: &Url, reach: Reach) -> Result<(), UrlError> {
    let Some(host) = url.host() else { return Err(UrlError::NotHttp) };
    if !matches!(url.scheme(), "http" | "https") {
        return Err(UrlError::NotHttp);
    }
    if is_local(&host) && !reach.local_addresses {
        return Err(UrlError::LocalAddress);
    }
    match url.scheme() {
        "https" => Ok(()),
        _ if reach.insecure_http || is_loopback(&host) => Ok(()),
        _ => Err(UrlError::InsecureHttp),
    }
}

/// Parses an absolute http(s) URL that we will send requests (and maybe tokens) to.
pub fn http_url(s: &str, reach: Reach) -> Result<Url, UrlError> {
    let url = Url::parse(s).map_err(|_| UrlError::NotHttp)?;
    if !url.username().is_empty() || url.password().is_some() {
        return Err(UrlError::Credentials);
    }
    check_transport(&url, reach)?;
    Ok(url)
}

/// A homeserver named by the other device or a QR code: a URL that passes [`check_transport`], or
/// a server name (resolved later, over https unless it is loopback).
pub fn homeserver(named: &str, reach: Reach) -> Result<HomeserverRef, UrlError> {
    match HomeserverRef::parse(named).ok_or(UrlError::NotHttp)? {
        HomeserverRef::Url(u) => http_url(u.as_str(), reach).map(HomeserverRef::Url),
        HomeserverRef::ServerName(name) => {
            let url = Url::parse(&format!("https://{name}/")).map_err(|_| UrlError::NotHttp)?;
            match url.host() {
                Some(host) if is_local(&host) && !reach.local_addresses => Err(UrlError::LocalAddress),
                _ => Ok(HomeserverRef::ServerName(name)),
            }
        }
    }
}

/// The consent page the new device asks our user to open: an http(s) URL on the same origin as
/// the account's OAuth `issuer`, returned normalised (as the URL parser serialises it, without a
/// fragment).
pub fn consent_page(uri: &str, issuer: &Url, reach: Reach) -> Result<Url, UrlError> {
    let mut url = http_url(uri, reach)?;
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
pub fn sign_in_request(msg: &LoginMessage, issuer: &Url, reach: Reach) -> Result<SignInRequest, Refusal> {
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
    let consent_page = consent_page(uri, issuer, reach).map_err(Refusal::BadConsentPage)?;
    Ok(SignInRequest { device_id: device_id.clone(), consent_page })
}

/// New device: the existing device's `m.login.protocols`, and the homeserver it names.
pub fn offered_homeserver(msg: &LoginMessage, reach: Reach) -> Result<HomeserverRef, Refusal> {
    let LoginMessage::Protocols { protocols, homeserver: hs, base_url } = msg else {
        return Err(unexpected(msg, "m.login.protocols"));
    };
    if !protocols.iter().any(|p| p == DEVICE_AUTHORIZATION_GRANT) {
        return Err(Refusal::UnsupportedProtocol);
    }
    let named = base_url.as_deref().or(hs.as_deref()).unwrap_or_default();
    homeserver(named, reach).map_err(Refusal::BadHomeserver)
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

    /// A test set-up: servers on this machine may be reached.
    const LOCAL: Reach = Reach { insecure_http: false, local_addresses: true };

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
        let ok = |s: &str| http_url(s, LOCAL);
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
        assert!(http_url("http://matrix.example.org", Reach::ANYWHERE).is_ok());
        assert!(
            is_loopback_name("localhost:8448")
                && is_loopback_name("127.0.0.1")
                && is_loopback_name("[::1]:1")
        );
        assert!(!is_loopback_name("matrix.org") && !is_loopback_name("not a name"));
    }

    #[test]
    fn local_addresses_only_in_a_test_set_up() {
        let strict = |s: &str| http_url(s, Reach::default());
        for local in [
            "http://127.0.0.1:8008/some/path?query",
            "https://127.0.0.1/",
            "https://localhost:8448/",
            "https://api.localhost/",
            "https://[::1]/",
            "https://[::ffff:127.0.0.1]/",
            "https://169.254.169.254/latest/meta-data/",
            "https://[fe80::1]/",
            "https://0.0.0.0:8008/",
            "https://[::]/",
        ] {
            assert_eq!(strict(local), Err(UrlError::LocalAddress), "{local}");
        }
        // Private networks over https stay: self-hosted homeservers live there.
        for lan in [
            "https://192.168.1.10:8448/",
            "https://10.0.0.2/",
            "https://[fd00::2]/",
            "https://matrix.home.lan/",
        ] {
            assert!(strict(lan).is_ok(), "{lan}");
        }
        assert_eq!(strict("http://192.168.1.10/"), Err(UrlError::InsecureHttp));
        assert!(is_local_ip("169.254.0.1".parse().unwrap()) && !is_local_ip("192.168.0.1".parse().unwrap()));
    }

    #[test]
    fn consent_page_must_be_on_the_issuer() {
        let page =
            consent_page("https://ACCOUNT.example.org:443/link?code=AB#frag", &issuer(), Reach::default())
                .unwrap();
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
            assert!(consent_page(bad, &issuer(), Reach::default()).is_err(), "{bad}");
        }
        // A loopback OAuth server (development, tests) over http.
        let local = Url::parse("http://127.0.0.1:18080/").unwrap();
        assert!(consent_page("http://127.0.0.1:18080/device?user_code=X", &local, LOCAL).is_ok());
        assert_eq!(consent_page("http://127.0.0.1:9/device", &local, LOCAL), Err(UrlError::ForeignOrigin));
        assert_eq!(
            consent_page("http://127.0.0.1:18080/device", &local, Reach::default()),
            Err(UrlError::LocalAddress)
        );
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
            Reach::default(),
        )
        .unwrap();
        assert_eq!(
            (r.device_id.as_str(), r.consent_page.as_str()),
            ("NEW", "https://account.example.org/link?c=1")
        );
        // The complete URI is the one opened, so it is the one checked.
        let lying = protocol("https://account.example.org/link", Some("http://phish.invalid/"), "NEW");
        let refused = sign_in_request(&lying, &issuer(), Reach::default()).unwrap_err();
        assert_eq!(refused, Refusal::BadConsentPage(UrlError::InsecureHttp));
        assert_eq!(refused.tell(), Some(FailureReason::UnableToOpenVerificationUri));
        let bad_id = protocol("https://account.example.org/link", None, "A\nB");
        assert_eq!(sign_in_request(&bad_id, &issuer(), Reach::default()), Err(Refusal::BadDeviceId));
        let other = LoginMessage::Protocol {
            protocol: "something_else".into(),
            device_authorization_grant: None,
            device_id: "X".into(),
        };
        assert_eq!(sign_in_request(&other, &issuer(), Reach::default()), Err(Refusal::UnsupportedProtocol));
        assert_eq!(
            sign_in_request(&LoginMessage::Success {}, &issuer(), Reach::default()),
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
            offered_homeserver(&protocols("localhost"), LOCAL),
            Ok(HomeserverRef::ServerName(_))
        ));
        assert!(matches!(
            offered_homeserver(&protocols("https://hs.example.org/"), Reach::default()),
            Ok(HomeserverRef::Url(_))
        ));
        assert_eq!(
            offered_homeserver(&protocols("http://hs.example.org/"), Reach::default()),
            Err(Refusal::BadHomeserver(UrlError::InsecureHttp))
        );
        assert_eq!(
            offered_homeserver(&protocols("not a name/"), Reach::default()),
            Err(Refusal::BadHomeserver(UrlError::NotHttp))
        );
        for local in
            ["localhost", "localhost:8448", "127.0.0.1", "[::1]:8448", "169.254.169.254", "http://127.0.0.1/"]
        {
            assert_eq!(
                offered_homeserver(&protocols(local), Reach::default()),
                Err(Refusal::BadHomeserver(UrlError::LocalAddress)),
                "{local}"
            );
        }
        assert!(offered_homeserver(&protocols("matrix.home.lan"), Reach::default()).is_ok());
        let none = LoginMessage::Protocols { protocols: vec!["x".into()], homeserver: None, base_url: None };
        assert_eq!(offered_homeserver(&none, Reach::default()), Err(Refusal::UnsupportedProtocol));
    }
}
