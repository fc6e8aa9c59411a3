//! The wire formats of sign-in with QR code, as small pure modules tested against the vectors of
//! protocol.md §15: the QR code, the `m.login.*` messages, the latest generation's AAD.

pub mod aad;
pub mod channel;
pub mod messages;
pub mod qr;
