//! What crosses a boundary is not trusted: servers that a QR code names (huge, endless or slow
//! answers, redirects), an OAuth server with absurd numbers, a new device that names its own
//! consent page, an existing device that names a homeserver over plain http, and local callers with
//! oversized tokens. Each gets a named error and the daemon keeps running with its session intact.
//! The real daemon binary on a private bus, the mock homeserver, a hostile server on loopback.

use std::{
    collections::HashMap,
    time::{Duration, Instant},
};

use anyhow::Result;
use matrix_linkd::protocol::{
    rendezvous::{Session2024, http_client},
    wire::{
        channel::{Channel, Generation, Initiated},
        messages::{DeviceGrant, LoginMessage},
        qr::LoginQr,
    },
};
use matrix_linkd_client::{ClientError, Flow, GrantOptions, LoginOptions, ManagerProxy, State};
use matrix_linkd_tests::api::{self, errors};
use matrix_linkd_tests::{
    BUS_NAME, MANAGER_PATH, error_name,
    homeserver::USER,
    hostile::{Hostile, peak_rss_kib, rss_kib},
    peers, qr_2024, quiet_grant, sign_in_daemon, signed_in_setup, signed_out_setup, wait_state,
};
use zbus::zvariant::Value;

fn failed_with(r: std::result::Result<matrix_linkd_client::SignedIn, ClientError>, name: &str) -> String {
    match r {
        Err(ClientError::Daemon { name: n, message }) => {
            assert_eq!(n, name, "{message}");
            message
        }
        other => panic!("expected {name}, got {other:?}"),
    }
}

async fn assert_still_signed_in(linkd: &matrix_linkd_client::Linkd) -> Result<()> {
    let status = linkd.status().await?;
    assert_eq!((status.user_id.as_str(), status.state), (USER, matrix_linkd_client::SessionState::SignedIn));
    Ok(())
}

/// A grant whose scanned QR code (a new device's, 2024) points its rendezvous at `url`.
async fn grant_scanning(linkd: &matrix_linkd_client::Linkd, url: &str) -> Result<Flow> {
    Ok(linkd.start_grant(GrantOptions { qr_code: Some(qr_2024(0x03, url, None)), ..quiet_grant() }).await?)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_and_endless_answers_are_cut_off() -> Result<()> {
    let mut s = signed_in_setup(60).await?;
    let hostile = Hostile::start(None).await;
    let linkd = s.session.client().await?;
    let pid = s.session.daemon_pid(s.daemon);
    let before = rss_kib(pid);
    for mode in ["huge", "endless", "unannounced"] {
        let started = Instant::now();
        let flow = grant_scanning(&linkd, &format!("{}/{mode}/s1", hostile.uri())).await?;
        let r = tokio::time::timeout(Duration::from_secs(20), flow.result()).await?;
        let message = failed_with(r, errors::PROTOCOL_ERROR);
        assert!(message.contains("larger than 8192 bytes"), "{mode}: {message}");
        // Uncut, the endless and trickling answers would hold the flow for the 15 s request limit.
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "{mode} held the flow for {:?}",
            started.elapsed()
        );
    }
    let after = rss_kib(pid);
    assert!(after < before + 64 * 1024, "RSS grew from {before} KiB to {after} KiB");
    assert!(s.session.daemon_running(s.daemon));
    assert_still_signed_in(&linkd).await
}

/// A server that answers one byte at a time holds neither `Cancel` nor the owner leaving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_server_holds_neither_cancel_nor_the_owner() -> Result<()> {
    let mut s = signed_in_setup(60).await?;
    let hostile = Hostile::start(None).await;
    let url = format!("{}/trickle/s1", hostile.uri());
    let linkd = s.session.client().await?;
    let flow = grant_scanning(&linkd, &url).await?;
    tokio::time::sleep(Duration::from_millis(700)).await;
    let cancelled = Instant::now();
    flow.cancel().await?;
    // A request that held the flow would run to its 15 s limit (one byte every 200 ms).
    let r = tokio::time::timeout(Duration::from_secs(10), flow.result()).await?;
    assert!(matches!(r, Err(ClientError::Cancelled)), "{r:?}");
    assert!(cancelled.elapsed() < Duration::from_secs(10));

    let owner = s.session.client().await?;
    let flow = grant_scanning(&owner, &url).await?;
    let path = flow.path().clone();
    tokio::time::sleep(Duration::from_millis(700)).await;
    drop(flow);
    owner.connection().clone().close().await?;
    let watcher = s.session.connect().await?;
    let proxy = matrix_linkd_client::FlowProxy::builder(&watcher)
        .path(path)?
        .cache_properties(zbus::proxy::CacheProperties::No)
        .build()
        .await?;
    let deadline = Instant::now() + Duration::from_secs(10);
    while proxy.state().await.is_ok() {
        assert!(Instant::now() < deadline, "the flow outlived its owner while a request was in flight");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(s.session.daemon_running(s.daemon));
    assert_still_signed_in(&linkd).await
}

/// No redirect is followed: a rendezvous write (or read) must not go to a host nobody checked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redirects_are_not_followed() -> Result<()> {
    let s = signed_in_setup(60).await?;
    let elsewhere = Hostile::start(None).await;
    let hostile = Hostile::start(Some(elsewhere.uri())).await;
    let linkd = s.session.client().await?;
    let flow = grant_scanning(&linkd, &format!("{}/redirect/s1", hostile.uri())).await?;
    let message = failed_with(
        tokio::time::timeout(Duration::from_secs(20), flow.result()).await?,
        errors::PROTOCOL_ERROR,
    );
    assert!(message.contains("redirect"), "{message}");
    assert_eq!(hostile.requests(), ["GET /redirect/s1"]);
    assert!(elsewhere.requests().is_empty(), "followed to {:?}", elsewhere.requests());
    assert_still_signed_in(&linkd).await?;

    // The OAuth side too: a login whose QR (a real existing device's, its homeserver slot
    // rewritten) names the redirecting server as the homeserver.
    let (hs, session, _) = signed_out_setup(60).await?;
    let linkd = session.client().await?;
    let mut peer = peers::grant_generating(hs.existing_device("ALICEDEV").await);
    let LoginQr::V2024 { intent, key, rendezvous_url, .. } = LoginQr::parse(&peer.qr().await?)? else {
        anyhow::bail!("matrix-sdk 0.18 shows 2024 codes");
    };
    let server = Some(format!("{}/redirect", hostile.uri()));
    let qr = LoginQr::V2024 { intent, key, rendezvous_url, server }.encode();
    let mut flow = linkd.start_login(LoginOptions { qr_code: Some(qr), ..Default::default() }).await?;
    wait_state(&mut flow, State::ShowingCheckCode).await?;
    peer.code_sender().await?.send(flow.check_code_to_show().await?).await?;
    failed_with(tokio::time::timeout(Duration::from_secs(20), flow.result()).await?, errors::UNSUPPORTED);
    assert!(peer.finish().await?.is_err(), "the existing device is told");
    assert!(elsewhere.requests().is_empty(), "followed to {:?}", elsewhere.requests());
    Ok(())
}

/// The daemon's next write to a 2024 rendezvous session.
async fn next_write(rv: &mut Session2024) -> Result<String> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(payload) = rv.poll().await? {
            return Ok(payload);
        }
        anyhow::ensure!(Instant::now() < deadline, "the daemon wrote nothing");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Plays the scanning side (S) of a 2024 handshake against the daemon's QR code; returns once the
/// daemon waits for the check code.
async fn scan_daemon_qr(flow: &mut Flow) -> Result<(Session2024, Channel)> {
    wait_state(flow, State::QrReady).await?;
    let LoginQr::V2024 { key, rendezvous_url, .. } = LoginQr::parse(&flow.qr_code("raw").await?)? else {
        anyhow::bail!("a 2024 code was expected");
    };
    let mut rv = Session2024::join(&http_client(), url::Url::parse(&rendezvous_url)?);
    rv.poll().await?;
    let (pending, initiate) = Initiated::start(Generation::V2024, &key, &[]).map_err(anyhow::Error::msg)?;
    rv.send(&initiate).await?;
    let ok = next_write(&mut rv).await?;
    let channel = pending.confirm(&ok, &[]).map_err(anyhow::Error::msg)?;
    wait_state(flow, State::WaitingForCheckCode).await?;
    flow.check_code(channel.check_code()).await?;
    Ok((rv, channel))
}

/// What the daemon told us last.
async fn told(rv: &mut Session2024, channel: &mut Channel) -> Result<LoginMessage> {
    let answer = next_write(rv).await?;
    Ok(LoginMessage::decode(&channel.open(&answer, &[]).map_err(anyhow::Error::msg)?)?)
}

/// A lying new device names a consent page of its own: refused before our user is asked, and told.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lying_new_device_cannot_choose_the_consent_page() -> Result<()> {
    let s = signed_in_setup(60).await?;
    let linkd = s.session.client().await?;
    for page in ["http://phish.invalid/link?code=1", "https://phish.invalid/link", "https://127.0.0.2:1/link"]
    {
        let mut flow = linkd.start_grant(quiet_grant()).await?;
        let (mut rv, mut channel) = scan_daemon_qr(&mut flow).await?;
        let protocol = LoginMessage::Protocol {
            protocol: "device_authorization_grant".into(),
            device_authorization_grant: Some(DeviceGrant {
                verification_uri: format!("{}/link", s.hs.uri()),
                verification_uri_complete: Some(page.into()),
            }),
            device_id: "LIARDEVICE".into(),
        };
        rv.send(&channel.seal(&protocol.encode(), &[])).await?;
        let r = tokio::time::timeout(Duration::from_secs(20), flow.result()).await?;
        let message = failed_with(r, errors::PROTOCOL_ERROR);
        assert!(message.contains("consent page"), "{page}: {message}");
        // 2024 peers know no `unable_to_open_verification_uri`.
        assert_eq!(
            told(&mut rv, &mut channel).await?,
            LoginMessage::Failure { reason: "user_cancelled".into(), homeserver: None }
        );
    }
    assert_still_signed_in(&linkd).await
}

/// Plain http only to this machine: from a QR code, from the `homeserver` option, and from an
/// existing device's `m.login.protocols`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_http_to_other_hosts_is_refused() -> Result<()> {
    let (hs, mut session, d) = signed_out_setup(60).await?;
    let linkd = session.client().await?;
    let start = |options: LoginOptions| {
        let linkd = &linkd;
        async move { error_name(linkd.start_login(options).await.map(|f| f.path().clone())) }
    };
    let clear_rendezvous = qr_2024(0x04, "http://hs.example.org/rendezvous/1", Some("hs.example.org"));
    assert_eq!(
        start(LoginOptions { qr_code: Some(clear_rendezvous), ..Default::default() }).await,
        errors::INVALID_QR_CODE
    );
    let clear_server = qr_2024(0x04, &format!("{}/rendezvous/1", hs.uri()), Some("http://hs.example.org"));
    assert_eq!(
        start(LoginOptions { qr_code: Some(clear_server), ..Default::default() }).await,
        errors::INVALID_QR_CODE
    );
    let option = LoginOptions { homeserver: Some("http://hs.example.org".into()), ..Default::default() };
    assert_eq!(start(option).await, errors::INVALID_ARGS);

    let mut flow =
        linkd.start_login(LoginOptions { homeserver: Some(hs.uri()), ..Default::default() }).await?;
    let (mut rv, mut channel) = scan_daemon_qr(&mut flow).await?;
    let protocols = LoginMessage::Protocols {
        protocols: vec!["device_authorization_grant".into()],
        homeserver: Some("http://hs.example.org".into()),
        base_url: None,
    };
    rv.send(&channel.seal(&protocols.encode(), &[])).await?;
    let message = failed_with(
        tokio::time::timeout(Duration::from_secs(20), flow.result()).await?,
        errors::PROTOCOL_ERROR,
    );
    assert!(message.contains("plain http"), "{message}");
    assert_eq!(
        told(&mut rv, &mut channel).await?,
        LoginMessage::Failure { reason: "unexpected_message_received".into(), homeserver: None }
    );
    assert!(session.daemon_running(d));
    assert!(session.kept_session().is_none());
    Ok(())
}

/// A code from a stranger's picture cannot make the daemon reach this machine's own services or
/// the link's (cloud metadata): outside a test set-up (`security.allow_local_addresses`), a code
/// or a homeserver naming loopback, link-local or unspecified addresses is refused before any
/// request goes out. Private networks over https stay allowed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scanned_codes_cannot_reach_local_services() -> Result<()> {
    // Any local HTTP service: it must see no request at all.
    let service = wiremock::MockServer::start().await;
    let port = service.address().port();
    let mut session = matrix_linkd_tests::Session::start().await?;
    session.write_config("log_level = \"debug\"\n[desktop]\nopen_uri = false\n")?;
    let d = session.start_daemon(&[]).await?;
    session.wait_session_state(api::SessionState::SignedOut, Duration::from_secs(20)).await?;
    let linkd = session.client().await?;
    let start = |options: LoginOptions| {
        let linkd = &linkd;
        async move { error_name(linkd.start_login(options).await.map(|f| f.path().clone())) }
    };
    let on_this_machine = [
        qr_2024(0x04, &format!("http://127.0.0.1:{port}/some/path?query"), None),
        qr_2024(0x04, &format!("http://localhost:{port}/rendezvous/1"), None),
        qr_2024(0x04, "https://169.254.169.254/latest/meta-data", None),
        qr_2024(0x04, "https://[::]/rendezvous/1", None),
        qr_2024(0x04, "https://hs.example.org/rendezvous/1", Some(&format!("127.0.0.1:{port}"))),
    ];
    for code in on_this_machine {
        let options = LoginOptions { qr_code: Some(code), ..Default::default() };
        assert_eq!(start(options).await, errors::INVALID_QR_CODE);
    }
    let option = LoginOptions { homeserver: Some(format!("http://127.0.0.1:{port}")), ..Default::default() };
    assert_eq!(start(option).await, errors::INVALID_ARGS);
    assert!(service.received_requests().await.unwrap_or_default().is_empty(), "a local service was reached");
    assert!(session.daemon_running(d));
    Ok(())
}

/// An OAuth server that answers `expires_in` and `interval` of `u64::MAX` does not break a login.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn absurd_numbers_from_the_oauth_server_do_not_break_a_login() -> Result<()> {
    let (hs, mut session, d) = signed_out_setup(60).await?;
    hs.send_extreme_numbers();
    let alice = hs.existing_device("ALICEDEV").await;
    let signed_in =
        tokio::time::timeout(Duration::from_secs(60), sign_in_daemon(&session, &hs, &alice)).await??;
    assert_eq!(signed_in.user_id, USER);
    assert!(session.daemon_running(d), "{}", session.log(d));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handle_tokens_are_bounded() -> Result<()> {
    let (_hs, mut session, d) = signed_out_setup(60).await?;
    let conn = session.connect().await?;
    let manager = ManagerProxy::new(&conn).await?;
    let grant = |token: String| {
        let manager = manager.clone();
        async move {
            let opts: HashMap<&str, Value<'_>> =
                HashMap::from([(api::options::HANDLE_TOKEN, Value::from(token))]);
            error_name(manager.start_grant(opts).await.map_err(ClientError::from))
        }
    };
    assert_eq!(grant("x".repeat(65)).await, errors::INVALID_ARGS);
    assert_eq!(grant("x".repeat(300_000)).await, errors::INVALID_ARGS);
    // Within the limit the token is taken (and the grant refused for what it is).
    assert_eq!(grant("x".repeat(64)).await, errors::NOT_SIGNED_IN);
    assert!(session.daemon_running(d));
    assert!(!session.log(d).contains(&"x".repeat(65)), "an oversized token reached the log");
    Ok(())
}

/// One call cannot make the daemon hold it: a `qr_code` of 8 MiB or of the largest message the
/// D-Bus format allows (a QR code holds at most ~3 KB) is refused with `InvalidArgs` and raises the
/// daemon's peak RSS by at most 16 MiB (an 8 MiB one cost 1.09 GB when every byte became a
/// `zvariant::Value`, then 7.8 MiB while zbus read whole messages), and the daemon keeps its
/// session. Within a message it reads, the options reader bounds the rest: a code a little too long
/// gets `InvalidQrCode`, too many options and an overlong string `InvalidArgs`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_options_are_refused_before_they_cost_memory() -> Result<()> {
    let mut s = signed_in_setup(60).await?;
    let conn = s.session.connect().await?;
    let manager = ManagerProxy::new(&conn).await?;
    let pid = s.session.daemon_pid(s.daemon);
    // The largest call the D-Bus format allows (a message of at most 128 MiB; an array, the
    // options dictionary among them, of at most 64 MiB, so two byte arrays here, the signature any
    // program may send), and an 8 MiB `qr_code`: each is read off the socket in pieces and dropped
    // (`dbus::bounded`), and the call whose body the daemon never took is refused. Without the
    // bound the daemon holds the whole message first.
    let huge = vec![0x4du8; (64 << 20) - 4096];
    let code = vec![0x4du8; 8 << 20];
    for (mib, body) in [(128, (&huge[..], &huge[..]).into()), (8, None)] {
        let body: Option<(&[u8], &[u8])> = body;
        let before = peak_rss_kib(pid);
        let started = std::time::Instant::now();
        let name = match body {
            Some(arrays) => {
                match conn
                    .call_method(
                        Some(BUS_NAME),
                        MANAGER_PATH,
                        Some(api::MANAGER_INTERFACE),
                        "StartLogin",
                        &arrays,
                    )
                    .await
                {
                    Err(zbus::Error::MethodError(name, _, _)) => name.to_string(),
                    other => format!("{other:?}"),
                }
            }
            None => {
                let opts: HashMap<&str, Value<'_>> =
                    HashMap::from([(api::options::QR_CODE, Value::from(&code[..]))]);
                error_name(manager.start_login(opts).await.map_err(ClientError::from))
            }
        };
        let took = started.elapsed();
        let grown = peak_rss_kib(pid).saturating_sub(before);
        eprintln!(
            "a call of {mib} MiB: answered in {took:.2?} ({name}), the daemon's peak RSS grew {grown} KiB"
        );
        assert!(grown <= 16 * 1024, "a {mib} MiB call raised the daemon's peak RSS by {grown} KiB");
        assert_eq!(name, errors::INVALID_ARGS);
    }
    // What fits in a message the daemon reads is bounded by the options reader: a code a little
    // too long (as in `failures.rs`), too many keys, a string too long.
    let long_code = vec![0x4du8; 64 << 10];
    let opts: HashMap<&str, Value<'_>> =
        HashMap::from([(api::options::QR_CODE, Value::from(&long_code[..]))]);
    assert_eq!(
        error_name(manager.start_login(opts).await.map_err(ClientError::from)),
        errors::INVALID_QR_CODE
    );
    let keys: Vec<String> = (0..100).map(|n| format!("k{n}")).collect();
    let many: HashMap<&str, Value<'_>> = keys.iter().map(|k| (k.as_str(), Value::from(true))).collect();
    assert_eq!(error_name(manager.start_grant(many).await.map_err(ClientError::from)), errors::INVALID_ARGS);
    let long = "https://example.org/".repeat(1000);
    let opts = HashMap::from([(api::options::HOMESERVER, Value::from(long.as_str()))]);
    assert_eq!(error_name(manager.start_login(opts).await.map_err(ClientError::from)), errors::INVALID_ARGS);
    assert!(s.session.daemon_running(s.daemon));
    assert_still_signed_in(&s.session.client().await?).await?;
    Ok(())
}

/// Names a person reads (`client_name`, `device_display_name`) carry no character that hides what
/// they say: a right-to-left override, a zero-width space, a line separator are refused with
/// `InvalidArgs` before anything starts; an ordinary name in any script is taken.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn names_with_hidden_characters_are_refused() -> Result<()> {
    let mut s = signed_in_setup(60).await?;
    let conn = s.session.connect().await?;
    let manager = ManagerProxy::new(&conn).await?;
    for (key, name) in [
        (api::options::CLIENT_NAME, "Evil\u{202E}gpj.exe"),
        (api::options::CLIENT_NAME, "Fractal\u{200B}"),
        (api::options::DEVICE_DISPLAY_NAME, "laptop\u{2028}INFO signed in"),
    ] {
        let opts = HashMap::from([(key, Value::from(name)), (api::options::NOTIFY, Value::from(false))]);
        let r = manager.start_delegation(opts).await.map_err(ClientError::from);
        assert_eq!(error_name(r), errors::INVALID_ARGS, "{key} = {name:?}");
    }
    let opts = HashMap::from([(api::options::DEVICE_DISPLAY_NAME, Value::from("pc\u{202E}"))]);
    assert_eq!(error_name(manager.start_login(opts).await.map_err(ClientError::from)), errors::INVALID_ARGS);
    assert!(s.session.daemon_running(s.daemon));
    assert_still_signed_in(&s.session.client().await?).await?;
    Ok(())
}

/// A call with the wrong signature gets the documented `InvalidArgs`, not zbus's own
/// `org.freedesktop.zbus.Error`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_signatures_get_invalid_args() -> Result<()> {
    let (_hs, mut session, d) = signed_out_setup(60).await?;
    let conn = session.connect().await?;
    let call = |method: &'static str, body: &'static str| {
        let conn = conn.clone();
        async move {
            let iface = api::MANAGER_INTERFACE;
            let r = match body {
                "s" => conn.call_method(Some(BUS_NAME), MANAGER_PATH, Some(iface), method, &("x",)).await,
                "u" => conn.call_method(Some(BUS_NAME), MANAGER_PATH, Some(iface), method, &(7u32,)).await,
                _ => conn.call_method(Some(BUS_NAME), MANAGER_PATH, Some(iface), method, &()).await,
            };
            match r {
                Err(zbus::Error::MethodError(name, _, _)) => name.to_string(),
                other => format!("{other:?}"),
            }
        }
    };
    for (method, body) in [("StartGrant", "s"), ("StartLogin", "u"), ("StartGrant", "")] {
        assert_eq!(call(method, body).await, errors::INVALID_ARGS, "{method}({body})");
    }
    assert!(session.daemon_running(d));
    Ok(())
}

/// The same for a flow's methods (`CheckCode y`, `GetQrCode s`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_signatures_on_a_flow_get_invalid_args() -> Result<()> {
    let s = signed_in_setup(60).await?;
    let linkd = s.session.client().await?;
    let mut flow = linkd.start_grant(quiet_grant()).await?;
    wait_state(&mut flow, State::QrReady).await?;
    let conn = linkd.connection();
    let iface = Some(api::FLOW_INTERFACE);
    let name = |r: zbus::Result<zbus::Message>| match r {
        Err(zbus::Error::MethodError(name, _, _)) => name.to_string(),
        other => format!("{other:?}"),
    };
    let path = flow.path().clone();
    let r = conn.call_method(Some(BUS_NAME), &path, iface, "CheckCode", &("12",)).await;
    assert_eq!(name(r), errors::INVALID_ARGS);
    let r = conn.call_method(Some(BUS_NAME), &path, iface, "GetQrCode", &(1u8,)).await;
    assert_eq!(name(r), errors::INVALID_ARGS);
    flow.cancel().await?;
    assert_still_signed_in(&linkd).await
}
