//! Human texts for the daemon's named errors (`ClientError::short_name`, the `<Name>` of
//! `matrix_linkd_client::api::errors`).

/// The local short name of an error that means matrix-linkd is not on the session bus.
pub const NOT_RUNNING: &str = "NotRunning";
/// The local short name of an error that means the session bus itself could not be reached.
pub const NO_BUS: &str = "Bus";

/// Whether a D-Bus error name means that no program serves the name called: nothing owns it and
/// the bus cannot start one (no such service, or starting it failed).
pub fn service_missing(error_name: &str) -> bool {
    matches!(
        error_name,
        "org.freedesktop.DBus.Error.ServiceUnknown"
            | "org.freedesktop.DBus.Error.NameHasNoOwner"
            | "org.freedesktop.systemd1.NoSuchUnit"
    ) || error_name.starts_with("org.freedesktop.DBus.Error.Spawn.")
}

/// A title and an explanation for an error short name (`NotSignedIn`, …); unknown names get a
/// generic text (the daemon's own message is shown below it).
pub fn describe(short_name: &str) -> (&'static str, &'static str) {
    match short_name {
        NOT_RUNNING => (
            "The link service is not available",
            "matrix-linkd is not installed or not running. To start it, run “systemctl --user start matrix-linkd”.",
        ),
        NO_BUS => (
            "The link service is not available",
            "The session bus could not be reached, so matrix-linkd cannot be asked. Log out and in again.",
        ),
        "NotSignedIn" => (
            "This computer is not signed in",
            "Sign this computer in first, then you can link new devices from it.",
        ),
        "AlreadySignedIn" => (
            "This computer is already signed in",
            "Sign out first if you want to sign in with another account.",
        ),
        "Busy" => ("Another link is in progress", "Finish or cancel it, then try again."),
        "InvalidQrCode" => (
            "That is not a sign-in QR code",
            "The QR code could not be read as a Matrix sign-in code. Scan the code shown on your other device.",
        ),
        "InvalidCheckCode" => (
            "The codes do not match",
            "The two-digit code did not match the other device. The link was stopped for your safety; start again.",
        ),
        "Expired" => {
            ("The code expired", "The link took too long. Start again and finish it within a few minutes.")
        }
        "Unsupported" => (
            "The other device or the homeserver does not support this",
            "Signing in with a QR code needs a homeserver and a device that support it.",
        ),
        "MissingSecrets" => (
            "Encryption is not set up",
            "This computer does not hold the encryption secrets to share with the new device.",
        ),
        "DeviceIdInUse" => (
            "The device ID is already in use",
            "The new device picked an ID that already exists. Start again.",
        ),
        "DeviceNotFound" => (
            "The new device did not appear",
            "The new device did not show up on your account in time. Start again.",
        ),
        "LoginFailed" => ("The sign-in failed", "The homeserver did not complete the sign-in."),
        "ProtocolError" => (
            "The other device answered unexpectedly",
            "The devices could not understand each other. Make sure both are up to date.",
        ),
        "Network" => ("Cannot reach the server", "Check your network connection and try again."),
        "SecretStorage" => (
            "The keyring is not available",
            "The session could not be read from or stored in the keyring. Is it unlocked?",
        ),
        "NotAllowed" => ("Not allowed", "The other device or the homeserver refused the link."),
        "Cancelled" => ("The link was cancelled", "The link was cancelled on this or the other device."),
        "Failed" => ("Something went wrong", "The link failed."),
        _ => ("Something went wrong", "The link failed."),
    }
}

#[cfg(test)]
mod tests {
    use matrix_linkd_client::api::errors;

    use super::*;

    /// Every error the daemon names (the API crate's list) and a cancelled flow, but `Failed`
    /// and `InvalidState` (the app called a method at the wrong time), which get the generic text.
    #[test]
    fn every_named_error_has_its_own_title() {
        let generic = describe("SomethingNew").0;
        let named = errors::ALL.iter().map(|n| errors::short_name(n).unwrap()).chain(["Cancelled"]);
        for name in named.filter(|n| !["Failed", "InvalidState"].contains(n)) {
            assert_ne!(describe(name).0, generic, "{name} has no text of its own");
        }
    }

    /// A daemon that is not on the bus is named in plain words, with how to start it.
    #[test]
    fn a_missing_service_is_told_plainly() {
        for name in [
            "org.freedesktop.DBus.Error.ServiceUnknown",
            "org.freedesktop.DBus.Error.NameHasNoOwner",
            "org.freedesktop.DBus.Error.Spawn.ChildExited",
        ] {
            assert!(service_missing(name), "{name}");
        }
        for name in [errors::NOT_SIGNED_IN, errors::ACCESS_DENIED, "org.freedesktop.DBus.Error.NoReply"] {
            assert!(!service_missing(name), "{name}");
        }
        let (title, text) = describe(NOT_RUNNING);
        assert_eq!(title, "The link service is not available");
        assert!(
            text.contains("not installed or not running")
                && text.contains("systemctl --user start matrix-linkd")
        );
    }
}
