//! The flow rows: every run, then the medians and ratios, as Markdown.

use crate::common::{PHASES, Run, median};

/// One kind of flow and its runs.
pub struct Kind {
    pub name: &'static str,
    pub runs: Vec<Run>,
}

fn secs(v: Option<f64>) -> String {
    v.filter(|t| t.is_finite()).map_or_else(|| "n/a".to_owned(), |t| format!("{t:.2} s"))
}

/// One run, as the progress output prints it.
pub fn progress(name: &str, i: usize, n: usize, r: &Run) -> String {
    let phases: Vec<String> = PHASES.iter().zip(r.phases).map(|(p, t)| format!("{p} {t:.2}")).collect();
    format!(
        "  {name}, run {}/{n}: total {:.2} s, less the person {:.2} s, machine {} (person {:.2} s: {}) | {} | consent->token {} (interval wait {}, {} token requests) | {} rendezvous requests: {}",
        i + 1,
        r.total(),
        r.less_person(),
        secs(Some(r.machine())),
        r.person,
        r.steps.join(", "),
        phases.join(" · "),
        secs(r.token),
        secs(r.interval_wait),
        r.token_requests,
        r.requests,
        r.breakdown
    )
}

/// Every run of every kind.
pub fn runs_table(kinds: &[Kind]) -> Vec<String> {
    let mut out = vec![
        format!(
            "| flow | run | total | less the person | machine | person | {} | consent→token | interval wait | rendezvous requests |",
            PHASES.join(" | ").replace("->", "→")
        ),
        format!("|---|---|---|---|---|---|{}---|---|---|", "---|".repeat(PHASES.len())),
    ];
    for k in kinds {
        for (i, r) in k.runs.iter().enumerate() {
            let phases: Vec<String> = r.phases.iter().map(|t| format!("{t:.2}")).collect();
            out.push(format!(
                "| {} | {} | {:.2} s | {:.2} s | {} | {:.2} s | {} | {} | {} | {} |",
                k.name,
                i + 1,
                r.total(),
                r.less_person(),
                secs(Some(r.machine())),
                r.person,
                phases.join(" | "),
                secs(r.token),
                secs(r.interval_wait),
                r.requests
            ));
        }
    }
    out
}

/// Medians of one kind.
pub struct Medians {
    pub total: f64,
    pub less_person: f64,
    pub machine: f64,
    pub requests: f64,
}

pub fn medians(k: &Kind) -> Medians {
    Medians {
        total: median(k.runs.iter().map(Run::total).collect()),
        less_person: median(k.runs.iter().map(Run::less_person).collect()),
        // A run whose token the log did not show has no machine time: left out, not guessed.
        machine: median(k.runs.iter().map(Run::machine).filter(|m| m.is_finite()).collect()),
        requests: median(k.runs.iter().map(|r| r.requests as f64).collect()),
    }
}

pub fn medians_table(kinds: &[Kind], runs: usize) -> Vec<String> {
    let mut out = vec![
        format!(
            "| flow (median of {runs}) | human steps | total | less the person | machine | phases (s) | consent→token | interval wait | rendezvous requests |"
        ),
        "|---|---|---|---|---|---|---|---|---|".to_owned(),
    ];
    for k in kinds {
        let m = medians(k);
        let phases: Vec<String> = PHASES
            .iter()
            .enumerate()
            .map(|(i, p)| {
                format!(
                    "{} {:.2}",
                    p.replace("->", "→"),
                    median(k.runs.iter().map(|r| r.phases[i]).collect())
                )
            })
            .collect();
        let of = |f: fn(&Run) -> Option<f64>| {
            let v: Vec<f64> = k.runs.iter().filter_map(f).collect();
            (!v.is_empty()).then(|| median(v))
        };
        out.push(format!(
            "| {} | {} | {:.2} s | {:.2} s | {} | {} | {} | {} | {:.0} |",
            k.name,
            k.runs.first().map_or(0, |r| r.steps.len()),
            m.total,
            m.less_person,
            secs(Some(m.machine)),
            phases.join(" · "),
            secs(of(|r| r.token)),
            secs(of(|r| r.interval_wait)),
            m.requests
        ));
    }
    out
}

/// `a` against `b`, medians: less the person, machine, requests; and how many of the runs paired
/// by their person (run *i* of each) `a` was ahead in, by machine time.
pub fn ratio(what: &str, a: &Kind, b: &Kind) -> String {
    let (ma, mb) = (medians(a), medians(b));
    let ahead = a.runs.iter().zip(&b.runs).filter(|(x, y)| x.machine() < y.machine()).count();
    format!(
        "- {what}: total {:.2}×, less the person {:.2}×, machine {:.2}× (ahead in {ahead} of {} runs with the same person), rendezvous requests {:.2}×",
        ma.total / mb.total,
        ma.less_person / mb.less_person,
        ma.machine / mb.machine,
        a.runs.len().min(b.runs.len()),
        ma.requests / mb.requests
    )
}
