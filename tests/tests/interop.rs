//! Real deployments differ from our stack: server names without `.well-known`, sessions that end
//! under a running daemon. Mock homeserver, real daemon binary on a private bus, matrix-sdk peers.

use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use matrix_linkd::protocol::wire::qr::LoginQr;
use matrix_linkd_client::{ClientError, LoginOptions, State};
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
    let started = Instant::now();
    let mut flow = linkd.start_login(LoginOptions { qr_code: Some(qr), ..Default::default() }).await?;
    wait_state(&mut flow, State::ShowingCheckCode).await?;
    let code = flow.check_code_to_show().await?;
    peer.code_sender().await?.send(code).await?;
    match tokio::time::timeout(Duration::from_secs(10), flow.result()).await? {
        Err(ClientError::Daemon { name, message }) => {
            assert_eq!(name, "io.github.matrix_linkd.Linkd1.Error.Network", "{message}");
            assert!(message.contains("cannot find the homeserver of `localhost:1`"), "{message}");
        }
        other => panic!("expected Network, got {other:?}"),
    }
    match tokio::time::timeout(Duration::from_secs(10), peer.finish()).await?? {
        Err(QRCodeGrantLoginError::LoginFailure { reason }) => assert_eq!(reason.as_str(), "user_cancelled"),
        other => panic!("the existing device was not told: {other:?}"),
    }
    assert!(started.elapsed() < Duration::from_secs(8), "took {:?}", started.elapsed());
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
