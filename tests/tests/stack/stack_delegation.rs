//! Delegation end to end over the real stack: the signed-in daemon (on a private bus) provisions a
//! device for a light client (`StartDelegation`), the user consents on the OAuth server's own
//! pages, the client takes the session (`TakeSession`) and runs from it: matrix-sdk 0.18 in this
//! process (`DelegatedSession::into_client`) or matrix-js-sdk 43 in Node
//! (`stack/node/js-light-client.mjs`), each with and without shared secrets. Then the failure
//! paths (each a named error, the daemon up and still signed in), listing and ending delegated
//! sessions, and where the tokens and keys must never show up.
//!
//! The account's other device (the "phone", matrix-sdk, with cross-signing and key backup) owns an
//! encrypted room with one message sent before the delegation (`A`: only in the key backup for the
//! new device) and one after (`B`: shared with the new device directly).

use std::{
    collections::HashMap,
    time::{Duration, Instant},
};

use anyhow::{Result, anyhow, ensure};
use matrix_linkd_client::{ClientError, DelegatedSession, FlowProxy, Revoked, SessionState, SignedIn, State};
use matrix_linkd_tests::api::{errors, results::trust};
use matrix_linkd_tests::{
    Session,
    light::{
        DaemonSettings, DelegatingDaemon, JsLightClient, LightClient, consent, delegate, delegating_daemon,
        delegating_daemon_on, device_status, encrypted_room, message_bodies, quiet_delegation,
        secret_strings, send_text, token_works, wait_backed_up, wait_device_gone,
    },
    portal::OpenUriPortal,
    stack::{Stack, assert_seen_verified},
    wait_state,
};

fn trust_name(share_secrets: bool) -> &'static str {
    if share_secrets { trust::SECRETS_SHARED } else { trust::SIGNED_BY_DAEMON }
}

/// The flow failed with the daemon error `name`; its message.
fn failed_with(r: std::result::Result<SignedIn, ClientError>, name: &str) -> String {
    match r {
        Err(ClientError::Daemon { name: n, message }) => {
            assert_eq!(n, name, "{message}");
            message
        }
        other => panic!("expected {name}, got {other:?}"),
    }
}

/// The daemon is still up, still signed in as `user`, and answers ListDelegations.
async fn assert_intact(session: &mut Session, user: &str) -> Result<()> {
    assert!(session.daemon_running(0), "the daemon died: {}", session.log(0));
    let linkd = session.client().await?;
    let status = linkd.status().await?;
    assert_eq!((status.state, status.user_id.as_str()), (SessionState::SignedIn, user));
    linkd.list_delegations().await?;
    Ok(())
}

async fn listed(session: &Session, device_id: &str) -> Result<bool> {
    Ok(session.client().await?.list_delegations().await?.iter().any(|d| d.device_id == device_id))
}

/// The phone's room with message A in it (and in the key backup); the bodies of A and B.
async fn room_with_history(
    phone: &matrix_sdk::Client,
    tag: &str,
) -> Result<(matrix_sdk::ruma::OwnedRoomId, String, String)> {
    let room = encrypted_room(phone).await?;
    let (a, b) = message_bodies(tag);
    send_text(phone, &room, &a).await?;
    wait_backed_up(phone).await?;
    Ok((room, a, b))
}

// -------------------------------------------------------------------------------------------------
// matrix-sdk as the light client

async fn sdk_light_client(share_secrets: bool) -> Result<()> {
    let t0 = Instant::now();
    let DelegatingDaemon { stack, login, phone, mut session } =
        delegating_daemon(if share_secrets { "dss" } else { "dsn" }, &DaemonSettings::default()).await?;
    let user = stack.user_id(&login);
    let (room, a, b) = room_with_history(&phone, "sdk").await?;

    let linkd = session.client().await?;
    let (flow, taken) = delegate(&stack, &linkd, &login, quiet_delegation(share_secrets)).await?;
    assert_eq!(taken.user_id, user);
    assert_eq!(taken.has_secrets(), share_secrets, "secrets in the session document");
    assert_eq!(taken.issuer, stack.oauth.as_str());
    let device_id = taken.device_id.clone();
    let (who_user, who_device) = stack.whoami(&taken.access_token).await?;
    assert_eq!((who_user.as_str(), who_device.as_str()), (user.as_str(), device_id.as_str()));

    let light = LightClient::start(taken).await?;
    let done = tokio::time::timeout(Duration::from_secs(60), flow.result()).await??;
    assert_eq!(
        (done.device_id.as_str(), done.trust.as_str()),
        (device_id.as_str(), trust_name(share_secrets))
    );

    // Its own view: cross-signed by the account; verified through its own identity only when it
    // holds the master key.
    let own = light.wait_cross_signed(Duration::from_secs(30)).await?;
    if share_secrets {
        ensure!(own.verified, "with shared secrets the client must trust its own device: {own:?}");
    } else {
        eprintln!("without shared secrets the client sees its own device as {own:?}");
    }
    // The account's other device: cross-signed and verified.
    assert_seen_verified(&phone, &device_id).await?;

    send_text(&phone, &room, &b).await?;
    let wait = Duration::from_secs(if share_secrets { 40 } else { 20 });
    let got = light.decrypted(&room, &[&a, &b], wait).await?;
    ensure!(got[&b], "message B (sent after the delegation) was not decrypted: {got:?}");
    // A is only in the key backup: readable with the backup key, and (least privilege) not without.
    assert_eq!(got[&a], share_secrets, "message A (sent before, in the key backup only): {got:?}");

    let list = linkd.list_delegations().await?;
    let d = list.iter().find(|d| d.device_id == device_id).ok_or_else(|| anyhow!("not listed: {list:?}"))?;
    assert_eq!(
        (d.client_name.as_str(), d.device_display_name.as_str()),
        ("Test light client", "Light client device")
    );
    assert_intact(&mut session, &user).await?;
    eprintln!("sdk light client (share_secrets={share_secrets}) passed in {:?}", t0.elapsed());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sdk_light_client_with_shared_secrets() -> Result<()> {
    sdk_light_client(true).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sdk_light_client_signed_by_the_daemon() -> Result<()> {
    sdk_light_client(false).await
}

// -------------------------------------------------------------------------------------------------
// matrix-js-sdk as the light client

async fn js_light_client(share_secrets: bool) -> Result<()> {
    let t0 = Instant::now();
    let DelegatingDaemon { stack, login, phone, mut session } =
        delegating_daemon(if share_secrets { "djs" } else { "djn" }, &DaemonSettings::default()).await?;
    let user = stack.user_id(&login);
    let (room, a, b) = room_with_history(&phone, "js").await?;

    let linkd = session.client().await?;
    let (flow, taken) = delegate(&stack, &linkd, &login, quiet_delegation(share_secrets)).await?;
    assert_eq!(taken.has_secrets(), share_secrets);
    let device_id = taken.device_id.clone();
    let (_, who_device) = stack.whoami(&taken.access_token).await?;
    assert_eq!(who_device, device_id);

    let wait = if share_secrets { "40" } else { "20" };
    let mut js = JsLightClient::start(&taken, Some(&room), &[&a, &b], &["--messages-timeout", wait])?;
    drop(taken);
    let done = tokio::time::timeout(Duration::from_secs(90), flow.result()).await?;
    let done = done.map_err(|e| anyhow!("{e}\n{}", js.log()))?;
    assert_eq!(
        (done.device_id.as_str(), done.trust.as_str()),
        (device_id.as_str(), trust_name(share_secrets))
    );
    let ready = js.ready().await?;
    ensure!(ready["signed_by_owner"] == true, "js: own device not signed by the account: {ready}");
    if share_secrets {
        ensure!(ready["cross_signing_verified"] == true, "js: own device not verified: {ready}");
    } else {
        eprintln!("without shared secrets the js client sees its own device as {ready}");
    }
    assert_seen_verified(&phone, &device_id).await?;

    send_text(&phone, &room, &b).await?;
    js.mark_sent()?;
    let result = js.result().await?;
    ensure!(result["ok"] == true, "js light client failed: {result}\n{}", js.log());
    assert_eq!(result["whoami_device_id"], device_id.as_str(), "{result}");
    ensure!(result["decrypted"][&b] == true, "js: message B not decrypted: {result}\n{}", js.log());
    assert_eq!(result["decrypted"][&a], share_secrets, "js: message A (key backup only): {result}");
    assert_eq!(result["backup_key_cached"], share_secrets, "{result}");

    assert!(listed(&session, &device_id).await?);
    assert_intact(&mut session, &user).await?;
    eprintln!("js light client (share_secrets={share_secrets}) passed in {:?}", t0.elapsed());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn js_light_client_with_shared_secrets() -> Result<()> {
    js_light_client(true).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn js_light_client_signed_by_the_daemon() -> Result<()> {
    js_light_client(false).await
}

// -------------------------------------------------------------------------------------------------
// Failures: each a named error, the daemon still up and signed in.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consent_denied_in_the_browser() -> Result<()> {
    let DelegatingDaemon { stack, login, mut session, .. } =
        delegating_daemon("ddn", &DaemonSettings::default()).await?;
    let linkd = session.client().await?;
    let mut flow = linkd.start_delegation(quiet_delegation(false)).await?;
    wait_state(&mut flow, State::WaitingForApproval).await?;
    let uri = flow.verification_uri().await?;
    flow.approve().await?;
    stack.approve_uri(&uri, &login, true)?;
    failed_with(tokio::time::timeout(Duration::from_secs(60), flow.result()).await?, errors::LOGIN_FAILED);
    assert_intact(&mut session, &stack.user_id(&login)).await
}

/// A stack of its own whose device codes live 8 s; nobody consents.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn device_code_expires() -> Result<()> {
    let stack = Stack::start("delegexp", 28508, 28580, &[("DEVICE_CODE_TTL", "8")])?;
    let DelegatingDaemon { stack, login, mut session, .. } =
        delegating_daemon_on(stack, "dex", &DaemonSettings::default()).await?;
    let linkd = session.client().await?;
    let mut flow = linkd.start_delegation(quiet_delegation(false)).await?;
    wait_state(&mut flow, State::WaitingForApproval).await?;
    flow.approve().await?;
    failed_with(tokio::time::timeout(Duration::from_secs(60), flow.result()).await?, errors::EXPIRED);
    assert_intact(&mut session, &stack.user_id(&login)).await
}

/// The owner cancels while the user is on the consent page (after Approve).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_while_the_user_decides() -> Result<()> {
    let DelegatingDaemon { stack, login, mut session, .. } =
        delegating_daemon("dcn", &DaemonSettings::default()).await?;
    let linkd = session.client().await?;
    let mut flow = linkd.start_delegation(quiet_delegation(false)).await?;
    wait_state(&mut flow, State::WaitingForApproval).await?;
    flow.approve().await?;
    wait_state(&mut flow, State::WaitingForToken).await?;
    flow.cancel().await?;
    let r = tokio::time::timeout(Duration::from_secs(30), flow.result()).await?;
    assert!(matches!(r, Err(ClientError::Cancelled)), "Response 1 expected: {r:?}");
    assert_intact(&mut session, &stack.user_id(&login)).await
}

/// The owner leaves the bus once the tokens exist but before taking them: the flow is cancelled,
/// the tokens revoked, and the device is gone from the homeserver.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn owner_leaves_before_take_session() -> Result<()> {
    let DelegatingDaemon { stack, login, phone, mut session } =
        delegating_daemon("dol", &DaemonSettings::default()).await?;
    let owner = session.client().await?;
    let mut flow = owner.start_delegation(quiet_delegation(true)).await?;
    let device_id = consent(&stack, &mut flow, &login).await?;
    let token = phone.access_token().ok_or_else(|| anyhow!("phone token"))?;
    assert_eq!(device_status(&stack, &token, &device_id).await?, 200, "the new device exists");
    drop(flow);
    drop(owner);
    wait_device_gone(&stack, &phone, &device_id, Duration::from_secs(30)).await?;
    assert!(!listed(&session, &device_id).await?, "a cancelled delegation is listed");
    assert_intact(&mut session, &stack.user_id(&login)).await
}

/// TakeSession: not from another connection (AccessDenied), and only once (InvalidState). Without
/// shared secrets, so that the flow (and its object) lives on after the first TakeSession while the
/// daemon waits for the device keys. (With shared secrets the flow ends at the first TakeSession
/// and its object goes away: a second call then finds no object.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn take_session_only_once_and_only_by_the_owner() -> Result<()> {
    let DelegatingDaemon { stack, login, mut session, .. } =
        delegating_daemon("dtt", &DaemonSettings::default()).await?;
    let linkd = session.client().await?;
    let mut flow = linkd.start_delegation(quiet_delegation(false)).await?;
    consent(&stack, &mut flow, &login).await?;

    let other = session.connect().await?;
    let stranger = FlowProxy::builder(&other).path(flow.path().clone())?.build().await?;
    let r = stranger.take_session().await.map(|_| ()).map_err(ClientError::from);
    assert!(
        matches!(&r, Err(ClientError::Daemon { name, .. }) if name == errors::ACCESS_DENIED),
        "another connection took the session: {r:?}"
    );

    let taken = flow.take_session().await?;
    let again = flow.take_session().await;
    match &again {
        Err(e) => assert_eq!(e.name(), Some(errors::INVALID_STATE), "{e}"),
        Ok(s) => panic!("a second TakeSession answered {s:?}"),
    }
    let device_id = taken.device_id.clone();
    let _light = LightClient::start(taken).await?;
    let done = tokio::time::timeout(Duration::from_secs(60), flow.result()).await??;
    assert_eq!((done.device_id.as_str(), done.trust.as_str()), (device_id.as_str(), trust::SIGNED_BY_DAEMON));
    assert_intact(&mut session, &stack.user_id(&login)).await
}

/// Without shared secrets the client must upload its device keys within `timeouts.delegation_keys`
/// (10 s here); this one never does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_never_uploads_its_keys() -> Result<()> {
    let settings = DaemonSettings { delegation_keys: 10, ..Default::default() };
    let DelegatingDaemon { stack, login, phone, mut session } = delegating_daemon("dku", &settings).await?;
    let linkd = session.client().await?;
    let (flow, taken) = delegate(&stack, &linkd, &login, quiet_delegation(false)).await?;
    let t = Instant::now();
    let message =
        failed_with(tokio::time::timeout(Duration::from_secs(60), flow.result()).await?, errors::EXPIRED);
    eprintln!("failed after {:?}: {message}", t.elapsed());
    // 10 s of key wait, then the revocations (each bounded); without the limit: the 300 s flow timeout.
    assert!(t.elapsed() < Duration::from_secs(30), "the key wait outlived timeouts.delegation_keys");
    wait_device_gone(&stack, &phone, &taken.device_id, Duration::from_secs(30)).await?;
    assert!(!token_works(&stack, &taken.access_token).await?, "the revoked token still works");
    assert!(!listed(&session, &taken.device_id).await?);
    assert_intact(&mut session, &stack.user_id(&login)).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoke_an_unknown_device() -> Result<()> {
    let DelegatingDaemon { stack, login, mut session, .. } =
        delegating_daemon("dru", &DaemonSettings::default()).await?;
    let linkd = session.client().await?;
    let r = linkd.revoke_delegation("NOSUCHDEVICE").await;
    match &r {
        Err(e) => assert_eq!(e.name(), Some(errors::DEVICE_NOT_FOUND), "{e}"),
        Ok(how) => panic!("revoking an unknown device answered {how:?}"),
    }
    // The daemon's own device is no delegation either.
    let own = linkd.status().await?.device_id;
    assert_eq!(
        linkd.revoke_delegation(&own).await.err().and_then(|e| e.name().map(str::to_owned)).as_deref(),
        Some(errors::DEVICE_NOT_FOUND)
    );
    assert_intact(&mut session, &stack.user_id(&login)).await
}

// -------------------------------------------------------------------------------------------------
// Listing and ending delegated sessions

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_then_revoke_with_a_held_token() -> Result<()> {
    let DelegatingDaemon { stack, login, phone, mut session } =
        delegating_daemon("dlr", &DaemonSettings::default()).await?;
    let linkd = session.client().await?;
    let before = std::time::SystemTime::now() - Duration::from_secs(5);
    let (flow, taken) = delegate(&stack, &linkd, &login, quiet_delegation(true)).await?;
    tokio::time::timeout(Duration::from_secs(30), flow.result()).await??;
    let list = linkd.list_delegations().await?;
    let d = list
        .iter()
        .find(|d| d.device_id == taken.device_id)
        .ok_or_else(|| anyhow!("not listed: {list:?}"))?;
    assert_eq!(d.client_name, "Test light client");
    assert!(d.created >= before && d.created <= std::time::SystemTime::now(), "created {:?}", d.created);
    assert!(token_works(&stack, &taken.access_token).await?);

    assert_eq!(linkd.revoke_delegation(&taken.device_id).await?, Revoked::Revoked);
    let token = phone.access_token().ok_or_else(|| anyhow!("phone token"))?;
    assert_eq!(device_status(&stack, &token, &taken.device_id).await?, 404, "the device is still there");
    assert!(!token_works(&stack, &taken.access_token).await?, "the revoked token still works");
    assert!(!listed(&session, &taken.device_id).await?);
    // Gone means gone: a second revocation knows nothing of it.
    let again = linkd.revoke_delegation(&taken.device_id).await;
    assert_eq!(
        again.err().and_then(|e| e.name().map(str::to_owned)).as_deref(),
        Some(errors::DEVICE_NOT_FOUND)
    );
    assert_intact(&mut session, &stack.user_id(&login)).await
}

/// The client refreshed its tokens once (rotation): the daemon's copies are dead, so it opens the
/// account page for that device (`org.matrix.device_delete`, the stable name the OAuth server
/// advertises beside MSC4191's `session_end`); the device stays until the user confirms
/// there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoke_after_the_client_rotated_its_tokens_opens_the_account_page() -> Result<()> {
    let settings = DaemonSettings { open_uri: true, ..Default::default() };
    let DelegatingDaemon { stack, login, phone, mut session } = delegating_daemon("dap", &settings).await?;
    let (portal, _portal) = OpenUriPortal::serve(&session).await?;
    let linkd = session.client().await?;
    let (flow, taken) = delegate(&stack, &linkd, &login, quiet_delegation(true)).await?;
    tokio::time::timeout(Duration::from_secs(30), flow.result()).await??;
    let device_id = taken.device_id.clone();
    let light = LightClient::start(taken).await?;
    light.refresh_once().await?;
    light.client.whoami().await.map_err(|e| anyhow!("the refreshed session does not work: {e}"))?;
    assert!(portal.opened().is_empty(), "something was opened already");

    assert_eq!(linkd.revoke_delegation(&device_id).await?, Revoked::AccountPage);
    let deadline = Instant::now() + Duration::from_secs(15);
    let opened = loop {
        if let Some(u) = portal.opened().first().cloned() {
            break u;
        }
        assert!(Instant::now() < deadline, "the account page was not opened");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let page = url::Url::parse(&opened)?;
    let q: HashMap<_, _> = page.query_pairs().into_owned().collect();
    assert_eq!(q.get("action").map(String::as_str), Some("org.matrix.device_delete"), "{opened}");
    assert_eq!(q.get("device_id"), Some(&device_id), "{opened}");
    assert_eq!(page.origin(), stack.oauth.origin(), "{opened}");
    let r = matrix_sdk::reqwest::get(page.clone()).await?;
    assert_eq!(r.status().as_u16(), 200, "the account page");
    // Nothing ended yet: the client still works, the device is still listed.
    light.client.whoami().await.map_err(|e| anyhow!("the client was signed out: {e}"))?;
    assert!(listed(&session, &device_id).await?);

    // The user confirms on the page.
    let form = url::form_urlencoded::Serializer::new(String::new())
        .append_pair("action", "org.matrix.device_delete")
        .append_pair("device_id", &device_id)
        .append_pair("login", &login)
        .finish();
    let confirm = matrix_sdk::reqwest::Client::new()
        .post(stack.oauth.join("account")?)
        .header("Content-Type", "application/x-www-form-urlencoded")
        .body(form)
        .send()
        .await?;
    assert!(confirm.status().is_success());
    wait_device_gone(&stack, &phone, &device_id, Duration::from_secs(15)).await?;
    assert!(!listed(&session, &device_id).await?);
    assert_intact(&mut session, &stack.user_id(&login)).await
}

// -------------------------------------------------------------------------------------------------
// Secrets hygiene

/// A whole delegation (with shared secrets) under `dbus-monitor` and trace logging: neither the
/// bus nor the daemon's log shows a token or a key of the session handed over.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_token_or_key_on_the_bus_or_in_the_trace_log() -> Result<()> {
    let settings = DaemonSettings { log_level: "trace", ..Default::default() };
    let DelegatingDaemon { stack, login, mut session, .. } = delegating_daemon("dhy", &settings).await?;
    let monitor_log = session.dir.path().join("monitor.log");
    let mut monitor = session
        .command("dbus-monitor")
        .arg("--session")
        .stdout(std::fs::File::create(&monitor_log)?)
        .stderr(std::process::Stdio::null())
        .spawn()?;
    tokio::time::sleep(Duration::from_millis(300)).await;

    let mut secrets = Vec::new();
    for share_secrets in [true, false] {
        let linkd = session.client().await?;
        let (flow, taken): (_, DelegatedSession) =
            delegate(&stack, &linkd, &login, quiet_delegation(share_secrets)).await?;
        secrets.extend(secret_strings(&taken));
        let device_id = taken.device_id.clone();
        let light = LightClient::start(taken).await?;
        let done = tokio::time::timeout(Duration::from_secs(60), flow.result()).await??;
        assert_eq!(done.trust, trust_name(share_secrets));
        light.wait_cross_signed(Duration::from_secs(30)).await?;
        assert!(listed(&session, &device_id).await?);
    }
    assert!(secrets.len() >= 2 + 2 + 4, "expected 2 tokens each and 4 keys: {}", secrets.len());
    tokio::time::sleep(Duration::from_millis(500)).await;
    monitor.kill().ok();
    monitor.wait().ok();

    let bus = std::fs::read_to_string(&monitor_log)?;
    ensure!(bus.contains("member=TakeSession"), "the monitor did not see the delegation");
    let log = session.log(0);
    // The daemon's most verbose events are at debug level (it has no trace events of its own).
    ensure!(log.contains(" DEBUG "), "the daemon did not log verbosely");
    for (i, s) in secrets.iter().enumerate() {
        assert!(!bus.contains(s.as_str()), "secret #{i} of the session document is on the bus");
        assert!(!log.contains(s.as_str()), "secret #{i} of the session document is in the daemon's log");
    }
    assert_intact(&mut session, &stack.user_id(&login)).await
}

// -------------------------------------------------------------------------------------------------
// The example light client of `examples/light-client`

/// The example, run as a user would (`--approve`): the daemon opens the consent page (here a
/// stand-in portal hands the URI to the test, which consents as the user), the example gets its
/// device, syncs and sends an end-to-end encrypted message that the account's other device reads.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_light_client_example_sends_an_encrypted_message() -> Result<()> {
    use matrix_sdk::{deserialized_responses::TimelineEventKind, room::MessagesOptions};
    let settings = DaemonSettings { open_uri: true, ..Default::default() };
    let DelegatingDaemon { stack, login, phone, session } = delegating_daemon("dex", &settings).await?;
    let (portal, _portal) = OpenUriPortal::serve(&session).await?;
    let room = encrypted_room(&phone).await?;
    let text = format!("hello from the example {}", Stack::new_login("x"));
    let example = matrix_linkd_tests::bin_dir().join("matrix-linkd-example-light-client");
    let child = tokio::process::Command::from(session.command(&example))
        .args(["--room", room.as_str(), "--text", &text, "--approve"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()?;
    let deadline = Instant::now() + Duration::from_secs(30);
    let uri = loop {
        if let Some(u) = portal.opened().first().cloned() {
            break u;
        }
        ensure!(Instant::now() < deadline, "the consent page was not opened");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    stack.approve_uri(&uri, &login, false)?;
    let out = tokio::time::timeout(Duration::from_secs(150), child.wait_with_output()).await??;
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    ensure!(out.status.success(), "the example failed: {stdout}\n{stderr}");

    // The phone reads the example's message, decrypted.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        phone.sync_once(matrix_sdk::config::SyncSettings::default().timeout(Duration::from_secs(1))).await?;
        if let Some(r) = phone.get_room(&room) {
            let messages = r.messages(MessagesOptions::backward()).await?;
            let found = messages.chunk.iter().any(|e| {
                matches!(e.kind, TimelineEventKind::Decrypted(_))
                    && e.raw()
                        .get_field::<serde_json::Value>("content")
                        .ok()
                        .flatten()
                        .is_some_and(|c| c["body"] == text.as_str())
            });
            if found {
                break;
            }
        }
        ensure!(Instant::now() < deadline, "the phone never decrypted the example's message");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    ensure!(!stdout.contains("access_token") && !stderr.contains("syt_"), "the example prints no token");
    Ok(())
}
