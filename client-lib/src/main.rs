//! `matrix-link`: command-line client of matrix-linkd.

use std::{io::Write, process::ExitCode};

use clap::Parser;
use matrix_linkd_client::{
    ClientError, DelegateOptions, Flow, FlowEvent, GrantOptions, Linkd, LoginOptions, SessionState, State,
    api,
    cli::{self, Cli, Command},
};

fn main() -> ExitCode {
    let cli = Cli::parse();
    let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("matrix-link: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("matrix-link: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> Result<(), ClientError> {
    let linkd = Linkd::connect().await?;
    match cli.command {
        Command::Status => {
            let s = linkd.status().await?;
            let state = match s.state {
                SessionState::SignedIn => "signed in",
                SessionState::SignedOut => "signed out",
                SessionState::Restoring => "restoring",
                SessionState::Error => "error (is the keyring unlocked?)",
                SessionState::Unknown => "unknown",
            };
            println!("session:      {state}");
            if s.state == SessionState::SignedIn {
                println!("user:         {}", s.user_id);
                println!("device:       {}", s.device_id);
                println!("homeserver:   {}", s.homeserver);
            }
            println!("capabilities: {}", s.capabilities.join(" "));
            Ok(())
        }
        Command::Login { qr, homeserver, device_name, protocol } => {
            let options = LoginOptions {
                qr_code: qr.bytes()?,
                homeserver,
                device_display_name: device_name,
                protocol,
                ..Default::default()
            };
            let flow = linkd.start_login(options).await?;
            drive(flow, false).await
        }
        Command::Grant { qr, yes, no_open, no_notify, protocol } => {
            let options = GrantOptions {
                qr_code: qr.bytes()?,
                protocol,
                open_uri: !no_open,
                notify: !no_notify,
                ..Default::default()
            };
            let flow = linkd.start_grant(options).await?;
            drive(flow, yes).await
        }
        Command::Delegate { name, display_name, share_secrets, approve, no_notify, output } => {
            let options = DelegateOptions {
                client_name: name,
                device_display_name: display_name,
                share_secrets,
                approve,
                notify: no_notify.then_some(false),
                // The program that uses the session is another process: the flow must outlive this
                // one until the device keys are uploaded.
                detached: true,
                ..Default::default()
            };
            cli::delegate::delegate(&linkd, options, &output).await
        }
        Command::Delegations => cli::delegate::list(&linkd).await,
        Command::Revoke { device } => cli::delegate::revoke(&linkd, &device).await,
        Command::SignOut => {
            linkd.sign_out().await?;
            println!("signed out");
            Ok(())
        }
    }
}

async fn prompt(question: &str) -> Result<String, ClientError> {
    print!("{question}");
    std::io::stdout().flush().ok();
    tokio::task::spawn_blocking(|| {
        let mut line = String::new();
        std::io::stdin().read_line(&mut line).map(|_| line.trim().to_owned())
    })
    .await
    .map_err(|e| ClientError::Other(e.to_string()))?
    .map_err(|e| ClientError::Other(format!("cannot read from the terminal: {e}")))
}

/// Follows the flow, answering what the user must answer. Ctrl-C cancels it.
async fn drive(mut flow: Flow, auto_approve: bool) -> Result<(), ClientError> {
    loop {
        let event = tokio::select! {
            ev = flow.next_event() => ev?,
            _ = tokio::signal::ctrl_c() => {
                flow.cancel().await.ok();
                continue;
            }
        };
        let state = match event {
            None => break,
            Some(FlowEvent::QrCodeReplaced(_)) => {
                let art = flow.qr_code(api::qr_formats::UTF8).await?;
                println!(
                    "The QR code expired before it was scanned. Scan this new one:\n{}",
                    String::from_utf8_lossy(&art)
                );
                continue;
            }
            Some(FlowEvent::State(state)) => state,
        };
        match state {
            State::QrReady => {
                let art = flow.qr_code(api::qr_formats::UTF8).await?;
                println!("Scan this QR code with the other device:\n{}", String::from_utf8_lossy(&art));
            }
            State::WaitingForCheckCode => loop {
                let answer = prompt("Enter the two-digit code shown on the other device: ").await?;
                match answer.parse::<u8>() {
                    Ok(code) if code <= 99 => {
                        flow.check_code(code).await?;
                        break;
                    }
                    _ => println!("That is not a two-digit code."),
                }
            },
            State::ShowingCheckCode => {
                println!("Enter this code on the other device: {:02}", flow.check_code_to_show().await?);
            }
            State::WaitingForApproval => {
                let uri = flow.verification_uri().await?;
                println!("A new device asks to sign in. Consent page: {uri}");
                let ok = auto_approve
                    || prompt("Approve this new device? [y/N] ").await?.eq_ignore_ascii_case("y");
                if ok { flow.approve().await? } else { flow.cancel().await? }
            }
            State::WaitingForToken => {
                if let Ok(code) = flow.user_code().await
                    && !code.is_empty()
                {
                    println!("Approve the sign-in on the other device (code {code}).");
                } else {
                    println!("Waiting for the sign-in to be approved…");
                }
            }
            State::SyncingSecrets => println!("Sharing encryption secrets…"),
            _ => {}
        }
    }
    let signed_in = flow.result().await?;
    if signed_in.device_id.is_empty() {
        println!("Done: {} signed in on the new device.", signed_in.user_id);
    } else {
        println!("Done: {} signed in as device {}.", signed_in.user_id, signed_in.device_id);
    }
    Ok(())
}
