//! The daemon side of the app: a tokio runtime in its own thread runs the zbus client
//! (`matrix-linkd-client`) and talks to the GTK main loop only through two async channels.

use std::collections::HashMap;

use async_channel::{Receiver, Sender};
use futures_util::{FutureExt as _, StreamExt};
use matrix_link_gtk::{
    answers::{self, AppAnswers, StoreError},
    errors,
};
use matrix_linkd_client::{
    ClientError, Delegation, Flow, FlowEvent, GrantOptions, Linkd, LoginOptions, Revoked, SignedIn, State,
    Status, api,
};

use crate::scan;

/// What the window asks for.
#[derive(Debug)]
pub enum Cmd {
    Refresh,
    SignOut,
    Start {
        kind: Kind,
        qr: Option<Vec<u8>>,
        homeserver: Option<String>,
    },
    CheckCode(u8),
    Approve,
    Cancel,
    /// Capture the screen through the Screenshot portal and decode the QR code on it.
    ScanScreen,
    /// Decode the QR code in a PNG image (a file or the clipboard, converted by GTK).
    DecodePng(Vec<u8>),
    /// The devices of programs (`ListDelegations`).
    ListDelegations,
    /// End a program's device (`RevokeDelegation`).
    Revoke(String),
    /// Sandboxed apps' remembered answers (the permission store).
    ListAnswers,
    /// Forget an app's answers (its ID).
    ResetAnswers(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Link a new device (`StartGrant`).
    Grant,
    /// Sign this computer in (`StartLogin`).
    Login,
}

/// An error to show: the daemon's short name (or a local one) and its message.
#[derive(Debug, Clone)]
pub struct ErrInfo {
    pub short: String,
    pub message: String,
}

impl From<ClientError> for ErrInfo {
    fn from(e: ClientError) -> Self {
        let short = match &e {
            ClientError::Cancelled => "Cancelled".to_owned(),
            ClientError::Bus(_) => errors::NO_BUS.to_owned(),
            ClientError::Daemon { name, .. } if errors::service_missing(name) => {
                errors::NOT_RUNNING.to_owned()
            }
            other => other.short_name().unwrap_or("Failed").to_owned(),
        };
        let message = match e {
            ClientError::Daemon { message, .. } => message,
            other => other.to_string(),
        };
        ErrInfo { short, message }
    }
}

/// What the window is told.
#[derive(Debug)]
pub enum Event {
    Status(Result<Status, ErrInfo>),
    SignedOut(Result<(), ErrInfo>),
    /// A state without data of its own (Starting, WaitingForCheckCode, WaitingForToken, …).
    State(State),
    /// The QR code to show, as PNG; `replaced` when it replaces one that expired unscanned.
    Qr {
        png: Vec<u8>,
        replaced: bool,
    },
    ShowCheckCode(u8),
    Approval {
        device: String,
        host: String,
        user_code: String,
    },
    Token {
        user_code: String,
    },
    Done(SignedIn),
    Failed(ErrInfo),
    /// A method call of the running flow failed (the flow may go on).
    ActionFailed(ErrInfo),
    /// A scanned QR code (its raw bytes), or why none was found.
    Scanned(Result<Vec<u8>, String>),
    Delegations(Result<Vec<Delegation>, ErrInfo>),
    Revoked {
        device_id: String,
        result: Result<Revoked, ErrInfo>,
    },
    Answers(Result<Vec<AppAnswers>, StoreError>),
    AnswersReset {
        app_id: String,
        result: Result<(), StoreError>,
    },
}

/// What a command that could not reach the bus tells the window.
fn unreachable(cmd: Cmd, err: ErrInfo) -> Event {
    match cmd {
        Cmd::Refresh => Event::Status(Err(err)),
        Cmd::ListDelegations => Event::Delegations(Err(err)),
        Cmd::Revoke(device_id) => Event::Revoked { device_id, result: Err(err) },
        Cmd::ListAnswers => Event::Answers(Err(StoreError::Failed(err.message))),
        Cmd::ResetAnswers(app_id) => {
            Event::AnswersReset { app_id, result: Err(StoreError::Failed(err.message)) }
        }
        _ => Event::Failed(err),
    }
}

/// Starts the backend thread; returns the command sender and the event receiver.
pub fn spawn() -> (Sender<Cmd>, Receiver<Event>) {
    let (cmd_tx, cmd_rx) = async_channel::unbounded();
    let (ev_tx, ev_rx) = async_channel::unbounded();
    std::thread::Builder::new()
        .name("linkd-client".into())
        .spawn(move || {
            let rt =
                tokio::runtime::Builder::new_current_thread().enable_all().build().expect("tokio runtime");
            rt.block_on(run(cmd_rx, ev_tx));
        })
        .expect("backend thread");
    (cmd_tx, ev_rx)
}

enum FlowCmd {
    CheckCode(u8),
    Approve,
    Cancel,
}

async fn run(cmds: Receiver<Cmd>, events: Sender<Event>) {
    let mut linkd: Option<Linkd> = None;
    let mut flow_tx: Option<tokio::sync::mpsc::UnboundedSender<FlowCmd>> = None;
    while let Ok(cmd) = cmds.recv().await {
        if linkd.is_none() {
            match Linkd::connect().await {
                Ok(l) => {
                    // Subscribed before the first read, so that no change falls between them.
                    match l.status_changes().await {
                        Ok(changes) => drop(tokio::spawn(follow_status(l.clone(), changes, events.clone()))),
                        // The page is still right after each action; it only misses outside changes.
                        Err(e) => eprintln!("matrix-link-gtk: cannot follow the service's status: {e}"),
                    }
                    linkd = Some(l)
                }
                Err(e) => {
                    let _ = events.send(unreachable(cmd, ErrInfo::from(e))).await;
                    continue;
                }
            }
        }
        let l = linkd.as_ref().expect("connected");
        let send_flow = |c: FlowCmd| flow_tx.as_ref().is_some_and(|tx| tx.send(c).is_ok());
        match cmd {
            Cmd::Refresh => {
                let _ = events.send(Event::Status(l.status().await.map_err(ErrInfo::from))).await;
            }
            Cmd::SignOut => {
                let _ = events.send(Event::SignedOut(l.sign_out().await.map_err(ErrInfo::from))).await;
            }
            Cmd::Start { kind, qr, homeserver } => {
                let started = match kind {
                    Kind::Grant => {
                        // The app is the user interface: no notifications; the consent page
                        // opens in the browser once the user approves here.
                        let options =
                            GrantOptions { qr_code: qr, notify: false, open_uri: true, ..Default::default() };
                        l.start_grant(options).await
                    }
                    Kind::Login => {
                        let options = LoginOptions { qr_code: qr, homeserver, ..Default::default() };
                        l.start_login(options).await
                    }
                };
                match started {
                    Ok(flow) => {
                        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
                        flow_tx = Some(tx);
                        tokio::spawn(drive(flow, rx, events.clone()));
                    }
                    Err(e) => {
                        let _ = events.send(Event::Failed(e.into())).await;
                    }
                }
            }
            Cmd::CheckCode(c) => {
                send_flow(FlowCmd::CheckCode(c));
            }
            Cmd::Approve => {
                send_flow(FlowCmd::Approve);
            }
            Cmd::Cancel => {
                send_flow(FlowCmd::Cancel);
            }
            Cmd::ScanScreen => {
                let conn = l.connection().clone();
                let events = events.clone();
                tokio::spawn(async move {
                    let result = scan::screen(&conn).await;
                    let _ = events.send(Event::Scanned(result)).await;
                });
            }
            Cmd::ListDelegations => {
                let (l, events) = (l.clone(), events.clone());
                tokio::spawn(async move {
                    let list = l.list_delegations().await.map_err(ErrInfo::from);
                    let _ = events.send(Event::Delegations(list)).await;
                });
            }
            Cmd::Revoke(device_id) => {
                let (l, events) = (l.clone(), events.clone());
                tokio::spawn(async move {
                    let result = l.revoke_delegation(&device_id).await.map_err(ErrInfo::from);
                    let _ = events.send(Event::Revoked { device_id, result }).await;
                });
            }
            Cmd::ListAnswers => {
                let (conn, events) = (l.connection().clone(), events.clone());
                tokio::spawn(async move {
                    let _ = events.send(Event::Answers(answers::read(&conn).await)).await;
                });
            }
            Cmd::ResetAnswers(app_id) => {
                let (conn, events) = (l.connection().clone(), events.clone());
                tokio::spawn(async move {
                    let result = answers::reset(&conn, &app_id).await;
                    let _ = events.send(Event::AnswersReset { app_id, result }).await;
                });
            }
            Cmd::DecodePng(png) => {
                let events = events.clone();
                tokio::spawn(async move {
                    let result = tokio::task::spawn_blocking(move || scan::decode_png(&png))
                        .await
                        .unwrap_or_else(|e| Err(e.to_string()));
                    let _ = events.send(Event::Scanned(result)).await;
                });
            }
        }
    }
}

/// Keeps the status page current: the status is read again whenever the daemon's session
/// changes (signed out or in by another program, restored) or the daemon leaves or comes back.
async fn follow_status(
    linkd: Linkd,
    mut changes: futures_util::stream::BoxStream<'static, ()>,
    events: Sender<Event>,
) {
    while changes.next().await.is_some() {
        // One change comes as several signals (a property each): one read for all that are queued.
        while let Some(Some(())) = changes.next().now_or_never() {}
        let status = linkd.status().await.map_err(ErrInfo::from);
        if events.send(Event::Status(status)).await.is_err() {
            return;
        }
    }
}

/// Follows one flow until its `Response`, fetching what each state shows.
async fn drive(
    mut flow: Flow,
    mut cmds: tokio::sync::mpsc::UnboundedReceiver<FlowCmd>,
    events: Sender<Event>,
) {
    let proxy = flow.proxy().clone();
    if flow.state() != State::Starting {
        emit_state(&flow, flow.state(), &events).await;
    }
    loop {
        tokio::select! {
            ev = flow.next_event() => match ev {
                Ok(None) => break,
                Ok(Some(FlowEvent::QrCodeReplaced(_))) => {
                    match flow.qr_code(api::qr_formats::PNG).await {
                        Ok(png) => { let _ = events.send(Event::Qr { png, replaced: true }).await; }
                        Err(e) => { let _ = events.send(Event::ActionFailed(e.into())).await; }
                    }
                }
                Ok(Some(FlowEvent::State(s))) => emit_state(&flow, s, &events).await,
                Err(e) => {
                    let _ = events.send(Event::Failed(e.into())).await;
                    return;
                }
            },
            cmd = cmds.recv() => {
                let r = match cmd {
                    Some(FlowCmd::CheckCode(c)) => proxy.check_code(c).await,
                    Some(FlowCmd::Approve) => proxy.approve().await,
                    Some(FlowCmd::Cancel) | None => proxy.cancel().await,
                };
                if let Err(e) = r {
                    let _ = events.send(Event::ActionFailed(ClientError::from(e).into())).await;
                }
            }
        }
    }
    let ev = match flow.result().await {
        Ok(done) => Event::Done(done),
        Err(e) => Event::Failed(e.into()),
    };
    let _ = events.send(ev).await;
}

async fn emit_state(flow: &Flow, state: State, events: &Sender<Event>) {
    let ev = match state {
        State::QrReady => match flow.qr_code(api::qr_formats::PNG).await {
            Ok(png) => Event::Qr { png, replaced: false },
            Err(e) => Event::ActionFailed(e.into()),
        },
        State::ShowingCheckCode => match flow.check_code_to_show().await {
            Ok(code) => Event::ShowCheckCode(code),
            Err(e) => Event::ActionFailed(e.into()),
        },
        State::WaitingForApproval => {
            let device = flow.proxy().peer_device_id().await.unwrap_or_default();
            let uri = flow.verification_uri().await.unwrap_or_default();
            let user_code = flow.user_code().await.unwrap_or_default();
            Event::Approval { device, host: host_of(&uri), user_code }
        }
        State::WaitingForToken => Event::Token { user_code: flow.user_code().await.unwrap_or_default() },
        other => Event::State(other),
    };
    let _ = events.send(ev).await;
}

/// The host (and port) of the consent page, never its path or query (which carry the code).
pub fn host_of(uri: &str) -> String {
    match url::Url::parse(uri) {
        Ok(u) => match (u.host_str(), u.port()) {
            (Some(h), Some(p)) => format!("{h}:{p}"),
            (Some(h), None) => h.to_owned(),
            _ => String::new(),
        },
        Err(_) => String::new(),
    }
}

/// Options of a portal call, as `a{sv}`.
pub type PortalOptions<'a> = HashMap<&'a str, zbus::zvariant::Value<'a>>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_only() {
        assert_eq!(host_of("https://auth.example.org/device?code=ABCD"), "auth.example.org");
        assert_eq!(host_of("http://127.0.0.1:18080/device/ABCD"), "127.0.0.1:18080");
        assert_eq!(host_of("not a url"), "");
    }
}
