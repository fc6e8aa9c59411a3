//! Every bad input gets a named error, the peer side behaves, and the daemon stays up with its
//! session intact. Same stack as `flows.rs`.

use std::{collections::HashMap, time::Duration};

use anyhow::Result;
use matrix_linkd_client::{
    ClientError, FlowProxy, GrantOptions, LoginOptions, ManagerProxy, SessionState, State,
};
use matrix_linkd_tests::api::{errors, options, qr_formats};
use matrix_linkd_tests::{
    Session, SessionOptions, error_name, grant_scanned_by,
    homeserver::{MockHomeserver, USER},
    peers, qr_2024, quiet_grant, signed_in_setup, signed_out_setup, test_config, wait_state,
};
use matrix_sdk::authentication::oauth::qrcode::{QRCodeGrantLoginError, QRCodeLoginError};
use zbus::zvariant::Value;

async fn assert_still_signed_in(session: &mut Session, daemon: usize) -> Result<()> {
    assert!(session.daemon_running(daemon), "the daemon died: {}", session.log(daemon));
    let status = session.client().await?.status().await?;
    assert_eq!((status.user_id.as_str(), status.state), (USER, SessionState::SignedIn));
    Ok(())
}

/// The matrix-sdk new device ended with the daemon's `m.login.failure` and this reason.
async fn assert_new_device_told(peer: peers::Peer<QRCodeLoginError>, reason: &str) {
    match peer.finish().await {
        Ok(Err(QRCodeLoginError::LoginFailure { reason: r, .. })) => assert_eq!(r.as_str(), reason),
        other => panic!("the new device was not told `{reason}`: {other:?}"),
    }
}

/// The matrix-sdk existing device ended with the daemon's `m.login.failure` and this reason.
async fn assert_existing_device_told(peer: peers::Peer<QRCodeGrantLoginError>, reason: &str) {
    match peer.finish().await {
        Ok(Err(QRCodeGrantLoginError::LoginFailure { reason: r })) => assert_eq!(r.as_str(), reason),
        other => panic!("the existing device was not told `{reason}`: {other:?}"),
    }
}

fn failed_with(r: Result<matrix_linkd_client::SignedIn, ClientError>, name: &str) {
    match r {
        Err(ClientError::Daemon { name: n, .. }) => {
            assert_eq!(n, name)
        }
        other => panic!("expected {name}, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_truncated_and_foreign_qr_codes() -> Result<()> {
    let (hs, mut session, d) = signed_out_setup(60).await?;
    let linkd = session.client().await?;
    let login = |qr: Vec<u8>| linkd.start_login(LoginOptions { qr_code: Some(qr), ..Default::default() });

    let good = qr_2024(0x04, &format!("{}/rendezvous/s1", hs.uri()), Some(&hs.uri()));
    assert_eq!(
        error_name(login(b"not a qr code".to_vec()).await.map(|f| f.path().clone())),
        errors::INVALID_QR_CODE
    );
    assert_eq!(
        error_name(login(good[..good.len() - 5].to_vec()).await.map(|f| f.path().clone())),
        errors::INVALID_QR_CODE
    );
    assert_eq!(
        error_name(login(good[..10].to_vec()).await.map(|f| f.path().clone())),
        errors::INVALID_QR_CODE
    );
    assert_eq!(
        error_name(login(b"MATRIX\x07\x03".to_vec()).await.map(|f| f.path().clone())),
        errors::INVALID_QR_CODE
    );
    // A truncated latest-generation code.
    assert_eq!(
        error_name(login(b"MATRIX\x03\x01abc".to_vec()).await.map(|f| f.path().clone())),
        errors::INVALID_QR_CODE
    );
    // Wrong intent: a QR shown by another new device (0x03) cannot sign the daemon in.
    let login_intent = qr_2024(0x03, &format!("{}/rendezvous/s1", hs.uri()), None);
    assert_eq!(error_name(login(login_intent).await.map(|f| f.path().clone())), errors::INVALID_QR_CODE);
    // Oversized.
    assert_eq!(error_name(login(vec![b'M'; 5000]).await.map(|f| f.path().clone())), errors::INVALID_QR_CODE);

    assert!(session.daemon_running(d));
    assert_eq!(session.client().await?.manager().session_state().await?, SessionState::SignedOut as u32);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_in_the_wrong_session_state() -> Result<()> {
    let (_hs, session, _) = signed_out_setup(60).await?;
    let linkd = session.client().await?;
    // Signed out: no grant, no sign-out.
    assert_eq!(
        error_name(linkd.start_grant(GrantOptions::default()).await.map(|f| f.path().clone())),
        errors::NOT_SIGNED_IN
    );
    assert_eq!(error_name(linkd.sign_out().await), errors::NOT_SIGNED_IN);
    drop(session);

    let mut s = signed_in_setup(60).await?;
    let linkd = s.session.client().await?;
    assert_eq!(
        error_name(
            linkd
                .start_login(LoginOptions { homeserver: Some(s.hs.uri()), ..Default::default() })
                .await
                .map(|f| f.path().clone())
        ),
        errors::ALREADY_SIGNED_IN
    );
    // A reciprocate QR (shown by a signed-in device) cannot be granted.
    let reciprocate = qr_2024(0x04, &format!("{}/rendezvous/s1", s.hs.uri()), Some("localhost"));
    assert_eq!(
        error_name(
            linkd
                .start_grant(GrantOptions { qr_code: Some(reciprocate), ..Default::default() })
                .await
                .map(|f| f.path().clone())
        ),
        errors::INVALID_QR_CODE
    );

    // CheckCode / Approve before their state; a second flow while one runs (the per-caller limit
    // is 2), a third, sign-out.
    let mut flow = linkd.start_grant(quiet_grant()).await?;
    wait_state(&mut flow, State::QrReady).await?;
    assert_eq!(error_name(flow.check_code(42).await), errors::INVALID_STATE);
    assert_eq!(error_name(flow.approve().await), errors::INVALID_STATE);
    assert_eq!(error_name(flow.qr_code("bmp").await), errors::INVALID_ARGS);
    let mut second = linkd.start_grant(quiet_grant()).await?;
    wait_state(&mut second, State::QrReady).await?;
    assert_eq!(
        error_name(linkd.start_grant(GrantOptions::default()).await.map(|f| f.path().clone())),
        errors::BUSY
    );
    assert_eq!(error_name(linkd.sign_out().await), errors::BUSY);
    flow.cancel().await?;
    second.cancel().await?;
    assert!(matches!(flow.result().await, Err(ClientError::Cancelled)));
    assert!(matches!(second.result().await, Err(ClientError::Cancelled)));

    // Malformed options.
    let manager = linkd.manager();
    let bad_type: HashMap<&str, Value<'_>> = HashMap::from([(options::DETACHED, Value::from("yes"))]);
    assert_eq!(
        error_name(manager.start_grant(bad_type).await.map_err(ClientError::from)),
        errors::INVALID_ARGS
    );
    let bad_token: HashMap<&str, Value<'_>> = HashMap::from([(options::HANDLE_TOKEN, Value::from("a/b"))]);
    assert_eq!(
        error_name(manager.start_grant(bad_token).await.map_err(ClientError::from)),
        errors::INVALID_ARGS
    );

    assert_still_signed_in(&mut s.session, s.daemon).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_check_code_fails_the_flow() -> Result<()> {
    let mut s = signed_in_setup(60).await?;
    let linkd = s.session.client().await?;
    let (flow, peer, code) = grant_scanned_by(&linkd, quiet_grant(), s.hs.new_device().await).await?;
    flow.check_code((code + 1) % 100).await?;
    // A second attempt is not allowed (the flow may already be gone).
    let again = error_name(flow.check_code(code).await);
    assert!(again == errors::INVALID_STATE || again == errors::UNKNOWN_OBJECT, "{again}");
    failed_with(flow.result().await, errors::INVALID_CHECK_CODE);
    assert_new_device_told(peer, "user_cancelled").await;
    assert_still_signed_in(&mut s.session, s.daemon).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_owner_may_drive_or_read_a_flow() -> Result<()> {
    let mut s = signed_in_setup(60).await?;
    let owner = s.session.client().await?;
    let mut flow = owner.start_grant(quiet_grant()).await?;
    wait_state(&mut flow, State::QrReady).await?;

    let other = s.session.connect().await?;
    let foreign = FlowProxy::builder(&other)
        .path(flow.path().clone())?
        .cache_properties(zbus::proxy::CacheProperties::No)
        .build()
        .await?;
    let denied = |r: zbus::Result<()>| error_name(r.map_err(ClientError::from));
    assert_eq!(denied(foreign.check_code(1).await), errors::ACCESS_DENIED);
    assert_eq!(denied(foreign.approve().await), errors::ACCESS_DENIED);
    assert_eq!(denied(foreign.cancel().await), errors::ACCESS_DENIED);
    assert_eq!(denied(foreign.get_qr_code("raw").await.map(|_| ())), errors::ACCESS_DENIED);
    assert_eq!(denied(foreign.wait().await.map(|_| ())), errors::ACCESS_DENIED);
    assert_eq!(denied(foreign.verification_uri().await.map(|_| ())), errors::ACCESS_DENIED);
    assert_eq!(denied(foreign.check_code_to_show().await.map(|_| ())), errors::ACCESS_DENIED);
    // Public properties are readable.
    assert_eq!(foreign.state().await?, 2);
    assert_eq!(foreign.kind().await?, 1);
    // The owner is unaffected.
    flow.cancel().await?;
    assert!(matches!(flow.result().await, Err(ClientError::Cancelled)));
    assert_still_signed_in(&mut s.session, s.daemon).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn owner_leaving_cancels_the_flow() -> Result<()> {
    let mut s = signed_in_setup(60).await?;
    let owner = s.session.client().await?;
    let mut flow = owner.start_grant(quiet_grant()).await?;
    wait_state(&mut flow, State::QrReady).await?;
    let path = flow.path().clone();
    let mut peer = peers::login_scanning(s.hs.new_device().await, flow.qr_code("raw").await?);
    peer.shown_code().await?;
    drop(flow);
    owner.connection().clone().close().await?;
    drop(owner);

    // The object goes away and a new flow can start.
    let watcher = s.session.connect().await?;
    let proxy = FlowProxy::builder(&watcher)
        .path(path)?
        .cache_properties(zbus::proxy::CacheProperties::No)
        .build()
        .await?;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while proxy.state().await.is_ok() {
        assert!(std::time::Instant::now() < deadline, "the flow outlived its owner");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The new device is told why the flow ended.
    assert_new_device_told(peer, "user_cancelled").await;
    let linkd = s.session.client().await?;
    let flow = linkd.start_grant(quiet_grant()).await?;
    flow.cancel().await?;
    assert_still_signed_in(&mut s.session, s.daemon).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn detached_flows_serve_other_processes_of_the_user() -> Result<()> {
    let mut s = signed_in_setup(60).await?;
    // Like `busctl call … StartGrant 'a{sv}' 2 handle_token s t1 detached b true`: the starter exits.
    let starter = s.session.connect().await?;
    let manager = ManagerProxy::new(&starter).await?;
    let opts: HashMap<&str, Value<'_>> = HashMap::from([
        (options::HANDLE_TOKEN, Value::from("t1")),
        (options::DETACHED, Value::from(true)),
        (options::NOTIFY, Value::from(false)),
        (options::OPEN_URI, Value::from(false)),
    ]);
    let path = manager.start_grant(opts).await?;
    starter.close().await?;

    let other = s.session.connect().await?;
    let flow = FlowProxy::builder(&other)
        .path(path)?
        .cache_properties(zbus::proxy::CacheProperties::No)
        .build()
        .await?;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while flow.state().await? != State::QrReady as u32 {
        assert!(std::time::Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(!flow.get_qr_code(qr_formats::UTF8).await?.is_empty());
    flow.cancel().await?;
    let (response, _) = flow.wait().await.or_else(|e| match e {
        // The flow may be gone by the time Wait arrives.
        zbus::Error::MethodError(..) | zbus::Error::FDO(_) => Ok((1, HashMap::new())),
        e => Err(e),
    })?;
    assert_eq!(response, 1);
    assert_still_signed_in(&mut s.session, s.daemon).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_rendezvous_is_named() -> Result<()> {
    let mut s = signed_in_setup(60).await?;
    let linkd = s.session.client().await?;
    let mut flow = linkd.start_grant(quiet_grant()).await?;
    wait_state(&mut flow, State::QrReady).await?;
    s.hs.expire_rendezvous();
    failed_with(tokio::time::timeout(Duration::from_secs(30), flow.result()).await?, errors::EXPIRED);
    assert_still_signed_in(&mut s.session, s.daemon).await
}

/// Grant up to consent, then the OAuth server answers the new device's token poll with
/// `token_error`; the new device tells the daemon, which must name it.
async fn peer_gives_up(token_error: &'static str, expected: &str, message_part: &str) -> Result<()> {
    let mut s = signed_in_setup(60).await?;
    let linkd = s.session.client().await?;
    let (mut flow, peer, code) = grant_scanned_by(&linkd, quiet_grant(), s.hs.new_device().await).await?;
    flow.check_code(code).await?;
    wait_state(&mut flow, State::WaitingForApproval).await?;
    s.hs.plan_token_error(token_error);
    flow.approve().await?;
    let r = tokio::time::timeout(Duration::from_secs(30), flow.result()).await?;
    match &r {
        Err(ClientError::Daemon { message, .. }) => assert!(message.contains(message_part), "{message}"),
        other => panic!("{other:?}"),
    }
    failed_with(r, expected);
    assert!(peer.finish().await?.is_err());
    assert_still_signed_in(&mut s.session, s.daemon).await
}

/// The device code expired: the new device sends `m.login.failure` (`authorization_expired`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peer_reporting_failure_is_passed_through() -> Result<()> {
    peer_gives_up("expired_token", errors::EXPIRED, "authorization_expired").await
}

/// The user denied: the new device sends `m.login.declined`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peer_declining_is_passed_through() -> Result<()> {
    peer_gives_up("access_denied", errors::LOGIN_FAILED, "declined").await
}

/// The flow's time runs out while the user has not typed the code: `Expired`, and the new device
/// is told.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flow_times_out() -> Result<()> {
    // Signed in with the usual limit, then the daemon restarted with a 15 s one: the sign-in is
    // no part of what is timed.
    let mut s = signed_in_setup(60).await?;
    std::fs::write(s.session.config_path(), matrix_linkd_tests::test_config(&s.hs.uri(), 15))?;
    s.session.stop_daemon(s.daemon)?;
    s.daemon = s.session.start_daemon(&[]).await?;
    s.session.wait_session_state(SessionState::SignedIn, Duration::from_secs(20)).await?;
    let linkd = s.session.client().await?;
    let (flow, peer, _code) = grant_scanned_by(&linkd, quiet_grant(), s.hs.new_device().await).await?;
    let expires = flow.proxy().expires_at().await?;
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_micros() as u64;
    assert!(expires > now && expires < now + 16_000_000, "ExpiresAt {expires} vs now {now}");
    failed_with(tokio::time::timeout(Duration::from_secs(40), flow.result()).await?, errors::EXPIRED);
    assert_new_device_told(peer, "user_cancelled").await;
    assert_still_signed_in(&mut s.session, s.daemon).await
}

/// `Cancel` at consent declines: the new device is told `user_cancelled` and gets nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_at_consent_tells_the_new_device() -> Result<()> {
    let mut s = signed_in_setup(60).await?;
    let linkd = s.session.client().await?;
    let (mut flow, peer, code) = grant_scanned_by(&linkd, quiet_grant(), s.hs.new_device().await).await?;
    flow.check_code(code).await?;
    wait_state(&mut flow, State::WaitingForApproval).await?;
    flow.cancel().await?;
    assert!(matches!(flow.result().await, Err(ClientError::Cancelled)));
    assert_new_device_told(peer, "user_cancelled").await;
    assert_still_signed_in(&mut s.session, s.daemon).await
}

/// The daemon stops (SIGTERM) mid-flow: the new device is told, and the session deleted, before
/// it exits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_tells_the_new_device() -> Result<()> {
    let mut s = signed_in_setup(60).await?;
    let linkd = s.session.client().await?;
    let (mut flow, peer, code) = grant_scanned_by(&linkd, quiet_grant(), s.hs.new_device().await).await?;
    flow.check_code(code).await?;
    wait_state(&mut flow, State::WaitingForApproval).await?;
    let status = s.session.stop_daemon(s.daemon)?;
    assert!(status.success(), "the daemon did not stop cleanly: {status}");
    // The rendezvous session was deleted before the daemon exited.
    assert_eq!(s.hs.open_rendezvous_sessions(), 0, "the rendezvous session was left behind");
    assert_new_device_told(peer, "user_cancelled").await;
    Ok(())
}

/// The daemon as the new device: `Cancel` while it waits for consent on the existing device tells
/// that device, and the daemon stays signed out with nothing kept.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_cancel_tells_the_existing_device() -> Result<()> {
    let (hs, mut session, d) = signed_out_setup(60).await?;
    let linkd = session.client().await?;
    let mut peer = peers::grant_generating(hs.existing_device("ALICEDEV").await);
    let qr = peer.qr().await?;
    let mut flow = linkd.start_login(LoginOptions { qr_code: Some(qr), ..Default::default() }).await?;
    wait_state(&mut flow, State::ShowingCheckCode).await?;
    let code = flow.check_code_to_show().await?;
    peer.code_sender().await?.send(code).await?;
    peer.verification_uri().await?;
    flow.cancel().await?;
    assert!(matches!(flow.result().await, Err(ClientError::Cancelled)));
    assert_existing_device_told(peer, "user_cancelled").await;
    assert!(session.daemon_running(d));
    assert_eq!(session.client().await?.manager().session_state().await?, SessionState::SignedOut as u32);
    assert!(session.kept_session().is_none(), "a cancelled login kept a session");
    Ok(())
}

/// The data directory holds nothing but the daemon's instance lock: no store was written.
fn assert_nothing_but_the_lock(session: &Session, when: &str) {
    let entries: Vec<_> = std::fs::read_dir(session.data_dir())
        .map(|d| d.filter_map(|e| e.ok()).map(|e| e.file_name().to_string_lossy().into_owned()).collect())
        .unwrap_or_default();
    assert!(entries.iter().all(|e| e == "lock"), "something was written {when}: {entries:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_keyring_means_no_login_and_nothing_on_disk() -> Result<()> {
    let hs = MockHomeserver::start().await;
    let mut session = Session::start_with(SessionOptions { keyring: false, ..Default::default() }).await?;
    session.write_config(&test_config(&hs.uri(), 60))?;
    let d = session.start_daemon(&[]).await?;
    session.wait_session_state(SessionState::Error, Duration::from_secs(20)).await?;
    let linkd = session.client().await?;
    // Refused before a QR code is shown: the session could not be kept.
    let started = linkd.start_login(LoginOptions { homeserver: Some(hs.uri()), ..Default::default() }).await;
    assert_eq!(error_name(started.map(|f| f.path().clone())), errors::SECRET_STORAGE);
    assert_nothing_but_the_lock(&session, "without a keyring");
    assert!(session.daemon_running(d));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn locked_keyring_means_no_login() -> Result<()> {
    let (hs, mut session, d) = signed_out_setup(60).await?;
    session.wait_session_state(SessionState::SignedOut, Duration::from_secs(20)).await?;
    let st = session
        .command("busctl")
        .args([
            "--user",
            "call",
            "org.freedesktop.secrets",
            "/org/freedesktop/secrets",
            "org.freedesktop.Secret.Service",
            "Lock",
            "ao",
            "1",
            "/org/freedesktop/secrets/collection/login",
        ])
        .stdout(std::process::Stdio::null())
        .status()?;
    assert!(st.success());
    let linkd = session.client().await?;
    // Refused before a QR code is shown: the session could not be kept.
    let started = linkd.start_login(LoginOptions { homeserver: Some(hs.uri()), ..Default::default() }).await;
    assert_eq!(error_name(started.map(|f| f.path().clone())), errors::SECRET_STORAGE);
    assert_nothing_but_the_lock(&session, "with a locked keyring");
    assert!(session.daemon_running(d));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sign_out_revokes_and_wipes() -> Result<()> {
    let mut s = signed_in_setup(60).await?;
    let linkd = s.session.client().await?;
    assert!(s.session.data_dir().join("store").exists());
    linkd.sign_out().await?;
    let revocations = s.hs.server.server().received_requests().await.unwrap_or_default();
    let revocations: Vec<_> = revocations.iter().filter(|r| r.url.path() == "/oauth2/revoke").collect();
    assert_eq!(revocations.len(), 2, "refresh and access token should be revoked");
    let body = String::from_utf8_lossy(&revocations[1].body).into_owned();
    assert!(
        body.contains(&format!("token={}", s.hs.issued_tokens()[0])) && body.contains("client_id="),
        "{body}"
    );
    assert_eq!(linkd.manager().session_state().await?, SessionState::SignedOut as u32);
    assert_eq!(linkd.manager().user_id().await?, "");
    assert!(!s.session.data_dir().join("store").exists(), "store left behind");
    // No item of ours is left in the keyring.
    let out = s
        .session
        .command("secret-tool")
        .args(["search", "--all", "application", "io.github.matrix_linkd"])
        .output()?;
    assert!(
        String::from_utf8_lossy(&out.stdout).trim().is_empty()
            && String::from_utf8_lossy(&out.stderr).trim().is_empty(),
        "keyring items left: {out:?}"
    );
    // A restart stays signed out.
    s.session.stop_daemon(s.daemon)?;
    s.session.start_daemon(&[]).await?;
    s.session.wait_session_state(SessionState::SignedOut, Duration::from_secs(20)).await?;
    Ok(())
}

/// The daemon's next write to a 2024 rendezvous session.
async fn next_write(rv: &mut matrix_linkd::protocol::rendezvous::Session2024) -> Result<String> {
    loop {
        if let Some(payload) = rv.poll().await? {
            return Ok(payload);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A new device that lies: it asks to sign in as a device ID that already exists on the account.
/// Played with our own wire crate, so the test can read exactly what the daemon answers: the grant
/// fails with `DeviceIdInUse`, the liar is told `device_already_exists`, and nothing is shared.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn device_id_in_use_is_refused_and_told() -> Result<()> {
    use matrix_linkd::protocol::{
        rendezvous::{Session2024, http_client},
        wire::{
            channel::{Generation, Initiated},
            messages::{DeviceGrant, LoginMessage},
            qr::LoginQr,
        },
    };
    let mut s = signed_in_setup(60).await?;
    let linkd = s.session.client().await?;
    let mut flow = linkd.start_grant(quiet_grant()).await?;
    wait_state(&mut flow, State::QrReady).await?;
    let LoginQr::V2024 { key, rendezvous_url, .. } = LoginQr::parse(&flow.qr_code("raw").await?)? else {
        panic!("a 2024 code was expected");
    };
    // "ALICEDEV" exists: the mock answers 404 only the first time an ID is asked for.
    let taken = "ALICEDEV";
    let http = http_client();
    let probe = http.get(format!("{}/_matrix/client/v3/devices/{taken}", s.hs.uri())).send().await?;
    assert_eq!(probe.status().as_u16(), 404);

    let mut rv = Session2024::join(&http, url::Url::parse(&rendezvous_url)?);
    rv.poll().await?; // learns the ETag
    let (pending, initiate) = Initiated::start(Generation::V2024, &key, &[]).map_err(anyhow::Error::msg)?;
    rv.send(&initiate).await?;
    let ok = next_write(&mut rv).await?;
    let mut channel = pending.confirm(&ok, &[]).map_err(anyhow::Error::msg)?;
    let protocol = LoginMessage::Protocol {
        protocol: "device_authorization_grant".into(),
        device_authorization_grant: Some(DeviceGrant {
            verification_uri: format!("{}/link", s.hs.uri()),
            verification_uri_complete: None,
        }),
        device_id: taken.into(),
    };
    rv.send(&channel.seal(&protocol.encode(), &[])).await?;
    wait_state(&mut flow, State::WaitingForCheckCode).await?;
    flow.check_code(channel.check_code()).await?;
    failed_with(
        tokio::time::timeout(Duration::from_secs(30), flow.result()).await?,
        errors::DEVICE_ID_IN_USE,
    );
    let answer = next_write(&mut rv).await?;
    let told = LoginMessage::decode(&channel.open(&answer, &[]).map_err(anyhow::Error::msg)?)?;
    assert_eq!(told, LoginMessage::Failure { reason: "device_already_exists".into(), homeserver: None });
    assert_still_signed_in(&mut s.session, s.daemon).await
}
