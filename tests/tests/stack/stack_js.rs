//! End to end over the real stack with matrix-js-sdk 43 (Node 22) as the other device: the same
//! four cells as `stack_sdk.rs`, the server-name cell included.

use std::time::Duration;

use anyhow::{Result, ensure};
use matrix_linkd_client::{GrantOptions, LoginOptions, State};
use matrix_linkd_tests::{
    jspeer::{JsPeer, Mode, Role},
    quiet_grant,
    stack::{
        SignedInDaemon, Stack, assert_cross_signed, assert_seen_verified, consent_and_finish,
        daemon_access_token, daemon_session, signed_in_daemon,
    },
    wait_state,
};
use serde_json::Value;

fn assert_js_new_device_ok(result: &Value) -> Result<String> {
    ensure!(result["ok"] == true, "js new device failed: {result}");
    ensure!(result["cross_signing_ready"] == true, "js new device: cross-signing not ready: {result}");
    ensure!(result["device_verified"] == true, "js new device: own device not verified: {result}");
    Ok(result["device_id"].as_str().unwrap_or_default().to_owned())
}

/// js-sdk, as the existing device, sends `m.login.protocols` with `homeserver` = its *server name*
/// ("127.0.0.1:18008", or "localhost" on the `localhost` stack), as the 2024 MSC says (matrix-sdk
/// 0.18's engine demanded a URL and failed this cell). The daemon resolves the name through
/// `.well-known`, or, where the name has none, finds the homeserver of the rendezvous session, and
/// signs in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn js_daemon_login_showing_qr_server_name_homeserver() -> Result<()> {
    let stack = Stack::main()?;
    let login = Stack::new_login("jls");
    let mut js = JsPeer::start(&stack, Role::Existing, Mode::Scan, &login)?;
    js.read("ready", Duration::from_secs(60)).await?;
    let session = daemon_session(&stack, 120).await?;
    let linkd = session.client().await?;
    let mut flow = linkd
        .start_login(LoginOptions { homeserver: Some(stack.synapse.to_string()), ..Default::default() })
        .await?;
    wait_state(&mut flow, State::QrReady).await?;
    js.write("qr.hex", &hex::encode(flow.qr_code("raw").await?))?;
    let code = js.check_code().await?;
    wait_state(&mut flow, State::WaitingForCheckCode).await?;
    flow.check_code(code).await?;
    let uri = js.read("verification_uri", Duration::from_secs(60)).await?;
    stack.approve_uri(&uri, &login, false)?;
    let me = tokio::time::timeout(Duration::from_secs(90), flow.result()).await??;
    let js_result = js.result().await?;
    ensure!(js_result["ok"] == true, "js existing device failed: {js_result}\n{}", js.log());
    // The cell's point: js-sdk named the homeserver by server name, not URL.
    let sent = js_result["sent_protocols_homeserver"].as_str().unwrap_or_default();
    assert_eq!(sent, stack.server_name, "js-sdk sent another homeserver field: {js_result}");
    assert_eq!(me.homeserver_found, stack.found_by_server_name());
    let (user, device) = stack.whoami(&daemon_access_token(&session)?).await?;
    assert_eq!((user.as_str(), device.as_str()), (me.user_id.as_str(), me.device_id.as_str()));
    assert_cross_signed(&stack.observer(&login).await?, &me.device_id).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn js_daemon_login_scanning_qr() -> Result<()> {
    let stack = Stack::main()?;
    let login = Stack::new_login("jlq");
    let mut js = JsPeer::start(&stack, Role::Existing, Mode::Generate, &login)?;
    js.read("ready", Duration::from_secs(60)).await?;
    let qr = js.qr().await?;
    let session = daemon_session(&stack, 120).await?;
    let linkd = session.client().await?;
    let mut flow = linkd.start_login(LoginOptions { qr_code: Some(qr), ..Default::default() }).await?;
    wait_state(&mut flow, State::ShowingCheckCode).await?;
    assert_eq!(flow.check_code_to_show().await?, js.check_code().await?, "check codes differ");
    let uri = js.read("verification_uri", Duration::from_secs(60)).await?;
    stack.approve_uri(&uri, &login, false)?;
    let me = tokio::time::timeout(Duration::from_secs(90), flow.result()).await??;
    let js_result = js.result().await?;
    ensure!(js_result["ok"] == true, "js existing device failed: {js_result}\n{}", js.log());
    // js-sdk's QR code names the homeserver by server name too.
    assert_eq!(me.homeserver_found, stack.found_by_server_name(), "{js_result}");
    let (user, device) = stack.whoami(&daemon_access_token(&session)?).await?;
    assert_eq!((user.as_str(), device.as_str()), (me.user_id.as_str(), me.device_id.as_str()));
    assert_cross_signed(&stack.observer(&login).await?, &me.device_id).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn js_daemon_grant_showing_qr() -> Result<()> {
    let SignedInDaemon { stack, login, phone, session } = signed_in_daemon("jgs").await?;

    let linkd = session.client().await?;
    let mut flow = linkd.start_grant(quiet_grant()).await?;
    wait_state(&mut flow, State::QrReady).await?;
    let mut js = JsPeer::start(&stack, Role::New, Mode::Scan, &login)?;
    js.write("qr.hex", &hex::encode(flow.qr_code("raw").await?))?;
    let code = js.check_code().await?;
    wait_state(&mut flow, State::WaitingForCheckCode).await?;
    flow.check_code(code).await?;
    consent_and_finish(&stack, flow, &login).await?;
    let device = assert_js_new_device_ok(&js.result().await?)?;
    assert_seen_verified(&phone, &device).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn js_daemon_grant_scanning_qr() -> Result<()> {
    let SignedInDaemon { stack, login, phone, session } = signed_in_daemon("jgq").await?;

    let mut js = JsPeer::start(&stack, Role::New, Mode::Generate, &login)?;
    let qr = js.qr().await?;
    let linkd = session.client().await?;
    let mut flow = linkd.start_grant(GrantOptions { qr_code: Some(qr), ..quiet_grant() }).await?;
    wait_state(&mut flow, State::ShowingCheckCode).await?;
    assert_eq!(flow.check_code_to_show().await?, js.check_code().await?, "check codes differ");
    consent_and_finish(&stack, flow, &login).await?;
    let device = assert_js_new_device_ok(&js.result().await?)?;
    assert_seen_verified(&phone, &device).await
}
