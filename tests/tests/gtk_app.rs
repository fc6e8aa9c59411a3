//! The GTK app (`matrix-link-gtk`) end to end over the real stack, driven through AT-SPI under
//! Xvfb in a private session (bus, unlocked gnome-keyring, the daemon, a Screenshot/OpenURI
//! portal stand-in), with matrix-js-sdk 43 as the other device:
//!
//! 1. Sign this computer in: the js-sdk device (signed in) shows its QR code in a window of its
//!    own; the app scans it from the screen through the Screenshot portal, shows the check code,
//!    the user consents on the js side's browser page; the app says "signed in".
//! 2. Link a new device: the app shows a QR code; the test reads it off the screen (as the new
//!    device's camera would) and hands it to a new js-sdk device, types the js device's check
//!    code into the app, approves in the app; the consent page opens through the OpenURI portal
//!    and the user consents there; the app says "Device linked".
//!    Then the other way round: a new js device shows its QR code, the app opens a picture of it
//!    (GtkFileChooserNative through a FileChooser portal stand-in), shows the check code, approves.
//!    The daemon stops and starts again: the status page follows it by itself.
//! 3. Sign out, through the confirmation dialog.
//! 4. Sign this computer in showing the QR code; nobody scans it, the app shows the replacement
//!    code by itself after 60 s; Cancel there.
//! 5. A QR code that is no sign-in code, pasted from the clipboard: the `InvalidQrCode` page.
//!
//! Each step's screenshot goes to `target/gtk-artefacts/`, and each step checks the widgets shown.
//!
//! The pages that need no stack (no daemon on the bus, sandboxed apps' answers in the real
//! permission store, the devices of programs and a replaced QR code over the mock homeserver) are
//! tested in `gtk_app/local.rs`.

#[path = "gtk_app/desktop.rs"]
mod desktop;
#[path = "gtk_app/local.rs"]
mod local;
#[path = "gtk_app/portal.rs"]
mod portal;

use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, ensure};
use desktop::{Desktop, shows, shows_prefix};
use matrix_linkd::desktop::qr::{QrFormat, render};
use matrix_linkd_tests::{
    Session,
    jspeer::{JsPeer, Mode, Role},
    stack::Stack,
    workspace_root,
};
use portal::Portal;

/// The `n`th URI opened through the OpenURI portal (the consent page, in the browser).
async fn opened_uri(portal: &Portal, n: usize) -> Result<String> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(u) = portal.seen.lock().unwrap().opened.get(n).cloned() {
            return Ok(u);
        }
        ensure!(Instant::now() < deadline, "no consent page opened through the OpenURI portal");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gtk_app_login_grant_sign_out() -> Result<()> {
    let started = Instant::now();
    let stack = Stack::main()?;
    let login = Stack::new_login("gtk");
    let artefacts = workspace_root().join("target/gtk-artefacts");
    let _ = std::fs::remove_dir_all(&artefacts);

    let mut session = Session::start().await?;
    session.write_config(&format!(
        "homeserver = \"{}\"\nlog_level = \"debug\"\n[timeouts]\nflow = 120\ndevice_creation = 30\n\
         [desktop]\nnotifications = false\nopen_uri = true\n{}",
        stack.synapse,
        matrix_linkd_tests::LOCAL_TEST_SETUP
    ))?;
    session.start_daemon(&[]).await?;
    session.wait_session_state(matrix_linkd_client::SessionState::SignedOut, Duration::from_secs(20)).await?;
    let mut desk = Desktop::start(&session, &artefacts)?;
    let portal = Portal::start(&session.bus_address, &desk.display, artefacts.clone()).await?;
    desk.start_app(&session, &[])?;

    let v = desk.drive(&session, &["wait", "Signed out", "panel"])?;
    ensure!(shows(&v, "push button", "Sign this computer in"), "no sign-in button: {v}");
    ensure!(!shows(&v, "push button", "Link a new device"), "grant offered while signed out: {v}");
    desk.screenshot("signed-out")?;

    // 1. Sign this computer in, scanning the js device's QR code on the screen.
    let mut js = JsPeer::start(&stack, Role::Existing, Mode::Generate, &login)?;
    js.read("ready", Duration::from_secs(60)).await?;
    let qr = js.qr().await?;
    let qr_png = session.dir.path().join("js-qr.png");
    std::fs::write(&qr_png, render(&qr, QrFormat::Png)?)?;
    let other = desk.show_qr_picture(&session, &qr_png, &qr, 660, 80)?;
    desk.drive(&session, &["click", "Sign this computer in"])?;
    let v = desk.drive(&session, &["wait", "Scan a QR code on the screen"])?;
    for b in ["Show a QR code", "Open an image of a QR code…", "Paste a QR code from the clipboard", "Back"]
    {
        ensure!(shows(&v, "push button", b), "no `{b}` button: {v}");
    }
    ensure!(shows(&v, "text", "Homeserver (optional)"), "no homeserver field: {v}");
    ensure!(shows_prefix(&v, "Never scan a code that someone sent you"), "no warning: {v}");
    desk.screenshot("login-choose")?;
    desk.drive(&session, &["click", "Scan a QR code on the screen"])?;
    let v = desk.drive(&session, &["--timeout", "60", "digits"])?;
    let shown: u8 = v["name"].as_str().unwrap_or_default().parse()?;
    ensure!(shows(&v, "label", "Enter this code on the other device"), "check code page: {v}");
    ensure!(shows(&v, "push button", "Cancel"), "no Cancel: {v}");
    desk.screenshot("login-check-code")?;
    desk.close_window(other);
    ensure!(portal.seen.lock().unwrap().screenshots.len() == 1, "the app did not use the Screenshot portal");
    assert_eq!(shown, js.check_code().await?, "the app shows another check code than the js device");
    let uri = js.read("verification_uri", Duration::from_secs(60)).await?;
    stack.approve_uri(&uri, &login, false)?;
    let v = desk.drive(&session, &["--timeout", "90", "wait", "This computer is signed in"])?;
    ensure!(shows(&v, "label", &format!("Signed in as {}.", stack.user_id(&login))), "done page: {v}");
    desk.screenshot("login-done")?;
    let js_result = js.result().await?;
    ensure!(js_result["ok"] == true, "js existing device failed: {js_result}\n{}", js.log());
    desk.drive(&session, &["click", "Done"])?;
    let v = desk.drive(&session, &["wait", "Signed in", "panel"])?;
    ensure!(
        shows(&v, "label", &format!("As {} on {}", stack.user_id(&login), stack.synapse)),
        "status page does not say who: {v}"
    );
    ensure!(shows(&v, "push button", "Link a new device") && shows(&v, "push button", "Sign out"), "{v}");
    desk.screenshot("signed-in")?;

    // 2. Link a new device: the app shows the QR code, a new js device scans it off the screen.
    desk.drive(&session, &["click", "Link a new device"])?;
    desk.drive(&session, &["click", "Show a QR code"])?;
    let v = desk.drive(&session, &["--timeout", "60", "wait", "Scan this QR code with the new device"])?;
    ensure!(
        shows(&v, "image", "QR code") && shows_prefix(&v, "Never scan a code that someone sent you"),
        "{v}"
    );
    let scanned = desk.screen_qr("grant-qr", |_| true).context("the QR code on the screen")?;
    let mut js = JsPeer::start(&stack, Role::New, Mode::Scan, &login)?;
    js.write("qr.hex", &hex::encode(&scanned))?;
    let code = js.check_code().await?;
    let v = desk.drive(&session, &["--timeout", "60", "wait", "Enter the check code"])?;
    ensure!(shows(&v, "text", "Check code") && shows(&v, "push button", "Continue"), "{v}");
    desk.screenshot("grant-enter-code")?;
    desk.drive(&session, &["enter", "Check code", &format!("{code:02}")])?;
    desk.drive(&session, &["click", "Continue"])?;
    let v = desk.drive(&session, &["--timeout", "60", "wait", "Allow the new device?"])?;
    for b in ["Approve", "Deny"] {
        ensure!(shows(&v, "push button", b), "no `{b}` on the consent page: {v}");
    }
    let host = format!("{}:{}", stack.oauth.host_str().unwrap_or_default(), stack.oauth.port().unwrap_or(80));
    ensure!(shows(&v, "label", &host), "the consent page's host {host} is not shown: {v}");
    ensure!(shows(&v, "label", "New device"), "{v}");
    desk.screenshot("grant-consent")?;
    desk.drive(&session, &["click", "Approve"])?;
    // The daemon opens the consent page through the OpenURI portal: the user consents there.
    let consent_uri = opened_uri(&portal, 0).await?;
    ensure!(consent_uri.contains(&host), "consent page {consent_uri} is not on {host}");
    stack.approve_uri(&consent_uri, &login, false)?;
    let v = desk.drive(&session, &["--timeout", "90", "wait", "Device linked"])?;
    desk.screenshot("grant-done")?;
    let js_result = js.result().await?;
    ensure!(js_result["ok"] == true, "js new device failed: {js_result}\n{}", js.log());
    let device = js_result["device_id"].as_str().unwrap_or_default();
    ensure!(
        shows(&v, "label", &format!("The new device {device} is signed in as {}.", stack.user_id(&login))),
        "done page does not name the device {device}: {v}"
    );

    // 2b. Link a new device the other way round: the new js device shows its QR code, the app
    // reads it from an image file (the FileChooser portal answers the file).
    let mut js = JsPeer::start(&stack, Role::New, Mode::Generate, &login)?;
    let qr = js.qr().await?;
    let qr_file = session.dir.path().join("new-device-qr.png");
    std::fs::write(&qr_file, render(&qr, QrFormat::Png)?)?;
    portal.seen.lock().unwrap().next_file = Some(qr_file);
    desk.drive(&session, &["click", "Done"])?;
    desk.drive(&session, &["click", "Link a new device"])?;
    desk.drive(&session, &["click", "Open an image of a QR code…"])?;
    let v = desk.drive(&session, &["--timeout", "60", "digits"])?;
    ensure!(portal.seen.lock().unwrap().files_asked == 1, "the app did not ask the FileChooser portal");
    let shown: u8 = v["name"].as_str().unwrap_or_default().parse()?;
    assert_eq!(shown, js.check_code().await?, "the app shows another check code than the new js device");
    desk.screenshot("grant-file-check-code")?;
    desk.drive(&session, &["--timeout", "60", "wait", "Allow the new device?"])?;
    desk.drive(&session, &["click", "Approve"])?;
    let consent_uri = opened_uri(&portal, 1).await?;
    stack.approve_uri(&consent_uri, &login, false)?;
    let v = desk.drive(&session, &["--timeout", "90", "wait", "Device linked", "panel"])?;
    let js_result = js.result().await?;
    ensure!(js_result["ok"] == true, "js new device (file) failed: {js_result}\n{}", js.log());
    let device = js_result["device_id"].as_str().unwrap_or_default();
    ensure!(
        shows(&v, "label", &format!("The new device {device} is signed in as {}.", stack.user_id(&login))),
        "done page does not name the device {device}: {v}"
    );
    desk.screenshot("grant-file-done")?;

    // 2c. The status page follows the daemon by itself: it says so when the service stops, and
    // shows the restored session when it comes back.
    desk.drive(&session, &["click", "Done"])?;
    desk.drive(&session, &["wait", "Signed in", "panel"])?;
    session.stop_daemon(session.daemons_started() - 1)?;
    let v =
        desk.drive(&session, &["--timeout", "30", "wait", "The link service is not available", "panel"])?;
    ensure!(!shows(&v, "push button", "Link a new device"), "grant offered with the service gone: {v}");
    desk.screenshot("service-gone")?;
    session.start_daemon(&[]).await?;
    let v = desk.drive(&session, &["--timeout", "30", "wait", "Signed in", "panel"])?;
    ensure!(
        shows(&v, "label", &format!("As {} on {}", stack.user_id(&login), stack.synapse)),
        "status page after the restart does not say who: {v}"
    );

    // 3. Sign out, confirmed in the dialog.
    desk.drive(&session, &["click", "Sign out"])?;
    let v = desk.drive(&session, &["wait", "Sign out?"])?;
    ensure!(shows(&v, "push button", "Cancel"), "{v}");
    desk.screenshot("sign-out-confirm")?;
    desk.drive(&session, &["click", "Sign Out"])?;
    let v = desk.drive(&session, &["--timeout", "30", "wait", "Signed out", "panel"])?;
    ensure!(shows(&v, "push button", "Sign this computer in"), "{v}");
    desk.screenshot("signed-out-again")?;

    // 4. Sign this computer in, showing the QR code this time; the user cancels.
    desk.drive(&session, &["click", "Sign this computer in"])?;
    desk.drive(&session, &["click", "Show a QR code"])?;
    let v =
        desk.drive(&session, &["--timeout", "60", "wait", "Scan this QR code with your signed-in device"])?;
    ensure!(shows(&v, "image", "QR code") && shows(&v, "push button", "Cancel"), "{v}");
    let first = desk.screen_qr("login-qr", |_| true)?;
    // Nobody scans: Synapse forgets the rendezvous session after 60 s, the daemon replaces the
    // code (QrCodeSerial 2) and the app shows the new one by itself.
    let v = desk.drive(
        &session,
        &["--timeout", "100", "wait", "The previous code expired unscanned: this is a new one."],
    )?;
    ensure!(shows(&v, "image", "QR code"), "{v}");
    desk.screen_qr("login-qr-replaced", |shown| shown != first)
        .context("the app still shows the expired QR code")?;
    desk.drive(&session, &["click", "Cancel"])?;
    let v = desk.drive(&session, &["--timeout", "30", "wait", "Signed out", "panel"])?;
    ensure!(shows(&v, "push button", "Sign this computer in"), "not back on the status page: {v}");

    // 5. A QR code that is no sign-in code, pasted from the clipboard: the named error's page.
    let foreign = session.dir.path().join("foreign-qr.png");
    std::fs::write(&foreign, render(b"https://example.org/not-a-matrix-login", QrFormat::Png)?)?;
    desk.copy_image(&session, &foreign)?;
    desk.drive(&session, &["click", "Sign this computer in"])?;
    desk.drive(&session, &["click", "Paste a QR code from the clipboard"])?;
    let v = desk.drive(&session, &["--timeout", "30", "wait", "That is not a sign-in QR code", "panel"])?;
    ensure!(shows(&v, "push button", "Back"), "{v}");
    desk.screenshot("error-invalid-qr")?;
    desk.drive(&session, &["click", "Back"])?;
    desk.drive(&session, &["--timeout", "30", "wait", "Signed out", "panel"])?;
    ensure!(desk.app_running(), "the app exited");
    ensure!(session.kept_session().is_none(), "the session is still in the keyring after signing out");
    eprintln!(
        "gtk app test: {:.1} s; screenshots in {}",
        started.elapsed().as_secs_f64(),
        artefacts.display()
    );
    Ok(())
}
