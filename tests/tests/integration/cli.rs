//! The `matrix-link` CLI against the real daemon on a private bus.

use std::{process::Stdio, time::Duration};

use anyhow::{Result, anyhow};
use matrix_linkd_tests::{
    Session, api::errors, bin_dir, homeserver::MockHomeserver, peers, signed_in_setup, test_config,
};
use tokio::io::{AsyncBufReadExt, BufReader};

fn cli(session: &Session) -> std::process::Command {
    session.command(bin_dir().join("matrix-link"))
}

/// `matrix-link ARGS` running in the background, its standard output read line by line.
fn spawn_cli(
    session: &Session,
    args: &[&str],
) -> Result<(tokio::process::Child, tokio::io::Lines<BufReader<tokio::process::ChildStdout>>)> {
    let mut child = tokio::process::Command::from(cli(session))
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()?;
    let lines = BufReader::new(child.stdout.take().expect("piped")).lines();
    Ok((child, lines))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_and_input_errors() -> Result<()> {
    let hs = MockHomeserver::start().await;
    let mut session = Session::start().await?;
    // No daemon yet: a clear error, not a hang.
    let out = cli(&session).arg("status").output()?;
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("matrix-link:"), "{out:?}");

    session.write_config(&test_config(&hs.uri(), 60))?;
    session.start_daemon(&[]).await?;
    session.wait_session_state(matrix_linkd_client::SessionState::SignedOut, Duration::from_secs(20)).await?;
    let out = cli(&session).arg("status").output()?;
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("signed out") && text.contains("login"), "{text}");

    let out = cli(&session).args(["login", "--qr-hex", "zz"]).output()?;
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("bad hex"), "{out:?}");
    let out = cli(&session).args(["login", "--qr-hex", "4d4154524958"]).output()?;
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains(errors::INVALID_QR_CODE), "{out:?}");
    let out = cli(&session).args(["grant"]).output()?;
    assert!(String::from_utf8_lossy(&out.stderr).contains(errors::NOT_SIGNED_IN), "{out:?}");
    let out = cli(&session).args(["login", "--qr-image", "/nonexistent.png"]).output()?;
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot read the image"), "{out:?}");
    for sub in ["status", "login", "grant", "sign-out"] {
        let out = cli(&session).args([sub, "--help"]).output()?;
        assert!(
            out.status.success() && String::from_utf8_lossy(&out.stdout).contains("Usage"),
            "{sub} --help"
        );
    }
    Ok(())
}

/// `matrix-link grant --qr-hex …`: the daemon scans the new device's QR; the CLI shows the code the
/// user types on the new device, approves (--yes), and reports the result.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grant_from_the_cli() -> Result<()> {
    let s = signed_in_setup(60).await?;
    let new_device = s.hs.new_device().await;
    let mut peer = peers::login_generating(new_device.clone());
    let qr = peer.qr().await?;
    let (mut child, mut lines) =
        spawn_cli(&s.session, &["grant", "--yes", "--no-open", "--no-notify", "--qr-hex", &hex::encode(qr)])?;
    let mut transcript = String::new();
    let mut planned = false;
    while let Some(line) = tokio::time::timeout(Duration::from_secs(30), lines.next_line()).await?? {
        transcript.push_str(&line);
        transcript.push('\n');
        if let Some(code) = line.strip_prefix("Enter this code on the other device: ") {
            peer.code_sender().await?.send(code.trim().parse()?).await?;
        }
        if line.starts_with("A new device asks to sign in") && !planned {
            s.hs.plan_login();
            planned = true;
        }
    }
    let status = child.wait().await?;
    assert!(status.success(), "matrix-link failed:\n{transcript}");
    assert!(transcript.contains("Done:"), "{transcript}");
    peer.finish().await?.map_err(|e| anyhow!("new device: {e}"))?;
    peers::assert_verified_new_device(&new_device).await
}

/// `matrix-link grant` with the daemon showing the QR code: when a code expires unscanned the CLI
/// shows the new one the daemon made.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_redraws_a_replaced_qr_code() -> Result<()> {
    let s = signed_in_setup(60).await?;
    s.hs.set_rendezvous_ttl(2);
    let (mut child, mut lines) = spawn_cli(&s.session, &["grant", "--yes", "--no-open", "--no-notify"])?;
    let (mut transcript, mut replaced) = (String::new(), 0);
    while replaced < 2 {
        let line = tokio::time::timeout(Duration::from_secs(15), lines.next_line())
            .await
            .map_err(|_| anyhow!("no new QR code:\n{transcript}"))??
            .ok_or_else(|| anyhow!("matrix-link ended:\n{transcript}"))?;
        replaced += usize::from(line.starts_with("The QR code expired before it was scanned"));
        transcript.push_str(&line);
        transcript.push('\n');
    }
    assert!(transcript.starts_with("Scan this QR code with the other device:"), "{transcript}");
    // Each code is drawn in full (terminal blocks), three in all.
    let drawn = transcript.lines().filter(|l| l.contains('█') || l.contains('▀') || l.contains('▄')).count();
    assert!(drawn >= 3 * 10, "{transcript}");
    child.kill().await?;
    Ok(())
}

/// `matrix-link delegate` writes the session to a private file and prints no token;
/// `delegations` lists the device; `revoke` of another device names the error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delegate_list_and_revoke() -> Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    let s = signed_in_setup(60).await?;
    let token = s.hs.plan_login();
    let dir = tempfile::tempdir()?;
    let out_file = dir.path().join("session.json");
    let out = cli(&s.session)
        .args(["delegate", "--name", "CLI bot", "--approve", "--share-secrets", "--output"])
        .arg(&out_file)
        .output()?;
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{stdout} {stderr}");
    assert!(!stdout.contains(&token) && !stderr.contains(&token), "no token printed");
    assert_eq!(std::fs::metadata(&out_file)?.permissions().mode() & 0o777, 0o600);
    let doc: serde_json::Value = serde_json::from_slice(&std::fs::read(&out_file)?)?;
    assert_eq!(doc["access_token"], token.as_str());
    let device_id = doc["device_id"].as_str().ok_or_else(|| anyhow!("no device_id"))?.to_owned();
    assert!(stdout.contains(&device_id), "{stdout}");

    s.hs.device_exists(&device_id);
    let out = cli(&s.session).arg("delegations").output()?;
    let listed = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && listed.contains(&device_id) && listed.contains("CLI bot"), "{listed}");
    let out = cli(&s.session).args(["revoke", "NOTOURS"]).output()?;
    assert!(
        !out.status.success() && String::from_utf8_lossy(&out.stderr).contains(errors::DEVICE_NOT_FOUND),
        "{out:?}"
    );
    Ok(())
}
