//! D-Bus activation: a private bus that knows the daemon only by its activation file
//! (`systemd/io.github.matrix_linkd.Linkd1.service.in`, `Exec=` the daemon measured), and a
//! first call to the name, `Properties.Get(SessionState)`, that starts it. Timed from the call to
//! its reply; the reply must carry the settled state (1, no session kept), not 0 (`Unknown`) or 2
//! (`Restoring`) while the daemon looks in the keyring.

use std::time::Instant;

use anyhow::Result;
use matrix_linkd_tests::{BUS_NAME, Session, SessionOptions};
use zbus::{fdo::DBusProxy, names::BusName};

use crate::common::median;

pub struct Activation {
    pub reply_ms: f64,
    pub state: u32,
}

/// `n` activations, each on a bus and keyring of its own. The activation file names the daemon
/// beside this program; only when that is the daemon measured, and `LINKD_NO_REBUILD` is set (as
/// `make bench` sets it: else the tests crate would build the workspace's debug programs first).
pub async fn series(n: usize) -> Result<Vec<Activation>> {
    let mut out = Vec::new();
    if std::env::var_os("LINKD_NO_REBUILD").is_none() {
        println!("  activation: not measured (set LINKD_NO_REBUILD=1, as `make bench` does)");
        return Ok(out);
    }
    let activated = matrix_linkd_tests::bin_dir().join("matrix-linkd");
    if activated.canonicalize().ok() != matrix_linkd_tests::daemon_bin().canonicalize().ok() {
        println!(
            "  activation: not measured (it would start {}, not the daemon measured)",
            activated.display()
        );
        return Ok(out);
    }
    for i in 0..n {
        let session = Session::start_with(SessionOptions { keyring: true, activation: true }).await?;
        let conn = session.connect().await?;
        let t = Instant::now();
        let state = matrix_linkd_tests::read_session_state(&conn).await?;
        let reply_ms = t.elapsed().as_secs_f64() * 1000.0;
        println!("  activation {}/{n}: first reply {reply_ms:.1} ms, SessionState {state}", i + 1);
        out.push(Activation { reply_ms, state });
        let pid =
            DBusProxy::new(&conn).await?.get_connection_unix_process_id(BusName::try_from(BUS_NAME)?).await?;
        std::process::Command::new("kill").arg(pid.to_string()).status()?;
    }
    Ok(out)
}

/// `| D-Bus activation | n | call → reply (median; each) | states in the replies |`
pub fn row(runs: &[Activation]) -> String {
    if runs.is_empty() {
        return "| D-Bus activation | 0 | not measured in this run | |".to_owned();
    }
    let each: Vec<String> = runs.iter().map(|a| format!("{:.0}", a.reply_ms)).collect();
    let mut states: Vec<u32> = runs.iter().map(|a| a.state).collect();
    states.dedup();
    format!(
        "| D-Bus activation, no stored session: the first call (`Get(SessionState)`) starts the daemon | {} | call → reply {:.1} ms ({}) | the replies say {} |",
        runs.len(),
        median(runs.iter().map(|a| a.reply_ms).collect()),
        each.join(", "),
        states.iter().map(u32::to_string).collect::<Vec<_>>().join(", ")
    )
}
