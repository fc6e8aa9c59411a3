//! Typed proxies for the two interfaces, matching `dbus/*.xml`.

use std::collections::HashMap;

use zbus::{
    proxy,
    zvariant::{OwnedFd, OwnedObjectPath, OwnedValue, Value},
};

/// `io.github.matrix_linkd.Linkd1.Manager`.
#[proxy(
    interface = "io.github.matrix_linkd.Linkd1.Manager",
    default_service = "io.github.matrix_linkd.Linkd1",
    default_path = "/io/github/matrix_linkd/Linkd1"
)]
pub trait Manager {
    fn start_grant(&self, options: HashMap<&str, Value<'_>>) -> zbus::Result<OwnedObjectPath>;
    fn start_login(&self, options: HashMap<&str, Value<'_>>) -> zbus::Result<OwnedObjectPath>;
    fn start_delegation(&self, options: HashMap<&str, Value<'_>>) -> zbus::Result<OwnedObjectPath>;
    /// `(device_id, client_name, device_display_name, created)`, `created` in seconds since the epoch.
    fn list_delegations(&self) -> zbus::Result<Vec<(String, String, String, u64)>>;
    /// `"revoked"` or `"account-page"` (`api::revoke`).
    fn revoke_delegation(&self, device_id: &str) -> zbus::Result<String>;
    fn sign_out(&self) -> zbus::Result<()>;

    #[zbus(property)]
    fn version(&self) -> zbus::Result<u32>;
    #[zbus(property)]
    fn session_state(&self) -> zbus::Result<u32>;
    #[zbus(property)]
    fn user_id(&self) -> zbus::Result<String>;
    #[zbus(property)]
    fn device_id(&self) -> zbus::Result<String>;
    #[zbus(property)]
    fn homeserver(&self) -> zbus::Result<String>;
    #[zbus(property)]
    fn capabilities(&self) -> zbus::Result<Vec<String>>;
}

/// `io.github.matrix_linkd.Linkd1.Flow`.
#[proxy(interface = "io.github.matrix_linkd.Linkd1.Flow", default_service = "io.github.matrix_linkd.Linkd1")]
pub trait Flow {
    fn check_code(&self, code: u8) -> zbus::Result<()>;
    fn approve(&self) -> zbus::Result<()>;
    fn cancel(&self) -> zbus::Result<()>;
    fn get_qr_code(&self, format: &str) -> zbus::Result<Vec<u8>>;
    fn wait(&self) -> zbus::Result<(u32, HashMap<String, OwnedValue>)>;
    /// Delegation flows, in `SyncingSecrets`, once: a sealed memfd holding the session JSON.
    fn take_session(&self) -> zbus::Result<OwnedFd>;

    #[zbus(signal)]
    fn response(&self, response: u32, results: HashMap<String, OwnedValue>) -> zbus::Result<()>;

    #[zbus(property)]
    fn kind(&self) -> zbus::Result<u32>;
    #[zbus(property)]
    fn protocol(&self) -> zbus::Result<u32>;
    #[zbus(property)]
    fn state(&self) -> zbus::Result<u32>;
    #[zbus(property)]
    fn expires_at(&self) -> zbus::Result<u64>;
    #[zbus(property)]
    fn qr_code_serial(&self) -> zbus::Result<u32>;
    #[zbus(property)]
    fn error_name(&self) -> zbus::Result<String>;
    #[zbus(property)]
    fn check_code_to_show(&self) -> zbus::Result<u8>;
    #[zbus(property)]
    fn verification_uri(&self) -> zbus::Result<String>;
    #[zbus(property)]
    fn user_code(&self) -> zbus::Result<String>;
    #[zbus(property)]
    fn peer_device_id(&self) -> zbus::Result<String>;
}

#[cfg(test)]
mod tests {
    use zbus::proxy::Defaults;

    use super::{FlowProxy, ManagerProxy};
    use crate::api;

    /// The proxy macro takes literals only: they must be the API crate's names.
    #[test]
    fn proxies_name_the_api() {
        fn name<T: ToString>(n: &Option<T>) -> Option<String> {
            n.as_ref().map(T::to_string)
        }
        assert_eq!(name(ManagerProxy::INTERFACE).as_deref(), Some(api::MANAGER_INTERFACE));
        assert_eq!(name(ManagerProxy::DESTINATION).as_deref(), Some(api::BUS_NAME));
        assert_eq!(name(ManagerProxy::PATH).as_deref(), Some(api::MANAGER_PATH));
        assert_eq!(name(FlowProxy::INTERFACE).as_deref(), Some(api::FLOW_INTERFACE));
        assert_eq!(name(FlowProxy::DESTINATION).as_deref(), Some(api::BUS_NAME));
    }
}
