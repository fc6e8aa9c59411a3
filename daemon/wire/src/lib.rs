//! matrix-linkd-wire: the wire formats of Matrix sign-in with QR code (MSC4108 over MSC4388), in
//! both generations, as small pure modules tested against the vectors of docs/protocol.md §15:
//! the QR code, the `m.login.*` messages, the latest generation's AAD, the secure channels (ECIES
//! for 2024 over vodozemac 0.10.0, the one matrix-sdk 0.18 builds on; HPKE for the latest,
//! vodozemac 0.11.1's construction on `hpke` 0.13, matrix-sdk's RustCrypto generation, in `hpke`),
//! and the checks every value from across the boundary passes (`policy`).
//!
//! Latest generation: the daemon sends LoginOk under vodozemac's response label
//! `MATRIX_QR_CODE_LOGIN_RESPONSE` (every vodozemac-based peer, matrix-sdk and Element X among
//! them, expects it and fails on the MSC text's `MATRIX_QR_CODE_LOGIN response`); it accepts both
//! labels, and both forms of the base URL in the AAD, on what it receives.
//!
//! No I/O here: the rendezvous clients and the flow engine live in the daemon. Kept apart so the
//! fuzz targets build without the Matrix SDK.

pub mod aad;
pub mod channel;
pub mod hpke;
pub mod messages;
pub mod policy;
pub mod qr;
