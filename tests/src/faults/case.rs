//! One fault-injection case: a flow of the daemon's real engine under a plan of faults, driven as a
//! user would (typing the check code, consenting), then the invariants, each with a named message:
//!
//! - `response`: exactly one outcome within the bound, and one the fault class may cause;
//! - `told`: the other device learns the flow ended (a failure message, or its session gone)
//!   within a bound, wherever it had a channel and was still listening;
//! - `secrets`: no secret reaches it before check code, consent and its device exist;
//! - `leftovers`: no rendezvous session the daemon created is left open;
//! - `intact`: the daemon's own session is unchanged and the next flow, fault-free, succeeds.

use std::{
    collections::BTreeMap,
    sync::{Arc, atomic::Ordering},
    time::Duration,
};

use matrix_linkd::{
    error::LinkError,
    net::Reach,
    protocol::{
        AccountPort, DelegationRecords, DelegationRequest, Engine, FlowCommand, FlowEvent, FlowOutcome,
        FlowRequest, GenerationChoice, GrantRequest, LoginRequest, LoginTarget, OAuthClient, Secret,
        SecretsSource, delegated,
        engine::OwnEngine,
        intent::{self, Intent, Journal},
        wire::{channel::Generation, messages::HomeserverRef},
    },
};
use matrix_sdk::{Client, async_trait, store::RoomLoadSettings, test_utils::client::mock_matrix_session};
use matrix_sdk_base::crypto::types::SecretsBundle;
use tokio::{sync::mpsc, time::Instant};
use url::Url;

use super::{
    Fault,
    peer::{Gates, Peer, Report, Role},
    server::{CLOCK_JUMP, Logged, StandIn},
};

/// The flow's own deadline.
const FLOW_TIMEOUT: Duration = Duration::from_secs(300);
/// A Response must come this long after the flow's deadline at the latest.
const RESPONSE_SLACK: Duration = Duration::from_secs(60);
/// The other device must learn the end this soon after the Response.
const TELL_BOUND: Duration = Duration::from_secs(10);
/// Time given to the clean-up after the Response before leftovers are counted.
const SETTLE: Duration = Duration::from_secs(120);
/// Long enough for every idle pooled connection to close (reqwest keeps one 90 s, and hyper's
/// reaper looks at intervals): after it, every task alive is one that something still holds.
/// Measured: after 100 s of quiet some of the client's start-up connections were still open,
/// after 200 s none were.
const QUIET: Duration = Duration::from_secs(200);

/// Which flow a case runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Variant {
    /// A grant of either generation; `daemon_scans`: the daemon scans the other device's code
    /// (else it shows its own).
    Grant { generation: Generation, daemon_scans: bool },
    /// A grant where the daemon shows the code in the generation `auto` picks: 2024 on a server
    /// offering it, else the latest (found by discovery).
    GrantAuto { offers_2024: bool },
    /// A delegation sharing the secrets: the daemon runs the device authorization grant itself.
    Delegation,
    /// A login: the daemon is the new device; `daemon_scans`: it scans the existing device's code.
    Login { generation: Generation, daemon_scans: bool },
}

impl Variant {
    /// Every flow the harness drives: the grants and logins of both generations and both QR
    /// directions, and the delegation.
    pub const ALL: [Variant; 11] = [
        Variant::Grant { generation: Generation::V2024, daemon_scans: false },
        Variant::Grant { generation: Generation::V2024, daemon_scans: true },
        Variant::Grant { generation: Generation::Latest, daemon_scans: false },
        Variant::Grant { generation: Generation::Latest, daemon_scans: true },
        Variant::GrantAuto { offers_2024: true },
        Variant::GrantAuto { offers_2024: false },
        Variant::Delegation,
        Variant::Login { generation: Generation::V2024, daemon_scans: false },
        Variant::Login { generation: Generation::V2024, daemon_scans: true },
        Variant::Login { generation: Generation::Latest, daemon_scans: false },
        Variant::Login { generation: Generation::Latest, daemon_scans: true },
    ];

    /// The flows of the exhaustive pass in `make test` (its 3-minute budget): every grant, the
    /// delegation, and the logins of both generations and both QR directions between them (2024
    /// with the daemon's code, the latest scanning the other device's). The random pass and
    /// `FAULT_EXHAUSTIVE=all` take [`Variant::ALL`].
    pub fn exhaustive() -> Vec<Variant> {
        let other_logins = [
            Variant::Login { generation: Generation::V2024, daemon_scans: true },
            Variant::Login { generation: Generation::Latest, daemon_scans: false },
        ];
        Variant::ALL.into_iter().filter(|v| !other_logins.contains(v)).collect()
    }

    pub fn name(&self) -> String {
        match self {
            Variant::Grant { generation, daemon_scans } => {
                let generation = match generation {
                    Generation::V2024 => "2024",
                    Generation::Latest => "latest",
                };
                format!("grant/{generation}/{}", if *daemon_scans { "scans" } else { "shows" })
            }
            Variant::GrantAuto { offers_2024: true } => "grant/auto-2024/shows".into(),
            Variant::GrantAuto { offers_2024: false } => "grant/auto-latest/shows".into(),
            Variant::Delegation => "delegation".into(),
            Variant::Login { generation, daemon_scans } => {
                let generation = match generation {
                    Generation::V2024 => "2024",
                    Generation::Latest => "latest",
                };
                format!("login/{generation}/{}", if *daemon_scans { "scans" } else { "shows" })
            }
        }
    }

    fn is_login(&self) -> bool {
        matches!(self, Variant::Login { .. })
    }
}

/// The existing device's private cross-signing keys (unpadded base64 of 32 bytes each): what a
/// grant shares and what a login's other device sends.
pub const SEED_MASTER: &str = "bWFzdGVybWFzdGVybWFzdGVybWFzdGVybWFzdGVyMDE";
pub const SEED_SELF_SIGNING: &str = "c2VsZnNlbGZzZWxmc2VsZnNlbGZzZWxmc2VsZnNlbGY";
pub const SEED_USER_SIGNING: &str = "dXNlcnVzZXJ1c2VydXNlcnVzZXJ1c2VydXNlcnVzZXI";

/// What one case found.
#[derive(Debug)]
pub struct CaseReport {
    pub variant: Variant,
    pub plan: BTreeMap<usize, Fault>,
    /// `success`, `cancelled`, `failed:<LinkError variant>`, `start:<LinkError variant>` or `none`.
    pub outcome: String,
    /// The daemon's requests of the faulted flow.
    pub requests: Vec<Logged>,
    pub violations: Vec<String>,
}

/// The account the engine acts for: a signed-in matrix-sdk client on the stand-in, and the secrets
/// it shares.
struct Account {
    client: Client,
    /// The delegations recorded: device ID, and whether the record holds tokens.
    records: std::sync::Mutex<std::collections::HashMap<String, bool>>,
    /// The intent journal (what a restart would clean up).
    journal: intent::InMemory,
    /// The devices of the logins that succeeded (their sessions hold the tokens).
    adopted: std::sync::Mutex<std::collections::HashSet<String>>,
}

#[async_trait]
impl Journal for Account {
    async fn write(&self, i: &Intent) -> Result<(), LinkError> {
        self.journal.write(i).await
    }
    async fn remove(&self, id: &str) -> Result<(), LinkError> {
        self.journal.remove(id).await
    }
    async fn left(&self) -> Result<Vec<Intent>, LinkError> {
        self.journal.left().await
    }
}

/// A flow that left its intent open (its clean-up met a failing server, a clock jump) left it
/// for the next start: the daemon starts again here (faults cleared: a later time) and settles
/// it, as `main` does. What is checked after is what is left even then.
async fn restart_if_left(engine: &OwnEngine, account: &Arc<Account>, server: &StandIn) {
    if !account.journal.entries().is_empty() {
        server.clear_plan();
        let port: Arc<dyn AccountPort> = account.clone();
        engine.recover(port).await;
    }
}

/// `leftovers`: every intent is closed, by the flow or by a restart's clean-up.
fn intent_left_open(account: &Account, violations: &mut Vec<String>) {
    for i in account.journal.entries() {
        violations.push(format!("leftovers: the flow's intent is still open at step {}", i.step));
    }
}

/// Where a login puts its session: a fresh matrix-sdk client (memory store) on the stand-in; the
/// clients of the logins that succeeded are kept (they hold their devices' tokens).
#[async_trait]
impl LoginTarget for Account {
    async fn prepare(&self) -> Result<(), LinkError> {
        Ok(())
    }
    async fn new_client(&self, homeserver: &Url) -> Result<Client, LinkError> {
        Client::builder()
            .homeserver_url(homeserver.as_str())
            .build()
            .await
            .map_err(|e| LinkError::Failed(format!("client: {e}")))
    }
    async fn adopt(&self, client: Client) -> Result<(), LinkError> {
        let device = client.device_id().map(|d| d.to_string()).unwrap_or_default();
        self.adopted.lock().unwrap().insert(device);
        Ok(())
    }
    async fn abandon(&self) {}
}

#[async_trait]
impl SecretsSource for Account {
    async fn secrets_bundle(&self) -> Result<SecretsBundle, LinkError> {
        Ok(serde_json::from_value(serde_json::json!({
            "cross_signing": {
                "master_key": SEED_MASTER,
                "self_signing_key": SEED_SELF_SIGNING,
                "user_signing_key": SEED_USER_SIGNING,
            },
            "backup": {
                "algorithm": "m.megolm_backup.v1.curve25519-aes-sha2",
                "key": "a2V5a2V5a2V5a2V5a2V5a2V5a2V5a2V5a2V5a2V5a2U",
                "backup_version": "7",
            }
        }))
        .expect("bundle"))
    }
}

#[async_trait]
impl DelegationRecords for Account {
    async fn remember(&self, record: delegated::Record) -> Result<(), LinkError> {
        let held = !record.access_token.is_empty();
        self.records.lock().unwrap().insert(record.device_id, held);
        Ok(())
    }
    async fn forget(&self, device_id: &str) -> Result<(), LinkError> {
        self.records.lock().unwrap().remove(device_id);
        Ok(())
    }
}

#[async_trait]
impl AccountPort for Account {
    async fn signed_in(&self) -> Result<Client, LinkError> {
        Ok(self.client.clone())
    }
}

/// A fault hit the daemon's delete of a rendezvous session: its last means of ending the session
/// for the other device (tried once; a `404` answer says it is gone).
fn delete_faulted(server: &StandIn) -> bool {
    server.log().iter().any(|l| l.fault.is_some() && l.step.starts_with("DELETE rendezvous"))
}

/// The name of an error's kind (its variant), which is what its D-Bus error name is made from.
pub fn kind_of(e: &LinkError) -> String {
    let debug = format!("{e:?}");
    debug.split(['(', ' ', '{']).next().unwrap_or_default().to_owned()
}

/// Tasks alive on the case's runtime.
fn alive_tasks() -> usize {
    tokio::runtime::Handle::current().metrics().num_alive_tasks()
}

/// Runs one case on a fresh single-threaded runtime with a paused clock.
pub fn run(variant: Variant, plan: BTreeMap<usize, Fault>) -> CaseReport {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()
        .expect("runtime");
    rt.block_on(run_inner(variant, plan))
}

async fn run_inner(variant: Variant, plan: BTreeMap<usize, Fault>) -> CaseReport {
    let server = StandIn::start(plan.clone()).await;
    if variant == (Variant::GrantAuto { offers_2024: false }) {
        server.withdraw_2024();
    }
    let client = Client::builder().homeserver_url(server.daemon_url.as_str()).build().await.expect("client");
    client
        .matrix_auth()
        .restore_session(mock_matrix_session(), RoomLoadSettings::default())
        .await
        .expect("session");
    let token = client.access_token();
    // The client's own start-up requests (`/versions`, the recovery state) are not the flow's, nor
    // are their pooled connections.
    tokio::time::sleep(QUIET).await;
    server.start_counting();
    let account = Arc::new(Account {
        client: client.clone(),
        records: Default::default(),
        journal: Default::default(),
        adopted: Default::default(),
    });
    let engine =
        OwnEngine::new(&OAuthClient::default(), Reach { local_addresses: true, insecure_http: true });

    let mut violations = Vec::new();
    let tasks = alive_tasks();
    let (outcome, _) = one_flow(&engine, &account, &server, variant, "FAULTED", &mut violations).await;
    let requests = server.log();
    // `leftovers`: no task of the flow outlives it. Idle pooled connections (a task on each end)
    // close after some quiet, so both counts are taken after `QUIET`.
    tokio::time::sleep(QUIET).await;
    let left = alive_tasks().saturating_sub(tasks);
    if left > 0 {
        violations.push(format!("leftovers: {left} tasks of the flow still alive"));
    }

    // `intact`: the session is ours still, and the next flow, without faults, succeeds.
    server.clear_plan();
    if client.access_token() != token || client.user_id().is_none() {
        violations.push("intact: the daemon's own session changed".into());
    }
    let mut again = Vec::new();
    let (next, _) = one_flow(&engine, &account, &server, variant, "NEXT", &mut again).await;
    if next != "success" || !again.is_empty() {
        violations.push(format!("intact: the next flow ended {next} {again:?}"));
    }
    CaseReport { variant, plan, outcome, requests, violations }
}

/// One flow, driven to its end; the invariants of that flow go to `violations`.
async fn one_flow(
    engine: &OwnEngine,
    account: &Arc<Account>,
    server: &StandIn,
    variant: Variant,
    device: &str,
    violations: &mut Vec<String>,
) -> (String, Report) {
    let gates = Arc::new(Gates::default());
    let role = if variant.is_login() { Role::Existing } else { Role::NewDevice };
    let peer = Peer::new(server, device, gates.clone(), role);
    let (code_tx, mut code_rx) = mpsc::unbounded_channel::<u8>();
    let mut typed = None;
    let mut tasks = Vec::new();
    let daemon_scans = matches!(
        variant,
        Variant::Grant { daemon_scans: true, .. } | Variant::Login { daemon_scans: true, .. }
    );
    let qr_code = if let Variant::Grant { generation, daemon_scans: true }
    | Variant::Login { generation, daemon_scans: true } = variant
    {
        let generated = match peer.generate(generation).await {
            Ok(generated) => generated,
            Err(e) => {
                violations.push(format!("harness: {e}"));
                return ("none".into(), Report::default());
            }
        };
        typed = Some(generated.typed);
        tasks.push(generated.task);
        Some(Secret(generated.qr))
    } else {
        None
    };
    let request = match variant {
        Variant::Grant { generation, .. } => FlowRequest::Grant(GrantRequest {
            generation: match generation {
                Generation::V2024 => GenerationChoice::V2024,
                Generation::Latest => GenerationChoice::Latest,
            },
            qr_code,
            timeout: FLOW_TIMEOUT,
            device_creation_timeout: Duration::from_secs(60),
        }),
        Variant::GrantAuto { .. } => FlowRequest::Grant(GrantRequest {
            generation: GenerationChoice::Auto,
            qr_code,
            timeout: FLOW_TIMEOUT,
            device_creation_timeout: Duration::from_secs(60),
        }),
        Variant::Login { generation, .. } => FlowRequest::Login(LoginRequest {
            generation: match generation {
                Generation::V2024 => GenerationChoice::V2024,
                Generation::Latest => GenerationChoice::Latest,
            },
            homeserver: qr_code.is_none().then(|| HomeserverRef::Url(server.daemon_url.clone())),
            qr_code,
            device_display_name: "Fault login".into(),
            timeout: FLOW_TIMEOUT,
        }),
        Variant::Delegation => FlowRequest::Delegation(DelegationRequest {
            client_name: "Fault client".into(),
            device_display_name: "Fault device".into(),
            share_secrets: true,
            app_id: None,
            timeout: FLOW_TIMEOUT,
            keys_timeout: Duration::from_secs(60),
        }),
    };
    let started = Instant::now();
    // Tokens that lived before this flow (a faulted flow's, left by a lost answer) are not its own.
    let live_before = server.live_token_devices();
    let records_before = {
        let live = server.live_token_devices();
        account
            .records
            .lock()
            .unwrap()
            .iter()
            .filter(|(device, held)| **held && !live.contains(*device))
            .count()
    };
    let port: Arc<dyn AccountPort> = account.clone();
    let outcome = match engine.start(port, request).await {
        Err(e) => format!("start:{}", kind_of(&e)),
        Ok(mut handle) => {
            let (mut events_open, mut waiting_code, mut scanned) = (true, false, false);
            let jumps = server.plan_jumps();
            let deadline = started + FLOW_TIMEOUT + RESPONSE_SLACK + CLOCK_JUMP * jumps;
            let outcome = loop {
                tokio::select! {
                    ev = handle.events.recv(), if events_open => match ev {
                        None => events_open = false,
                        Some(FlowEvent::QrReady(qr)) if !scanned => {
                            scanned = true;
                            tasks.push(peer.scan(qr.0, code_tx.clone()));
                        }
                        Some(FlowEvent::WaitingForCheckCode) => waiting_code = true,
                        Some(FlowEvent::ShowCheckCode(code)) => {
                            if let Some(t) = &typed {
                                let _ = t.send(code.0);
                            }
                        }
                        Some(FlowEvent::WaitingForApproval { .. }) => {
                            gates.approved.store(true, Ordering::SeqCst);
                            // The user consents on the OAuth server's page (delegation).
                            server.approve();
                            let _ = handle.commands.send(FlowCommand::Approve);
                        }
                        Some(FlowEvent::SessionReady(_)) => {
                            let _ = handle.commands.send(FlowCommand::SessionTaken);
                        }
                        Some(_) => {}
                    },
                    Some(code) = code_rx.recv(), if waiting_code => {
                        waiting_code = false;
                        gates.code_typed.store(true, Ordering::SeqCst);
                        let _ = handle.commands.send(FlowCommand::CheckCode(code));
                    }
                    out = &mut handle.outcome => break out.ok(),
                    _ = tokio::time::sleep_until(deadline) => break None,
                }
            };
            match outcome {
                None => {
                    violations.push("response: no Response within the flow's deadline".into());
                    "none".into()
                }
                Some(FlowOutcome::Success(_)) => "success".into(),
                Some(FlowOutcome::Cancelled) => "cancelled".into(),
                Some(FlowOutcome::Failed(e)) => format!("failed:{}", kind_of(&e)),
            }
        }
    };
    let ended = Instant::now();
    // `response`: an error the faults may cause.
    if let Some(kind) = outcome.strip_prefix("failed:").or(outcome.strip_prefix("start:")) {
        let plan = server.plan();
        if !plan.iter().any(|f| f.allowed().contains(&kind)) {
            violations.push(format!("response: {outcome} is not what {plan:?} may cause"));
        }
    }

    // `told`: within the bound, the other device heard of the end or its session is gone.
    tokio::time::sleep(TELL_BOUND).await;
    let report = peer.report.lock().unwrap().clone();
    let session_gone = report.session.as_deref().is_none_or(|id| !server.session_open(id));
    if variant == Variant::Delegation {
        // No other device; what is left to check is what the flow made outside.
        tokio::time::sleep(SETTLE).await;
        restart_if_left(engine, account, server).await;
        let records = account.records.lock().unwrap().clone();
        for device in server.live_token_devices() {
            if !records.contains_key(&device) {
                violations
                    .push(format!("leftovers: tokens of device {device} live on, and no record knows it"));
            }
        }
        // A failed flow keeps a record with tokens only of a device whose tokens live on (their
        // revocation failed), for `RevokeDelegation` to try again.
        let live = server.live_token_devices();
        let held = records.iter().filter(|(device, held)| **held && !live.contains(*device)).count();
        // Unless a revocation's answer was lost: whether it went through cannot be known, and the
        // record (whose tokens `RevokeDelegation` then finds dead) is the careful side.
        let revoke_faulted = server.log().iter().any(|l| l.fault.is_some() && l.step == "POST oauth-revoke");
        if outcome != "success" && held > records_before && !revoke_faulted {
            violations.push("leftovers: a failed delegation left a record with revoked tokens".into());
        }
        intent_left_open(account, violations);
        return (outcome, report);
    }
    if outcome == "success" {
        if report.secrets.is_none() {
            violations.push("response: success, but the new device has no secrets".into());
        }
    } else if report.channel && !server.silent() && !delete_faulted(server) {
        let told_in_time = report.told.as_ref().is_some_and(|(_, at)| *at <= ended + TELL_BOUND);
        if !told_in_time && std::env::var_os("FAULT_STRICT_TELL").is_some() {
            violations.push(format!(
                "told(strict): no failure message ({outcome}, gone {session_gone}, stopped {:?})",
                report.stopped
            ));
        }
        if !told_in_time && !session_gone && report.stopped.is_none() {
            violations.push(format!("told: the other device was not told that the flow ended ({outcome})"));
        }
    }
    if let Some(seen) = report.secrets {
        let code_needed = !daemon_scans;
        if !seen.approved || !seen.device_present || (code_needed && !seen.code_typed) {
            violations.push(format!("secrets: sent before check code, consent and device: {seen:?}"));
        }
    }
    tokio::time::sleep(SETTLE).await;
    for task in tasks {
        task.abort();
        let _ = task.await;
    }
    if server.daemons_open_sessions() > 0 {
        violations.push("leftovers: a rendezvous session the daemon created is still open".into());
    }
    restart_if_left(engine, account, server).await;
    if variant.is_login() {
        // Tokens issued to a login live on only in the session it kept. Unless an answer that
        // may have carried tokens was lost (the daemon cannot revoke what never reached it; the
        // OAuth server may end the grant when the used code comes again) or a revocation's was.
        let lost = server.log().iter().any(|l| {
            l.fault.is_some_and(|f| f.loses_answer())
                && (l.step == "POST oauth-token" || l.step == "POST oauth-revoke")
        });
        let adopted = account.adopted.lock().unwrap().clone();
        for device in server.live_token_devices() {
            if !adopted.contains(&device) && !live_before.contains(&device) && !lost {
                violations
                    .push(format!("leftovers: tokens of device {device} live on, and nobody holds them"));
            }
        }
    }
    intent_left_open(account, violations);
    (outcome, report)
}
