//! The four flows end to end: the real daemon binary on a private bus with a real gnome-keyring,
//! matrix-sdk 0.18 clients in this process as the other device, and the mock homeserver.

use std::time::Duration;

use anyhow::Result;
use matrix_linkd_client::{GrantOptions, LoginOptions, SessionState, State, api};
use matrix_linkd_tests::{
    Session,
    homeserver::{MockHomeserver, USER},
    peers, sign_in_daemon, signed_out_setup, test_config, wait_state,
};

/// Login, daemon shows the QR; then the daemon restarts and is signed in again from the keyring.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_showing_qr_then_restore() -> Result<()> {
    let (hs, mut session, d) = signed_out_setup(120).await?;
    let alice = hs.existing_device("ALICEDEV").await;

    let signed_in = sign_in_daemon(&session, &hs, &alice).await?;
    assert_eq!(signed_in.user_id, USER);
    assert!(!signed_in.device_id.is_empty());
    // matrix-sdk names the homeserver by URL.
    assert_eq!(signed_in.homeserver_found, api::results::homeserver_found::URL);

    // The other side sees the daemon's device as cross-signed by its owner (after a keys/query).
    alice.encryption().request_user_identity(alice.user_id().unwrap()).await?;
    let device = alice
        .encryption()
        .get_device(alice.user_id().unwrap(), signed_in.device_id.as_str().into())
        .await?
        .expect("alice sees the daemon's device");
    assert!(device.is_cross_signed_by_owner(), "daemon device is not cross-signed");

    let status = session.client().await?.status().await?;
    assert_eq!(status.user_id, USER);
    assert_eq!(status.device_id, signed_in.device_id);
    assert!(status.capabilities.iter().any(|c| c == api::capabilities::GRANT), "{:?}", status.capabilities);

    // Restart: the session comes back from the Secret Service and the encrypted store.
    session.stop_daemon(d)?;
    let d2 = session.start_daemon(&[]).await?;
    session.wait_session_state(SessionState::SignedIn, Duration::from_secs(20)).await?;
    let status = session.client().await?.status().await?;
    assert_eq!((status.user_id.as_str(), status.device_id.as_str()), (USER, signed_in.device_id.as_str()));
    assert!(session.daemon_running(d2));
    // Nothing in clear: the store holds no token.
    let token = hs.issued_tokens().pop().unwrap();
    assert!(!grep_dir(&session.data_dir(), token.as_bytes()), "access token found in the data dir");
    Ok(())
}

/// Login, daemon scans the QR the existing device shows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_scanning_qr() -> Result<()> {
    let (hs, session, _) = signed_out_setup(120).await?;
    let alice = hs.existing_device("ALICEDEV").await;

    let mut peer = peers::grant_generating(alice.clone());
    let qr = peer.qr().await?;
    hs.plan_login();
    let linkd = session.client().await?;
    let mut flow = linkd.start_login(LoginOptions { qr_code: Some(qr), ..Default::default() }).await?;
    wait_state(&mut flow, State::ShowingCheckCode).await?;
    let code = flow.check_code_to_show().await?;
    peer.code_sender().await?.send(code).await?;
    let signed_in = tokio::time::timeout(Duration::from_secs(60), flow.result()).await??;
    assert_eq!(signed_in.user_id, USER);
    peer.finish().await?.map_err(|e| anyhow::anyhow!("existing device: {e}"))?;
    session.wait_session_state(SessionState::SignedIn, Duration::from_secs(5)).await?;
    Ok(())
}

/// Grant, daemon shows the QR: the new device scans, the user types the code and approves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grant_showing_qr() -> Result<()> {
    let (hs, session, _) = signed_out_setup(120).await?;
    let alice = hs.existing_device("ALICEDEV").await;
    sign_in_daemon(&session, &hs, &alice).await?;
    grant_to_a_new_device(&hs, &session).await
}

/// Every grant shares the secrets from one crypto store, opened at the first grant and kept: the
/// second grant does not open the store again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grants_share_secrets_from_one_open_store() -> Result<()> {
    let (hs, session, daemon) = signed_out_setup(120).await?;
    let alice = hs.existing_device("ALICEDEV").await;
    sign_in_daemon(&session, &hs, &alice).await?;
    grant_to_a_new_device(&hs, &session).await?;
    grant_to_a_new_device(&hs, &session).await?;
    let opened = session.log(daemon).matches("crypto store opened for sharing secrets").count();
    assert_eq!(opened, 1, "the crypto store was opened {opened} times for two grants");
    Ok(())
}

/// One grant with the daemon showing the QR code; a new device scans it and ends verified.
async fn grant_to_a_new_device(hs: &MockHomeserver, session: &Session) -> Result<()> {
    let linkd = session.client().await?;
    let mut flow =
        linkd.start_grant(GrantOptions { open_uri: false, notify: false, ..Default::default() }).await?;
    wait_state(&mut flow, State::QrReady).await?;
    let qr = flow.qr_code("raw").await?;
    let new_device = hs.new_device().await;
    let mut peer = peers::login_scanning(new_device.clone(), qr);
    let code = peer.shown_code().await?;
    wait_state(&mut flow, State::WaitingForCheckCode).await?;
    flow.check_code(code).await?;
    wait_state(&mut flow, State::WaitingForApproval).await?;
    assert!(flow.verification_uri().await?.contains("/link"));
    hs.plan_login();
    flow.approve().await?;
    let signed_in = tokio::time::timeout(Duration::from_secs(60), flow.result()).await??;
    assert_eq!(signed_in.user_id, USER);
    peer.finish().await?.map_err(|e| anyhow::anyhow!("new device: {e}"))?;
    peers::assert_verified_new_device(&new_device).await?;
    Ok(())
}

/// Grant, daemon scans the QR the new device shows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grant_scanning_qr() -> Result<()> {
    let hs = MockHomeserver::start().await;
    let mut session = Session::start().await?;
    session.write_config(&test_config(&hs.uri(), 120).replace("open_uri = false", "open_uri = true"))?;
    session.start_daemon(&[]).await?;
    let alice = hs.existing_device("ALICEDEV").await;
    sign_in_daemon(&session, &hs, &alice).await?;

    let new_device = hs.new_device().await;
    let mut peer = peers::login_generating(new_device.clone());
    let qr = peer.qr().await?;
    let linkd = session.client().await?;
    // Default options: notifications and URI opening on, with no notification server, portal or
    // xdg-open in this session. The flow must not care.
    let mut flow = linkd.start_grant(GrantOptions { qr_code: Some(qr), ..Default::default() }).await?;
    wait_state(&mut flow, State::ShowingCheckCode).await?;
    let code = flow.check_code_to_show().await?;
    peer.code_sender().await?.send(code).await?;
    wait_state(&mut flow, State::WaitingForApproval).await?;
    hs.plan_login();
    flow.approve().await?;
    let signed_in = tokio::time::timeout(Duration::from_secs(60), flow.result()).await??;
    assert_eq!(signed_in.user_id, USER);
    peer.finish().await?.map_err(|e| anyhow::anyhow!("new device: {e}"))?;
    peers::assert_verified_new_device(&new_device).await?;
    Ok(())
}

fn grep_dir(dir: &std::path::Path, needle: &[u8]) -> bool {
    let Ok(entries) = std::fs::read_dir(dir) else { return false };
    entries.flatten().any(|e| {
        let p = e.path();
        if p.is_dir() {
            grep_dir(&p, needle)
        } else {
            std::fs::read(&p).is_ok_and(|b| b.windows(needle.len()).any(|w| w == needle))
        }
    })
}

/// At start the daemon checks its session: an access token the homeserver no longer accepts is
/// refreshed, and the new tokens replace the old ones in the keyring.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_token_is_refreshed_and_kept_at_restore() -> Result<()> {
    let mut s = matrix_linkd_tests::signed_in_setup(60).await?;
    let old = s.session.kept_session().expect("kept session")["access_token"].as_str().unwrap().to_owned();
    s.session.stop_daemon(s.daemon)?;
    s.hs.forget_token(&old);
    let new = s.hs.plan_login();
    s.session.start_daemon(&[]).await?;
    s.session.wait_session_state(SessionState::SignedIn, Duration::from_secs(20)).await?;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while s.session.kept_session().expect("kept session")["access_token"] != new.as_str() {
        assert!(std::time::Instant::now() < deadline, "the refreshed token was not kept");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // And the next start uses it without another refresh.
    let d = s.session.daemons_started() - 1;
    s.session.stop_daemon(d)?;
    s.session.start_daemon(&[]).await?;
    s.session.wait_session_state(SessionState::SignedIn, Duration::from_secs(20)).await?;
    assert_eq!(s.session.kept_session().unwrap()["access_token"], new.as_str());
    Ok(())
}

/// A daemon with a kept session says so as soon as its keyring has answered: `SessionState` is
/// `SignedIn` (with the user, device and homeserver) while the homeserver has not yet answered
/// the check of the session (`whoami`, held here for 60 s); before, it said so only after that
/// answer or the check's 15 s time-out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kept_session_is_published_before_the_homeserver_answers() -> Result<()> {
    let mut s = matrix_linkd_tests::signed_in_setup(60).await?;
    s.session.stop_daemon(s.daemon)?;
    s.hs.slow_whoami(Duration::from_secs(60)).await;
    s.session.start_daemon(&[]).await?;
    // Far below the held answer and the check's own time-out.
    s.session.wait_session_state(SessionState::SignedIn, Duration::from_secs(10)).await?;
    let linkd = s.session.client().await?;
    assert_eq!(linkd.manager().user_id().await?, USER);
    assert!(!linkd.manager().device_id().await?.is_empty());
    Ok(())
}

/// A session the homeserver revoked (refresh refused) is dropped at start: signed out, nothing kept.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoked_session_is_dropped_at_restore() -> Result<()> {
    let mut s = matrix_linkd_tests::signed_in_setup(60).await?;
    let old = s.session.kept_session().expect("kept session")["access_token"].as_str().unwrap().to_owned();
    s.session.stop_daemon(s.daemon)?;
    s.hs.forget_token(&old);
    s.hs.plan_token_error("invalid_grant");
    s.session.start_daemon(&[]).await?;
    s.session.wait_session_state(SessionState::SignedOut, Duration::from_secs(20)).await?;
    assert!(s.session.kept_session().is_none(), "the revoked session is still kept");
    assert!(!s.session.data_dir().join("store").exists(), "the store is still there");
    Ok(())
}

/// After a QR login the daemon's encrypted store holds the account's private cross-signing keys,
/// the same ones as the device that signed it in, and they can be exported with the store key from
/// the keyring (what the own engine's grant side sends in `m.login.secrets`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn store_exports_the_shared_secrets() -> Result<()> {
    let mut s = matrix_linkd_tests::signed_in_setup(60).await?;
    s.session.stop_daemon(s.daemon)?;
    let out = s
        .session
        .command("secret-tool")
        .args(["lookup", "application", "io.github.matrix_linkd", "kind", "store-key"])
        .output()?;
    let key: [u8; 32] =
        out.stdout.get(..32).and_then(|k| k.try_into().ok()).expect("a 32-byte store key in the keyring");
    let bundle = matrix_linkd::account::export_secrets_bundle(&s.session.data_dir().join("store"), &key)
        .await?
        .expect("the store holds an account");
    let alice = s.alice.olm_machine_for_testing().await;
    let theirs = alice.as_ref().expect("olm machine").store().export_secrets_bundle().await?;
    assert_eq!(bundle.cross_signing.master_key, theirs.cross_signing.master_key);
    assert_eq!(bundle.cross_signing.self_signing_key, theirs.cross_signing.self_signing_key);
    assert_eq!(bundle.cross_signing.user_signing_key, theirs.cross_signing.user_signing_key);
    // A wrong key opens nothing.
    assert!(
        matrix_linkd::account::export_secrets_bundle(&s.session.data_dir().join("store"), &[0u8; 32])
            .await
            .is_err()
    );
    Ok(())
}
