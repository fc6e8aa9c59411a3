//! Several flows at once on one daemon (private bus, real daemon, mock homeserver): grants side by
//! side from many connections within `limits.max_flows` and `limits.max_flows_per_caller`, each
//! with its own QR code, each cancelled cleanly; a login refused while they run.

use std::time::{Duration, Instant};

use anyhow::Result;
use futures_util::future::try_join_all;
use matrix_linkd_client::{ClientError, LoginOptions, State};
use matrix_linkd_tests::api::errors;
use matrix_linkd_tests::{
    Session, error_name, homeserver::MockHomeserver, quiet_grant, sign_in_daemon, test_config, wait_state,
};

/// 10 connections × 2 grants = 20 flows, all at `QrReady` with 20 distinct codes; a third grant on
/// any connection is `Busy`, and so is a login; every flow cancels cleanly and frees its slot.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_grants_from_ten_connections_within_the_limits() -> Result<()> {
    let (hs, session) = signed_in_with_limits(20, 2).await?;

    let mut callers = Vec::new();
    for _ in 0..10 {
        callers.push(session.client().await?);
    }
    let started = Instant::now();
    let starts = callers.iter().flat_map(|c| [c, c]).map(|c| async move {
        let mut flow = c.start_grant(quiet_grant()).await?;
        wait_state(&mut flow, State::QrReady).await?;
        anyhow::Ok(flow)
    });
    let flows = try_join_all(starts).await?;
    let all_ready = started.elapsed();
    assert_eq!(flows.len(), 20);
    let mut codes = Vec::new();
    for flow in &flows {
        codes.push(flow.qr_code("raw").await?);
    }
    codes.sort();
    codes.dedup();
    assert_eq!(codes.len(), 20, "each flow shows its own QR code");
    println!("20 grants at QrReady in {} ms", all_ready.as_millis());

    // The per-caller limit, then the global one (from a fresh connection).
    for c in &callers {
        assert_eq!(error_name(c.start_grant(quiet_grant()).await.map(|f| f.path().clone())), errors::BUSY);
    }
    let fresh = session.client().await?;
    assert_eq!(error_name(fresh.start_grant(quiet_grant()).await.map(|f| f.path().clone())), errors::BUSY);
    // A login runs alone: refused while grants run.
    let login = fresh.start_login(LoginOptions::default()).await.map(|f| f.path().clone());
    assert_eq!(error_name(login), errors::BUSY);

    for flow in &flows {
        flow.cancel().await?;
    }
    for flow in flows {
        assert!(matches!(
            tokio::time::timeout(Duration::from_secs(20), flow.result()).await?,
            Err(ClientError::Cancelled)
        ));
    }
    // Every slot is free again and every rendezvous session deleted.
    let mut again = fresh.start_grant(quiet_grant()).await?;
    wait_state(&mut again, State::QrReady).await?;
    again.cancel().await?;
    let deadline = Instant::now() + Duration::from_secs(10);
    while hs.open_rendezvous_sessions() > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(hs.open_rendezvous_sessions(), 0, "every rendezvous session was deleted");
    Ok(())
}

/// A flow's slot is free by the time its owner has the `Response`: a client that starts its next
/// flow on the answer is not refused `Busy` (one slot, twenty flows in a row).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_slot_is_free_when_the_response_arrives() -> Result<()> {
    let (_hs, session) = signed_in_with_limits(1, 1).await?;
    let linkd = session.client().await?;
    for n in 0..20 {
        let mut flow =
            linkd.start_grant(quiet_grant()).await.map_err(|e| anyhow::anyhow!("grant {n}: {e}"))?;
        wait_state(&mut flow, State::QrReady).await?;
        flow.cancel().await?;
        let result = tokio::time::timeout(Duration::from_secs(20), flow.result()).await?;
        assert!(matches!(result, Err(ClientError::Cancelled)), "{result:?}");
    }
    Ok(())
}

/// A daemon on a private bus, signed in against a mock homeserver, with these `[limits]`.
async fn signed_in_with_limits(max_flows: usize, per_caller: usize) -> Result<(MockHomeserver, Session)> {
    let hs = MockHomeserver::start().await;
    let mut session = Session::start().await?;
    let limits = format!("[limits]\nmax_flows = {max_flows}\nmax_flows_per_caller = {per_caller}\n");
    session.write_config(&format!("{}{limits}", test_config(&hs.uri(), 120)))?;
    session.start_daemon(&[]).await?;
    let alice = hs.existing_device("ALICEDEV").await;
    sign_in_daemon(&session, &hs, &alice).await?;
    Ok((hs, session))
}
