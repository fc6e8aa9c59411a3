//! The `Manager` object: starts flows (one skeleton for every kind, the kind's rules from
//! `protocol::kinds`), lists and ends delegations, signs out, publishes the session.

use std::sync::Arc;

use matrix_linkd_api::{capabilities, options};
use rand::RngCore;
use tracing::{info, warn};
use zbus::{Connection, interface, message::Header, object_server::SignalEmitter, zvariant::OwnedObjectPath};

use super::{
    args::Checked,
    caller::{self, Caller, Owner},
    context::Context,
    error::{Error, LinkdError},
    flow::{self, FlowSettings},
    permissions::{self, Permission},
    requests::{self, Options, Opts, Parsed},
};
use crate::{
    account::SessionState,
    desktop,
    error::{LinkError, Result},
    protocol::{
        AccountPort, DelegationRecords as _, FlowKind, FlowRequest,
        delegated::{self, Ended},
        kinds::{self, Needs},
    },
};

/// The Manager interface, version 1.
#[derive(Clone)]
pub struct Manager {
    pub(super) ctx: Arc<Context>,
}

/// The portal's rule for request tokens: letters, digits and `_`, at most 64 of them (the token
/// goes into an object path and every log line of the flow).
const MAX_HANDLE_TOKEN: usize = options::MAX_HANDLE_TOKEN;

fn valid_handle_token(t: &str) -> bool {
    (1..=MAX_HANDLE_TOKEN).contains(&t.len()) && t.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'_')
}

/// What a sandboxed app must be allowed for `request`.
fn needed(request: &FlowRequest) -> Vec<Permission> {
    match request {
        FlowRequest::Grant(_) => vec![Permission::Grant],
        FlowRequest::Login(_) => vec![Permission::Login],
        FlowRequest::Delegation(d) if d.share_secrets => vec![Permission::Delegate, Permission::ShareSecrets],
        FlowRequest::Delegation(_) => vec![Permission::Delegate],
    }
}

/// A kind's options parser (`dbus::requests`).
type Parser = fn(&Opts<'_>, requests::Context<'_>) -> Result<Parsed>;

impl Manager {
    /// The account's details (user, device, homeserver) are for programs that may use the daemon:
    /// a sandboxed app that is not allowed gets `AccessDenied` (property reads carry the standard
    /// errors only). Without a header the read is the daemon's own.
    async fn check_reader(&self, conn: &Connection, hdr: Option<Header<'_>>) -> zbus::fdo::Result<()> {
        let Some(hdr) = hdr else { return Ok(()) };
        let caller =
            caller::identify(conn, &hdr).await.map_err(|e| zbus::fdo::Error::AccessDenied(e.to_string()))?;
        match &caller.sandbox_app {
            None => Ok(()),
            Some(app) if permissions::may_use(conn, &self.ctx.config, app).await => Ok(()),
            Some(app) => Err(zbus::fdo::Error::AccessDenied(format!(
                "{app} is a sandboxed app that may not use matrix-linkd"
            ))),
        }
    }

    /// A sandboxed app lists and revokes (its own) devices only once it may use the daemon.
    async fn check_may_use(&self, conn: &Connection, caller: &Caller) -> Result<()> {
        match &caller.sandbox_app {
            Some(app) if !permissions::may_use(conn, &self.ctx.config, app).await => {
                Err(LinkError::NotAllowed(format!("{app} is a sandboxed app that may not use matrix-linkd")))
            }
            _ => Ok(()),
        }
    }

    /// The one `Start*` skeleton: who calls and may they, the flow's path, the kind's options, the
    /// session the kind needs and a slot within the limits (in the kind's order), the engine, the
    /// exported flow object.
    async fn start_flow(
        &self,
        kind: FlowKind,
        parse: Parser,
        conn: &Connection,
        hdr: &Header<'_>,
        options: &Options,
    ) -> Result<OwnedObjectPath> {
        let rules = kinds::rules(kind);
        let opts = Opts(options);
        let caller = caller::identify(conn, hdr).await?;
        options.check()?;
        let detached = opts.boolean(options::DETACHED, false)?;
        if detached && caller.sandbox_app.is_some() {
            return Err(LinkError::NotAllowed("sandboxed callers cannot start detached flows".into()));
        }
        let path = flow_path(&caller, opts.string(options::HANDLE_TOKEN)?)?;
        let cx = requests::Context { config: &self.ctx.config, caller: &caller, qr_code: opts.qr_code()? };
        let parsed = parse(&opts, cx)?;
        debug_assert_eq!(parsed.request.kind(), kind);
        if let Some(app) = &caller.sandbox_app {
            for permission in needed(&parsed.request) {
                permissions::check(conn, &self.ctx.config, app, permission).await?;
            }
        }
        let settings = self.settings(kind, &caller, detached, &parsed)?;
        let slot = if rules.exclusive {
            let slot = self.ctx.reserve(&path, &caller.unique_name, kind)?;
            self.check_session(rules.needs).await?;
            slot
        } else {
            self.check_session(rules.needs).await?;
            self.ctx.reserve(&path, &caller.unique_name, kind)?
        };
        let account: Arc<dyn AccountPort> = self.ctx.account.clone();
        let handle = self.ctx.engine.start(account, parsed.request).await?;
        flow::run::start(self.ctx.clone(), conn, path.clone(), settings, handle)
            .await
            .map_err(|e| LinkError::Failed(format!("cannot export the flow: {e}")))?;
        slot.keep();
        info!(scanned = options.contains_key(options::QR_CODE), "{} flow started", rules.method);
        Ok(path)
    }

    /// Waits for a restore in progress, then checks the session is as the kind needs it.
    async fn check_session(&self, needs: Needs) -> Result<()> {
        self.ctx.account.settled().await;
        match needs {
            Needs::SignedIn => self.ctx.account.client().await.map(drop),
            Needs::SignedOut if self.ctx.account.info().state == SessionState::SignedIn => {
                Err(LinkError::AlreadySignedIn)
            }
            Needs::SignedOut => Ok(()),
        }
    }

    fn settings(
        &self,
        kind: FlowKind,
        caller: &Caller,
        detached: bool,
        parsed: &Parsed,
    ) -> Result<FlowSettings> {
        let timeouts = &self.ctx.config.timeouts;
        let owner = if detached {
            let uid = caller
                .uid
                .ok_or_else(|| LinkError::NotAllowed("the bus does not know the caller's UID".into()))?;
            Owner::Uid { uid, until: flow::detached_until(timeouts.detached().min(timeouts.flow())) }
        } else {
            Owner::Name(caller.unique_name.clone())
        };
        Ok(FlowSettings {
            kind,
            owner,
            starter: caller.unique_name.clone(),
            detached,
            notify: parsed.notify,
            open_uri: parsed.open_uri,
            expires_at_us: flow::expires_at_us(timeouts.flow()),
            client_name: parsed.client_name.clone(),
        })
    }

    /// The delegations the homeserver still knows; the others are forgotten on the way. A
    /// sandboxed app (`app`) sees only its own.
    async fn list_delegations_inner(&self, app: Option<&str>) -> Result<Vec<(String, String, String, u64)>> {
        self.ctx.account.settled().await;
        let client = self.ctx.account.client().await?;
        let mut out = Vec::new();
        for record in self.ctx.account.delegations().await? {
            if app.is_some() && record.app_id.as_deref() != app {
                continue;
            }
            if self.ctx.engine.device_known(&client, &record.device_id).await == Some(false) {
                info!("a delegated device is gone from the homeserver; forgetting it");
                self.ctx.account.forget(&record.device_id).await?;
                continue;
            }
            out.push((record.device_id, record.client_name, record.device_display_name, record.created));
        }
        Ok(out)
    }

    /// Ends a delegated session. A sandboxed app (`app`) ends only its own: another program's
    /// device is as unknown to it as a device never delegated.
    async fn revoke_delegation_inner(&self, device_id: &str, app: Option<&str>) -> Result<&'static str> {
        self.ctx.account.settled().await;
        let client = self.ctx.account.client().await?;
        let record = self.ctx.account.delegation(device_id).await?;
        if app.is_some() && record.app_id.as_deref() != app {
            return Err(LinkError::DeviceNotFound);
        }
        let ended = self
            .ctx
            .engine
            .end_delegation(&client, &record, false)
            .await?
            .ok_or_else(|| LinkError::Failed("the session could not be ended".into()))?;
        match &ended {
            Ended::Revoked => {
                self.ctx.account.forget(device_id).await?;
                info!("delegated session revoked");
            }
            Ended::AccountPage(page) => {
                info!("no valid token of the delegated session left; opening the account page");
                if self.ctx.config.desktop.open_uri {
                    desktop::open_uri(page.as_str()).await;
                }
            }
        }
        Ok(ended.as_str())
    }

    /// Before signing out: ends every delegated session the daemon still holds a token of.
    async fn end_delegations(&self) {
        let Ok(client) = self.ctx.account.client().await else { return };
        let Ok(records) = self.ctx.account.delegations().await else { return };
        for record in records {
            match self.ctx.engine.end_delegation(&client, &record, true).await {
                Ok(Some(_)) => info!("delegated session revoked before signing out"),
                _ => info!("a delegated session stays signed in (no valid token of it is left)"),
            }
        }
    }
}

/// The flow's object path: the caller's unique name and its `handle_token` (a random one when it
/// gave none), as the portal's requests have them.
fn flow_path(caller: &Caller, token: Option<String>) -> Result<OwnedObjectPath> {
    let token = match token {
        Some(t) if valid_handle_token(&t) => t,
        Some(_) => {
            return Err(LinkError::InvalidArgs(format!(
                "`handle_token` must be 1 to {MAX_HANDLE_TOKEN} of [A-Za-z0-9_]"
            )));
        }
        None => {
            let mut b = [0u8; 8];
            rand::rng().fill_bytes(&mut b);
            format!("t{}", hex::encode(b))
        }
    };
    OwnedObjectPath::try_from(matrix_linkd_api::flow_path(&caller.unique_name, &token))
        .map_err(|_| LinkError::InvalidArgs("cannot build a flow path from `handle_token`".into()))
}

/// Logs that a `Start…` call was refused and why; the caller gets the named error.
fn refused(method: &'static str) -> impl FnOnce(LinkError) -> Error {
    move |e| {
        info!(error = %e, "{method} refused");
        e.into()
    }
}

#[interface(name = "io.github.matrix_linkd.Linkd1.Manager")]
impl Manager {
    /// The daemon (signed in) lets a new device sign in. Returns the flow object.
    #[zbus(out_args("flow"))]
    async fn start_grant(
        &self,
        options: Checked<Options>,
        #[zbus(header)] hdr: Header<'_>,
        #[zbus(connection)] conn: &Connection,
    ) -> Result<OwnedObjectPath, Error> {
        let options = options.get()?;
        self.start_flow(FlowKind::Grant, requests::grant, conn, &hdr, &options)
            .await
            .map_err(refused("StartGrant"))
    }

    /// The daemon signs in as a new device. Returns the flow object.
    #[zbus(out_args("flow"))]
    async fn start_login(
        &self,
        options: Checked<Options>,
        #[zbus(header)] hdr: Header<'_>,
        #[zbus(connection)] conn: &Connection,
    ) -> Result<OwnedObjectPath, Error> {
        let options = options.get()?;
        self.start_flow(FlowKind::Login, requests::login, conn, &hdr, &options)
            .await
            .map_err(refused("StartLogin"))
    }

    /// A new device of the caller's own, with the user's consent. Returns the flow object.
    #[zbus(out_args("flow"))]
    async fn start_delegation(
        &self,
        options: Checked<Options>,
        #[zbus(header)] hdr: Header<'_>,
        #[zbus(connection)] conn: &Connection,
    ) -> Result<OwnedObjectPath, Error> {
        let options = options.get()?;
        self.start_flow(FlowKind::Delegation, requests::delegation, conn, &hdr, &options)
            .await
            .map_err(refused("StartDelegation"))
    }

    /// The devices this daemon delegated that the homeserver still knows.
    #[zbus(out_args("delegations"))]
    async fn list_delegations(
        &self,
        #[zbus(header)] hdr: Header<'_>,
        #[zbus(connection)] conn: &Connection,
    ) -> Result<Vec<(String, String, String, u64)>, Error> {
        let caller = caller::identify(conn, &hdr).await?;
        self.check_may_use(conn, &caller).await?;
        Ok(self.list_delegations_inner(caller.sandbox_app.as_deref()).await?)
    }

    /// Ends a delegated device's session: `revoked` or `account-page`.
    #[zbus(out_args("how"))]
    async fn revoke_delegation(
        &self,
        device_id: Checked<String>,
        #[zbus(header)] hdr: Header<'_>,
        #[zbus(connection)] conn: &Connection,
    ) -> Result<String, Error> {
        let caller = caller::identify(conn, &hdr).await?;
        self.check_may_use(conn, &caller).await?;
        let device_id = device_id.get()?;
        if !delegated::valid_name(&device_id) {
            return Err(
                LinkError::InvalidArgs("`device_id` must be 1 to 64 printable characters".into()).into()
            );
        }
        match self.revoke_delegation_inner(&device_id, caller.sandbox_app.as_deref()).await {
            Ok(how) => Ok(how.to_owned()),
            Err(LinkError::DeviceNotFound) => Err(Error::Linkd(LinkdError::DeviceNotFound(
                "that device was not delegated by this daemon".into(),
            ))),
            Err(e) => {
                info!(error = %e, "RevokeDelegation failed");
                Err(e.into())
            }
        }
    }

    /// Revokes the daemon's device and tokens and wipes its store and keyring items.
    async fn sign_out(
        &self,
        #[zbus(header)] hdr: Header<'_>,
        #[zbus(connection)] conn: &Connection,
    ) -> Result<(), Error> {
        let caller = caller::identify(conn, &hdr).await?;
        if let Some(app) = &caller.sandbox_app {
            return Err(LinkError::NotAllowed(format!(
                "{app} is a sandboxed app: only the user signs the daemon out"
            ))
            .into());
        }
        if !self.ctx.active().is_empty() {
            return Err(LinkError::Busy("a flow is running; cancel it first".into()).into());
        }
        self.end_delegations().await;
        self.ctx.account.sign_out().await.map_err(|e| {
            warn!(error = %e, "sign-out");
            e.into()
        })
    }

    #[zbus(property(emits_changed_signal = "const"))]
    fn version(&self) -> u32 {
        1
    }

    /// The settled state: a read while the kept session is being restored (the first call of an
    /// activation among them) waits for its outcome, up to [`SETTLE_WAIT`], rather than answer
    /// `Unknown` or `Restoring` and leave the caller to wait for a signal.
    #[zbus(property)]
    async fn session_state(&self) -> u32 {
        let _ = tokio::time::timeout(SETTLE_WAIT, self.ctx.account.settled()).await;
        self.ctx.account.info().state as u32
    }

    #[zbus(property(emits_changed_signal = "invalidates"))]
    async fn user_id(
        &self,
        #[zbus(header)] hdr: Option<Header<'_>>,
        #[zbus(connection)] conn: &Connection,
    ) -> zbus::fdo::Result<String> {
        self.check_reader(conn, hdr).await?;
        Ok(self.ctx.account.info().user_id)
    }

    #[zbus(property(emits_changed_signal = "invalidates"))]
    async fn device_id(
        &self,
        #[zbus(header)] hdr: Option<Header<'_>>,
        #[zbus(connection)] conn: &Connection,
    ) -> zbus::fdo::Result<String> {
        self.check_reader(conn, hdr).await?;
        Ok(self.ctx.account.info().device_id)
    }

    #[zbus(property(emits_changed_signal = "invalidates"))]
    async fn homeserver(
        &self,
        #[zbus(header)] hdr: Option<Header<'_>>,
        #[zbus(connection)] conn: &Connection,
    ) -> zbus::fdo::Result<String> {
        self.check_reader(conn, hdr).await?;
        Ok(self.ctx.account.info().homeserver)
    }

    #[zbus(property)]
    fn capabilities(&self) -> Vec<String> {
        let info = self.ctx.account.info();
        let mut caps = info.capabilities;
        if info.state != SessionState::SignedIn {
            caps.retain(|c| c != capabilities::GRANT && c != capabilities::DELEGATE);
            caps.insert(0, capabilities::LOGIN.to_owned());
        }
        caps
    }
}

/// How long a read of `SessionState` waits for a restore to settle: reading the keyring takes
/// milliseconds; a keyring that waits for the user to unlock it may take any time.
const SETTLE_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

/// Emits `PropertiesChanged` for the session properties whenever the account changes, and asks
/// the engine which login protocols a newly signed-in session's homeserver offers.
pub async fn publish_session(conn: Connection, ctx: Arc<Context>) {
    let mut rx = ctx.account.subscribe();
    let Ok(iface) = conn.object_server().interface::<_, Manager>(matrix_linkd_api::MANAGER_PATH).await else {
        return;
    };
    let mut probed = String::new();
    // A session restored before this task subscribed still gets its protocols probed.
    rx.mark_changed();
    loop {
        if rx.changed().await.is_err() {
            return;
        }
        let info = rx.borrow_and_update().clone();
        if info.state == SessionState::SignedIn && info.device_id != probed {
            probed = info.device_id.clone();
            tokio::spawn(probe_protocols(ctx.clone(), info.device_id));
        }
        let em: &SignalEmitter<'_> = iface.signal_emitter();
        let m = iface.get().await;
        let _ = m.session_state_changed(em).await;
        let _ = m.user_id_invalidate(em).await;
        let _ = m.device_id_invalidate(em).await;
        let _ = m.homeserver_invalidate(em).await;
        let _ = m.capabilities_changed(em).await;
    }
}

/// The homeserver's login protocols (two requests), for `Capabilities`.
async fn probe_protocols(ctx: Arc<Context>, device_id: String) {
    let Ok(client) = ctx.account.client().await else { return };
    let offered = ctx.engine.offered_protocols(&client).await;
    ctx.account.offered(&device_id, offered);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handle_tokens_follow_the_portal_rules() {
        assert!(valid_handle_token("t1") && valid_handle_token(&"a_9".repeat(21)));
        assert!(valid_handle_token(&"x".repeat(64)));
        assert!(!valid_handle_token(&"x".repeat(65)));
        assert!(!valid_handle_token(&"x".repeat(300_000)));
        assert!(!valid_handle_token("") && !valid_handle_token("a/b") && !valid_handle_token("a-b"));
        assert!(!valid_handle_token("é"));
    }
}
