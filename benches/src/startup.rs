//! Daemon start-up, timed from the spawn by signals subscribed to before it: exec -> the bus name
//! owned (`NameOwnerChanged` from the bus driver), exec -> `SessionState` settled (the Manager's
//! `PropertiesChanged`: 3 with a stored session, 1 without).

use std::{
    collections::HashMap,
    path::Path,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, anyhow, bail};
use futures_util::StreamExt;
use matrix_linkd_tests::{
    BUS_NAME, MANAGER_PATH, Session,
    api::{self, MANAGER_INTERFACE},
    daemon_bin,
};
use zbus::{MatchRule, MessageStream, message::Type as MessageType, zvariant::Value};

use crate::{common::median, idle::usage};

/// A daemon this module started (not one of the `Session`'s): killed when dropped.
pub struct Daemon {
    child: Child,
}

impl Daemon {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGTERM, then waits for it to leave.
    pub fn stop(&mut self) -> Result<()> {
        Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status()?;
        let deadline = Instant::now() + Duration::from_secs(15);
        while self.child.try_wait()?.is_none() {
            if Instant::now() > deadline {
                self.child.kill().ok();
                bail!("matrix-linkd did not stop on SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.child.kill().ok();
        self.child.wait().ok();
    }
}

pub struct Start {
    pub name_ms: f64,
    pub state_ms: f64,
    /// The state was read (`Get`) after the name appeared, not signalled: an upper bound.
    pub state_read: bool,
    pub rss_mib: f64,
}

async fn owned(mut names: MessageStream) -> Result<Instant> {
    while let Some(msg) = names.next().await {
        let (_, _, new): (String, String, String) = msg?.body().deserialize()?;
        if !new.is_empty() {
            return Ok(Instant::now());
        }
    }
    bail!("the bus connection closed")
}

async fn settled(mut props: MessageStream, want: u32) -> Result<Instant> {
    while let Some(msg) = props.next().await {
        let msg = msg?;
        let body = msg.body();
        let (iface, changed, _): (String, HashMap<String, Value<'_>>, Vec<String>) = body.deserialize()?;
        if iface == MANAGER_INTERFACE
            && let Some(Value::U32(s)) = changed.get(api::properties::SESSION_STATE)
            && *s == want
        {
            return Ok(Instant::now());
        }
    }
    bail!("the bus connection closed")
}

/// Starts the daemon binary in `session` (its stderr to `log`) and times it until `SessionState`
/// is `want`.
pub async fn start(session: &Session, want: u32, log: &Path) -> Result<(Daemon, Start)> {
    let conn = session.connect().await?;
    let names = MatchRule::builder()
        .msg_type(MessageType::Signal)
        .sender("org.freedesktop.DBus")?
        .interface("org.freedesktop.DBus")?
        .member("NameOwnerChanged")?
        .add_arg(BUS_NAME)?
        .build();
    let props = MatchRule::builder()
        .msg_type(MessageType::Signal)
        .interface("org.freedesktop.DBus.Properties")?
        .member("PropertiesChanged")?
        .path(MANAGER_PATH)?
        .build();
    let named = tokio::spawn(owned(MessageStream::for_match_rule(names, &conn, None).await?));
    let mut stated = tokio::spawn(settled(MessageStream::for_match_rule(props, &conn, None).await?, want));
    let t0 = Instant::now();
    let child = session
        .command(daemon_bin())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log)?)
        .spawn()
        .context("spawning matrix-linkd")?;
    let daemon = Daemon { child };
    let failed = |what: &str| anyhow!("{what}: {}", std::fs::read_to_string(log).unwrap_or_default());
    let name_at = tokio::time::timeout(Duration::from_secs(20), named)
        .await
        .map_err(|_| failed("matrix-linkd did not take its name in 20 s"))???;
    let (state_at, state_read) = match tokio::time::timeout(Duration::from_secs(10), &mut stated).await {
        Ok(at) => (at??, false),
        Err(_) => {
            stated.abort();
            // No change was signalled (the state was already there when the daemon began to
            // publish it): read it.
            let linkd = matrix_linkd_client::Linkd::with_connection(conn).await?;
            let now = linkd.manager().session_state().await?;
            if now != want {
                return Err(failed(&format!("SessionState stayed {now}, wanted {want}")));
            }
            (Instant::now(), true)
        }
    };
    let rss_mib = usage(daemon.pid()).map(|u| u.rss as f64 / 1024.0).unwrap_or(f64::NAN);
    let ms = |at: Instant| (at - t0).as_secs_f64() * 1000.0;
    Ok((daemon, Start { name_ms: ms(name_at), state_ms: ms(state_at), state_read, rss_mib }))
}

/// `starts` start-ups of the daemon in `session`, each stopped before the next; the last one is
/// left running. Prints each.
pub async fn series(
    session: &Session,
    label: &str,
    want: u32,
    starts: usize,
) -> Result<(Daemon, Vec<Start>)> {
    let mut out = Vec::new();
    let mut last = None;
    for i in 0..starts {
        if let Some(mut d) = last.take() {
            Daemon::stop(&mut d)?;
        }
        let log = session.dir.path().join(format!("startup-{label}-{i}.log"));
        let (d, s) = start(session, want, &log).await?;
        println!(
            "  {label} start {}/{starts}: name owned {:.1} ms, SessionState {want} {}{:.1} ms, RSS {:.1} MiB",
            i + 1,
            s.name_ms,
            if s.state_read { "(read, not signalled) ≤ " } else { "" },
            s.state_ms,
            s.rss_mib
        );
        out.push(s);
        last = Some(d);
    }
    Ok((last.expect("at least one start"), out))
}

/// `| start | n | exec → name owned (median; each) | exec → SessionState (median; each) | RSS |`
pub fn row(label: &str, want: u32, starts: &[Start]) -> String {
    let each = |f: &dyn Fn(&Start) -> f64| {
        starts.iter().map(|s| format!("{:.0}", f(s))).collect::<Vec<_>>().join(", ")
    };
    let read =
        if starts.iter().any(|s| s.state_read) { " (some read, not signalled: upper bounds)" } else { "" };
    format!(
        "| {label} | {} | {:.1} ms ({}) | {want}: {:.1} ms ({}){read} | {:.1} MiB |",
        starts.len(),
        median(starts.iter().map(|s| s.name_ms).collect()),
        each(&|s| s.name_ms),
        median(starts.iter().map(|s| s.state_ms).collect()),
        each(&|s| s.state_ms),
        median(starts.iter().map(|s| s.rss_mib).collect()),
    )
}
