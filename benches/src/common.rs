//! What every row shares: the settings, the modelled person, phase clocks, and what Synapse's
//! access log says (rendezvous requests, when a token was issued).

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context as _, Result, anyhow};
use matrix_linkd_tests::stack::Stack;

/// The bench's knobs, from the environment.
pub struct Settings {
    /// `BENCH_RUNS` (3): flows of each kind.
    pub runs: usize,
    /// `BENCH_HUMAN_DELAY` (2 s): the person's time before each human step.
    pub delay: Duration,
    /// `BENCH_IDLE_SECS` (60): the idle window.
    pub idle_secs: u64,
    /// `BENCH_STARTS` (5): daemon start-ups of each kind.
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
            runs: env_or("BENCH_RUNS", 3usize)?.max(1),
            delay: Duration::from_secs_f64(delay),
            idle_secs: env_or("BENCH_IDLE_SECS", 60)?,
            starts: env_or("BENCH_STARTS", 5usize)?.max(1),
            flows,
        })
    }
}

/// The modelled person: sleeps `delay` before each human step and keeps the time it took.
pub struct Person {
    delay: Duration,
    pub took: Duration,
    pub steps: Vec<&'static str>,
}

impl Person {
    pub fn new(delay: Duration) -> Self {
        Self { delay, took: Duration::ZERO, steps: Vec::new() }
    }

    pub async fn step(&mut self, what: &'static str) {
        let t = Instant::now();
        tokio::time::sleep(self.delay).await;
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
    /// Consent given (the OAuth page's last answer) -> the OAuth server issued the new device's
    /// token (Synapse's access log). `None` when the log did not show it.
    pub token: Option<f64>,
}

impl Run {
    pub fn total(&self) -> f64 {
        self.phases.iter().sum()
    }

    /// The total less the person's time: what the machines (and the OAuth `interval`) cost.
    pub fn machine(&self) -> f64 {
        self.total() - self.person
    }
}

/// Times one flow: its phases, its person, and where Synapse's log stood.
pub struct Recorder<'a> {
    stack: &'a Stack,
    log_clock: f64,
    mark: u64,
    last: Instant,
    laps: Vec<f64>,
    consent: Option<(f64, u64)>,
    pub person: Person,
}

impl<'a> Recorder<'a> {
    pub fn start(cx: &Cx<'a>) -> Self {
        Recorder {
            stack: cx.stack,
            log_clock: cx.log_clock,
            mark: log_len(cx.stack),
            last: Instant::now(),
            laps: Vec::new(),
            consent: None,
            person: Person::new(cx.delay),
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
        self.consent = Some((unix_now(), log_len(self.stack)));
    }

    /// Ends the last phase (both devices done) and reads the log.
    pub fn finish(mut self) -> Result<Run> {
        self.lap();
        let phases: [f64; 5] = self.laps.try_into().map_err(|l: Vec<f64>| anyhow!("{} phases", l.len()))?;
        let token = self
            .consent
            .and_then(|(at, from)| token_issued(self.stack, from).map(|t| t - self.log_clock - at));
        Ok(Run {
            phases,
            person: self.person.took.as_secs_f64(),
            steps: self.person.steps,
            requests: access_lines(self.stack, self.mark).filter(|l| l.contains("rendezvous")).count(),
            token,
        })
    }
}

/// What the flows need: the stack, the account, the person's delay, Synapse's clock.
pub struct Cx<'a> {
    pub stack: &'a Stack,
    pub login: &'a str,
    pub delay: Duration,
    /// Synapse's log timestamps (local time) less our Unix time, in seconds.
    pub log_clock: f64,
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

/// A Synapse log line's timestamp (`2026-11-30 16:30:24,848`, its local time) as seconds since
/// the epoch, reading the local time as if it were UTC (`log_clock` holds the difference).
fn log_stamp(line: &str) -> Option<f64> {
    let y: i64 = line.get(0..4)?.parse().ok()?;
    let mo: i64 = line.get(5..7)?.parse().ok()?;
    let d: i64 = line.get(8..10)?.parse().ok()?;
    let (h, mi, s, ms) = (
        line.get(11..13)?.parse::<i64>().ok()?,
        line.get(14..16)?.parse::<i64>().ok()?,
        line.get(17..19)?.parse::<i64>().ok()?,
        line.get(20..23)?.parse::<f64>().ok()?,
    );
    // Days from 1970-01-01 (Howard Hinnant's days_from_civil).
    let y = if mo <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (mo + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some((days * 86_400 + h * 3600 + mi * 60 + s) as f64 + ms / 1000.0)
}

/// When the OAuth server issued a new device's token, from Synapse's log after `from`: it
/// provisions the device (`/_synapse/mas/upsert_device`) as it saves the token, and the new device
/// asks `whoami` as soon as it has it; the earlier of the two.
fn token_issued(stack: &Stack, from: u64) -> Option<f64> {
    access_lines(stack, from)
        .filter(|l| l.contains("/_synapse/mas/upsert_device") || l.contains("/account/whoami"))
        .find_map(|l| log_stamp(&l))
}

/// The offset of Synapse's log clock (local time, read as UTC) from ours: one tagged request,
/// rounded to the quarter hour that time zones move in.
pub async fn log_clock(stack: &Stack) -> Result<f64> {
    let tag = Stack::new_login("clock");
    let url = stack.synapse.join(&format!("_matrix/client/versions?linkd_bench={tag}"))?;
    let mark = log_len(stack);
    let before = unix_now();
    matrix_sdk::reqwest::get(url).await.context("Synapse")?.error_for_status()?;
    let sent = unix_now() / 2.0 + before / 2.0;
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        if let Some(at) = access_lines(stack, mark).filter(|l| l.contains(&tag)).find_map(|l| log_stamp(&l)) {
            return Ok(((at - sent) / 900.0).round() * 900.0);
        }
        anyhow::ensure!(Instant::now() < deadline, "Synapse did not log the clock request");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 { v[n / 2] } else { (v[n / 2 - 1] + v[n / 2]) / 2.0 }
}

pub fn percentile(mut v: Vec<f64>, p: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    v[((v.len() - 1) as f64 * p).round() as usize]
}

/// Runs a blocking step (the OAuth pages over curl) without holding up a runtime worker.
pub fn blocking<T>(f: impl FnOnce() -> T) -> T {
    tokio::task::block_in_place(f)
}
