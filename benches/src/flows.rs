//! The full flows, the daemon's and matrix-sdk's, each with the modelled person. Every flow ends
//! when both devices are done.

use anyhow::{Result, anyhow};
use matrix_linkd_client::{Flow, GrantOptions, Linkd, LoginOptions, State};
use matrix_linkd_tests::{Session, peers, wait_state};

use crate::{
    common::{APPROVE, CONSENT, Cx, Recorder, Run, SCAN, TYPE, blocking},
    hops::{Hop, hops},
};

fn quiet_grant(protocol: Option<&str>) -> GrantOptions {
    GrantOptions {
        notify: false,
        open_uri: false,
        protocol: protocol.map(str::to_owned),
        ..Default::default()
    }
}

async fn new_client(cx: &Cx<'_>) -> Result<matrix_sdk::Client> {
    Ok(matrix_sdk::Client::builder().homeserver_url(cx.stack.synapse.clone()).build().await?)
}

/// The daemon is the new device and shows the QR code; the matrix-sdk phone (2024: it accepts the
/// protocol before its user consents) scans it. Ends signed in.
pub async fn daemon_login(cx: &Cx<'_>, run: usize, linkd: &Linkd, phone: &matrix_sdk::Client) -> Result<Run> {
    let mut r = Recorder::start(cx, run);
    let mut flow = linkd
        .start_login(LoginOptions { homeserver: Some(cx.stack.synapse.to_string()), ..Default::default() })
        .await?;
    wait_state(&mut flow, State::QrReady).await?;
    let qr = flow.qr_code("raw").await?;
    r.lap();
    r.person.step(SCAN).await;
    let mut peer = peers::grant_scanning(phone.clone(), qr);
    let code = peer.shown_code().await?;
    wait_state(&mut flow, State::WaitingForCheckCode).await?;
    r.lap();
    r.person.step(TYPE).await;
    flow.check_code(code).await?;
    let uri = peer.verification_uri().await?;
    r.lap();
    r.person.step(CONSENT).await;
    blocking(|| cx.stack.approve_uri(&uri, cx.login, false))?;
    r.consented();
    let (done, phone_done) = tokio::join!(flow.result(), peer.finish());
    done?;
    phone_done?.map_err(|e| anyhow!("phone: {e}"))?;
    r.finish()
}

/// Baseline for login: a matrix-sdk new device shows the QR code, the matrix-sdk phone scans it.
pub async fn sdk_login(cx: &Cx<'_>, run: usize, phone: &matrix_sdk::Client) -> Result<Run> {
    let mut r = Recorder::start(cx, run);
    let mut new = peers::login_generating(new_client(cx).await?);
    let qr = new.qr().await?;
    r.lap();
    r.person.step(SCAN).await;
    let mut existing = peers::grant_scanning(phone.clone(), qr);
    let code = existing.shown_code().await?;
    let sender = new.code_sender().await?;
    r.lap();
    r.person.step(TYPE).await;
    sender.send(code).await?;
    let uri = existing.verification_uri().await?;
    r.lap();
    r.person.step(CONSENT).await;
    blocking(|| cx.stack.approve_uri(&uri, cx.login, false))?;
    r.consented();
    let (new_done, existing_done) = tokio::join!(new.finish(), existing.finish());
    new_done?.map_err(|e| anyhow!("new device: {e}"))?;
    existing_done?.map_err(|e| anyhow!("phone: {e}"))?;
    r.finish()
}

/// The daemon is the existing device and shows the QR code; a matrix-sdk new device scans it.
/// The daemon's user presses Approve (which opens the consent page), then consents there.
pub async fn daemon_grant(cx: &Cx<'_>, run: usize, linkd: &Linkd) -> Result<Run> {
    let mut r = Recorder::start(cx, run);
    let mut flow = linkd.start_grant(quiet_grant(None)).await?;
    wait_state(&mut flow, State::QrReady).await?;
    let qr = flow.qr_code("raw").await?;
    r.lap();
    r.person.step(SCAN).await;
    let mut peer = peers::login_scanning(new_client(cx).await?, qr);
    let code = peer.shown_code().await?;
    grant_user(cx, &mut r, &mut flow, code).await?;
    let (done, new_done) = tokio::join!(flow.result(), peer.finish());
    done?;
    new_done?.map_err(|e| anyhow!("new device: {e}"))?;
    r.finish()
}

/// The daemon's user on its grant `flow`, once the new device shows `code`: types it, presses
/// Approve (which opens the consent page), then consents there.
async fn grant_user(cx: &Cx<'_>, r: &mut Recorder<'_>, flow: &mut Flow, code: u8) -> Result<()> {
    wait_state(flow, State::WaitingForCheckCode).await?;
    r.lap();
    r.person.step(TYPE).await;
    flow.check_code(code).await?;
    wait_state(flow, State::WaitingForApproval).await?;
    let uri = flow.verification_uri().await?;
    r.lap();
    r.person.step(APPROVE).await;
    flow.approve().await?;
    r.person.step(CONSENT).await;
    blocking(|| cx.stack.approve_uri(&uri, cx.login, false))?;
    r.consented();
    Ok(())
}

/// Baseline for grant: a matrix-sdk existing device shows the QR code, a matrix-sdk new device
/// scans it. matrix-sdk's existing device has no Approve step: its user only consents.
pub async fn sdk_grant(cx: &Cx<'_>, run: usize, phone: &matrix_sdk::Client) -> Result<Run> {
    let mut r = Recorder::start(cx, run);
    let mut existing = peers::grant_generating(phone.clone());
    let qr = existing.qr().await?;
    r.lap();
    r.person.step(SCAN).await;
    let mut new = peers::login_scanning(new_client(cx).await?, qr);
    let code = new.shown_code().await?;
    let sender = existing.code_sender().await?;
    r.lap();
    r.person.step(TYPE).await;
    sender.send(code).await?;
    let uri = existing.verification_uri().await?;
    r.lap();
    r.person.step(CONSENT).await;
    blocking(|| cx.stack.approve_uri(&uri, cx.login, false))?;
    r.consented();
    let (existing_done, new_done) = tokio::join!(existing.finish(), new.finish());
    existing_done?.map_err(|e| anyhow!("existing device: {e}"))?;
    new_done?.map_err(|e| anyhow!("new device: {e}"))?;
    r.finish()
}

/// Our engine on both sides: daemon `a` (signed in) grants and shows the QR code, daemon `b` scans
/// it and signs in. `a`'s user types the code `b` shows, presses Approve, then consents on the OAuth
/// page. Returns the run and the reactions per hop; signs `b` out again.
pub async fn daemons_grant(
    cx: &Cx<'_>,
    run: usize,
    a: &Session,
    b: &Session,
    protocol: &str,
) -> Result<(Run, Vec<Hop>)> {
    let (linkd_a, linkd_b) = (a.client().await?, b.client().await?);
    let (from_a, from_b) = (a.log(0).len(), b.log(0).len());
    let mut r = Recorder::start(cx, run);
    let mut grant = linkd_a.start_grant(quiet_grant(Some(protocol))).await?;
    wait_state(&mut grant, State::QrReady).await?;
    let qr = grant.qr_code("raw").await?;
    r.lap();
    r.person.step(SCAN).await;
    let mut joining = linkd_b.start_login(LoginOptions { qr_code: Some(qr), ..Default::default() }).await?;
    wait_state(&mut joining, State::ShowingCheckCode).await?;
    let code = joining.check_code_to_show().await?;
    grant_user(cx, &mut r, &mut grant, code).await?;
    let (granted, joined) = tokio::join!(grant.result(), joining.result());
    granted?;
    joined?;
    let run = r.finish()?;
    let hops = hops(&a.log(0)[from_a..], &b.log(0)[from_b..]);
    linkd_b.sign_out().await?;
    Ok((run, hops))
}
