//! One `Flow` object per running flow: its properties and owner-only methods. The task that
//! drives it is in `run`.

pub mod run;

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Instant,
};

use tokio::sync::{mpsc, watch};
use tracing::info;
use zbus::{
    Connection, interface,
    message::Header,
    names::OwnedUniqueName,
    object_server::SignalEmitter,
    zvariant::{OwnedObjectPath, OwnedValue, Value},
};

use super::{
    args::Checked,
    caller::{self, Owner},
    error::Error,
};
use crate::{
    desktop::{self, qr::QrFormat},
    error::LinkError,
    protocol::{FlowCommand, FlowKind, FlowState, Secret, WireProtocol, kinds},
};

/// `Response` codes.
use matrix_linkd_api::response::{
    CANCELLED as RESPONSE_CANCELLED, FAILED as RESPONSE_FAILED, SUCCESS as RESPONSE_SUCCESS,
};

pub type Results = HashMap<String, OwnedValue>;

/// What the D-Bus layer decided when the flow started.
pub struct FlowSettings {
    pub kind: FlowKind,
    pub owner: Owner,
    /// The connection that called `Start*`: `Response` goes there.
    pub starter: OwnedUniqueName,
    pub detached: bool,
    pub notify: bool,
    pub open_uri: bool,
    pub expires_at_us: u64,
    /// Delegation: the program's name, for the approval notification.
    pub client_name: Option<String>,
}

#[derive(Default)]
struct FlowData {
    state: Option<FlowState>,
    error_name: String,
    qr: Option<Secret<Vec<u8>>>,
    check_code: Option<Secret<u8>>,
    check_code_sent: bool,
    verification_uri: Option<Secret<String>>,
    user_code: Option<Secret<String>>,
    peer_device_id: Option<String>,
    approved: bool,
    /// Delegation: the session document until `TakeSession` hands it over.
    session: Option<Secret<Vec<u8>>>,
    /// QR codes shown so far (`QrCodeSerial`).
    qr_serial: u32,
    /// The approval notification's task, ended with the flow.
    approval: Option<desktop::ApprovalTask>,
}

struct Shared {
    path: OwnedObjectPath,
    settings: FlowSettings,
    protocol: WireProtocol,
    data: Mutex<FlowData>,
    commands: mpsc::UnboundedSender<FlowCommand>,
    result: watch::Sender<Option<(u32, Results)>>,
}

/// The exported object. Cheap to clone; all state is shared.
#[derive(Clone)]
pub struct Flow {
    shared: Arc<Shared>,
}

fn ov(v: Value<'_>) -> OwnedValue {
    OwnedValue::try_from(v).expect("plain values convert")
}

impl Flow {
    fn data(&self) -> std::sync::MutexGuard<'_, FlowData> {
        self.shared.data.lock().expect("flow data lock")
    }

    fn current_state(&self) -> FlowState {
        self.data().state.unwrap_or(FlowState::Starting)
    }

    async fn check_owner(&self, conn: &Connection, hdr: &Header<'_>) -> Result<(), Error> {
        let allowed = match &self.shared.settings.owner {
            // The common case needs no round trip to the bus.
            Owner::Name(n) => caller::sender(hdr).map(|s| s == *n)?,
            owner => owner.allows(&caller::identify(conn, hdr).await?),
        };
        if allowed {
            Ok(())
        } else {
            Err(LinkError::AccessDenied("only the process that started this flow may use it".into()).into())
        }
    }

    /// Reader check for the plain properties (kind, state, error name…): the owner, or a program
    /// outside any sandbox (the user's own). A sandboxed app reads only flows it owns. Without a
    /// header the read is the daemon's own (a change signal). Property errors are standard ones.
    async fn check_reader(&self, conn: &Connection, hdr: Option<Header<'_>>) -> zbus::fdo::Result<()> {
        let Some(hdr) = hdr else { return Ok(()) };
        let denied = || zbus::fdo::Error::AccessDenied("a sandboxed app reads only its own flows".into());
        if let Owner::Name(n) = &self.shared.settings.owner
            && caller::sender(&hdr).is_ok_and(|s| s == *n)
        {
            return Ok(());
        }
        let caller = caller::identify(conn, &hdr).await.map_err(|_| denied())?;
        if caller.sandbox_app.is_none() || self.shared.settings.owner.allows(&caller) {
            Ok(())
        } else {
            Err(denied())
        }
    }

    /// Owner check for the secret getters. Without a header (an internal call) nothing is given.
    async fn check_owner_opt(&self, conn: &Connection, hdr: Option<Header<'_>>) -> zbus::fdo::Result<()> {
        let denied = || zbus::fdo::Error::AccessDenied("only the owner of this flow may read this".into());
        let hdr = hdr.ok_or_else(denied)?;
        self.check_owner(conn, &hdr).await.map_err(|_| denied())
    }

    /// Consent, from the `Approve` call or the notification's button.
    fn do_approve(&self) -> Result<(), LinkError> {
        let uri = {
            let mut d = self.data();
            if d.state != Some(FlowState::WaitingForApproval) || d.approved {
                return Err(LinkError::InvalidState("nothing is waiting for approval".into()));
            }
            d.approved = true;
            d.verification_uri.clone()
        };
        if self.shared.settings.open_uri
            && let Some(Secret(uri)) = uri
        {
            tokio::spawn(async move {
                desktop::open_uri(&uri).await;
            });
        }
        info!("flow approved");
        self.shared
            .commands
            .send(FlowCommand::Approve)
            .map_err(|_| LinkError::InvalidState("the flow has ended".into()))
    }

    pub fn do_cancel(&self) -> Result<(), LinkError> {
        if self.current_state().is_final() {
            return Err(LinkError::InvalidState("the flow has ended".into()));
        }
        self.shared
            .commands
            .send(FlowCommand::Cancel)
            .map_err(|_| LinkError::InvalidState("the flow has ended".into()))
    }
}

#[interface(name = "io.github.matrix_linkd.Linkd1.Flow")]
impl Flow {
    /// The two-digit code shown on the other device. Valid only in `WaitingForCheckCode`.
    async fn check_code(
        &self,
        code: Checked<u8>,
        #[zbus(header)] hdr: Header<'_>,
        #[zbus(connection)] conn: &Connection,
    ) -> Result<(), Error> {
        self.check_owner(conn, &hdr).await?;
        let code = code.get()?;
        if code > 99 {
            return Err(LinkError::InvalidArgs("the check code has two digits (0-99)".into()).into());
        }
        {
            let mut d = self.data();
            if d.state != Some(FlowState::WaitingForCheckCode) || d.check_code_sent {
                return Err(LinkError::InvalidState("no check code is expected now".into()).into());
            }
            d.check_code_sent = true;
        }
        self.shared
            .commands
            .send(FlowCommand::CheckCode(code))
            .map_err(|_| LinkError::InvalidState("the flow has ended".into()))?;
        Ok(())
    }

    /// Consent to let the new device in. Valid only in `WaitingForApproval`.
    async fn approve(
        &self,
        #[zbus(header)] hdr: Header<'_>,
        #[zbus(connection)] conn: &Connection,
    ) -> Result<(), Error> {
        self.check_owner(conn, &hdr).await?;
        self.do_approve()?;
        Ok(())
    }

    /// Refuse or stop. Valid in every live state; the peer is told where the protocol allows.
    async fn cancel(
        &self,
        #[zbus(header)] hdr: Header<'_>,
        #[zbus(connection)] conn: &Connection,
    ) -> Result<(), Error> {
        self.check_owner(conn, &hdr).await?;
        self.do_cancel()?;
        Ok(())
    }

    /// The QR code the daemon shows: `raw`, `png`, `svg` or `utf8`.
    #[zbus(out_args("qr_code"))]
    async fn get_qr_code(
        &self,
        format: Checked<String>,
        #[zbus(header)] hdr: Header<'_>,
        #[zbus(connection)] conn: &Connection,
    ) -> Result<Vec<u8>, Error> {
        self.check_owner(conn, &hdr).await?;
        let format: QrFormat = format.get()?.parse()?;
        let qr = self.data().qr.clone();
        let Some(Secret(bytes)) = qr else {
            return Err(LinkError::InvalidState("this flow has no QR code to show".into()).into());
        };
        Ok(desktop::qr::render(&bytes, format)?)
    }

    /// Blocks until the flow ends; returns what `Response` carries.
    #[zbus(out_args("response", "results"))]
    async fn wait(
        &self,
        #[zbus(header)] hdr: Header<'_>,
        #[zbus(connection)] conn: &Connection,
    ) -> Result<(u32, Results), Error> {
        self.check_owner(conn, &hdr).await?;
        let mut rx = self.shared.result.subscribe();
        let r = rx
            .wait_for(Option::is_some)
            .await
            .map_err(|_| LinkError::Failed("the flow vanished".into()))?
            .clone()
            .expect("waited for Some");
        Ok((r.0, r.1.iter().map(|(k, v)| (k.clone(), v.try_clone().expect("plain value"))).collect()))
    }

    /// Delegation: the new device's session, once, as a sealed memfd (never in a message body).
    #[zbus(out_args("session"))]
    async fn take_session(
        &self,
        #[zbus(header)] hdr: Header<'_>,
        #[zbus(connection)] conn: &Connection,
    ) -> Result<zbus::zvariant::OwnedFd, Error> {
        self.check_owner(conn, &hdr).await?;
        let document = {
            let mut d = self.data();
            if !kinds::rules(self.shared.settings.kind).hands_over_session
                || d.state != Some(FlowState::SyncingSecrets)
            {
                return Err(LinkError::InvalidState("no session is ready to be taken".into()).into());
            }
            d.session.take().ok_or_else(|| LinkError::InvalidState("the session was already taken".into()))?
        };
        let fd = super::handover::sealed_memfd(&document.0)
            .map_err(|e| LinkError::Failed(format!("cannot hand the session over: {e}")))?;
        drop(document);
        info!("session taken by the owner");
        self.shared
            .commands
            .send(FlowCommand::SessionTaken)
            .map_err(|_| LinkError::InvalidState("the flow has ended".into()))?;
        Ok(fd.into())
    }

    #[zbus(property(emits_changed_signal = "const"))]
    async fn kind(
        &self,
        #[zbus(header)] hdr: Option<Header<'_>>,
        #[zbus(connection)] conn: &Connection,
    ) -> zbus::fdo::Result<u32> {
        self.check_reader(conn, hdr).await?;
        Ok(self.shared.settings.kind as u32)
    }

    #[zbus(property(emits_changed_signal = "const"))]
    async fn protocol(
        &self,
        #[zbus(header)] hdr: Option<Header<'_>>,
        #[zbus(connection)] conn: &Connection,
    ) -> zbus::fdo::Result<u32> {
        self.check_reader(conn, hdr).await?;
        Ok(self.shared.protocol as u32)
    }

    #[zbus(property)]
    async fn state(
        &self,
        #[zbus(header)] hdr: Option<Header<'_>>,
        #[zbus(connection)] conn: &Connection,
    ) -> zbus::fdo::Result<u32> {
        self.check_reader(conn, hdr).await?;
        Ok(self.current_state() as u32)
    }

    #[zbus(property(emits_changed_signal = "const"))]
    async fn expires_at(
        &self,
        #[zbus(header)] hdr: Option<Header<'_>>,
        #[zbus(connection)] conn: &Connection,
    ) -> zbus::fdo::Result<u64> {
        self.check_reader(conn, hdr).await?;
        Ok(self.shared.settings.expires_at_us)
    }

    #[zbus(property)]
    async fn error_name(
        &self,
        #[zbus(header)] hdr: Option<Header<'_>>,
        #[zbus(connection)] conn: &Connection,
    ) -> zbus::fdo::Result<String> {
        self.check_reader(conn, hdr).await?;
        Ok(self.data().error_name.clone())
    }

    /// Which QR code is shown: one more each time an expired one is replaced.
    #[zbus(property)]
    async fn qr_code_serial(
        &self,
        #[zbus(header)] hdr: Option<Header<'_>>,
        #[zbus(connection)] conn: &Connection,
    ) -> zbus::fdo::Result<u32> {
        self.check_reader(conn, hdr).await?;
        Ok(self.data().qr_serial)
    }

    #[zbus(property(emits_changed_signal = "invalidates"))]
    async fn check_code_to_show(
        &self,
        #[zbus(header)] hdr: Option<Header<'_>>,
        #[zbus(connection)] conn: &Connection,
    ) -> zbus::fdo::Result<u8> {
        self.check_owner_opt(conn, hdr).await?;
        Ok(self.data().check_code.as_ref().map(|c| c.0).unwrap_or(0))
    }

    #[zbus(property(emits_changed_signal = "invalidates"))]
    async fn verification_uri(
        &self,
        #[zbus(header)] hdr: Option<Header<'_>>,
        #[zbus(connection)] conn: &Connection,
    ) -> zbus::fdo::Result<String> {
        self.check_owner_opt(conn, hdr).await?;
        Ok(self.data().verification_uri.as_ref().map(|c| c.0.clone()).unwrap_or_default())
    }

    #[zbus(property(emits_changed_signal = "invalidates"))]
    async fn user_code(
        &self,
        #[zbus(header)] hdr: Option<Header<'_>>,
        #[zbus(connection)] conn: &Connection,
    ) -> zbus::fdo::Result<String> {
        self.check_owner_opt(conn, hdr).await?;
        Ok(self.data().user_code.as_ref().map(|c| c.0.clone()).unwrap_or_default())
    }

    #[zbus(property(emits_changed_signal = "invalidates"))]
    async fn peer_device_id(
        &self,
        #[zbus(header)] hdr: Option<Header<'_>>,
        #[zbus(connection)] conn: &Connection,
    ) -> zbus::fdo::Result<String> {
        self.check_owner_opt(conn, hdr).await?;
        Ok(self.data().peer_device_id.clone().unwrap_or_default())
    }

    /// The end of the flow, unicast to the owner, exactly once.
    #[zbus(signal)]
    async fn response(emitter: &SignalEmitter<'_>, response: u32, results: Results) -> zbus::Result<()>;
}

/// Seconds since the epoch plus `d`, in microseconds, for `ExpiresAt`.
pub fn expires_at_us(d: std::time::Duration) -> u64 {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    (now + d).as_micros() as u64
}

/// Deadline for a detached owner, matching `ExpiresAt`.
pub fn detached_until(d: std::time::Duration) -> Instant {
    Instant::now() + d
}
