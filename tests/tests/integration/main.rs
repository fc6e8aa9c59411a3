//! The suites that need no servers: the real daemon binary on private buses (a real gnome-keyring,
//! a real notification server), the mock homeserver, matrix-sdk and vodozemac peers in this process.
//!
//! One test binary of modules rather than one binary per suite: each binary links the whole
//! dependency graph (matrix-sdk among it), about 110 MB in a debug build, and eleven of them filled
//! a CI machine's disk. `make test-integration` runs the modules one after another, each in a
//! process of its own (`tests/suites.sh`), as the separate binaries ran;
//! `cargo test --workspace --test integration -- flows::` runs one by hand.

mod boundaries;
mod bus;
mod cli;
mod concurrency;
mod delegation;
mod desktop;
mod failures;
mod fault_injection;
mod flows;
mod interop;
mod recipes;
mod sandbox;
