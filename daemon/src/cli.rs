//! The daemon's command line (clap), in the library so that the man page and the shell
//! completions are generated from it (`cargo run -p matrix-linkd-xtask -- dist-docs`).

use std::path::PathBuf;

use clap::Parser;

use crate::config::LogLevel;

/// Keeps one signed-in Matrix session and serves QR login flows on the session bus
/// (io.github.matrix_linkd.Linkd1).
#[derive(Parser, Debug)]
#[command(name = "matrix-linkd", version, about)]
#[command(long_about = "Keeps one signed-in Matrix session and serves Matrix \"sign in with QR code\" \
(MSC4108) flows on the session bus as io.github.matrix_linkd.Linkd1: it signs in new devices \
(StartGrant), signs itself in from an existing device (StartLogin) and gives local programs a \
device of their own (StartDelegation). It is normally started by D-Bus activation or by the \
systemd user unit matrix-linkd.service, and keeps its session in the Secret Service.")]
pub struct Args {
    /// Configuration file (default: $XDG_CONFIG_HOME/matrix-linkd/config.toml, then $XDG_CONFIG_DIRS).
    #[arg(long, value_name = "FILE", env = "MATRIX_LINKD_CONFIG")]
    pub config: Option<PathBuf>,
    /// Log level of the daemon's own lines (error, warn, info, debug, trace); overrides the config.
    /// Dependencies never log above `info`, and no level logs a secret.
    #[arg(long, value_name = "LEVEL")]
    pub log_level: Option<LogLevel>,
    /// Check the configuration and exit.
    #[arg(long)]
    pub check_config: bool,
}
