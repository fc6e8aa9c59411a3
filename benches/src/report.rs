//! The flow rows: every run, then the medians and ratios, as Markdown.

use crate::common::{PHASES, Run, median};

/// One kind of flow and its runs.
pub struct Kind {
    pub name: &'static str,
    pub runs: Vec<Run>,
}

fn secs(v: Option<f64>) -> String {
    v.map_or_else(|| "n/a".to_owned(), |t| format!("{t:.2} s"))
}

/// One run, as the progress output prints it.
pub fn progress(name: &str, i: usize, n: usize, r: &Run) -> String {
    let phases: Vec<String> = PHASES.iter().zip(r.phases).map(|(p, t)| format!("{p} {t:.2}")).collect();
    format!(
        "  {name}, run {}/{n}: total {:.2} s, less the person {:.2} s (person {:.2} s: {}) | {} | consent->token {} | {} rendezvous requests",
        i + 1,
        r.total(),
        r.machine(),
        r.person,
        r.steps.join(", "),
        phases.join(" · "),
        secs(r.token),
        r.requests
    ) + if r.token.is_some_and(|t| t < 1.0) {
        " [token within 1 s of consent: the first token request may have come after it, a race]"
    } else {
        ""
    }
}

/// Every run of every kind.
pub fn runs_table(kinds: &[Kind]) -> Vec<String> {
    let mut out = vec![
        format!(
            "| flow | run | total | less the person | person | {} | consent→token | rendezvous requests |",
            PHASES.join(" | ").replace("->", "→")
        ),
        format!("|---|---|---|---|---|{}---|---|", "---|".repeat(PHASES.len())),
    ];
    for k in kinds {
        for (i, r) in k.runs.iter().enumerate() {
            let phases: Vec<String> = r.phases.iter().map(|t| format!("{t:.2}")).collect();
            out.push(format!(
                "| {} | {} | {:.2} s | {:.2} s | {:.2} s | {} | {} | {} |",
                k.name,
                i + 1,
                r.total(),
                r.machine(),
                r.person,
                phases.join(" | "),
                secs(r.token),
                r.requests
            ));
        }
    }
    out
}

/// Medians of one kind: (total, less the person, requests).
pub fn medians(k: &Kind) -> (f64, f64, f64) {
    (
        median(k.runs.iter().map(Run::total).collect()),
        median(k.runs.iter().map(Run::machine).collect()),
        median(k.runs.iter().map(|r| r.requests as f64).collect()),
    )
}

pub fn medians_table(kinds: &[Kind], runs: usize) -> Vec<String> {
    let mut out = vec![
        format!(
            "| flow (median of {runs}) | human steps | total | less the person | phases (s) | consent→token | rendezvous requests |"
        ),
        "|---|---|---|---|---|---|---|".to_owned(),
    ];
    for k in kinds {
        let (total, machine, requests) = medians(k);
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
        let tokens: Vec<f64> = k.runs.iter().filter_map(|r| r.token).collect();
        let token = if tokens.is_empty() { None } else { Some(median(tokens)) };
        out.push(format!(
            "| {} | {} | {total:.2} s | {machine:.2} s | {} | {} | {requests:.0} |",
            k.name,
            k.runs.first().map_or(0, |r| r.steps.len()),
            phases.join(" · "),
            secs(token)
        ));
    }
    out
}

/// `a` against `b`: total, less the person, requests.
pub fn ratio(what: &str, a: &Kind, b: &Kind) -> String {
    let ((at, am, ar), (bt, bm, br)) = (medians(a), medians(b));
    format!(
        "- {what}: total {:.2}×, less the person {:.2}×, rendezvous requests {:.2}×",
        at / bt,
        am / bm,
        ar / br
    )
}
