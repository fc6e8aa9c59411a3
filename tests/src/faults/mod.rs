//! A deterministic fault-injection harness over the daemon's real engine (`protocol::engine`, its
//! rendezvous and HTTP clients, matrix-sdk for the account's requests), with in-process stand-ins
//! for the servers (`server`) and a scripted other device (`peer`). Every case runs on a
//! single-threaded runtime with a paused clock: time moves only when every task waits, so a case is
//! a function of its plan alone, and minutes of protocol time cost milliseconds.
//!
//! A plan maps the index of a request the daemon makes to a fault. `case::run` runs one flow under
//! a plan and checks the invariants (docs/testing.md, "Fault injection").

pub mod case;
pub mod peer;
mod routes;
pub mod server;

use std::collections::BTreeMap;

use rand::{Rng, SeedableRng, rngs::StdRng};

/// One fault at one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Fault {
    /// The connection is aborted before the request is read.
    Refused,
    /// The request is carried out; the answer is cut off half-way by a reset.
    Reset,
    /// The request is carried out; the answer never comes.
    Timeout,
    /// A worker or proxy error, a missing route, a conflict: the request is not carried out.
    Status(u16),
    /// The request is carried out; the answer stops half-way and the connection closes.
    Truncated,
    /// The request is carried out; the answer carries a megabyte more than it should.
    Oversized,
    /// The request is carried out; the answer is the one given to the previous request of its kind.
    Replayed,
    /// The request is carried out; the answer is written twice on the connection.
    Duplicated,
    /// Ten minutes pass before the request is answered (a lid closed, a suspended VM).
    ClockJump,
    /// The other device stops acting from this request on.
    Silent,
}

/// Every single fault the exhaustive pass injects at each request.
pub const ALL: [Fault; 15] = [
    Fault::Refused,
    Fault::Reset,
    Fault::Timeout,
    Fault::Status(500),
    Fault::Status(502),
    Fault::Status(503),
    Fault::Status(404),
    Fault::Status(409),
    Fault::Status(412),
    Fault::Truncated,
    Fault::Oversized,
    Fault::Replayed,
    Fault::Duplicated,
    Fault::ClockJump,
    Fault::Silent,
];

impl std::fmt::Display for Fault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Fault::Status(code) => write!(f, "status-{code}"),
            other => write!(f, "{}", format!("{other:?}").to_lowercase()),
        }
    }
}

impl Fault {
    /// The request was carried out and its answer may never have reached the client whole (a
    /// clock jump: the flow's deadline may have stopped it while it waited).
    pub fn loses_answer(self) -> bool {
        matches!(
            self,
            Fault::Reset
                | Fault::Timeout
                | Fault::Truncated
                | Fault::Oversized
                | Fault::Replayed
                | Fault::ClockJump
        )
    }

    /// The errors (`LinkError` kinds) a flow may end with when this fault hit it; success is
    /// always allowed (the fault was survived). Anything else is a wrong error name.
    pub fn allowed(self) -> &'static [&'static str] {
        match self {
            Fault::Refused | Fault::Reset | Fault::Truncated => &["Network"],
            Fault::Status(500..=599) => &["Network"],
            // A write whose answer never came may have been answered by the other device before
            // the retry: a conflict.
            Fault::Timeout => &["Network", "ProtocolError"],
            // A missing OAuth route is the OAuth server refusing (a `Network` error names it).
            Fault::Status(404) => &["Expired", "Unsupported", "Network"],
            Fault::Status(_) => &["ProtocolError", "Network"],
            Fault::Oversized | Fault::Replayed | Fault::Duplicated => &["ProtocolError", "Network"],
            Fault::ClockJump => &["Expired", "Network"],
            Fault::Silent => &["Expired"],
        }
    }
}

/// A random plan: each of the first `requests` requests faults with probability 1 in `one_in`.
pub fn random_plan(seed: u64, requests: usize, one_in: u32) -> BTreeMap<usize, Fault> {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut plan = BTreeMap::new();
    for i in 0..requests {
        if rng.random_ratio(1, one_in) {
            plan.insert(i, ALL[rng.random_range(0..ALL.len())]);
        }
    }
    plan
}
