//! Failure paths on the real stack: the user denies consent on the OAuth page, the device code
//! expires, Synapse stops mid-flow. Each ends in a named error, the other device is told (or fails
//! on its own where the protocol has no message), the daemon stays up and its signed-in session
//! stays intact. And the one expiry that is not a failure: a QR code nobody scanned within the
//! rendezvous session's 60 s is replaced.

use std::time::Duration;

use anyhow::Result;
use matrix_linkd_client::{ClientError, FlowEvent, LoginOptions, SessionState, SignedIn, State};
use matrix_linkd_tests::api::errors;
use matrix_linkd_tests::{
    Session, grant_scanned_by, peers, quiet_grant,
    stack::{Stack, consent_and_finish, daemon_session, sign_in_daemon},
    wait_state,
};

fn failed_with(r: Result<SignedIn, ClientError>, name: &str) -> String {
    match r {
        Err(ClientError::Daemon { name: n, message }) => {
            assert_eq!(n, name, "{message}");
            message
        }
        other => panic!("expected {name}, got {other:?}"),
    }
}

async fn assert_intact(session: &mut Session, user: &str) -> Result<()> {
    assert!(session.daemon_running(0), "the daemon died: {}", session.log(0));
    let status = session.client().await?.status().await?;
    assert_eq!((status.state, status.user_id.as_str()), (SessionState::SignedIn, user));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn user_denies_consent_on_the_oauth_page() -> Result<()> {
    let stack = Stack::main()?;
    let login = Stack::new_login("dn");
    let phone = stack.existing_device(&login).await?;
    let mut session = daemon_session(&stack, 120).await?;
    let me = sign_in_daemon(&stack, &session, &phone, &login).await?;

    let linkd = session.client().await?;
    let laptop = matrix_sdk::Client::builder().homeserver_url(stack.synapse.clone()).build().await?;
    let (mut flow, peer, code) = grant_scanned_by(&linkd, quiet_grant(), laptop).await?;
    flow.check_code(code).await?;
    wait_state(&mut flow, State::WaitingForApproval).await?;
    let uri = flow.verification_uri().await?;
    flow.approve().await?;
    stack.approve_uri(&uri, &login, true)?;
    // The new device gets access_denied and says so (m.login.declined); the daemon names it.
    let message = failed_with(
        tokio::time::timeout(Duration::from_secs(60), flow.result()).await?,
        errors::LOGIN_FAILED,
    );
    assert!(message.contains("declined"), "{message}");
    assert!(peer.finish().await?.is_err(), "the new device should have failed");
    assert_intact(&mut session, &me.user_id).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn device_code_expires() -> Result<()> {
    // A stack of its own whose device codes live 8 s.
    let stack = Stack::start("devexp", 28008, 28080, &[("DEVICE_CODE_TTL", "8")])?;
    let login = Stack::new_login("ex");
    let phone = stack.existing_device(&login).await?;
    let mut session = daemon_session(&stack, 120).await?;
    let linkd = session.client().await?;
    let mut flow = linkd
        .start_login(LoginOptions { homeserver: Some(stack.synapse.to_string()), ..Default::default() })
        .await?;
    wait_state(&mut flow, State::QrReady).await?;
    let mut peer = peers::grant_scanning(phone.clone(), flow.qr_code("raw").await?);
    let code = peer.shown_code().await?;
    wait_state(&mut flow, State::WaitingForCheckCode).await?;
    flow.check_code(code).await?;
    peer.verification_uri().await?;
    // Nobody approves: the daemon (new device) sees expired_token and tells the phone.
    failed_with(tokio::time::timeout(Duration::from_secs(60), flow.result()).await?, errors::EXPIRED);
    let phone_result = peer.finish().await?;
    assert!(
        matches!(
            &phone_result,
            Err(matrix_sdk::authentication::oauth::qrcode::QRCodeGrantLoginError::LoginFailure { .. })
        ),
        "the phone was not told: {phone_result:?}"
    );
    assert!(session.daemon_running(0));
    let status = session.client().await?.status().await?;
    assert_eq!(status.state, SessionState::SignedOut);
    assert!(!session.data_dir().join("store").exists(), "a failed login left a store behind");
    Ok(())
}

/// Nobody scans: Synapse forgets a 2024 session after 60 s. The daemon shows a new code instead of
/// failing, twice here, and the third code is scanned and the grant succeeds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unscanned_qr_code_is_replaced_every_60_s() -> Result<()> {
    let stack = Stack::main()?;
    let login = Stack::new_login("rx");
    let phone = stack.existing_device(&login).await?;
    let mut session = daemon_session(&stack, 300).await?;
    let me = sign_in_daemon(&stack, &session, &phone, &login).await?;
    let linkd = session.client().await?;
    let mut flow = linkd.start_grant(quiet_grant()).await?;
    wait_state(&mut flow, State::QrReady).await?;
    let mut shown = std::time::Instant::now();
    let mut codes = vec![flow.qr_code("raw").await?];
    while codes.len() < 3 {
        match tokio::time::timeout(Duration::from_secs(90), flow.next_event()).await?? {
            Some(FlowEvent::QrCodeReplaced(serial)) => {
                let lived = shown.elapsed();
                // Synapse keeps a session 60 s; the bound leaves room for the test's own lag in
                // seeing each replacement.
                assert!(
                    lived >= Duration::from_secs(50),
                    "code {} replaced too early: {lived:?}",
                    codes.len()
                );
                assert_eq!(serial as usize, codes.len() + 1);
                codes.push(flow.qr_code("raw").await?);
                shown = std::time::Instant::now();
            }
            Some(FlowEvent::State(State::Starting | State::QrReady)) => {}
            other => anyhow::bail!("expected a new QR code, got {other:?}"),
        }
    }
    let laptop = matrix_sdk::Client::builder().homeserver_url(stack.synapse.clone()).build().await?;
    let mut peer = peers::login_scanning(laptop.clone(), codes[2].clone());
    let code = peer.shown_code().await?;
    wait_state(&mut flow, State::WaitingForCheckCode).await?;
    flow.check_code(code).await?;
    consent_and_finish(&stack, flow, &login).await?;
    peer.finish().await?.map_err(|e| anyhow::anyhow!("new device: {e}"))?;
    peers::assert_verified_new_device(&laptop).await?;
    assert_intact(&mut session, &me.user_id).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn synapse_stops_mid_flow() -> Result<()> {
    let stack = Stack::start("killsyn", 28108, 28180, &[])?;
    let login = Stack::new_login("ks");
    let phone = stack.existing_device(&login).await?;
    let mut session = daemon_session(&stack, 120).await?;
    let me = sign_in_daemon(&stack, &session, &phone, &login).await?;
    let linkd = session.client().await?;
    let laptop = matrix_sdk::Client::builder().homeserver_url(stack.synapse.clone()).build().await?;
    let (flow, peer, code) = grant_scanned_by(&linkd, quiet_grant(), laptop).await?;
    // Synapse goes away; the daemon's next rendezvous request cannot connect.
    stack.kill_synapse()?;
    peer.task.abort();
    flow.check_code(code).await?;
    failed_with(tokio::time::timeout(Duration::from_secs(90), flow.result()).await?, errors::NETWORK);
    assert_intact(&mut session, &me.user_id).await
}
