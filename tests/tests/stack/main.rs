//! End to end over the real stack (Synapse and the OAuth server on 127.0.0.1, started by
//! `stack/with-stack.sh`): the real daemon binary, matrix-sdk and matrix-js-sdk peers.
//!
//! One test binary of modules rather than one binary per suite (see `tests/integration/main.rs`).
//! `make test-stack` runs the modules one after another, each in a process of its own
//! (`tests/suites.sh`): on the main stack all but `stack_proxy`, on the `localhost` stack
//! `stack_sdk` and `stack_js`, on the proxy stack `stack_proxy`.

mod stack_balancer;
mod stack_crash;
mod stack_delegation;
mod stack_device_grant;
mod stack_failures;
mod stack_js;
mod stack_latest;
mod stack_proxy;
mod stack_rendezvous;
mod stack_script;
mod stack_sdk;
