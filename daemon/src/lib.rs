//! matrix-linkd: a per-user daemon that keeps one signed-in Matrix session and runs "sign in with
//! QR code" (MSC4108) flows for local programs over D-Bus.
//!
//! Layers, one direction of dependency: [`dbus`] → [`protocol`] / [`account`] → matrix-sdk.

pub mod account;
pub mod cli;
pub mod config;
pub mod dbus;
pub mod desktop;
pub mod error;
pub mod logging;
pub mod net;
pub mod protocol;
