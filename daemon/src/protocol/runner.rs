//! The one flow runner every flow kind runs on. A kind supplies its body (the protocol steps) and
//! what it leaves behind outside the daemon (a [`Cleanup`]); the runner owns the rest of the
//! lifecycle, the same for every kind:
//!
//! - the user's commands reach the body through [`Ui`]; `Cancel` interrupts any step;
//! - the flow's overall deadline ends it as `Expired`;
//! - a panic in the body (a bug of ours) ends it as `Failed` like any other error;
//! - whatever ended it, the other device is told where it can still be reached and what the flow
//!   made is taken down ([`Cleanup::stopped`]), or tidied after a success
//!   ([`Cleanup::succeeded`]);
//! - then exactly one [`FlowOutcome`] goes to the D-Bus layer.

use std::time::Duration;

use async_trait::async_trait;
use futures_util::FutureExt as _;
use tokio::{
    sync::{mpsc, watch},
    time::Instant,
};
use tracing::{debug, error, info};

use super::{
    FlowCommand, FlowEvent, FlowOutcome, FlowPort, Success,
    wire::{messages::FailureReason, policy::Refusal},
};
use crate::error::LinkError;

/// What to say to the other device when a flow stops here.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tell {
    /// Nothing: the other device stopped first, no channel can carry it, or there is no other
    /// device (a delegation).
    Nothing,
    Failure(FailureReason),
    Declined,
}

/// How a flow stopped early: the error for D-Bus (`None`: cancelled) and the word for the other
/// device.
#[derive(Debug)]
pub struct Stop {
    pub error: Option<LinkError>,
    pub tell: Tell,
}

impl Stop {
    pub fn local(error: LinkError, reason: FailureReason) -> Self {
        Self { error: Some(error), tell: Tell::Failure(reason) }
    }
    pub fn silent(error: LinkError) -> Self {
        Self { error: Some(error), tell: Tell::Nothing }
    }
    pub fn cancelled() -> Self {
        Self { error: None, tell: Tell::Failure(FailureReason::UserCancelled) }
    }
}

/// Errors of our own steps tell the other device that we gave up.
impl From<LinkError> for Stop {
    fn from(error: LinkError) -> Self {
        let reason = match &error {
            LinkError::DeviceIdInUse => FailureReason::DeviceAlreadyExists,
            LinkError::DeviceNotFound => FailureReason::DeviceNotFound,
            _ => FailureReason::UserCancelled,
        };
        Stop::local(error, reason)
    }
}

/// A message (or what it names) that the protocol's rules refuse: the error for D-Bus and what the
/// other device is told (docs/protocol.md §8, §9).
impl From<Refusal> for Stop {
    fn from(r: Refusal) -> Self {
        let error = match &r {
            Refusal::PeerFailed(Some(FailureReason::AuthorizationExpired)) => LinkError::Expired(
                "the other device reports that the sign-in request expired (authorization_expired)".into(),
            ),
            Refusal::PeerFailed(Some(reason)) => LinkError::LoginFailed(reason.as_str().to_owned()),
            Refusal::PeerFailed(None) => LinkError::LoginFailed("unknown reason".into()),
            Refusal::PeerDeclined => LinkError::LoginFailed("the other device declined the sign-in".into()),
            Refusal::Unexpected { expected, got } => {
                LinkError::ProtocolError(format!("expected {expected}, the other device sent {got}"))
            }
            Refusal::Undecodable => {
                LinkError::ProtocolError("the other device sent an unreadable message".into())
            }
            Refusal::UnsupportedProtocol => {
                LinkError::Unsupported("the other device speaks no login protocol we speak".into())
            }
            Refusal::BadDeviceId => {
                LinkError::ProtocolError("the new device sent an unusable device ID".into())
            }
            Refusal::BadConsentPage(e) => {
                LinkError::ProtocolError(format!("the consent page the new device names is refused: {e}"))
            }
            Refusal::BadHomeserver(e) => {
                LinkError::ProtocolError(format!("the homeserver the other device names is refused: {e}"))
            }
        };
        match r.tell() {
            Some(reason) => Stop::local(error, reason),
            None => Stop::silent(error),
        }
    }
}

/// A flow step's result: its value, or how the flow stops.
pub type Flow<T> = std::result::Result<T, Stop>;

/// What a flow leaves behind outside the daemon (a rendezvous session, a channel to the other
/// device, issued tokens, a half-made store, a record), and how to take it down. Every kind has
/// one; tuples combine them, first to last.
#[async_trait]
pub trait Cleanup: Send {
    /// The flow succeeded: tidy what success leaves (nothing by default).
    async fn succeeded(&mut self) {}
    /// The flow stopped (an error, `Cancel`, the deadline, a panic): tell the other device `tell`
    /// where one can still be reached, then undo what the flow made.
    async fn stopped(&mut self, tell: Tell);
}

#[async_trait]
impl<A: Cleanup, B: Cleanup> Cleanup for (A, B) {
    async fn succeeded(&mut self) {
        self.0.succeeded().await;
        self.1.succeeded().await;
    }
    async fn stopped(&mut self, tell: Tell) {
        self.0.stopped(tell).await;
        self.1.stopped(tell).await;
    }
}

/// The body's side of the D-Bus layer: events out, check code, consent and hand-over in. `Cancel`
/// never reaches here: the runner watches it separately so it can interrupt any step.
pub struct Ui {
    events: mpsc::UnboundedSender<FlowEvent>,
    commands: mpsc::UnboundedReceiver<FlowCommand>,
}

impl Ui {
    pub fn emit(&self, ev: FlowEvent) {
        let _ = self.events.send(ev);
    }

    /// Waits for the first command `pick` takes; the others are ignored in this state.
    async fn wait_for<T>(&mut self, what: &str, pick: impl Fn(FlowCommand) -> Option<T>) -> Flow<T> {
        let asked = Instant::now();
        loop {
            match self.commands.recv().await {
                Some(cmd) => match pick(cmd) {
                    Some(v) => {
                        debug!(waited_ms = asked.elapsed().as_millis() as u64, "{what} answered");
                        return Ok(v);
                    }
                    None => debug!("a command ignored while waiting for {what}"),
                },
                None => return Err(Stop::cancelled()),
            }
        }
    }

    /// The check code the user typed.
    pub async fn check_code(&mut self) -> Flow<u8> {
        self.wait_for("the check code", |c| match c {
            FlowCommand::CheckCode(code) => Some(code),
            _ => None,
        })
        .await
    }

    /// The user's consent (`Approve`, or the notification's button).
    pub async fn approval(&mut self) -> Flow<()> {
        self.wait_for("consent", |c| matches!(c, FlowCommand::Approve).then_some(())).await
    }

    /// The owner took the session that was handed over (`TakeSession`).
    pub async fn session_taken(&mut self) -> Flow<()> {
        self.wait_for("the hand-over", |c| matches!(c, FlowCommand::SessionTaken).then_some(())).await
    }
}

/// Splits `Cancel` (which must interrupt any step) from the commands a step waits for.
fn split_commands(
    mut from_dbus: mpsc::UnboundedReceiver<FlowCommand>,
) -> (mpsc::UnboundedReceiver<FlowCommand>, watch::Receiver<bool>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let (cancel_tx, cancel_rx) = watch::channel(false);
    tokio::spawn(async move {
        while let Some(cmd) = from_dbus.recv().await {
            match cmd {
                FlowCommand::Cancel => break,
                other => {
                    if tx.send(other).is_err() {
                        return;
                    }
                }
            }
        }
        // Cancelled, or the D-Bus side is gone: nobody can consent or type a code any more.
        let _ = cancel_tx.send(true);
    });
    (rx, cancel_rx)
}

/// Runs one flow to its end; the caller spawns it (in the flow's span). `first` is shown before
/// the body starts (the QR code the daemon made); `leftovers` starts as what was made before the
/// flow existed (the rendezvous session behind that code) and grows as the body makes more.
pub async fn run<L: Cleanup>(
    port: FlowPort,
    timeout: Duration,
    first: Option<FlowEvent>,
    mut leftovers: L,
    body: impl AsyncFnOnce(&mut Ui, &mut L) -> Flow<Success>,
) {
    let deadline = Instant::now() + timeout;
    let FlowPort { events, commands, outcome } = port;
    let (commands, mut cancel) = split_commands(commands);
    let mut ui = Ui { events, commands };
    if let Some(ev) = first {
        ui.emit(ev);
    }
    let guarded = std::panic::AssertUnwindSafe(body(&mut ui, &mut leftovers)).catch_unwind();
    let result = tokio::select! {
        r = guarded => r.unwrap_or_else(|_| {
            error!("the flow's task panicked; ending it");
            Err(Stop::local(LinkError::Failed("internal error".into()), FailureReason::UserCancelled))
        }),
        _ = cancel.wait_for(|c| *c) => Err(Stop::cancelled()),
        _ = tokio::time::sleep_until(deadline) => Err(Stop::local(
            LinkError::Expired("the flow timed out".into()),
            FailureReason::UserCancelled,
        )),
    };
    let end = match result {
        Ok(success) => {
            leftovers.succeeded().await;
            FlowOutcome::Success(success)
        }
        Err(stop) => {
            match &stop.error {
                Some(e) => info!(error = %e, tell = ?stop.tell, "flow stopped"),
                None => info!(tell = ?stop.tell, "flow cancelled"),
            }
            leftovers.stopped(stop.tell).await;
            match stop.error {
                Some(e) => FlowOutcome::Failed(e),
                None => FlowOutcome::Cancelled,
            }
        }
    };
    info!(outcome = end.name(), "flow ended");
    let _ = outcome.send(end);
}
