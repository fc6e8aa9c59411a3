//! The daemon's configuration: `config.toml` from `$XDG_CONFIG_HOME/matrix-linkd/`, then each of
//! `$XDG_CONFIG_DIRS`. The first file found wins; no file means the defaults. Unknown keys and bad
//! values are errors that name the file and the key: a typo must not silently change behaviour.

use std::{
    fmt, fs,
    path::{Path, PathBuf},
    time::Duration,
};

use serde::Deserialize;
use url::Url;

/// Directory name under the XDG base directories.
pub const APP_DIR: &str = "matrix-linkd";
pub const CONFIG_FILE: &str = "config.toml";

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Homeserver for `StartLogin` when the daemon shows the QR and the caller gives none.
    pub homeserver: Option<Url>,
    /// Wire generation when the daemon shows the QR code: `auto`, `2024` or `latest`.
    pub protocol: crate::protocol::GenerationChoice,
    /// Display name the daemon gives its own device when it signs in.
    pub device_display_name: String,
    /// Verbosity of the daemon's own log lines. Dependencies never log above `info`.
    pub log_level: LogLevel,
    pub timeouts: Timeouts,
    pub limits: Limits,
    pub desktop: Desktop,
    pub security: Security,
    pub oauth: OAuthClient,
}

/// How many flows may run at once. Grants and delegations run side by side; a login is alone.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Grant and delegation flows running at once, over all callers.
    pub max_flows: usize,
    /// Flows one connection may have running at once (beyond: `Busy`).
    pub max_flows_per_caller: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self { max_flows: 8, max_flows_per_caller: 2 }
    }
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Timeouts {
    /// Overall limit for one flow, from `Start*` to its end, in seconds.
    pub flow: u64,
    /// Grant: how long to wait for the new device to appear on the homeserver, in seconds.
    pub device_creation: u64,
    /// How long a `detached` flow may be driven by other processes of the same user, in seconds.
    pub detached: u64,
    /// Delegation: from the session being ready to it being taken and (without shared secrets)
    /// the new device's keys being on the homeserver, in seconds.
    pub delegation_keys: u64,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Desktop {
    /// Show notifications for grant flows (with Approve/Deny buttons where the server has actions).
    pub notifications: bool,
    /// Open the verification URI ourselves (OpenURI portal, then xdg-open) when the caller allows it.
    pub open_uri: bool,
}

#[derive(Debug, Clone, Deserialize, PartialEq, Default)]
#[serde(deny_unknown_fields, default)]
pub struct Security {
    /// Flatpak/Snap app ids that may use the daemon from inside their sandbox.
    pub allowed_sandboxed_apps: Vec<String>,
    /// Plain http to hosts other than this machine (homeservers, rendezvous and OAuth servers,
    /// consent pages). Tokens would travel in clear: for test set-ups only.
    pub allow_insecure_http: bool,
    /// Servers on this machine (loopback), link-local and unspecified addresses, whoever names
    /// them: the config, a QR code, the other device, a server's answer. Off, a stranger's QR code
    /// cannot make the daemon reach the local services of the user's machine. For test set-ups
    /// (a homeserver on this machine) only.
    pub allow_local_addresses: bool,
}

impl Security {
    /// The servers a flow may reach, as the config allows.
    pub fn reach(&self) -> crate::net::Reach {
        crate::net::Reach {
            insecure_http: self.allow_insecure_http,
            local_addresses: self.allow_local_addresses,
        }
    }
}

/// The `[oauth]` table: how the daemon registers itself (the engine's own type).
pub use crate::protocol::OAuthClient;

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum LogLevel {
    Error,
    Warn,
    #[default]
    Info,
    Debug,
    Trace,
}

impl LogLevel {
    pub fn as_str(self) -> &'static str {
        match self {
            LogLevel::Error => "error",
            LogLevel::Warn => "warn",
            LogLevel::Info => "info",
            LogLevel::Debug => "debug",
            LogLevel::Trace => "trace",
        }
    }
}

impl std::str::FromStr for LogLevel {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "error" => Ok(LogLevel::Error),
            "warn" => Ok(LogLevel::Warn),
            "info" => Ok(LogLevel::Info),
            "debug" => Ok(LogLevel::Debug),
            "trace" => Ok(LogLevel::Trace),
            other => Err(format!("unknown log level `{other}` (error, warn, info, debug, trace)")),
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Self {
            homeserver: None,
            protocol: Default::default(),
            device_display_name: "matrix-linkd".to_owned(),
            log_level: LogLevel::Info,
            timeouts: Timeouts::default(),
            limits: Limits::default(),
            desktop: Desktop::default(),
            security: Security::default(),
            oauth: OAuthClient::default(),
        }
    }
}

impl Default for Timeouts {
    fn default() -> Self {
        Self { flow: 300, device_creation: 30, detached: 600, delegation_keys: 120 }
    }
}

impl Default for Desktop {
    fn default() -> Self {
        Self { notifications: true, open_uri: true }
    }
}

impl Timeouts {
    pub fn flow(&self) -> Duration {
        Duration::from_secs(self.flow)
    }
    pub fn device_creation(&self) -> Duration {
        Duration::from_secs(self.device_creation)
    }
    pub fn detached(&self) -> Duration {
        Duration::from_secs(self.detached)
    }
    pub fn delegation_keys(&self) -> Duration {
        Duration::from_secs(self.delegation_keys)
    }
}

/// A configuration file that could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{path}: cannot read: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("{path}: key `{key}`: {message}")]
    Invalid { path: PathBuf, key: &'static str, message: String },
}

/// Where a configuration came from, for the startup log line.
#[derive(Debug, Clone, PartialEq)]
pub enum Source {
    Defaults,
    File(PathBuf),
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::Defaults => f.write_str("built-in defaults"),
            Source::File(p) => write!(f, "{}", p.display()),
        }
    }
}

impl Config {
    /// Loads the first config file found on the XDG search path, or the defaults.
    pub fn load_default() -> Result<(Self, Source), ConfigError> {
        for path in search_path() {
            if path.is_file() {
                let cfg = Self::load_file(&path)?;
                return Ok((cfg, Source::File(path)));
            }
        }
        Ok((Self::default(), Source::Defaults))
    }

    pub fn load_file(path: &Path) -> Result<Self, ConfigError> {
        let text =
            fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.to_owned(), source })?;
        Self::parse(&text, path)
    }

    pub fn parse(text: &str, path: &Path) -> Result<Self, ConfigError> {
        let cfg: Config = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_owned(),
            // toml's message names the key and the line; keep it on one line for journald.
            message: e.to_string().trim_end().replace('\n', " | "),
        })?;
        cfg.validate(path)?;
        Ok(cfg)
    }

    fn validate(&self, path: &Path) -> Result<(), ConfigError> {
        let invalid = |key, message: String| ConfigError::Invalid { path: path.to_owned(), key, message };
        if !(10..=3600).contains(&self.timeouts.flow) {
            return Err(invalid(
                "timeouts.flow",
                format!("{} is not between 10 and 3600 seconds", self.timeouts.flow),
            ));
        }
        if !(1..=600).contains(&self.timeouts.device_creation) {
            return Err(invalid(
                "timeouts.device_creation",
                format!("{} is not between 1 and 600 seconds", self.timeouts.device_creation),
            ));
        }
        if !(1..=256).contains(&self.limits.max_flows) {
            return Err(invalid(
                "limits.max_flows",
                format!("{} is not between 1 and 256", self.limits.max_flows),
            ));
        }
        if !(1..=self.limits.max_flows).contains(&self.limits.max_flows_per_caller) {
            return Err(invalid(
                "limits.max_flows_per_caller",
                format!("{} is not between 1 and `limits.max_flows`", self.limits.max_flows_per_caller),
            ));
        }
        if !(5..=3600).contains(&self.timeouts.delegation_keys) {
            return Err(invalid(
                "timeouts.delegation_keys",
                format!("{} is not between 5 and 3600 seconds", self.timeouts.delegation_keys),
            ));
        }
        if !(10..=86400).contains(&self.timeouts.detached) {
            return Err(invalid(
                "timeouts.detached",
                format!("{} is not between 10 and 86400 seconds", self.timeouts.detached),
            ));
        }
        if let Some(hs) = &self.homeserver {
            if !matches!(hs.scheme(), "https" | "http") {
                return Err(invalid("homeserver", format!("scheme `{}` is not http or https", hs.scheme())));
            }
            crate::net::check_transport(hs, self.security.reach()).map_err(|e| match e {
                crate::net::UrlError::InsecureHttp => {
                    invalid("homeserver", format!("{e} (set security.allow_insecure_http for a test set-up)"))
                }
                e => invalid("homeserver", e.to_string()),
            })?;
        }
        if self.device_display_name.trim().is_empty() {
            return Err(invalid("device_display_name", "must not be empty".to_owned()));
        }
        for app in &self.security.allowed_sandboxed_apps {
            if app.is_empty() || app.contains(char::is_whitespace) {
                return Err(invalid("security.allowed_sandboxed_apps", format!("`{app}` is not an app id")));
            }
        }
        Ok(())
    }
}

fn env_dir(var: &str) -> Option<PathBuf> {
    std::env::var_os(var).map(PathBuf::from).filter(|p| p.is_absolute())
}

pub fn home_dir() -> PathBuf {
    env_dir("HOME").unwrap_or_else(|| PathBuf::from("/"))
}

/// `$XDG_CONFIG_HOME/matrix-linkd/config.toml`, then `$XDG_CONFIG_DIRS/*/matrix-linkd/config.toml`.
pub fn search_path() -> Vec<PathBuf> {
    let mut out = Vec::new();
    let config_home = env_dir("XDG_CONFIG_HOME").unwrap_or_else(|| home_dir().join(".config"));
    out.push(config_home.join(APP_DIR).join(CONFIG_FILE));
    let dirs = std::env::var("XDG_CONFIG_DIRS").unwrap_or_default();
    let dirs: Vec<&str> = dirs.split(':').filter(|d| d.starts_with('/')).collect();
    if dirs.is_empty() {
        out.push(PathBuf::from("/etc/xdg").join(APP_DIR).join(CONFIG_FILE));
    } else {
        out.extend(dirs.iter().map(|d| PathBuf::from(d).join(APP_DIR).join(CONFIG_FILE)));
    }
    out
}

/// `$XDG_DATA_HOME/matrix-linkd`: where the encrypted matrix-sdk store lives.
pub fn data_dir() -> PathBuf {
    env_dir("XDG_DATA_HOME").unwrap_or_else(|| home_dir().join(".local/share")).join(APP_DIR)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<Config, ConfigError> {
        Config::parse(s, Path::new("/x/config.toml"))
    }

    #[test]
    fn empty_file_gives_defaults() {
        assert_eq!(parse("").unwrap(), Config::default());
    }

    #[test]
    fn example_config_parses() {
        let text = include_str!("../../config/config.toml");
        let cfg = parse(text).unwrap();
        assert_eq!(cfg.timeouts.flow, 300);
    }

    #[test]
    fn unknown_key_names_file_and_key() {
        let err = parse("[timeouts]\nflwo = 3\n").unwrap_err().to_string();
        assert!(err.starts_with("/x/config.toml:"), "{err}");
        assert!(err.contains("flwo"), "{err}");
    }

    #[test]
    fn bad_value_names_key() {
        let err = parse("[timeouts]\nflow = 1\n").unwrap_err().to_string();
        assert!(err.contains("`timeouts.flow`"), "{err}");
        let err = parse("log_level = \"loud\"\n").unwrap_err().to_string();
        assert!(err.contains("log_level") && err.contains("loud"), "{err}");
        let err = parse("homeserver = \"ftp://x\"\n").unwrap_err().to_string();
        assert!(err.contains("`homeserver`"), "{err}");
        let err = parse("homeserver = \"not a url\"\n").unwrap_err().to_string();
        assert!(err.contains("homeserver"), "{err}");
        let err = parse("homeserver = \"http://matrix.example.org\"\n").unwrap_err().to_string();
        assert!(err.contains("`homeserver`") && err.contains("plain http"), "{err}");
        let err = parse("homeserver = \"http://127.0.0.1:8008\"\n").unwrap_err().to_string();
        assert!(err.contains("`homeserver`") && err.contains("security.allow_local_addresses"), "{err}");
        let local = "homeserver = \"http://127.0.0.1:8008\"\n[security]\nallow_local_addresses = true\n";
        assert!(parse(local).is_ok());
        let allowed = "homeserver = \"http://matrix.example.org\"\n[security]\nallow_insecure_http = true\n";
        assert!(parse(allowed).is_ok());
        let err = parse("protocol = \"2025\"\n").unwrap_err().to_string();
        assert!(err.contains("protocol") && err.contains("auto, 2024, latest"), "{err}");
    }

    #[test]
    fn protocol_names_are_those_of_the_dbus_option() {
        use crate::protocol::GenerationChoice;
        for (name, choice) in [
            ("auto", GenerationChoice::Auto),
            ("2024", GenerationChoice::V2024),
            ("latest", GenerationChoice::Latest),
        ] {
            assert_eq!(parse(&format!("protocol = \"{name}\"\n")).unwrap().protocol, choice);
            assert_eq!(name.parse::<GenerationChoice>().unwrap(), choice);
        }
    }
}
