//! The one place where core errors become D-Bus errors.

use zbus::DBusError as _;

use crate::error::LinkError;

/// Errors on the wire: `io.github.matrix_linkd.Linkd1.Error.<Name>`, plus the two standard names
/// (`InvalidArgs`, `AccessDenied`) carried through the `ZBus` variant.
#[derive(Debug, zbus::DBusError)]
#[zbus(prefix = "io.github.matrix_linkd.Linkd1.Error")]
pub enum Error {
    #[zbus(error)]
    ZBus(zbus::Error),
    NotSignedIn(String),
    AlreadySignedIn(String),
    Busy(String),
    InvalidState(String),
    InvalidQrCode(String),
    InvalidCheckCode(String),
    Expired(String),
    Unsupported(String),
    MissingSecrets(String),
    DeviceIdInUse(String),
    DeviceNotFound(String),
    LoginFailed(String),
    ProtocolError(String),
    Network(String),
    SecretStorage(String),
    NotAllowed(String),
    Failed(String),
}

impl From<LinkError> for Error {
    fn from(e: LinkError) -> Self {
        let m = e.to_string();
        match e {
            LinkError::NotSignedIn => Error::NotSignedIn(m),
            LinkError::AlreadySignedIn => Error::AlreadySignedIn(m),
            LinkError::Busy(_) => Error::Busy(m),
            LinkError::InvalidState(_) => Error::InvalidState(m),
            LinkError::InvalidQrCode(_) => Error::InvalidQrCode(m),
            LinkError::InvalidCheckCode => Error::InvalidCheckCode(m),
            LinkError::Expired(_) => Error::Expired(m),
            LinkError::Unsupported(_) => Error::Unsupported(m),
            LinkError::MissingSecrets(_) => Error::MissingSecrets(m),
            LinkError::DeviceIdInUse => Error::DeviceIdInUse(m),
            LinkError::DeviceNotFound => Error::DeviceNotFound(m),
            LinkError::LoginFailed(_) => Error::LoginFailed(m),
            LinkError::ProtocolError(_) => Error::ProtocolError(m),
            LinkError::Network(_) => Error::Network(m),
            LinkError::SecretStorage(_) => Error::SecretStorage(m),
            LinkError::NotAllowed(_) => Error::NotAllowed(m),
            LinkError::Failed(_) => Error::Failed(m),
            LinkError::InvalidArgs(_) => Error::ZBus(zbus::Error::FDO(Box::new(zbus::fdo::Error::InvalidArgs(m)))),
            LinkError::AccessDenied(_) => {
                Error::ZBus(zbus::Error::FDO(Box::new(zbus::fdo::Error::AccessDenied(m))))
            }
        }
    }
}

/// The D-Bus error name of `e`, as put in a failed flow's `Response` and `ErrorName`.
pub fn error_name(e: &LinkError) -> String {
    Error::from(e.clone()).name().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert_eq!(error_name(&LinkError::NotSignedIn), "io.github.matrix_linkd.Linkd1.Error.NotSignedIn");
        assert_eq!(error_name(&LinkError::InvalidCheckCode), "io.github.matrix_linkd.Linkd1.Error.InvalidCheckCode");
        assert_eq!(error_name(&LinkError::InvalidArgs("x".into())), "org.freedesktop.DBus.Error.InvalidArgs");
        assert_eq!(error_name(&LinkError::AccessDenied("x".into())), "org.freedesktop.DBus.Error.AccessDenied");
    }
}
