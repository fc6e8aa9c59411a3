//! `matrix-link delegate`, `delegations` and `revoke`.

use std::{
    fs::{File, OpenOptions},
    io::{IsTerminal, Write},
    os::{
        fd::AsFd,
        unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt},
    },
    path::{Path, PathBuf},
    time::{SystemTime, UNIX_EPOCH},
};

use crate::{ClientError, DelegateOptions, DelegatedSession, FlowEvent, Linkd, Revoked, State};
use zeroize::Zeroizing;

/// `delegate`: a new device for a local program; the session goes to `output` (mode 0600).
pub async fn delegate(linkd: &Linkd, options: DelegateOptions, output: &Path) -> Result<(), ClientError> {
    // The file first: nothing is issued when it cannot be written.
    let mut out = Output::open(output)?;
    let approve = options.approve;
    let share_secrets = options.share_secrets;
    let mut flow = match linkd.start_delegation(options).await {
        Ok(flow) => flow,
        Err(e) => {
            out.discard();
            return Err(e);
        }
    };
    let mut state = Some(flow.state());
    // The state read at the start may arrive again as an event: act on each state once.
    let mut seen = Vec::new();
    let session = loop {
        match state.take().filter(|s| !seen.contains(s)) {
            Some(s @ State::WaitingForApproval) => {
                seen.push(s);
                let host = host_of(&flow.verification_uri().await.unwrap_or_default());
                if approve {
                    println!("Opening the consent page on {host}…");
                    flow.approve().await?;
                } else {
                    println!("waiting for your consent: approve the notification or open {host}");
                }
            }
            Some(s @ State::WaitingForToken) => {
                seen.push(s);
                println!("Waiting for the consent page to be confirmed…");
            }
            Some(State::SyncingSecrets) => break flow.take_session().await,
            _ => {}
        }
        let event = tokio::select! {
            ev = flow.next_event() => ev,
            _ = tokio::signal::ctrl_c() => {
                flow.cancel().await.ok();
                continue;
            }
        };
        match event {
            Ok(Some(FlowEvent::State(s))) => state = Some(s),
            Ok(Some(FlowEvent::QrCodeReplaced(_))) => {}
            Ok(None) => {
                out.discard();
                flow.result().await?;
                return Err(ClientError::Other("the delegation ended without handing over a session".into()));
            }
            Err(e) => {
                out.discard();
                return Err(e);
            }
        }
    };
    let written = session.and_then(|session| out.write(&session).map(|()| session));
    let session = match written {
        Ok(session) => session,
        Err(e) => {
            // Nobody can use the tokens: the daemon revokes them when the flow is cancelled.
            flow.cancel().await.ok();
            out.discard();
            return Err(e);
        }
    };
    println!("device ID: {}", session.device_id);
    println!("user ID:   {}", session.user_id);
    if !share_secrets {
        println!(
            "Start the program with this session now: the daemon signs the device once its keys are \
             uploaded, and revokes the session if they are not in time."
        );
    }
    Ok(())
}

/// The session file: created with mode 0600, or an existing regular file (made 0600, truncated
/// only when the session is written).
struct Output {
    file: File,
    path: PathBuf,
    created: bool,
}

impl Output {
    fn open(path: &Path) -> Result<Self, ClientError> {
        let refuse = |why: &str| ClientError::Other(format!("{}: {why}", path.display()));
        if path.as_os_str() == "-" {
            return Err(refuse("the session is never written to standard output"));
        }
        let io = |e: std::io::Error| ClientError::Other(format!("{}: {e}", path.display()));
        // Before opening: opening a FIFO would block, a terminal is no place for a session.
        if let Ok(meta) = std::fs::metadata(path)
            && !meta.file_type().is_file()
        {
            return Err(refuse("not a regular file (the session is never written to a terminal or pipe)"));
        }
        let (file, created) = match OpenOptions::new().write(true).create_new(true).mode(0o600).open(path) {
            Ok(file) => (file, true),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                (OpenOptions::new().write(true).open(path).map_err(io)?, false)
            }
            Err(e) => return Err(io(e)),
        };
        let out = Output { file, path: path.to_owned(), created };
        let meta = out.file.metadata().map_err(io)?;
        if !meta.file_type().is_file() || out.file.is_terminal() {
            return Err(refuse("not a regular file (the session is never written to a terminal or pipe)"));
        }
        if let Ok(stdout) = std::io::stdout().as_fd().try_clone_to_owned()
            && let Ok(stdout) = File::from(stdout).metadata()
            && stdout.dev() == meta.dev()
            && stdout.ino() == meta.ino()
        {
            return Err(refuse("this is standard output: the session is never written there"));
        }
        out.file.set_permissions(std::fs::Permissions::from_mode(0o600)).map_err(io)?;
        Ok(out)
    }

    fn write(&mut self, session: &DelegatedSession) -> Result<(), ClientError> {
        let io = |e: std::io::Error| ClientError::Other(format!("{}: {e}", self.path.display()));
        let mut json = Zeroizing::new(
            serde_json::to_vec_pretty(session).map_err(|e| ClientError::Other(e.to_string()))?,
        );
        json.push(b'\n');
        self.file.set_len(0).map_err(io)?;
        self.file.write_all(&json).map_err(io)?;
        self.file.sync_all().map_err(io)
    }

    /// Removes the file if we created it (the flow failed before the session was written).
    fn discard(&self) {
        if self.created {
            std::fs::remove_file(&self.path).ok();
        }
    }
}

/// The host of the consent page, without the path and query that carry the user code.
fn host_of(uri: &str) -> String {
    let rest = uri.split_once("://").map_or(uri, |(_, rest)| rest);
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    let host = authority.rsplit_once('@').map_or(authority, |(_, host)| host);
    if host.is_empty() { "the consent page".into() } else { host.to_owned() }
}

/// `delegations`: a table of the delegated devices.
pub async fn list(linkd: &Linkd) -> Result<(), ClientError> {
    let delegations = linkd.list_delegations().await?;
    if delegations.is_empty() {
        println!("no delegated devices");
        return Ok(());
    }
    let rows: Vec<[String; 4]> = delegations
        .into_iter()
        .map(|d| [d.device_id, d.client_name, d.device_display_name, rfc3339(d.created)])
        .collect();
    let header = ["DEVICE ID", "CLIENT", "DISPLAY NAME", "CREATED"].map(String::from);
    let mut widths = [0usize; 4];
    for row in std::iter::once(&header).chain(&rows) {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    for row in std::iter::once(&header).chain(&rows) {
        let line =
            row.iter().zip(widths).map(|(cell, w)| format!("{cell:<w$}")).collect::<Vec<_>>().join("  ");
        println!("{}", line.trim_end());
    }
    Ok(())
}

/// `revoke DEVICE`.
pub async fn revoke(linkd: &Linkd, device_id: &str) -> Result<(), ClientError> {
    match linkd.revoke_delegation(device_id).await? {
        Revoked::Revoked => println!("revoked"),
        Revoked::AccountPage => println!("opened the account page to confirm"),
    }
    Ok(())
}

/// `time` as RFC 3339 in UTC, to the second.
fn rfc3339(time: SystemTime) -> String {
    let secs = time.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Civil date from days since 1970-01-01 (H. Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z", rem / 3600, rem % 3600 / 60, rem % 60)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn dates() {
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(UNIX_EPOCH + Duration::from_secs(951_782_400)), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339(UNIX_EPOCH + Duration::from_secs(1_767_225_599)), "2025-12-31T23:59:59Z");
    }

    #[test]
    fn hosts() {
        assert_eq!(host_of("https://auth.example.org/device?user_code=ABCD"), "auth.example.org");
        assert_eq!(host_of("https://auth.example.org:8443"), "auth.example.org:8443");
        assert_eq!(host_of("http://u@127.0.0.1:8080/x#y"), "127.0.0.1:8080");
        assert_eq!(host_of(""), "the consent page");
    }

    #[test]
    fn output_file_is_private_and_refuses_non_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("session.json");
        let out = Output::open(&path).unwrap();
        assert!(out.created);
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        out.discard();
        assert!(!path.exists());

        std::fs::write(&path, b"old").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let out = Output::open(&path).unwrap();
        assert!(!out.created);
        out.discard();
        assert_eq!(std::fs::read(&path).unwrap(), b"old", "kept until a session is written");
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);

        assert!(Output::open(Path::new("-")).is_err());
        assert!(Output::open(Path::new("/dev/null")).is_err());
    }
}
