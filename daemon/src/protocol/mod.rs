//! The QR login protocol engine, behind a small trait so the D-Bus layer never sees a protocol
//! type. The engine runs one task per flow on the one runner (`runner`); the D-Bus layer feeds it
//! commands and reads events, and learns what sets each kind of flow apart from `kinds`.

pub mod delegated;
pub mod device_grant;
pub mod devices;
pub mod engine;
pub mod intent;
pub mod kinds;
pub mod link;
pub mod rendezvous;
pub mod runner;

/// The wire formats (QR, messages, AAD, channels): the `matrix-linkd-wire` crate.
pub use matrix_linkd_wire as wire;

use std::{fmt, sync::Arc, time::Duration};

use async_trait::async_trait;
use matrix_sdk::Client;
use tokio::sync::{mpsc, oneshot};
use url::Url;

use crate::error::{LinkError, Result};
use matrix_linkd_wire::messages::HomeserverRef;

/// The D-Bus enums (the Flow's `Kind`, `Protocol` and `State` properties, with their `u32`
/// values): declared once in the `matrix-linkd-api` crate, which clients share.
pub use matrix_linkd_api::{FlowKind, FlowState, WireProtocol};

/// A value that must never be logged. `Debug` prints nothing of it.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret<T>(pub T);

impl<T> fmt::Debug for Secret<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// Progress reported by an engine. Each moves the flow to the state named in the comment.
#[derive(Debug, Clone)]
pub enum FlowEvent {
    /// `QrReady`: the daemon shows this QR code (protocol bytes).
    QrReady(Secret<Vec<u8>>),
    /// `WaitingForCheckCode`: the other device scanned our QR and shows a code; ask the user.
    WaitingForCheckCode,
    /// `ShowingCheckCode`: we scanned; show this two-digit code so the user types it there.
    ShowCheckCode(Secret<u8>),
    /// `WaitingForApproval` (grant, delegation): the new device asks to sign in; the user must
    /// consent. A delegation also has the user code the consent page may ask for.
    WaitingForApproval {
        verification_uri: Secret<String>,
        peer_device_id: Option<String>,
        user_code: Option<Secret<String>>,
    },
    /// `WaitingForToken`: grant: consent given, the new device is getting its token; login:
    /// waiting for the user to approve us on the other device (the user code may be shown).
    WaitingForToken { user_code: Option<Secret<String>> },
    /// `SyncingSecrets`: cross-signing and backup secrets are being sent or imported.
    SyncingSecrets,
    /// `SyncingSecrets` (delegation): the session document for `TakeSession` (JSON).
    SessionReady(Secret<Vec<u8>>),
}

/// What the user or the D-Bus owner asks of a running flow.
#[derive(Debug)]
pub enum FlowCommand {
    CheckCode(u8),
    Approve,
    /// Delegation: the owner took the session (`TakeSession`).
    SessionTaken,
    Cancel,
}

/// How a flow ended well: the `Response` results.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Success {
    pub user_id: String,
    /// The new device's ID (grant, delegation) or ours (login).
    pub device_id: String,
    /// Login: how the homeserver was found (`net::resolve::Found`).
    pub homeserver_found: Option<&'static str>,
    /// Delegation: how the new device got verified (`delegated::Trust`).
    pub trust: Option<&'static str>,
}

/// How a flow ended. Exactly one per flow.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FlowOutcome {
    Success(Success),
    Cancelled,
    Failed(LinkError),
}

impl FlowOutcome {
    /// For log lines.
    pub fn name(&self) -> &'static str {
        match self {
            FlowOutcome::Success(_) => "success",
            FlowOutcome::Cancelled => "cancelled",
            FlowOutcome::Failed(_) => "failed",
        }
    }
}

/// The D-Bus layer's end of a running flow.
pub struct FlowHandle {
    pub protocol: WireProtocol,
    pub events: mpsc::UnboundedReceiver<FlowEvent>,
    pub commands: mpsc::UnboundedSender<FlowCommand>,
    pub outcome: oneshot::Receiver<FlowOutcome>,
}

/// The engine's end of a running flow.
pub struct FlowPort {
    pub events: mpsc::UnboundedSender<FlowEvent>,
    pub commands: mpsc::UnboundedReceiver<FlowCommand>,
    pub outcome: oneshot::Sender<FlowOutcome>,
}

impl FlowHandle {
    pub fn pair(protocol: WireProtocol) -> (FlowHandle, FlowPort) {
        let (ev_tx, ev_rx) = mpsc::unbounded_channel();
        let (cmd_tx, cmd_rx) = mpsc::unbounded_channel();
        let (out_tx, out_rx) = oneshot::channel();
        (
            FlowHandle { protocol, events: ev_rx, commands: cmd_tx, outcome: out_rx },
            FlowPort { events: ev_tx, commands: cmd_rx, outcome: out_tx },
        )
    }
}

/// Which wire generation to use when the daemon generates the QR code (a scanned code brings its
/// own). The config's `protocol` key and the `protocol` option of `Start*`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize)]
#[serde(try_from = "String")]
pub enum GenerationChoice {
    /// 2024 where the homeserver offers it (every shipping client scans it), else the latest.
    #[default]
    Auto,
    V2024,
    Latest,
}

/// One parser for the config key and the D-Bus option: `auto`, `2024`, `latest`.
impl std::str::FromStr for GenerationChoice {
    type Err = LinkError;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "auto" => Ok(Self::Auto),
            "2024" => Ok(Self::V2024),
            "latest" => Ok(Self::Latest),
            _ => Err(LinkError::InvalidArgs("`protocol` is one of auto, 2024, latest".into())),
        }
    }
}

impl TryFrom<String> for GenerationChoice {
    type Error = LinkError;
    fn try_from(s: String) -> Result<Self> {
        s.parse()
    }
}

/// How the daemon registers itself with OAuth servers (RFC 7591) for its own logins: the config's
/// `[oauth]` table.
#[derive(Debug, Clone, serde::Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct OAuthClient {
    /// `client_name` sent with dynamic client registration.
    pub client_name: String,
    /// `client_uri` sent with dynamic client registration (must be https for most servers).
    pub client_uri: Url,
}

impl Default for OAuthClient {
    fn default() -> Self {
        Self {
            client_name: "matrix-linkd".to_owned(),
            client_uri: Url::parse("https://github.com/matrix-linkd/matrix-linkd").expect("static URL"),
        }
    }
}

/// Parameters of a grant flow.
#[derive(Debug)]
pub struct GrantRequest {
    pub generation: GenerationChoice,
    /// Bytes the caller scanned from the new device; `None` = the daemon shows the QR.
    pub qr_code: Option<Secret<Vec<u8>>>,
    pub timeout: Duration,
    pub device_creation_timeout: Duration,
}

/// Parameters of a login flow.
#[derive(Debug)]
pub struct LoginRequest {
    pub generation: GenerationChoice,
    /// Bytes the caller scanned from the existing device; `None` = the daemon shows the QR.
    pub qr_code: Option<Secret<Vec<u8>>>,
    /// Homeserver to create the rendezvous on when the daemon shows the QR, as the user gave it:
    /// a server name or a URL ([`crate::net::resolve::given`]).
    pub homeserver: Option<HomeserverRef>,
    pub device_display_name: String,
    pub timeout: Duration,
}

/// Parameters of a delegation flow.
#[derive(Debug)]
pub struct DelegationRequest {
    /// Shown to the user and registered with the OAuth server.
    pub client_name: String,
    pub device_display_name: String,
    /// Hand the private cross-signing keys and the backup key over (else the daemon signs).
    pub share_secrets: bool,
    /// The sandboxed app that asks (Flatpak or Snap app ID): it alone sees and revokes the device.
    pub app_id: Option<String>,
    pub timeout: Duration,
    /// From the session being ready to it being taken and, without shared secrets, to the new
    /// device's keys being on the homeserver.
    pub keys_timeout: Duration,
}

/// What a caller asks for: one request type per kind of flow.
#[derive(Debug)]
pub enum FlowRequest {
    Grant(GrantRequest),
    Login(LoginRequest),
    Delegation(DelegationRequest),
}

impl FlowRequest {
    pub fn kind(&self) -> FlowKind {
        match self {
            FlowRequest::Grant(_) => FlowKind::Grant,
            FlowRequest::Login(_) => FlowKind::Login,
            FlowRequest::Delegation(_) => FlowKind::Delegation,
        }
    }
}

/// Where a login flow puts the new session: the account layer implements it.
#[async_trait]
pub trait LoginTarget: Send + Sync {
    /// Before anything is shown: makes sure the session can be kept (not signed in, the keyring
    /// takes a fresh store key). Fails with `SecretStorage` without writing anything to disk.
    async fn prepare(&self) -> Result<()>;
    /// A fresh, signed-out client for the homeserver at `homeserver` (already resolved and
    /// checked), backed by the daemon's encrypted store under the key `prepare` kept.
    async fn new_client(&self, homeserver: &Url) -> Result<Client>;
    /// Keep the signed-in client: persist the session and publish it.
    async fn adopt(&self, client: Client) -> Result<()>;
    /// The login failed: forget the partial store.
    async fn abandon(&self);
}

/// Where a grant flow takes the secrets it shares: the account layer implements it.
#[async_trait]
pub trait SecretsSource: Send + Sync {
    /// The private cross-signing keys and the backup key. `MissingSecrets` when this device does
    /// not hold them.
    async fn secrets_bundle(&self) -> Result<matrix_sdk_base::crypto::types::SecretsBundle>;
}

/// Where a delegation flow keeps what it delegated: the account layer implements it.
#[async_trait]
pub trait DelegationRecords: Send + Sync {
    async fn remember(&self, record: delegated::Record) -> Result<()>;
    async fn forget(&self, device_id: &str) -> Result<()>;
}

/// The account as the engine sees it: the signed-in client, the secrets it shares, where a login
/// puts the new session and where delegations are recorded. The account layer implements it.
#[async_trait]
pub trait AccountPort: LoginTarget + SecretsSource + DelegationRecords + intent::Journal {
    /// The signed-in client; `NotSignedIn` without one.
    async fn signed_in(&self) -> Result<Client>;
}

/// A QR login protocol engine. Starting checks what can be checked at once (the QR code, the
/// secrets to share, the rendezvous server) so a caller gets those errors from `Start*` itself.
/// The D-Bus layer reaches the protocol through this trait only.
#[async_trait]
pub trait Engine: Send + Sync {
    /// Starts a flow of the request's kind for `account`.
    async fn start(&self, account: Arc<dyn AccountPort>, request: FlowRequest) -> Result<FlowHandle>;
    /// At shutdown, after the flows ended: waits (at most `limit`) for the clean-up they left
    /// behind (rendezvous sessions to delete). `false` when some was left undone.
    async fn settle(&self, limit: Duration) -> bool;
    /// The login protocols the homeserver of `client` offers, as `Capabilities` names them
    /// (`protocol-2024`, `protocol-msc4388`).
    async fn offered_protocols(&self, client: &Client) -> Vec<String>;
    /// Whether the homeserver still knows `device_id` of our account (`None`: it did not say).
    async fn device_known(&self, client: &Client, device_id: &str) -> Option<bool>;
    /// Ends a delegated device's session: revoked with a token the daemon still holds, else
    /// (unless `revoke_only`) the account page that ends it. `None`: nothing could be done.
    async fn end_delegation(
        &self,
        client: &Client,
        record: &delegated::Record,
        revoke_only: bool,
    ) -> Result<Option<delegated::Ended>>;
    /// At start-up: cleans up after the flows a killed daemon left in `account`'s journal
    /// ([`intent::settle`]); an intent a server did not answer for stays for the next start.
    async fn recover(&self, account: Arc<dyn AccountPort>);
}
