//! Where a homeserver named by a QR code, the other device or the caller really is: an absolute
//! URL as it is (after the transport check), a server name through its `.well-known` document,
//! else the server name's own address if it serves the client API. Every answer read capped,
//! every URL found checked; plain http only for loopback names.

use matrix_sdk::reqwest;
use serde_json::Value;
use tracing::{debug, info};
use url::Url;

use super::{JSON_LIMIT, check_transport, is_loopback_name, read_json};
use matrix_linkd_wire::messages::HomeserverRef;

use crate::error::LinkError;

/// How long one discovery request may take: a name that does not answer must not hold a flow.
const TRY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// The client-server API base URL of `named`.
pub async fn homeserver(
    http: &reqwest::Client,
    named: &HomeserverRef,
    allow_http: bool,
) -> Result<Url, LinkError> {
    let name = match named {
        HomeserverRef::Url(url) => {
            check_transport(url, allow_http).map_err(|e| insecure(&e))?;
            return Ok(url.clone());
        }
        HomeserverRef::ServerName(name) => name,
    };
    let scheme = if is_loopback_name(name) { "http" } else { "https" };
    let origin = Url::parse(&format!("{scheme}://{name}/"))
        .map_err(|_| LinkError::InvalidArgs("the homeserver name is not a server name".into()))?;
    if let Some(found) = well_known(http, &origin).await {
        check_transport(&found, allow_http).map_err(|e| insecure(&e))?;
        info!(how = "well-known", "homeserver found");
        return Ok(found);
    }
    if serves_client_api(http, &origin).await {
        info!(how = "server name", "homeserver found");
        return Ok(origin);
    }
    Err(LinkError::Network(format!("cannot find the homeserver of `{name}` (no .well-known, no client API)")))
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
