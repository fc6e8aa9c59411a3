//! The latest wire generation (MSC4108 + MSC4388: `sequence_token` rendezvous, HPKE, check codes
//! 10–99) end to end over Synapse's MSC4388 rendezvous, daemon against daemon: two daemons on two
//! private session buses, each with its own keyring and store. No released client speaks this
//! generation yet, so the other device is a second instance of our engine.
//!
//! Both QR directions; in each the signed-in daemon grants and the other daemon signs in, so both
//! roles run in both directions.

use anyhow::{Result, ensure};
use matrix_linkd_client::{ClientError, Flow, GrantOptions, Linkd, LoginOptions, SessionState, State};
use matrix_linkd_tests::api::errors;
use matrix_linkd_tests::{
    quiet_grant,
    stack::{
        SignedInDaemon, assert_cross_signed, assert_seen_verified, consent_and_finish, daemon_access_token,
        daemon_session, login_showing_qr, signed_in_daemon,
    },
    wait_state,
};

/// Latest-generation QR codes use the unstable prefix while the rendezvous API is unstable.
fn assert_latest_qr(qr: &[u8]) -> Result<()> {
    ensure!(qr.starts_with(b"IO_ELEMENT_MSC4388\x03"), "not a latest-generation QR code");
    Ok(())
}

/// The signed-in daemon grants, showing a latest-generation QR code.
async fn latest_grant_showing_qr(granting: &Linkd) -> Result<Flow> {
    let mut grant =
        granting.start_grant(GrantOptions { protocol: Some("latest".into()), ..quiet_grant() }).await?;
    wait_state(&mut grant, State::QrReady).await?;
    Ok(grant)
}

/// The flow ended because the other daemon sent `m.login.failure` with `user_cancelled`.
async fn assert_told_user_cancelled(flow: Flow) -> Result<()> {
    match tokio::time::timeout(std::time::Duration::from_secs(30), flow.result()).await? {
        Err(ClientError::Daemon { name, message }) => {
            assert_eq!(name, errors::LOGIN_FAILED, "{message}");
            assert!(message.contains("user_cancelled"), "{message}");
        }
        other => panic!("the daemon was not told user_cancelled: {other:?}"),
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn latest_existing_daemon_shows_qr_new_daemon_scans() -> Result<()> {
    let SignedInDaemon { stack, login, phone, session: existing } = signed_in_daemon("lxs").await?;
    let new = daemon_session(&stack, 120).await?;

    let granting = existing.client().await?;
    let mut grant = latest_grant_showing_qr(&granting).await?;
    assert_eq!(grant.proxy().protocol().await?, 2, "Protocol property");
    let qr = grant.qr_code("raw").await?;
    assert_latest_qr(&qr)?;

    let joining = new.client().await?;
    let mut login_flow =
        joining.start_login(LoginOptions { qr_code: Some(qr), ..Default::default() }).await?;
    assert_eq!(login_flow.proxy().protocol().await?, 2);
    wait_state(&mut login_flow, State::ShowingCheckCode).await?;
    let code = login_flow.check_code_to_show().await?;
    ensure!((10..=99).contains(&code), "latest check codes are 10-99, got {code}");
    wait_state(&mut grant, State::WaitingForCheckCode).await?;
    grant.check_code(code).await?;
    let (granted, signed_in) = tokio::join!(consent_and_finish(&stack, grant, &login), login_flow.result());
    let (granted, signed_in) = (granted?, signed_in?);
    assert_eq!(granted.device_id, signed_in.device_id, "both daemons name the same new device");

    let (user, device) = stack.whoami(&daemon_access_token(&new)?).await?;
    assert_eq!((user.as_str(), device.as_str()), (signed_in.user_id.as_str(), signed_in.device_id.as_str()));
    assert_cross_signed(&stack.observer(&login).await?, &signed_in.device_id).await?;
    assert_seen_verified(&phone, &signed_in.device_id).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn latest_new_daemon_shows_qr_existing_daemon_scans() -> Result<()> {
    let SignedInDaemon { stack, login, phone, session: existing } = signed_in_daemon("lns").await?;
    let new = daemon_session(&stack, 120).await?;

    let joining = new.client().await?;
    let mut login_flow = login_showing_qr(&joining, &stack, "latest").await?;
    assert_eq!(login_flow.proxy().protocol().await?, 2);
    let qr = login_flow.qr_code("raw").await?;
    assert_latest_qr(&qr)?;

    let granting = existing.client().await?;
    let mut grant = granting.start_grant(GrantOptions { qr_code: Some(qr), ..quiet_grant() }).await?;
    assert_eq!(grant.proxy().protocol().await?, 2);
    wait_state(&mut grant, State::ShowingCheckCode).await?;
    let code = grant.check_code_to_show().await?;
    ensure!((10..=99).contains(&code), "latest check codes are 10-99, got {code}");
    wait_state(&mut login_flow, State::WaitingForCheckCode).await?;
    login_flow.check_code(code).await?;
    let (granted, signed_in) = tokio::join!(consent_and_finish(&stack, grant, &login), login_flow.result());
    let (granted, signed_in) = (granted?, signed_in?);
    assert_eq!(granted.device_id, signed_in.device_id);

    let (user, device) = stack.whoami(&daemon_access_token(&new)?).await?;
    assert_eq!((user.as_str(), device.as_str()), (signed_in.user_id.as_str(), signed_in.device_id.as_str()));
    assert_cross_signed(&stack.observer(&login).await?, &signed_in.device_id).await?;
    assert_seen_verified(&phone, &signed_in.device_id).await
}

/// Latest generation, a wrong check code on the daemon that showed the QR: it fails with
/// `InvalidCheckCode`, the other daemon is told (`user_cancelled`), both keep running, and the
/// granting daemon stays signed in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn latest_wrong_check_code_tells_the_other_daemon() -> Result<()> {
    let SignedInDaemon { stack, session: mut existing, .. } = signed_in_daemon("lwc").await?;
    let mut new = daemon_session(&stack, 120).await?;

    let granting = existing.client().await?;
    let mut grant = latest_grant_showing_qr(&granting).await?;
    let joining = new.client().await?;
    let mut login_flow = joining
        .start_login(LoginOptions { qr_code: Some(grant.qr_code("raw").await?), ..Default::default() })
        .await?;
    wait_state(&mut login_flow, State::ShowingCheckCode).await?;
    let code = login_flow.check_code_to_show().await?;
    wait_state(&mut grant, State::WaitingForCheckCode).await?;
    grant.check_code(if code == 99 { 10 } else { code + 1 }).await?;
    match grant.result().await {
        Err(ClientError::Daemon { name, .. }) => {
            assert_eq!(name, errors::INVALID_CHECK_CODE)
        }
        other => panic!("granting daemon: {other:?}"),
    }
    assert_told_user_cancelled(login_flow).await?;
    assert!(existing.daemon_running(0) && new.daemon_running(0));
    assert_eq!(granting.status().await?.state, SessionState::SignedIn);
    assert_eq!(joining.status().await?.state, SessionState::SignedOut);
    Ok(())
}

/// Latest generation, the new daemon's owner cancels while it waits for consent: the granting
/// daemon is told and names the reason.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn latest_cancel_on_the_new_daemon_tells_the_granting_one() -> Result<()> {
    let SignedInDaemon { stack, session: existing, .. } = signed_in_daemon("lcn").await?;
    let new = daemon_session(&stack, 120).await?;

    let joining = new.client().await?;
    let mut login_flow = login_showing_qr(&joining, &stack, "latest").await?;
    let granting = existing.client().await?;
    let mut grant = granting
        .start_grant(GrantOptions { qr_code: Some(login_flow.qr_code("raw").await?), ..quiet_grant() })
        .await?;
    wait_state(&mut grant, State::ShowingCheckCode).await?;
    let code = grant.check_code_to_show().await?;
    wait_state(&mut login_flow, State::WaitingForCheckCode).await?;
    login_flow.check_code(code).await?;
    wait_state(&mut grant, State::WaitingForApproval).await?;
    login_flow.cancel().await?;
    assert!(matches!(login_flow.result().await, Err(ClientError::Cancelled)));
    assert_told_user_cancelled(grant).await?;
    assert_eq!(granting.status().await?.state, SessionState::SignedIn);
    Ok(())
}
