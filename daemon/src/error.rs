//! The one error type of the daemon's core. Each variant is one D-Bus error name
//! (`io.github.matrix_linkd.Linkd1.Error.<Variant>`); the mapping lives in `dbus::error`.

/// Every way an operation or a flow can end badly. Messages are for people and never carry a
/// secret (no tokens, QR bytes, check codes, URIs or user codes).
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum LinkError {
    #[error("the daemon is not signed in")]
    NotSignedIn,
    #[error("the daemon is already signed in")]
    AlreadySignedIn,
    #[error("{0}")]
    Busy(String),
    #[error("{0}")]
    InvalidState(String),
    #[error("invalid QR code: {0}")]
    InvalidQrCode(String),
    #[error("the check code does not match the one shown on the other device")]
    InvalidCheckCode,
    #[error("{0}")]
    Expired(String),
    #[error("{0}")]
    Unsupported(String),
    #[error("{0}")]
    MissingSecrets(String),
    #[error("the new device's ID is already in use on the homeserver")]
    DeviceIdInUse,
    #[error("the new device did not appear on the homeserver in time")]
    DeviceNotFound,
    #[error("the other device gave up: {0}")]
    LoginFailed(String),
    #[error("protocol error: {0}")]
    ProtocolError(String),
    #[error("network error: {0}")]
    Network(String),
    #[error("secret storage: {0}")]
    SecretStorage(String),
    #[error("{0}")]
    NotAllowed(String),
    #[error("{0}")]
    Failed(String),
    /// Malformed options: `org.freedesktop.DBus.Error.InvalidArgs`.
    #[error("{0}")]
    InvalidArgs(String),
    /// Caller is not the owner: `org.freedesktop.DBus.Error.AccessDenied`.
    #[error("{0}")]
    AccessDenied(String),
}

pub type Result<T, E = LinkError> = std::result::Result<T, E>;

/// A secure channel that cannot be opened or used: the other device broke the protocol.
impl From<matrix_linkd_wire::channel::ChannelError> for LinkError {
    fn from(e: matrix_linkd_wire::channel::ChannelError) -> Self {
        LinkError::ProtocolError(e.to_string())
    }
}

/// A message that does not decode: the other device broke the protocol.
impl From<matrix_linkd_wire::messages::MessageError> for LinkError {
    fn from(e: matrix_linkd_wire::messages::MessageError) -> Self {
        LinkError::ProtocolError(e.to_string())
    }
}

/// Arguments refused by the bounded reader (`dbus::args`): the same names and messages.
impl From<matrix_linkd_busargs::ArgsError> for LinkError {
    fn from(e: matrix_linkd_busargs::ArgsError) -> Self {
        use matrix_linkd_busargs::ArgsError;
        match e {
            ArgsError::InvalidArgs(m) => LinkError::InvalidArgs(m),
            ArgsError::InvalidQrCode(m) => LinkError::InvalidQrCode(m),
        }
    }
}
