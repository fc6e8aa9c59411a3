//! The intent journal: what a flow makes outside the daemon (a rendezvous session, a device code,
//! tokens, a delegation record) is written down before it can matter, so that a daemon killed
//! mid-flow (kill -9, the OOM killer, a logout) cleans up on its next start: it deletes the
//! rendezvous session (the other device's next read finds it gone: its flow ends then, not at
//! expiry), takes a last look at a device code and revokes what it yields, revokes tokens nobody
//! holds, and keeps a record of a device it could not end (docs/crash.md).
//!
//! The journal's public part (kind, step, start) is a file in the data directory; what would let
//! someone act (the rendezvous URL, the device code, tokens) lives only in the Secret Service
//! (`account/intents.rs`). A live flow's own clean-up (`runner::Cleanup`) does the same with what
//! it holds in memory and then closes its intent; [`settle`] is the path of a flow nobody ended.
//!
//! What is not recorded before it exists is harmless by construction: a rendezvous session is
//! recorded before its QR code is shown (until then nobody knows its URL and it expires); an OAuth
//! client registration grants nothing without a device code, which is recorded before the consent
//! page or the other device can approve it.

use std::{
    sync::Arc,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use async_trait::async_trait;
use matrix_sdk::reqwest;
use serde::{Deserialize, Serialize};
use tracing::{info, warn};
use url::Url;

use super::{
    DelegationRecords, delegated,
    device_grant::{self, CodeEnd, Tokens},
};
use crate::{error::Result, net::Reach};

/// The flow kind an intent belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Grant,
    Login,
    Delegation,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Grant => "grant",
            Kind::Login => "login",
            Kind::Delegation => "delegation",
        }
    }
}

/// What the flow made (or is about to make) outside the daemon. Secret: kept in the Secret
/// Service only, never logged.
#[derive(Clone, Default, Serialize, Deserialize)]
pub struct Outside {
    /// The rendezvous session to delete: one we created, or the other device's that we joined and
    /// write to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rendezvous: Option<Url>,
    /// The homeserver whose OAuth server issued the code and the tokens.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub homeserver: Option<Url>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_id: Option<String>,
    /// The device code being polled: a last look settles whether tokens exist.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device_code: Option<String>,
    /// Tokens issued to the flow and not yet in safe hands (a login's before its session is kept,
    /// a delegation's before its program took them).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokens: Option<Tokens>,
    /// A delegation's record (without tokens), kept when tokens may live that nobody holds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub record: Option<delegated::Record>,
    /// A delegation's record with tokens is stored (`DelegationRecords`).
    #[serde(default)]
    pub recorded: bool,
    /// A delegation's program took the session: it holds the device.
    #[serde(default)]
    pub handed_over: bool,
}

/// One flow's entry in the journal.
#[derive(Clone, Serialize, Deserialize)]
pub struct Intent {
    pub id: String,
    pub kind: Kind,
    /// The last step written (`started`, `rendezvous`, `code`, `tokens`, `recorded`, `handed-over`).
    pub step: String,
    /// Seconds since the Unix epoch.
    pub started: u64,
    #[serde(default)]
    pub outside: Outside,
}

impl std::fmt::Debug for Intent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Intent")
            .field("id", &self.id)
            .field("kind", &self.kind)
            .field("step", &self.step)
            .finish_non_exhaustive()
    }
}

/// Where intents are kept: the account layer implements it (a file per intent in the data
/// directory, the secret part in the Secret Service).
#[async_trait]
pub trait Journal: Send + Sync {
    /// Writes (or replaces) the intent; when this returns, it survives a kill.
    async fn write(&self, intent: &Intent) -> Result<()>;
    /// The flow is over and its clean-up done.
    async fn remove(&self, id: &str) -> Result<()>;
    /// Every intent left by a daemon that did not end its flows (read once, at start-up).
    async fn left(&self) -> Result<Vec<Intent>>;
}

/// A journal in memory: for tests, and for the fault-injection harness's stand-in account. What
/// it holds can be looked at (`entries`).
#[derive(Default)]
pub struct InMemory(std::sync::Mutex<Vec<Intent>>);

impl InMemory {
    pub fn entries(&self) -> Vec<Intent> {
        self.0.lock().expect("not poisoned").clone()
    }
}

#[async_trait]
impl Journal for InMemory {
    async fn write(&self, intent: &Intent) -> Result<()> {
        let mut all = self.0.lock().expect("not poisoned");
        all.retain(|i| i.id != intent.id);
        all.push(intent.clone());
        Ok(())
    }
    async fn remove(&self, id: &str) -> Result<()> {
        self.0.lock().expect("not poisoned").retain(|i| i.id != id);
        Ok(())
    }
    async fn left(&self) -> Result<Vec<Intent>> {
        Ok(self.entries())
    }
}

/// A flow's intent, written as the flow goes.
pub struct Noted {
    journal: Arc<dyn Journal>,
    intent: Intent,
}

impl Noted {
    /// Opens the flow's intent (nothing outside yet).
    pub async fn open(journal: Arc<dyn Journal>, kind: Kind) -> Result<Self> {
        let intent = Intent {
            id: new_id(),
            kind,
            step: "started".into(),
            started: SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0),
            outside: Outside::default(),
        };
        journal.write(&intent).await?;
        Ok(Self { journal, intent })
    }

    pub fn outside(&self) -> &Outside {
        &self.intent.outside
    }

    pub fn intent(&self) -> &Intent {
        &self.intent
    }

    /// A point between two writes where a crash test may stop the flow ([`hold_point`]).
    pub async fn hold(&self, step: &'static str) {
        hold_point(self.intent.kind, step).await;
    }

    /// Records `step` and what it makes outside; what it names is acted on only after this
    /// returns. Fails closed: what cannot be recorded is not made.
    pub async fn note(&mut self, step: &'static str, change: impl FnOnce(&mut Outside)) -> Result<()> {
        change(&mut self.intent.outside);
        self.intent.step = step.into();
        self.journal.write(&self.intent).await?;
        hold_point(self.intent.kind, step).await;
        Ok(())
    }

    /// The flow ended and its own clean-up ran: nothing is left to do on a restart.
    pub async fn close(&self) {
        if let Err(e) = self.journal.remove(&self.intent.id).await {
            warn!(error = %e, "could not close the flow's intent; the next start settles it again");
        }
    }
}

/// Test builds only: `LINKD_HOLD_AT=<kind>:<step>` stops the flow for good right after it wrote
/// that step, so that a crash test kills the daemon exactly there, not somewhere near it.
async fn hold_point(kind: Kind, step: &str) {
    #[cfg(debug_assertions)]
    if std::env::var("LINKD_HOLD_AT").is_ok_and(|v| v == format!("{}:{step}", kind.as_str())) {
        info!(kind = kind.as_str(), step, "held at this step (LINKD_HOLD_AT)");
        std::future::pending::<()>().await;
    }
    #[cfg(not(debug_assertions))]
    let _ = (kind, step);
}

fn new_id() -> String {
    use rand::RngCore as _;
    let mut bytes = [0u8; 8];
    rand::rng().fill_bytes(&mut bytes);
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Bound on one intent's clean-up (at a stop, at start-up).
const SETTLE_LIMIT: Duration = Duration::from_secs(30);
/// Tries within it, and the pause between them.
const SETTLE_TRIES: u32 = 3;
const SETTLE_PAUSE: Duration = Duration::from_secs(5);

/// Cleans up after a flow that a killed daemon left: deletes its rendezvous session, settles its
/// device code, revokes tokens nobody holds, keeps a record of a device it could not end.
/// `true` when it is done (the intent may go); `false` when a server did not answer and the next
/// start should try again.
pub async fn settle(
    http: &reqwest::Client,
    reach: Reach,
    intent: &Intent,
    records: Option<&dyn DelegationRecords>,
) -> bool {
    // A server that failed once (a 5xx, a cut answer) is asked again, within the limit; no answer
    // in time: not done.
    let tries = async {
        for _ in 1..SETTLE_TRIES {
            if settle_inner(http, reach, intent, records).await {
                return true;
            }
            tokio::time::sleep(SETTLE_PAUSE).await;
        }
        settle_inner(http, reach, intent, records).await
    };
    tokio::time::timeout(SETTLE_LIMIT, tries).await.unwrap_or(false)
}

async fn settle_inner(
    http: &reqwest::Client,
    reach: Reach,
    intent: &Intent,
    records: Option<&dyn DelegationRecords>,
) -> bool {
    let o = &intent.outside;
    if let Some(url) = &o.rendezvous {
        // Gone already (expired, or the other device deleted it) is as good as deleted.
        let _ = http.delete(url.clone()).send().await;
        info!(kind = intent.kind.as_str(), "deleted the rendezvous session a stopped flow left");
    }
    // A program that took its delegated session holds the device; nothing else is ours to end.
    if o.handed_over || (o.tokens.is_none() && o.device_code.is_none()) {
        return true;
    }
    let (Some(homeserver), Some(client_id)) = (&o.homeserver, &o.client_id) else {
        return true;
    };
    let Ok(m) = device_grant::metadata(http, homeserver, reach).await else {
        warn!("the OAuth server did not answer; the stopped flow is settled at the next start");
        return false;
    };
    // Tokens issued to the flow and held by nobody now: written down, or found by a last look at
    // its code.
    let mut tokens = o.tokens.clone();
    let mut keep = None;
    if tokens.is_none()
        && let Some(code) = &o.device_code
    {
        match device_grant::end_code(http, &m, client_id, code).await {
            CodeEnd::Issued(t) => tokens = Some(t),
            CodeEnd::Unused => {}
            CodeEnd::Used => {
                warn!("a stopped flow's tokens were issued and lost; its device is recorded");
                keep = o.record.clone();
            }
        }
    }
    if let Some(t) = &tokens {
        match delegated::revoke(http, &m, client_id, t).await {
            Ok(()) => {
                info!(kind = intent.kind.as_str(), "revoked the tokens of a stopped flow");
                if o.recorded
                    && let (Some(r), Some(records)) = (&o.record, records)
                    && let Err(e) = records.forget(&r.device_id).await
                {
                    warn!(error = %e, "could not forget the delegation record");
                }
            }
            Err(_) if o.record.is_none() => {
                // A login's: no record can keep them; not done.
                warn!("the tokens of a stopped flow could not be revoked");
                return false;
            }
            Err(_) => {
                warn!("the tokens of a stopped flow could not be revoked; its device is recorded");
                keep = o.record.clone().map(|r| delegated::Record {
                    access_token: t.access_token.clone(),
                    refresh_token: t.refresh_token.clone(),
                    ..r
                });
            }
        }
    }
    if let (Some(record), Some(records)) = (keep, records)
        && let Err(e) = records.remember(record).await
    {
        warn!(error = %e, "could not record the device a stopped flow may have left");
        return false;
    }
    true
}

#[cfg(test)]
mod tests {
    use wiremock::{
        Mock, MockServer, ResponseTemplate,
        matchers::{method, path},
    };

    use super::*;
    use crate::{error::LinkError, net};

    /// Records what `settle` kept or forgot.
    #[derive(Default)]
    struct Records(std::sync::Mutex<Vec<String>>);

    #[async_trait]
    impl DelegationRecords for Records {
        async fn remember(&self, r: delegated::Record) -> std::result::Result<(), LinkError> {
            self.0.lock().unwrap().push(format!(
                "remember {} held={}",
                r.device_id,
                !r.access_token.is_empty()
            ));
            Ok(())
        }
        async fn forget(&self, device_id: &str) -> std::result::Result<(), LinkError> {
            self.0.lock().unwrap().push(format!("forget {device_id}"));
            Ok(())
        }
    }

    /// A homeserver whose OAuth server answers the token endpoint with `token` (status, body).
    async fn oauth(token: (u16, serde_json::Value)) -> MockServer {
        let server = MockServer::start().await;
        let base = server.uri();
        Mock::given(path("/_matrix/client/v1/auth_metadata"))
            .respond_with(ResponseTemplate::new(200).set_body_json(serde_json::json!({
                "issuer": format!("{base}/"),
                "token_endpoint": format!("{base}/token"),
                "device_authorization_endpoint": format!("{base}/device"),
                "revocation_endpoint": format!("{base}/revoke"),
                "grant_types_supported": [device_grant::DEVICE_CODE_GRANT],
            })))
            .mount(&server)
            .await;
        Mock::given(path("/token"))
            .respond_with(ResponseTemplate::new(token.0).set_body_json(token.1))
            .mount(&server)
            .await;
        Mock::given(path("/revoke")).respond_with(ResponseTemplate::new(200)).mount(&server).await;
        Mock::given(method("DELETE")).respond_with(ResponseTemplate::new(200)).mount(&server).await;
        server
    }

    fn intent(server: &MockServer, kind: Kind, outside: impl FnOnce(&mut Outside)) -> Intent {
        let mut o = Outside {
            rendezvous: Some(Url::parse(&format!("{}/rendezvous/abc", server.uri())).unwrap()),
            homeserver: Some(Url::parse(&format!("{}/", server.uri())).unwrap()),
            client_id: Some("client".into()),
            ..Default::default()
        };
        outside(&mut o);
        Intent { id: "1".into(), kind, step: "test".into(), started: 0, outside: o }
    }

    fn record() -> delegated::Record {
        delegated::Record {
            device_id: "DEV".into(),
            client_name: "c".into(),
            device_display_name: "d".into(),
            created: 0,
            client_id: "client".into(),
            access_token: String::new(),
            refresh_token: None,
            app_id: None,
        }
    }

    async fn requests(server: &MockServer) -> Vec<String> {
        let all = server.received_requests().await.unwrap();
        all.iter().map(|r| format!("{} {}", r.method, r.url.path())).collect()
    }

    /// Approved while the daemon was dead: the last look gets tokens, which are revoked; the
    /// session is deleted first.
    #[tokio::test]
    async fn a_code_approved_while_the_daemon_was_dead_yields_tokens_that_are_revoked() {
        let server = oauth((200, serde_json::json!({"access_token": "at", "refresh_token": "rt"}))).await;
        let i = intent(&server, Kind::Login, |o| o.device_code = Some("dc".into()));
        assert!(settle(&net::client(), Reach::ANYWHERE, &i, None).await);
        let seen = requests(&server).await;
        assert_eq!(seen.first().map(String::as_str), Some("DELETE /rendezvous/abc"));
        assert!(seen.iter().any(|r| r == "POST /revoke"), "{seen:?}");
    }

    /// Tokens lost with the process (the code is used): the delegation's record is kept, without
    /// tokens.
    #[tokio::test]
    async fn a_used_code_keeps_the_delegation_record() {
        let server = oauth((400, serde_json::json!({"error": "invalid_grant"}))).await;
        let i = intent(&server, Kind::Delegation, |o| {
            o.rendezvous = None;
            o.device_code = Some("dc".into());
            o.record = Some(record());
        });
        let records = Records::default();
        assert!(settle(&net::client(), Reach::ANYWHERE, &i, Some(&records)).await);
        assert_eq!(*records.0.lock().unwrap(), ["remember DEV held=false"]);
    }

    /// A delegation recorded but never taken: its tokens are revoked and its record forgotten; one
    /// taken by its program is left alone.
    #[tokio::test]
    async fn an_untaken_delegation_is_revoked_a_taken_one_left_alone() {
        let server = oauth((400, serde_json::json!({"error": "invalid_grant"}))).await;
        let tokens = Tokens { access_token: "at".into(), refresh_token: Some("rt".into()), expires_in: None };
        let recorded = |handed_over| {
            intent(&server, Kind::Delegation, |o| {
                o.rendezvous = None;
                o.tokens = Some(tokens.clone());
                o.record = Some(record());
                o.recorded = true;
                o.handed_over = handed_over;
            })
        };
        let records = Records::default();
        assert!(settle(&net::client(), Reach::ANYWHERE, &recorded(true), Some(&records)).await);
        assert!(requests(&server).await.is_empty(), "a taken session was touched");
        assert!(settle(&net::client(), Reach::ANYWHERE, &recorded(false), Some(&records)).await);
        let seen = server.received_requests().await.unwrap();
        let revoked = seen.iter().filter(|r| r.url.path() == "/revoke").collect::<Vec<_>>();
        assert_eq!(revoked.len(), 2, "both tokens revoked");
        assert!(revoked.iter().any(|r| std::str::from_utf8(&r.body).unwrap().contains("token=rt")));
        assert_eq!(*records.0.lock().unwrap(), ["forget DEV"]);
    }

    /// An OAuth server that does not answer leaves the intent for the next start.
    #[tokio::test]
    async fn an_unanswered_oauth_server_leaves_the_intent() {
        let server = MockServer::start().await;
        Mock::given(method("GET")).respond_with(ResponseTemplate::new(503)).mount(&server).await;
        let i = intent(&server, Kind::Login, |o| o.device_code = Some("dc".into()));
        assert!(!settle(&net::client(), Reach::ANYWHERE, &i, None).await);
    }

    /// A grant's intent names only its rendezvous session, and the journal file's part never holds
    /// it (`Intent`'s Debug shows no secret either).
    #[tokio::test]
    async fn a_grant_deletes_its_session_and_debug_shows_no_secret() {
        let server = oauth((400, serde_json::json!({}))).await;
        let i = intent(&server, Kind::Grant, |_| {});
        assert!(!format!("{i:?}").contains("rendezvous/abc"));
        assert!(settle(&net::client(), Reach::ANYWHERE, &i, None).await);
        assert_eq!(requests(&server).await, ["DELETE /rendezvous/abc"]);
    }
}
