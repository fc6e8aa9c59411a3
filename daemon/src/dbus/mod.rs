//! The D-Bus face of the daemon: names, the Manager and Flow objects, error mapping and caller
//! checks. Holds no crypto; talks to the engine through `protocol::Engine`.
//!
//! `service` takes the daemon's place on the bus (through `bounded`, which keeps an over-size
//! message out of memory) and leaves it; `context` is what the objects
//! share; `manager` and `flow` are the objects.

pub mod args;
mod bounded;
pub mod caller;
pub mod context;
pub mod error;
pub mod flow;
mod handover;
mod introspect;
pub mod manager;
mod permissions;
mod properties;
mod requests;
pub mod service;
mod slots;

pub use context::Context;
/// The names on the bus: declared once in the `matrix-linkd-api` crate, which clients share.
pub use matrix_linkd_api::{BUS_NAME, FLOW_INTERFACE, FLOW_PATH_PREFIX, MANAGER_INTERFACE, MANAGER_PATH};
pub use service::{ServeError, name_lost, serve, shutdown};
pub use slots::Slot;
