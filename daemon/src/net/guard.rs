//! Name resolution that keeps a flow off this machine and its link: a QR code, the other device or
//! a server can name a host whose DNS answer is `127.0.0.1`, `169.254.169.254` or `::`, which the
//! URL checks ([`super::check_transport`]) cannot see. Such addresses are dropped from every
//! answer; a name left with none is refused with [`LocalOnly`]. Not used when the config allows
//! local addresses (a test set-up).

use std::net::SocketAddr;

use matrix_linkd_wire::policy::is_local_ip;
use matrix_sdk::reqwest::dns::{Addrs, Name, Resolve, Resolving};

/// The system resolver, less local addresses.
pub struct NoLocal;

/// A name that resolves only to addresses of this machine, its link or unspecified ones.
#[derive(Debug, thiserror::Error)]
#[error(
    "the server's name resolves only to local addresses (set security.allow_local_addresses for a test set-up)"
)]
pub struct LocalOnly;

impl Resolve for NoLocal {
    fn resolve(&self, name: Name) -> Resolving {
        let host = name.as_str().to_owned();
        Box::pin(async move {
            let found = tokio::net::lookup_host((host.as_str(), 0)).await?;
            let kept = public(found);
            if kept.is_empty() {
                return Err(LocalOnly.into());
            }
            Ok(Box::new(kept.into_iter()) as Addrs)
        })
    }
}

fn public(found: impl IntoIterator<Item = SocketAddr>) -> Vec<SocketAddr> {
    found.into_iter().filter(|a| !is_local_ip(a.ip())).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_answers_are_dropped() {
        let addrs = |list: &[&str]| list.iter().map(|a| a.parse().unwrap()).collect::<Vec<SocketAddr>>();
        let kept =
            public(addrs(&["127.0.0.1:0", "[::1]:0", "169.254.169.254:0", "0.0.0.0:0", "192.168.1.2:0"]));
        assert_eq!(kept, addrs(&["192.168.1.2:0"]));
    }

    #[tokio::test]
    async fn a_name_of_this_machine_is_refused_and_no_request_goes_out() {
        let server = wiremock::MockServer::start().await;
        let port = server.address().port();
        let http = super::super::client_for(super::super::Reach::default());
        let err = http.get(format!("http://localhost:{port}/")).send().await.unwrap_err();
        let chain = std::iter::successors(Some(&err as &dyn std::error::Error), |e| e.source())
            .any(|e| e.is::<LocalOnly>());
        assert!(chain, "{err:?}");
        assert!(server.received_requests().await.unwrap().is_empty());
        // A test set-up reaches it.
        let local =
            super::super::client_for(super::super::Reach { local_addresses: true, ..Default::default() });
        assert!(local.get(format!("http://localhost:{port}/")).send().await.is_ok());
    }
}
