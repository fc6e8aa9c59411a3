//! The table of flow kinds: what sets one kind apart from another, in one place. The D-Bus layer
//! reads it (the `Start*` skeleton, the limits, the notifications, `TakeSession`); the engine has
//! one file per kind (`engine/{grant,login,delegation}.rs`), all on the one runner.
//!
//! A new kind is a `FlowKind` value, a row here, a request type in `FlowRequest`, an engine file,
//! and a thin `Start*` method with its options parser in `dbus/requests.rs`.

use super::FlowKind;

/// The session a kind needs before it starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Needs {
    /// The daemon signed in (`NotSignedIn` otherwise): it acts for the account.
    SignedIn,
    /// The daemon signed out (`AlreadySignedIn` otherwise): it gets the account.
    SignedOut,
}

/// One kind's rules.
#[derive(Debug)]
pub struct Rules {
    pub kind: FlowKind,
    /// The D-Bus method that starts it, for log lines.
    pub method: &'static str,
    pub needs: Needs,
    /// Runs alone: started only when no other flow runs, and none starts beside it. An exclusive
    /// kind takes its slot before the session is checked, so that while other flows run the
    /// answer is that it must wait (`Busy`), not who is signed in.
    pub exclusive: bool,
    /// Asks for consent and reports its end through desktop notifications (unless the caller
    /// passed `notify: false`), and may open the consent page on `Approve` (`open_uri`).
    pub asks_user: bool,
    /// Ends by handing a session over to its owner (`TakeSession`).
    pub hands_over_session: bool,
}

const TABLE: [Rules; 3] = [
    Rules {
        kind: FlowKind::Grant,
        method: "StartGrant",
        needs: Needs::SignedIn,
        exclusive: false,
        asks_user: true,
        hands_over_session: false,
    },
    Rules {
        kind: FlowKind::Login,
        method: "StartLogin",
        needs: Needs::SignedOut,
        // It replaces the session every other flow uses.
        exclusive: true,
        // The consent is given on the other device.
        asks_user: false,
        hands_over_session: false,
    },
    Rules {
        kind: FlowKind::Delegation,
        method: "StartDelegation",
        needs: Needs::SignedIn,
        exclusive: false,
        asks_user: true,
        hands_over_session: true,
    },
];

/// The rules of `kind`.
pub fn rules(kind: FlowKind) -> &'static Rules {
    TABLE.iter().find(|r| r.kind == kind).expect("every kind has a row")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_has_one_row() {
        for kind in [FlowKind::Grant, FlowKind::Login, FlowKind::Delegation] {
            assert_eq!(TABLE.iter().filter(|r| r.kind == kind).count(), 1, "{kind:?}");
            assert_eq!(rules(kind).kind, kind);
        }
        assert!(rules(FlowKind::Login).exclusive && !rules(FlowKind::Login).asks_user);
        assert!(rules(FlowKind::Delegation).hands_over_session);
    }
}
