//! Real deployments differ from our stack: server names without `.well-known`, sessions that end
//! under a running daemon. Mock homeserver, real daemon binary on a private bus, matrix-sdk peers.

use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use matrix_linkd::protocol::wire::qr::LoginQr;
use matrix_linkd_client::{ClientError, FlowEvent, LoginOptions, State};
use matrix_linkd_tests::api::errors;
use matrix_linkd_tests::{
    grant_scanned_by, peers, quiet_grant, signed_in_setup, signed_out_setup, wait_state,
};
use matrix_sdk::authentication::oauth::qrcode::{QRCodeGrantLoginError, QRCodeLoginError};

/// The other device showed a QR code whose homeserver cannot be found at all (no `.well-known`, no
/// client API at the name or at the rendezvous server): the daemon fails with a named error and,
/// because it resolves only after the secure channel exists, the other device is told within
/// seconds instead of waiting for the rendezvous session to expire.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unfindable_homeserver_ends_the_login_on_both_sides_within_seconds() -> Result<()> {
    let (hs, mut session, d) = signed_out_setup(60).await?;
    let mut peer = peers::grant_generating(hs.existing_device("ALICEDEV").await);
    let LoginQr::V2024 { intent, key, rendezvous_url, .. } = LoginQr::parse(&peer.qr().await?)? else {
        bail!("matrix-sdk 0.18 shows 2024 codes");
    };
    // A server name that does not answer (port 1), and a rendezvous server that serves no client API.
    let qr = LoginQr::V2024 { intent, key, rendezvous_url, server: Some("localhost:1".into()) }.encode();
    hs.hide_versions().await;
    let linkd = session.client().await?;
    let mut flow = linkd.start_login(LoginOptions { qr_code: Some(qr), ..Default::default() }).await?;
    wait_state(&mut flow, State::ShowingCheckCode).await?;
    let code = flow.check_code_to_show().await?;
    peer.code_sender().await?.send(code).await?;
    // The daemon resolves from here. Waiting for the rendezvous session to expire (60 s) would
    // take twice the bound; the bound leaves room for a loaded machine.
    let started = Instant::now();
    match tokio::time::timeout(Duration::from_secs(40), flow.result()).await? {
        Err(ClientError::Daemon { name, message }) => {
            assert_eq!(name, errors::NETWORK, "{message}");
            assert!(message.contains("cannot find the homeserver of `localhost:1`"), "{message}");
        }
        other => panic!("expected Network, got {other:?}"),
    }
    match tokio::time::timeout(Duration::from_secs(40), peer.finish()).await?? {
        Err(QRCodeGrantLoginError::LoginFailure { reason }) => assert_eq!(reason.as_str(), "user_cancelled"),
        other => panic!("the existing device was not told: {other:?}"),
    }
    assert!(started.elapsed() < Duration::from_secs(30), "took {:?}", started.elapsed());
    assert!(session.daemon_running(d));
    assert!(session.kept_session().is_none());
    Ok(())
}

/// The session bus goes away under a running daemon with a flow in progress: the daemon tells the
/// other device and exits with a failure status, so that systemd's restart policy applies.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_daemon_leaves_with_its_bus_and_tells_the_other_device() -> Result<()> {
    let mut s = signed_in_setup(60).await?;
    let linkd = s.session.client().await?;
    let (mut flow, peer, code) = grant_scanned_by(&linkd, quiet_grant(), s.hs.new_device().await).await?;
    flow.check_code(code).await?;
    wait_state(&mut flow, State::WaitingForApproval).await?;
    s.session.kill_bus();
    let status = s.session.wait_daemon_exit(s.daemon, Duration::from_secs(15))?;
    assert!(!status.success(), "the daemon must fail so that systemd restarts it: {status}");
    assert!(s.session.log(s.daemon).contains("the session bus went away"), "{}", s.session.log(s.daemon));
    match peer.finish().await? {
        Err(QRCodeLoginError::LoginFailure { reason, .. }) => assert_eq!(reason.as_str(), "user_cancelled"),
        other => panic!("the new device was not told: {other:?}"),
    }
    Ok(())
}

/// A server whose sessions die at once (a life of 0 s: `Expires` equal to `Date`) does not make the
/// daemon create sessions in a tight loop for the whole flow (it made ~27 a second): a session
/// that lived less than a minimum is replaced only after a growing wait.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_that_die_at_once_are_not_replaced_in_a_tight_loop() -> Result<()> {
    let s = signed_in_setup(10).await?;
    s.hs.set_next_rendezvous_ttls(0, 100_000);
    let before = s.hs.rendezvous_sessions_created();
    let linkd = s.session.client().await?;
    let flow = linkd.start_grant(quiet_grant()).await?;
    // The flow's own time-out (10 s) ends it.
    let ended = tokio::time::timeout(Duration::from_secs(30), flow.result()).await?;
    assert!(ended.is_err(), "{ended:?}");
    let created = s.hs.rendezvous_sessions_created() - before;
    eprintln!("{created} sessions created");
    assert!(created <= 5, "{created} sessions in 10 s");
    assert!(s.session.log(s.daemon).contains("lived only briefly"), "the wait is logged");
    Ok(())
}

/// A QR code whose rendezvous session expires before anybody scanned it is replaced, not fatal:
/// the daemon shows a new one (`QrCodeSerial` counts them) until the flow's own time-out. Here two
/// codes expire, and the third is scanned and the grant succeeds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_qr_code_is_replaced_until_one_is_scanned() -> Result<()> {
    let s = signed_in_setup(60).await?;
    // The first two codes expire after 2 s; the third lives long enough for a whole grant.
    s.hs.set_next_rendezvous_ttls(2, 2);
    let sessions_before = s.hs.rendezvous_sessions_created();
    let linkd = s.session.client().await?;
    let mut flow = linkd.start_grant(quiet_grant()).await?;
    wait_state(&mut flow, State::QrReady).await?;
    let mut codes = vec![flow.qr_code("raw").await?];
    while codes.len() < 3 {
        match tokio::time::timeout(Duration::from_secs(10), flow.next_event()).await?? {
            Some(FlowEvent::QrCodeReplaced(serial)) => {
                assert_eq!(serial as usize, codes.len() + 1);
                codes.push(flow.qr_code("raw").await?);
            }
            // Signals from before `wait_state` saw the state.
            Some(FlowEvent::State(State::Starting | State::QrReady)) => {}
            other => bail!("expected a new QR code, got {other:?}"),
        }
    }
    assert!(codes[0] != codes[1] && codes[1] != codes[2], "each code is new");
    assert_eq!(flow.proxy().qr_code_serial().await?, 3);
    assert_eq!(flow.state(), State::QrReady);

    let new_device = s.hs.new_device().await;
    let mut peer = peers::login_scanning(new_device.clone(), codes[2].clone());
    let code = peer.shown_code().await?;
    wait_state(&mut flow, State::WaitingForCheckCode).await?;
    flow.check_code(code).await?;
    consent_and_verify(&s, flow, peer, &new_device).await?;
    assert_eq!(s.hs.rendezvous_sessions_created() - sessions_before, 3, "one session per code");
    Ok(())
}

/// The daemon's own token poll is refused (the user denied the sign-in on the consent page): the
/// error says so, not that the other device gave up, and the other device is told.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sign_in_refused_on_the_consent_page_says_so() -> Result<()> {
    let (hs, mut session, d) = signed_out_setup(60).await?;
    let linkd = session.client().await?;
    let mut flow =
        linkd.start_login(LoginOptions { homeserver: Some(hs.uri()), ..Default::default() }).await?;
    wait_state(&mut flow, State::QrReady).await?;
    hs.plan_token_error("access_denied");
    let mut peer = peers::grant_scanning(hs.existing_device("ALICEDEV").await, flow.qr_code("raw").await?);
    let code = peer.shown_code().await?;
    wait_state(&mut flow, State::WaitingForCheckCode).await?;
    flow.check_code(code).await?;
    match tokio::time::timeout(Duration::from_secs(30), flow.result()).await? {
        Err(ClientError::Daemon { name, message }) => {
            assert_eq!(name, errors::LOGIN_FAILED, "{message}");
            assert!(message.contains("refused on the consent page"), "{message}");
        }
        other => panic!("expected LoginFailed, got {other:?}"),
    }
    assert!(peer.finish().await?.is_err(), "the existing device was not told");
    assert!(session.daemon_running(d));
    Ok(())
}

/// Behind a load balancer: each of the daemon's rendezvous writes first meets a worker that has
/// not caught up (412), and the server's clock is two hours ahead of ours. The daemon re-reads,
/// sends the same payload again, takes the session's life from the server's own `Expires` − `Date`,
/// and the grant succeeds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conflicts_and_a_skewed_clock_behind_a_load_balancer() -> Result<()> {
    let s = signed_in_setup(60).await?;
    s.hs.lag_rendezvous();
    let linkd = s.session.client().await?;
    let new_device = s.hs.new_device().await;
    let (flow, peer, code) = grant_scanned_by(&linkd, quiet_grant(), new_device.clone()).await?;
    flow.check_code(code).await?;
    consent_and_verify(&s, flow, peer, &new_device).await
}

/// A grant whose new device (matrix-sdk) has its check code typed: our user consents, the grant
/// ends well, and the new device is verified.
async fn consent_and_verify(
    s: &matrix_linkd_tests::SignedInSetup,
    mut flow: matrix_linkd_client::Flow,
    peer: peers::Peer<QRCodeLoginError>,
    new_device: &matrix_sdk::Client,
) -> Result<()> {
    wait_state(&mut flow, State::WaitingForApproval).await?;
    s.hs.plan_login();
    flow.approve().await?;
    tokio::time::timeout(Duration::from_secs(60), flow.result()).await??;
    peer.finish().await?.map_err(|e| anyhow::anyhow!("new device: {e}"))?;
    peers::assert_verified_new_device(new_device).await
}

/// The other device scanned our code and then gave up by deleting the rendezvous session while
/// our user has not typed the check code yet: the daemon notices within seconds (it reads nothing
/// the other device wrote before the code, but it watches the session) instead of waiting for the
/// user or the flow's time-out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_deleted_while_the_user_types_the_code_ends_the_flow() -> Result<()> {
    use matrix_linkd::protocol::{
        rendezvous::{Session2024, http_client},
        wire::channel::{Generation, Initiated},
    };
    let s = signed_in_setup(60).await?;
    let linkd = s.session.client().await?;
    let mut flow = linkd.start_grant(quiet_grant()).await?;
    wait_state(&mut flow, State::QrReady).await?;
    let LoginQr::V2024 { key, rendezvous_url, .. } = LoginQr::parse(&flow.qr_code("raw").await?)? else {
        bail!("a 2024 code was expected");
    };
    let mut rv = Session2024::join(&http_client(), url::Url::parse(&rendezvous_url)?);
    rv.poll().await?;
    let (_pending, initiate) = Initiated::start(Generation::V2024, &key, &[]).map_err(anyhow::Error::msg)?;
    rv.send(&initiate).await?;
    wait_state(&mut flow, State::WaitingForCheckCode).await?;
    let gone = Instant::now();
    rv.delete().await;
    // The daemon looks at the session every 1, 2, then 3 s while the user types; the bound leaves
    // room for a loaded machine and is still a quarter of the flow's 60 s timeout.
    match tokio::time::timeout(Duration::from_secs(20), flow.result()).await? {
        Err(ClientError::Daemon { name, message }) => {
            assert_eq!(name, errors::EXPIRED, "{message}")
        }
        other => panic!("expected Expired, got {other:?}"),
    }
    assert!(gone.elapsed() < Duration::from_secs(15), "noticed after {:?}", gone.elapsed());
    Ok(())
}

/// The server name a user knows is enough: in the config and in the `homeserver` option, a name
/// goes through its `.well-known`, a URL that serves no client API through its host's
/// `.well-known`; a name that leads nowhere gets an error that says what was tried. (A URL was
/// taken as the client-API base as it was, and a name was refused at start.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_name_a_user_knows_is_enough() -> Result<()> {
    use wiremock::{Mock, ResponseTemplate, matchers};
    let hs = matrix_linkd_tests::homeserver::MockHomeserver::start().await;
    // The server name's own host publishes only `.well-known`.
    let named = wiremock::MockServer::start().await;
    Mock::given(matchers::path("/.well-known/matrix/client"))
        .respond_with(ResponseTemplate::new(200).set_body_json(serde_json::json!({
            "m.homeserver": { "base_url": hs.uri() }
        })))
        .mount(&named)
        .await;
    let server_name = format!("127.0.0.1:{}", named.address().port());
    let mut session = matrix_linkd_tests::Session::start().await?;
    session.write_config(&matrix_linkd_tests::test_config(&server_name, 60))?;
    session.start_daemon(&[]).await?;
    session.wait_session_state(matrix_linkd_client::SessionState::SignedOut, Duration::from_secs(20)).await?;
    let linkd = session.client().await?;
    let shows_a_code = |options: LoginOptions| {
        let linkd = &linkd;
        let hs = &hs;
        async move {
            let before = hs.rendezvous_sessions_created();
            let mut flow = linkd.start_login(options).await?;
            wait_state(&mut flow, State::QrReady).await?;
            anyhow::ensure!(hs.rendezvous_sessions_created() > before, "the session is on the homeserver");
            flow.cancel().await?;
            let _ = flow.result().await;
            anyhow::Ok(())
        }
    };
    // The config's server name.
    shows_a_code(LoginOptions::default()).await?;
    // The option: the name, and a URL of the name's host (no client API there).
    shows_a_code(LoginOptions { homeserver: Some(server_name.clone()), ..Default::default() }).await?;
    shows_a_code(LoginOptions { homeserver: Some(named.uri()), ..Default::default() }).await?;
    // A name nothing answers for.
    let unresolved = match linkd
        .start_login(LoginOptions { homeserver: Some("127.0.0.1:1".into()), ..Default::default() })
        .await
    {
        Ok(flow) => flow.result().await.map(|_| ()),
        Err(e) => Err(e),
    };
    match unresolved {
        Err(ClientError::Daemon { name, message }) => {
            assert_eq!(name, errors::NETWORK, "{message}");
            assert!(message.contains("cannot find the homeserver of `127.0.0.1:1`"), "{message}");
        }
        other => bail!("expected Network, got {other:?}"),
    }
    Ok(())
}
