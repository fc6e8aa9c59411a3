//! Where a homeserver named by a QR code, the other device or the caller really is: an absolute
//! URL as it is (after the transport check); a server name through its `.well-known` document,
//! else the server name's own address if it serves the client API, else the homeserver the flow
//! already knows (where the rendezvous is) if it serves the client API. Many real server names
//! (`localhost`, names whose owners never published `.well-known`) only work through the last
//! two. Every answer read capped, every URL found checked; plain http only for loopback names.

use matrix_linkd_api::results::homeserver_found;
use matrix_sdk::reqwest;
use serde_json::Value;
use tracing::{debug, info};
use url::Url;

use super::{JSON_LIMIT, Reach, check_transport, is_loopback_name, read_json};
use matrix_linkd_wire::messages::HomeserverRef;

use crate::error::LinkError;

/// How long one discovery request may take: a name that does not answer must not hold a flow.
const TRY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// How a homeserver was found: for the logs and the flow's `Response` (`homeserver_found`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Found {
    /// It was named by URL.
    Url,
    /// The server name's `.well-known/matrix/client`.
    WellKnown,
    /// The server name's own address serves the client API.
    ServerName,
    /// The homeserver the flow already knew (where the rendezvous session is).
    RendezvousServer,
}

impl Found {
    pub fn as_str(self) -> &'static str {
        match self {
            Found::Url => homeserver_found::URL,
            Found::WellKnown => homeserver_found::WELL_KNOWN,
            Found::ServerName => homeserver_found::SERVER_NAME,
            Found::RendezvousServer => homeserver_found::RENDEZVOUS_SERVER,
        }
    }
}

/// The client-server API base URL of `named`, and how it was found. `known` is the homeserver the
/// flow already knows, tried last.
pub async fn homeserver(
    http: &reqwest::Client,
    named: &HomeserverRef,
    known: Option<&Url>,
    reach: Reach,
) -> Result<(Url, Found), LinkError> {
    let found = find(http, named, known, reach).await?;
    info!(how = found.1.as_str(), "homeserver found");
    Ok(found)
}

async fn find(
    http: &reqwest::Client,
    named: &HomeserverRef,
    known: Option<&Url>,
    reach: Reach,
) -> Result<(Url, Found), LinkError> {
    let name = match named {
        HomeserverRef::Url(url) => {
            check_transport(url, reach).map_err(|e| insecure(&e))?;
            return Ok((url.clone(), Found::Url));
        }
        HomeserverRef::ServerName(name) => name,
    };
    let scheme = if is_loopback_name(name) { "http" } else { "https" };
    let origin = Url::parse(&format!("{scheme}://{name}/"))
        .map_err(|_| LinkError::InvalidArgs("the homeserver name is not a server name".into()))?;
    check_transport(&origin, reach).map_err(|e| insecure(&e))?;
    if let Some(found) = well_known(http, &origin).await {
        check_transport(&found, reach).map_err(|e| insecure(&e))?;
        return Ok((found, Found::WellKnown));
    }
    if serves_client_api(http, &origin).await {
        return Ok((origin, Found::ServerName));
    }
    if let Some(known) = known
        && check_transport(known, reach).is_ok()
        && serves_client_api(http, known).await
    {
        return Ok((known.clone(), Found::RendezvousServer));
    }
    Err(LinkError::Network(format!(
        "cannot find the homeserver of `{name}` (no .well-known, no client API at the name or at the \
         rendezvous server)"
    )))
}

fn insecure(e: &super::UrlError) -> LinkError {
    LinkError::ProtocolError(format!("the homeserver URL is refused: {e}"))
}

/// `m.homeserver.base_url` of `<origin>/.well-known/matrix/client`.
async fn well_known(http: &reqwest::Client, origin: &Url) -> Option<Url> {
    let url = origin.join(".well-known/matrix/client").ok()?;
    let r = http.get(url).timeout(TRY_TIMEOUT).send().await.ok()?;
    let (status, v) = read_json(r, JSON_LIMIT).await.ok()?;
    if status != 200 {
        debug!(status, "no .well-known document");
        return None;
    }
    let base = v.pointer("/m.homeserver/base_url").and_then(Value::as_str)?;
    let mut url = Url::parse(base).ok()?;
    if !url.path().ends_with('/') {
        url.set_path(&format!("{}/", url.path()));
    }
    Some(url)
}

/// `<base>/_matrix/client/versions` answers with a list of versions.
pub async fn serves_client_api(http: &reqwest::Client, base: &Url) -> bool {
    versions(http, base).await.is_some_and(|v| v.get("versions").is_some_and(Value::is_array))
}

/// The `/_matrix/client/versions` document of `base`, read capped.
pub async fn versions(http: &reqwest::Client, base: &Url) -> Option<Value> {
    let url = base.join("_matrix/client/versions").ok()?;
    let r = http.get(url).timeout(TRY_TIMEOUT).send().await.ok()?;
    match read_json(r, JSON_LIMIT).await {
        Ok((200, v)) => Some(v),
        _ => None,
    }
}
