//! N grants started at once on one signed-in daemon (`limits.max_flows = N`, two flows a
//! connection as the default per-caller limit allows): time until all are at `QrReady`, the bare
//! `StartGrant` call's latency, and the latency of a cheap property read from another connection
//! during the burst. Then every flow is cancelled and the daemon must still be signed in.

use std::{
    collections::HashMap,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Result, anyhow, bail};
use futures_util::StreamExt;
use matrix_linkd_client::{BUS_NAME, FLOW_INTERFACE, Linkd, SessionState, State, api};
use matrix_linkd_tests::Session;
use zbus::{MatchRule, MessageStream, message::Type as MessageType, zvariant::Value};

use crate::{
    common::{access_lines, median, oauth_access, percentile},
    idle::usage,
};
use matrix_linkd_tests::stack::Stack;

pub struct Burst {
    pub flows: usize,
    pub connections: usize,
    /// Flows that reached `QrReady`.
    pub ready: usize,
    /// Burst start -> the last flow at `QrReady`, in seconds.
    pub all_ready: f64,
    /// `StartGrant` round trips, in ms.
    pub calls: Vec<f64>,
    /// `Properties.Get(SessionState)` round trips during the burst, in ms.
    pub probes: Vec<f64>,
    pub rss_mib: f64,
    /// `Cancel` on every flow -> the last `Response`, in seconds.
    pub cancelled_in: f64,
    pub cancelled: usize,
    pub signed_in_after: bool,
    pub first_error: Option<String>,
    /// Requests of each kind to the homeserver and the OAuth server from the daemon's start to the
    /// last flow at `QrReady` (their access logs): discovery, and the rendezvous creations.
    pub requests: Vec<(&'static str, usize)>,
}

/// The requests the burst row counts: (name, whether Synapse's log holds it (else the OAuth
/// server's), whether a line is one).
type Counted = (&'static str, bool, fn(&str) -> bool);
const COUNTED: [Counted; 5] = [
    ("`/.well-known/matrix/client`", true, |l| l.contains("/.well-known/matrix/client")),
    ("`/_matrix/client/versions`", true, |l| l.contains("/_matrix/client/versions")),
    ("`auth_metadata`", true, |l| l.contains("/auth_metadata")),
    ("OAuth server metadata", false, |l| l.contains("/.well-known/openid-configuration")),
    // A creation is a `POST` to the endpoint itself; later requests name a session under it.
    ("rendezvous creations", true, |l| l.contains("\"POST /") && l.contains("/rendezvous HTTP")),
];

/// Counts [`COUNTED`] in the logs since the marks.
fn count_requests(stack: &Stack, synapse_from: u64, oauth_from: u64) -> Vec<(&'static str, usize)> {
    let synapse: Vec<String> = access_lines(stack, synapse_from).collect();
    let oauth = oauth_access(stack, oauth_from);
    COUNTED
        .iter()
        .map(|(name, on_synapse, is)| {
            let n = if *on_synapse {
                synapse.iter().filter(|l| is(l)).count()
            } else {
                oauth.iter().filter(|(_, l)| is(l)).count()
            };
            (*name, n)
        })
        .collect()
}

/// One flow, subscribed to before it is started (as `matrix_linkd_client` does).
struct Slot {
    linkd: Linkd,
    token: String,
    path: String,
    signals: MessageStream,
}

/// Waits for the flow's `State` to be `want` (true), or for its `Response` (false).
async fn until_state(signals: &mut MessageStream, want: u32) -> Result<bool> {
    while let Some(msg) = signals.next().await {
        let msg = msg?;
        let header = msg.header();
        match header.member().map(|m| m.as_str()) {
            Some("PropertiesChanged") => {
                let body = msg.body();
                let (_, changed, _): (String, HashMap<String, Value<'_>>, Vec<String>) =
                    body.deserialize()?;
                if let Some(Value::U32(s)) = changed.get(api::properties::STATE)
                    && *s == want
                {
                    return Ok(true);
                }
            }
            Some(api::RESPONSE_SIGNAL) => return Ok(false),
            _ => {}
        }
    }
    bail!("the bus connection closed")
}

async fn start(slot: &Slot) -> Result<Duration> {
    let mut opts = HashMap::new();
    opts.insert(api::options::HANDLE_TOKEN, Value::from(slot.token.as_str()));
    opts.insert(api::options::NOTIFY, Value::from(false));
    opts.insert(api::options::OPEN_URI, Value::from(false));
    let t = Instant::now();
    let path = slot.linkd.manager().start_grant(opts).await?;
    let call = t.elapsed();
    if path.as_str() != slot.path {
        bail!("StartGrant returned {}, not {}", path.as_str(), slot.path);
    }
    Ok(call)
}

/// `marks`: where the servers' logs stood (Synapse's, the OAuth server's) when the daemon started.
pub async fn burst(stack: &Stack, marks: (u64, u64), session: &Session, pid: u32, n: usize) -> Result<Burst> {
    let connections = n.div_ceil(2);
    let mut linkds = Vec::new();
    for _ in 0..connections {
        linkds.push(session.client().await?);
    }
    let mut slots = Vec::new();
    for i in 0..n {
        let linkd = linkds[i / 2].clone();
        let unique = linkd.connection().unique_name().ok_or_else(|| anyhow!("no unique name"))?.to_string();
        let token = format!("bench{i}");
        let path = api::flow_path(&unique, &token);
        let rule =
            MatchRule::builder().msg_type(MessageType::Signal).sender(BUS_NAME)?.path(path.clone())?.build();
        let signals = MessageStream::for_match_rule(rule, linkd.connection(), Some(64)).await?;
        slots.push(Slot { linkd, token, path, signals });
    }

    let probe_linkd = session.client().await?;
    let stop = Arc::new(AtomicBool::new(false));
    let probe = tokio::spawn({
        let stop = stop.clone();
        async move {
            let mut v = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let t = Instant::now();
                probe_linkd.manager().session_state().await?;
                v.push(t.elapsed().as_secs_f64() * 1000.0);
            }
            anyhow::Ok((v, probe_linkd))
        }
    });
    let t0 = Instant::now();
    let tasks: Vec<_> = slots
        .into_iter()
        .map(|mut slot| {
            tokio::spawn(async move {
                let outcome = async {
                    let call = start(&slot).await?;
                    let ready = tokio::time::timeout(
                        Duration::from_secs(60),
                        until_state(&mut slot.signals, State::QrReady as u32),
                    )
                    .await
                    .map_err(|_| anyhow!("not at QrReady after 60 s"))??;
                    anyhow::ensure!(ready, "the flow ended before QrReady");
                    Ok((call, t0.elapsed()))
                }
                .await;
                (slot, outcome)
            })
        })
        .collect();
    let mut slots = Vec::new();
    let (mut calls, mut ready_at, mut first_error) = (Vec::new(), Vec::new(), None);
    for task in tasks {
        let (slot, outcome) = task.await?;
        match outcome {
            Ok((call, at)) => {
                calls.push(call.as_secs_f64() * 1000.0);
                ready_at.push(at.as_secs_f64());
                slots.push(slot);
            }
            Err(e) => {
                first_error.get_or_insert_with(|| format!("{e:#}"));
                slots.push(slot);
            }
        }
    }
    stop.store(true, Ordering::Relaxed);
    let (probes, probe_linkd) = probe.await??;
    // Synapse logs a request once it is answered: every flow at `QrReady` has had its answers.
    let requests = count_requests(stack, marks.0, marks.1);
    let rss_mib = usage(pid).map(|u| u.rss as f64 / 1024.0).unwrap_or(f64::NAN);

    let t1 = Instant::now();
    let cancels: Vec<_> = slots
        .into_iter()
        .map(|mut slot| {
            tokio::spawn(async move {
                let conn = slot.linkd.connection().clone();
                conn.call_method(Some(BUS_NAME), slot.path.as_str(), Some(FLOW_INTERFACE), "Cancel", &())
                    .await?;
                tokio::time::timeout(Duration::from_secs(30), until_state(&mut slot.signals, u32::MAX))
                    .await
                    .map_err(|_| anyhow!("no Response 30 s after Cancel"))??;
                anyhow::Ok(())
            })
        })
        .collect();
    let mut cancelled = 0;
    for c in cancels {
        match c.await? {
            Ok(()) => cancelled += 1,
            Err(e) => {
                first_error.get_or_insert_with(|| format!("cancel: {e:#}"));
            }
        }
    }
    let cancelled_in = t1.elapsed().as_secs_f64();
    let signed_in_after = probe_linkd.manager().session_state().await? == SessionState::SignedIn as u32;
    Ok(Burst {
        flows: n,
        connections,
        ready: ready_at.len(),
        all_ready: ready_at.iter().copied().fold(0.0, f64::max),
        calls,
        probes,
        rss_mib,
        cancelled_in,
        cancelled,
        signed_in_after,
        first_error,
        requests,
    })
}

/// p50, p99 (nearest rank; shown where there are 100 values or more) and max, in ms.
fn ms(v: &[f64]) -> String {
    let max = v.iter().copied().fold(f64::NAN, f64::max);
    if v.len() >= 100 {
        format!(
            "p50 {:.1} ms · p99 {:.1} ms · max {max:.1} ms",
            percentile(v.to_vec(), 0.5),
            percentile(v.to_vec(), 0.99)
        )
    } else {
        format!("p50 {:.1} ms · max {max:.1} ms ({} values: no p99)", percentile(v.to_vec(), 0.5), v.len())
    }
}

impl Burst {
    pub fn markdown(&self) -> Vec<String> {
        vec![
            "| figure | value |".into(),
            "|---|---|".into(),
            format!(
                "| {} `StartGrant` at once ({} connections × 2) → all at `QrReady` | {:.2} s ({} of {} reached it) |",
                self.flows, self.connections, self.all_ready, self.ready, self.flows
            ),
            format!("| `StartGrant` call (bare method round trip) | {} |", ms(&self.calls)),
            format!(
                "| `Properties.Get(SessionState)` from another connection during the burst ({} calls) | {} (median {:.1} ms) |",
                self.probes.len(),
                ms(&self.probes),
                median(self.probes.clone())
            ),
            format!(
                "| requests from the daemon's start (it restarted after signing in: nothing learnt) to the last `QrReady`, one homeserver | {} |",
                self.requests.iter().map(|(what, n)| format!("{what} {n}")).collect::<Vec<_>>().join(" · ")
            ),
            format!("| daemon RSS with the flows at `QrReady` | {:.1} MiB |", self.rss_mib),
            format!(
                "| `Cancel` on every flow → the last `Response` | {:.2} s ({} cancelled); signed in afterwards: {} |",
                self.cancelled_in,
                self.cancelled,
                if self.signed_in_after { "yes" } else { "**no**" }
            ),
        ]
    }
}
