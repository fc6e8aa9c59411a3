//! Unit tests of the rendezvous clients: against wiremock servers and raw sockets that answer as
//! homeservers, proxies and load balancers do.

use super::*;

#[test]
fn errors_map_to_names() {
    assert_eq!(map_error(404, "M_NOT_FOUND"), RendezvousError::Expired);
    assert_eq!(map_error(404, "M_UNRECOGNIZED"), RendezvousError::Unavailable(404));
    assert_eq!(map_error(412, "M_CONCURRENT_WRITE"), RendezvousError::Conflict);
    assert_eq!(map_error(409, "IO_ELEMENT_MSC4388_CONCURRENT_WRITE"), RendezvousError::Conflict);
    assert_eq!(map_error(413, "M_TOO_LARGE"), RendezvousError::TooLarge);
    assert_eq!(map_error(401, "M_MISSING_TOKEN"), RendezvousError::SignInRequired);
    assert_eq!(map_error(401, ""), RendezvousError::Unavailable(401));
    let told = crate::error::LinkError::from(RendezvousError::SignInRequired).to_string();
    assert!(told.contains("msc4388_mode"), "{told}");
    let told = crate::error::LinkError::from(RendezvousError::Lost).to_string();
    assert!(told.contains("worker"), "{told}");
    assert_eq!(map_error(500, ""), RendezvousError::Status(500));
}

#[test]
fn endpoints_keep_base_paths() {
    let u = latest_endpoint(&Url::parse("https://example.org").unwrap()).unwrap();
    assert_eq!(u.as_str(), "https://example.org/_matrix/client/unstable/io.element.msc4388/rendezvous");
    let u = latest_endpoint(&Url::parse("https://example.org/matrix").unwrap()).unwrap();
    assert_eq!(
        u.as_str(),
        "https://example.org/matrix/_matrix/client/unstable/io.element.msc4388/rendezvous"
    );
}

/// A 2024 read that is dropped after the headers (with the new ETag) but before the body must
/// not mark the message as seen: the next read gets it.
#[tokio::test]
async fn a_read_dropped_half_way_loses_no_message() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let mut first = true;
        while let Ok((mut s, _)) = listener.accept().await {
            let slow = std::mem::replace(&mut first, false);
            tokio::spawn(async move {
                let mut buf = vec![0u8; 4096];
                let n = s.read(&mut buf).await.unwrap_or(0);
                let request = String::from_utf8_lossy(&buf[..n]).to_ascii_lowercase();
                if request.contains("if-none-match: \"1\"") {
                    let _ = s.write_all(b"HTTP/1.1 304 Not Modified\r\nETag: \"1\"\r\n\r\n").await;
                    return;
                }
                let _ = s.write_all(b"HTTP/1.1 200 OK\r\nETag: \"1\"\r\nContent-Length: 5\r\n\r\n").await;
                if slow {
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
                let _ = s.write_all(b"hello").await;
            });
        }
    });
    let mut session =
        Session2024::join(&http_client(), Url::parse(&format!("http://{addr}/rendezvous/1")).unwrap());
    assert!(tokio::time::timeout(Duration::from_millis(200), session.poll()).await.is_err());
    assert_eq!(session.poll().await, Ok(Some("hello".to_owned())));
    assert_eq!(session.poll().await, Ok(None));
}

/// A create answered `404 M_NOT_FOUND` (a proxy or worker without the route) means the server
/// offers no session there, not that one expired. Found by the fault-injection suite.
#[tokio::test]
async fn a_create_not_found_is_no_rendezvous_here() {
    use wiremock::{Mock, MockServer, ResponseTemplate, matchers::method};
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(404).set_body_json(json!({"errcode": "M_NOT_FOUND"})))
        .mount(&server)
        .await;
    let base = Url::parse(&server.uri()).unwrap();
    let http = http_client();
    let v2024 = Session2024::create(&http, &base, net::Reach::ANYWHERE).await.map(|_| ());
    assert_eq!(v2024, Err(RendezvousError::Unavailable(404)));
    let latest = SessionLatest::create(&http, &base, None).await.map(|_| ());
    assert_eq!(latest, Err(RendezvousError::Unavailable(404)));
}

/// A server that reads one request per connection, logs its method and writes what `answer` gives
/// for that method and how many of its kind came before (`None`: the connection closes without an
/// answer, as a reset or a proxy time-out leaves it).
async fn answering(
    answer: impl Fn(&str, usize) -> Option<Vec<u8>> + Send + 'static,
) -> (std::net::SocketAddr, std::sync::Arc<std::sync::Mutex<Vec<String>>>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let log = seen.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let mut buf = vec![0u8; 4096];
            let n = s.read(&mut buf).await.unwrap_or(0);
            let request = String::from_utf8_lossy(&buf[..n]).to_ascii_lowercase();
            let method = request.split(' ').next().unwrap_or_default().to_uppercase();
            let before = log.lock().unwrap().iter().filter(|m| **m == method).count();
            log.lock().unwrap().push(method.clone());
            if let Some(bytes) = answer(&method, before) {
                let _ = s.write_all(&bytes).await;
            }
        }
    });
    (addr, seen)
}

/// A 2024 write that lands but whose answer is lost (the connection drops), after which the
/// other device answers at once: the retry meets `412`, the slot holds the other device's
/// answer, so the write is done, that answer is the next read, and the session is ours to
/// delete. Found by the fault-injection suite (a reset at the scanner's `LoginInitiate`).
#[tokio::test]
async fn a_write_whose_answer_was_lost_is_made_sure_of() {
    let (addr, seen) = answering(|method, before| {
        let answer: &[u8] = match method {
            // The first write lands (and the other device answers); its answer is lost.
            "PUT" if before == 0 => return None,
            "PUT" => b"HTTP/1.1 412 Precondition Failed\r\nETag: \"3\"\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}",
            "GET" => b"HTTP/1.1 200 OK\r\nETag: \"3\"\r\nContent-Length: 6\r\nConnection: close\r\n\r\ntheirs",
            _ => b"HTTP/1.1 204 No Content\r\nConnection: close\r\n\r\n",
        };
        Some(answer.to_vec())
    })
    .await;
    let url = Url::parse(&format!("http://{addr}/rendezvous/1")).unwrap();
    let mut session = Session2024::join(&http_client(), url);
    assert_eq!(session.send("ours").await, Ok(()));
    assert_eq!(session.poll().await, Ok(Some("theirs".to_owned())));
    session.delete().await;
    assert_eq!(*seen.lock().unwrap(), ["PUT", "PUT", "GET", "DELETE"]);
}

/// A latest-generation write whose answer is lost twice: the flow fails, but the session counts
/// as ours (the write may have landed), so it is deleted and the other device sees it end.
#[tokio::test]
async fn a_latest_write_whose_answer_was_lost_leaves_the_session_ours_to_delete() {
    let (addr, seen) = answering(|method, _| match method {
        "PUT" => None,
        "GET" => {
            let body = r#"{"sequence_token":"t1","data":"","expires_in_ms":60000}"#;
            Some(
                format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                )
                .into_bytes(),
            )
        }
        _ => Some(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}".to_vec()),
    })
    .await;
    let base = Url::parse(&format!("http://{addr}/")).unwrap();
    let mut session = SessionLatest::join(&http_client(), &base, "01J").await.unwrap();
    assert_eq!(session.send("ours").await, Err(RendezvousError::Network));
    session.delete().await;
    assert_eq!(*seen.lock().unwrap(), ["GET", "PUT", "PUT", "DELETE"]);
}

/// A rendezvous behind a load balancer: the first write of each payload meets a worker that had
/// not caught up (`412` for 2024, `409` for the latest), and the server's clock is two hours
/// ahead of ours.
struct Lagging {
    latest: bool,
    state: std::sync::Mutex<(u64, String, std::collections::HashSet<String>, Vec<String>)>,
}

impl wiremock::Respond for Lagging {
    fn respond(&self, req: &wiremock::Request) -> wiremock::ResponseTemplate {
        use wiremock::ResponseTemplate as R;
        let mut st = self.state.lock().unwrap();
        let (etag, data, refused, puts) = &mut *st;
        let date = std::time::SystemTime::now() + Duration::from_secs(7200);
        let dated = |r: R, etag: u64| {
            r.insert_header("ETag", format!("\"{etag}\""))
                .insert_header("Date", httpdate::fmt_http_date(date))
                .insert_header("Expires", httpdate::fmt_http_date(date + Duration::from_secs(60)))
        };
        let header = |n: &str| req.headers.get(n).and_then(|v| v.to_str().ok()).map(str::to_owned);
        let current = format!("\"{etag}\"");
        let refuse = |latest: bool| {
            if latest {
                R::new(409).set_body_json(json!({"errcode": "IO_ELEMENT_MSC4388_CONCURRENT_WRITE"}))
            } else {
                R::new(412).set_body_json(json!({"errcode": "M_CONCURRENT_WRITE"}))
            }
        };
        match req.method.as_str() {
            "GET" if self.latest => R::new(200).set_body_json(
                json!({"sequence_token": etag.to_string(), "data": data, "expires_in_ms": 60_000}),
            ),
            "GET" if header("if-none-match").as_deref() == Some(current.as_str()) => {
                dated(R::new(304), *etag)
            }
            "GET" => dated(R::new(200).set_body_string(data.clone()), *etag),
            "PUT" => {
                let (precondition, payload) = if self.latest {
                    let v: Value = serde_json::from_slice(&req.body).unwrap();
                    (v["sequence_token"].as_str().unwrap().to_owned(), v["data"].as_str().unwrap().to_owned())
                } else {
                    let tag = header("if-match").unwrap_or_default();
                    (tag.trim_matches('"').to_owned(), String::from_utf8(req.body.clone()).unwrap())
                };
                puts.push(payload.clone());
                if refused.insert(payload.clone()) || precondition != etag.to_string() {
                    return refuse(self.latest);
                }
                *etag += 1;
                *data = payload;
                if self.latest {
                    R::new(200).set_body_json(json!({"sequence_token": etag.to_string()}))
                } else {
                    dated(R::new(202), *etag)
                }
            }
            _ => R::new(405),
        }
    }
}

async fn lagging(latest: bool) -> (wiremock::MockServer, std::sync::Arc<Lagging>) {
    let server = wiremock::MockServer::start().await;
    let responder = std::sync::Arc::new(Lagging {
        latest,
        state: std::sync::Mutex::new((1, String::new(), Default::default(), vec![])),
    });
    wiremock::Mock::given(wiremock::matchers::any())
        .respond_with(ArcResponder(responder.clone()))
        .mount(&server)
        .await;
    (server, responder)
}

struct ArcResponder(std::sync::Arc<Lagging>);

impl wiremock::Respond for ArcResponder {
    fn respond(&self, req: &wiremock::Request) -> wiremock::ResponseTemplate {
        self.0.respond(req)
    }
}

#[tokio::test]
async fn writes_refused_by_a_lagging_worker_are_tried_again_unchanged() {
    let (server, state) = lagging(false).await;
    let mut s = Session2024::join(&http_client(), Url::parse(&format!("{}/rv/1", server.uri())).unwrap());
    assert_eq!(s.poll().await, Ok(None));
    // Expiry from the server's own Date and Expires: its clock being two hours off does not
    // end the session early (or late).
    let left = s.expires_at().unwrap() - tokio::time::Instant::now();
    assert!(left > Duration::from_secs(50) && left <= Duration::from_secs(60), "{left:?}");
    s.send("one").await.unwrap();
    s.send("two").await.unwrap();
    assert_eq!(state.state.lock().unwrap().3, ["one", "one", "two", "two"], "the same payload again");

    let (server, state) = lagging(true).await;
    let base = Url::parse(&server.uri()).unwrap();
    let mut s = SessionLatest::join(&http_client(), &base, "01J").await.unwrap();
    s.send("one").await.unwrap();
    s.send("two").await.unwrap();
    assert_eq!(s.token(), "3");
    assert_eq!(state.state.lock().unwrap().3, ["one", "one", "two", "two"], "the same payload again");
}

#[test]
fn server_lifetimes_are_bounded() {
    let far = deadline_in(Duration::from_secs(u64::MAX));
    assert!(far <= tokio::time::Instant::now() + MAX_TTL);
    let base = Url::parse("https://example.org").unwrap();
    let mut s = SessionLatest::for_test(&base, "01J", "T1");
    s.expires_in = Duration::from_millis(u64::MAX);
    assert_eq!(s.expires_in(), MAX_TTL);
}

#[test]
fn redirects_are_named() {
    assert_eq!(map_error(307, ""), RendezvousError::Redirect(307));
    assert_eq!(map_error(302, ""), RendezvousError::Redirect(302));
}

#[test]
fn oversized_payloads_are_refused_locally() {
    assert_eq!(check_size(&"x".repeat(MAX_PAYLOAD + 1)), Err(RendezvousError::TooLarge));
    assert_eq!(check_size(&"x".repeat(MAX_PAYLOAD)), Ok(()));
}

/// A scanned code may name any URL: we delete only what we created or wrote to.
#[tokio::test]
async fn sessions_we_neither_made_nor_wrote_are_never_deleted() {
    use wiremock::{Mock, ResponseTemplate, matchers};
    let server = wiremock::MockServer::start().await;
    Mock::given(matchers::method("PUT")).respond_with(ResponseTemplate::new(403)).mount(&server).await;
    Mock::given(matchers::method("GET")).respond_with(ResponseTemplate::new(200)).mount(&server).await;
    Mock::given(matchers::method("DELETE")).respond_with(ResponseTemplate::new(200)).mount(&server).await;
    let deletes = || async {
        let all = server.received_requests().await.unwrap();
        all.iter().filter(|r| r.method == wiremock::http::Method::DELETE).count()
    };
    let url = Url::parse(&format!("{}/some/path?query", server.uri())).unwrap();
    let mut s = Session2024::join(&http_client(), url);
    assert!(s.send("refused").await.is_err());
    s.delete().await;
    let base = Url::parse(&server.uri()).unwrap();
    let latest = SessionLatest::for_test(&base, "01J", "T1");
    latest.delete().await;
    assert_eq!(deletes().await, 0, "a DELETE went to a session that is not ours");

    // Once our write is in, the session is ours to end.
    server.reset().await;
    Mock::given(matchers::method("PUT"))
        .respond_with(ResponseTemplate::new(202).insert_header("ETag", "\"2\""))
        .mount(&server)
        .await;
    Mock::given(matchers::method("DELETE")).respond_with(ResponseTemplate::new(200)).mount(&server).await;
    let mut s = Session2024::join(&http_client(), Url::parse(&format!("{}/rv/1", server.uri())).unwrap());
    s.send("ours").await.unwrap();
    s.delete().await;
    assert_eq!(deletes().await, 1);
}

/// The URL in a create answer is polled and goes into our own QR code: same rules as any URL
/// from outside.
#[tokio::test]
async fn a_created_session_url_must_pass_the_transport_rules() {
    use wiremock::{Mock, ResponseTemplate, matchers};
    let server = wiremock::MockServer::start().await;
    let created = |url: &str| ResponseTemplate::new(201).set_body_json(serde_json::json!({ "url": url }));
    let base = Url::parse(&server.uri()).unwrap();
    let test_set_up = net::Reach { local_addresses: true, insecure_http: false };
    for (url, reach, refused) in [
        ("http://192.0.2.7/rv/1", test_set_up, net::UrlError::InsecureHttp),
        ("https://169.254.169.254/rv/1", net::Reach::default(), net::UrlError::LocalAddress),
        ("https://user:pw@hs.example.org/rv/1", test_set_up, net::UrlError::Credentials),
    ] {
        server.reset().await;
        Mock::given(matchers::method("POST")).respond_with(created(url)).mount(&server).await;
        let err = Session2024::create(&http_client(), &base, reach).await.unwrap_err();
        assert_eq!(err, RendezvousError::RefusedUrl(refused), "{url}");
        assert!(crate::error::LinkError::from(err).to_string().contains("refused"));
    }
    server.reset().await;
    Mock::given(matchers::method("POST"))
        .respond_with(created("https://hs.example.org/rv/1"))
        .mount(&server)
        .await;
    assert!(Session2024::create(&http_client(), &base, test_set_up).await.is_ok());
}

/// A homeserver behind a proxy that rewrites ETags as deployments do: `Weaken` is nginx with
/// `gzip on` (a client that accepts gzip gets `W/"T"`), `Always` weakens every answer,
/// `Suffix` is Apache's `"T-gzip"`, `Mangle` makes the tag unrecognisable. The homeserver
/// behind it compares `If-Match` strictly, as Synapse does.
#[derive(Clone, Copy, PartialEq)]
enum Rewrite {
    Weaken,
    Always,
    Suffix,
    Mangle,
}

struct Proxy {
    rewrite: Rewrite,
    state: std::sync::Mutex<(u64, String)>,
}

impl wiremock::Respond for Proxy {
    fn respond(&self, req: &wiremock::Request) -> wiremock::ResponseTemplate {
        use wiremock::ResponseTemplate as R;
        let mut st = self.state.lock().unwrap();
        let (etag, data) = &mut *st;
        let header = |n: &str| req.headers.get(n).and_then(|v| v.to_str().ok()).map(str::to_owned);
        let gzip = header("accept-encoding").is_some_and(|a| a.contains("gzip"));
        let shown = |n: u64| match self.rewrite {
            Rewrite::Weaken if gzip => format!("W/\"{n}\""),
            Rewrite::Weaken => format!("\"{n}\""),
            Rewrite::Always => format!("W/\"{n}\""),
            Rewrite::Suffix => format!("\"{n}-gzip\""),
            Rewrite::Mangle => format!("\"x{n}y\""),
        };
        let strong = format!("\"{etag}\"");
        match req.method.as_str() {
            // If-None-Match compares weakly (RFC 9110), at the proxy or the server.
            "GET"
                if header("if-none-match").is_some_and(|t| {
                    t.trim_start_matches("W/") == shown(*etag).trim_start_matches("W/") || t == strong
                }) =>
            {
                R::new(304).insert_header("ETag", shown(*etag))
            }
            "GET" => R::new(200).insert_header("ETag", shown(*etag)).set_body_string(data.clone()),
            "PUT" if header("if-match").as_deref() != Some(strong.as_str()) => {
                R::new(412).set_body_json(json!({"errcode": "M_CONCURRENT_WRITE"}))
            }
            "PUT" => {
                *etag += 1;
                *data = String::from_utf8(req.body.clone()).unwrap();
                R::new(202).insert_header("ETag", shown(*etag))
            }
            _ => R::new(405),
        }
    }
}

async fn behind(rewrite: Rewrite) -> wiremock::MockServer {
    let server = wiremock::MockServer::start().await;
    let proxy = Proxy { rewrite, state: std::sync::Mutex::new((1, String::new())) };
    wiremock::Mock::given(wiremock::matchers::any()).respond_with(proxy).mount(&server).await;
    server
}

/// The most common deployment, a TLS proxy with gzip on, broke every flow: our tag came back
/// weakened, the homeserver refused it, and the daemon blamed another writer.
#[tokio::test]
async fn etags_survive_proxies_that_rewrite_them() {
    for rewrite in [Rewrite::Weaken, Rewrite::Always, Rewrite::Suffix] {
        let server = behind(rewrite).await;
        let url = Url::parse(&format!("{}/rv/1", server.uri())).unwrap();
        let mut s = Session2024::join(&http_client(), url);
        assert_eq!(s.poll().await, Ok(None));
        s.send("one").await.unwrap();
        s.send("two").await.unwrap();
        let asked: Vec<_> = server.received_requests().await.unwrap();
        assert!(
            asked.iter().all(|r| r.headers.get("accept-encoding").is_some_and(|v| v == "identity")),
            "every read asks for the identity encoding"
        );
    }
    // A tag changed past recognition is named for what it is, for an administrator to act on.
    let server = behind(Rewrite::Mangle).await;
    let mut s = Session2024::join(&http_client(), Url::parse(&format!("{}/rv/1", server.uri())).unwrap());
    assert_eq!(s.poll().await, Ok(None));
    let err = s.send("one").await.unwrap_err();
    assert_eq!(err, RendezvousError::AlteredEtag);
    let message = crate::error::LinkError::from(err).to_string();
    assert!(message.contains("proxy") && message.contains("ETag"), "{message}");
}

#[test]
fn rewritten_etags_are_read_as_the_server_made_them() {
    let tag = |t: &str| {
        let mut h = header::HeaderMap::new();
        h.insert(header::ETAG, header::HeaderValue::from_str(t).unwrap());
        etag_of(&h).unwrap()
    };
    assert_eq!(tag("\"7\""), "\"7\"");
    assert_eq!(tag("W/\"7\""), "\"7\"");
    assert_eq!(tag("\"7-gzip\""), "\"7\"");
    assert_eq!(tag("W/\"7-br\""), "\"7\"");
    assert_eq!(tag("\"-gzip\""), "\"-gzip\"", "nothing left: kept as it is");
    assert_eq!(tag("unquoted"), "unquoted");
}

/// Servers as they differ: Synapse's `msc4388_mode: authenticated` refuses an unauthenticated
/// discovery with 401 where the MSC says 403; a worker without the session answers 404 long
/// before the session's announced end.
#[tokio::test]
async fn servers_as_they_differ_get_named_answers() {
    use wiremock::{Mock, ResponseTemplate, matchers};
    let server = wiremock::MockServer::start().await;
    let base = Url::parse(&server.uri()).unwrap();
    let missing = serde_json::json!({"errcode": "M_MISSING_TOKEN", "error": "Missing access token"});
    Mock::given(matchers::method("GET"))
        .and(matchers::path_regex("rendezvous$"))
        .respond_with(ResponseTemplate::new(401).set_body_json(missing.clone()))
        .mount(&server)
        .await;
    Mock::given(matchers::method("POST"))
        .respond_with(ResponseTemplate::new(401).set_body_json(missing))
        .mount(&server)
        .await;
    assert_eq!(SessionLatest::discover(&http_client(), &base, None).await, Ok(false));
    let created = SessionLatest::create(&http_client(), &base, None).await.unwrap_err();
    assert_eq!(created, RendezvousError::SignInRequired);

    server.reset().await;
    let now = std::time::SystemTime::now();
    Mock::given(matchers::method("GET"))
        .respond_with(
            ResponseTemplate::new(200)
                .insert_header("ETag", "\"1\"")
                .insert_header("Date", httpdate::fmt_http_date(now))
                .insert_header("Expires", httpdate::fmt_http_date(now + Duration::from_secs(120))),
        )
        .up_to_n_times(1)
        .mount(&server)
        .await;
    Mock::given(matchers::method("GET"))
        .respond_with(ResponseTemplate::new(404).set_body_json(serde_json::json!({"errcode": "M_NOT_FOUND"})))
        .mount(&server)
        .await;
    let mut s = Session2024::join(&http_client(), Url::parse(&format!("{}/rv/1", server.uri())).unwrap());
    assert_eq!(s.poll().await, Ok(None));
    assert_eq!(s.poll().await, Err(RendezvousError::Lost), "120 s before its end");
}
