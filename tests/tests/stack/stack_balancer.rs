//! Both wire generations end to end behind a load balancer in front of the stack's Synapse
//! ([`Balancer`]): the first write of each rendezvous message meets a worker that has not caught
//! up (`412` for 2024, `409` for the latest), and the servers' clock is two hours ahead of ours.
//! Every device here (the phone, the daemons) has the balancer as its homeserver, so each
//! rendezvous request of either side goes through it; the OAuth server is the real one.
//!
//! Each test asserts that the balancer refused the daemons' writes (so that it cannot pass without
//! the daemon writing each message again), and that the writes it did not refuse went through it.

use std::time::{Duration, SystemTime};

use anyhow::{Result, anyhow, ensure};
use matrix_linkd::protocol::wire::qr::LoginQr;
use matrix_linkd_client::{GrantOptions, LoginOptions, State};
use matrix_linkd_tests::{
    balancer::{Api, Balancer, SKEW, SessionReport},
    grant_scanned_by, peers, quiet_grant,
    stack::{
        Stack, assert_cross_signed, assert_seen_verified, consent_and_finish, daemon_access_token,
        daemon_session, sign_in_daemon,
    },
    wait_state,
};

/// The stack as seen through `balancer`: its Synapse URL is the balancer's.
fn behind(stack: &Stack, balancer: &Balancer) -> Stack {
    let mut via = stack.clone();
    via.synapse = balancer.url().clone();
    via
}

/// A daemon signed in, through the balancer, by a phone whose homeserver is the balancer: the
/// daemon keeps the balancer as its homeserver (the phone offers it), so it creates its
/// rendezvous sessions there.
async fn signed_in_behind(
    via: &Stack,
    prefix: &str,
) -> Result<(String, matrix_sdk::Client, matrix_linkd_tests::Session)> {
    let login = Stack::new_login(prefix);
    let phone = via.existing_device(&login).await?;
    let session = daemon_session(via, 120).await?;
    sign_in_daemon(via, &session, &phone, &login).await?;
    Ok((login, phone, session))
}

/// The balancer's clock is [`SKEW`] ahead of ours (checked on an answer it forwards).
async fn assert_clock_ahead(balancer: &Balancer) -> Result<()> {
    let r = matrix_sdk::reqwest::get(balancer.url().join("_matrix/client/versions")?).await?;
    let date = r.headers().get("date").ok_or_else(|| anyhow!("no Date"))?.to_str()?;
    let ahead = httpdate::parse_http_date(date)?.duration_since(SystemTime::now())?;
    ensure!(ahead > SKEW - Duration::from_secs(60), "Date is only {ahead:?} ahead");
    Ok(())
}

/// The one session of `api` the balancer saw during a flow, after `before` earlier ones.
fn the_session(balancer: &Balancer, api: Api, before: usize) -> Result<SessionReport> {
    let sessions: Vec<_> = balancer.sessions().into_iter().filter(|s| s.api == api).collect();
    ensure!(sessions.len() == before + 1, "{api:?} sessions through the balancer: {sessions:?}");
    Ok(sessions[before].clone())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn latest_flow_behind_a_conflicting_skewed_balancer() -> Result<()> {
    let stack = Stack::main()?;
    let balancer = Balancer::start(&stack.synapse).await?;
    assert_clock_ahead(&balancer).await?;
    let via = behind(&stack, &balancer);
    let (login, phone, existing) = signed_in_behind(&via, "lbl").await?;
    let new = daemon_session(&via, 120).await?;
    // Lagging from here on: the flow under test is the latest one (the sign-in was 2024).
    balancer.lag();

    // The signed-in daemon grants, showing a latest code for a session on the balancer.
    let granting = existing.client().await?;
    let mut grant =
        granting.start_grant(GrantOptions { protocol: Some("latest".into()), ..quiet_grant() }).await?;
    wait_state(&mut grant, State::QrReady).await?;
    let qr = grant.qr_code("raw").await?;
    match LoginQr::parse(&qr)? {
        LoginQr::Msc4388 { base_url, .. } => {
            ensure!(base_url.trim_end_matches('/') == balancer.url().as_str().trim_end_matches('/'))
        }
        other => anyhow::bail!("not a latest code: {other:?}"),
    }

    let joining = new.client().await?;
    let mut login_flow =
        joining.start_login(LoginOptions { qr_code: Some(qr), ..Default::default() }).await?;
    wait_state(&mut login_flow, State::ShowingCheckCode).await?;
    let code = login_flow.check_code_to_show().await?;
    wait_state(&mut grant, State::WaitingForCheckCode).await?;
    grant.check_code(code).await?;
    let (granted, signed_in) = tokio::join!(consent_and_finish(&stack, grant, &login), login_flow.result());
    let (granted, signed_in) = (granted?, signed_in?);
    assert_eq!(granted.device_id, signed_in.device_id, "both daemons name the same new device");

    let (user, device) = stack.whoami(&daemon_access_token(&new)?).await?;
    assert_eq!((user.as_str(), device.as_str()), (signed_in.user_id.as_str(), signed_in.device_id.as_str()));
    assert_cross_signed(&stack.observer(&login).await?, &signed_in.device_id).await?;
    assert_seen_verified(&phone, &signed_in.device_id).await?;

    // Each daemon met a made-up 409 on every message it wrote, and wrote it again.
    let seen = the_session(&balancer, Api::Latest, 0)?;
    ensure!(seen.writes.scanner >= 3 && seen.writes.shower >= 3, "{seen:?}");
    assert_eq!(seen.conflicts, seen.writes, "the first write of each message was refused");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v2024_flow_behind_a_conflicting_skewed_balancer() -> Result<()> {
    let stack = Stack::main()?;
    let balancer = Balancer::start(&stack.synapse).await?;
    let via = behind(&stack, &balancer);
    balancer.lag();
    // The sign-in is a 2024 flow through the lagging balancer already: the daemon shows the code.
    let (login, phone, session) = signed_in_behind(&via, "lb24").await?;
    let sign_in = the_session(&balancer, Api::V2024, 0)?;
    ensure!(sign_in.conflicts.shower > 0 && sign_in.conflicts.scanner == 0, "{sign_in:?}");

    // The daemon grants, showing a 2024 code; a matrix-sdk new device scans it.
    let linkd = session.client().await?;
    let laptop = matrix_sdk::Client::builder().homeserver_url(via.synapse.clone()).build().await?;
    let (flow, peer, code) = grant_scanned_by(&linkd, quiet_grant(), laptop.clone()).await?;
    match LoginQr::parse(&flow.qr_code("raw").await?)? {
        LoginQr::V2024 { rendezvous_url, .. } => {
            ensure!(rendezvous_url.starts_with(balancer.url().as_str()), "the session is on the balancer")
        }
        other => anyhow::bail!("not a 2024 code: {other:?}"),
    }
    flow.check_code(code).await?;
    consent_and_finish(&stack, flow, &login).await?;
    tokio::time::timeout(Duration::from_secs(60), peer.finish())
        .await??
        .map_err(|e| anyhow!("new device: {e}"))?;
    let who = laptop.whoami().await?;
    assert_eq!(who.user_id.as_str(), stack.user_id(&login));
    peers::assert_verified_new_device(&laptop).await?;
    assert_seen_verified(&phone, who.device_id.as_ref().map(|d| d.as_str()).unwrap_or_default()).await?;

    // The daemon met a made-up 412 on every message it wrote; matrix-sdk's writes (it does not
    // retry) went through the balancer untouched.
    let seen = the_session(&balancer, Api::V2024, 1)?;
    ensure!(seen.writes.scanner >= 2 && seen.writes.shower >= 2, "{seen:?}");
    assert_eq!(seen.conflicts.shower, seen.writes.shower, "{seen:?}");
    assert_eq!(seen.conflicts.scanner, 0, "{seen:?}");
    Ok(())
}
