//! The daemon's own QR login engine (MSC4108 over MSC4388), both wire generations, both roles, both
//! QR directions, on `matrix-linkd-wire` (the 2024 channel on vodozemac 0.10, the latest on our
//! HPKE channel), our rendezvous and device-grant clients, and
//! matrix-sdk's public client, OAuth and encryption APIs for the session it ends with.
//!
//! Rules it keeps (docs/protocol.md §9):
//! - the device that generated the QR code (G) acts on no message before its user typed the right
//!   check code; the scanner (S) shows the code;
//! - the existing device sends `m.login.protocol_accepted` only after local consent (`Approve`,
//!   which also opens the verification URI), and its secrets only once the new device exists;
//! - every exit after the channel exists tells the other device (`m.login.failure` with the
//!   matching reason, or `m.login.declined`), then the rendezvous session is deleted;
//! - no secret (QR bytes, keys, codes, URIs, tokens) reaches a log line or an error message;
//! - every value from the other device or a server passes `wire::policy` before it is used, and
//!   every request goes through `net` (no redirects, capped answers, https or loopback only).
//!
//! Every kind runs on the one runner (`protocol::runner`). What the kinds share is here (the
//! engine, the rendezvous leftovers, the dispatch); each kind has a file of its own (`grant`,
//! `login`, `delegation`), the handshakes theirs (`handshake`).

mod cache;
mod delegation;
mod grant;
mod handshake;
mod login;

use std::{collections::HashMap, sync::Arc, time::Duration};

use async_trait::async_trait;
use matrix_linkd_api::capabilities;
use matrix_sdk::{Client, reqwest};
use matrix_sdk_base::crypto::types::SecretsBundle;
use serde_json::Value;
use tokio::{sync::Mutex, time::Instant};
use tracing::{Instrument, debug, info, info_span, warn};
use url::Url;

use super::{
    AccountPort, DelegationRecords, Engine, FlowEvent, FlowHandle, FlowRequest, GenerationChoice,
    OAuthClient, Secret, Success, WireProtocol, delegated,
    device_grant::{self, GrantError},
    devices,
    intent::{self, Journal, Kind, Noted},
    link::{self, Link, Pace, Rendezvous, delete_later},
    rendezvous::{Session2024, SessionLatest},
    runner::{self, Cleanup, Flow, Stop, Tell, Ui},
    wire::{
        channel::{Channel, Generation, Generator, Initiated},
        messages::{DEVICE_AUTHORIZATION_GRANT, DeviceGrant, FailureReason, LoginMessage},
        policy,
        qr::{Intent, LoginQr, Prefix},
    },
};
use crate::{
    error::{LinkError, Result},
    net::{self, Reach},
};

/// The own engine. One instance per daemon; flows run as tasks.
pub struct OwnEngine {
    oauth: OAuthClient,
    /// Built on first use: building it loads the system's trust roots, which a signed-out
    /// daemon that is only starting needs not wait for.
    http_client: std::sync::OnceLock<reqwest::Client>,
    /// Dynamic registrations, by issuer: one client ID per OAuth server for the daemon's life.
    client_ids: Arc<Mutex<HashMap<String, String>>>,
    /// The servers flows may reach (`security.allow_insecure_http`, `allow_local_addresses`).
    reach: Reach,
    /// Recent answers by homeserver: its OAuth issuer, the generation `auto` picks there, and
    /// whether its `/versions` offers the 2024 rendezvous (asked by that choice and by the
    /// capabilities published at sign-in alike: one request for both).
    issuers: cache::Recent<Url>,
    generations: cache::Recent<Generation>,
    offers_2024: cache::Recent<bool>,
}

impl OwnEngine {
    /// The client for every request a flow makes ([`net::client_for`] this engine's reach).
    fn http(&self) -> &reqwest::Client {
        self.http_client.get_or_init(|| net::client_for(self.reach))
    }

    /// Whether `homeserver` offers the 2024 rendezvous, from a recent answer when there is one.
    /// An unreadable `/versions` counts as no, and is asked again next time.
    async fn offers_2024(&self, homeserver: &Url) -> bool {
        let ask = async || Session2024::offered(self.http(), homeserver).await.ok_or(());
        self.offers_2024.get_or(homeserver.as_str(), ask).await.unwrap_or(false)
    }

    pub fn new(oauth: &OAuthClient, reach: Reach) -> Self {
        Self {
            oauth: oauth.clone(),
            http_client: std::sync::OnceLock::new(),
            client_ids: Default::default(),
            reach,
            issuers: Default::default(),
            generations: Default::default(),
            offers_2024: Default::default(),
        }
    }
}

/// What a flow over a rendezvous session leaves behind: the session to delete and, once the
/// handshake is done, the channel to tell the other device on; and the flow's intent, which
/// knows it too, and a login's device code and tokens (`protocol::intent`).
struct Leftovers {
    generation: Generation,
    /// Before the handshake: only a session to delete.
    rv: Option<Rendezvous>,
    /// After it: the channel to tell the other device on.
    link: Option<Link>,
    noted: Noted,
    /// For a login's code and tokens, should the flow stop with them.
    http: reqwest::Client,
    reach: Reach,
}

impl Leftovers {
    /// Takes the session the flow now works on, written to the journal first (before its QR code
    /// is shown or we write to it).
    async fn hold_rendezvous(&mut self, rv: Rendezvous) -> Result<()> {
        let url = rv.url();
        self.rv = Some(rv);
        self.noted.note("rendezvous", |o| o.rendezvous = url).await
    }
}

#[async_trait]
impl Cleanup for Leftovers {
    /// The last reader deletes at once (it took the link already); the last writer leaves the
    /// other device time to read.
    async fn succeeded(&mut self) {
        if let Some(link) = self.link.take() {
            delete_later(link.rv);
        }
        self.noted.close().await;
    }

    /// Tells the other device (when there is a channel and something to say), then deletes the
    /// session once the other device had time to read that.
    async fn stopped(&mut self, tell: Tell) {
        if let Some(mut link) = self.link.take() {
            let msg = match tell {
                Tell::Nothing => None,
                Tell::Declined => Some(LoginMessage::Declined {}),
                // A 2024 peer does not know this reason.
                Tell::Failure(FailureReason::UnableToOpenVerificationUri)
                    if self.generation == Generation::V2024 =>
                {
                    Some(LoginMessage::failure(FailureReason::UserCancelled))
                }
                Tell::Failure(reason) => Some(LoginMessage::failure(reason)),
            };
            match &msg {
                Some(msg) => {
                    link.tell(msg).await;
                    delete_later(link.rv);
                }
                None => link.rv.delete().await,
            }
        } else if let Some(rv) = self.rv.take() {
            rv.delete().await;
        }
        // A login stopped with a device code or tokens: tokens that came (or come on a last
        // look) are revoked, so no device is left that nobody holds.
        let o = self.noted.outside();
        if o.device_code.is_some() || o.tokens.is_some() {
            let mut what = self.noted.intent().clone();
            what.outside.rendezvous = None;
            if !intent::settle(&self.http, self.reach, &what, None).await {
                // Left in the journal: the next start tries again.
                return;
            }
        }
        self.noted.close().await;
    }
}

/// What a flow over a rendezvous session starts from: its generation and, when the daemon
/// generated the QR code, the session it created and the code to show.
struct Opening {
    generation: Generation,
    created: Option<(Rendezvous, Vec<u8>)>,
}

impl Opening {
    /// The flow's leftovers so far (the session we created, in the journal before its QR code is
    /// shown) and the QR code to show first.
    async fn split(
        self,
        engine: &OwnEngine,
        journal: Arc<dyn Journal>,
        kind: Kind,
    ) -> Result<(Leftovers, Option<FlowEvent>)> {
        let noted = Noted::open(journal, kind).await?;
        let mut left = Leftovers {
            generation: self.generation,
            rv: None,
            link: None,
            noted,
            http: engine.http().clone(),
            reach: engine.reach,
        };
        let (rv, qr) = self.created.unzip();
        if let Some(rv) = rv {
            left.hold_rendezvous(rv).await?;
        }
        Ok((left, qr.map(|qr| FlowEvent::QrReady(Secret(qr)))))
    }
}

// ---------------------------------------------------------------------------------------------
// The engine

#[async_trait]
impl Engine for OwnEngine {
    async fn start(&self, account: Arc<dyn AccountPort>, request: FlowRequest) -> Result<FlowHandle> {
        match request {
            FlowRequest::Grant(r) => self.start_grant(account, r).await,
            FlowRequest::Login(r) => self.start_login(account, r).await,
            FlowRequest::Delegation(r) => self.start_delegation(account, r).await,
        }
    }

    async fn settle(&self, limit: Duration) -> bool {
        link::wait_pending_deletes(limit).await
    }

    async fn offered_protocols(&self, client: &Client) -> Vec<String> {
        let homeserver = client.homeserver();
        let token = client.access_token();
        let (v2024, latest) = tokio::join!(
            self.offers_2024(&homeserver),
            SessionLatest::discover(self.http(), &homeserver, token.as_deref()),
        );
        let mut offered = Vec::new();
        if v2024 {
            offered.push(capabilities::PROTOCOL_2024.to_owned());
        }
        if latest == Ok(true) {
            offered.push(capabilities::PROTOCOL_MSC4388.to_owned());
        }
        offered
    }

    async fn device_known(&self, client: &Client, device_id: &str) -> Option<bool> {
        devices::known(client, device_id).await
    }

    async fn end_delegation(
        &self,
        client: &Client,
        record: &delegated::Record,
        revoke_only: bool,
    ) -> Result<Option<delegated::Ended>> {
        delegated::end_session(self.http(), self.reach, client, record, revoke_only).await
    }

    async fn recover(&self, account: Arc<dyn AccountPort>) {
        let left = match account.left().await {
            Ok(left) => left,
            Err(e) => {
                warn!(error = %e, "cannot read the intent journal; flows a killed daemon left are not cleaned up");
                return;
            }
        };
        for intent in left {
            info!(
                kind = intent.kind.as_str(),
                step = intent.step,
                "cleaning up after a flow a stopped daemon left"
            );
            if intent::settle(
                self.http(),
                self.reach,
                &intent,
                Some(account.as_ref() as &dyn DelegationRecords),
            )
            .await
                && let Err(e) = account.remove(&intent.id).await
            {
                warn!(error = %e, "could not close a settled intent");
            }
        }
    }
}

fn qr_generation(qr: &LoginQr) -> Generation {
    match qr {
        LoginQr::V2024 { .. } => Generation::V2024,
        LoginQr::Msc4388 { .. } => Generation::Latest,
    }
}

#[cfg(test)]
mod tests;
