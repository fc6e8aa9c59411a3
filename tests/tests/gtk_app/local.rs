//! The app's pages that need no stack, driven the same way (Xvfb, AT-SPI) in a private session:
//!
//! - No daemon on the bus: the status page says in plain words that matrix-linkd is not installed
//!   or not running and how to start it, never the bus's own error text.
//! - A QR code replaced after it expired unscanned: the page says so, and nothing covers Cancel.
//!
//! Screenshots go to `target/gtk-pages-artefacts/<test>/`.

use std::path::PathBuf;

use anyhow::{Result, bail, ensure};
use matrix_linkd_tests::{Session, SessionOptions, signed_in_setup, workspace_root};
use serde_json::Value;

use crate::desktop::{Desktop, shows};

fn artefacts(test: &str) -> PathBuf {
    let dir = workspace_root().join("target/gtk-pages-artefacts").join(test);
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

/// Whether any shown widget's name contains `part`.
fn shows_part(v: &Value, part: &str) -> bool {
    v["visible"].as_array().is_some_and(|a| a.iter().any(|w| w[1].as_str().is_some_and(|n| n.contains(part))))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gtk_app_says_plainly_that_the_daemon_is_not_running() -> Result<()> {
    let artefacts = artefacts("no-daemon");
    let session = Session::start_with(SessionOptions { keyring: false, activation: false }).await?;
    let mut desk = Desktop::start(&session, &artefacts)?;
    desk.start_app(&session, &[])?;

    // Nothing serves matrix-linkd's name: plain words and how to start it, not the bus's text.
    let v = desk.drive(&session, &["wait", "The link service is not available", "panel"])?;
    ensure!(
        shows(
            &v,
            "label",
            "matrix-linkd is not installed or not running. To start it, run “systemctl --user start matrix-linkd”."
        ),
        "not said plainly: {v}"
    );
    for raw in ["org.freedesktop", ".service files", "ServiceUnknown", "D-Bus"] {
        ensure!(!shows_part(&v, raw), "the bus's own error text ({raw}) is shown: {v}");
    }
    ensure!(shows(&v, "push button", "Refresh"), "{v}");
    desk.screenshot("not-running")?;

    ensure!(desk.app_running(), "the app exited");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gtk_app_replaced_qr_code_leaves_cancel_uncovered() -> Result<()> {
    let artefacts = artefacts("qr-replaced");
    let s = signed_in_setup(120).await?;
    // Every code expires after 2 s unscanned: the daemon replaces it, again and again.
    s.hs.set_rendezvous_ttl(2);
    let mut desk = Desktop::start(&s.session, &artefacts)?;
    desk.start_app(&s.session, &[])?;
    desk.drive(&s.session, &["wait", "Signed in", "panel"])?;
    desk.drive(&s.session, &["click", "Link a new device"])?;
    desk.drive(&s.session, &["click", "Show a QR code"])?;
    desk.drive(&s.session, &["--timeout", "30", "wait", "Scan this QR code with the new device"])?;
    let v = desk.drive(
        &s.session,
        &["--timeout", "30", "wait", "The previous code expired unscanned: this is a new one."],
    )?;
    ensure!(shows(&v, "image", "QR code"), "{v}");
    desk.screenshot("qr-replaced")?;
    // Nothing (a toast, say) lies over Cancel.
    let v = desk.drive(&s.session, &["uncovered", "Cancel"])?;
    if v["extents"].as_array().is_none_or(|e| e.len() != 4) {
        bail!("no extents of Cancel: {v}");
    }
    desk.drive(&s.session, &["click", "Cancel"])?;
    desk.drive(&s.session, &["--timeout", "30", "wait", "Signed in", "panel"])?;
    ensure!(desk.app_running(), "the app exited");
    Ok(())
}
