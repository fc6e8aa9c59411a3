//! Crash consistency over the real stack: the daemon is killed with SIGKILL (no clean-up of its
//! own can run) at each step of a grant, a login and a delegation, both wire generations, and
//! started again on the same bus, data directory and keyring. Then, each time:
//!
//! - the flow's intent was in the journal (`journal/` of the data directory), with nothing secret
//!   in the file, and the new daemon settles it (the directory empties);
//! - the session restores (signed in, or signed out for a login that was killed);
//! - the other device learns that the flow ended well before its rendezvous session would have
//!   expired (the new daemon deleted it);
//! - whatever the killed flow had made on the servers is cleaned up: tokens issued to a dead flow
//!   are revoked and their device is gone; a device whose tokens were lost is listed by
//!   `ListDelegations`; a delegated device its program took lives on.
//!
//! Steps the flow waits at (a person, the other device) are reached by waiting for the state;
//! the one step between two requests (a delegation's tokens received, not yet recorded) by
//! `LINKD_HOLD_AT` (debug builds only; `protocol::intent`).

use std::{
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{Result, anyhow, bail, ensure};
use matrix_linkd_client::{Flow, GrantOptions, Linkd, LoginOptions, Revoked, SessionState, State};
use matrix_linkd_tests::{
    Session,
    light::{
        DaemonSettings, DelegatingDaemon, delegating_daemon, device_status, quiet_delegation, token_works,
    },
    peers, quiet_grant,
    stack::{SignedInDaemon, Stack, daemon_session, login_showing_qr, signed_in_daemon},
    wait_state,
};

/// The other device must hear of the end within this after the restart: Synapse's rendezvous
/// sessions live 60 s, so a device that learns only from their expiry misses it.
const TOLD_BOUND: Duration = Duration::from_secs(25);

/// The journal's files (the public part of the intents).
fn journal(session: &Session) -> Vec<std::path::PathBuf> {
    std::fs::read_dir(session.data_dir().join("journal"))
        .map(|d| {
            d.filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|x| x == "json"))
                .collect()
        })
        .unwrap_or_default()
}

/// Waits until the flow's intent in the journal is at `step` (the file is the step's commit).
async fn wait_step(session: &Session, step: &str) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let at = journal(session)
            .first()
            .and_then(|f| std::fs::read(f).ok())
            .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
            .is_some_and(|v| v["step"] == step);
        if at {
            return Ok(());
        }
        ensure!(Instant::now() < deadline, "the flow's intent never reached {step}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// SIGKILL to the daemon `n` (no clean-up of its own runs); returns once it is gone.
fn kill9(session: &mut Session, n: usize) -> Result<()> {
    let pid = session.daemon_pid(n);
    ensure!(Command::new("kill").args(["-KILL", &pid.to_string()]).status()?.success(), "kill -9 failed");
    session.wait_daemon_exit(n, Duration::from_secs(10))?;
    Ok(())
}

/// After a kill: checks what the journal holds (one intent, at `step`, nothing secret in the
/// file); starts a new daemon on the same session and waits until it has settled the journal.
/// Returns the new daemon's index.
async fn restart(session: &mut Session, step: &str) -> Result<usize> {
    let files = journal(session);
    ensure!(files.len() == 1, "the killed flow left {} intents, not one", files.len());
    let text = std::fs::read_to_string(&files[0])?;
    let v: serde_json::Value = serde_json::from_str(&text)?;
    let keys: Vec<&str> = v.as_object().map(|o| o.keys().map(String::as_str).collect()).unwrap_or_default();
    ensure!(keys == ["id", "kind", "started", "step"], "the journal file holds {keys:?}");
    ensure!(v["step"] == step, "the intent is at step {}, not {step}", v["step"]);
    // Only those four, and their values are what they say: no URL, code or token hides in them.
    let id_ok =
        v["id"].as_str().is_some_and(|id| id.len() == 16 && id.bytes().all(|b| b.is_ascii_hexdigit()));
    let known = ["started", "rendezvous", "code", "tokens", "recorded", "handed-over"];
    ensure!(id_ok && v["started"].is_u64() && !text.contains("http"), "the journal file holds {text}");
    ensure!(v["step"].as_str().is_some_and(|s| known.contains(&s)), "unknown step in {text}");
    let m = session.start_daemon(&[]).await?;
    let deadline = Instant::now() + Duration::from_secs(60);
    while !journal(session).is_empty() {
        if Instant::now() > deadline {
            bail!("the new daemon did not settle the journal: {}", session.log(m));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(m)
}

/// [`kill9`] then [`restart`].
async fn kill_and_restart(session: &mut Session, n: usize, step: &str) -> Result<usize> {
    kill9(session, n)?;
    restart(session, step).await
}

/// The account's devices, as the homeserver lists them to `phone`.
async fn devices(phone: &matrix_sdk::Client) -> Result<Vec<String>> {
    Ok(phone.devices().await?.devices.into_iter().map(|d| d.device_id.to_string()).collect())
}

/// The peer's flow ended with an error within `TOLD_BOUND`.
async fn told<E: std::fmt::Debug>(peer: peers::Peer<E>, what: &str) -> Result<()> {
    match tokio::time::timeout(TOLD_BOUND, peer.task).await {
        Ok(Ok(Err(_))) => Ok(()),
        Ok(Ok(Ok(()))) => bail!("{what}: the other device's flow succeeded"),
        Ok(Err(e)) => bail!("{what}: the other device's task: {e}"),
        Err(_) => bail!("{what}: the other device was not told within {TOLD_BOUND:?}"),
    }
}

/// The other daemon's flow failed within `TOLD_BOUND`.
async fn daemon_told(flow: Flow, what: &str) -> Result<()> {
    match tokio::time::timeout(TOLD_BOUND, flow.result()).await {
        Ok(Err(_)) => Ok(()),
        Ok(Ok(_)) => bail!("{what}: the other daemon's flow succeeded"),
        Err(_) => bail!("{what}: the other daemon was not told within {TOLD_BOUND:?}"),
    }
}

async fn assert_signed_in(session: &Session, user: &str) -> Result<Linkd> {
    let state = session.wait_session_settled(Duration::from_secs(30)).await?;
    ensure!(state == matrix_linkd_tests::api::SessionState::SignedIn, "after the restart: {state:?}");
    let linkd = session.client().await?;
    let status = linkd.status().await?;
    ensure!(
        status.state == SessionState::SignedIn && status.user_id == user,
        "restored as {}",
        status.user_id
    );
    Ok(linkd)
}

async fn new_device(stack: &Stack) -> Result<matrix_sdk::Client> {
    Ok(matrix_sdk::Client::builder().homeserver_url(stack.synapse.clone()).build().await?)
}

// -------------------------------------------------------------------------------------------------
// Grant, 2024 (the other device: matrix-sdk 0.18)

/// The daemon shows the QR code; killed at QrReady, WaitingForCheckCode, WaitingForApproval and
/// WaitingForToken (consent given on D-Bus, the person not yet through the OAuth page).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grant_2024_showing_qr_killed_at_every_step() -> Result<()> {
    let SignedInDaemon { stack, login, phone, mut session } = signed_in_daemon("kg4").await?;
    let user = stack.user_id(&login);
    let before = devices(&phone).await?;
    let mut n = 0;
    for at in [State::QrReady, State::WaitingForCheckCode, State::WaitingForApproval, State::WaitingForToken]
    {
        let linkd = session.client().await?;
        let mut flow =
            linkd.start_grant(GrantOptions { protocol: Some("2024".into()), ..quiet_grant() }).await?;
        wait_state(&mut flow, State::QrReady).await?;
        let qr = flow.qr_code("raw").await?;
        let laptop = new_device(&stack).await?;
        let peer = if at == State::QrReady {
            None
        } else {
            let mut peer = peers::login_scanning(laptop.clone(), qr.clone());
            let code = peer.shown_code().await?;
            wait_state(&mut flow, State::WaitingForCheckCode).await?;
            if at != State::WaitingForCheckCode {
                flow.check_code(code).await?;
                wait_state(&mut flow, State::WaitingForApproval).await?;
            }
            if at == State::WaitingForToken {
                flow.approve().await?;
                wait_state(&mut flow, State::WaitingForToken).await?;
            }
            Some(peer)
        };
        n = kill_and_restart(&mut session, n, "rendezvous").await?;
        assert_signed_in(&session, &user).await?;
        let what = format!("grant 2024 killed at {at:?}");
        match peer {
            // Nobody scanned yet: the code the person may still scan leads nowhere.
            None => told(peers::login_scanning(laptop, qr), &what).await?,
            Some(peer) => told(peer, &what).await?,
        }
    }
    ensure!(devices(&phone).await? == before, "a killed grant left a device on the account");
    Ok(())
}

/// The daemon scans the new device's QR code; killed at ShowingCheckCode and WaitingForApproval.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grant_2024_scanning_qr_killed_at_every_step() -> Result<()> {
    let SignedInDaemon { stack, login, phone, mut session } = signed_in_daemon("kq4").await?;
    let user = stack.user_id(&login);
    let before = devices(&phone).await?;
    let mut n = 0;
    for at in [State::ShowingCheckCode, State::WaitingForApproval] {
        let mut peer = peers::login_generating(new_device(&stack).await?);
        let qr = peer.qr().await?;
        let linkd = session.client().await?;
        let mut flow = linkd.start_grant(GrantOptions { qr_code: Some(qr), ..quiet_grant() }).await?;
        wait_state(&mut flow, State::ShowingCheckCode).await?;
        let code = flow.check_code_to_show().await?;
        let sender = peer.code_sender().await?;
        if at == State::WaitingForApproval {
            sender.send(code).await?;
            wait_state(&mut flow, State::WaitingForApproval).await?;
        }
        n = kill_and_restart(&mut session, n, "rendezvous").await?;
        assert_signed_in(&session, &user).await?;
        if at == State::ShowingCheckCode {
            // The new device reads nothing while its person types the code it was shown; it
            // learns of the end at its next read, not at the session's expiry.
            sender.send(code).await?;
        }
        told(peer, &format!("grant 2024 (scanning) killed at {at:?}")).await?;
    }
    ensure!(devices(&phone).await? == before, "a killed grant left a device on the account");
    Ok(())
}

// -------------------------------------------------------------------------------------------------
// Login, 2024 (the other device: matrix-sdk 0.18, signed in)

/// The daemon shows the QR code; killed at QrReady, WaitingForCheckCode and WaitingForToken (the
/// person approves on the OAuth page while the daemon is dead: the new daemon's last look at the
/// code gets the tokens and revokes them), and with its tokens received (held there): no device is
/// left that nobody holds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_2024_killed_at_every_step() -> Result<()> {
    let stack = Stack::main()?;
    let login = Stack::new_login("kl4");
    let phone = stack.existing_device(&login).await?;
    let mut session = daemon_session(&stack, 120).await?;
    let before = devices(&phone).await?;
    let mut n = 0;
    for at in [State::QrReady, State::WaitingForCheckCode, State::WaitingForToken] {
        let linkd = session.client().await?;
        let mut flow = login_showing_qr(&linkd, &stack, "2024").await?;
        let qr = flow.qr_code("raw").await?;
        let mut peer = None;
        let mut uri = None;
        if at != State::QrReady {
            let mut p = peers::grant_scanning(phone.clone(), qr.clone());
            let code = p.shown_code().await?;
            wait_state(&mut flow, State::WaitingForCheckCode).await?;
            if at == State::WaitingForToken {
                flow.check_code(code).await?;
                uri = Some(p.verification_uri().await?);
                wait_state(&mut flow, State::WaitingForToken).await?;
            }
            peer = Some(p);
        }
        let step = if at == State::WaitingForToken { "code" } else { "rendezvous" };
        kill9(&mut session, n)?;
        // The person approves while the daemon is dead.
        if let Some(uri) = &uri {
            stack.approve_uri(uri, &login, false)?;
        }
        n = restart(&mut session, step).await?;
        let state = session.wait_session_settled(Duration::from_secs(30)).await?;
        ensure!(state == matrix_linkd_tests::api::SessionState::SignedOut, "after the restart: {state:?}");
        let what = format!("login 2024 killed at {at:?}");
        match peer {
            None => told(peers::grant_scanning(phone.clone(), qr), &what).await?,
            Some(p) => told(p, &what).await?,
        }
        let now = devices(&phone).await?;
        ensure!(now == before, "{what}: devices {now:?}, before {before:?}");
    }

    // Tokens received and recorded, `m.login.success` not yet sent: held there, killed. The new
    // daemon revokes the tokens, so the device goes; the other device is told.
    kill9(&mut session, n)?;
    n = session.start_daemon_with(&[], &[("LINKD_HOLD_AT", "login:tokens")]).await?;
    session
        .wait_session_state(matrix_linkd_tests::api::SessionState::SignedOut, Duration::from_secs(20))
        .await?;
    let linkd = session.client().await?;
    let mut flow = login_showing_qr(&linkd, &stack, "2024").await?;
    let mut peer = peers::grant_scanning(phone.clone(), flow.qr_code("raw").await?);
    let code = peer.shown_code().await?;
    wait_state(&mut flow, State::WaitingForCheckCode).await?;
    flow.check_code(code).await?;
    stack.approve_uri(&peer.verification_uri().await?, &login, false)?;
    let deadline = Instant::now() + Duration::from_secs(60);
    while !session.log(n).contains("held at this step") {
        ensure!(Instant::now() < deadline, "never held: {}", session.log(n));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    ensure!(devices(&phone).await? != before, "the held login's device does not exist yet");
    kill_and_restart(&mut session, n, "tokens").await?;
    let state = session.wait_session_settled(Duration::from_secs(30)).await?;
    ensure!(state == matrix_linkd_tests::api::SessionState::SignedOut, "after the restart: {state:?}");
    told(peer, "login 2024 killed with its tokens").await?;
    let now = devices(&phone).await?;
    ensure!(now == before, "login 2024 killed with its tokens: devices {now:?}, before {before:?}");
    Ok(())
}

// -------------------------------------------------------------------------------------------------
// The latest generation (the other device: a second daemon)

/// The signed-in daemon grants (showing a latest QR code) and is killed at WaitingForCheckCode and
/// WaitingForApproval; the new daemon, scanning, is told.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grant_latest_killed_at_every_step() -> Result<()> {
    let SignedInDaemon { stack, login, phone, mut session } = signed_in_daemon("kgl").await?;
    let user = stack.user_id(&login);
    let new = daemon_session(&stack, 120).await?;
    let joining = new.client().await?;
    let before = devices(&phone).await?;
    let mut n = 0;
    for at in [State::WaitingForCheckCode, State::WaitingForApproval] {
        let granting = session.client().await?;
        let mut grant =
            granting.start_grant(GrantOptions { protocol: Some("latest".into()), ..quiet_grant() }).await?;
        wait_state(&mut grant, State::QrReady).await?;
        let qr = grant.qr_code("raw").await?;
        let mut login_flow =
            joining.start_login(LoginOptions { qr_code: Some(qr), ..Default::default() }).await?;
        wait_state(&mut login_flow, State::ShowingCheckCode).await?;
        wait_state(&mut grant, State::WaitingForCheckCode).await?;
        if at == State::WaitingForApproval {
            grant.check_code(login_flow.check_code_to_show().await?).await?;
            wait_state(&mut grant, State::WaitingForApproval).await?;
        }
        n = kill_and_restart(&mut session, n, "rendezvous").await?;
        assert_signed_in(&session, &user).await?;
        daemon_told(login_flow, &format!("grant latest killed at {at:?}")).await?;
        ensure!(joining.status().await?.state == SessionState::SignedOut);
    }
    ensure!(devices(&phone).await? == before, "a killed grant left a device on the account");
    Ok(())
}

/// The signed-out daemon logs in (showing a latest QR code), the signed-in one scans; the new
/// daemon is killed at WaitingForCheckCode and WaitingForToken (the person then approves while it
/// is dead); the granting daemon is told, and no device is left.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_latest_killed_at_every_step() -> Result<()> {
    let SignedInDaemon { stack, login, phone, session: existing } = signed_in_daemon("kll").await?;
    let mut new = daemon_session(&stack, 120).await?;
    let granting = existing.client().await?;
    let before = devices(&phone).await?;
    let mut n = 0;
    for at in [State::WaitingForCheckCode, State::WaitingForToken] {
        let joining = new.client().await?;
        let mut login_flow = login_showing_qr(&joining, &stack, "latest").await?;
        let qr = login_flow.qr_code("raw").await?;
        let mut grant = granting.start_grant(GrantOptions { qr_code: Some(qr), ..quiet_grant() }).await?;
        wait_state(&mut grant, State::ShowingCheckCode).await?;
        wait_state(&mut login_flow, State::WaitingForCheckCode).await?;
        let mut step = "rendezvous";
        let mut uri = None;
        if at == State::WaitingForToken {
            login_flow.check_code(grant.check_code_to_show().await?).await?;
            wait_state(&mut grant, State::WaitingForApproval).await?;
            uri = Some(grant.verification_uri().await?);
            grant.approve().await?;
            wait_state(&mut login_flow, State::WaitingForToken).await?;
            step = "code";
        }
        kill9(&mut new, n)?;
        // The person approves while the daemon is dead.
        if let Some(uri) = &uri {
            stack.approve_uri(uri, &login, false)?;
        }
        n = restart(&mut new, step).await?;
        let state = new.wait_session_settled(Duration::from_secs(30)).await?;
        ensure!(state == matrix_linkd_tests::api::SessionState::SignedOut, "after the restart: {state:?}");
        daemon_told(grant, &format!("login latest killed at {at:?}")).await?;
        let now = devices(&phone).await?;
        ensure!(now == before, "login latest killed at {at:?}: devices {now:?}, before {before:?}");
    }
    Ok(())
}

// -------------------------------------------------------------------------------------------------
// Delegation

async fn delegation_at(session: &Session) -> Result<(Linkd, Flow)> {
    let linkd = session.client().await?;
    let mut flow = linkd.start_delegation(quiet_delegation(false)).await?;
    wait_state(&mut flow, State::WaitingForApproval).await?;
    Ok((linkd, flow))
}

/// Killed at each step: before consent (nothing issued), after consent on D-Bus with the person
/// approving on the page while the daemon is dead (the last look gets the tokens: revoked), with
/// the tokens received and not yet recorded (lost with the process: the device is listed for
/// `RevokeDelegation`), with the record kept but the session not taken (revoked, forgotten), and
/// after the program took the session (its device lives on, still listed).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delegation_killed_at_every_step() -> Result<()> {
    let DelegatingDaemon { stack, login, phone, mut session } =
        delegating_daemon("kdl", &DaemonSettings::default()).await?;
    let user = stack.user_id(&login);
    let token = phone.access_token().ok_or_else(|| anyhow!("phone token"))?;
    let before = devices(&phone).await?;
    let mut n = 0;

    // 1. Before consent.
    let (_linkd, flow) = delegation_at(&session).await?;
    drop(flow);
    n = kill_and_restart(&mut session, n, "code").await?;
    let linkd = assert_signed_in(&session, &user).await?;
    ensure!(linkd.list_delegations().await?.is_empty(), "a delegation killed before consent is listed");
    ensure!(devices(&phone).await? == before, "a delegation killed before consent left a device");

    // 2. Consent given, the person approves on the page while the daemon is dead.
    let (_linkd, mut flow) = delegation_at(&session).await?;
    let device_id = flow.proxy().peer_device_id().await?;
    let uri = flow.verification_uri().await?;
    flow.approve().await?;
    wait_state(&mut flow, State::WaitingForToken).await?;
    kill9(&mut session, n)?;
    stack.approve_uri(&uri, &login, false)?;
    n = restart(&mut session, "code").await?;
    let linkd = assert_signed_in(&session, &user).await?;
    ensure!(device_status(&stack, &token, &device_id).await? == 404, "tokens issued to a dead flow live on");
    ensure!(linkd.list_delegations().await?.is_empty());

    // 3. Tokens received, not yet recorded: held there (LINKD_HOLD_AT), killed.
    kill9(&mut session, n)?;
    n = session.start_daemon_with(&[], &[("LINKD_HOLD_AT", "delegation:tokens-received")]).await?;
    assert_signed_in(&session, &user).await?;
    let (_linkd, flow) = delegation_at(&session).await?;
    let device_id = flow.proxy().peer_device_id().await?;
    let uri = flow.verification_uri().await?;
    flow.approve().await?;
    stack.approve_uri(&uri, &login, false)?;
    let deadline = Instant::now() + Duration::from_secs(60);
    while !session.log(n).contains("held at this step") {
        ensure!(Instant::now() < deadline, "never held: {}", session.log(n));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    n = kill_and_restart(&mut session, n, "code").await?;
    let linkd = assert_signed_in(&session, &user).await?;
    // The last look at the used code finds it used: the device is kept in the list for
    // `RevokeDelegation`, unless the OAuth server ended the grant on that second use (RFC 6749
    // §4.1.2 lets it; oidc-provider does), in which case the device is gone. Never both absent.
    let listed = linkd.list_delegations().await?.iter().any(|d| d.device_id == device_id);
    let gone = device_status(&stack, &token, &device_id).await? == 404;
    ensure!(listed || gone, "a device whose tokens died with the daemon lives on, and no record knows it");
    if listed {
        // No token of it is left: RevokeDelegation ends it on the account page.
        let ended = linkd.revoke_delegation(&device_id).await?;
        ensure!(ended == Revoked::AccountPage, "ended {ended:?}");
    }

    // 4. Recorded, not taken.
    let (_linkd, mut flow) = delegation_at(&session).await?;
    let device_id = flow.proxy().peer_device_id().await?;
    let uri = flow.verification_uri().await?;
    flow.approve().await?;
    stack.approve_uri(&uri, &login, false)?;
    wait_state(&mut flow, State::SyncingSecrets).await?;
    n = kill_and_restart(&mut session, n, "recorded").await?;
    let linkd = assert_signed_in(&session, &user).await?;
    ensure!(device_status(&stack, &token, &device_id).await? == 404, "an untaken session lives on");
    ensure!(!linkd.list_delegations().await?.iter().any(|d| d.device_id == device_id), "still listed");

    // 5. Taken, the daemon waiting for the device's keys.
    let (_linkd, mut flow) = delegation_at(&session).await?;
    let uri = flow.verification_uri().await?;
    flow.approve().await?;
    stack.approve_uri(&uri, &login, false)?;
    wait_state(&mut flow, State::SyncingSecrets).await?;
    let taken = flow.take_session().await?;
    wait_step(&session, "handed-over").await?;
    kill_and_restart(&mut session, n, "handed-over").await?;
    let linkd = assert_signed_in(&session, &user).await?;
    ensure!(token_works(&stack, &taken.access_token).await?, "the program's session was ended");
    ensure!(linkd.list_delegations().await?.iter().any(|d| d.device_id == taken.device_id), "not listed");
    Ok(())
}
