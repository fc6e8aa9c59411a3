//! matrix-linkd-wire: the wire formats of Matrix sign-in with QR code (MSC4108 over MSC4388), in
//! both generations, as small pure modules tested against the vectors of protocol.md §15:
//! the QR code, the `m.login.*` messages, the latest generation's AAD, and the secure channels
//! (ECIES for 2024, HPKE for the latest) over vodozemac 0.11.1, and the checks every value from
//! across the boundary passes (`policy`).
//!
//! No I/O here: the rendezvous clients and the flow engine live in the daemon. Kept apart so the
//! fuzz targets build without the Matrix SDK.

pub mod aad;
pub mod channel;
pub mod messages;
pub mod policy;
pub mod qr;
