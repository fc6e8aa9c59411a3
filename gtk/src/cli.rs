//! The command line of `matrix-link-gtk` (kept free of GTK types: the man page is generated from it).

use clap::Parser;

/// Link a device: sign a new device in to your Matrix account, or sign this computer in, with a
/// QR code, through the matrix-linkd daemon.
#[derive(Parser, Debug, Clone, Default, PartialEq, Eq)]
#[command(name = "matrix-link-gtk", version)]
pub struct Args {
    /// Start on "Link a new device" (this computer is signed in and lets another device in).
    #[arg(long, conflicts_with = "login")]
    pub grant: bool,
    /// Start on "Sign this computer in" (another device, already signed in, lets this one in).
    #[arg(long)]
    pub login: bool,
    /// Homeserver to meet on when this computer signs in and shows the QR code: the server name
    /// a user knows (example.org) or a URL (default: the daemon's configuration).
    #[arg(long, value_name = "NAME|URL")]
    pub homeserver: Option<String>,
}

/// The page the app opens on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartPage {
    Status,
    Grant,
    Login,
}

impl Args {
    pub fn start_page(&self) -> StartPage {
        if self.grant {
            StartPage::Grant
        } else if self.login || self.homeserver.is_some() {
            StartPage::Login
        } else {
            StartPage::Status
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn start_pages() {
        let parse =
            |a: &[&str]| Args::try_parse_from(std::iter::once("matrix-link-gtk").chain(a.iter().copied()));
        assert_eq!(parse(&[]).unwrap().start_page(), StartPage::Status);
        assert_eq!(parse(&["--grant"]).unwrap().start_page(), StartPage::Grant);
        assert_eq!(parse(&["--login"]).unwrap().start_page(), StartPage::Login);
        let a = parse(&["--homeserver", "https://matrix.example.org"]).unwrap();
        assert_eq!(a.start_page(), StartPage::Login);
        assert_eq!(a.homeserver.as_deref(), Some("https://matrix.example.org"));
        assert!(parse(&["--grant", "--login"]).is_err());
    }
}
