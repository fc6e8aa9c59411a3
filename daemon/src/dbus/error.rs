//! The one place where core errors become D-Bus errors.

use zbus::DBusError as _;

use crate::error::LinkError;

/// Errors on the wire: ours (`io.github.matrix_linkd.Linkd1.Error.<Name>`) or a standard one
/// (`org.freedesktop.DBus.Error.InvalidArgs`, `…AccessDenied`).
#[derive(Debug)]
pub enum Error {
    Linkd(LinkdError),
    Fdo(zbus::fdo::Error),
}

impl zbus::DBusError for Error {
    fn name(&self) -> zbus::names::ErrorName<'_> {
        match self {
            Error::Linkd(e) => e.name(),
            Error::Fdo(e) => e.name(),
        }
    }
    fn description(&self) -> Option<&str> {
        match self {
            Error::Linkd(e) => e.description(),
            Error::Fdo(e) => e.description(),
        }
    }
    fn create_reply(&self, call: &zbus::message::Header<'_>) -> zbus::Result<zbus::message::Message> {
        match self {
            Error::Linkd(e) => e.create_reply(call),
            Error::Fdo(e) => e.create_reply(call),
        }
    }
}

impl From<zbus::Error> for Error {
    fn from(e: zbus::Error) -> Self {
        Error::Linkd(LinkdError::ZBus(e))
    }
}

impl From<LinkError> for Error {
    fn from(e: LinkError) -> Self {
        match e {
            LinkError::InvalidArgs(m) => Error::Fdo(zbus::fdo::Error::InvalidArgs(m)),
            LinkError::AccessDenied(m) => Error::Fdo(zbus::fdo::Error::AccessDenied(m)),
            other => Error::Linkd(other.into()),
        }
    }
}

/// Arguments refused by `dbus::args` (`Checked::get` in a method): through `LinkError`.
impl From<matrix_linkd_busargs::ArgsError> for Error {
    fn from(e: matrix_linkd_busargs::ArgsError) -> Self {
        LinkError::from(e).into()
    }
}

/// Our own error names.
#[derive(Debug, zbus::DBusError)]
#[zbus(prefix = "io.github.matrix_linkd.Linkd1.Error")]
pub enum LinkdError {
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

impl From<LinkError> for LinkdError {
    fn from(e: LinkError) -> Self {
        use LinkdError as Error;
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
            // Standard names; `Error::from` routes these to `Error::Fdo` before we get here.
            LinkError::InvalidArgs(_) | LinkError::AccessDenied(_) => Error::Failed(m),
        }
    }
}

/// The D-Bus error name of `e`, as put in a failed flow's `Response` and `ErrorName`.
pub fn error_name(e: &LinkError) -> String {
    Error::from(e.clone()).name().to_string()
}

#[cfg(test)]
mod tests {
    use matrix_linkd_api::errors;

    use super::*;

    #[test]
    fn names() {
        assert_eq!(error_name(&LinkError::NotSignedIn), errors::NOT_SIGNED_IN);
        assert_eq!(error_name(&LinkError::InvalidCheckCode), errors::INVALID_CHECK_CODE);
        assert_eq!(error_name(&LinkError::InvalidArgs("x".into())), errors::INVALID_ARGS);
        assert_eq!(error_name(&LinkError::AccessDenied("x".into())), errors::ACCESS_DENIED);
    }

    /// Each of our own errors, once. The `match` fails to compile when a variant is added here
    /// and not to the list.
    fn every_error() -> Vec<LinkdError> {
        fn listed(e: &LinkdError) {
            use LinkdError::*;
            match e {
                ZBus(_) | NotSignedIn(_) | AlreadySignedIn(_) | Busy(_) | InvalidState(_)
                | InvalidQrCode(_) | InvalidCheckCode(_) | Expired(_) | Unsupported(_)
                | MissingSecrets(_) | DeviceIdInUse(_) | DeviceNotFound(_) | LoginFailed(_)
                | ProtocolError(_) | Network(_) | SecretStorage(_) | NotAllowed(_) | Failed(_) => {}
            }
        }
        use LinkdError::*;
        let all: Vec<LinkdError> = [
            NotSignedIn,
            AlreadySignedIn,
            Busy,
            InvalidState,
            InvalidQrCode,
            InvalidCheckCode,
            Expired,
            Unsupported,
            MissingSecrets,
            DeviceIdInUse,
            DeviceNotFound,
            LoginFailed,
            ProtocolError,
            Network,
            SecretStorage,
            NotAllowed,
            Failed,
        ]
        .into_iter()
        .map(|variant| variant(String::new()))
        .collect();
        all.iter().for_each(listed);
        all
    }

    /// The names zbus's derive builds (the prefix and the variant) are the API crate's list, the
    /// one clients match on: no more, no fewer, in the same order.
    #[test]
    fn names_are_the_api_names() {
        let ours: Vec<String> = every_error().iter().map(|e| e.name().to_string()).collect();
        assert_eq!(ours, errors::ALL);
        // `ZBus` carries zbus's own error name, not one of ours.
        assert!(!errors::ALL.contains(&LinkdError::ZBus(zbus::Error::Unsupported).name().as_str()));
    }

    /// Every core error reaches the bus under an API name.
    #[test]
    fn core_errors_have_api_names() {
        for e in [
            LinkError::NotSignedIn,
            LinkError::AlreadySignedIn,
            LinkError::InvalidCheckCode,
            LinkError::DeviceIdInUse,
            LinkError::DeviceNotFound,
            LinkError::Busy("x".into()),
            LinkError::Failed("x".into()),
        ] {
            let name = error_name(&e);
            assert!(errors::ALL.contains(&name.as_str()), "{name}");
        }
    }
}
