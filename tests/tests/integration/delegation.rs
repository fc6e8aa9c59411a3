//! Delegation on a private bus (the real daemon, gnome-keyring, the mock homeserver): the session
//! handed over once through a file descriptor and only to the flow's owner, the records kept and
//! revoked, and every way a delegation can fail leaving the daemon and its session intact, with
//! the tokens it issued revoked. The real end-to-end runs (matrix-sdk and matrix-js-sdk light
//! clients, key backup, cross-signing seen by other devices) are in `stack_delegation.rs`.

use std::time::Duration;

use anyhow::{Result, ensure};
use matrix_linkd_client::{
    ClientError, DelegateOptions, Flow, FlowProxy, Linkd, Revoked, SessionState, State,
};
use matrix_linkd_tests::api::{self, errors};
use matrix_linkd_tests::{
    Session, SignedInSetup, error_name, homeserver::MockHomeserver, sign_in_daemon, signed_in_setup,
    test_config, wait_state,
};

fn quiet(share_secrets: bool) -> DelegateOptions {
    DelegateOptions {
        client_name: "Test bot".into(),
        share_secrets,
        notify: Some(false),
        open_uri: Some(false),
        ..Default::default()
    }
}

/// Starts a delegation and brings it to consent.
async fn at_consent(linkd: &Linkd, share_secrets: bool) -> Result<Flow> {
    let mut flow = linkd.start_delegation(quiet(share_secrets)).await?;
    wait_state(&mut flow, State::WaitingForApproval).await?;
    Ok(flow)
}

/// The revocation requests the mock OAuth server received.
async fn revocations(hs: &MockHomeserver) -> usize {
    hs.requests_to("revoke").await.len()
}

async fn assert_intact(s: &SignedInSetup) -> Result<()> {
    let linkd = s.session.client().await?;
    ensure!(
        linkd.manager().session_state().await? == SessionState::SignedIn as u32,
        "the daemon's session is gone"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_session_is_handed_over_once_to_the_owner_only() -> Result<()> {
    let s = signed_in_setup(60).await?;
    let linkd = s.session.client().await?;
    let other = s.session.connect().await?;
    let mut flow = at_consent(&linkd, true).await?;
    let device_id = flow.proxy().peer_device_id().await?;
    ensure!(device_id.len() == 16, "a fresh device ID: {device_id}");
    ensure!(!flow.user_code().await?.is_empty() && flow.verification_uri().await?.contains("/link"));
    // The registration carried the program's name.
    let registrations = s.hs.requests_to("registration").await;
    ensure!(
        registrations
            .iter()
            .any(|r| String::from_utf8_lossy(&r.body).contains("\"client_name\":\"Test bot\"")),
        "client_name registered"
    );
    let token = s.hs.plan_login_as(&device_id);
    flow.approve().await?;
    wait_state(&mut flow, State::SyncingSecrets).await?;

    // Only the owner, only once.
    let foreign = FlowProxy::builder(&other)
        .path(flow.path().clone())?
        .cache_properties(zbus::proxy::CacheProperties::No)
        .build()
        .await?;
    let denied = foreign.take_session().await.map(|_| ()).map_err(ClientError::from);
    assert_eq!(error_name(denied), errors::ACCESS_DENIED);
    assert_eq!(foreign.kind().await?, 3);
    let session = flow.take_session().await?;
    assert_eq!(session.device_id, device_id);
    assert_eq!(session.access_token, token);
    assert_eq!(session.user_id, s.signed_in.user_id);
    let secrets = session.secrets.clone().expect("secrets shared");
    ensure!(secrets.pointer("/cross_signing/self_signing_key").is_some_and(|k| k.is_string()));
    assert!(!format!("{session:?}").contains(&token), "Debug redacts the token");
    // Taken: the flow ends at once (the program holds the keys), so a second call finds no flow.
    ensure!(flow.take_session().await.is_err(), "a second TakeSession");

    let done = tokio::time::timeout(Duration::from_secs(10), flow.result()).await??;
    assert_eq!(done.trust, api::results::trust::SECRETS_SHARED);
    assert_eq!(done.device_id, device_id);

    // Remembered; revoked while the daemon holds a valid token; then gone from the list.
    s.hs.device_exists(&device_id);
    let listed = linkd.list_delegations().await?;
    ensure!(listed.iter().any(|d| d.device_id == device_id && d.client_name == "Test bot"), "{listed:?}");
    let before = revocations(&s.hs).await;
    // The held refresh token still works: the OAuth server answers the daemon's refresh.
    s.hs.plan_login_as(&device_id);
    let revoke = tokio::spawn({
        let linkd = s.session.client().await?;
        let id = device_id.clone();
        async move { linkd.revoke_delegation(&id).await }
    });
    // The OAuth server ends the session: the homeserver forgets the device.
    tokio::time::sleep(Duration::from_millis(500)).await;
    s.hs.device_gone(&device_id);
    assert_eq!(revoke.await??, Revoked::Revoked);
    ensure!(revocations(&s.hs).await > before, "RFC 7009 requests sent");
    ensure!(!linkd.list_delegations().await?.iter().any(|d| d.device_id == device_id));
    assert_eq!(error_name(linkd.revoke_delegation(&device_id).await), errors::DEVICE_NOT_FOUND);
    assert_intact(&s).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_are_named_and_revoke_what_was_issued() -> Result<()> {
    let s = signed_in_setup(60).await?;
    let linkd = s.session.client().await?;

    // Consent denied in the browser.
    let flow = at_consent(&linkd, false).await?;
    s.hs.plan_token_error("access_denied");
    flow.approve().await?;
    let denied = tokio::time::timeout(Duration::from_secs(20), flow.result()).await?;
    assert_eq!(error_name(denied), errors::LOGIN_FAILED);

    // The device code expiring while the user decides.
    let flow = at_consent(&linkd, false).await?;
    s.hs.plan_token_error("expired_token");
    flow.approve().await?;
    assert_eq!(
        error_name(tokio::time::timeout(Duration::from_secs(20), flow.result()).await?),
        errors::EXPIRED
    );

    // Cancel while the user decides.
    let flow = at_consent(&linkd, false).await?;
    flow.cancel().await?;
    let r = flow.result().await;
    assert!(matches!(r, Err(ClientError::Cancelled)), "{r:?}");

    // The owner leaving before TakeSession: cancelled, and the issued tokens revoked.
    let owner = s.session.client().await?;
    let mut flow = at_consent(&owner, true).await?;
    s.hs.plan_login_as(&flow.proxy().peer_device_id().await?);
    flow.approve().await?;
    wait_state(&mut flow, State::SyncingSecrets).await?;
    let before = revocations(&s.hs).await;
    drop(flow);
    drop(owner);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    while revocations(&s.hs).await < before + 2 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    ensure!(revocations(&s.hs).await >= before + 2, "both tokens revoked after the owner left");

    // RevokeDelegation of a device this daemon never delegated; malformed IDs.
    assert_eq!(error_name(linkd.revoke_delegation("NOTOURS").await), errors::DEVICE_NOT_FOUND);
    assert_eq!(error_name(linkd.revoke_delegation("").await), errors::INVALID_ARGS);
    assert_intact(&s).await
}

/// Without shared secrets the daemon signs the device once its keys are on the homeserver; a
/// program that never uploads them fails the flow after `timeouts.delegation_keys`, and the daemon
/// revokes the session it handed over.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_never_uploaded_time_out_and_the_session_is_revoked() -> Result<()> {
    let hs = MockHomeserver::start().await;
    let mut session = Session::start().await?;
    session.write_config(
        &(test_config(&hs.uri(), 60).replace("[timeouts]\n", "[timeouts]\ndelegation_keys = 5\n")),
    )?;
    session.start_daemon(&[]).await?;
    let alice = hs.existing_device("ALICEDEV").await;
    sign_in_daemon(&session, &hs, &alice).await?;
    let linkd = session.client().await?;
    let mut flow = at_consent(&linkd, false).await?;
    hs.plan_login_as(&flow.proxy().peer_device_id().await?);
    // The daemon's 5 s start after the approval (at `SessionReady`): timed from before it.
    let started = tokio::time::Instant::now();
    flow.approve().await?;
    wait_state(&mut flow, State::SyncingSecrets).await?;
    let taken = flow.take_session().await?;
    ensure!(taken.secrets.is_none(), "no private key leaves the daemon");
    assert_eq!(error_name(flow.take_session().await.map(|_| ())), errors::INVALID_STATE);
    let before = revocations(&hs).await;
    let r = tokio::time::timeout(Duration::from_secs(40), flow.result()).await?;
    let waited = started.elapsed();
    assert_eq!(error_name(r), errors::EXPIRED);
    // Without the key limit the flow would run to its 60 s timeout.
    ensure!(waited >= Duration::from_secs(5) && waited < Duration::from_secs(25), "{waited:?}");
    ensure!(revocations(&hs).await >= before + 2, "the handed-over session was revoked");
    ensure!(linkd.list_delegations().await?.is_empty(), "a failed delegation is not remembered");
    ensure!(linkd.manager().session_state().await? == SessionState::SignedIn as u32);
    Ok(())
}

/// A delegation needs a signed-in daemon, and options are checked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delegation_needs_a_session_and_sane_options() -> Result<()> {
    let hs = MockHomeserver::start().await;
    let mut session = Session::start().await?;
    session.write_config(&test_config(&hs.uri(), 60))?;
    session.start_daemon(&[]).await?;
    let linkd = session.client().await?;
    let r = linkd.start_delegation(quiet(false)).await.map(|f| f.path().clone());
    assert_eq!(error_name(r), errors::NOT_SIGNED_IN);
    let alice = hs.existing_device("ALICEDEV").await;
    sign_in_daemon(&session, &hs, &alice).await?;
    for bad in ["", "a\nb", &"x".repeat(65)] {
        let opts = DelegateOptions { client_name: bad.to_owned(), ..quiet(false) };
        let r = linkd.start_delegation(opts).await.map(|f| f.path().clone());
        assert_eq!(error_name(r), errors::INVALID_ARGS, "client_name {bad:?}");
    }
    Ok(())
}

/// `SignOut` first ends the delegated sessions the daemon can still end (here: its refresh token
/// is still good), then signs the daemon out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sign_out_ends_the_delegated_sessions_first() -> Result<()> {
    let s = signed_in_setup(60).await?;
    let linkd = s.session.client().await?;
    let mut flow = at_consent(&linkd, true).await?;
    let device_id = flow.proxy().peer_device_id().await?;
    s.hs.plan_login_as(&device_id);
    flow.approve().await?;
    wait_state(&mut flow, State::SyncingSecrets).await?;
    flow.take_session().await?;
    flow.result().await?;
    // What the OAuth server answers to the daemon's refresh with the held refresh token.
    let refreshed = s.hs.plan_login_as(&device_id);
    linkd.sign_out().await?;
    let revoked: Vec<String> =
        s.hs.requests_to("revoke")
            .await
            .iter()
            .map(|r| String::from_utf8_lossy(&r.body).into_owned())
            .collect();
    ensure!(
        revoked.iter().any(|b| b.contains(&format!("token={refreshed}"))),
        "the delegated session was revoked"
    );
    ensure!(
        linkd.manager().session_state().await? == SessionState::SignedOut as u32,
        "then the daemon signed out"
    );
    Ok(())
}

/// `examples/python/delegate.py` (dbus-fast from PyPI, which passes file descriptors) takes a
/// delegated session: the file is private, the script prints no token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_python_example_takes_a_session() -> Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    let s = signed_in_setup(60).await?;
    let python = matrix_linkd_tests::python::dbus_fast_python()?;
    let token = s.hs.plan_login();
    let dir = tempfile::tempdir()?;
    let out = dir.path().join("session.json");
    let script = matrix_linkd_tests::workspace_root().join("examples/python/delegate.py");
    let run = s
        .session
        .command(&python)
        .arg(&script)
        .args(["--name", "Py bot", "--approve", "--share-secrets"])
        .arg(&out)
        .output()?;
    let stdout = String::from_utf8_lossy(&run.stdout);
    let stderr = String::from_utf8_lossy(&run.stderr);
    ensure!(run.status.success(), "delegate.py failed: {stdout} {stderr}");
    let doc: serde_json::Value = serde_json::from_slice(&std::fs::read(&out)?)?;
    assert_eq!(doc["access_token"], token.as_str());
    ensure!(doc["secrets"]["cross_signing"]["master_key"].is_string(), "secrets shared");
    let device_id = doc["device_id"].as_str().unwrap_or_default();
    ensure!(stdout.contains(device_id) && !device_id.is_empty(), "prints the device ID: {stdout}");
    ensure!(!stdout.contains(&token) && !stderr.contains(&token), "no token printed");
    assert_eq!(std::fs::metadata(&out)?.permissions().mode() & 0o777, 0o600);
    Ok(())
}
