//! Human texts for the daemon's named errors (`ClientError::short_name`, the `<Name>` of
//! `matrix_linkd_client::api::errors`).

/// A title and an explanation for an error short name (`NotSignedIn`, …); unknown names get a
/// generic text (the daemon's own message is shown below it).
pub fn describe(short_name: &str) -> (&'static str, &'static str) {
    match short_name {
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
}
