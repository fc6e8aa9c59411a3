//! What every row shares: the settings, the modelled person, phase clocks, and what Synapse's
//! access log says (rendezvous requests, when a token was issued).

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Result, anyhow};
use matrix_linkd_tests::stack::Stack;
use rand::{Rng as _, SeedableRng as _, rngs::StdRng};

/// The bench's knobs, from the environment.
pub struct Settings {
    /// `BENCH_RUNS` (5): flows of each kind.
    pub runs: usize,
    /// `BENCH_HUMAN_DELAY` (2 s): the person's mean time before each human step, drawn for each
    /// step of each run from [`delay`/2, 3·`delay`/2].
    pub delay: Duration,
    /// `BENCH_SEED` (4108): the draws' seed.
    pub seed: u64,
    /// `BENCH_IDLE_SECS` (60): the idle window.
    pub idle_secs: u64,
    /// `BENCH_STARTS` (15): daemon start-ups of each kind.
    pub starts: usize,
    /// `BENCH_FLOWS` (100): grants started at once in the concurrency row.
    pub flows: usize,
}

fn env_or<T: std::str::FromStr>(key: &str, default: T) -> Result<T> {
    match std::env::var(key) {
        Ok(v) => v.trim().parse().map_err(|_| anyhow!("{key}={v} is not a valid value")),
        Err(_) => Ok(default),
    }
}

impl Settings {
    pub fn from_env() -> Result<Self> {
        let delay: f64 = env_or("BENCH_HUMAN_DELAY", 2.0)?;
        anyhow::ensure!((0.0..=60.0).contains(&delay), "BENCH_HUMAN_DELAY must be 0-60 seconds");
        let flows: usize = env_or("BENCH_FLOWS", 100)?;
        anyhow::ensure!((1..=256).contains(&flows), "BENCH_FLOWS must be 1-256 (`limits.max_flows`)");
        Ok(Self {
            runs: env_or("BENCH_RUNS", 5usize)?.max(1),
            delay: Duration::from_secs_f64(delay),
            seed: env_or("BENCH_SEED", 4108)?,
            idle_secs: env_or("BENCH_IDLE_SECS", 60)?,
            starts: env_or("BENCH_STARTS", 15usize)?.max(1),
            flows,
        })
    }
}

/// The human steps, as the output names them, in the order a person's delays are drawn.
pub const SCAN: &str = "scan the QR code";
pub const TYPE: &str = "type the check code";
pub const APPROVE: &str = "press Approve";
pub const CONSENT: &str = "consent on the OAuth page";
pub const STEPS: [&str; 4] = [SCAN, TYPE, APPROVE, CONSENT];

/// The modelled person: sleeps before each human step and keeps the time it took. The time of
/// each step is drawn, uniformly from [`mean`/2, 3·`mean`/2], from the seed and the run's number:
/// run *i* of every kind has the same person (the same time for the same step), so that a
/// daemon's run and matrix-sdk's run *i* differ only in the machines, and over the runs the
/// consent falls at every phase of the OAuth `interval`.
pub struct Person {
    /// The time of each of [`STEPS`].
    delays: [Duration; 4],
    pub took: Duration,
    pub steps: Vec<&'static str>,
}

impl Person {
    pub fn new(mean: Duration, seed: u64, run: usize) -> Self {
        let mut rng = StdRng::seed_from_u64(seed.wrapping_add(run as u64));
        let mean = mean.as_secs_f64();
        let delays = STEPS.map(|_| Duration::from_secs_f64(mean * rng.random_range(0.5..=1.5)));
        Self { delays, took: Duration::ZERO, steps: Vec::new() }
    }

    pub async fn step(&mut self, what: &'static str) {
        let delay = STEPS.iter().position(|s| *s == what).map_or(Duration::ZERO, |i| self.delays[i]);
        let t = Instant::now();
        tokio::time::sleep(delay).await;
        self.took += t.elapsed();
        self.steps.push(what);
    }
}

/// The phases of every flow, in order. The person's steps fall inside them: the scan in
/// scan+handshake, typing the check code in code->consent, Approve and the OAuth page in consent.
pub const PHASES: [&str; 5] = ["create+QR", "scan+handshake", "code->consent", "consent", "consent->done"];

/// One flow's figures.
pub struct Run {
    pub phases: [f64; 5],
    /// Seconds the modelled person took, and the steps.
    pub person: f64,
    pub steps: Vec<&'static str>,
    /// Rendezvous requests of both devices (Synapse's access log).
    pub requests: usize,
    /// The same, by method and by who sent them (the daemon's `User-Agent`, or any other).
    pub breakdown: String,
    /// Consent given (the OAuth page's last answer) -> the new device's token request that was
    /// answered with its token (the OAuth server's access log). `None` when the log did not show it.
    pub token: Option<f64>,
    /// Of that, the time the new device spent waiting out the OAuth `interval` after the consent:
    /// the whole of it when its previous token request (answered "pending") came before the
    /// consent, else nothing (its first request came after the consent: the time is the machines').
    pub interval_wait: Option<f64>,
    /// Device-code token requests of the new device.
    pub token_requests: usize,
}

impl Run {
    pub fn total(&self) -> f64 {
        self.phases.iter().sum()
    }

    /// The total less the person's time: what the machines and the OAuth `interval` cost.
    pub fn less_person(&self) -> f64 {
        self.total() - self.person
    }

    /// The total less the person and less the interval wait: what the machines cost, whatever the
    /// phase of the token poll when the person consented. NaN when the log did not show the token.
    pub fn machine(&self) -> f64 {
        self.less_person() - self.interval_wait.unwrap_or(f64::NAN)
    }
}

/// Times one flow: its phases, its person, and where Synapse's log stood.
pub struct Recorder<'a> {
    stack: &'a Stack,
    mark: u64,
    oauth_mark: u64,
    last: Instant,
    laps: Vec<f64>,
    consent: Option<f64>,
    pub person: Person,
}

impl<'a> Recorder<'a> {
    /// Run `run` of its kind (the person's draws depend on it).
    pub fn start(cx: &Cx<'a>, run: usize) -> Self {
        Recorder {
            stack: cx.stack,
            mark: log_len(cx.stack),
            oauth_mark: oauth_log_len(cx.stack),
            last: Instant::now(),
            laps: Vec::new(),
            consent: None,
            person: Person::new(cx.delay, cx.seed, run),
        }
    }

    /// Ends the current phase.
    pub fn lap(&mut self) {
        let now = Instant::now();
        self.laps.push((now - self.last).as_secs_f64());
        self.last = now;
    }

    /// Ends the consent phase: the person's consent is in.
    pub fn consented(&mut self) {
        self.lap();
        self.consent = Some(unix_now());
    }

    /// Ends the last phase (both devices done) and reads the log.
    pub fn finish(mut self) -> Result<Run> {
        self.lap();
        let phases: [f64; 5] = self.laps.try_into().map_err(|l: Vec<f64>| anyhow!("{} phases", l.len()))?;
        let polls = token_polls(self.stack, self.oauth_mark);
        let rendezvous: Vec<String> =
            access_lines(self.stack, self.mark).filter(|l| l.contains("rendezvous")).collect();
        let waited = self.consent.and_then(|at| interval_wait(&polls, at));
        Ok(Run {
            phases,
            person: self.person.took.as_secs_f64(),
            steps: self.person.steps,
            requests: rendezvous.len(),
            breakdown: breakdown(rendezvous.into_iter()),
            token: waited.map(|(token, _)| token),
            interval_wait: waited.map(|(_, wait)| wait),
            token_requests: polls.len(),
        })
    }
}

/// What the flows need: the stack, the account, the person's mean delay and seed.
pub struct Cx<'a> {
    pub stack: &'a Stack,
    pub login: &'a str,
    pub delay: Duration,
    pub seed: u64,
}

/// The stack `stack/with-stack.sh` runs the bench with: `LINKD_STACK`, else `STACK_NAME`, else
/// `main`.
pub fn stack() -> Result<Stack> {
    let name = std::env::var("LINKD_STACK")
        .or_else(|_| std::env::var("STACK_NAME"))
        .unwrap_or_else(|_| "main".to_owned());
    Stack::load(&name)
}

pub fn unix_now() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0)
}

pub fn log_len(stack: &Stack) -> u64 {
    std::fs::metadata(stack.dir.join("synapse/homeserver.log")).map(|m| m.len()).unwrap_or(0)
}

/// Synapse's access lines logged since `from` (a byte offset of its log).
pub fn access_lines(stack: &Stack, from: u64) -> impl Iterator<Item = String> {
    let log = std::fs::read(stack.dir.join("synapse/homeserver.log")).unwrap_or_default();
    let tail = String::from_utf8_lossy(&log[(from as usize).min(log.len())..]).into_owned();
    tail.lines()
        .filter(|l| l.contains("Processed request"))
        .map(str::to_owned)
        .collect::<Vec<_>>()
        .into_iter()
}

/// Rendezvous requests by sender and method, from Synapse's access lines: `daemon GET 12 (304:
/// 9) PUT 3 …; other GET …`. A 2024 `GET` answered `304` is a conditional read that found nothing new.
fn breakdown(lines: impl Iterator<Item = String>) -> String {
    let mut by: std::collections::BTreeMap<(&str, String), (usize, usize)> = Default::default();
    for l in lines {
        let who = if l.contains("matrix-linkd/") { "daemon" } else { "other" };
        let Some(method) = l.split('"').nth(1).and_then(|r| r.split(' ').next()) else { continue };
        let e = by.entry((who, method.to_owned())).or_default();
        e.0 += 1;
        e.1 += usize::from(l.contains(" 304 \""));
    }
    ["daemon", "other"]
        .iter()
        .filter_map(|who| {
            let parts: Vec<String> = by
                .iter()
                .filter(|((w, _), _)| w == who)
                .map(|((_, m), (n, not_modified))| {
                    if *not_modified > 0 {
                        format!("{m} {n} (304: {not_modified})")
                    } else {
                        format!("{m} {n}")
                    }
                })
                .collect();
            (!parts.is_empty()).then(|| format!("{who} {}", parts.join(" ")))
        })
        .collect::<Vec<_>>()
        .join("; ")
}

fn oauth_log(stack: &Stack) -> std::path::PathBuf {
    stack.dir.join("oauth.log")
}

pub fn oauth_log_len(stack: &Stack) -> u64 {
    std::fs::metadata(oauth_log(stack)).map(|m| m.len()).unwrap_or(0)
}

/// The OAuth server's access lines (`stack/node/oauth-server.mjs`: `access <unix ms> <method>
/// <path> <status>[ <grant type>]`) logged since `from`, as (seconds since the epoch, the rest).
pub fn oauth_access(stack: &Stack, from: u64) -> Vec<(f64, String)> {
    let log = std::fs::read(oauth_log(stack)).unwrap_or_default();
    let tail = String::from_utf8_lossy(&log[(from as usize).min(log.len())..]).into_owned();
    tail.lines()
        .filter_map(|l| l.strip_prefix("access "))
        .filter_map(|l| {
            let (ms, rest) = l.split_once(' ')?;
            Some((ms.parse::<f64>().ok()? / 1000.0, rest.to_owned()))
        })
        .collect()
}

/// The device-code token requests since `from`: when each arrived, and whether it was answered
/// with the token.
fn token_polls(stack: &Stack, from: u64) -> Vec<(f64, bool)> {
    oauth_access(stack, from)
        .into_iter()
        .filter(|(_, l)| l.ends_with("urn:ietf:params:oauth:grant-type:device_code"))
        .map(|(t, l)| (t, l.contains(" 200 ")))
        .collect()
}

/// (consent → the request answered with the token, the part of it spent waiting out the
/// interval) for a consent at `consent` (seconds since the epoch).
fn interval_wait(polls: &[(f64, bool)], consent: f64) -> Option<(f64, f64)> {
    let got = polls.iter().position(|(_, ok)| *ok)?;
    let token = polls[got].0 - consent;
    let waited = got > 0 && polls[got - 1].0 < consent;
    Some((token, if waited { token.max(0.0) } else { 0.0 }))
}

pub fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 { v[n / 2] } else { (v[n / 2 - 1] + v[n / 2]) / 2.0 }
}

/// The nearest-rank percentile: the smallest value with at least `p` of the values at or below it.
pub fn percentile(mut v: Vec<f64>, p: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    let rank = (p * v.len() as f64).ceil() as usize;
    v[rank.clamp(1, v.len()) - 1]
}

/// The tail of `v` as a table shows it: its p99 where there are 100 values or more, else its
/// largest (with fewer, the p99 is the largest anyway), named as such.
pub fn tail(v: &[f64], unit: &str, digits: usize) -> String {
    if v.len() >= 100 {
        format!("p99 {:.digits$}{unit}", percentile(v.to_vec(), 0.99))
    } else {
        format!("max {:.digits$}{unit}", v.iter().copied().fold(f64::NAN, f64::max))
    }
}

/// Runs a blocking step (the OAuth pages over curl) without holding up a runtime worker.
pub fn blocking<T>(f: impl FnOnce() -> T) -> T {
    tokio::task::block_in_place(f)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_are_nearest_rank() {
        let v: Vec<f64> = (1..=80).map(f64::from).collect();
        assert_eq!(percentile(v.clone(), 0.5), 40.0);
        assert_eq!(percentile(v.clone(), 0.99), 80.0, "of 80 values, the p99 is the largest");
        let v: Vec<f64> = (1..=1000).map(f64::from).collect();
        assert_eq!(percentile(v.clone(), 0.99), 990.0);
        assert_eq!(percentile(vec![3.0], 0.99), 3.0);
        assert_eq!(tail(&[1.0, 5.0, 2.0], " ms", 1), "max 5.0 ms");
        assert_eq!(tail(&(1..=200).map(f64::from).collect::<Vec<_>>(), " ms", 0), "p99 198 ms");
    }

    #[test]
    fn the_interval_wait_counts_only_after_a_pending_poll() {
        // Polled at 10 (pending), consent at 12, token at 15: 3 s waited on the interval.
        assert_eq!(interval_wait(&[(10.0, false), (15.0, true)], 12.0), Some((3.0, 3.0)));
        // First request after the consent: the delay is the machines'.
        assert_eq!(interval_wait(&[(12.5, true)], 12.0), Some((0.5, 0.0)));
        // No token: nothing to say.
        assert_eq!(interval_wait(&[(10.0, false)], 12.0), None);
    }

    #[test]
    fn rendezvous_requests_are_split_by_sender_and_method() {
        let line = |status: u16, method: &str, ua: &str| {
            format!(
                "2026-12-08 01:02:03,456 - synapse.access.http.18008 - 473 - INFO - GET-1 - 127.0.0.1 - 18008 - {{None}} Processed request: 0.001sec/-0.000sec (0.000sec, 0.000sec) (0.000sec/0.000sec/0) 0B {status} \"{method} /_matrix/client/unstable/org.matrix.msc4108/rendezvous/x HTTP/1.1\" \"{ua}\" [0 dbevts]"
            )
        };
        let lines = vec![
            line(304, "GET", "matrix-linkd/0.1.0"),
            line(200, "GET", "matrix-linkd/0.1.0"),
            line(202, "PUT", "matrix-linkd/0.1.0"),
            line(200, "GET", "matrix-rust-sdk"),
        ];
        assert_eq!(breakdown(lines.into_iter()), "daemon GET 2 (304: 1) PUT 1; other GET 1");
    }

    #[test]
    fn run_i_has_the_same_person_in_every_kind() {
        let a = Person::new(Duration::from_secs(2), 7, 3);
        let b = Person::new(Duration::from_secs(2), 7, 3);
        let c = Person::new(Duration::from_secs(2), 7, 4);
        assert_eq!(a.delays, b.delays);
        assert_ne!(a.delays, c.delays);
        assert!(a.delays.iter().all(|d| (1.0..=3.0).contains(&d.as_secs_f64())));
    }
}
