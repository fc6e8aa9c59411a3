//! Client library for matrix-linkd: typed proxies ([`proxy`]) and a high-level API ([`Linkd`])
//! that subscribes to a flow before starting it and turns its `Response` into a `Result`.
//!
//! ```no_run
//! # async fn demo() -> Result<(), matrix_linkd_client::ClientError> {
//! use matrix_linkd_client::{Linkd, LoginOptions, FlowEvent, State};
//! let linkd = Linkd::connect().await?;
//! let mut flow = linkd.start_login(LoginOptions::default()).await?;
//! while let Some(event) = flow.next_event().await? {
//!     if let FlowEvent::State(State::QrReady) = event {
//!         println!("{}", String::from_utf8_lossy(&flow.qr_code("utf8").await?));
//!     }
//! }
//! let signed_in = flow.result().await?;
//! # Ok(()) }
//! ```
//!
//! A light client (a bot, a terminal or GTK client) gets a Matrix device of its own from the
//! signed-in daemon with [`Linkd::delegate`]; with the `matrix-sdk` feature,
//! `DelegatedSession::into_client` turns it into a ready `matrix_sdk::Client`. See [`delegation`].

pub mod cli;
pub mod delegation;
pub mod proxy;
pub mod qr;
#[cfg(feature = "matrix-sdk")]
mod sdk;

use std::collections::HashMap;

use futures_util::StreamExt;
use zbus::{
    Connection, MatchRule, MessageStream,
    message::Type as MessageType,
    names::InterfaceName,
    zvariant::{OwnedObjectPath, OwnedValue, Value},
};

pub use crate::{
    delegation::{DelegateOptions, DelegatedSession, Delegation, Revoked},
    proxy::{FlowProxy, ManagerProxy},
};

/// The D-Bus contract the daemon serves (names, enums, error names, option and result keys),
/// declared once in the `matrix-linkd-api` crate.
pub use matrix_linkd_api as api;
/// The Flow's `State`. Unknown values read as [`State::Unknown`], as the API asks.
pub use matrix_linkd_api::FlowState as State;
pub use matrix_linkd_api::{
    BUS_NAME, ERROR_PREFIX, FLOW_INTERFACE, FLOW_PATH_PREFIX, FlowKind, FlowState, MANAGER_INTERFACE,
    MANAGER_PATH, SessionState, WireProtocol,
};

/// Errors of the client library.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The daemon answered with an error (`name` is the full D-Bus error name).
    #[error("{message} ({name})")]
    Daemon { name: String, message: String },
    /// The flow was cancelled (by us, the user, or because its owner left).
    #[error("the flow was cancelled")]
    Cancelled,
    /// The bus itself failed.
    #[error("D-Bus: {0}")]
    Bus(zbus::Error),
    /// The Matrix client failed (`DelegatedSession::into_client`, feature `matrix-sdk`).
    #[error("Matrix client: {0}")]
    Matrix(Box<dyn std::error::Error + Send + Sync + 'static>),
    #[error("{0}")]
    Other(String),
}

impl ClientError {
    /// The full D-Bus error name (`io.github.matrix_linkd.Linkd1.Error.NotSignedIn`, one of
    /// [`api::errors`], or a standard one) for daemon errors.
    pub fn name(&self) -> Option<&str> {
        match self {
            ClientError::Daemon { name, .. } => Some(name),
            _ => None,
        }
    }

    /// The short error name (`NotSignedIn`, …) for daemon errors.
    pub fn short_name(&self) -> Option<&str> {
        match self {
            ClientError::Daemon { name, .. } => Some(name.rsplit('.').next().unwrap_or(name)),
            _ => None,
        }
    }
}

impl From<zbus::Error> for ClientError {
    fn from(e: zbus::Error) -> Self {
        match e {
            zbus::Error::MethodError(name, message, _) => {
                ClientError::Daemon { name: name.to_string(), message: message.unwrap_or_default() }
            }
            zbus::Error::FDO(fdo) => {
                let name = zbus::DBusError::name(&*fdo).to_string();
                let message = zbus::DBusError::description(&*fdo).unwrap_or_default().to_owned();
                ClientError::Daemon { name, message }
            }
            other => ClientError::Bus(other),
        }
    }
}

impl From<zbus::fdo::Error> for ClientError {
    fn from(e: zbus::fdo::Error) -> Self {
        zbus::Error::FDO(Box::new(e)).into()
    }
}

pub type Result<T, E = ClientError> = std::result::Result<T, E>;

/// A snapshot of the daemon's session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Status {
    pub state: SessionState,
    pub user_id: String,
    pub device_id: String,
    pub homeserver: String,
    pub capabilities: Vec<String>,
}

/// Options of `StartGrant`.
#[derive(Debug, Clone)]
pub struct GrantOptions {
    pub qr_code: Option<Vec<u8>>,
    pub detached: bool,
    pub notify: bool,
    pub open_uri: bool,
    /// Wire generation when the daemon shows the QR code: `auto`, `2024` or `latest`.
    pub protocol: Option<String>,
}

impl Default for GrantOptions {
    fn default() -> Self {
        Self { qr_code: None, detached: false, notify: true, open_uri: true, protocol: None }
    }
}

/// Options of `StartLogin`.
#[derive(Debug, Clone, Default)]
pub struct LoginOptions {
    pub qr_code: Option<Vec<u8>>,
    pub detached: bool,
    pub homeserver: Option<String>,
    pub device_display_name: Option<String>,
    /// Wire generation when the daemon shows the QR code: `auto`, `2024` or `latest`.
    pub protocol: Option<String>,
}

/// A successful flow.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedIn {
    pub user_id: String,
    /// Empty when the daemon could not learn it.
    pub device_id: String,
    /// A login: how the daemon found the homeserver (`url`, `well-known`, `server-name`,
    /// `rendezvous-server`); empty for a grant.
    pub homeserver_found: String,
    /// A delegation: `secrets-shared` (the client holds the keys and signed its own device) or
    /// `signed-by-daemon` (the daemon signed the device); empty otherwise.
    pub trust: String,
}

/// What a flow reports to its owner.
#[derive(Debug, Clone, PartialEq)]
pub enum FlowEvent {
    State(State),
    /// The daemon replaced a QR code that expired unscanned (`QrCodeSerial`, 2 and up): fetch the
    /// new one with [`Flow::qr_code`].
    QrCodeReplaced(u32),
}

/// Entry point: one connection to the session bus.
#[derive(Clone)]
pub struct Linkd {
    conn: Connection,
    manager: ManagerProxy<'static>,
}

impl Linkd {
    /// Connects to the session bus (`DBUS_SESSION_BUS_ADDRESS`).
    pub async fn connect() -> Result<Self> {
        Self::with_connection(Connection::session().await?).await
    }

    pub async fn with_connection(conn: Connection) -> Result<Self> {
        let manager =
            ManagerProxy::builder(&conn).cache_properties(zbus::proxy::CacheProperties::No).build().await?;
        Ok(Self { conn, manager })
    }

    pub fn connection(&self) -> &Connection {
        &self.conn
    }

    pub fn manager(&self) -> &ManagerProxy<'static> {
        &self.manager
    }

    pub async fn status(&self) -> Result<Status> {
        Ok(Status {
            state: self.manager.session_state().await?.into(),
            user_id: self.manager.user_id().await?,
            device_id: self.manager.device_id().await?,
            homeserver: self.manager.homeserver().await?,
            capabilities: self.manager.capabilities().await?,
        })
    }

    /// Yields whenever what [`Linkd::status`] reads may have changed: the Manager's properties
    /// changed (`PropertiesChanged` from the daemon's own connection: the bus routes the signals
    /// of the name's owner only), or the daemon came onto or left the bus. Each item is only a
    /// prompt: read [`Linkd::status`] again, the signal's values are not trusted.
    pub async fn status_changes(&self) -> Result<futures_util::stream::BoxStream<'static, ()>> {
        let properties = zbus::fdo::PropertiesProxy::builder(&self.conn)
            .destination(BUS_NAME)?
            .path(MANAGER_PATH)?
            .build()
            .await?;
        let changed = properties.receive_properties_changed().await?.filter_map(|signal| async move {
            signal.args().ok().filter(|a| a.interface_name.as_str() == MANAGER_INTERFACE).map(|_| ())
        });
        let dbus = zbus::fdo::DBusProxy::new(&self.conn).await?;
        let owner = dbus.receive_name_owner_changed_with_args(&[(0, BUS_NAME)]).await?.map(|_| ());
        Ok(futures_util::stream::select(changed, owner).boxed())
    }

    pub async fn sign_out(&self) -> Result<()> {
        Ok(self.manager.sign_out().await?)
    }

    pub async fn start_grant(&self, options: GrantOptions) -> Result<Flow> {
        let token = new_token();
        let mut opts: HashMap<&str, Value<'_>> = HashMap::new();
        opts.insert(api::options::HANDLE_TOKEN, Value::from(token.clone()));
        opts.insert(api::options::DETACHED, Value::from(options.detached));
        opts.insert(api::options::NOTIFY, Value::from(options.notify));
        opts.insert(api::options::OPEN_URI, Value::from(options.open_uri));
        if let Some(qr) = options.qr_code {
            opts.insert(api::options::QR_CODE, Value::from(qr));
        }
        if let Some(p) = options.protocol {
            opts.insert(api::options::PROTOCOL, Value::from(p));
        }
        self.start(&token, |m| async move { m.start_grant(opts).await }).await
    }

    pub async fn start_login(&self, options: LoginOptions) -> Result<Flow> {
        let token = new_token();
        let mut opts: HashMap<&str, Value<'_>> = HashMap::new();
        opts.insert(api::options::HANDLE_TOKEN, Value::from(token.clone()));
        opts.insert(api::options::DETACHED, Value::from(options.detached));
        if let Some(qr) = options.qr_code {
            opts.insert(api::options::QR_CODE, Value::from(qr));
        }
        if let Some(hs) = options.homeserver {
            opts.insert(api::options::HOMESERVER, Value::from(hs));
        }
        if let Some(name) = options.device_display_name {
            opts.insert(api::options::DEVICE_DISPLAY_NAME, Value::from(name));
        }
        if let Some(p) = options.protocol {
            opts.insert(api::options::PROTOCOL, Value::from(p));
        }
        self.start(&token, |m| async move { m.start_login(opts).await }).await
    }

    /// Subscribes to the predicted flow path, then calls `Start*`: no signal can be missed.
    async fn start<'a, F, Fut>(&'a self, token: &str, call: F) -> Result<Flow>
    where
        F: FnOnce(&'a ManagerProxy<'static>) -> Fut,
        Fut: std::future::Future<Output = zbus::Result<OwnedObjectPath>>,
    {
        let unique = self.conn.unique_name().ok_or_else(|| ClientError::Other("no unique name".into()))?;
        let predicted = api::flow_path(unique.as_str(), token);
        let rule = MatchRule::builder()
            .msg_type(MessageType::Signal)
            .sender(BUS_NAME)?
            .path(predicted.clone())?
            .build();
        let signals = MessageStream::for_match_rule(rule, &self.conn, Some(64)).await?;
        let path = call(&self.manager).await?;
        if path.as_str() != predicted {
            return Err(ClientError::Other(format!(
                "the daemon returned an unexpected path {}",
                path.as_str()
            )));
        }
        let proxy = FlowProxy::builder(&self.conn)
            .path(path.clone())?
            .cache_properties(zbus::proxy::CacheProperties::No)
            .build()
            .await?;
        let mut flow = Flow { proxy, signals, path, last_state: State::Starting, response: None };
        // The first state may have changed before the subscription's first read: sync once.
        if let Ok(s) = flow.proxy.state().await {
            flow.last_state = s.into();
        }
        Ok(flow)
    }
}

fn new_token() -> String {
    use rand::RngCore;
    let mut b = [0u8; 8];
    rand::rng().fill_bytes(&mut b);
    format!("c{}", hex::encode(b))
}

/// A running flow, owned by this connection.
pub struct Flow {
    proxy: FlowProxy<'static>,
    signals: MessageStream,
    path: OwnedObjectPath,
    last_state: State,
    response: Option<(u32, HashMap<String, OwnedValue>)>,
}

fn string_of(results: &HashMap<String, OwnedValue>, key: &str) -> String {
    results.get(key).and_then(|v| <&str>::try_from(&**v).ok()).unwrap_or_default().to_owned()
}

impl Flow {
    pub fn path(&self) -> &OwnedObjectPath {
        &self.path
    }

    pub fn proxy(&self) -> &FlowProxy<'static> {
        &self.proxy
    }

    /// The last state seen.
    pub fn state(&self) -> State {
        self.last_state
    }

    /// What the flow does (`Kind`).
    pub async fn kind(&self) -> Result<FlowKind> {
        Ok(self.proxy.kind().await?.into())
    }

    /// The next state change, or `None` once `Response` arrived.
    pub async fn next_event(&mut self) -> Result<Option<FlowEvent>> {
        if self.response.is_some() {
            return Ok(None);
        }
        while let Some(msg) = self.signals.next().await {
            let msg = msg?;
            let header = msg.header();
            match (header.interface().map(|i| i.as_str()), header.member().map(|m| m.as_str())) {
                (Some("org.freedesktop.DBus.Properties"), Some("PropertiesChanged")) => {
                    let body = msg.body();
                    let (iface, changed, _invalidated): (
                        InterfaceName<'_>,
                        HashMap<String, Value<'_>>,
                        Vec<String>,
                    ) = body.deserialize()?;
                    if iface.as_str() != FLOW_INTERFACE {
                        continue;
                    }
                    if let Some(Value::U32(serial)) = changed.get(api::properties::QR_CODE_SERIAL)
                        && *serial > 1
                    {
                        return Ok(Some(FlowEvent::QrCodeReplaced(*serial)));
                    }
                    if let Some(Value::U32(s)) = changed.get(api::properties::STATE) {
                        let state = State::from(*s);
                        if state != self.last_state {
                            self.last_state = state;
                            return Ok(Some(FlowEvent::State(state)));
                        }
                    }
                }
                (Some(FLOW_INTERFACE), Some(api::RESPONSE_SIGNAL)) => {
                    let (code, results): (u32, HashMap<String, OwnedValue>) = msg.body().deserialize()?;
                    self.response = Some((code, results));
                    return Ok(None);
                }
                _ => {}
            }
        }
        Err(ClientError::Other("the bus connection closed".into()))
    }

    /// Waits for `Response` and turns it into a result.
    pub async fn result(mut self) -> Result<SignedIn> {
        while self.next_event().await?.is_some() {}
        let (code, results) = self.response.take().expect("response seen");
        match code {
            api::response::SUCCESS => Ok(SignedIn {
                user_id: string_of(&results, api::results::USER_ID),
                device_id: string_of(&results, api::results::DEVICE_ID),
                homeserver_found: string_of(&results, api::results::HOMESERVER_FOUND),
                trust: string_of(&results, api::results::TRUST),
            }),
            api::response::CANCELLED => Err(ClientError::Cancelled),
            _ => Err(ClientError::Daemon {
                name: string_of(&results, api::results::ERROR),
                message: string_of(&results, api::results::MESSAGE),
            }),
        }
    }

    pub async fn qr_code(&self, format: &str) -> Result<Vec<u8>> {
        Ok(self.proxy.get_qr_code(format).await?)
    }

    pub async fn check_code(&self, code: u8) -> Result<()> {
        Ok(self.proxy.check_code(code).await?)
    }

    pub async fn check_code_to_show(&self) -> Result<u8> {
        Ok(self.proxy.check_code_to_show().await?)
    }

    pub async fn verification_uri(&self) -> Result<String> {
        Ok(self.proxy.verification_uri().await?)
    }

    pub async fn user_code(&self) -> Result<String> {
        Ok(self.proxy.user_code().await?)
    }

    pub async fn approve(&self) -> Result<()> {
        Ok(self.proxy.approve().await?)
    }

    pub async fn cancel(&self) -> Result<()> {
        Ok(self.proxy.cancel().await?)
    }
}
