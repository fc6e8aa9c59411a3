//! Reaction per hop, from both daemons' debug logs: the other side's rendezvous write -> our next
//! write, less the time our own user took in between.

use crate::common::{percentile, tail};

/// What one hop waited for.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Waited {
    /// A machine reply: our read was paced for one.
    Machine,
    /// Our read was paced for a person (the scan, the check code, consent on the other side).
    Human,
    /// Our write is `m.login.success`: the new device waited for the OAuth server's token, which
    /// comes one `interval` after the first token request when the person consents after it.
    Token,
}

pub struct Hop {
    pub ms: f64,
    pub waited: Waited,
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
    Write { token: bool },
    Read { human: bool },
    UserWait(f64),
}

fn events(log: &str, side: usize) -> Vec<(f64, usize, Ev)> {
    log.lines()
        .filter_map(|l| {
            let t = stamp(l)?;
            let ev = if l.contains("rendezvous write") {
                Ev::Write { token: l.contains("m.login.success") }
            } else if l.contains("rendezvous read") {
                Ev::Read { human: l.contains("pace=Human") }
            } else if l.contains(" answered") && l.contains("waited_ms=") {
                // The runner's `{what} answered` (the check code, approval): our own user's time.
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
pub fn hops(log_a: &str, log_b: &str) -> Vec<Hop> {
    let mut all = events(log_a, 0);
    all.extend(events(log_b, 1));
    all.sort_by(|x, y| x.0.total_cmp(&y.0));
    let mut last_write: [Option<f64>; 2] = [None, None];
    let mut waited = [0.0f64; 2];
    let mut human = [false; 2];
    let mut out = Vec::new();
    for (t, side, ev) in all {
        match ev {
            Ev::Write { token } => {
                let other = last_write[1 - side];
                let mine = last_write[side];
                if let Some(o) = other
                    && mine.is_none_or(|m| m < o)
                {
                    let waited_for = if token {
                        Waited::Token
                    } else if human[side] {
                        Waited::Human
                    } else {
                        Waited::Machine
                    };
                    out.push(Hop { ms: (t - o - waited[side]) * 1000.0, waited: waited_for });
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

/// `| engine | machine hops | p50 | tail | human-paced hops | p50 | tail | token hops | p50 |`, the
/// tail being the p99 of 100 hops or more, else the largest.
pub fn row(name: &str, hops: &[Hop]) -> String {
    let of = |w: Waited| hops.iter().filter(|h| h.waited == w).map(|h| h.ms).collect::<Vec<f64>>();
    let (m, h, t) = (of(Waited::Machine), of(Waited::Human), of(Waited::Token));
    format!(
        "| {name} | {} | {:.0} ms | {} | {} | {:.0} ms | {} | {} | {:.0} ms |",
        m.len(),
        percentile(m.clone(), 0.5),
        tail(&m, " ms", 0),
        h.len(),
        percentile(h.clone(), 0.5),
        tail(&h, " ms", 0),
        t.len(),
        percentile(t, 0.5),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Our own user's time, as the runner logs it (`the check code answered`), is not a reaction:
    /// a hop that spans it counts without it.
    #[test]
    fn our_users_time_is_left_out() {
        let a = "2026-12-08T01:47:33.515128Z DEBUG grant: matrix_linkd::protocol::engine::handshake: rendezvous write login_ok
2026-12-08T01:47:35.517876Z DEBUG grant: matrix_linkd::protocol::link: rendezvous read looks=1 pace=Watch
2026-12-08T01:47:36.405733Z DEBUG grant: matrix_linkd::protocol::runner: the check code answered waited_ms=2800
2026-12-08T01:47:36.466457Z DEBUG grant: matrix_linkd::protocol::link: rendezvous write m.login.protocol_accepted";
        let b = "2026-12-08T01:47:33.600000Z DEBUG login: matrix_linkd::protocol::link: rendezvous write m.login.protocol";
        let h = hops(a, b);
        assert_eq!(h.len(), 2, "B answered A's LoginOk, A answered B's message");
        assert!((h[0].ms - 84.872).abs() < 1.0, "{}", h[0].ms);
        assert!((h[1].ms - 66.457).abs() < 1.0, "2.87 s less the 2.8 s our user took: {}", h[1].ms);
    }
}
