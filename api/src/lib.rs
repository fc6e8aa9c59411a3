//! The D-Bus contract of matrix-linkd, declared once: the bus name, object paths and interface
//! names, the enums carried as `u32` properties with their values, the `Response` codes, the
//! error names, the keys of the `a{sv}` options and results, and the capability strings.
//!
//! The daemon (`matrix-linkd`) serves these names and the client library
//! (`matrix-linkd-client`, which re-exports this crate as `api`) calls them, so the two cannot
//! drift apart. The interface description for other languages is `dbus/*.xml`; this crate's tests
//! check it names what is declared here.
//!
//! Only `std`: anything that speaks the interface can depend on this crate for nothing.

use std::fmt;

pub mod permissions;

/// The well-known name the daemon owns on the session bus.
pub const BUS_NAME: &str = "io.github.matrix_linkd.Linkd1";
/// The object path of the Manager.
pub const MANAGER_PATH: &str = "/io/github/matrix_linkd/Linkd1";
/// Flows live under this path: `<FLOW_PATH_PREFIX>/<SENDER>/<TOKEN>` (see [`flow_path`]).
pub const FLOW_PATH_PREFIX: &str = "/io/github/matrix_linkd/Linkd1/flow";
/// The Manager's interface (`dbus/io.github.matrix_linkd.Linkd1.Manager.xml`).
pub const MANAGER_INTERFACE: &str = "io.github.matrix_linkd.Linkd1.Manager";
/// The interface of each flow object (`dbus/io.github.matrix_linkd.Linkd1.Flow.xml`).
pub const FLOW_INTERFACE: &str = "io.github.matrix_linkd.Linkd1.Flow";
/// What every error name of the daemon's own starts with, the dot included (see [`errors`]).
pub const ERROR_PREFIX: &str = "io.github.matrix_linkd.Linkd1.Error.";
/// The value of the Manager's `Version` property: the version of this interface.
pub const INTERFACE_VERSION: u32 = 1;

/// The path of the flow that the connection `unique_name` (`:1.42`) starts with the
/// `handle_token` option `token`: SENDER is the unique name without `:` and with `.` replaced by
/// `_`. A caller that knows the path before `Start*` returns can subscribe to the flow's signals
/// first and miss none (the pattern of `org.freedesktop.portal.Request`).
pub fn flow_path(unique_name: &str, token: &str) -> String {
    format!("{FLOW_PATH_PREFIX}/{}/{token}", flow_sender(unique_name))
}

/// The SENDER part of the flow paths of the connection `unique_name`: `:1.42` is `1_42`.
pub fn flow_sender(unique_name: &str) -> String {
    unique_name.trim_start_matches(':').replace('.', "_")
}

/// The SENDER part of `path` when it is a flow path or a caller's node below
/// [`FLOW_PATH_PREFIX`].
pub fn sender_of(path: &str) -> Option<&str> {
    path.strip_prefix(FLOW_PATH_PREFIX)?.strip_prefix('/')?.split('/').next().filter(|s| !s.is_empty())
}

/// A `u32` on the wire that is not one of an enum's values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UnknownValue {
    /// What the enum is (`FlowKind`, …).
    pub what: &'static str,
    pub value: u32,
}

impl fmt::Display for UnknownValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} is not a known {}", self.value, self.what)
    }
}

impl std::error::Error for UnknownValue {}

/// Which side of the link the daemon plays: the Flow's `Kind` property.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u32)]
pub enum FlowKind {
    /// Not a value the daemon sends: how a client reads a value it does not know.
    Unknown = 0,
    /// The daemon is the signed-in existing device and lets a new device in (`StartGrant`).
    Grant = 1,
    /// The daemon is the new device and gets signed in (`StartLogin`).
    Login = 2,
    /// The daemon provisions a new device of a local program's own, no QR code, no peer
    /// (`StartDelegation`).
    Delegation = 3,
}

impl FlowKind {
    /// Every value, in order.
    pub const ALL: [FlowKind; 4] =
        [FlowKind::Unknown, FlowKind::Grant, FlowKind::Login, FlowKind::Delegation];

    /// Reads a `Kind` value; values this version does not know read as [`FlowKind::Unknown`].
    pub fn from_u32(v: u32) -> Self {
        Self::ALL.into_iter().find(|k| *k as u32 == v).unwrap_or(FlowKind::Unknown)
    }
}

impl From<u32> for FlowKind {
    fn from(v: u32) -> Self {
        Self::from_u32(v)
    }
}

impl From<FlowKind> for u32 {
    fn from(v: FlowKind) -> Self {
        v as u32
    }
}

/// The wire generation of a flow: the Flow's `Protocol` property.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u32)]
pub enum WireProtocol {
    /// No wire protocol: a delegation has no other device to talk to.
    None = 0,
    /// MSC4108 as of 2024: ETag rendezvous, ECIES, `MATRIX\x02` QR codes.
    V2024 = 1,
    /// MSC4108 + MSC4388: sequence-token rendezvous, HPKE.
    Msc4388 = 2,
}

impl WireProtocol {
    /// Every value, in order.
    pub const ALL: [WireProtocol; 3] = [WireProtocol::None, WireProtocol::V2024, WireProtocol::Msc4388];

    /// Reads a `Protocol` value; `None` (the `Option`) for a value this version does not know
    /// (`0` is [`WireProtocol::None`], a known value).
    pub fn from_u32(v: u32) -> Option<Self> {
        Self::ALL.into_iter().find(|p| *p as u32 == v)
    }
}

impl TryFrom<u32> for WireProtocol {
    type Error = UnknownValue;
    fn try_from(v: u32) -> Result<Self, UnknownValue> {
        Self::from_u32(v).ok_or(UnknownValue { what: "WireProtocol", value: v })
    }
}

impl From<WireProtocol> for u32 {
    fn from(v: WireProtocol) -> Self {
        v as u32
    }
}

/// The Flow's `State` property. Clients must read unknown future values as
/// [`FlowState::Unknown`] (0): [`FlowState::from_u32`] does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u32)]
pub enum FlowState {
    Unknown = 0,
    /// The flow object exists; the daemon prepares the rendezvous or the consent.
    Starting = 1,
    /// The daemon generated a QR code: read it with `GetQrCode`.
    QrReady = 2,
    /// The other device scanned our QR code and shows a check code: call `CheckCode` with it.
    WaitingForCheckCode = 3,
    /// We scanned: show `CheckCodeToShow` for the user to type on the other device.
    ShowingCheckCode = 4,
    /// The user must consent (`Approve`, `VerificationUri`): grants and delegations.
    WaitingForApproval = 5,
    /// Consent given, the new device gets its token; a login waits for approval on the other
    /// device (`UserCode`).
    WaitingForToken = 6,
    /// Secrets are being shared or imported; a delegation's session is ready (`TakeSession`).
    SyncingSecrets = 7,
    /// Ended: success (`Response` 0).
    Done = 8,
    /// Ended: failure (`Response` 2, `ErrorName`).
    Failed = 9,
    /// Ended: cancelled (`Response` 1).
    Cancelled = 10,
}

impl FlowState {
    /// Every value, in order.
    pub const ALL: [FlowState; 11] = [
        FlowState::Unknown,
        FlowState::Starting,
        FlowState::QrReady,
        FlowState::WaitingForCheckCode,
        FlowState::ShowingCheckCode,
        FlowState::WaitingForApproval,
        FlowState::WaitingForToken,
        FlowState::SyncingSecrets,
        FlowState::Done,
        FlowState::Failed,
        FlowState::Cancelled,
    ];

    /// Reads a `State` value; values this version does not know read as [`FlowState::Unknown`].
    pub fn from_u32(v: u32) -> Self {
        Self::ALL.into_iter().find(|s| *s as u32 == v).unwrap_or(FlowState::Unknown)
    }

    /// The flow has ended: `Done`, `Failed` or `Cancelled`.
    pub fn is_final(self) -> bool {
        matches!(self, FlowState::Done | FlowState::Failed | FlowState::Cancelled)
    }
}

impl From<u32> for FlowState {
    fn from(v: u32) -> Self {
        Self::from_u32(v)
    }
}

impl From<FlowState> for u32 {
    fn from(v: FlowState) -> Self {
        v as u32
    }
}

/// The Manager's `SessionState` property.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[repr(u32)]
pub enum SessionState {
    /// Not known yet (the daemon is starting), or a value this version does not know.
    #[default]
    Unknown = 0,
    SignedOut = 1,
    /// The daemon is restoring its kept session.
    Restoring = 2,
    SignedIn = 3,
    /// The session could not be restored (e.g. the keyring is locked); retried on the next
    /// `StartGrant`.
    Error = 4,
}

impl SessionState {
    /// Every value, in order.
    pub const ALL: [SessionState; 5] = [
        SessionState::Unknown,
        SessionState::SignedOut,
        SessionState::Restoring,
        SessionState::SignedIn,
        SessionState::Error,
    ];

    /// Reads a `SessionState` value; values this version does not know read as
    /// [`SessionState::Unknown`].
    pub fn from_u32(v: u32) -> Self {
        Self::ALL.into_iter().find(|s| *s as u32 == v).unwrap_or(SessionState::Unknown)
    }
}

impl From<u32> for SessionState {
    fn from(v: u32) -> Self {
        Self::from_u32(v)
    }
}

impl From<SessionState> for u32 {
    fn from(v: SessionState) -> Self {
        v as u32
    }
}

/// The first argument of the Flow's `Response` signal (and of `Wait`'s reply).
pub mod response {
    /// The flow succeeded; the results carry [`crate::results::USER_ID`] and, when known,
    /// [`crate::results::DEVICE_ID`].
    pub const SUCCESS: u32 = 0;
    /// The flow was cancelled (by its owner, the user, the other device, or its owner leaving).
    pub const CANCELLED: u32 = 1;
    /// The flow failed; the results carry [`crate::results::ERROR`] and
    /// [`crate::results::MESSAGE`].
    pub const FAILED: u32 = 2;
}

macro_rules! error_names {
    ($($(#[doc = $doc:literal])* $konst:ident = $name:ident;)*) => {
        $(
            $(#[doc = $doc])*
            pub const $konst: &str = concat!("io.github.matrix_linkd.Linkd1.Error.", stringify!($name));
        )*
        /// Every error name of the daemon's own, in the order of `dbus/*.xml`.
        pub const ALL: &[&str] = &[$($konst),*];
    };
}

/// The daemon's own D-Bus error names, `io.github.matrix_linkd.Linkd1.Error.<Name>`, and the
/// two standard ones it uses.
pub mod errors {
    error_names! {
        /// The call needs a signed-in daemon.
        NOT_SIGNED_IN = NotSignedIn;
        /// `StartLogin` on a daemon already signed in.
        ALREADY_SIGNED_IN = AlreadySignedIn;
        /// Another flow runs that excludes this one, or too many run.
        BUSY = Busy;
        /// The method is not valid in the flow's current state.
        INVALID_STATE = InvalidState;
        /// The QR code is not one the daemon can use.
        INVALID_QR_CODE = InvalidQrCode;
        /// The check code typed does not match the other device's.
        INVALID_CHECK_CODE = InvalidCheckCode;
        /// The flow, the rendezvous session or a code timed out.
        EXPIRED = Expired;
        /// The homeserver or the other device lacks what the flow needs.
        UNSUPPORTED = Unsupported;
        /// The daemon does not hold the cross-signing or backup secrets to share.
        MISSING_SECRETS = MissingSecrets;
        /// The device ID the new device asked for is taken.
        DEVICE_ID_IN_USE = DeviceIdInUse;
        /// Not a device this daemon delegated.
        DEVICE_NOT_FOUND = DeviceNotFound;
        /// The login did not complete.
        LOGIN_FAILED = LoginFailed;
        /// The other device or a server broke the protocol.
        PROTOCOL_ERROR = ProtocolError;
        /// A server could not be reached or answered with an error.
        NETWORK = Network;
        /// The Secret Service (the keyring) failed or is locked.
        SECRET_STORAGE = SecretStorage;
        /// The caller may not do this (a sandboxed caller not allow-listed, one that cannot be
        /// inspected, a sandboxed caller asking for a detached flow).
        NOT_ALLOWED = NotAllowed;
        /// Anything else.
        FAILED = Failed;
    }

    /// Malformed options, a call with the wrong signature (a standard name).
    pub const INVALID_ARGS: &str = "org.freedesktop.DBus.Error.InvalidArgs";
    /// A caller that is not the flow's owner (a standard name).
    pub const ACCESS_DENIED: &str = "org.freedesktop.DBus.Error.AccessDenied";
    /// A flow object that has gone, e.g. a second `TakeSession` once the flow ended (a standard
    /// name).
    pub const UNKNOWN_OBJECT: &str = "org.freedesktop.DBus.Error.UnknownObject";

    /// The `<Name>` of one of the daemon's own error names; `None` for any other name.
    pub fn short_name(name: &str) -> Option<&str> {
        name.strip_prefix(crate::ERROR_PREFIX).filter(|n| !n.is_empty() && !n.contains('.'))
    }
}

/// Keys of the `a{sv}` options of `StartGrant`, `StartLogin` and `StartDelegation`. Unknown keys
/// are ignored by the daemon.
pub mod options {
    /// `s`: the last element of the flow's object path, 1 to [`MAX_HANDLE_TOKEN`] of
    /// `[A-Za-z0-9_]` (see [`crate::flow_path`]). All three.
    pub const HANDLE_TOKEN: &str = "handle_token";
    /// `ay`: the QR code the caller scanned; absent, the daemon generates one. Grant, login.
    pub const QR_CODE: &str = "qr_code";
    /// `b`: bind the flow to the caller's UID instead of its connection, until `ExpiresAt`.
    /// Default false. All three.
    pub const DETACHED: &str = "detached";
    /// `b`: the daemon shows its own notifications. Default true. Grant, delegation.
    pub const NOTIFY: &str = "notify";
    /// `b`: `Approve` opens the verification URI in the browser. Default true. Grant, delegation.
    pub const OPEN_URI: &str = "open_uri";
    /// `s`: the wire generation when the daemon generates the QR code: one of
    /// [`PROTOCOL_AUTO`], [`PROTOCOL_2024`], [`PROTOCOL_LATEST`]. Grant, login.
    pub const PROTOCOL: &str = "protocol";
    /// `s`: URL of the homeserver to meet on when the daemon generates the QR code. Login.
    pub const HOMESERVER: &str = "homeserver";
    /// `s`: the display name of the new device. Login, delegation.
    pub const DEVICE_DISPLAY_NAME: &str = "device_display_name";
    /// `s`: the program's name, shown to the user and registered with the OAuth server.
    /// Delegation.
    pub const CLIENT_NAME: &str = "client_name";
    /// `b`: the delegated session carries the cross-signing and backup keys. Default false.
    /// Delegation.
    pub const SHARE_SECRETS: &str = "share_secrets";

    /// The longest [`HANDLE_TOKEN`].
    pub const MAX_HANDLE_TOKEN: usize = 64;

    /// [`PROTOCOL`]: 2024 where the homeserver offers it, else the latest.
    pub const PROTOCOL_AUTO: &str = "auto";
    /// [`PROTOCOL`]: MSC4108 as of 2024.
    pub const PROTOCOL_2024: &str = "2024";
    /// [`PROTOCOL`]: MSC4108 + MSC4388.
    pub const PROTOCOL_LATEST: &str = "latest";
}

/// Keys of the `a{sv}` results of the Flow's `Response` signal and `Wait`, and the values some
/// of them take.
pub mod results {
    /// `s`, success: the signed-in user.
    pub const USER_ID: &str = "user_id";
    /// `s`, success, when known: the signed-in device.
    pub const DEVICE_ID: &str = "device_id";
    /// `s`, failure: the D-Bus error name (see [`crate::errors`]).
    pub const ERROR: &str = "error";
    /// `s`, failure: a message for people.
    pub const MESSAGE: &str = "message";
    /// `s`, a login's success: how the homeserver was found (see [`homeserver_found`]).
    pub const HOMESERVER_FOUND: &str = "homeserver_found";
    /// `s`, a delegation's success: how the new device got verified (see [`trust`]).
    pub const TRUST: &str = "trust";

    /// The values of [`HOMESERVER_FOUND`].
    pub mod homeserver_found {
        /// Named by URL.
        pub const URL: &str = "url";
        /// Through the server name's `.well-known/matrix/client`.
        pub const WELL_KNOWN: &str = "well-known";
        /// The server name's own address serves the client API.
        pub const SERVER_NAME: &str = "server-name";
        /// The homeserver of the rendezvous session.
        pub const RENDEZVOUS_SERVER: &str = "rendezvous-server";
    }

    /// The values of [`TRUST`].
    pub mod trust {
        /// The client holds the keys and signs its own device.
        pub const SECRETS_SHARED: &str = "secrets-shared";
        /// The daemon signed the device.
        pub const SIGNED_BY_DAEMON: &str = "signed-by-daemon";
    }
}

/// The strings of the Manager's `Capabilities` property.
pub mod capabilities {
    /// Signed out: `StartLogin`.
    pub const LOGIN: &str = "login";
    /// Signed in: `StartGrant`.
    pub const GRANT: &str = "grant";
    /// Signed in: `StartDelegation`.
    pub const DELEGATE: &str = "delegate";
    /// The homeserver serves the 2024 rendezvous (MSC4108).
    pub const PROTOCOL_2024: &str = "protocol-2024";
    /// The homeserver serves the MSC4388 rendezvous.
    pub const PROTOCOL_MSC4388: &str = "protocol-msc4388";
}

/// The formats of the Flow's `GetQrCode`.
pub mod qr_formats {
    /// The protocol bytes.
    pub const RAW: &str = "raw";
    pub const PNG: &str = "png";
    pub const SVG: &str = "svg";
    /// Terminal half blocks.
    pub const UTF8: &str = "utf8";
}

/// The answers of the Manager's `RevokeDelegation`.
pub mod revoke {
    /// The daemon revoked a token it still held; the device is gone.
    pub const REVOKED: &str = "revoked";
    /// The daemon opened the account management page for the user to end the session.
    pub const ACCOUNT_PAGE: &str = "account-page";
}

/// Property names of both interfaces.
pub mod properties {
    /// Manager: `as`, see [`crate::capabilities`].
    pub const CAPABILITIES: &str = "Capabilities";
    /// Manager: `s`.
    pub const DEVICE_ID: &str = "DeviceId";
    /// Manager: `s`.
    pub const HOMESERVER: &str = "Homeserver";
    /// Manager: `u`, see [`crate::SessionState`].
    pub const SESSION_STATE: &str = "SessionState";
    /// Manager: `s`.
    pub const USER_ID: &str = "UserId";
    /// Manager: `u`, [`crate::INTERFACE_VERSION`].
    pub const VERSION: &str = "Version";
    /// The Manager's properties.
    pub const MANAGER: [&str; 6] = [CAPABILITIES, DEVICE_ID, HOMESERVER, SESSION_STATE, USER_ID, VERSION];

    /// Flow: `y`, owner only, invalidation only.
    pub const CHECK_CODE_TO_SHOW: &str = "CheckCodeToShow";
    /// Flow: `s`.
    pub const ERROR_NAME: &str = "ErrorName";
    /// Flow: `t`, microseconds since the Unix epoch.
    pub const EXPIRES_AT: &str = "ExpiresAt";
    /// Flow: `u`, see [`crate::FlowKind`].
    pub const KIND: &str = "Kind";
    /// Flow: `s`, owner only, invalidation only.
    pub const PEER_DEVICE_ID: &str = "PeerDeviceId";
    /// Flow: `u`, see [`crate::WireProtocol`].
    pub const PROTOCOL: &str = "Protocol";
    /// Flow: `u`.
    pub const QR_CODE_SERIAL: &str = "QrCodeSerial";
    /// Flow: `u`, see [`crate::FlowState`].
    pub const STATE: &str = "State";
    /// Flow: `s`, owner only, invalidation only.
    pub const USER_CODE: &str = "UserCode";
    /// Flow: `s`, owner only, invalidation only.
    pub const VERIFICATION_URI: &str = "VerificationUri";
    /// The Flow's properties.
    pub const FLOW: [&str; 10] = [
        CHECK_CODE_TO_SHOW,
        ERROR_NAME,
        EXPIRES_AT,
        KIND,
        PEER_DEVICE_ID,
        PROTOCOL,
        QR_CODE_SERIAL,
        STATE,
        USER_CODE,
        VERIFICATION_URI,
    ];
}

/// The name of the Flow's signal that carries its outcome.
pub const RESPONSE_SIGNAL: &str = "Response";

#[cfg(test)]
mod tests;
