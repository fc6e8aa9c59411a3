//! What the user answered for each sandboxed app, as the daemon keeps it: in the permission store
//! of xdg-desktop-portal (`org.freedesktop.impl.portal.PermissionStore`), in a table of our own,
//! one entry per permission, each mapping an app ID to `[YES]` or `[NO]`. So
//! `flatpak permission-show APP` lists the answers and `flatpak permission-reset APP` forgets them,
//! as for the portals' own permissions.

/// The permission store's bus name, object path and interface.
pub const STORE_BUS_NAME: &str = "org.freedesktop.impl.portal.PermissionStore";
pub const STORE_PATH: &str = "/org/freedesktop/impl/portal/PermissionStore";
pub const STORE_INTERFACE: &str = "org.freedesktop.impl.portal.PermissionStore";

/// Our table in the store.
pub const TABLE: &str = "matrix-linkd";

/// `StartDelegation`: a device of the app's own.
pub const DELEGATE: &str = "delegate";
/// `StartDelegation` with `share_secrets`: the cross-signing and backup keys handed to the app.
pub const SHARE_SECRETS: &str = "share-secrets";
/// `StartGrant`: sign in another device.
pub const GRANT: &str = "grant";
/// `StartLogin`: sign the daemon in.
pub const LOGIN: &str = "login";
/// Every permission, in the order the desktop app shows them.
pub const ALL: [&str; 4] = [DELEGATE, SHARE_SECRETS, GRANT, LOGIN];

/// The user allowed it.
pub const YES: &str = "yes";
/// The user denied it.
pub const NO: &str = "no";
