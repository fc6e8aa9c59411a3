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
        AccountPort, DelegationRecords, Engine, FlowCommand, FlowEvent, FlowOutcome, FlowRequest,
        GenerationChoice, GrantRequest, LoginTarget, OAuthClient, Secret, SecretsSource, delegated,
        engine::OwnEngine, wire::channel::Generation,
    },
};
use matrix_sdk::{Client, async_trait, store::RoomLoadSettings, test_utils::client::mock_matrix_session};
use matrix_sdk_base::crypto::types::SecretsBundle;
use tokio::{sync::mpsc, time::Instant};
use url::Url;

use super::{
    Fault,
    peer::{Gates, Peer, Report},
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

/// Which flow a case runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Variant {
    pub generation: Generation,
    /// The daemon scans the other device's code (else it shows its own).
    pub daemon_scans: bool,
}

impl Variant {
    /// Every grant: both generations, both QR directions.
    pub const GRANTS: [Variant; 4] = [
        Variant { generation: Generation::V2024, daemon_scans: false },
        Variant { generation: Generation::V2024, daemon_scans: true },
        Variant { generation: Generation::Latest, daemon_scans: false },
        Variant { generation: Generation::Latest, daemon_scans: true },
    ];

    pub fn name(&self) -> String {
        let generation = match self.generation {
            Generation::V2024 => "2024",
            Generation::Latest => "latest",
        };
        format!("grant/{generation}/{}", if self.daemon_scans { "scans" } else { "shows" })
    }
}

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
}

#[async_trait]
impl LoginTarget for Account {
    async fn prepare(&self) -> Result<(), LinkError> {
        Err(LinkError::AlreadySignedIn)
    }
    async fn new_client(&self, _: &Url) -> Result<Client, LinkError> {
        Err(LinkError::AlreadySignedIn)
    }
    async fn adopt(&self, _: Client) -> Result<(), LinkError> {
        Err(LinkError::AlreadySignedIn)
    }
    async fn abandon(&self) {}
}

#[async_trait]
impl SecretsSource for Account {
    async fn secrets_bundle(&self) -> Result<SecretsBundle, LinkError> {
        Ok(serde_json::from_value(serde_json::json!({
            "cross_signing": {
                "master_key": "bWFzdGVybWFzdGVybWFzdGVybWFzdGVybWFzdGVyMDE",
                "self_signing_key": "c2VsZnNlbGZzZWxmc2VsZnNlbGZzZWxmc2VsZnNlbGY",
                "user_signing_key": "dXNlcnVzZXJ1c2VydXNlcnVzZXJ1c2VydXNlcnVzZXI",
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
    async fn remember(&self, _: delegated::Record) -> Result<(), LinkError> {
        Ok(())
    }
    async fn forget(&self, _: &str) -> Result<(), LinkError> {
        Ok(())
    }
}

#[async_trait]
impl AccountPort for Account {
    async fn signed_in(&self) -> Result<Client, LinkError> {
        Ok(self.client.clone())
    }
}

/// The name of an error's kind (its variant), which is what its D-Bus error name is made from.
pub fn kind_of(e: &LinkError) -> String {
    let debug = format!("{e:?}");
    debug.split(['(', ' ', '{']).next().unwrap_or_default().to_owned()
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
    let client = Client::builder().homeserver_url(server.daemon_url.as_str()).build().await.expect("client");
    client
        .matrix_auth()
        .restore_session(mock_matrix_session(), RoomLoadSettings::default())
        .await
        .expect("session");
    let token = client.access_token();
    // The client's own start-up requests (`/versions`, the recovery state) are not the flow's.
    tokio::time::sleep(Duration::from_secs(5)).await;
    server.start_counting();
    let account = Arc::new(Account { client: client.clone() });
    let engine =
        OwnEngine::new(&OAuthClient::default(), Reach { local_addresses: true, insecure_http: true });

    let mut violations = Vec::new();
    let (outcome, report) = one_flow(&engine, &account, &server, variant, "FAULTED", &mut violations).await;
    let requests = server.log();

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
    let _ = report;
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
    let peer = Peer::new(server, device, gates.clone());
    let (code_tx, mut code_rx) = mpsc::unbounded_channel::<u8>();
    let mut typed = None;
    let mut tasks = Vec::new();
    let qr_code = if variant.daemon_scans {
        let generated = match peer.generate(variant.generation).await {
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
    let request = FlowRequest::Grant(GrantRequest {
        generation: match variant.generation {
            Generation::V2024 => GenerationChoice::V2024,
            Generation::Latest => GenerationChoice::Latest,
        },
        qr_code,
        timeout: FLOW_TIMEOUT,
        device_creation_timeout: Duration::from_secs(60),
    });
    let started = Instant::now();
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
                            let _ = handle.commands.send(FlowCommand::Approve);
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
    if outcome == "success" {
        if report.secrets.is_none() {
            violations.push("response: success, but the new device has no secrets".into());
        }
    } else if report.channel && !server.silent() {
        let told_in_time = report.told.as_ref().is_some_and(|(_, at)| *at <= ended + TELL_BOUND);
        if !told_in_time && !session_gone && report.stopped.is_none() {
            violations.push(format!("told: the other device was not told that the flow ended ({outcome})"));
        }
    }
    if let Some(seen) = report.secrets {
        let code_needed = !variant.daemon_scans;
        if !seen.approved || !seen.device_present || (code_needed && !seen.code_typed) {
            violations.push(format!("secrets: sent before check code, consent and device: {seen:?}"));
        }
    }
    tokio::time::sleep(SETTLE).await;
    for task in tasks {
        task.abort();
    }
    if server.daemons_open_sessions() > 0 {
        violations.push("leftovers: a rendezvous session the daemon created is still open".into());
    }
    (outcome, report)
}
