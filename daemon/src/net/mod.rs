//! Every HTTP request the daemon makes itself goes through here: one client that follows no
//! redirect and bounds every request in time, answers read with a size cap, URLs checked before
//! they are used, and homeserver discovery. The servers are those that a QR code, the other device
//! or the homeserver name; none of them is trusted.

mod body;
mod guard;
pub mod resolve;

use std::time::Duration;

pub use body::{BodyError, read_capped, read_json};
pub use matrix_linkd_wire::policy::{
    Reach, UrlError, check_transport, http_url, is_loopback, is_loopback_name,
};
use matrix_sdk::reqwest;

/// Largest rendezvous answer we read (payloads are at most 4 KiB of base64, plus JSON framing).
pub const RENDEZVOUS_LIMIT: usize = 8 * 1024;
/// Largest JSON answer we read from a homeserver or OAuth server (metadata, tokens, `whoami`,
/// `.well-known`, `/versions`).
pub const JSON_LIMIT: usize = 64 * 1024;

/// Whole-request limit: connecting, sending, headers and body.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(15);
/// Longest silence while reading an answer.
pub const READ_TIMEOUT: Duration = Duration::from_secs(5);

/// The client for every request a flow makes: no redirects (a redirect would re-send an encrypted
/// rendezvous write, a form with a device code or a bearer token to a host nobody checked), short
/// time limits, and, unless `reach.local_addresses`, names resolved to public and private-network
/// addresses only (a name that resolves to this machine or the link is refused as an address
/// literal is, by [`check_transport`]).
pub fn client_for(reach: Reach) -> reqwest::Client {
    let builder = builder();
    let builder = if reach.local_addresses { builder } else { builder.dns_resolver(guard::NoLocal) };
    builder.build().expect("HTTP client")
}

/// [`client_for`] a set-up that may reach everything: the tests' own requests.
pub fn client() -> reqwest::Client {
    client_for(Reach::ANYWHERE)
}

/// Every answer we read is small (rendezvous payloads of a few KB, JSON documents), so none is
/// worth compressing, and a compressing proxy changes more than the body: nginx with `gzip on`
/// turns a rendezvous `ETag: "T"` into `W/"T"`, which the homeserver then refuses in `If-Match`
/// (docs/protocol.md §5). So we ask for the identity encoding and no transformation.
fn default_headers() -> reqwest::header::HeaderMap {
    use reqwest::header::{ACCEPT_ENCODING, CACHE_CONTROL, HeaderMap, HeaderValue};
    let mut headers = HeaderMap::new();
    headers.insert(ACCEPT_ENCODING, HeaderValue::from_static("identity"));
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-transform"));
    headers
}

fn builder() -> reqwest::ClientBuilder {
    reqwest::Client::builder()
        .user_agent(concat!("matrix-linkd/", env!("CARGO_PKG_VERSION")))
        .default_headers(default_headers())
        .redirect(reqwest::redirect::Policy::none())
        .timeout(REQUEST_TIMEOUT)
        .read_timeout(READ_TIMEOUT)
        .connect_timeout(Duration::from_secs(5))
}
