//! The app's pages that need no stack, driven the same way (Xvfb, AT-SPI) in a private session:
//!
//! - No daemon on the bus: the status page says in plain words that matrix-linkd is not installed
//!   or not running and how to start it, never the bus's own error text; the answers to sandboxed
//!   apps say the permission store is not running. Then the real `xdg-permission-store` starts
//!   on the bus with answers in the daemon's table: the page lists them per app, and Reset
//!   deletes one app's answers from every entry of the store.
//! - The real daemon signed in on the mock homeserver with a program's device (a delegation): the
//!   devices of programs are listed, and Revoke (confirmed in its dialog) ends one and says so.
//! - A QR code replaced after it expired unscanned: the page says so, and nothing covers Cancel.
//!
//! Screenshots go to `target/gtk-pages-artefacts/<test>/`.

use std::{
    collections::HashMap,
    path::PathBuf,
    process::{Child, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail, ensure};
use matrix_linkd_client::{DelegateOptions, State, api::permissions};
use matrix_linkd_tests::{Session, SessionOptions, signed_in_setup, wait_state, workspace_root};
use serde_json::Value;
use zbus::zvariant::OwnedValue;

use crate::desktop::{Desktop, shows, shows_prefix};

fn artefacts(test: &str) -> PathBuf {
    let dir = workspace_root().join("target/gtk-pages-artefacts").join(test);
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

/// Whether any shown widget's name contains `part`.
fn shows_part(v: &Value, part: &str) -> bool {
    v["visible"].as_array().is_some_and(|a| a.iter().any(|w| w[1].as_str().is_some_and(|n| n.contains(part))))
}

/// The real `xdg-permission-store` (Debian package `xdg-desktop-portal`) on the session's bus.
struct PermissionStore(Child);

impl PermissionStore {
    async fn start(session: &Session) -> Result<Self> {
        let bin = "/usr/libexec/xdg-permission-store";
        let child = session
            .command(bin)
            .arg("--replace")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("xdg-permission-store (apt-get install xdg-desktop-portal)")?;
        let store = PermissionStore(child);
        let conn = session.connect().await?;
        let dbus = zbus::fdo::DBusProxy::new(&conn).await?;
        let deadline = Instant::now() + Duration::from_secs(10);
        while !dbus.name_has_owner(permissions::STORE_BUS_NAME.try_into()?).await? {
            ensure!(Instant::now() < deadline, "xdg-permission-store did not take its name");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(store)
    }
}

impl Drop for PermissionStore {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

async fn store_call<B>(conn: &zbus::Connection, method: &str, body: &B) -> Result<zbus::Message>
where
    B: serde::Serialize + zbus::zvariant::DynamicType,
{
    Ok(conn
        .call_method(
            Some(permissions::STORE_BUS_NAME),
            permissions::STORE_PATH,
            Some(permissions::STORE_INTERFACE),
            method,
            body,
        )
        .await?)
}

/// The apps with an answer in the entry `id` of the daemon's table (none when there is no entry).
async fn apps_in(conn: &zbus::Connection, id: &str) -> Result<Vec<String>> {
    match store_call(conn, "Lookup", &(permissions::TABLE, id)).await {
        Ok(reply) => {
            let (entry, _): (HashMap<String, Vec<String>>, OwnedValue) = reply.body().deserialize()?;
            let mut apps: Vec<String> = entry.into_keys().collect();
            apps.sort();
            Ok(apps)
        }
        Err(e) if e.to_string().contains("NotFound") => Ok(Vec::new()),
        Err(e) => Err(e),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gtk_app_without_the_daemon_and_the_answers_to_sandboxed_apps() -> Result<()> {
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
    ensure!(!shows(&v, "push button", "Devices of programs"), "devices of programs offered: {v}");
    desk.screenshot("not-running")?;

    // No permission store either.
    desk.drive(&session, &["click", "Answers to sandboxed apps"])?;
    let v = desk.drive(&session, &["wait-prefix", "Remembered answers are not available"])?;
    ensure!(shows_part(&v, "the xdg-desktop-portal permission store is not running"), "{v}");
    desk.screenshot("answers-not-available")?;

    // The store comes, with answers to two apps.
    let _store = PermissionStore::start(&session).await?;
    let conn = session.connect().await?;
    for (id, app, answer) in [
        (permissions::DELEGATE, "org.example.App", permissions::YES),
        (permissions::SHARE_SECRETS, "org.example.App", permissions::NO),
        (permissions::LOGIN, "org.example.Other", permissions::YES),
    ] {
        store_call(&conn, "SetPermission", &(permissions::TABLE, true, id, app, vec![answer])).await?;
    }
    desk.drive(&session, &["click", "Refresh"])?;
    let v = desk.drive(&session, &["wait", "org.example.App", "label"])?;
    ensure!(
        shows(&v, "label", "Get a Matrix device of its own: Allowed\nReceive the encryption keys: Denied"),
        "org.example.App's answers: {v}"
    );
    ensure!(shows(&v, "label", "org.example.Other"), "{v}");
    ensure!(shows(&v, "label", "Sign this computer in: Allowed"), "org.example.Other's answer: {v}");
    ensure!(shows(&v, "push button", "Reset org.example.Other"), "{v}");
    desk.screenshot("answers")?;

    desk.drive(&session, &["click", "Reset org.example.App"])?;
    let v = desk.drive(&session, &["wait", "Reset: org.example.App will be asked again next time."])?;
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut v = v;
    while shows(&v, "label", "org.example.App") {
        ensure!(Instant::now() < deadline, "org.example.App is still listed after Reset: {v}");
        tokio::time::sleep(Duration::from_millis(200)).await;
        v = desk.drive(&session, &["visible"])?;
    }
    ensure!(shows(&v, "label", "org.example.Other"), "the other app went too: {v}");
    desk.screenshot("answers-reset")?;
    for id in permissions::ALL {
        let apps = apps_in(&conn, id).await?;
        ensure!(!apps.iter().any(|a| a == "org.example.App"), "{id} still holds org.example.App: {apps:?}");
    }
    assert_eq!(apps_in(&conn, permissions::LOGIN).await?, ["org.example.Other"]);

    // Reset the last one: the page says there is nothing left.
    desk.drive(&session, &["click", "Reset org.example.Other"])?;
    let v = desk.drive(&session, &["--timeout", "10", "wait-prefix", "No sandboxed app has asked yet"])?;
    ensure!(!shows(&v, "label", "org.example.Other") && !shows_part(&v, "Reset org.example"), "{v}");
    ensure!(desk.app_running(), "the app exited");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gtk_app_lists_and_revokes_devices_of_programs() -> Result<()> {
    let artefacts = artefacts("devices-of-programs");
    let s = signed_in_setup(120).await?;
    // A program gets a device of its own (a name with a character that markup would eat).
    let linkd = s.session.client().await?;
    let options = DelegateOptions {
        client_name: "Notes & bot".into(),
        share_secrets: true,
        notify: Some(false),
        open_uri: Some(false),
        ..Default::default()
    };
    let mut flow = linkd.start_delegation(options).await?;
    wait_state(&mut flow, State::WaitingForApproval).await?;
    let device_id = flow.proxy().peer_device_id().await?;
    s.hs.plan_login_as(&device_id);
    flow.approve().await?;
    wait_state(&mut flow, State::SyncingSecrets).await?;
    flow.take_session().await?;
    tokio::time::timeout(Duration::from_secs(10), flow.result()).await??;
    s.hs.device_exists(&device_id);

    let mut desk = Desktop::start(&s.session, &artefacts)?;
    desk.start_app(&s.session, &[])?;
    desk.drive(&s.session, &["wait", "Signed in", "panel"])?;
    desk.drive(&s.session, &["click", "Devices of programs"])?;
    let v = desk.drive(&s.session, &["wait", "Notes & bot", "label"])?;
    let device_line = format!("Device “Notes & bot” ({device_id})\nCreated 20");
    ensure!(shows_prefix(&v, &device_line), "the device's line `{device_line}…`: {v}");
    ensure!(shows(&v, "push button", &format!("Revoke {device_id}")), "{v}");
    desk.screenshot("devices-of-programs")?;
    let log = std::fs::read_to_string(artefacts.join("app.log"))?;
    ensure!(!log.contains("markup"), "a name was read as markup:\n{log}");

    // Revoke, confirmed: the daemon still holds a valid token and revokes it.
    desk.drive(&s.session, &["click", &format!("Revoke {device_id}")])?;
    let v = desk.drive(&s.session, &["wait", "Revoke this device?"])?;
    ensure!(shows(&v, "push button", "Cancel"), "{v}");
    desk.screenshot("revoke-confirm")?;
    s.hs.plan_login_as(&device_id);
    desk.drive(&s.session, &["click", "Revoke"])?;
    // The OAuth server ends the session: the homeserver forgets the device.
    tokio::time::sleep(Duration::from_millis(500)).await;
    s.hs.device_gone(&device_id);
    let revoked = format!("Revoked: the device {device_id} is signed out of your account.");
    desk.drive(&s.session, &["--timeout", "30", "wait", &revoked])?;
    let v =
        desk.drive(&s.session, &["--timeout", "10", "wait-prefix", "No program has a device of its own"])?;
    ensure!(!shows(&v, "label", "Notes & bot"), "the revoked device is still listed: {v}");
    desk.screenshot("devices-of-programs-revoked")?;
    ensure!(!s.hs.requests_to("revoke").await.is_empty(), "no RFC 7009 request");
    ensure!(linkd.list_delegations().await?.is_empty(), "the daemon still lists the device");
    desk.drive(&s.session, &["click", "Back"])?;
    desk.drive(&s.session, &["wait", "Signed in", "panel"])?;
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
