//! Fault injection: every fault at every request of every flow the harness drives
//! (`matrix_linkd_tests::faults`), then random multi-fault plans by seed. No servers: the engine,
//! the stand-ins and the other device run in this process on paused clocks.
//!
//! `FAULT_SEEDS=N` sets how many seeds the random pass runs (`make chaos` runs 100,000);
//! `FAULT_SEED_FROM` where they start. `FAULT_EXHAUSTIVE=all` runs the single-fault pass over
//! every flow (`Variant::ALL`) rather than the `make test` set (`Variant::exhaustive`).

use std::{
    collections::{BTreeMap, BTreeSet},
    sync::Mutex,
};

use matrix_linkd::protocol::wire::channel::Generation;
use matrix_linkd_tests::faults::{
    self, ALL, Fault,
    case::{self, CaseReport, Variant},
};

/// Runs `cases` on as many threads as the machine has cores, each case on its own runtime.
fn run_all(cases: Vec<(Variant, BTreeMap<usize, Fault>)>) -> Vec<CaseReport> {
    let queue = Mutex::new(cases.into_iter().enumerate().collect::<Vec<_>>());
    let done = Mutex::new(Vec::new());
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| {
                loop {
                    let Some((i, (variant, plan))) = queue.lock().unwrap().pop() else { return };
                    let report = case::run(variant, plan);
                    done.lock().unwrap().push((i, report));
                }
            });
        }
    });
    let mut done = done.into_inner().unwrap();
    done.sort_by_key(|(i, _)| *i);
    done.into_iter().map(|(_, r)| r).collect()
}

fn plan_text(plan: &BTreeMap<usize, Fault>) -> String {
    plan.iter().map(|(i, f)| format!("{f}@{i}")).collect::<Vec<_>>().join(",")
}

/// Names every violation (variant, plan, the faulted step, the outcome) and fails on any.
fn check(reports: &[CaseReport]) {
    let mut failed = Vec::new();
    for r in reports {
        for v in &r.violations {
            let steps: Vec<_> = r
                .plan
                .keys()
                .filter_map(|i| r.requests.iter().find(|l| l.index == *i))
                .map(|l| l.step.clone())
                .collect();
            failed.push(format!(
                "{} [{}] at {steps:?} -> {}: {v}",
                r.variant.name(),
                plan_text(&r.plan),
                r.outcome
            ));
        }
    }
    assert!(failed.is_empty(), "{} invariant violations:\n{}", failed.len(), failed.join("\n"));
}

/// The outcomes each fault led to, for the table in docs/testing.md.
fn print_table(reports: &[CaseReport]) {
    let mut by: BTreeMap<(String, String), BTreeMap<String, usize>> = BTreeMap::new();
    for r in reports {
        let fault = r.plan.values().next().map_or("none".into(), |f| f.to_string());
        *by.entry((r.variant.name(), fault)).or_default().entry(r.outcome.clone()).or_default() += 1;
    }
    for ((variant, fault), outcomes) in by {
        let outcomes: Vec<_> = outcomes.iter().map(|(o, n)| format!("{o} {n}")).collect();
        println!("{variant:<20} {fault:<12} {}", outcomes.join(", "));
    }
}

#[test]
fn every_fault_at_every_request_of_every_flow() {
    let variants = match std::env::var("FAULT_EXHAUSTIVE").as_deref() {
        Ok("all") => Variant::ALL.to_vec(),
        _ => Variant::exhaustive(),
    };
    let clean = run_all(variants.iter().map(|v| (*v, BTreeMap::new())).collect());
    check(&clean);
    let mut cases = Vec::new();
    for r in &clean {
        assert_eq!(r.outcome, "success", "{} without faults", r.variant.name());
        let steps: BTreeSet<_> = r.requests.iter().map(|l| l.step.as_str()).collect();
        println!("{}: {} requests ({steps:?})", r.variant.name(), r.requests.len());
        for i in 0..r.requests.len() {
            cases.extend(ALL.iter().map(|f| (r.variant, BTreeMap::from([(i, *f)]))));
        }
    }
    let reports = run_all(cases);
    print_table(&reports);
    println!("{} cases", reports.len());
    check(&reports);
}

#[test]
fn random_fault_sequences_by_seed() {
    let seeds: u64 = std::env::var("FAULT_SEEDS").ok().and_then(|s| s.parse().ok()).unwrap_or(200);
    let from: u64 = std::env::var("FAULT_SEED_FROM").ok().and_then(|s| s.parse().ok()).unwrap_or(0);
    let cases = (from..from + seeds)
        .map(|seed| {
            let variant = Variant::ALL[(seed % Variant::ALL.len() as u64) as usize];
            (variant, faults::random_plan(seed, 40, 8))
        })
        .collect();
    let reports = run_all(cases);
    println!("{} seeds from {from}", reports.len());
    // A failed seed is replayed alone with FAULT_SEEDS=1 FAULT_SEED_FROM=<seed>.
    for (seed, r) in (from..).zip(&reports).filter(|(_, r)| !r.violations.is_empty()) {
        let requests: Vec<_> = r
            .requests
            .iter()
            .map(|l| format!("{}{}", l.step, l.fault.map(|f| format!(" [{f}]")).unwrap_or_default()))
            .collect();
        println!("seed {seed}: {} -> {}: {requests:?}", r.variant.name(), r.outcome);
    }
    check(&reports);
}

// Regression tests of what the harness found, one each (the exhaustive pass covers them too).

/// The scanner's `LoginInitiate` lands but its answer is cut off: the write is made sure of (2024)
/// or the session deleted (latest), so the other device is not left waiting for its session to
/// expire.
#[test]
fn a_lost_answer_to_the_scanners_first_write_leaves_nobody_waiting() {
    let mut cases = Vec::new();
    for generation in [Generation::V2024, Generation::Latest] {
        for fault in [Fault::Reset, Fault::Timeout, Fault::Truncated, Fault::Oversized] {
            // Requests of a scanning grant: auth metadata, the join read, then LoginInitiate.
            cases.push((Variant::Grant { generation, daemon_scans: true }, BTreeMap::from([(2, fault)])));
        }
    }
    let reports = run_all(cases);
    for r in &reports {
        assert_eq!(r.requests[2].step.split(' ').next(), Some("PUT"), "{:?}", r.requests);
    }
    check(&reports);
}

/// The token endpoint's answer with the new device's tokens is lost, or the laptop sleeps through
/// the request: the device is not left on the account with nobody holding it and nothing knowing
/// it (a record without tokens lists it).
#[test]
fn lost_tokens_leave_a_record_not_an_unknown_device() {
    let cases = [Fault::Reset, Fault::Timeout, Fault::Truncated, Fault::Oversized, Fault::ClockJump]
        .into_iter()
        // Requests of a delegation: auth metadata, registration, device authorization, tokens.
        .map(|fault| (Variant::Delegation, BTreeMap::from([(3, fault)])))
        .collect();
    let reports = run_all(cases);
    for r in &reports {
        assert_eq!(r.requests[3].step, "POST oauth-token");
        assert_ne!(r.outcome, "success", "{}", r.plan.values().next().unwrap());
    }
    check(&reports);
}

/// Found by the random campaign (seed 1,000,754): a delegation whose token request was refused
/// (`412`) stopped, and the last look at its code lost its answer (too large) after the server had
/// exchanged the code: tokens lived on that no record knew. The last look now looks again.
#[test]
fn a_lost_answer_to_the_last_look_at_a_code_still_settles_it() {
    let plan = faults::random_plan(1_000_754, 40, 8);
    let reports = run_all(vec![(Variant::Delegation, plan)]);
    let faulted: Vec<_> =
        reports[0].requests.iter().filter_map(|l| l.fault.map(|f| (l.step.as_str(), f))).collect();
    assert_eq!(
        faulted[1..],
        [("POST oauth-token", Fault::Status(412)), ("POST oauth-token", Fault::Oversized)]
    );
    check(&reports);
}

/// Found by the 100,000-seed campaign: a delegation stopped after a server error, whose last look
/// at its code met a clock jump or a server error (1,024,638; 1,027,627; 1,031,715; 1,038,337), or
/// whose tokens came at the last look and could not be revoked (1,027,781): tokens lived on that no
/// record knew. The last look now tries again on any answer that is not definite and keeps a
/// record when none came; unrevocable tokens keep their record for `RevokeDelegation`.
#[test]
fn a_stopped_delegation_leaves_nothing_unknown_behind() {
    let seeds = [1_024_638, 1_027_627, 1_027_781, 1_031_715, 1_038_337];
    let reports =
        run_all(seeds.iter().map(|s| (Variant::Delegation, faults::random_plan(*s, 40, 8))).collect());
    for r in &reports {
        assert!(r.requests.iter().filter(|l| l.step == "POST oauth-token").count() >= 2);
    }
    check(&reports);
}
