//! The own engine's device authorization grant against the real OAuth server (through Synapse's
//! auth metadata): registration with `response_types: []`, the device request with the stable
//! scopes, consent or denial on the server's own pages, token polling, and the token on Synapse.

use anyhow::Result;
use matrix_linkd::protocol::device_grant::{self, GrantError};
use matrix_linkd_tests::stack::Stack;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn device_grant_signs_a_device_in() -> Result<()> {
    let stack = Stack::main()?;
    let http = matrix_linkd::protocol::rendezvous::http_client();
    let meta = device_grant::metadata(&http, &stack.synapse, matrix_linkd::net::Reach::ANYWHERE).await?;
    assert_eq!(meta.issuer, stack.oauth);
    let client_id =
        device_grant::register(&http, &meta, "matrix-linkd test", &"https://example.org/".parse()?).await?;
    let device_id = device_grant::new_device_id();
    let auth = device_grant::authorize(&http, &meta, &client_id, &device_id).await?;
    let login = Stack::new_login("dg");
    stack.approve(&auth.user_code, &login, false)?;
    let tokens = device_grant::poll_tokens(&http, &meta, &client_id, &auth).await?;
    assert!(tokens.refresh_token.is_some(), "the server must issue a refresh token");
    let (user, device) = stack.whoami(&tokens.access_token).await?;
    assert_eq!((user, device), (stack.user_id(&login), device_id));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn denied_consent_is_named() -> Result<()> {
    let stack = Stack::main()?;
    let http = matrix_linkd::protocol::rendezvous::http_client();
    let meta = device_grant::metadata(&http, &stack.synapse, matrix_linkd::net::Reach::ANYWHERE).await?;
    let client_id =
        device_grant::register(&http, &meta, "matrix-linkd test", &"https://example.org/".parse()?).await?;
    let auth = device_grant::authorize(&http, &meta, &client_id, &device_grant::new_device_id()).await?;
    stack.approve(&auth.user_code, &Stack::new_login("dd"), true)?;
    let r = device_grant::poll_tokens(&http, &meta, &client_id, &auth).await;
    assert_eq!(r.err(), Some(GrantError::AccessDenied));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_without_oauth_is_named() -> Result<()> {
    let http = matrix_linkd::protocol::rendezvous::http_client();
    // The OAuth server itself is no Matrix homeserver: no auth metadata there.
    let stack = Stack::main()?;
    let r = device_grant::metadata(&http, &stack.oauth, matrix_linkd::net::Reach::ANYWHERE).await;
    assert_eq!(r.err(), Some(GrantError::NoOAuth));
    Ok(())
}
