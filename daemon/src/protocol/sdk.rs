//! Engine that wraps matrix-sdk 0.18's QR login (2024 generation only). It adds what the SDK
//! lacks: an overall timeout, cancellation at any point, consent gating on the grant side, and
//! exactly one clean outcome for every exit path. SDK errors are mapped to [`LinkError`] with
//! fixed messages, because their `Debug`/`Display` can carry rendezvous URLs or message bodies.

use std::{future::IntoFuture, sync::Arc, time::Duration};

use futures_util::{Stream, StreamExt};
use matrix_sdk::{
    Client,
    authentication::oauth::{
        ClientRegistrationData, OAuthError,
        qrcode::{
            DeviceCodeErrorResponseType, GeneratedQrProgress, GrantLoginProgress, LoginFailureReason,
            LoginProgress, Msc4108IntentData, QRCodeGrantLoginError, QRCodeLoginError, QrAuthMessage,
            QrCodeData, QrCodeIntent, QrCodeIntentData, QrProgress, SecureChannelError,
        },
        registration::{ApplicationType, ClientMetadata, Localized, OAuthGrantType},
    },
    ruma::serde::Raw,
};
use tokio::time::Instant;
use tracing::{Instrument, debug, info, info_span, warn};

use super::{
    Engine, FlowCommand, FlowEvent, FlowHandle, FlowOutcome, FlowPort, GrantRequest, LoginRequest,
    LoginTarget, Secret, WireProtocol,
};
use crate::{
    config::OAuthClient,
    error::{LinkError, Result},
};

/// The matrix-sdk backed engine.
pub struct SdkEngine {
    registration: ClientRegistrationData,
}

impl SdkEngine {
    pub fn new(oauth: &OAuthClient) -> Result<Self> {
        let mut metadata = ClientMetadata::new(
            ApplicationType::Native,
            vec![OAuthGrantType::DeviceCode],
            Localized::new(oauth.client_uri.clone(), []),
        );
        metadata.client_name = Some(Localized::new(oauth.client_name.clone(), []));
        let raw = Raw::new(&metadata)
            .map_err(|e| LinkError::Failed(format!("cannot encode client metadata: {e}")))?;
        Ok(Self { registration: ClientRegistrationData::new(raw) })
    }
}

/// Kind of QR code, told apart by its header before any parser sees it.
fn parse_qr(bytes: &[u8]) -> Result<QrCodeData> {
    if bytes.starts_with(b"IO_ELEMENT_MSC4388")
        || (bytes.starts_with(b"MATRIX") && bytes.get(6) == Some(&0x03))
    {
        return Err(LinkError::Unsupported(
            "this QR code uses the latest (MSC4388) protocol generation, which this engine does not speak"
                .into(),
        ));
    }
    let qr = QrCodeData::from_bytes(bytes).map_err(|e| LinkError::InvalidQrCode(qr_decode_reason(&e)))?;
    if matches!(qr.intent_data(), QrCodeIntentData::Msc4388 { .. }) {
        return Err(LinkError::Unsupported("MSC4388 QR codes are not supported by this engine".into()));
    }
    Ok(qr)
}

fn qr_decode_reason(e: &matrix_sdk::authentication::oauth::qrcode::LoginQrCodeDecodeError) -> String {
    use matrix_sdk::authentication::oauth::qrcode::LoginQrCodeDecodeError as E;
    match e {
        E::NotEnoughData(_) => "the data is truncated".into(),
        E::NotUtf8(_) => "a text field is not UTF-8".into(),
        E::UrlParse(_) => "the rendezvous URL is not a valid URL".into(),
        E::InvalidIntent { .. } => "unknown intent byte".into(),
        E::InvalidType { .. } => "unknown version byte".into(),
        E::Base64(_) => "bad base64".into(),
        E::InvalidPrefix { .. } => "not a Matrix login QR code".into(),
    }
}

/// Everything a progress update can ask of the driver, whatever the SDK's generic type.
enum Step {
    Nothing,
    QrReady(Vec<u8>),
    AwaitCheckCode(matrix_sdk::authentication::oauth::qrcode::CheckCodeSender),
    ShowCheckCode(u8),
    ApprovalNeeded(String),
    WaitingForToken(String),
    SyncingSecrets,
}

fn scanned(q: QrProgress) -> Step {
    Step::ShowCheckCode(q.check_code.to_digit())
}

fn generated(q: GeneratedQrProgress) -> Step {
    match q {
        GeneratedQrProgress::QrReady(qr) => Step::QrReady(qr.to_bytes()),
        GeneratedQrProgress::QrScanned(sender) => Step::AwaitCheckCode(sender),
    }
}

fn grant_step<Q>(p: GrantLoginProgress<Q>, inner: fn(Q) -> Step) -> Step {
    match p {
        GrantLoginProgress::Starting | GrantLoginProgress::Done => Step::Nothing,
        GrantLoginProgress::EstablishingSecureChannel(q) => inner(q),
        GrantLoginProgress::WaitingForAuth { verification_uri } => {
            Step::ApprovalNeeded(verification_uri.to_string())
        }
        GrantLoginProgress::SyncingSecrets => Step::SyncingSecrets,
    }
}

fn login_step<Q>(p: LoginProgress<Q>, inner: fn(Q) -> Step) -> Step {
    match p {
        LoginProgress::Starting | LoginProgress::Done => Step::Nothing,
        LoginProgress::EstablishingSecureChannel(q) => inner(q),
        LoginProgress::WaitingForToken { user_code } => Step::WaitingForToken(user_code),
        LoginProgress::SyncingSecrets => Step::SyncingSecrets,
    }
}

/// Why the driver stopped before the SDK future finished.
enum Stop<E> {
    Finished(Result<(), E>),
    Cancelled,
    TimedOut,
}

/// Polls the SDK future, its progress and our commands together until one of them ends the flow.
/// On the grant side the SDK future is not polled while consent is pending, so it cannot reach
/// `m.login.success` or send secrets before `Approve`.
async fn drive<E, F, S>(
    fut: F,
    progress: S,
    port: &mut FlowPort,
    deadline: Instant,
    gate_on_approval: bool,
) -> Stop<E>
where
    F: std::future::Future<Output = Result<(), E>>,
    S: Stream<Item = Step>,
{
    let mut fut = std::pin::pin!(fut);
    let mut progress = std::pin::pin!(progress);
    let mut progress_open = true;
    let mut paused = false;
    let mut check_sender = None;
    let events = port.events.clone();
    let emit = |ev| {
        let _ = events.send(ev);
    };
    loop {
        tokio::select! {
            biased;
            step = progress.next(), if progress_open => match step {
                None => progress_open = false,
                Some(Step::Nothing) => {}
                Some(Step::QrReady(bytes)) => emit(FlowEvent::QrReady(Secret(bytes))),
                Some(Step::AwaitCheckCode(sender)) => {
                    check_sender = Some(sender);
                    emit(FlowEvent::WaitingForCheckCode);
                }
                Some(Step::ShowCheckCode(code)) => emit(FlowEvent::ShowCheckCode(Secret(code))),
                Some(Step::ApprovalNeeded(uri)) => {
                    paused = gate_on_approval;
                    emit(FlowEvent::WaitingForApproval {
                        verification_uri: Secret(uri),
                        peer_device_id: None,
                    });
                    if !gate_on_approval {
                        emit(FlowEvent::WaitingForToken { user_code: None });
                    }
                }
                Some(Step::WaitingForToken(code)) => {
                    emit(FlowEvent::WaitingForToken { user_code: Some(Secret(code)) })
                }
                Some(Step::SyncingSecrets) => emit(FlowEvent::SyncingSecrets),
            },
            cmd = port.commands.recv() => match cmd {
                Some(FlowCommand::CheckCode(code)) => match check_sender.take() {
                    // The SDK compares the code and fails the flow itself when it is wrong.
                    Some(sender) => {
                        if sender.send(code).await.is_err() {
                            debug!("check code could not be delivered");
                        }
                    }
                    None => debug!("check code ignored: none expected"),
                },
                Some(FlowCommand::Approve) => {
                    if paused {
                        paused = false;
                        emit(FlowEvent::WaitingForToken { user_code: None });
                    }
                }
                Some(FlowCommand::Cancel) | None => return Stop::Cancelled,
            },
            result = &mut fut, if !paused => return Stop::Finished(result),
            _ = tokio::time::sleep_until(deadline) => return Stop::TimedOut,
        }
    }
}

fn finish<E>(stop: Stop<E>, map: impl FnOnce(E) -> LinkError) -> std::result::Result<(), FlowOutcome> {
    match stop {
        Stop::Finished(Ok(())) => Ok(()),
        Stop::Finished(Err(e)) => Err(FlowOutcome::Failed(map(e))),
        Stop::Cancelled => Err(FlowOutcome::Cancelled),
        Stop::TimedOut => Err(FlowOutcome::Failed(LinkError::Expired("the flow timed out".into()))),
    }
}

impl Engine for SdkEngine {
    fn start_grant(&self, client: Client, request: GrantRequest) -> Result<FlowHandle> {
        let qr = request.qr_code.as_ref().map(|b| parse_qr(&b.0)).transpose()?;
        if let Some(qr) = &qr
            && qr.intent() != QrCodeIntent::Login
        {
            return Err(LinkError::InvalidQrCode(
                "this QR code was shown by a signed-in device; scan the one on the new device".into(),
            ));
        }
        let (handle, mut port) = FlowHandle::pair(WireProtocol::V2024);
        let deadline = Instant::now() + request.timeout;
        let span = info_span!("grant", scanned = qr.is_some());
        tokio::spawn(
            async move {
                let oauth = client.oauth();
                let builder =
                    oauth.grant_login_with_qr_code().device_creation_timeout(request.device_creation_timeout);
                let stop = match &qr {
                    Some(qr) => {
                        let fut = builder.scan(qr);
                        let progress = fut.subscribe_to_progress().map(|p| grant_step(p, scanned));
                        drive(fut.into_future(), progress, &mut port, deadline, true).await
                    }
                    None => {
                        let fut = builder.generate();
                        let progress = fut.subscribe_to_progress().map(|p| grant_step(p, generated));
                        drive(fut.into_future(), progress, &mut port, deadline, true).await
                    }
                };
                let outcome = match finish(stop, grant_error) {
                    // The SDK does not tell us the new device's ID in 0.18.
                    Ok(()) => FlowOutcome::Success {
                        user_id: client.user_id().map(|u| u.to_string()).unwrap_or_default(),
                        device_id: String::new(),
                    },
                    Err(outcome) => outcome,
                };
                info!(outcome = outcome_name(&outcome), "grant flow ended");
                let _ = port.outcome.send(outcome);
            }
            .instrument(span),
        );
        Ok(handle)
    }

    fn start_login(&self, target: Arc<dyn LoginTarget>, request: LoginRequest) -> Result<FlowHandle> {
        let qr = request.qr_code.as_ref().map(|b| parse_qr(&b.0)).transpose()?;
        let server = match &qr {
            Some(qr) => match qr.intent_data() {
                QrCodeIntentData::Msc4108 {
                    data: Msc4108IntentData::Reciprocate { server_name }, ..
                } => server_name.clone(),
                _ => {
                    return Err(LinkError::InvalidQrCode(
                        "this QR code was shown by a device that wants to sign in; scan the one on a \
                         signed-in device"
                            .into(),
                    ));
                }
            },
            None => match &request.homeserver {
                Some(url) => url.to_string(),
                None => {
                    return Err(LinkError::InvalidArgs(
                        "no homeserver: pass the `homeserver` option or set `homeserver` in config.toml"
                            .into(),
                    ));
                }
            },
        };
        let (handle, mut port) = FlowHandle::pair(WireProtocol::V2024);
        let deadline = Instant::now() + request.timeout;
        let registration = self.registration.clone();
        let span = info_span!("login", scanned = qr.is_some());
        tokio::spawn(
            async move {
                let outcome =
                    run_login(&*target, &server, qr, registration, &request, &mut port, deadline).await;
                if !matches!(outcome, FlowOutcome::Success { .. }) {
                    target.abandon().await;
                }
                info!(outcome = outcome_name(&outcome), "login flow ended");
                let _ = port.outcome.send(outcome);
            }
            .instrument(span),
        );
        Ok(handle)
    }
}

async fn run_login(
    target: &dyn LoginTarget,
    server: &str,
    qr: Option<QrCodeData>,
    registration: ClientRegistrationData,
    request: &LoginRequest,
    port: &mut FlowPort,
    deadline: Instant,
) -> FlowOutcome {
    let client = tokio::select! {
        c = target.new_client(server) => match c {
            Ok(c) => c,
            Err(e) => return FlowOutcome::Failed(e),
        },
        _ = tokio::time::sleep_until(deadline) => {
            return FlowOutcome::Failed(LinkError::Expired("the flow timed out".into()))
        }
    };
    let oauth = client.oauth();
    let builder = oauth.login_with_qr_code(Some(&registration));
    let stop = match &qr {
        Some(qr) => {
            let fut = builder.scan(qr);
            let progress = fut.subscribe_to_progress().map(|p| login_step(p, scanned));
            drive(fut.into_future(), progress, port, deadline, false).await
        }
        None => {
            let fut = builder.generate();
            let progress = fut.subscribe_to_progress().map(|p| login_step(p, generated));
            drive(fut.into_future(), progress, port, deadline, false).await
        }
    };
    if let Err(outcome) = finish(stop, login_error) {
        return outcome;
    }
    let (Some(user_id), Some(device_id)) = (client.user_id(), client.device_id()) else {
        return FlowOutcome::Failed(LinkError::Failed("signed in without a user or device ID".into()));
    };
    let (user_id, device_id) = (user_id.to_string(), device_id.to_string());
    rename_device(&client, &request.device_display_name).await;
    match target.adopt(client).await {
        Ok(()) => FlowOutcome::Success { user_id, device_id },
        Err(e) => FlowOutcome::Failed(e),
    }
}

/// Best effort: the device works without a display name.
async fn rename_device(client: &Client, name: &str) {
    let Some(device_id) = client.device_id() else { return };
    let rename = client.rename_device(device_id, name);
    match tokio::time::timeout(Duration::from_secs(10), rename).await {
        Ok(Ok(_)) => {}
        Ok(Err(_)) | Err(_) => warn!("could not set the device display name"),
    }
}

fn outcome_name(outcome: &FlowOutcome) -> &'static str {
    match outcome {
        FlowOutcome::Success { .. } => "success",
        FlowOutcome::Cancelled => "cancelled",
        FlowOutcome::Failed(_) => "failed",
    }
}

/// The peer's `m.login.failure` reason. An expired authorization is our `Expired`; the rest pass
/// through by their protocol name.
fn failure_reason(reason: LoginFailureReason) -> LinkError {
    match reason {
        LoginFailureReason::AuthorizationExpired => LinkError::Expired(
            "the other device reports that the sign-in request expired (authorization_expired)".into(),
        ),
        other => LinkError::LoginFailed(other.as_str().to_owned()),
    }
}

fn secure_channel_error(e: SecureChannelError) -> LinkError {
    use SecureChannelError as S;
    match e {
        S::Utf8(_) | S::Ecies(_) | S::MessageDecode(_) | S::Json(_) => {
            LinkError::ProtocolError("the other device sent a message that could not be read".into())
        }
        S::SecureChannelMessage { expected, .. } => {
            LinkError::ProtocolError(format!("unexpected secure channel message, expected {expected}"))
        }
        S::InvalidCheckCode => LinkError::InvalidCheckCode,
        S::RendezvousChannel(_) => LinkError::Network("a rendezvous request failed".into()),
        S::InvalidIntent => LinkError::InvalidQrCode(
            "both devices have the same intent; scan the other device's QR code".into(),
        ),
        S::CannotReceiveCheckCode => LinkError::Failed("the check code was never entered".into()),
        S::UnsupportedQrCodeType => {
            LinkError::Unsupported("the QR code uses a protocol generation this engine does not speak".into())
        }
    }
}

fn login_error(e: QRCodeLoginError) -> LinkError {
    use QRCodeLoginError as L;
    match e {
        L::OAuth(oauth) => match oauth.as_request_token_error() {
            Some(DeviceCodeErrorResponseType::AccessDenied) => {
                LinkError::LoginFailed("the sign-in was denied on the other device".into())
            }
            Some(DeviceCodeErrorResponseType::ExpiredToken) => {
                LinkError::Expired("the sign-in request expired before it was approved".into())
            }
            _ => match oauth {
                matrix_sdk::authentication::oauth::qrcode::DeviceAuthorizationOAuthError::NoDeviceAuthorizationEndpoint => {
                    LinkError::Unsupported("the OAuth server has no device authorization grant".into())
                }
                matrix_sdk::authentication::oauth::qrcode::DeviceAuthorizationOAuthError::OAuth(
                    OAuthError::Discovery(_),
                ) => LinkError::Unsupported("the homeserver does not delegate sign-in to OAuth 2.0".into()),
                _ => LinkError::Network("an OAuth request failed".into()),
            },
        },
        L::LoginFailure { reason, .. } => failure_reason(reason),
        L::UnexpectedMessage { expected, .. } => {
            LinkError::ProtocolError(format!("unexpected message, expected {expected}"))
        }
        L::SecureChannel(sc) => secure_channel_error(sc),
        L::NotFound => LinkError::Expired("the rendezvous session expired or was deleted".into()),
        L::UserIdDiscovery(_) => LinkError::Network("asking the homeserver who we are failed".into()),
        L::DeviceKeyUpload(_) => LinkError::Failed("uploading the new device's keys failed".into()),
        L::SecretImport(_) => LinkError::Failed("importing the cross-signing secrets failed".into()),
        L::SessionTokens(_) | L::CrossProcessRefreshLock(_) => {
            LinkError::Failed("storing the new session failed".into())
        }
        L::ServerReset(_) => LinkError::Failed("switching to the announced homeserver failed".into()),
    }
}

fn grant_error(e: QRCodeGrantLoginError) -> LinkError {
    use QRCodeGrantLoginError as G;
    match e {
        G::MissingSecretsBackup(_) => LinkError::MissingSecrets(
            "this device does not hold the private cross-signing keys to share".into(),
        ),
        G::InvalidCheckCode => LinkError::InvalidCheckCode,
        G::NotFound => LinkError::Expired("the rendezvous session expired or was deleted".into()),
        G::Unknown(_) => LinkError::ProtocolError("the handshake failed".into()),
        G::UnsupportedProtocol(_) => {
            LinkError::ProtocolError("the new device asked for an unsupported login protocol".into())
        }
        G::DeviceIDAlreadyInUse => LinkError::DeviceIdInUse,
        G::DeviceNotFound => LinkError::DeviceNotFound,
        G::SecureChannel(sc) => secure_channel_error(sc),
        // matrix-sdk's grant side does not expect `m.login.declined`: a new device whose user
        // denied consent sends it where `m.login.success` was due.
        G::UnexpectedMessage { received: QrAuthMessage::LoginDeclined, .. } => {
            LinkError::LoginFailed("the sign-in was declined on the new device".into())
        }
        G::UnexpectedMessage { expected, .. } => {
            LinkError::ProtocolError(format!("unexpected message, expected {expected}"))
        }
        G::LoginFailure { reason } => failure_reason(reason),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn qr_kinds_are_told_apart() {
        assert!(matches!(parse_qr(b""), Err(LinkError::InvalidQrCode(_))));
        assert!(matches!(parse_qr(b"hello world"), Err(LinkError::InvalidQrCode(_))));
        assert!(matches!(parse_qr(b"MATRIX\x02"), Err(LinkError::InvalidQrCode(_))));
        assert!(matches!(parse_qr(b"MATRIX\x03\x00"), Err(LinkError::Unsupported(_))));
        assert!(matches!(parse_qr(b"IO_ELEMENT_MSC4388\x03"), Err(LinkError::Unsupported(_))));
    }

    #[test]
    fn secrets_are_redacted_in_debug() {
        let ev = FlowEvent::ShowCheckCode(Secret(42));
        assert!(!format!("{ev:?}").contains("42"));
    }
}
