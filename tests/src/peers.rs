//! matrix-sdk 0.18 clients in the test process, playing the other device in each role.

use std::{future::IntoFuture, time::Duration};

use anyhow::{Result, anyhow};
use futures_util::{Stream, StreamExt};
use matrix_sdk::{
    Client,
    authentication::oauth::qrcode::{
        CheckCodeSender, GeneratedQrProgress, GrantLoginProgress, LoginProgress, QRCodeGrantLoginError,
        QRCodeLoginError, QrCodeData, QrProgress,
    },
};
use tokio::{sync::mpsc, task::JoinHandle};

use crate::homeserver::registration;

/// What the peer's user would see or be asked.
pub enum PeerEvent {
    Qr(Vec<u8>),
    ShowCode(u8),
    NeedCode(CheckCodeSender),
    VerificationUri(String),
    UserCode(String),
    SyncingSecrets,
}

/// A running peer flow.
pub struct Peer<E> {
    pub task: JoinHandle<Result<(), E>>,
    events: mpsc::UnboundedReceiver<PeerEvent>,
}

impl<E> Peer<E> {
    async fn next_matching<T>(
        &mut self,
        what: &str,
        mut pick: impl FnMut(PeerEvent) -> Option<T>,
    ) -> Result<T> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            let ev = tokio::time::timeout_at(deadline, self.events.recv())
                .await
                .map_err(|_| anyhow!("peer: timed out waiting for {what}"))?
                .ok_or_else(|| anyhow!("peer: flow ended before {what}"))?;
            if let Some(v) = pick(ev) {
                return Ok(v);
            }
        }
    }
    pub async fn qr(&mut self) -> Result<Vec<u8>> {
        self.next_matching("the QR code", |e| if let PeerEvent::Qr(q) = e { Some(q) } else { None }).await
    }
    pub async fn shown_code(&mut self) -> Result<u8> {
        self.next_matching("a check code", |e| if let PeerEvent::ShowCode(c) = e { Some(c) } else { None })
            .await
    }
    pub async fn code_sender(&mut self) -> Result<CheckCodeSender> {
        self.next_matching(
            "a check code prompt",
            |e| if let PeerEvent::NeedCode(s) = e { Some(s) } else { None },
        )
        .await
    }
    pub async fn verification_uri(&mut self) -> Result<String> {
        self.next_matching("the verification URI", |e| {
            if let PeerEvent::VerificationUri(u) = e { Some(u) } else { None }
        })
        .await
    }
    pub async fn user_code(&mut self) -> Result<String> {
        self.next_matching("the user code", |e| if let PeerEvent::UserCode(u) = e { Some(u) } else { None })
            .await
    }
    /// Waits for the peer's own flow to finish.
    pub async fn finish(self) -> Result<Result<(), E>> {
        Ok(tokio::time::timeout(Duration::from_secs(60), self.task).await??)
    }
}

fn scanned(p: QrProgress) -> Option<PeerEvent> {
    Some(PeerEvent::ShowCode(p.check_code.to_digit()))
}

fn generated(p: GeneratedQrProgress) -> Option<PeerEvent> {
    Some(match p {
        GeneratedQrProgress::QrReady(qr) => PeerEvent::Qr(qr.to_bytes()),
        GeneratedQrProgress::QrScanned(s) => PeerEvent::NeedCode(s),
    })
}

fn grant_event<Q>(p: GrantLoginProgress<Q>, inner: fn(Q) -> Option<PeerEvent>) -> Option<PeerEvent> {
    match p {
        GrantLoginProgress::EstablishingSecureChannel(q) => inner(q),
        GrantLoginProgress::WaitingForAuth { verification_uri } => {
            Some(PeerEvent::VerificationUri(verification_uri.to_string()))
        }
        GrantLoginProgress::SyncingSecrets => Some(PeerEvent::SyncingSecrets),
        _ => None,
    }
}

fn login_event<Q>(p: LoginProgress<Q>, inner: fn(Q) -> Option<PeerEvent>) -> Option<PeerEvent> {
    match p {
        LoginProgress::EstablishingSecureChannel(q) => inner(q),
        LoginProgress::WaitingForToken { user_code } => Some(PeerEvent::UserCode(user_code)),
        LoginProgress::SyncingSecrets => Some(PeerEvent::SyncingSecrets),
        _ => None,
    }
}

fn forward(
    progress: impl Stream<Item = Option<PeerEvent>> + Send + 'static,
    tx: mpsc::UnboundedSender<PeerEvent>,
) {
    tokio::spawn(async move {
        let mut progress = std::pin::pin!(progress);
        while let Some(ev) = progress.next().await {
            if let Some(ev) = ev
                && tx.send(ev).is_err()
            {
                return;
            }
        }
    });
}

/// An existing device that scans the QR the new device (the daemon) shows.
pub fn grant_scanning(client: Client, qr: Vec<u8>) -> Peer<QRCodeGrantLoginError> {
    let (tx, events) = mpsc::unbounded_channel();
    let task = tokio::spawn(async move {
        let qr = QrCodeData::from_bytes(&qr).expect("the daemon's QR decodes");
        let oauth = client.oauth();
        let fut = oauth.grant_login_with_qr_code().device_creation_timeout(Duration::from_secs(10)).scan(&qr);
        forward(fut.subscribe_to_progress().map(|p| grant_event(p, scanned)), tx);
        fut.into_future().await
    });
    Peer { task, events }
}

/// An existing device that shows a QR code for the new device (the daemon) to scan.
pub fn grant_generating(client: Client) -> Peer<QRCodeGrantLoginError> {
    let (tx, events) = mpsc::unbounded_channel();
    let task = tokio::spawn(async move {
        let oauth = client.oauth();
        let fut =
            oauth.grant_login_with_qr_code().device_creation_timeout(Duration::from_secs(10)).generate();
        forward(fut.subscribe_to_progress().map(|p| grant_event(p, generated)), tx);
        fut.into_future().await
    });
    Peer { task, events }
}

/// A new device that scans the QR the existing device (the daemon) shows.
pub fn login_scanning(client: Client, qr: Vec<u8>) -> Peer<QRCodeLoginError> {
    let (tx, events) = mpsc::unbounded_channel();
    let task = tokio::spawn(async move {
        let qr = QrCodeData::from_bytes(&qr).expect("the daemon's QR decodes");
        let reg = registration();
        let oauth = client.oauth();
        let fut = oauth.login_with_qr_code(Some(&reg)).scan(&qr);
        forward(fut.subscribe_to_progress().map(|p| login_event(p, scanned)), tx);
        fut.into_future().await
    });
    Peer { task, events }
}

/// A new device that shows a QR code for the existing device (the daemon) to scan.
pub fn login_generating(client: Client) -> Peer<QRCodeLoginError> {
    let (tx, events) = mpsc::unbounded_channel();
    let task = tokio::spawn(async move {
        let reg = registration();
        let oauth = client.oauth();
        let fut = oauth.login_with_qr_code(Some(&reg)).generate();
        forward(fut.subscribe_to_progress().map(|p| login_event(p, generated)), tx);
        fut.into_future().await
    });
    Peer { task, events }
}

/// The new device ended signed in, cross-signed, and trusting its own identity.
pub async fn assert_verified_new_device(client: &Client) -> Result<()> {
    let status =
        client.encryption().cross_signing_status().await.ok_or_else(|| anyhow!("no cross-signing status"))?;
    anyhow::ensure!(status.is_complete(), "cross-signing incomplete: {status:?}");
    let user = client.user_id().ok_or_else(|| anyhow!("no user"))?;
    let identity =
        client.encryption().get_user_identity(user).await?.ok_or_else(|| anyhow!("no own identity"))?;
    anyhow::ensure!(identity.is_verified(), "own identity not verified");
    let device = client.encryption().get_own_device().await?.ok_or_else(|| anyhow!("no own device"))?;
    anyhow::ensure!(device.is_cross_signed_by_owner(), "own device not cross-signed");
    Ok(())
}
