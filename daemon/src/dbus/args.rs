//! Method arguments whose signature is checked by us, not by zbus, and a `Start*` call's `a{sv}`
//! options read within bounds: the `matrix-linkd-busargs` crate (apart so that the fuzz workspace
//! drives it without zbus or matrix-sdk). Its `ArgsError` becomes a `LinkError` (`crate::error`)
//! and a D-Bus error (`dbus::error`).

pub use matrix_linkd_busargs::*;
