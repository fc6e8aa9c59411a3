//! End to end over the real stack (Synapse + OAuth server started by `stack/start.sh`), the real
//! daemon on a private bus, and a matrix-sdk 0.18 client as the other device: all four cells.
//! Each test uses its own fresh account. Consent is given on the OAuth server's own pages.

use std::time::Duration;

use anyhow::{Result, anyhow};
use matrix_linkd_client::{GrantOptions, LoginOptions, State};
use matrix_linkd_tests::{
    grant_scanned_by, peers, quiet_grant,
    stack::{
        SignedInDaemon, Stack, assert_seen_verified, consent_and_finish, daemon_access_token, daemon_session,
        sign_in_daemon, signed_in_daemon,
    },
    wait_state,
};

async fn new_device(stack: &Stack) -> Result<matrix_sdk::Client> {
    Ok(matrix_sdk::Client::builder().homeserver_url(stack.synapse.clone()).build().await?)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sdk_daemon_login_showing_qr() -> Result<()> {
    let stack = Stack::main()?;
    let login = Stack::new_login("ls");
    let phone = stack.existing_device(&login).await?;
    let session = daemon_session(&stack, 120).await?;
    let signed_in = sign_in_daemon(&stack, &session, &phone, &login).await?;
    assert_eq!(signed_in.user_id, stack.user_id(&login));
    let (user, device) = stack.whoami(&daemon_access_token(&session)?).await?;
    assert_eq!((user.as_str(), device.as_str()), (signed_in.user_id.as_str(), signed_in.device_id.as_str()));
    assert_seen_verified(&phone, &signed_in.device_id).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sdk_daemon_login_scanning_qr() -> Result<()> {
    let stack = Stack::main()?;
    let login = Stack::new_login("lq");
    let phone = stack.existing_device(&login).await?;
    let session = daemon_session(&stack, 120).await?;
    let mut peer = peers::grant_generating(phone.clone());
    let qr = peer.qr().await?;
    let linkd = session.client().await?;
    let mut flow = linkd.start_login(LoginOptions { qr_code: Some(qr), ..Default::default() }).await?;
    wait_state(&mut flow, State::ShowingCheckCode).await?;
    peer.code_sender().await?.send(flow.check_code_to_show().await?).await?;
    let uri = peer.verification_uri().await?;
    stack.approve_uri(&uri, &login, false)?;
    let signed_in = tokio::time::timeout(Duration::from_secs(90), flow.result()).await??;
    peer.finish().await?.map_err(|e| anyhow!("phone: {e}"))?;
    let (_, device) = stack.whoami(&daemon_access_token(&session)?).await?;
    assert_eq!(device, signed_in.device_id);
    assert_seen_verified(&phone, &signed_in.device_id).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sdk_daemon_grant_showing_qr() -> Result<()> {
    let SignedInDaemon { stack, login, phone, session } = signed_in_daemon("gs").await?;

    let linkd = session.client().await?;
    let laptop = new_device(&stack).await?;
    let (flow, peer, code) = grant_scanned_by(&linkd, quiet_grant(), laptop.clone()).await?;
    flow.check_code(code).await?;
    consent_and_finish(&stack, flow, &login).await?;
    peer.finish().await?.map_err(|e| anyhow!("new device: {e}"))?;
    let who = laptop.whoami().await?;
    assert_eq!(who.user_id.as_str(), stack.user_id(&login));
    peers::assert_verified_new_device(&laptop).await?;
    assert_seen_verified(&phone, who.device_id.as_ref().map(|d| d.as_str()).unwrap_or_default()).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sdk_daemon_grant_scanning_qr() -> Result<()> {
    let SignedInDaemon { stack, login, phone, session } = signed_in_daemon("gq").await?;

    let laptop = new_device(&stack).await?;
    let mut peer = peers::login_generating(laptop.clone());
    let qr = peer.qr().await?;
    let linkd = session.client().await?;
    let mut flow = linkd.start_grant(GrantOptions { qr_code: Some(qr), ..quiet_grant() }).await?;
    wait_state(&mut flow, State::ShowingCheckCode).await?;
    peer.code_sender().await?.send(flow.check_code_to_show().await?).await?;
    consent_and_finish(&stack, flow, &login).await?;
    peer.finish().await?.map_err(|e| anyhow!("new device: {e}"))?;
    let who = laptop.whoami().await?;
    assert_eq!(who.user_id.as_str(), stack.user_id(&login));
    peers::assert_verified_new_device(&laptop).await?;
    assert_seen_verified(&phone, who.device_id.as_ref().map(|d| d.as_str()).unwrap_or_default()).await
}
