//! A hostile HTTP server on 127.0.0.1, for tests of what the daemon does with servers that a QR
//! code or a lying device names. What it does is chosen by the path's first segment:
//!
//! - `/huge/…`: `200` announcing 512 MiB, then zeros for as long as anyone reads;
//! - `/endless/…`: `200`, chunked, 64 KiB chunks forever;
//! - `/unannounced/…`: `200` with no length, zeros until the reader hangs up;
//! - `/trickle/…`: the status line and headers, one byte every 200 ms;
//! - `/redirect/…`: `307` to the same path on `redirect_to` (another server);
//! - anything else: `404`.
//!
//! Every request line is recorded.

use std::{
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
};

pub struct Hostile {
    pub addr: SocketAddr,
    requests: Arc<Mutex<Vec<String>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Hostile {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Hostile {
    /// Starts the server; `/redirect/…` points at `redirect_to` (`http://host:port`).
    pub async fn start(redirect_to: Option<String>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let requests = Arc::new(Mutex::new(Vec::new()));
        let recorded = requests.clone();
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let (recorded, redirect_to) = (recorded.clone(), redirect_to.clone());
                tokio::spawn(async move {
                    let _ = serve(stream, recorded, redirect_to).await;
                });
            }
        });
        Self { addr, requests, task }
    }

    pub fn uri(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// `METHOD /path` of every request so far.
    pub fn requests(&self) -> Vec<String> {
        self.requests.lock().unwrap().clone()
    }
}

async fn serve(
    mut s: TcpStream,
    recorded: Arc<Mutex<Vec<String>>>,
    redirect_to: Option<String>,
) -> std::io::Result<()> {
    let mut buf = vec![0u8; 16 * 1024];
    let n = s.read(&mut buf).await?;
    let head = String::from_utf8_lossy(&buf[..n]).into_owned();
    let line = head.lines().next().unwrap_or_default().to_owned();
    let mut parts = line.split(' ');
    let (method, path) = (parts.next().unwrap_or_default(), parts.next().unwrap_or_default().to_owned());
    recorded.lock().unwrap().push(format!("{method} {path}"));
    let zeros = vec![0u8; 64 * 1024];
    match path.split('/').nth(1).unwrap_or_default() {
        "huge" => {
            s.write_all(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 536870912\r\n\r\n")
                .await?;
            loop {
                s.write_all(&zeros).await?;
            }
        }
        "endless" => {
            s.write_all(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nTransfer-Encoding: chunked\r\n\r\n")
                .await?;
            loop {
                s.write_all(b"10000\r\n").await?;
                s.write_all(&zeros).await?;
                s.write_all(b"\r\n").await?;
            }
        }
        "unannounced" => {
            s.write_all(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nConnection: close\r\n\r\n").await?;
            loop {
                s.write_all(&zeros).await?;
            }
        }
        "trickle" => {
            for b in
                b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nX-Slow: ".iter().chain([b'x'; 10_000].iter())
            {
                s.write_all(&[*b]).await?;
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Ok(())
        }
        "redirect" => {
            let target = format!("{}{path}", redirect_to.unwrap_or_default());
            let answer = format!(
                "HTTP/1.1 307 Temporary Redirect\r\nLocation: {target}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            );
            s.write_all(answer.as_bytes()).await
        }
        _ => s.write_all(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n").await,
    }
}

/// Resident memory of process `pid`, in KiB.
pub fn rss_kib(pid: u32) -> u64 {
    status_kib(pid, "VmRSS:")
}

/// The process's peak resident set (`VmHWM`), in KiB: what a burst cost, even if it was freed.
pub fn peak_rss_kib(pid: u32) -> u64 {
    status_kib(pid, "VmHWM:")
}

fn status_kib(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix(field))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}
