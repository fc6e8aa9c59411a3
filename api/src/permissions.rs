//! The user's remembered answers to sandboxed apps, kept in the xdg-desktop-portal permission
//! store (`org.freedesktop.impl.portal.PermissionStore`): one table, [`TABLE`]; one entry per
//! permission ([`ALL`]), each mapping a Flatpak app ID to `[`[`YES`]`]` or `[`[`NO`]`]`.
//!
//! The daemon writes and reads them; the desktop app lists them and resets an app (deletes its
//! answer from every entry) so that the app is asked again. Kept where the portals keep theirs, so
//! `flatpak permission-show APP` lists them and `flatpak permission-reset APP` forgets them.

/// The permission store's well-known name on the session bus.
pub const STORE_BUS_NAME: &str = "org.freedesktop.impl.portal.PermissionStore";
/// The permission store's object path.
pub const STORE_PATH: &str = "/org/freedesktop/impl/portal/PermissionStore";
/// The permission store's interface (`DeletePermission` is version 2).
pub const STORE_INTERFACE: &str = "org.freedesktop.impl.portal.PermissionStore";
/// What the store answers for an entry (or a table) that does not exist: no answer yet.
pub const STORE_NOT_FOUND: &str = "org.freedesktop.portal.Error.NotFound";

/// matrix-linkd's table in the permission store.
pub const TABLE: &str = "matrix-linkd";

/// Get a Matrix device of its own (`StartDelegation`).
pub const DELEGATE: &str = "delegate";
/// Receive the cross-signing and backup keys with it (`share_secrets`).
pub const SHARE_SECRETS: &str = "share-secrets";
/// Let a new device in to the account (`StartGrant`).
pub const GRANT: &str = "grant";
/// Sign this computer in (`StartLogin`).
pub const LOGIN: &str = "login";
/// Every permission (entry ID) of the table.
pub const ALL: [&str; 4] = [DELEGATE, SHARE_SECRETS, GRANT, LOGIN];

/// The answer "allowed".
pub const YES: &str = "yes";
/// The answer "denied".
pub const NO: &str = "no";
