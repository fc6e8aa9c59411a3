//! Desktop glue: notifications (on the daemon's own bus connection), opening the verification
//! URI, QR rendering. Every piece is optional at run time: with no notification server or portal,
//! flows still work over D-Bus.

mod notify;
pub mod qr;

use std::time::Duration;

use tracing::{debug, info, warn};

pub use notify::{ApprovalRequest, ApprovalTask, Choice, ask_permission, notify_result, spawn_approval};

/// Opens `uri` in the user's browser: the OpenURI portal first, `xdg-open` second.
pub async fn open_uri(uri: &str) -> bool {
    let Ok(parsed) = ashpd::Uri::parse(uri) else {
        warn!("verification URI is not a valid URI; not opening it");
        return false;
    };
    let portal = ashpd::desktop::open_uri::OpenFileRequest::default().ask(false).send_uri(&parsed);
    match tokio::time::timeout(Duration::from_secs(10), portal).await {
        Ok(Ok(_)) => {
            info!("verification URI opened through the OpenURI portal");
            return true;
        }
        Ok(Err(e)) => debug!(error = %e, "OpenURI portal unavailable"),
        Err(_) => debug!("OpenURI portal did not answer"),
    }
    let spawned = tokio::process::Command::new("xdg-open")
        .arg(uri)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status();
    match tokio::time::timeout(Duration::from_secs(10), spawned).await {
        Ok(Ok(status)) if status.success() => {
            info!("verification URI opened with xdg-open");
            true
        }
        _ => {
            warn!("could not open the verification URI; the caller must show it");
            false
        }
    }
}
