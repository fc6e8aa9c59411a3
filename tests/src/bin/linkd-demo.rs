//! `make demo`: the daemon on a private session bus (with a real gnome-keyring) against the local
//! homeserver stack. A scripted "phone" (matrix-sdk) signs the daemon in by QR, then the daemon
//! signs in a scripted "laptop" (matrix-sdk) by QR; every step and QR code is printed, and the
//! laptop is checked to be cross-signed and verified at the end.
//!
//! Expects a running stack (stack/start.sh); `make demo` starts and stops one.

use std::{process::ExitCode, time::Instant};

use anyhow::{Result, anyhow};
use matrix_linkd_client::{GrantOptions, LoginOptions, State, api};
use matrix_linkd_tests::{
    peers,
    stack::{Stack, assert_seen_verified, daemon_access_token, daemon_session},
    wait_state,
};

fn step(n: u32, text: &str) {
    println!("\n\x1b[1m[{n}] {text}\x1b[0m");
}

async fn run() -> Result<()> {
    let started = Instant::now();
    let stack = Stack::load(&std::env::var("STACK_NAME").unwrap_or_else(|_| "main".into()))?;
    println!("Homeserver: {}  OAuth server: {}", stack.synapse, stack.oauth);

    step(1, "A phone (matrix-sdk) signs in to a fresh account and sets up cross-signing and key backup");
    let login = Stack::new_login("demo");
    let phone = stack.existing_device(&login).await?;
    println!("    phone: {} device {}", phone.user_id().unwrap(), phone.device_id().unwrap());

    step(2, "matrix-linkd starts on a private session bus with gnome-keyring");
    let session = daemon_session(&stack, 120).await?;
    let linkd = session.client().await?;
    println!("    daemon: {:?}", linkd.status().await?.state);

    step(3, "Login: the daemon shows a QR code, the phone scans it");
    let mut flow = linkd
        .start_login(LoginOptions { homeserver: Some(stack.synapse.to_string()), ..Default::default() })
        .await?;
    wait_state(&mut flow, State::QrReady).await?;
    println!("{}", String::from_utf8_lossy(&flow.qr_code(api::qr_formats::UTF8).await?));
    let mut peer = peers::grant_scanning(phone.clone(), flow.qr_code("raw").await?);
    let code = peer.shown_code().await?;
    println!("    the phone shows the check code {code:02}; the user types it into the daemon (CheckCode)");
    wait_state(&mut flow, State::WaitingForCheckCode).await?;
    flow.check_code(code).await?;
    let uri = peer.verification_uri().await?;
    println!("    the phone opens the OAuth consent page; the user approves there");
    stack.approve_uri(&uri, &login, false)?;
    let me = flow.result().await?;
    peer.finish().await?.map_err(|e| anyhow!("phone: {e}"))?;
    let (_, device) = stack.whoami(&daemon_access_token(&session)?).await?;
    println!(
        "    daemon signed in as {} device {} (token checked with whoami: {device})",
        me.user_id, me.device_id
    );
    assert_seen_verified(&phone, &me.device_id).await?;
    println!("    the phone sees the daemon's device as verified");

    step(4, "Grant: the daemon shows a QR code, a new laptop (matrix-sdk) scans it");
    let mut flow =
        linkd.start_grant(GrantOptions { notify: false, open_uri: false, ..Default::default() }).await?;
    wait_state(&mut flow, State::QrReady).await?;
    println!("{}", String::from_utf8_lossy(&flow.qr_code(api::qr_formats::UTF8).await?));
    let laptop = matrix_sdk::Client::builder().homeserver_url(stack.synapse.clone()).build().await?;
    let mut peer = peers::login_scanning(laptop.clone(), flow.qr_code("raw").await?);
    let code = peer.shown_code().await?;
    println!("    the laptop shows the check code {code:02}; the user types it into the daemon (CheckCode)");
    wait_state(&mut flow, State::WaitingForCheckCode).await?;
    flow.check_code(code).await?;
    wait_state(&mut flow, State::WaitingForApproval).await?;
    println!("    the daemon asks for consent; the user approves (Approve) and confirms on the OAuth page");
    let uri = flow.verification_uri().await?;
    flow.approve().await?;
    stack.approve_uri(&uri, &login, false)?;
    flow.result().await?;
    peer.finish().await?.map_err(|e| anyhow!("laptop: {e}"))?;

    step(5, "Check: the laptop is signed in, holds the cross-signing keys, and is verified");
    let who = laptop.whoami().await?;
    let laptop_device = who.device_id.map(|d| d.to_string()).unwrap_or_default();
    println!("    laptop: {} device {laptop_device}", who.user_id);
    peers::assert_verified_new_device(&laptop).await?;
    assert_seen_verified(&phone, &laptop_device).await?;
    println!("    cross-signing complete, own identity verified, the phone sees it verified");
    println!("\nDemo finished in {:.1} s.", started.elapsed().as_secs_f64());
    Ok(())
}

fn main() -> ExitCode {
    let rt =
        tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    match rt.block_on(run()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("demo failed: {e:#}");
            ExitCode::FAILURE
        }
    }
}
