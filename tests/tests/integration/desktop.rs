//! Desktop glue with real parts: dunst (under Xvfb) as the notification server, and a portal
//! stand-in that records OpenURI calls. The daemon must work the same without either.

use std::time::{Duration, Instant};

use anyhow::Result;
use matrix_linkd_client::{GrantOptions, State};
use matrix_linkd_tests::{
    Notifications, Session, fds_added, grant_scanned_by, open_fds, peers, portal::OpenUriPortal,
    signed_in_setup, wait_state,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn approve_from_the_notification_and_open_the_uri_through_the_portal() -> Result<()> {
    let mut s = signed_in_setup(60).await?;
    std::fs::write(
        s.session.config_path(),
        matrix_linkd_tests::test_config(&s.hs.uri(), 60).replace("open_uri = false", "open_uri = true"),
    )?;
    s.session.stop_daemon(s.daemon)?;
    let d = s.session.start_daemon(&[]).await?;
    s.session
        .wait_session_state(matrix_linkd_client::SessionState::SignedIn, Duration::from_secs(20))
        .await?;
    let notifications = s.session.start_notifications()?;
    let (portal, _portal_conn) = OpenUriPortal::serve(&s.session).await?;

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
    let peer_device_id = flow.proxy().peer_device_id().await?;
    assert!(!peer_device_id.is_empty());
    s.hs.plan_login();
    wait_displayed(&s.session, 1).await;

    // A click on the notification's body is no consent. With no `default` action dunst offers the
    // actions in its menu instead; the user closes the menu without picking one.
    notifications.pick_in_menu(None)?;
    s.session.dunstctl(&["action", "0"])?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let state = flow.proxy().state().await.unwrap_or(0);
    assert_eq!(state, 5, "a click on the notification body decided the flow");
    let menu = wait_menu(&notifications).await;
    assert!(menu.contains("#Approve (") && menu.contains(",approve]"), "no Approve in the menu: {menu}");
    assert!(menu.contains("#Deny (") && menu.contains(",deny]"), "no Deny in the menu: {menu}");
    assert!(!menu.contains(",default]"), "the body click is an action: {menu}");

    // The user picks "Approve" in dunst's menu of actions.
    notifications.pick_in_menu(Some("#Approve ("))?;
    s.session.dunstctl(&["context"])?;
    tokio::time::timeout(Duration::from_secs(60), flow.result()).await??;
    peer.finish().await?.map_err(|e| anyhow::anyhow!("{e}"))?;
    peers::assert_verified_new_device(&new_device).await?;

    // The portal opened the consent page; the notifications named no secret.
    let deadline = Instant::now() + Duration::from_secs(10);
    while portal.opened().is_empty() {
        assert!(Instant::now() < deadline, "the portal was not asked to open the URI");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(portal.opened().as_slice(), std::slice::from_ref(&uri));
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
    assert!(!notified.contains("string \"default\""), "a default action was offered: {notified}");
    // The approval notification names the device that asks and the host of the consent page.
    let host = url::Url::parse(&uri)?.host_str().expect("the URI has a host").to_owned();
    assert!(
        notified.lines().any(|l| l.contains(&peer_device_id) && l.contains(&host)),
        "the notification names neither the device {peer_device_id} nor the host {host}: {notified}"
    );
    // The user code travels in the URI's query.
    let user_code = url::Url::parse(&uri)?
        .query_pairs()
        .find(|(k, _)| k == "code")
        .map(|(_, v)| v.into_owned())
        .expect("the mock's URI carries the user code");
    let code_re = regex::Regex::new(&format!(r"\b0?{code}\b"))?;
    for text in notified.lines().filter(|l| l.trim_start().starts_with("string \"")) {
        // The host may be an IP address, whose digits are no check code.
        let without_host = text.replace(&host, "");
        assert!(
            !text.contains(&uri) && !text.contains(&user_code) && !code_re.is_match(&without_host),
            "a secret was shown: {text}"
        );
    }
    assert!(s.session.daemon_running(d));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closing_the_notification_leaves_the_choice_to_the_owner() -> Result<()> {
    let s = signed_in_setup(60).await?;
    let _notifications = s.session.start_notifications()?;
    let (flow, peer) = grant_at_consent(&s).await?;
    // Closing the notification is not a choice, so the owner still decides: Cancel from D-Bus
    // while the notification is up.
    wait_displayed(&s.session, 1).await;
    s.session.dunstctl(&["close-all"])?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(flow.proxy().state().await?, 5, "closing the notification must not decide");
    flow.cancel().await?;
    assert!(matches!(flow.result().await, Err(matrix_linkd_client::ClientError::Cancelled)));
    peer.task.abort();
    Ok(())
}

/// Two grants wait for consent at once: each approval notification names its own new device, and
/// an Approve picked on one notification lets in that flow's device only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_grants_each_notification_approves_its_own_device() -> Result<()> {
    let mut s = signed_in_setup(60).await?;
    let notifications = s.session.start_notifications()?;
    let monitor = s.session.monitor_notifications().await?;
    let (first, first_peer) = grant_at_consent(&s).await?;
    let (second, second_peer) = grant_at_consent(&s).await?;
    let ids = [first.proxy().peer_device_id().await?, second.proxy().peer_device_id().await?];
    assert_ne!(ids[0], ids[1]);
    wait_displayed(&s.session, 2).await;
    s.hs.plan_login();
    s.hs.plan_login();

    // Each approval notification names one device, its own. (dunst has shown both; the monitor
    // may still be reading the second `Notify` reply.)
    let dunst = s.session.owner_of(NOTIFICATIONS_IFACE).await?;
    let deadline = Instant::now() + Duration::from_secs(10);
    let approvals = loop {
        let approvals: Vec<_> =
            monitor.notifications().into_iter().filter(|n| n.summary == "Sign in a new device?").collect();
        if approvals.len() >= 2 || Instant::now() > deadline {
            break approvals;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let bodies: Vec<&str> = approvals.iter().map(|n| n.body.as_str()).collect();
    assert_eq!(bodies.len(), 2, "not two approval notifications: {bodies:?}");
    for id in &ids {
        let naming: Vec<_> = bodies.iter().filter(|b| b.contains(id.as_str())).collect();
        assert_eq!(naming.len(), 1, "device {id} is named by {} notifications: {bodies:?}", naming.len());
        assert!(!ids.iter().all(|i| naming[0].contains(i.as_str())), "one notification names both devices");
    }

    // The user picks Approve on one notification: one flow goes on, the other still waits.
    notifications.pick_in_menu(Some("#Approve ("))?;
    s.session.dunstctl(&["context"])?;
    let (mut flows, mut peers) = (vec![first, second], vec![first_peer, second_peer]);
    let deadline = Instant::now() + Duration::from_secs(30);
    let approved = loop {
        let mut states = Vec::new();
        for f in &flows {
            states.push(f.proxy().state().await.unwrap_or(0));
        }
        if let Some(i) = states.iter().position(|&st| st != 5) {
            tokio::time::sleep(Duration::from_millis(500)).await;
            assert_eq!(flows[1 - i].proxy().state().await?, 5, "one Approve decided both flows");
            break i;
        }
        assert!(Instant::now() < deadline, "no flow was approved from its notification");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let (flow, peer) = (flows.remove(approved), peers.remove(approved));
    tokio::time::timeout(Duration::from_secs(60), flow.result()).await??;
    peer.finish().await?.map_err(|e| anyhow::anyhow!("{e}"))?;

    // Then the other from its own notification, the only one left with an Approve once the
    // approved flow's has closed (the "signed in" notification that follows has no actions).
    let approved_notification = approvals
        .iter()
        .find(|n| n.body.contains(ids[approved].as_str()))
        .map(|n| n.id)
        .expect("each device is named by one notification");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !monitor.closed_signal(&dunst, approved_notification) {
        assert!(Instant::now() < deadline, "the approved flow's notification is still up");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    notifications.pick_in_menu(Some("#Approve ("))?;
    s.session.dunstctl(&["context"])?;
    let (flow, peer) = (flows.remove(0), peers.remove(0));
    tokio::time::timeout(Duration::from_secs(60), flow.result()).await??;
    peer.finish().await?.map_err(|e| anyhow::anyhow!("{e}"))?;
    assert!(s.session.daemon_running(s.daemon));
    Ok(())
}

/// A grant (notifications on, no URI opened) whose new device waits for our user's consent.
async fn grant_at_consent(
    s: &matrix_linkd_tests::SignedInSetup,
) -> Result<(
    matrix_linkd_client::Flow,
    peers::Peer<matrix_sdk::authentication::oauth::qrcode::QRCodeLoginError>,
)> {
    let linkd = s.session.client().await?;
    let options = GrantOptions { open_uri: false, ..Default::default() };
    let (mut flow, peer, code) = grant_scanned_by(&linkd, options, s.hs.new_device().await).await?;
    flow.check_code(code).await?;
    wait_state(&mut flow, State::WaitingForApproval).await?;
    Ok((flow, peer))
}

/// Waits until dunst displays `n` notifications.
async fn wait_displayed(session: &Session, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let shown = session.dunstctl(&["count", "displayed"]).unwrap_or_default();
        if shown.trim() == n.to_string() {
            return;
        }
        assert!(Instant::now() < deadline, "dunst displays {} notifications, not {n}", shown.trim());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits for dunst to offer its menu of actions; returns its lines.
async fn wait_menu(notifications: &Notifications) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let menu = notifications.last_menu();
        if !menu.is_empty() {
            return menu;
        }
        assert!(Instant::now() < deadline, "dunst offered no menu");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

const NOTIFICATIONS_PATH: &str = "/org/freedesktop/Notifications";
const NOTIFICATIONS_IFACE: &str = "org.freedesktop.Notifications";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_action_invoked_does_not_approve() -> Result<()> {
    let s = signed_in_setup(60).await?;
    let notifications = s.session.start_notifications()?;
    let (flow, peer) = grant_at_consent(&s).await?;
    wait_displayed(&s.session, 1).await;

    // Another program on the session bus "clicks" every notification id it can guess, then
    // "closes" them: none of it comes from the notification server. (Paced, so that a listener
    // that reads slowly still sees each one.)
    let forger = s.session.connect().await?;
    for id in 0..=50u32 {
        for key in ["default", "approve"] {
            forger
                .emit_signal(None::<()>, NOTIFICATIONS_PATH, NOTIFICATIONS_IFACE, "ActionInvoked", &(id, key))
                .await?;
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    for id in 0..=50u32 {
        forger
            .emit_signal(
                None::<()>,
                NOTIFICATIONS_PATH,
                NOTIFICATIONS_IFACE,
                "NotificationClosed",
                &(id, 2u32),
            )
            .await?;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let state = flow.proxy().state().await.unwrap_or(0);
    assert_eq!(state, 5, "a forged ActionInvoked decided the flow");

    // The real notification still counts: the user picks "Deny" in dunst's menu.
    notifications.pick_in_menu(Some("#Deny ("))?;
    s.session.dunstctl(&["context"])?;
    let result = tokio::time::timeout(Duration::from_secs(30), flow.result()).await?;
    assert!(matches!(result, Err(matrix_linkd_client::ClientError::Cancelled)), "{result:?}");
    peer.task.abort();
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelled_flows_leak_no_connections_or_fds() -> Result<()> {
    const FLOWS: usize = 20;
    let s = signed_in_setup(60).await?;
    let _notifications = s.session.start_notifications()?;
    let monitor = s.session.monitor_notifications().await?;
    let dunst = s.session.owner_of(NOTIFICATIONS_IFACE).await?;
    let pid = s.session.daemon_pid(s.daemon);
    let linkd = s.session.client().await?;

    // Flow 0 warms the daemon up: the first grant opens what every later one shares (the crypto
    // store kept for the secrets bundle, two pooled connections: four fds; the HTTP clients'
    // keep-alive connections). The baseline is taken after it, so what is counted is what each
    // further flow leaves behind.
    let mut before = None;
    let mut left_open = Vec::new();
    for n in 0..=FLOWS {
        let options = GrantOptions { open_uri: false, ..Default::default() };
        let (mut flow, peer, code) = grant_scanned_by(&linkd, options, s.hs.new_device().await).await?;
        flow.check_code(code).await?;
        wait_state(&mut flow, State::WaitingForApproval).await?;
        // The approval notification is up.
        let deadline = Instant::now() + Duration::from_secs(10);
        let id = loop {
            let approvals: Vec<_> = monitor
                .notifications()
                .into_iter()
                .filter(|n| n.summary == "Sign in a new device?")
                .collect();
            if approvals.len() > n {
                break approvals[n].id;
            }
            assert!(Instant::now() < deadline, "flow {n}: no approval notification");
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        flow.cancel().await?;
        let result = tokio::time::timeout(Duration::from_secs(30), flow.result()).await?;
        assert!(matches!(result, Err(matrix_linkd_client::ClientError::Cancelled)), "{result:?}");
        peer.task.abort();
        // The flow is over: its notification goes.
        let deadline = Instant::now() + Duration::from_secs(10);
        while !(monitor.close_called(id) && monitor.closed_signal(&dunst, id)) && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        if !(monitor.close_called(id) && monitor.closed_signal(&dunst, id)) {
            left_open.push(id);
        }
        if n == 0 {
            tokio::time::sleep(Duration::from_millis(500)).await;
            before = Some((open_fds(pid)?, s.session.bus_connections_of(pid).await?));
        }
    }
    let (fds_before, connections_before) = before.expect("taken after flow 0");

    // Clean-up may lag the Response a little. The HTTP clients' pools keep a few idle keep-alive
    // connections (how many depends on timing), and the kept store's pool may open its second
    // connection; a leak per flow would show as 20 or more.
    const SLACK: usize = FLOWS / 4;
    let deadline = Instant::now() + Duration::from_secs(5);
    let (fds_after, connections_after) = loop {
        let now = (open_fds(pid)?, s.session.bus_connections_of(pid).await?);
        if (now.0.len() <= fds_before.len() + SLACK && now.1 == connections_before)
            || Instant::now() > deadline
        {
            break now;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let added = fds_added(&fds_before, &fds_after);
    eprintln!(
        "after {FLOWS} more cancelled flows: fds {} -> {} (added: {added:?}), bus connections \
         {connections_before} -> {connections_after}",
        fds_before.len(),
        fds_after.len(),
    );
    assert!(
        fds_after.len() <= fds_before.len() + SLACK && connections_after == connections_before,
        "the daemon leaks: fds {} -> {} (added: {added:?}), bus connections {connections_before} -> \
         {connections_after} after {FLOWS} cancelled flows",
        fds_before.len(),
        fds_after.len(),
    );
    assert!(left_open.is_empty(), "approval notifications left open after their flow ended: {left_open:?}");
    Ok(())
}
