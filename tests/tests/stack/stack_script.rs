//! The stack's own start script (`stack/start.sh`): a port the stack could not keep is refused by
//! name before anything starts.
//!
//! Why: `make test` once ran its `localhost` stack on ports 48008/48080, inside the kernel's
//! ephemeral range. A closed client connection from the tests before it held 48080 in TIME_WAIT
//! (which blocks a listener even with SO_REUSEADDR), and the OAuth server died with only
//! "oauth died" printed. One run in many failed so.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Command, Output};

use anyhow::{Context, Result, ensure};
use matrix_linkd_tests::workspace_root;

fn start(name: &str, synapse_port: u16, oauth_port: u16) -> Result<(Output, PathBuf)> {
    let dir = workspace_root().join(".stack").join(name);
    if dir.exists() {
        std::fs::remove_dir_all(&dir)?;
    }
    let out = Command::new(workspace_root().join("stack/start.sh"))
        .env("STACK_NAME", name)
        .env("SYNAPSE_PORT", synapse_port.to_string())
        .env("OAUTH_PORT", oauth_port.to_string())
        .output()?;
    // Whatever happened, leave nothing running.
    Command::new(workspace_root().join("stack/stop.sh")).env("STACK_NAME", name).output()?;
    Ok((out, dir))
}

fn refused(out: &Output, dir: &std::path::Path, expected: &str) -> Result<()> {
    let stderr = String::from_utf8_lossy(&out.stderr);
    ensure!(!out.status.success(), "start.sh succeeded: {stderr}");
    ensure!(stderr.contains(expected), "expected {expected:?} in: {stderr}");
    // Refused before anything was written or started (stop.sh removes PID files, not the folder).
    ensure!(!dir.exists(), "start.sh made {} before refusing: {stderr}", dir.display());
    ensure!(!stderr.contains("died"), "a server was started: {stderr}");
    Ok(())
}

fn ephemeral_range() -> Result<(u16, u16)> {
    let text = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")?;
    let mut it = text.split_whitespace().map(str::parse::<u16>);
    Ok((it.next().context("low")??, it.next().context("high")??))
}

#[test]
fn a_port_in_the_ephemeral_range_is_refused() -> Result<()> {
    let (lo, hi) = ephemeral_range()?;
    let port = lo.saturating_add(15_000).min(hi);
    let (out, dir) = start("portcheck-ephemeral", 28908, port)?;
    refused(&out, &dir, &format!("port {port} lies in the kernel's ephemeral range ({lo}-{hi})"))
}

#[test]
fn a_taken_port_is_named() -> Result<()> {
    // Held the way a closed connection holds a port: bound, not listening.
    let held = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)?;
    held.bind(&"127.0.0.1:28990".parse::<std::net::SocketAddr>()?.into())?;
    let (out, dir) = start("portcheck-bound", 28918, 28990)?;
    refused(&out, &dir, "port 28990 on 127.0.0.1 is taken (Address already in use)")?;
    drop(held);

    // And by a listener.
    let listener = TcpListener::bind("127.0.0.1:28928")?;
    let (out, dir) = start("portcheck-listening", 28928, 28998)?;
    refused(&out, &dir, "port 28928 on 127.0.0.1 is taken (Address already in use)")?;
    drop(listener);
    Ok(())
}
