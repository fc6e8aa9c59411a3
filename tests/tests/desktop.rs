//! Desktop glue with real parts: dunst (under Xvfb) as the notification server, and a portal
//! stand-in that records OpenURI calls. The daemon must work the same without either.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use anyhow::Result;
use matrix_linkd_client::{GrantOptions, State};
use matrix_linkd_tests::{grant_scanned_by, peers, signed_in_setup, wait_state};
use zbus::zvariant::{OwnedObjectPath, OwnedValue};

/// Records the URIs it is asked to open, like xdg-desktop-portal's OpenURI would open them.
#[derive(Clone, Default)]
struct FakeOpenUri {
    opened: Arc<Mutex<Vec<String>>>,
}

#[zbus::interface(name = "org.freedesktop.portal.OpenURI")]
impl FakeOpenUri {
    #[zbus(name = "OpenURI")]
    fn open_uri(
        &self,
        _parent_window: &str,
        uri: &str,
        _options: HashMap<String, OwnedValue>,
    ) -> OwnedObjectPath {
        self.opened.lock().unwrap().push(uri.to_owned());
        OwnedObjectPath::try_from("/org/freedesktop/portal/desktop/request/1_1/t").unwrap()
    }

    #[zbus(property, name = "version")]
    fn version(&self) -> u32 {
        4
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn approve_from_the_notification_and_open_the_uri_through_the_portal() -> Result<()> {
    let mut s = signed_in_setup(60).await?;
    std::fs::write(
        s.session.config_path(),
        matrix_linkd_tests::test_config(&s.hs.uri(), 60).replace("open_uri = false", "open_uri = true"),
    )?;
    s.session.stop_daemon(s.daemon)?;
    let d = s.session.start_daemon(&[]).await?;
    s.session.wait_session_state(3, Duration::from_secs(20)).await?;
    let _notifications = s.session.start_notifications()?;
    let portal = FakeOpenUri::default();
    let _portal_conn = zbus::connection::Builder::address(s.session.bus_address.as_str())?
        .serve_at("/org/freedesktop/portal/desktop", portal.clone())?
        .name("org.freedesktop.portal.Desktop")?
        .build()
        .await?;

    let monitor_log = s.session.dir.path().join("notify-monitor.log");
    let mut monitor = s
        .session
        .command("dbus-monitor")
        .args(["--session", "interface='org.freedesktop.Notifications'"])
        .stdout(std::fs::File::create(&monitor_log)?)
        .stderr(std::process::Stdio::null())
        .spawn()?;

    let linkd = s.session.client().await?;
    let new_device = s.hs.new_device().await;
    let (mut flow, peer, code) =
        grant_scanned_by(&linkd, GrantOptions::default(), new_device.clone()).await?;
    flow.check_code(code).await?;
    wait_state(&mut flow, State::WaitingForApproval).await?;
    let uri = flow.verification_uri().await?;
    s.hs.plan_login();

    // The user clicks "Approve" in the notification (dunst's default action).
    let deadline = Instant::now() + Duration::from_secs(10);
    while s.session.dunstctl(&["count", "displayed"])?.trim() == "0" {
        assert!(Instant::now() < deadline, "no approval notification");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    s.session.dunstctl(&["action", "0"])?;
    tokio::time::timeout(Duration::from_secs(60), flow.result()).await??;
    peer.finish().await?.map_err(|e| anyhow::anyhow!("{e}"))?;
    peers::assert_verified_new_device(&new_device).await?;

    // The portal opened the consent page; the notifications named no secret.
    let deadline = Instant::now() + Duration::from_secs(10);
    while portal.opened.lock().unwrap().is_empty() {
        assert!(Instant::now() < deadline, "the portal was not asked to open the URI");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(portal.opened.lock().unwrap().as_slice(), std::slice::from_ref(&uri));
    let deadline = Instant::now() + Duration::from_secs(10);
    let notified = loop {
        let log = std::fs::read_to_string(&monitor_log)?;
        if log.contains("New device signed in") || Instant::now() > deadline {
            break log;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    monitor.kill().ok();
    monitor.wait().ok();
    assert!(notified.contains("Sign in a new device?"), "no approval notification: {notified}");
    assert!(notified.contains("\"Approve\"") && notified.contains("\"deny\""), "no buttons: {notified}");
    assert!(notified.contains("New device signed in"), "no result notification: {notified}");
    assert!(notified.contains("ActionInvoked"), "the click was not seen: {notified}");
    let code_re = regex::Regex::new(&format!(r"\b0?{code}\b"))?;
    for text in notified.lines().filter(|l| l.trim_start().starts_with("string \"")) {
        assert!(!text.contains(&uri) && !code_re.is_match(text), "a secret was shown: {text}");
    }
    assert!(s.session.daemon_running(d));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closing_the_notification_leaves_the_choice_to_the_owner() -> Result<()> {
    let s = signed_in_setup(60).await?;
    let _notifications = s.session.start_notifications()?;
    let linkd = s.session.client().await?;
    let options = GrantOptions { open_uri: false, ..Default::default() };
    let (mut flow, peer, code) = grant_scanned_by(&linkd, options, s.hs.new_device().await).await?;
    flow.check_code(code).await?;
    wait_state(&mut flow, State::WaitingForApproval).await?;
    // dunstctl can only click `default`; closing the notification is not a choice, so the owner
    // still decides: Cancel from D-Bus while the notification is up.
    let deadline = Instant::now() + Duration::from_secs(10);
    while s.session.dunstctl(&["count", "displayed"])?.trim() == "0" {
        assert!(Instant::now() < deadline, "no approval notification");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    s.session.dunstctl(&["close-all"])?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(flow.proxy().state().await?, 5, "closing the notification must not decide");
    flow.cancel().await?;
    assert!(matches!(flow.result().await, Err(matrix_linkd_client::ClientError::Cancelled)));
    peer.task.abort();
    Ok(())
}
