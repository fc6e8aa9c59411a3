//! Answers are read as a stream and given up on as soon as they pass their cap: a server that
//! announces or sends more than we would ever use costs us no more than the cap.

use matrix_sdk::reqwest;
use serde_json::Value;

/// Why an answer's body was not read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum BodyError {
    #[error("the answer is larger than {0} bytes")]
    TooLarge(usize),
    #[error("the answer was cut off or came too slowly")]
    Network,
}

/// The whole body, at most `limit` bytes. A larger `Content-Length` is refused before reading.
pub async fn read_capped(mut response: reqwest::Response, limit: usize) -> Result<Vec<u8>, BodyError> {
    if response.content_length().is_some_and(|n| n > limit as u64) {
        return Err(BodyError::TooLarge(limit));
    }
    let mut out = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(|_| BodyError::Network)? {
        if out.len() + chunk.len() > limit {
            return Err(BodyError::TooLarge(limit));
        }
        out.extend_from_slice(&chunk);
    }
    Ok(out)
}

/// The status and the JSON body (`Null` when the body is not JSON), at most `limit` bytes.
pub async fn read_json(response: reqwest::Response, limit: usize) -> Result<(u16, Value), BodyError> {
    let status = response.status().as_u16();
    let bytes = read_capped(response, limit).await?;
    Ok((status, serde_json::from_slice(&bytes).unwrap_or(Value::Null)))
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    /// A server that answers every connection with `head` and then writes `body_chunk` forever.
    async fn endless(head: &'static str, body_chunk: &'static [u8]) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let mut buf = [0u8; 1024];
                    let _ = s.read(&mut buf).await;
                    if s.write_all(head.as_bytes()).await.is_err() {
                        return;
                    }
                    while s.write_all(body_chunk).await.is_ok() {}
                });
            }
        });
        format!("http://{addr}/")
    }

    #[tokio::test]
    async fn announced_and_streamed_excess_is_refused_early() {
        let http = crate::net::client();
        let url = endless("HTTP/1.1 200 OK\r\nContent-Length: 536870912\r\n\r\n", &[0u8; 65536]).await;
        let t = Instant::now();
        let r = http.get(&url).send().await.unwrap();
        assert_eq!(read_capped(r, 8192).await, Err(BodyError::TooLarge(8192)));
        assert!(t.elapsed() < Duration::from_secs(2));

        let url = endless("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n", b"4000\r\n").await;
        let r = http.get(&url).send().await.unwrap();
        // Chunk headers with no end: either over the cap or cut off, never read whole.
        assert!(read_capped(r, 8192).await.is_err());

        let url = endless("HTTP/1.1 200 OK\r\n\r\n", &[b'x'; 4096]).await;
        let r = http.get(&url).send().await.unwrap();
        assert_eq!(read_capped(r, 65536).await, Err(BodyError::TooLarge(65536)));
    }
}
