//! The daemon as the bus sees it: D-Bus activation, the introspected interfaces against the
//! committed XML contract, and no secret in log lines or broadcast traffic.

use std::{process::Stdio, time::Duration};

use anyhow::{Result, bail};
use base64::Engine as _;
use matrix_linkd_client::{GrantOptions, SessionState, State, api};
use matrix_linkd_tests::{
    BUS_NAME, MANAGER_PATH, Session, SessionOptions, homeserver::MockHomeserver, peers, sign_in_daemon,
    signed_out_setup, test_config, wait_state, workspace_root,
};
use zbus::{fdo::DBusProxy, names::BusName};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dbus_activation_starts_the_daemon() -> Result<()> {
    let session = Session::start_with(SessionOptions { keyring: true, activation: true }).await?;
    let conn = session.connect().await?;
    let dbus = DBusProxy::new(&conn).await?;
    let name = BusName::try_from(BUS_NAME)?;
    assert!(!dbus.name_has_owner(name.clone()).await?);
    assert!(dbus.list_activatable_names().await?.iter().any(|n| n.as_str() == BUS_NAME));
    // Any call to the name starts the daemon through the activation file's Exec=. The first one
    // here reads `SessionState`: the answer is the settled state (no kept session: `SignedOut`),
    // not `Unknown` or `Restoring` while the daemon looks in the keyring.
    let state = matrix_linkd_tests::read_session_state(&conn).await?;
    assert_eq!(state, SessionState::SignedOut as u32, "the activating call's answer");
    let linkd = matrix_linkd_client::Linkd::with_connection(conn.clone()).await?;
    assert_eq!(linkd.manager().version().await?, 1);
    assert!(dbus.name_has_owner(name.clone()).await?);
    session.wait_session_state(SessionState::SignedOut, Duration::from_secs(20)).await?;
    let pid = dbus.get_connection_unix_process_id(name).await?;
    std::process::Command::new("kill").arg(pid.to_string()).status()?;
    Ok(())
}

/// A comparable description of one interface: members, signatures, directions, annotations.
fn describe(xml: &str, iface: &str) -> Result<Vec<String>> {
    let node = zbus_xml::Node::from_reader(xml.as_bytes())?;
    let Some(i) = node.interfaces().iter().find(|i| i.name().as_str() == iface) else {
        bail!("interface {iface} missing")
    };
    let mut out = Vec::new();
    let ann = |a: &[zbus_xml::Annotation]| {
        a.iter().map(|a| format!("@{}={}", a.name(), a.value())).collect::<Vec<_>>().join(",")
    };
    for a in i.annotations() {
        out.push(format!("annotation {}={}", a.name(), a.value()));
    }
    for m in i.methods() {
        let args: Vec<_> = m
            .args()
            .iter()
            .map(|a| format!("{}:{:?}:{:?}", a.name().unwrap_or("-"), a.ty(), a.direction()))
            .collect();
        out.push(format!("method {}({}) {}", m.name(), args.join(", "), ann(m.annotations())));
    }
    for s in i.signals() {
        let args: Vec<_> =
            s.args().iter().map(|a| format!("{}:{:?}", a.name().unwrap_or("-"), a.ty())).collect();
        out.push(format!("signal {}({}) {}", s.name(), args.join(", "), ann(s.annotations())));
    }
    for p in i.properties() {
        out.push(format!("property {} {:?} {:?} {}", p.name(), p.ty(), p.access(), ann(p.annotations())));
    }
    out.sort();
    Ok(out)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn introspection_matches_the_xml_contract() -> Result<()> {
    let (hs, session, _) = signed_out_setup(60).await?;
    let conn = session.connect().await?;
    let introspect = |path: String| {
        let conn = conn.clone();
        async move {
            let proxy = zbus::fdo::IntrospectableProxy::builder(&conn)
                .destination(BUS_NAME)?
                .path(path)?
                .build()
                .await?;
            anyhow::Ok(proxy.introspect().await?)
        }
    };
    let manager_xml = introspect(MANAGER_PATH.to_owned()).await?;
    let linkd = matrix_linkd_client::Linkd::with_connection(conn.clone()).await?;
    let flow = linkd
        .start_login(matrix_linkd_client::LoginOptions { homeserver: Some(hs.uri()), ..Default::default() })
        .await?;
    let flow_xml = introspect(flow.path().to_string()).await?;
    flow.cancel().await?;

    for (iface, live) in [(api::MANAGER_INTERFACE, &manager_xml), (api::FLOW_INTERFACE, &flow_xml)] {
        let file = std::fs::read_to_string(workspace_root().join(format!("dbus/{iface}.xml")))?;
        let want = describe(&file, iface)?;
        let got = describe(live, iface)?;
        assert_eq!(got, want, "{iface}: the running daemon differs from dbus/{iface}.xml");
    }
    Ok(())
}

/// Runs a complete login and a complete grant with trace logging and a monitor on every signal,
/// then looks for each secret of those flows in both.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_secret_in_logs_or_signals() -> Result<()> {
    let hs = MockHomeserver::start().await;
    let mut session = Session::start().await?;
    session.write_config(&test_config(&hs.uri(), 60))?;
    let monitor_log = session.dir.path().join("monitor.log");
    let mut monitor = session
        .command("dbus-monitor")
        .args(["--session", "type='signal'"])
        .stdout(std::fs::File::create(&monitor_log)?)
        .stderr(Stdio::null())
        .spawn()?;
    let d = session.start_daemon(&["--log-level", "trace"]).await?;
    let alice = hs.existing_device("ALICEDEV").await;

    let mut secrets: Vec<String> = Vec::new();
    let mut check_codes = Vec::new();
    sign_in_daemon(&session, &hs, &alice).await?;

    let linkd = session.client().await?;
    let mut flow =
        linkd.start_grant(GrantOptions { notify: false, open_uri: false, ..Default::default() }).await?;
    wait_state(&mut flow, State::QrReady).await?;
    let qr = flow.qr_code("raw").await?;
    let new_device = hs.new_device().await;
    let mut peer = peers::login_scanning(new_device.clone(), qr.clone());
    let code = peer.shown_code().await?;
    check_codes.push(code);
    wait_state(&mut flow, State::WaitingForCheckCode).await?;
    flow.check_code(code).await?;
    wait_state(&mut flow, State::WaitingForApproval).await?;
    secrets.push(flow.verification_uri().await?);
    hs.plan_login();
    flow.approve().await?;
    flow.result().await?;
    peer.finish().await?.map_err(|e| anyhow::anyhow!("{e}"))?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    monitor.kill().ok();
    monitor.wait().ok();
    assert!(session.daemon_running(d));

    // The secrets of both flows.
    let qr_data = matrix_sdk::authentication::oauth::qrcode::QrCodeData::from_bytes(&qr)?;
    if let matrix_sdk::authentication::oauth::qrcode::QrCodeIntentData::Msc4108 { rendezvous_url, .. } =
        qr_data.intent_data()
    {
        secrets.push(rendezvous_url.to_string());
    }
    secrets.push(hex::encode(&qr));
    secrets.push(qr.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(" "));
    secrets.push(base64::engine::general_purpose::STANDARD_NO_PAD.encode(&qr));
    secrets.push(qr_data.public_key().to_base64());
    secrets.extend(hs.user_codes());
    for token in hs.issued_tokens() {
        secrets.push(format!("REFRESH_{token}"));
        secrets.push(token);
    }
    assert!(secrets.len() >= 8, "{secrets:?}");

    let log = session.log(d);
    let monitor = std::fs::read_to_string(&monitor_log)?;
    assert!(log.contains("TRACE") || log.contains("DEBUG"), "the daemon did not log at trace level");
    assert!(monitor.contains("PropertiesChanged"), "the monitor saw no signal");
    for secret in &secrets {
        assert!(!log.contains(secret.as_str()), "secret found in the daemon log: {secret}");
        assert!(!monitor.contains(secret.as_str()), "secret found in a signal: {secret}");
    }
    // Check codes are two digits: look for them next to anything that names a code.
    let code_re = regex::Regex::new(r"(?i)(check|code)[^\n]{0,40}?\b(\d{1,2})\b")?;
    for line in log.lines() {
        for cap in code_re.captures_iter(line) {
            let n: u8 = cap[2].parse()?;
            assert!(!check_codes.contains(&n), "check code in the log: {line}");
        }
    }
    // No byte-valued property (CheckCodeToShow is the only one) ever travels in a signal.
    assert!(!monitor.contains("variant             byte"), "a byte value was broadcast");
    Ok(())
}

/// The user unit and the activation file are valid for systemd and D-Bus, and say what they must.
#[test]
fn systemd_unit_and_activation_file() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let bindir = matrix_linkd_tests::bin_dir().display().to_string();
    let unit = std::fs::read_to_string(workspace_root().join("systemd/matrix-linkd.service.in"))?
        .replace("@bindir@", &bindir);
    let bus_name = format!("BusName={BUS_NAME}");
    for line in ["Type=dbus", bus_name.as_str(), "NoNewPrivileges=yes"] {
        assert!(unit.lines().any(|l| l == line), "the unit lacks `{line}`");
    }
    // A user namespace of its own would hide every caller's root: no sandbox could be told apart.
    assert!(!unit.lines().any(|l| l.starts_with("PrivateUsers=")), "the daemon must see its callers");
    assert!(!unit.contains("PrivateNetwork=yes"), "the daemon needs the network");
    let path = dir.path().join("matrix-linkd.service");
    std::fs::write(&path, &unit)?;
    let runtime = dir.path().join("runtime");
    std::fs::create_dir(&runtime)?;
    let out = std::process::Command::new("systemd-analyze")
        .args(["--user", "verify"])
        .arg(&path)
        .env("XDG_RUNTIME_DIR", &runtime)
        .output()?;
    let complaints = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && complaints.trim().is_empty(), "systemd-analyze verify: {complaints}");

    let activation =
        std::fs::read_to_string(workspace_root().join(format!("systemd/{BUS_NAME}.service.in")))?
            .replace("@bindir@", &bindir);
    assert!(activation.contains(&format!("Name={BUS_NAME}")));
    assert!(activation.contains("SystemdService=matrix-linkd.service"));
    let exec = activation.lines().find_map(|l| l.strip_prefix("Exec=")).expect("Exec=");
    assert!(std::path::Path::new(exec).is_file(), "Exec= {exec} is not a file");
    Ok(())
}

/// Runs a second daemon on `bus` with `home` as its home (data and config below it); waits (at most
/// 10 s) for it to exit and returns its status and stderr.
fn second_daemon(bus: &Session, home: &std::path::Path) -> Result<(std::process::ExitStatus, String)> {
    let mut child = bus
        .command(matrix_linkd_tests::daemon_bin())
        .env("HOME", home)
        .env("XDG_DATA_HOME", home.join(".local/share"))
        .env("XDG_CONFIG_HOME", home.join(".config"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()?;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(status) = child.try_wait()? {
            let mut err = String::new();
            std::io::Read::read_to_string(&mut child.stderr.take().expect("piped"), &mut err)?;
            return Ok((status, err));
        }
        if std::time::Instant::now() > deadline {
            child.kill().ok();
            bail!("the second daemon kept running");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The PID of the connection that owns the daemon's name.
async fn name_owner_pid(session: &Session) -> Result<u32> {
    let conn = session.connect().await?;
    Ok(DBusProxy::new(&conn).await?.get_connection_unix_process_id(BusName::try_from(BUS_NAME)?).await?)
}

/// A second daemon on the same bus (another data directory) neither replaces the first nor waits
/// in a queue for its name: it exits with a clear message, and the first keeps serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_daemon_on_the_bus_exits_and_the_first_keeps_its_name() -> Result<()> {
    let (_hs, mut session, d) = signed_out_setup(60).await?;
    let other_home = tempfile::tempdir()?;
    let (status, err) = second_daemon(&session, other_home.path())?;
    assert_eq!(status.code(), Some(3), "{err}");
    assert!(err.contains(&format!("another matrix-linkd owns {BUS_NAME} on this bus")), "{err}");
    assert_eq!(name_owner_pid(&session).await?, session.daemon_pid(d));
    assert!(session.daemon_running(d));
    assert_eq!(session.client().await?.manager().session_state().await?, SessionState::SignedOut as u32);
    Ok(())
}

/// A second daemon with the same data directory on another bus exits: one store and one keyring
/// must not serve two daemons.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_daemon_with_the_same_home_exits() -> Result<()> {
    let (_hs, mut session, d) = signed_out_setup(60).await?;
    let other_bus = Session::start_with(SessionOptions { keyring: false, ..Default::default() }).await?;
    let (status, err) = second_daemon(&other_bus, &session.dir.path().join("home"))?;
    assert_eq!(status.code(), Some(3), "{err}");
    assert!(err.contains("another matrix-linkd is running with the data directory"), "{err}");
    assert!(session.daemon_running(d));
    Ok(())
}

/// `Linkd::status_changes` (what the GTK app's status page follows): a prompt when another
/// program signs the daemon out, when the daemon leaves the bus and when it comes back; none
/// for a `PropertiesChanged` forged by another connection on the daemon's path.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_changes_follow_the_daemon_and_ignore_forged_signals() -> Result<()> {
    use futures_util::StreamExt;
    use matrix_linkd_client::MANAGER_INTERFACE;
    let mut s = matrix_linkd_tests::signed_in_setup(60).await?;
    let watcher = s.session.client().await?;
    let mut changes = watcher.status_changes().await?;
    let next = async |changes: &mut futures_util::stream::BoxStream<'static, ()>, what: &str| {
        tokio::time::timeout(Duration::from_secs(10), changes.next())
            .await
            .map_err(|_| anyhow::anyhow!("no prompt after {what}"))
            .map(|_| ())
    };
    // One change is several signals (a property each): the rest are read off before the next step.
    let drain = async |changes: &mut futures_util::stream::BoxStream<'static, ()>| {
        while tokio::time::timeout(Duration::from_millis(300), changes.next()).await.is_ok() {}
    };

    drain(&mut changes).await;

    // Another program on the bus forges the daemon's signal: the bus does not route it to the
    // watcher. (A listener that does not match on the sender sees it: the forgery is well formed.)
    let forger = s.session.connect().await?;
    let bystander = s.session.connect().await?;
    let rule = zbus::MatchRule::builder()
        .msg_type(zbus::message::Type::Signal)
        .interface("org.freedesktop.DBus.Properties")?
        .member("PropertiesChanged")?
        .path(MANAGER_PATH)?
        .build();
    let mut seen_by_bystander = zbus::MessageStream::for_match_rule(rule, &bystander, None).await?;
    let forged: std::collections::HashMap<&str, zbus::zvariant::Value<'_>> =
        [(api::properties::SESSION_STATE, zbus::zvariant::Value::from(SessionState::SignedOut as u32))]
            .into();
    forger
        .emit_signal(
            None::<()>,
            MANAGER_PATH,
            "org.freedesktop.DBus.Properties",
            "PropertiesChanged",
            &(MANAGER_INTERFACE, forged, Vec::<&str>::new()),
        )
        .await?;
    let seen = tokio::time::timeout(Duration::from_secs(5), seen_by_bystander.next()).await?;
    let seen = seen.ok_or_else(|| anyhow::anyhow!("bystander stream ended"))??;
    assert_eq!(seen.header().sender().map(|n| n.as_str()), forger.unique_name().map(|n| n.as_str()));
    let forged = tokio::time::timeout(Duration::from_millis(500), changes.next()).await;
    assert!(forged.is_err(), "a forged PropertiesChanged prompted a re-read");

    // Another program signs the daemon out.
    s.session.client().await?.sign_out().await?;
    next(&mut changes, "SignOut").await?;
    assert_eq!(watcher.status().await?.state, SessionState::SignedOut);
    drain(&mut changes).await;

    // The daemon leaves the bus, and comes back.
    s.session.stop_daemon(s.daemon)?;
    next(&mut changes, "the daemon stopped").await?;
    assert!(watcher.status().await.is_err(), "the status still reads with the daemon gone");
    drain(&mut changes).await;
    s.session.start_daemon(&[]).await?;
    next(&mut changes, "the daemon came back").await?;
    Ok(())
}

/// A connection that ran flows leaves nothing in the object tree once they ended: no empty
/// `/flow/<sender>` node for each connection that ever ran one (30 connections left 30 nodes).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ended_flows_leave_no_nodes_behind() -> Result<()> {
    let (hs, session, _d) = signed_out_setup(60).await?;
    for _ in 0..5 {
        let conn = session.connect().await?;
        let linkd = matrix_linkd_client::Linkd::with_connection(conn.clone()).await?;
        let options = matrix_linkd_client::LoginOptions { homeserver: Some(hs.uri()), ..Default::default() };
        let mut flow = linkd.start_login(options).await?;
        wait_state(&mut flow, State::QrReady).await?;
        flow.cancel().await?;
        assert!(flow.result().await.is_err(), "a cancelled flow");
        drop(linkd);
        conn.close().await?;
    }
    let conn = session.connect().await?;
    let proxy = zbus::fdo::IntrospectableProxy::builder(&conn)
        .destination(BUS_NAME)?
        .path(api::FLOW_PATH_PREFIX)?
        .build()
        .await?;
    // The last flow's object goes just after its `Response`: wait for the tree to settle.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let xml = proxy.introspect().await.unwrap_or_default();
        let nodes = xml.matches("<node name=").count();
        if nodes == 0 {
            break;
        }
        if tokio::time::Instant::now() > deadline {
            bail!("{nodes} nodes left under {}: {xml}", api::FLOW_PATH_PREFIX);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}

/// Every property is read-only, and `Set` says so with the standard error, on the Manager and on a
/// flow; an unknown property is named as such.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn setting_a_property_is_refused_as_read_only() -> Result<()> {
    let (hs, session, _d) = signed_out_setup(60).await?;
    let conn = session.connect().await?;
    let set = |path: String, iface: &'static str, name: &'static str| {
        let conn = conn.clone();
        async move {
            let proxy =
                zbus::fdo::PropertiesProxy::builder(&conn).destination(BUS_NAME)?.path(path)?.build().await?;
            let iface = zbus::names::InterfaceName::try_from(iface)?;
            match proxy.set(iface, name, zbus::zvariant::Value::from(2u32)).await {
                Ok(()) => anyhow::Ok("set".to_owned()),
                Err(zbus::fdo::Error::ZBus(zbus::Error::MethodError(n, _, _))) => Ok(n.to_string()),
                Err(e) => Ok(zbus::DBusError::name(&e).to_string()),
            }
        }
    };
    const READ_ONLY: &str = "org.freedesktop.DBus.Error.PropertyReadOnly";
    assert_eq!(set(MANAGER_PATH.to_owned(), api::MANAGER_INTERFACE, "Version").await?, READ_ONLY);
    assert_eq!(set(MANAGER_PATH.to_owned(), api::MANAGER_INTERFACE, "UserId").await?, READ_ONLY);
    assert_eq!(
        set(MANAGER_PATH.to_owned(), api::MANAGER_INTERFACE, "NoSuchThing").await?,
        "org.freedesktop.DBus.Error.UnknownProperty"
    );
    let linkd = matrix_linkd_client::Linkd::with_connection(conn.clone()).await?;
    let options = matrix_linkd_client::LoginOptions { homeserver: Some(hs.uri()), ..Default::default() };
    let mut flow = linkd.start_login(options).await?;
    wait_state(&mut flow, State::QrReady).await?;
    assert_eq!(set(flow.path().to_string(), api::FLOW_INTERFACE, "State").await?, READ_ONLY);
    // Reads still work, through the same interface.
    assert_eq!(flow.proxy().state().await?, State::QrReady as u32);
    assert_eq!(linkd.manager().version().await?, 1);
    flow.cancel().await?;
    Ok(())
}
