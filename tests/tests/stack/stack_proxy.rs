//! A production-shaped deployment, as none of the other stacks is (issue 19): the `proxy` stack
//! (stack/proxy.sh) puts the server name `example.test` with its `.well-known` on that host,
//! Synapse at https://matrix.example.test and the OAuth server at https://auth.example.test behind
//! Debian's nginx, with TLS from a CA made for the run (trusted through the session's trust roots:
//! `SSL_CERT_FILE`, as `make test-stack` sets it) and the proxy settings most deployments carry:
//! `gzip on; gzip_proxied any; gzip_types application/json text/plain;`, HTTP/2.
//!
//! nginx compresses a rendezvous read for a client that accepts gzip and weakens its ETag
//! (`W/"T"`); Synapse compares `If-Match` strictly and refuses the weakened tag (412). The daemon
//! asks for the identity encoding, so its tags arrive as Synapse made them: daemon to daemon, every
//! cell passes, in both generations and both QR directions, and a daemon given only the server name
//! signs in. matrix-sdk 0.18 and matrix-js-sdk accept gzip and echo the weakened tag: with them a
//! cell either passes or the SDK's own write is refused (Synapse #18155, element-web #34453), which
//! the test checks is what happened (the proxy log shows the SDK's weak `If-Match` and the 412),
//! and that the daemon is unharmed: its flow never ends with "someone else wrote", a cancel ends it
//! cleanly, and its session stays signed in.

use std::time::Duration;

use anyhow::{Context as _, Result, anyhow, bail, ensure};
use matrix_linkd_client::{ClientError, Flow, GrantOptions, LoginOptions, SessionState, SignedIn, State};
use matrix_linkd_tests::{
    Session,
    api::errors,
    peers, quiet_grant,
    stack::{Stack, assert_seen_verified, consent_and_finish, daemon_access_token, identity_http},
    test_config, wait_state,
};

const DOMAIN: &str = "example.test";

fn proxy_stack() -> Result<Stack> {
    let stack = Stack::main()?;
    ensure!(
        stack.server_name == DOMAIN && stack.synapse.scheme() == "https",
        "these cells need the proxy stack: `make test-stack` runs them with LINKD_STACK=proxy"
    );
    Ok(stack)
}

/// A signed-out daemon whose config names the homeserver as a user knows it: `homeserver`.
async fn daemon_named(homeserver: &str) -> Result<Session> {
    let mut session = Session::start().await?;
    session.write_config(&test_config(homeserver, 120))?;
    session.start_daemon(&[]).await?;
    session.wait_session_state(SessionState::SignedOut, Duration::from_secs(20)).await?;
    Ok(session)
}

/// The daemon shows the QR code (`options`) and `phone` scans it: the daemon signs in.
async fn sign_in(
    stack: &Stack,
    session: &Session,
    phone: &matrix_sdk::Client,
    login: &str,
    options: LoginOptions,
) -> Result<SignedIn> {
    let linkd = session.client().await?;
    let mut flow = linkd.start_login(options).await?;
    wait_state(&mut flow, State::QrReady).await?;
    let mut peer = peers::grant_scanning(phone.clone(), flow.qr_code("raw").await?);
    let code = peer.shown_code().await?;
    wait_state(&mut flow, State::WaitingForCheckCode).await?;
    flow.check_code(code).await?;
    stack.approve_uri(&peer.verification_uri().await?, login, false)?;
    let signed_in = tokio::time::timeout(Duration::from_secs(90), flow.result()).await??;
    peer.finish().await?.map_err(|e| anyhow!("phone: {e}"))?;
    Ok(signed_in)
}

/// A fresh account with a phone that gets through the proxy (it asks for the identity encoding, as
/// the daemon does), and a daemon configured with the bare server name, signed in by that phone.
async fn signed_in_by_name(prefix: &str) -> Result<(Stack, String, matrix_sdk::Client, Session)> {
    let stack = proxy_stack()?;
    let login = Stack::new_login(prefix);
    let phone = stack.existing_device_over(&login, Some(identity_http())).await?;
    let session = daemon_named(DOMAIN).await?;
    let me = sign_in(&stack, &session, &phone, &login, LoginOptions::default()).await?;
    assert_eq!(me.user_id, format!("@{login}:{DOMAIN}"));
    Ok((stack, login, phone, session))
}

/// The proxy's access log: every request the daemon made carried no weakened tag.
fn proxy_log(stack: &Stack) -> Result<String> {
    std::fs::read_to_string(stack.dir.join("nginx-access.log")).context("nginx access log")
}

fn assert_daemon_never_sent_a_weak_tag(stack: &Stack) -> Result<()> {
    let log = proxy_log(stack)?;
    let ours: Vec<&str> = log.lines().filter(|l| l.contains("ua=\"matrix-linkd/")).collect();
    ensure!(
        ours.iter().any(|l| l.contains("/rendezvous")),
        "the daemon's rendezvous traffic went through nginx"
    );
    for line in ours {
        ensure!(!line.contains("if_match=W/"), "the daemon echoed a weakened tag: {line}");
        ensure!(line.contains("enc=identity"), "the daemon accepted a transformed encoding: {line}");
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_name_alone_signs_the_daemon_in() -> Result<()> {
    let (stack, login, phone, session) = signed_in_by_name("pn").await?;
    let (user, _) = stack.whoami(&daemon_access_token(&session)?).await?;
    assert_eq!(user, stack.user_id(&login));
    assert_eq!(user, format!("@{login}:{DOMAIN}"));
    drop(phone);
    assert_daemon_never_sent_a_weak_tag(&stack)
}

/// Every form of the name a user knows finds the homeserver behind the proxy (the QR code then
/// names Synapse's rendezvous there); a name that nothing answers for says what was tried.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_form_of_the_name_a_user_knows_finds_the_homeserver() -> Result<()> {
    let _stack = proxy_stack()?;
    let session = daemon_named(DOMAIN).await?;
    let linkd = session.client().await?;
    for given in [DOMAIN, "example.test:8448", "https://example.test", "https://matrix.example.test/"] {
        let mut flow = linkd
            .start_login(LoginOptions { homeserver: Some(given.into()), ..Default::default() })
            .await
            .with_context(|| format!("homeserver `{given}`"))?;
        wait_state(&mut flow, State::QrReady).await.with_context(|| format!("homeserver `{given}`"))?;
        let qr = flow.qr_code("raw").await?;
        ensure!(
            qr.windows(b"https://matrix.example.test/".len()).any(|w| w == b"https://matrix.example.test/"),
            "`{given}`: the QR code names no rendezvous at matrix.example.test"
        );
        flow.cancel().await?;
        let _ = flow.result().await;
    }
    let unknown = match linkd
        .start_login(LoginOptions { homeserver: Some("nothing.example.test".into()), ..Default::default() })
        .await
    {
        Ok(flow) => flow.result().await.map(|_| ()),
        Err(e) => Err(e),
    };
    match unknown {
        Err(ClientError::Daemon { name, message }) => {
            assert_eq!(name, errors::NETWORK, "{message}");
            ensure!(message.contains("nothing.example.test") && message.contains(".well-known"), "{message}");
        }
        other => bail!("a name nothing answers for: {other:?}"),
    }
    Ok(())
}

/// One daemon signed in (by the bare server name) grants a second one, itself configured with the
/// bare name: `existing_shows` says which daemon shows the QR code.
async fn daemon_to_daemon(protocol: &str, existing_shows: bool, prefix: &str) -> Result<()> {
    let (stack, login, phone, existing) = signed_in_by_name(prefix).await?;
    let new = daemon_named(DOMAIN).await?;
    let granting = existing.client().await?;
    let joining = new.client().await?;
    let protocol = Some(protocol.to_owned());
    let (grant, login_flow) = if existing_shows {
        let mut grant = granting.start_grant(GrantOptions { protocol, ..quiet_grant() }).await?;
        wait_state(&mut grant, State::QrReady).await?;
        let qr = grant.qr_code("raw").await?;
        let mut joined =
            joining.start_login(LoginOptions { qr_code: Some(qr), ..Default::default() }).await?;
        wait_state(&mut joined, State::ShowingCheckCode).await?;
        let code = joined.check_code_to_show().await?;
        wait_state(&mut grant, State::WaitingForCheckCode).await?;
        grant.check_code(code).await?;
        (grant, joined)
    } else {
        let mut joined = joining.start_login(LoginOptions { protocol, ..Default::default() }).await?;
        wait_state(&mut joined, State::QrReady).await?;
        let qr = joined.qr_code("raw").await?;
        let mut grant = granting.start_grant(GrantOptions { qr_code: Some(qr), ..quiet_grant() }).await?;
        wait_state(&mut grant, State::ShowingCheckCode).await?;
        let code = grant.check_code_to_show().await?;
        wait_state(&mut joined, State::WaitingForCheckCode).await?;
        joined.check_code(code).await?;
        (grant, joined)
    };
    let (granted, signed_in) = tokio::join!(consent_and_finish(&stack, grant, &login), login_flow.result());
    let (granted, signed_in) = (granted?, signed_in?);
    assert_eq!(granted.device_id, signed_in.device_id, "both daemons name the same new device");
    let (user, device) = stack.whoami(&daemon_access_token(&new)?).await?;
    assert_eq!((user.as_str(), device.as_str()), (signed_in.user_id.as_str(), signed_in.device_id.as_str()));
    assert_seen_verified(&phone, &signed_in.device_id).await?;
    assert_daemon_never_sent_a_weak_tag(&stack)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn daemons_2024_existing_shows_the_code() -> Result<()> {
    daemon_to_daemon("2024", true, "p4e").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn daemons_2024_new_shows_the_code() -> Result<()> {
    daemon_to_daemon("2024", false, "p4n").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn daemons_latest_existing_shows_the_code() -> Result<()> {
    daemon_to_daemon("latest", true, "ple").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn daemons_latest_new_shows_the_code() -> Result<()> {
    daemon_to_daemon("latest", false, "pln").await
}

/// How a cell with an SDK peer ended: both sides signed in, or the SDK's own write refused.
enum SdkCell {
    Passed,
    SdkRefused(String),
}

/// The SDK peer failed: it must be its own write refused over the proxy's weakened tag, and the
/// daemon must be unharmed (its flow not ended as a conflict; a cancel ends it; still signed in).
async fn sdk_refused(
    stack: &Stack,
    sdk_error: String,
    flow: Flow,
    daemon: &Session,
    still: SessionState,
) -> Result<SdkCell> {
    ensure!(
        sdk_error.contains("412") || sdk_error.contains("CONCURRENT"),
        "the SDK failed, but not on its weakened If-Match: {sdk_error}"
    );
    let log = proxy_log(stack)?;
    ensure!(
        log.lines().any(|l| l.starts_with("PUT ") && l.contains(" 412 ") && l.contains("if_match=W/")),
        "the proxy log shows no write refused over a weakened tag"
    );
    if flow.state() != State::Done {
        let _ = flow.cancel().await;
    }
    match tokio::time::timeout(Duration::from_secs(30), flow.result()).await? {
        Err(ClientError::Cancelled) => {}
        Err(ClientError::Daemon { name, message }) => {
            ensure!(!message.contains("someone else wrote"), "{name}: {message}");
        }
        other => bail!("the daemon's flow: {other:?}"),
    }
    daemon.wait_session_state(still, Duration::from_secs(5)).await.context("the daemon's session")?;
    Ok(SdkCell::SdkRefused(sdk_error))
}

fn report(cell: &str, outcome: &SdkCell) {
    match outcome {
        SdkCell::Passed => eprintln!("[proxy] {cell}: passed"),
        SdkCell::SdkRefused(e) => {
            eprintln!(
                "[proxy] {cell}: the SDK's own write refused over the proxy's weak ETag ({e}); daemon unharmed"
            )
        }
    }
}

/// The daemon (signed out, the bare name) signs in; a stock matrix-sdk phone scans its QR code.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sdk_phone_scans_the_daemons_login_code() -> Result<()> {
    let stack = proxy_stack()?;
    let login = Stack::new_login("psl");
    let phone = stack.existing_device(&login).await?;
    let session = daemon_named(DOMAIN).await?;
    let linkd = session.client().await?;
    let mut flow = linkd.start_login(LoginOptions::default()).await?;
    wait_state(&mut flow, State::QrReady).await?;
    let mut peer = peers::grant_scanning(phone.clone(), flow.qr_code("raw").await?);
    let outcome = async {
        let code = peer.shown_code().await?;
        wait_state(&mut flow, State::WaitingForCheckCode).await?;
        flow.check_code(code).await?;
        stack.approve_uri(&peer.verification_uri().await?, &login, false)?;
        anyhow::Ok(())
    }
    .await;
    let outcome = match outcome {
        Ok(()) => {
            tokio::time::timeout(Duration::from_secs(90), flow.result()).await??;
            peer.finish().await?.map_err(|e| anyhow!("phone: {e}"))?;
            SdkCell::Passed
        }
        Err(step) => match peer.finish().await? {
            Err(e) => sdk_refused(&stack, e.to_string(), flow, &session, SessionState::SignedOut).await?,
            Ok(()) => bail!("the cell failed with the SDK peer done: {step}"),
        },
    };
    report("matrix-sdk existing device scans, daemon logs in", &outcome);
    assert_daemon_never_sent_a_weak_tag(&stack)
}

/// The signed-in daemon grants; a stock matrix-sdk new device scans its QR code.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sdk_new_device_scans_the_daemons_grant_code() -> Result<()> {
    let (stack, login, _phone, session) = signed_in_by_name("psg").await?;
    let linkd = session.client().await?;
    let laptop = matrix_sdk::Client::builder().homeserver_url(stack.synapse.clone()).build().await?;
    let mut flow = linkd.start_grant(quiet_grant()).await?;
    wait_state(&mut flow, State::QrReady).await?;
    let mut peer = peers::login_scanning(laptop, flow.qr_code("raw").await?);
    let outcome = async {
        let code = peer.shown_code().await?;
        wait_state(&mut flow, State::WaitingForCheckCode).await?;
        flow.check_code(code).await?;
        wait_state(&mut flow, State::WaitingForApproval).await?;
        anyhow::Ok(())
    }
    .await;
    let outcome = match outcome {
        Ok(()) => {
            consent_and_finish(&stack, flow, &login).await?;
            peer.finish().await?.map_err(|e| anyhow!("new device: {e}"))?;
            SdkCell::Passed
        }
        Err(step) => match peer.finish().await? {
            Err(e) => sdk_refused(&stack, e.to_string(), flow, &session, SessionState::SignedIn).await?,
            Ok(()) => bail!("the cell failed with the SDK peer done: {step}"),
        },
    };
    report("daemon grants, matrix-sdk new device scans", &outcome);
    session.wait_session_state(SessionState::SignedIn, Duration::from_secs(5)).await?;
    assert_daemon_never_sent_a_weak_tag(&stack)
}

/// The daemon's flow reaches `state`, or the SDK peer's own flow ends first (its error then).
async fn reached_or_sdk_failed<E: std::fmt::Display>(
    flow: &mut Flow,
    state: State,
    task: &mut tokio::task::JoinHandle<Result<(), E>>,
) -> Result<Result<(), String>> {
    tokio::select! {
        reached = wait_state(flow, state) => reached.map(Ok),
        ended = task => match ended? {
            Err(e) => Ok(Err(e.to_string())),
            Ok(()) => bail!("the SDK peer ended signed in before the daemon reached {state:?}"),
        },
    }
}

/// The daemon (signed out, the bare name) signs in by scanning a stock matrix-sdk phone's code.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sdk_phone_shows_a_code_the_daemon_scans_to_log_in() -> Result<()> {
    let stack = proxy_stack()?;
    let login = Stack::new_login("psq");
    let phone = stack.existing_device(&login).await?;
    let session = daemon_named(DOMAIN).await?;
    let linkd = session.client().await?;
    let mut peer = peers::grant_generating(phone.clone());
    let qr = peer.qr().await?;
    let mut flow = linkd.start_login(LoginOptions { qr_code: Some(qr), ..Default::default() }).await?;
    let outcome = match reached_or_sdk_failed(&mut flow, State::ShowingCheckCode, &mut peer.task).await? {
        Err(e) => sdk_refused(&stack, e, flow, &session, SessionState::SignedOut).await?,
        Ok(()) => {
            let code = flow.check_code_to_show().await?;
            let steps = async {
                peer.code_sender().await?.send(code).await?;
                stack.approve_uri(&peer.verification_uri().await?, &login, false)?;
                anyhow::Ok(())
            }
            .await;
            match steps {
                Ok(()) => {
                    tokio::time::timeout(Duration::from_secs(90), flow.result()).await??;
                    peer.finish().await?.map_err(|e| anyhow!("phone: {e}"))?;
                    SdkCell::Passed
                }
                Err(step) => match peer.finish().await? {
                    Err(e) => {
                        sdk_refused(&stack, e.to_string(), flow, &session, SessionState::SignedOut).await?
                    }
                    Ok(()) => bail!("the cell failed with the SDK peer done: {step}"),
                },
            }
        }
    };
    report("matrix-sdk existing device shows the code, daemon logs in", &outcome);
    assert_daemon_never_sent_a_weak_tag(&stack)
}

/// The signed-in daemon grants by scanning a stock matrix-sdk new device's code.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sdk_new_device_shows_a_code_the_daemon_scans_to_grant() -> Result<()> {
    let (stack, login, _phone, session) = signed_in_by_name("pgq").await?;
    let linkd = session.client().await?;
    let laptop = matrix_sdk::Client::builder().homeserver_url(stack.synapse.clone()).build().await?;
    let mut peer = peers::login_generating(laptop);
    let qr = peer.qr().await?;
    let mut flow = linkd.start_grant(GrantOptions { qr_code: Some(qr), ..quiet_grant() }).await?;
    let outcome = match reached_or_sdk_failed(&mut flow, State::ShowingCheckCode, &mut peer.task).await? {
        Err(e) => sdk_refused(&stack, e, flow, &session, SessionState::SignedIn).await?,
        Ok(()) => {
            let code = flow.check_code_to_show().await?;
            let sent = async { anyhow::Ok(peer.code_sender().await?.send(code).await?) }.await;
            let at_consent = match sent {
                Ok(()) => reached_or_sdk_failed(&mut flow, State::WaitingForApproval, &mut peer.task).await?,
                Err(_) => Err(String::new()),
            };
            match at_consent {
                Ok(()) => {
                    consent_and_finish(&stack, flow, &login).await?;
                    peer.finish().await?.map_err(|e| anyhow!("new device: {e}"))?;
                    SdkCell::Passed
                }
                Err(e) if !e.is_empty() => {
                    sdk_refused(&stack, e, flow, &session, SessionState::SignedIn).await?
                }
                Err(_) => match peer.finish().await? {
                    Err(e) => {
                        sdk_refused(&stack, e.to_string(), flow, &session, SessionState::SignedIn).await?
                    }
                    Ok(()) => bail!("the SDK peer ended signed in before the check code"),
                },
            }
        }
    };
    report("matrix-sdk new device shows the code, daemon grants", &outcome);
    session.wait_session_state(SessionState::SignedIn, Duration::from_secs(5)).await?;
    assert_daemon_never_sent_a_weak_tag(&stack)
}

/// The rendezvous session a QR code names (its last path segment).
fn rendezvous_id(qr: &[u8]) -> Result<String> {
    let at = qr.windows(11).position(|w| w == b"rendezvous/").ok_or_else(|| anyhow!("no rendezvous URL"))?;
    let id: String =
        qr[at + 11..].iter().take_while(|b| b.is_ascii_alphanumeric()).map(|&b| char::from(b)).collect();
    ensure!(!id.is_empty(), "no rendezvous session id");
    Ok(id)
}

/// The proxy's log line of a write to session `id` refused (412) over a weakened tag, if any.
fn refusal(stack: &Stack, id: &str) -> Option<String> {
    let wanted = format!("PUT /_synapse/client/rendezvous/{id} 412 ");
    let log = proxy_log(stack).ok()?;
    log.lines().find(|l| l.starts_with(&wanted) && l.contains("if_match=W/")).map(str::to_owned)
}

/// Resolves with [`refusal`] once there is one: the event that ends a cell with an SDK peer behind
/// this proxy.
async fn refused_over_weak_tag(stack: &Stack, id: &str) -> String {
    loop {
        if let Some(line) = refusal(stack, id) {
            return line;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Both js-sdk cells where the daemon shows the code, and both where js-sdk does. js-sdk reports a
/// refused write as "Unexpected message received" or waits on; the proxy's log line of the refusal
/// is what ends the cell then.
async fn js_cell(role_existing: bool, js_shows: bool, prefix: &str) -> Result<SdkCell> {
    use matrix_linkd_tests::jspeer::{JsPeer, Mode, Role};
    let (stack, login, session, still) = if role_existing {
        let stack = proxy_stack()?;
        let login = Stack::new_login(prefix);
        (stack, login, daemon_named(DOMAIN).await?, SessionState::SignedOut)
    } else {
        let (stack, login, _phone, session) = signed_in_by_name(prefix).await?;
        (stack, login, session, SessionState::SignedIn)
    };
    let role = if role_existing { Role::Existing } else { Role::New };
    let mode = if js_shows { Mode::Generate } else { Mode::Scan };
    let mut js = JsPeer::start(&stack, role, mode, &login)?;
    if role_existing {
        // The existing device signs in first (it then says `ready`).
        js.read("ready", Duration::from_secs(60)).await?;
    }
    let linkd = session.client().await?;
    let (mut flow, qr) = if js_shows {
        let qr = js.qr().await?;
        let options = qr.clone();
        let flow = if role_existing {
            linkd.start_login(LoginOptions { qr_code: Some(options), ..Default::default() }).await?
        } else {
            linkd.start_grant(GrantOptions { qr_code: Some(options), ..quiet_grant() }).await?
        };
        (flow, qr)
    } else {
        let mut flow = if role_existing {
            linkd.start_login(LoginOptions::default()).await?
        } else {
            linkd.start_grant(quiet_grant()).await?
        };
        wait_state(&mut flow, State::QrReady).await?;
        let qr = flow.qr_code("raw").await?;
        js.write("qr.hex", &hex::encode(&qr))?;
        (flow, qr)
    };
    let id = rendezvous_id(&qr)?;
    let result_path = js.dir.path().join("result.json");
    let steps = async {
        if js_shows {
            wait_state(&mut flow, State::ShowingCheckCode).await?;
            ensure!(flow.check_code_to_show().await? == js.check_code().await?, "check codes differ");
        } else {
            let code = js.check_code().await?;
            wait_state(&mut flow, State::WaitingForCheckCode).await?;
            flow.check_code(code).await?;
        }
        if role_existing {
            stack.approve_uri(&js.read("verification_uri", Duration::from_secs(60)).await?, &login, false)?;
        } else {
            wait_state(&mut flow, State::WaitingForApproval).await?;
        }
        anyhow::Ok(())
    };
    let (refused, failed_step) = tokio::select! {
        done = steps => match done {
            Ok(()) => (None, None),
            Err(e) => (refusal(&stack, &id), Some(e)),
        },
        line = refused_over_weak_tag(&stack, &id) => (Some(line), None),
        _ = js_ended(&result_path) => (refusal(&stack, &id), None),
    };
    if let (None, Some(step)) = (&refused, failed_step) {
        let daemon = flow.result().await;
        bail!("{step}; the daemon's flow: {daemon:?}; js: {}", js.stop().await?);
    }
    if let Some(line) = refused {
        let js_result = js.stop().await?;
        ensure!(js_result["ok"] != true, "js-sdk signed in though its write was refused: {js_result}");
        return sdk_refused(
            &stack,
            format!("js-sdk: {}; proxy: {line}", js_result["error"]),
            flow,
            &session,
            still,
        )
        .await;
    }
    if role_existing {
        tokio::time::timeout(Duration::from_secs(90), flow.result()).await??;
    } else {
        consent_and_finish(&stack, flow, &login).await?;
    }
    let result = js.result().await?;
    ensure!(result["ok"] == true, "js peer: {result}");
    Ok(SdkCell::Passed)
}

/// Resolves once the js peer has written its result (it ended).
async fn js_ended(result: &std::path::Path) {
    while !result.exists() {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn js_existing_device_scans_the_daemons_login_code() -> Result<()> {
    let outcome = js_cell(true, false, "pjls").await?;
    report("js-sdk existing device scans, daemon logs in", &outcome);
    assert_daemon_never_sent_a_weak_tag(&proxy_stack()?)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn js_existing_device_shows_a_code_the_daemon_scans() -> Result<()> {
    let outcome = js_cell(true, true, "pjlq").await?;
    report("js-sdk existing device shows the code, daemon logs in", &outcome);
    assert_daemon_never_sent_a_weak_tag(&proxy_stack()?)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn js_new_device_scans_the_daemons_grant_code() -> Result<()> {
    let outcome = js_cell(false, false, "pjgs").await?;
    report("daemon grants, js-sdk new device scans", &outcome);
    assert_daemon_never_sent_a_weak_tag(&proxy_stack()?)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn js_new_device_shows_a_code_the_daemon_scans() -> Result<()> {
    let outcome = js_cell(false, true, "pjgq").await?;
    report("js-sdk new device shows the code, daemon grants", &outcome);
    assert_daemon_never_sent_a_weak_tag(&proxy_stack()?)
}
