//! The `matrix-link` command line: its clap definitions (also used to generate the man pages
//! and shell completions, `cargo run -p matrix-linkd-xtask -- dist-docs`) and the commands that
//! are more than a few lines.

pub mod delegate;

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::{ClientError, qr};

/// Sign devices in to Matrix with a QR code, through the matrix-linkd daemon.
#[derive(Parser, Debug)]
#[command(name = "matrix-link", version, propagate_version = true)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Show whether the daemon is signed in, and as whom.
    Status,
    /// Sign the daemon in, as a new device, with the help of a signed-in device (e.g. Element X).
    Login {
        #[command(flatten)]
        qr: QrInput,
        /// Homeserver to meet on when the daemon shows the QR code: the server name a user knows
        /// (example.org) or a URL (default: the daemon's config).
        #[arg(long, value_name = "NAME|URL")]
        homeserver: Option<String>,
        /// Display name of the daemon's new device.
        #[arg(long, value_name = "NAME")]
        device_name: Option<String>,
        /// Wire generation when the daemon shows the QR code: auto, 2024 or latest.
        #[arg(long, value_name = "GENERATION")]
        protocol: Option<String>,
    },
    /// Sign a new device (a phone, a browser, another laptop) in to the daemon's account.
    Grant {
        #[command(flatten)]
        qr: QrInput,
        /// Approve without asking (for scripts that already asked the user).
        #[arg(long)]
        yes: bool,
        /// Do not open the verification URI in the browser; just print it.
        #[arg(long)]
        no_open: bool,
        /// Do not show the daemon's desktop notifications for this flow.
        #[arg(long)]
        no_notify: bool,
        /// Wire generation when the daemon shows the QR code: auto, 2024 or latest.
        #[arg(long, value_name = "GENERATION")]
        protocol: Option<String>,
    },
    /// Get a new device of the daemon's account for a local program (a bot, a light client), with
    /// your consent; its session is written to FILE (mode 0600).
    Delegate {
        /// The program's name, shown to you and registered with the OAuth server.
        #[arg(long, value_name = "NAME")]
        name: String,
        /// Display name of the new device (default: NAME).
        #[arg(long, value_name = "NAME")]
        display_name: Option<String>,
        /// Put the cross-signing and backup keys in the session, for the program to sign its own
        /// device. Without this, the daemon signs the device once the program uploaded its keys.
        #[arg(long)]
        share_secrets: bool,
        /// Approve here, which opens the consent page in the browser, instead of from the
        /// daemon's notification.
        #[arg(long)]
        approve: bool,
        /// Do not show the daemon's desktop notifications for this flow (needs --approve).
        #[arg(long, requires = "approve")]
        no_notify: bool,
        /// Where to write the session JSON (a new or regular file; never a terminal or stdout).
        #[arg(long, short, value_name = "FILE")]
        output: PathBuf,
    },
    /// List the devices the daemon delegated to local programs.
    Delegations,
    /// End the session of a delegated device.
    Revoke {
        /// The device ID, as `delegations` lists it.
        #[arg(value_name = "DEVICE")]
        device: String,
    },
    /// Revoke the daemon's device and forget its session.
    SignOut,
}

#[derive(Args, Debug)]
pub struct QrInput {
    /// A picture of the other device's QR code (PNG, JPEG, …). Without this or --qr-hex, the daemon shows a QR code.
    #[arg(long, value_name = "FILE", conflicts_with = "qr_hex")]
    pub qr_image: Option<PathBuf>,
    /// The other device's QR code bytes, as hex.
    #[arg(long, value_name = "HEX")]
    pub qr_hex: Option<String>,
}

impl QrInput {
    /// The QR code bytes given on the command line, if any.
    pub fn bytes(&self) -> Result<Option<Vec<u8>>, ClientError> {
        match (&self.qr_image, &self.qr_hex) {
            (Some(path), _) => qr::decode_image(path).map(Some),
            (None, Some(hex)) => qr::decode_hex(hex).map(Some),
            (None, None) => Ok(None),
        }
    }
}
