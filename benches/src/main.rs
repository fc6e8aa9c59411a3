//! `make bench`: figures, not pass/fail. On the real stack (Synapse + OAuth server), with every
//! human step answered at once, it measures
//!   - full-flow wall time split by phase, for the daemon and for a matrix-sdk <-> matrix-sdk flow
//!     (the baseline) in the same run, and their ratio;
//!   - rendezvous HTTP requests per flow (counted in Synapse's access log, both sides together);
//!   - the idle daemon's RSS, CPU time and HTTP requests over 60 s.
//!
//!   - the daemon's own engine on both sides (two daemons on two private buses), 2024 and latest
//!     generation, against the same baseline, with the reaction per hop: from the other side's
//!     rendezvous write to ours, less any time our own user took (from both daemons' debug logs).
//!
//! `BENCH_RUNS` (default 3) flows of each kind; `BENCH_IDLE_SECS` (default 60).

use std::time::{Duration, Instant};

use anyhow::{Result, anyhow};
use matrix_linkd_client::{GrantOptions, LoginOptions, State};
use matrix_linkd_tests::{
    peers,
    stack::{Stack, daemon_session},
    wait_state,
};

/// One flow's timings: (phase name, seconds), in order, and its rendezvous requests.
struct Run {
    phases: Vec<(&'static str, f64)>,
    requests: usize,
}

const PHASES: [&str; 4] = ["create+QR", "scan+handshake", "code->consent", "consent->done"];

impl Run {
    /// A run from its four phase times, in `PHASES` order.
    fn new(times: [f64; 4], stack: &Stack, mark: u64) -> Self {
        Run { phases: PHASES.into_iter().zip(times).collect(), requests: rendezvous_requests(stack, mark) }
    }

    fn total(&self) -> f64 {
        self.phases.iter().map(|p| p.1).sum()
    }
}

struct Clock(Instant);

impl Clock {
    fn lap(&mut self) -> f64 {
        let now = Instant::now();
        let d = now - self.0;
        self.0 = now;
        d.as_secs_f64()
    }
}

/// Counts rendezvous requests Synapse logged since `from` (a byte offset of its log).
fn rendezvous_requests(stack: &Stack, from: u64) -> usize {
    access_lines(stack, from).filter(|l| l.contains("rendezvous")).count()
}

fn access_lines(stack: &Stack, from: u64) -> impl Iterator<Item = String> {
    let log = std::fs::read(stack.dir.join("synapse/homeserver.log")).unwrap_or_default();
    let tail = String::from_utf8_lossy(&log[(from as usize).min(log.len())..]).into_owned();
    tail.lines()
        .filter(|l| l.contains("Processed request"))
        .map(str::to_owned)
        .collect::<Vec<_>>()
        .into_iter()
}

fn log_len(stack: &Stack) -> u64 {
    std::fs::metadata(stack.dir.join("synapse/homeserver.log")).map(|m| m.len()).unwrap_or(0)
}

/// Daemon as the existing device, showing the QR; a matrix-sdk new device scans.
async fn daemon_grant(stack: &Stack, linkd: &matrix_linkd_client::Linkd, login: &str) -> Result<Run> {
    let mark = log_len(stack);
    let mut c = Clock(Instant::now());
    let mut flow =
        linkd.start_grant(GrantOptions { notify: false, open_uri: false, ..Default::default() }).await?;
    wait_state(&mut flow, State::QrReady).await?;
    let qr_ready = c.lap();
    let laptop = matrix_sdk::Client::builder().homeserver_url(stack.synapse.clone()).build().await?;
    let mut peer = peers::login_scanning(laptop, flow.qr_code("raw").await?);
    let code = peer.shown_code().await?;
    wait_state(&mut flow, State::WaitingForCheckCode).await?;
    let scanned = c.lap();
    flow.check_code(code).await?;
    wait_state(&mut flow, State::WaitingForApproval).await?;
    let to_consent = c.lap();
    let uri = flow.verification_uri().await?;
    flow.approve().await?;
    stack.approve_uri(&uri, login, false)?;
    flow.result().await?;
    let to_done = c.lap();
    peer.finish().await?.map_err(|e| anyhow!("new device: {e}"))?;
    Ok(Run::new([qr_ready, scanned, to_consent, to_done], stack, mark))
}

/// Baseline: a matrix-sdk existing device showing the QR, a matrix-sdk new device scanning.
async fn sdk_grant(stack: &Stack, phone: &matrix_sdk::Client, login: &str) -> Result<Run> {
    let mark = log_len(stack);
    let mut c = Clock(Instant::now());
    let mut existing = peers::grant_generating(phone.clone());
    let qr = existing.qr().await?;
    let qr_ready = c.lap();
    let laptop = matrix_sdk::Client::builder().homeserver_url(stack.synapse.clone()).build().await?;
    let mut new = peers::login_scanning(laptop, qr);
    let code = new.shown_code().await?;
    let sender = existing.code_sender().await?;
    let scanned = c.lap();
    sender.send(code).await?;
    let uri = existing.verification_uri().await?;
    let to_consent = c.lap();
    stack.approve_uri(&uri, login, false)?;
    existing.finish().await?.map_err(|e| anyhow!("existing: {e}"))?;
    let to_done = c.lap();
    new.finish().await?.map_err(|e| anyhow!("new: {e}"))?;
    Ok(Run::new([qr_ready, scanned, to_consent, to_done], stack, mark))
}

/// Daemon as the new device, showing the QR; the matrix-sdk phone scans. Ends signed in.
async fn daemon_login(
    stack: &Stack,
    linkd: &matrix_linkd_client::Linkd,
    phone: &matrix_sdk::Client,
    login: &str,
) -> Result<Run> {
    let mark = log_len(stack);
    let mut c = Clock(Instant::now());
    let mut flow = linkd
        .start_login(LoginOptions { homeserver: Some(stack.synapse.to_string()), ..Default::default() })
        .await?;
    wait_state(&mut flow, State::QrReady).await?;
    let qr_ready = c.lap();
    let mut peer = peers::grant_scanning(phone.clone(), flow.qr_code("raw").await?);
    let code = peer.shown_code().await?;
    wait_state(&mut flow, State::WaitingForCheckCode).await?;
    let scanned = c.lap();
    flow.check_code(code).await?;
    let uri = peer.verification_uri().await?;
    let to_consent = c.lap();
    stack.approve_uri(&uri, login, false)?;
    flow.result().await?;
    let to_done = c.lap();
    peer.finish().await?.map_err(|e| anyhow!("phone: {e}"))?;
    Ok(Run::new([qr_ready, scanned, to_consent, to_done], stack, mark))
}

/// Baseline for login: a matrix-sdk new device showing the QR, the matrix-sdk phone scanning.
async fn sdk_login(stack: &Stack, phone: &matrix_sdk::Client, login: &str) -> Result<Run> {
    let mark = log_len(stack);
    let mut c = Clock(Instant::now());
    let laptop = matrix_sdk::Client::builder().homeserver_url(stack.synapse.clone()).build().await?;
    let mut new = peers::login_generating(laptop);
    let qr = new.qr().await?;
    let qr_ready = c.lap();
    let mut existing = peers::grant_scanning(phone.clone(), qr);
    let code = existing.shown_code().await?;
    let sender = new.code_sender().await?;
    let scanned = c.lap();
    sender.send(code).await?;
    let uri = existing.verification_uri().await?;
    let to_consent = c.lap();
    stack.approve_uri(&uri, login, false)?;
    new.finish().await?.map_err(|e| anyhow!("new: {e}"))?;
    let to_done = c.lap();
    existing.finish().await?.map_err(|e| anyhow!("existing: {e}"))?;
    Ok(Run::new([qr_ready, scanned, to_consent, to_done], stack, mark))
}

/// Our engine on both sides: daemon `a` (signed in) grants and shows the QR code, daemon `b` scans
/// it and signs in. The user consents on the OAuth page as soon as the URI is shown, then presses
/// Approve. Returns the run and the reactions per hop. Signs `b` out again afterwards.
async fn daemons_grant(
    stack: &Stack,
    a: &matrix_linkd_tests::Session,
    b: &matrix_linkd_tests::Session,
    login: &str,
    protocol: &str,
) -> Result<(Run, Vec<Hop>)> {
    let (linkd_a, linkd_b) = (a.client().await?, b.client().await?);
    let (from_a, from_b) = (a.log(0).len(), b.log(0).len());
    let mark = log_len(stack);
    let mut c = Clock(Instant::now());
    let mut grant = linkd_a
        .start_grant(GrantOptions {
            notify: false,
            open_uri: false,
            protocol: Some(protocol.into()),
            ..Default::default()
        })
        .await?;
    wait_state(&mut grant, State::QrReady).await?;
    let qr_ready = c.lap();
    let mut joining = linkd_b
        .start_login(LoginOptions { qr_code: Some(grant.qr_code("raw").await?), ..Default::default() })
        .await?;
    wait_state(&mut joining, State::ShowingCheckCode).await?;
    let code = joining.check_code_to_show().await?;
    wait_state(&mut grant, State::WaitingForCheckCode).await?;
    let scanned = c.lap();
    grant.check_code(code).await?;
    wait_state(&mut grant, State::WaitingForApproval).await?;
    let to_consent = c.lap();
    let uri = grant.verification_uri().await?;
    stack.approve_uri(&uri, login, false)?;
    grant.approve().await?;
    let (granted, joined) = tokio::join!(grant.result(), joining.result());
    granted?;
    joined?;
    let to_done = c.lap();
    let run = Run::new([qr_ready, scanned, to_consent, to_done], stack, mark);
    let hops = hops(&a.log(0)[from_a..], &b.log(0)[from_b..]);
    linkd_b.sign_out().await?;
    Ok((run, hops))
}

/// One hop: the other side wrote, then we wrote. `human` when our wait for that write was paced
/// for a person (scan, check code, consent) rather than for a machine reply.
struct Hop {
    ms: f64,
    human: bool,
}

/// Seconds of the day from a log line's RFC 3339 timestamp.
fn stamp(line: &str) -> Option<f64> {
    let t = line.get(11..26)?;
    let (h, m, s) = (
        t.get(0..2)?.parse::<f64>().ok()?,
        t.get(3..5)?.parse::<f64>().ok()?,
        t.get(6..)?.parse::<f64>().ok()?,
    );
    Some(h * 3600.0 + m * 60.0 + s)
}

enum Ev {
    Write,
    Read { human: bool },
    UserWait(f64),
}

fn events(log: &str, side: usize) -> Vec<(f64, usize, Ev)> {
    log.lines()
        .filter_map(|l| {
            let t = stamp(l)?;
            let ev = if l.contains("rendezvous write") {
                Ev::Write
            } else if l.contains("rendezvous read") {
                Ev::Read { human: l.contains("pace=Human") }
            } else if l.contains("user answered") {
                let ms = l.split("waited_ms=").nth(1)?.split_whitespace().next()?.parse::<f64>().ok()?;
                Ev::UserWait(ms / 1000.0)
            } else {
                return None;
            };
            Some((t, side, ev))
        })
        .collect()
}

/// Reactions per hop from both daemons' logs: each write, less the other side's previous write and
/// the time our own user took in between.
fn hops(log_a: &str, log_b: &str) -> Vec<Hop> {
    let mut all = events(log_a, 0);
    all.extend(events(log_b, 1));
    all.sort_by(|x, y| x.0.total_cmp(&y.0));
    let mut last_write: [Option<f64>; 2] = [None, None];
    let mut waited = [0.0f64; 2];
    let mut human = [false; 2];
    let mut out = Vec::new();
    for (t, side, ev) in all {
        match ev {
            Ev::Write => {
                let other = last_write[1 - side];
                let mine = last_write[side];
                if let Some(o) = other
                    && mine.is_none_or(|m| m < o)
                {
                    out.push(Hop { ms: (t - o - waited[side]) * 1000.0, human: human[side] });
                }
                last_write[side] = Some(t);
                waited[side] = 0.0;
                human[side] = false;
            }
            Ev::Read { human: h } => human[side] = h,
            Ev::UserWait(s) => waited[side] += s,
        }
    }
    out
}

fn percentile(mut v: Vec<f64>, p: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    v[((v.len() - 1) as f64 * p).round() as usize]
}

fn report_hops(name: &str, hops: &[Hop]) {
    let machine: Vec<f64> = hops.iter().filter(|h| !h.human).map(|h| h.ms).collect();
    let human: Vec<f64> = hops.iter().filter(|h| h.human).map(|h| h.ms).collect();
    println!(
        "| {name} | {} | {:.0} ms | {:.0} ms | {} | {:.0} ms | {:.0} ms |",
        machine.len(),
        percentile(machine.clone(), 0.5),
        percentile(machine, 0.99),
        human.len(),
        percentile(human.clone(), 0.5),
        percentile(human, 0.99),
    );
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn report(name: &str, runs: &[Run]) -> (f64, f64) {
    let total = median(runs.iter().map(Run::total).collect());
    let requests = median(runs.iter().map(|r| r.requests as f64).collect());
    let phases: Vec<String> = runs[0]
        .phases
        .iter()
        .enumerate()
        .map(|(i, (n, _))| format!("{n} {:.2}", median(runs.iter().map(|r| r.phases[i].1).collect())))
        .collect();
    println!("| {name} | {total:.2} s | {} | {requests:.0} |", phases.join(" · "));
    (total, requests)
}

/// (RSS in KiB, CPU seconds) of a process.
fn proc_usage(pid: u32) -> Result<(u64, f64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let rss = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let fields: Vec<&str> = stat.rsplit(')').next().unwrap_or_default().split_whitespace().collect();
    // After the command name: state is field 3; utime and stime are fields 14 and 15.
    let ticks: u64 = fields.get(11).and_then(|v| v.parse().ok()).unwrap_or(0)
        + fields.get(12).and_then(|v| v.parse().ok()).unwrap_or(0);
    Ok((rss, ticks as f64 / 100.0))
}

async fn run() -> Result<()> {
    let runs: usize = std::env::var("BENCH_RUNS").ok().and_then(|v| v.parse().ok()).unwrap_or(3);
    let idle: u64 = std::env::var("BENCH_IDLE_SECS").ok().and_then(|v| v.parse().ok()).unwrap_or(60);
    let stack = Stack::main()?;
    println!(
        "matrix-linkd benchmark: {runs} runs per kind, debug builds of both sides, stack {}",
        stack.synapse
    );
    println!("(human steps answered at once; consent driven over HTTP on the OAuth server's own pages)\n");

    let login = Stack::new_login("bench");
    let phone = stack.existing_device(&login).await?;
    let session = daemon_session(&stack, 120).await?;
    let linkd = session.client().await?;

    let mut d_login = Vec::new();
    let mut b_login = Vec::new();
    for i in 0..runs {
        b_login.push(sdk_login(&stack, &phone, &login).await?);
        d_login.push(daemon_login(&stack, &linkd, &phone, &login).await?);
        if i + 1 < runs {
            linkd.sign_out().await?;
        }
    }
    let mut d_grant = Vec::new();
    let mut b_grant = Vec::new();
    for _ in 0..runs {
        b_grant.push(sdk_grant(&stack, &phone, &login).await?);
        d_grant.push(daemon_grant(&stack, &linkd, &login).await?);
    }
    // Our engine on both sides: the signed-in daemon grants, a second daemon signs in.
    let other = daemon_session(&stack, 120).await?;
    let (mut ours_2024, mut hops_2024) = (Vec::new(), Vec::new());
    let (mut ours_latest, mut hops_latest) = (Vec::new(), Vec::new());
    for _ in 0..runs {
        let (run, hops) = daemons_grant(&stack, &session, &other, &login, "2024").await?;
        ours_2024.push(run);
        hops_2024.extend(hops);
        let (run, hops) = daemons_grant(&stack, &session, &other, &login, "latest").await?;
        ours_latest.push(run);
        hops_latest.extend(hops);
    }
    drop(other);

    println!("| flow (median of {runs}) | total | phases (s) | rendezvous requests |");
    println!("|---|---|---|---|");
    let (dl, dlr) = report("daemon login (daemon shows QR)", &d_login);
    let (bl, blr) = report("matrix-sdk login baseline (new device shows QR)", &b_login);
    let (dg, dgr) = report("daemon grant (daemon shows QR)", &d_grant);
    let (bg, bgr) = report("matrix-sdk grant baseline (existing shows QR)", &b_grant);
    let (o4, o4r) = report("our engine on both sides, 2024 (existing shows QR)", &ours_2024);
    let (ol, olr) = report("our engine on both sides, latest (existing shows QR)", &ours_latest);
    println!();
    println!(
        "ratio daemon/baseline: login time {:.2}x, requests {:.2}x; grant time {:.2}x, requests {:.2}x",
        dl / bl,
        dlr / blr,
        dg / bg,
        dgr / bgr
    );
    println!(
        "ratio our engine on both sides / matrix-sdk on both sides (grant): 2024 time {:.2}x, requests {:.2}x; latest time {:.2}x, requests {:.2}x",
        o4 / bg,
        o4r / bgr,
        ol / bg,
        olr / bgr
    );
    println!();
    println!("reaction per hop (the other side wrote -> we wrote, less our own user's time), all runs:");
    println!("| engine on both sides | machine hops | p50 | p99 | hops after a human step | p50 | p99 |");
    println!("|---|---|---|---|---|---|---|");
    report_hops("2024", &hops_2024);
    report_hops("latest", &hops_latest);

    drop(phone);
    // Let the flows' delayed rendezvous deletions (3 s after a last write) pass first.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let pid = session.daemon_pid(0);
    let mark = log_len(&stack);
    let (rss0, cpu0) = proc_usage(pid)?;
    tokio::time::sleep(Duration::from_secs(idle)).await;
    let (rss1, cpu1) = proc_usage(pid)?;
    let requests = access_lines(&stack, mark).count();
    println!();
    println!(
        "idle daemon (signed in) over {idle} s: RSS {:.1} MiB -> {:.1} MiB, CPU {:.3} s, HTTP requests to Synapse {requests}",
        rss0 as f64 / 1024.0,
        rss1 as f64 / 1024.0,
        cpu1 - cpu0
    );
    Ok(())
}

fn main() -> std::process::ExitCode {
    let rt =
        tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    match rt.block_on(run()) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bench failed: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
