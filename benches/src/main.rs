//! `make bench`: figures, not pass/fail, for the release daemon on the real stack (Synapse + the
//! OAuth server), with a modelled person: before each human step (scanning the QR code, typing the
//! check code, pressing Approve, consenting on the OAuth page) a time drawn from ½ to 1½ times
//! `BENCH_HUMAN_DELAY` seconds (default 2), the same for run *i* of every row (`BENCH_SEED`). It prints every run, then a
//! block of Markdown tables for BENCHMARKS.md:
//!   - full flows split by phase, with and without the person's time, consent -> token and the
//!     part of it spent waiting out the OAuth `interval` (the OAuth server's access log), and the
//!     machine time (less the person, less that wait): the daemon against matrix-sdk <-> matrix-sdk (the
//!     baseline) in the same run, and our engine on both sides (2024 and latest generation);
//!   - rendezvous requests per flow (Synapse's access log, both devices together);
//!   - reaction per hop, from both daemons' debug logs;
//!   - concurrency: `BENCH_FLOWS` (100) grants at once, method latency during the burst;
//!   - start-up: exec -> bus name owned, exec -> `SessionState` 3 with a stored session, and a
//!     signed-out start (`BENCH_STARTS`, 15, of each); D-Bus activation -> the first reply and the
//!     state it carries;
//!   - idle daemons signed in and out over `BENCH_IDLE_SECS` (60): RSS, CPU, HTTP requests;
//!   - binary sizes.
//!
//! `LINKD_DAEMON_BIN` names the daemon measured (`make bench`: target/release/matrix-linkd); a
//! debug build is refused unless `BENCH_ALLOW_DEBUG=1`. `BENCH_RUNS` (5) flows of each kind.

mod activation;
mod binary;
mod common;
mod concurrency;
mod flows;
mod hops;
mod idle;
mod report;
mod startup;

use std::time::{Duration, Instant};

use anyhow::Result;
use matrix_linkd_tests::{
    Session,
    api::SessionState,
    stack::{Stack, daemon_session, sign_in_daemon},
};

use crate::{
    binary::Binary,
    common::{Cx, Settings},
    report::Kind,
};

async fn run() -> Result<()> {
    let began = Instant::now();
    let s = Settings::from_env()?;
    let daemon = binary::daemon()?;
    let client = daemon.path.parent().map(|d| d.join("matrix-link")).filter(|p| p.exists());
    let client = client.map(|p| Binary::inspect(&p)).transpose()?;
    let build = if daemon.looks_debug() {
        "DEBUG build (BENCH_ALLOW_DEBUG=1): not figures to report"
    } else {
        "release build"
    };
    let stack = common::stack()?;
    let delay = s.delay.as_secs_f64();
    println!("matrix-linkd benchmark");
    println!("daemon measured: {} — {build}", daemon.path.display());
    println!("  {}", daemon.describe());
    println!("stack `{}`: Synapse {}, OAuth server {}", stack.name, stack.synapse, stack.oauth);
    println!(
        "modelled person: before each human step ({}, {}, {}, {}) a time drawn from {:.2} to {:.2} s (seed {}), the same for run i of every row",
        common::SCAN,
        common::TYPE,
        common::APPROVE,
        common::CONSENT,
        delay / 2.0,
        delay * 1.5,
        s.seed
    );
    println!(
        "{} runs per kind; the baseline is matrix-sdk 0.18 on both sides, in this run, on this stack\n",
        s.runs
    );

    let login = Stack::new_login("bench");
    let phone = stack.existing_device(&login).await?;
    let session = daemon_session(&stack, 120).await?;
    let linkd = session.client().await?;
    let cx = Cx { stack: &stack, login: &login, delay: s.delay, seed: s.seed };

    let kind = |name| Kind { name, runs: Vec::new() };
    let mut d_login = kind("daemon login (daemon shows QR; matrix-sdk phone scans)");
    let mut b_login = kind("matrix-sdk login baseline (new device shows QR)");
    let mut d_grant = kind("daemon grant (daemon shows QR; matrix-sdk laptop scans)");
    let mut b_grant = kind("matrix-sdk grant baseline (existing shows QR)");
    let mut ours_2024 = kind("our engine on both sides, 2024 (existing shows QR)");
    let mut ours_latest = kind("our engine on both sides, latest (existing shows QR)");
    let (mut hops_2024, mut hops_latest) = (Vec::new(), Vec::new());
    let n = s.runs;
    let record = |k: &mut Kind, i: usize, r: common::Run| {
        println!("{}", report::progress(k.name, i, n, &r));
        k.runs.push(r);
    };
    println!("flows:");
    for i in 0..n {
        record(&mut b_login, i, flows::sdk_login(&cx, i, &phone).await?);
        record(&mut d_login, i, flows::daemon_login(&cx, i, &linkd, &phone).await?);
        if i + 1 < n {
            linkd.sign_out().await?;
        }
    }
    for i in 0..n {
        record(&mut b_grant, i, flows::sdk_grant(&cx, i, &phone).await?);
        record(&mut d_grant, i, flows::daemon_grant(&cx, i, &linkd).await?);
    }
    // Our engine on both sides: the signed-in daemon grants, a second daemon signs in.
    let other = daemon_session(&stack, 120).await?;
    for i in 0..n {
        let (r, h) = flows::daemons_grant(&cx, i, &session, &other, "2024").await?;
        record(&mut ours_2024, i, r);
        hops_2024.extend(h);
        let (r, h) = flows::daemons_grant(&cx, i, &session, &other, "latest").await?;
        record(&mut ours_latest, i, r);
        hops_latest.extend(h);
    }
    drop(other);

    // Concurrency: a daemon of its own, signed in, allowed `BENCH_FLOWS` flows.
    println!("\nconcurrency: {} grants at once", s.flows);
    let mut busy = Session::start().await?;
    busy.write_config(&format!(
        "homeserver = \"{}\"\n[limits]\nmax_flows = {}\n[desktop]\nopen_uri = false\nnotifications = false\n{}",
        stack.synapse,
        s.flows,
        matrix_linkd_tests::LOCAL_TEST_SETUP
    ))?;
    busy.start_daemon(&[]).await?;
    busy.wait_session_state(SessionState::SignedOut, Duration::from_secs(20)).await?;
    sign_in_daemon(&stack, &busy, &phone, &login).await?;
    // A cold start: what the daemon learnt of the homeserver while it signed in is gone, so the
    // burst's discovery requests are counted.
    busy.stop_daemon(0)?;
    let marks = (common::log_len(&stack), common::oauth_log_len(&stack));
    let cold = busy.start_daemon(&[]).await?;
    busy.wait_session_state(SessionState::SignedIn, Duration::from_secs(30)).await?;
    let burst = concurrency::burst(&stack, marks, &busy, busy.daemon_pid(cold), s.flows).await?;
    for line in burst.markdown().iter().skip(2) {
        println!("  {line}");
    }
    if let Some(e) = &burst.first_error {
        println!("  first error: {e}");
    }

    // Start-ups: that daemon again (its session stored), then one never signed in.
    println!("\nstart-up ({} of each)", s.starts);
    busy.stop_daemon(cold)?;
    let (restored, signed_in_starts) =
        startup::series(&busy, "signed in", SessionState::SignedIn as u32, s.starts).await?;
    let fresh = Session::start().await?;
    fresh.write_config(&format!(
        "homeserver = \"{}\"\n[desktop]\nopen_uri = false\n{}",
        stack.synapse,
        matrix_linkd_tests::LOCAL_TEST_SETUP
    ))?;
    let (signed_out, signed_out_starts) =
        startup::series(&fresh, "signed out", SessionState::SignedOut as u32, s.starts).await?;

    let activations = activation::series(s.starts).await?;

    // Idle: no phone, no flows; the flows' delayed rendezvous deletions (3 s) pass first.
    drop(phone);
    tokio::time::sleep(Duration::from_secs(5)).await;
    println!("\nidle over {} s", s.idle_secs);
    let subjects = [
        ("signed in, after the flows above (log level debug)".to_owned(), session.daemon_pid(0)),
        ("signed in, restored at start-up, no flow since".to_owned(), restored.pid()),
        ("signed out, never signed in".to_owned(), signed_out.pid()),
    ];
    let (idle, requests) = idle::window(&stack, &subjects, s.idle_secs).await?;
    for i in &idle {
        println!("  {}", i.row());
    }
    println!("  HTTP requests to Synapse in the window: {}", requests.len());
    for r in requests.iter().take(5) {
        println!("    {r}");
    }

    // The Markdown block.
    let mut md = vec![
        format!(
            "Daemon `{}` ({build}). Person: {:.2}-{:.2} s before each human step, drawn (seed {}), the same for run i of every row. Flows: median of {n}, every run below.",
            daemon.path.display(),
            delay / 2.0,
            delay * 1.5,
            s.seed
        ),
        String::new(),
        "| binary | size | symbols |".to_owned(),
        "|---|---|---|".to_owned(),
    ];
    for b in std::iter::once(&daemon).chain(client.as_ref()) {
        let name = b.path.file_name().unwrap_or_default().to_string_lossy();
        md.push(format!(
            "| `{name}` | {} B = {:.2} MB ({:.2} MiB) | {}{} |",
            b.bytes,
            b.bytes as f64 / 1e6,
            b.bytes as f64 / 1_048_576.0,
            if b.symbols { "not stripped" } else { "stripped" },
            if b.debug_info { ", debug info" } else { "" }
        ));
    }
    let kinds = [d_login, b_login, d_grant, b_grant, ours_2024, ours_latest];
    md.push(String::new());
    md.extend(report::medians_table(&kinds, n));
    md.push(String::new());
    md.push(report::ratio("daemon login / matrix-sdk login", &kinds[0], &kinds[1]));
    md.push(report::ratio("daemon grant / matrix-sdk grant", &kinds[2], &kinds[3]));
    md.push(report::ratio("our engine on both sides, 2024 / matrix-sdk grant", &kinds[4], &kinds[3]));
    md.push(report::ratio("our engine on both sides, latest / matrix-sdk grant", &kinds[5], &kinds[3]));
    md.push(String::new());
    md.extend(report::runs_table(&kinds));
    md.push(String::new());
    md.push(
        "Reaction per hop (the other side wrote → we wrote, less our own user's time), all runs:".to_owned(),
    );
    md.push(String::new());
    md.push(
        "| engine on both sides | machine hops | p50 | p99 (max under 100 hops) | human-paced hops | p50 | p99 (max under 100 hops) | token hops (consent + interval) | p50 |"
            .to_owned(),
    );
    md.push("|---|---|---|---|---|---|---|---|---|".to_owned());
    md.push(hops::row("2024", &hops_2024));
    md.push(hops::row("latest", &hops_latest));
    md.push(String::new());
    md.push(format!("Concurrency, one signed-in daemon (`limits.max_flows = {}`):", s.flows));
    md.push(String::new());
    md.extend(burst.markdown());
    md.push(String::new());
    md.push("| start-up | starts | exec → bus name owned (median; each) | exec → SessionState (median; each) | RSS then |".to_owned());
    md.push("|---|---|---|---|---|".to_owned());
    md.push(startup::row(
        "stored session (keyring + store)",
        SessionState::SignedIn as u32,
        &signed_in_starts,
    ));
    md.push(startup::row("no stored session", SessionState::SignedOut as u32, &signed_out_starts));
    md.push(String::new());
    md.push("| start-up by the bus | starts | first reply | state |".to_owned());
    md.push("|---|---|---|---|".to_owned());
    md.push(activation::row(&activations));
    md.push(String::new());
    md.push(format!(
        "| idle over {} s ({} HTTP requests to Synapse from all of them) | VmRSS | RssAnon | RssFile | CPU |",
        s.idle_secs,
        requests.len()
    ));
    md.push("|---|---|---|---|---|".to_owned());
    md.extend(idle.iter().map(idle::Idle::row));
    md.push(String::new());
    md.push("| where the idle RSS is, end of the window (MiB, `/proc/<pid>/smaps`) | the daemon binary | shared libraries | `[heap]` | other anonymous (malloc arenas, stacks) | other |".to_owned());
    md.push("|---|---|---|---|---|---|".to_owned());
    md.extend(idle.iter().map(idle::Idle::parts_row));

    println!("\n<!-- figures: linkd-bench, {build} -->\n");
    for line in md {
        println!("{line}");
    }
    println!("\n(bench ran {:.0} s)", began.elapsed().as_secs_f64());
    drop((restored, signed_out, busy, fresh));
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
