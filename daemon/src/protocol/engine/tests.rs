//! Unit tests of the engine's shared core.

use super::{handshake::*, *};
use crate::protocol::{FlowOutcome, wire::policy::Refusal};

fn refused(r: Refusal) -> Stop {
    Stop::from(r)
}

#[test]
fn refusals_tell_the_other_device_what_the_protocol_says() {
    let stop = refused(policy::unexpected(&LoginMessage::failure(FailureReason::DeviceNotFound), "x"));
    assert_eq!(
        (stop.tell, stop.error),
        (Tell::Nothing, Some(LinkError::LoginFailed("device_not_found".into())))
    );
    let expired = LoginMessage::failure(FailureReason::AuthorizationExpired);
    assert!(matches!(refused(policy::unexpected(&expired, "x")).error, Some(LinkError::Expired(_))));
    let unknown = LoginMessage::Failure { reason: "<script>".into(), homeserver: None };
    assert_eq!(
        refused(policy::unexpected(&unknown, "x")).error,
        Some(LinkError::LoginFailed("unknown reason".into()))
    );
    assert_eq!(refused(Refusal::PeerDeclined).tell, Tell::Nothing);
    let stop = refused(policy::unexpected(&LoginMessage::Success {}, "m.login.protocol"));
    assert_eq!(stop.tell, Tell::Failure(FailureReason::UnexpectedMessageReceived));
    assert!(matches!(stop.error, Some(LinkError::ProtocolError(_))));
    let stop = refused(Refusal::BadConsentPage(policy::UrlError::ForeignOrigin));
    assert_eq!(stop.tell, Tell::Failure(FailureReason::UnableToOpenVerificationUri));
    assert!(matches!(stop.error, Some(LinkError::ProtocolError(m)) if m.contains("consent page")));
}

#[test]
fn local_errors_tell_the_matching_reason() {
    let tell = |e: LinkError| Stop::from(e).tell;
    assert_eq!(tell(LinkError::DeviceIdInUse), Tell::Failure(FailureReason::DeviceAlreadyExists));
    assert_eq!(tell(LinkError::DeviceNotFound), Tell::Failure(FailureReason::DeviceNotFound));
    assert_eq!(tell(LinkError::Network("x".into())), Tell::Failure(FailureReason::UserCancelled));
    assert_eq!(Stop::cancelled().tell, Tell::Failure(FailureReason::UserCancelled));
}

#[test]
fn secrets_bundle_round_trips_through_the_message() {
    let json = serde_json::json!({
        "cross_signing": {
            "master_key": "bWFzdGVybWFzdGVybWFzdGVybWFzdGVybWFzdGVyMDE",
            "self_signing_key": "c2VsZnNlbGZzZWxmc2VsZnNlbGZzZWxmc2VsZnNlbGY",
            "user_signing_key": "dXNlcnVzZXJ1c2VydXNlcnVzZXJ1c2VydXNlcnVzZXI",
        },
        "backup": {
            "algorithm": "m.megolm_backup.v1.curve25519-aes-sha2",
            "key": "a2V5a2V5a2V5a2V5a2V5a2V5a2V5a2V5a2V5a2V5a2U",
            "backup_version": "7",
        }
    });
    let bundle: SecretsBundle = serde_json::from_value(json.clone()).unwrap();
    let plain = grant::secrets_message(&bundle).encode();
    // What the new device gets: a secrets message that reads back as the same bundle.
    assert!(matches!(LoginMessage::decode(&plain), Ok(LoginMessage::Secrets { backup: Some(_), .. })));
    let back: SecretsBundle = serde_json::from_slice(&plain).unwrap();
    assert_eq!(serde_json::to_value(&back).unwrap(), json);
    // Without a backup there is no backup field.
    let mut no_backup = json.clone();
    no_backup.as_object_mut().unwrap().remove("backup");
    let bundle: SecretsBundle = serde_json::from_value(no_backup).unwrap();
    assert!(matches!(grant::secrets_message(&bundle), LoginMessage::Secrets { backup: None, .. }));
}

#[test]
fn scanned_codes_must_be_the_other_devices_kind() {
    let reciprocate = LoginQr::V2024 {
        intent: Intent::Reciprocate,
        key: [7; 32],
        rendezvous_url: "https://hs.example/_synapse/client/rendezvous/01J".into(),
        server: Some("hs.example".into()),
    }
    .encode();
    assert!(scanned_qr(&reciprocate, Intent::Reciprocate, Reach::default()).is_ok());
    assert!(matches!(
        scanned_qr(&reciprocate, Intent::Login, Reach::default()),
        Err(LinkError::InvalidQrCode(_))
    ));
    let login = LoginQr::Msc4388 {
        prefix: Prefix::Stable,
        intent: Intent::Login,
        key: [7; 32],
        rendezvous_id: "01J".into(),
        base_url: "https://hs.example".into(),
    }
    .encode();
    assert!(matches!(
        qr_generation(&scanned_qr(&login, Intent::Login, Reach::default()).unwrap()),
        Generation::Latest
    ));
    assert!(matches!(
        scanned_qr(b"MATRIX\x02\x00", Intent::Login, Reach::default()),
        Err(LinkError::InvalidQrCode(_))
    ));
}

/// Plain http only to this machine: a QR code may not send us (or our tokens) anywhere in clear.
#[test]
fn scanned_codes_name_https_or_loopback_servers_only() {
    let code = |url: &str, server: &str| {
        LoginQr::V2024 {
            intent: Intent::Reciprocate,
            key: [7; 32],
            rendezvous_url: url.into(),
            server: Some(server.into()),
        }
        .encode()
    };
    let test_set_up = Reach { local_addresses: true, insecure_http: false };
    let local = code("http://127.0.0.1:8008/rendezvous/1", "http://127.0.0.1:8008");
    assert!(scanned_qr(&local, Intent::Reciprocate, test_set_up).is_ok());
    let clear_rendezvous = code("http://hs.example.org/rendezvous/1", "hs.example.org");
    let clear_server = code("https://hs.example.org/rendezvous/1", "http://hs.example.org");
    for bad in [&clear_rendezvous, &clear_server] {
        match scanned_qr(bad, Intent::Reciprocate, test_set_up) {
            Err(LinkError::InvalidQrCode(m)) => assert!(m.contains("plain http"), "{m}"),
            other => panic!("{other:?}"),
        }
        assert!(scanned_qr(bad, Intent::Reciprocate, Reach::ANYWHERE).is_ok(), "allowed by config");
    }
}

/// A stranger's picture must not make us reach this machine's services or the link's (cloud
/// metadata): outside a test set-up, a code naming them is refused before any request.
#[test]
fn scanned_codes_never_name_this_machine_or_the_link() {
    let code = |url: &str, server: Option<&str>| {
        LoginQr::V2024 {
            intent: Intent::Reciprocate,
            key: [7; 32],
            rendezvous_url: url.into(),
            server: server.map(str::to_owned),
        }
        .encode()
    };
    for (url, server) in [
        ("http://127.0.0.1:8008/some/path?query", Some("hs.example.org")),
        ("https://localhost/rv/1", Some("hs.example.org")),
        ("https://169.254.169.254/latest/meta-data", Some("hs.example.org")),
        ("https://[::]/rv/1", Some("hs.example.org")),
        ("https://hs.example.org/rv/1", Some("localhost:8448")),
        ("https://hs.example.org/rv/1", Some("https://[fe80::1]/")),
    ] {
        match scanned_qr(&code(url, server), Intent::Reciprocate, Reach::default()) {
            Err(LinkError::InvalidQrCode(m)) => assert!(m.contains("security.allow_local_addresses"), "{m}"),
            other => panic!("{url} {server:?}: {other:?}"),
        }
    }
    let lan = code("https://192.168.1.10:8448/rv/1", Some("matrix.home.lan"));
    assert!(scanned_qr(&lan, Intent::Reciprocate, Reach::default()).is_ok());
    let latest = LoginQr::Msc4388 {
        prefix: Prefix::Stable,
        intent: Intent::Reciprocate,
        key: [7; 32],
        rendezvous_id: "01J".into(),
        base_url: "http://127.0.0.1:8008/".into(),
    };
    assert!(matches!(
        scanned_qr(&latest.encode(), Intent::Reciprocate, Reach::default()),
        Err(LinkError::InvalidQrCode(_))
    ));
}

#[test]
fn latest_codes_carry_the_base_url_as_the_aad_does() {
    use crate::protocol::wire::aad::{aad, aad_raw};
    let homeserver = Url::parse("https://matrix.example.org").unwrap();
    let LoginQr::Msc4388 { base_url, .. } = latest_qr(Intent::Login, [7; 32], "01J", &homeserver) else {
        panic!("a latest code");
    };
    assert_eq!(base_url, "https://matrix.example.org/");
    // A peer that binds to the QR's base URL as written binds to what we do.
    assert_eq!(aad_raw(&base_url, "01J", "T"), aad(&homeserver, "01J", "T"));
    let parsed = LoginQr::parse(&latest_qr(Intent::Login, [7; 32], "01J", &homeserver).encode()).unwrap();
    assert!(matches!(parsed, LoginQr::Msc4388 { base_url, .. } if base_url == "https://matrix.example.org/"));
}

/// A panic in a flow's body (a bug of ours) still ends the flow as `Failed`, tells the other
/// device and deletes the rendezvous session.
#[tokio::test]
async fn a_panicking_flow_still_tells_and_cleans_up() {
    use wiremock::{Mock, MockServer, ResponseTemplate, matchers::method};
    let server = MockServer::start().await;
    Mock::given(method("PUT"))
        .respond_with(ResponseTemplate::new(202).insert_header("ETag", "\"2\""))
        .mount(&server)
        .await;
    Mock::given(method("DELETE")).respond_with(ResponseTemplate::new(204)).mount(&server).await;
    let url = Url::parse(&format!("{}/rendezvous/1", server.uri())).unwrap();
    let rv = Rendezvous::V2024(Session2024::join(&net::client(), url));
    let generator = Generator::new(Generation::V2024);
    let (pending, initiate) = Initiated::start(Generation::V2024, &generator.public_key(), &[]).unwrap();
    let (channel, ok) = generator.accept(&initiate, &[], &[]).unwrap();
    let mut theirs = pending.confirm(&ok, &[]).unwrap();

    let (handle, port) = FlowHandle::pair(WireProtocol::V2024);
    let journal = Arc::new(intent::InMemory::default());
    let left = Leftovers {
        generation: Generation::V2024,
        rv: None,
        link: None,
        noted: Noted::open(journal.clone(), Kind::Grant).await.unwrap(),
        http: net::client(),
        reach: Reach::ANYWHERE,
    };
    let body = async move |_: &mut Ui, left: &mut Leftovers| -> Flow<Success> {
        left.link = Some(Link::new(rv, channel, true, true));
        panic!("a bug in a flow step");
    };
    runner::run(port, Duration::from_secs(30), None, left, body).await;
    assert_eq!(
        handle.outcome.await.unwrap(),
        FlowOutcome::Failed(LinkError::Failed("internal error".into()))
    );

    let requests = server.received_requests().await.unwrap();
    let told = requests.iter().find(|r| r.method.as_str() == "PUT").expect("the other device was told");
    let plain = theirs.open(std::str::from_utf8(&told.body).unwrap(), &[]).unwrap();
    assert_eq!(LoginMessage::decode(&plain).unwrap(), LoginMessage::failure(FailureReason::UserCancelled));
    assert!(link::wait_pending_deletes(Duration::from_secs(10)).await);
    let requests = server.received_requests().await.unwrap();
    assert!(requests.iter().any(|r| r.method.as_str() == "DELETE"), "the session was not deleted");
    assert!(journal.entries().is_empty(), "the flow's intent was left open");
}

/// Start-up: a new engine has not built its HTTP client (loading the system's trust roots takes
/// milliseconds a signed-out daemon need not spend before it takes its bus name); the first flow
/// builds it, once.
#[test]
fn the_http_client_is_built_on_first_use() {
    let engine = OwnEngine::new(&OAuthClient::default(), Reach::ANYWHERE);
    assert!(engine.http_client.get().is_none(), "built at start-up");
    let first: *const reqwest::Client = engine.http();
    assert!(std::ptr::eq(first, engine.http()), "built once");
}
