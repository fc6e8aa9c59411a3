//! The `Manager` object: starts flows, signs out, publishes the session.

use std::{collections::HashMap, sync::Arc};

use rand::RngCore;
use tracing::{info, warn};
use zbus::{
    Connection, interface,
    message::Header,
    object_server::SignalEmitter,
    zvariant::{OwnedObjectPath, OwnedValue, Value},
};

use super::{
    Context, FLOW_PATH_PREFIX,
    args::Checked,
    caller::{self, Caller, Owner},
    error::{Error, LinkdError},
    flow::{self, FlowSettings},
};
use crate::{
    account::SessionState,
    desktop,
    error::{LinkError, Result},
    net,
    protocol::{
        DelegationRecords as _, DelegationRequest, FlowKind, GenerationChoice, GrantRequest, LoginRequest,
        LoginTarget, Secret, SecretsSource,
        delegation::{self, Ended},
    },
};

/// The Manager interface, version 1.
#[derive(Clone)]
pub struct Manager {
    pub(super) ctx: Arc<Context>,
}

type Options = HashMap<String, OwnedValue>;

/// Typed access to `a{sv}` options. Unknown keys are ignored (the dictionary is for extension);
/// a known key with the wrong type is `InvalidArgs`.
struct Opts<'a>(&'a Options);

impl Opts<'_> {
    fn wrong(key: &str, ty: &str) -> LinkError {
        LinkError::InvalidArgs(format!("option `{key}` must be of type `{ty}`"))
    }
    fn string(&self, key: &str) -> Result<Option<String>> {
        match self.0.get(key).map(|v| &**v) {
            None => Ok(None),
            Some(Value::Str(s)) => Ok(Some(s.to_string())),
            Some(_) => Err(Self::wrong(key, "s")),
        }
    }
    fn boolean(&self, key: &str, default: bool) -> Result<bool> {
        match self.0.get(key).map(|v| &**v) {
            None => Ok(default),
            Some(Value::Bool(b)) => Ok(*b),
            Some(_) => Err(Self::wrong(key, "b")),
        }
    }
    /// A name shown to people: 1 to 64 printable characters.
    fn name(&self, key: &str) -> Result<Option<String>> {
        match self.string(key)? {
            Some(name) if !delegation::valid_name(&name) => {
                Err(LinkError::InvalidArgs(format!("`{key}` must be 1 to 64 printable characters")))
            }
            name => Ok(name),
        }
    }
    fn bytes(&self, key: &str) -> Result<Option<Vec<u8>>> {
        match self.0.get(key) {
            None => Ok(None),
            Some(v) => {
                let v = v.try_clone().map_err(|_| Self::wrong(key, "ay"))?;
                Vec::<u8>::try_from(v).map(Some).map_err(|_| Self::wrong(key, "ay"))
            }
        }
    }
}

/// The portal's rule for request tokens: letters, digits and `_`, at most 64 of them (the token
/// goes into an object path and every log line of the flow).
const MAX_HANDLE_TOKEN: usize = 64;

fn valid_handle_token(t: &str) -> bool {
    (1..=MAX_HANDLE_TOKEN).contains(&t.len()) && t.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'_')
}

/// What every `Start*` has in common.
struct Common {
    caller: Caller,
    path: OwnedObjectPath,
    detached: bool,
    qr_code: Option<Secret<Vec<u8>>>,
}

impl Manager {
    async fn common(&self, conn: &Connection, hdr: &Header<'_>, opts: &Opts<'_>) -> Result<Common> {
        let caller = caller::identify(conn, hdr).await?;
        caller::check_allowed(&caller, &self.ctx.config.security.allowed_sandboxed_apps)?;
        let detached = opts.boolean("detached", false)?;
        if detached && caller.sandbox_app.is_some() {
            return Err(LinkError::NotAllowed("sandboxed callers cannot start detached flows".into()));
        }
        let token = match opts.string("handle_token")? {
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
        let sender = caller.unique_name.trim_start_matches(':').replace('.', "_");
        let path = OwnedObjectPath::try_from(format!("{FLOW_PATH_PREFIX}/{sender}/{token}"))
            .map_err(|_| LinkError::InvalidArgs("cannot build a flow path from `handle_token`".into()))?;
        let qr_code = opts.bytes("qr_code")?.map(Secret);
        if qr_code.as_ref().is_some_and(|q| q.0.is_empty() || q.0.len() > 4096) {
            return Err(LinkError::InvalidQrCode("the QR code is empty or too long".into()));
        }
        Ok(Common { caller, path, detached, qr_code })
    }

    fn settings(
        &self,
        kind: FlowKind,
        common: &Common,
        notify: bool,
        open_uri: bool,
    ) -> Result<FlowSettings> {
        let timeouts = &self.ctx.config.timeouts;
        let owner = if common.detached {
            let uid = common
                .caller
                .uid
                .ok_or_else(|| LinkError::NotAllowed("the bus does not know the caller's UID".into()))?;
            Owner::Uid { uid, until: flow::detached_until(timeouts.detached().min(timeouts.flow())) }
        } else {
            Owner::Name(common.caller.unique_name.clone())
        };
        Ok(FlowSettings {
            kind,
            owner,
            starter: common.caller.unique_name.clone(),
            detached: common.detached,
            notify,
            open_uri,
            expires_at_us: flow::expires_at_us(timeouts.flow()),
            client_name: None,
        })
    }

    /// The `protocol` option, else the config's choice.
    fn generation(&self, opts: &Opts<'_>) -> Result<GenerationChoice> {
        match opts.string("protocol")? {
            Some(s) => s.parse(),
            None => Ok(self.ctx.config.protocol),
        }
    }

    async fn start_grant_inner(
        &self,
        conn: &Connection,
        hdr: &Header<'_>,
        options: &Options,
    ) -> Result<OwnedObjectPath> {
        let opts = Opts(options);
        let common = self.common(conn, hdr, &opts).await?;
        let notify = opts.boolean("notify", true)?;
        let open_uri = opts.boolean("open_uri", true)? && self.ctx.config.desktop.open_uri;
        let settings = self.settings(FlowKind::Grant, &common, notify, open_uri)?;
        self.ctx.account.settled().await;
        let client = self.ctx.account.client().await?;
        let generation = self.generation(&opts)?;
        let _slot = self.ctx.reserve(&common.path, &common.caller.unique_name, FlowKind::Grant)?;
        let timeouts = &self.ctx.config.timeouts;
        let secrets: Arc<dyn SecretsSource> = self.ctx.account.clone();
        let handle = self
            .ctx
            .engine
            .start_grant(
                client,
                secrets,
                GrantRequest {
                    generation,
                    qr_code: common.qr_code,
                    timeout: timeouts.flow(),
                    device_creation_timeout: timeouts.device_creation(),
                },
            )
            .await?;
        flow::start(self.ctx.clone(), conn, common.path.clone(), settings, handle)
            .await
            .map_err(|e| LinkError::Failed(format!("cannot export the flow: {e}")))?;
        _slot.keep();
        info!(scanned = options.contains_key("qr_code"), "grant flow started");
        Ok(common.path)
    }

    async fn start_delegation_inner(
        &self,
        conn: &Connection,
        hdr: &Header<'_>,
        options: &Options,
    ) -> Result<OwnedObjectPath> {
        let opts = Opts(options);
        let common = self.common(conn, hdr, &opts).await?;
        let notify = opts.boolean("notify", true)?;
        let open_uri = opts.boolean("open_uri", true)? && self.ctx.config.desktop.open_uri;
        let share_secrets = opts.boolean("share_secrets", false)?;
        // The user must see who asks: an allow-listed sandboxed app is named by its app ID.
        let client_name = match &common.caller.sandbox_app {
            Some(app) => app.clone(),
            None => opts.name("client_name")?.unwrap_or_else(|| "Matrix client".to_owned()),
        };
        let device_display_name = opts.name("device_display_name")?.unwrap_or_else(|| client_name.clone());
        let mut settings = self.settings(FlowKind::Delegation, &common, notify, open_uri)?;
        settings.client_name = Some(client_name.clone());
        self.ctx.account.settled().await;
        let client = self.ctx.account.client().await?;
        let _slot = self.ctx.reserve(&common.path, &common.caller.unique_name, FlowKind::Delegation)?;
        let timeouts = &self.ctx.config.timeouts;
        let handle = self
            .ctx
            .engine
            .start_delegation(
                client,
                self.ctx.account.clone(),
                self.ctx.account.clone(),
                DelegationRequest {
                    client_name,
                    device_display_name,
                    share_secrets,
                    timeout: timeouts.flow(),
                    keys_timeout: timeouts.delegation_keys(),
                },
            )
            .await?;
        flow::start(self.ctx.clone(), conn, common.path.clone(), settings, handle)
            .await
            .map_err(|e| LinkError::Failed(format!("cannot export the flow: {e}")))?;
        _slot.keep();
        info!(share_secrets, "delegation flow started");
        Ok(common.path)
    }

    /// The delegations the homeserver still knows; the others are forgotten on the way.
    async fn list_delegations_inner(&self) -> Result<Vec<(String, String, String, u64)>> {
        self.ctx.account.settled().await;
        let client = self.ctx.account.client().await?;
        let mut out = Vec::new();
        for record in self.ctx.account.delegations().await? {
            if delegation::device_known(&client, &record.device_id).await == Some(false) {
                info!("a delegated device is gone from the homeserver; forgetting it");
                self.ctx.account.forget(&record.device_id).await?;
                continue;
            }
            out.push((record.device_id, record.client_name, record.device_display_name, record.created));
        }
        Ok(out)
    }

    async fn revoke_delegation_inner(&self, device_id: &str) -> Result<&'static str> {
        self.ctx.account.settled().await;
        let client = self.ctx.account.client().await?;
        let record = self.ctx.account.delegation(device_id).await?;
        let http = net::client();
        let allow_http = self.ctx.config.security.allow_insecure_http;
        let ended = delegation::end_session(&http, allow_http, &client, &record, false)
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
        let http = net::client();
        let allow_http = self.ctx.config.security.allow_insecure_http;
        for record in records {
            match delegation::end_session(&http, allow_http, &client, &record, true).await {
                Ok(Some(_)) => info!("delegated session revoked before signing out"),
                _ => info!("a delegated session stays signed in (no valid token of it is left)"),
            }
        }
    }

    async fn start_login_inner(
        &self,
        conn: &Connection,
        hdr: &Header<'_>,
        options: &Options,
    ) -> Result<OwnedObjectPath> {
        let opts = Opts(options);
        let common = self.common(conn, hdr, &opts).await?;
        let homeserver = match opts.string("homeserver")? {
            Some(s) => Some(
                url::Url::parse(&s)
                    .ok()
                    .filter(|u| matches!(u.scheme(), "http" | "https"))
                    .ok_or_else(|| LinkError::InvalidArgs("`homeserver` must be an http(s) URL".into()))?,
            ),
            None => self.ctx.config.homeserver.clone(),
        };
        let device_display_name = opts
            .string("device_display_name")?
            .unwrap_or_else(|| self.ctx.config.device_display_name.clone());
        let settings = self.settings(FlowKind::Login, &common, false, false)?;
        let generation = self.generation(&opts)?;
        // Busy first: while grants run, the answer is that a login must wait, not who is signed in.
        let _slot = self.ctx.reserve(&common.path, &common.caller.unique_name, FlowKind::Login)?;
        self.ctx.account.settled().await;
        if self.ctx.account.info().state == SessionState::SignedIn {
            return Err(LinkError::AlreadySignedIn);
        }
        let target: Arc<dyn LoginTarget> = self.ctx.account.clone();
        let handle = self
            .ctx
            .engine
            .start_login(
                target,
                LoginRequest {
                    generation,
                    qr_code: common.qr_code,
                    homeserver,
                    device_display_name,
                    timeout: self.ctx.config.timeouts.flow(),
                },
            )
            .await?;
        flow::start(self.ctx.clone(), conn, common.path.clone(), settings, handle)
            .await
            .map_err(|e| LinkError::Failed(format!("cannot export the flow: {e}")))?;
        _slot.keep();
        info!(scanned = options.contains_key("qr_code"), "login flow started");
        Ok(common.path)
    }
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
        self.start_grant_inner(conn, &hdr, &options).await.map_err(refused("StartGrant"))
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
        self.start_login_inner(conn, &hdr, &options).await.map_err(refused("StartLogin"))
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
        self.start_delegation_inner(conn, &hdr, &options).await.map_err(refused("StartDelegation"))
    }

    /// The devices this daemon delegated that the homeserver still knows.
    #[zbus(out_args("delegations"))]
    async fn list_delegations(
        &self,
        #[zbus(header)] hdr: Header<'_>,
        #[zbus(connection)] conn: &Connection,
    ) -> Result<Vec<(String, String, String, u64)>, Error> {
        let caller = caller::identify(conn, &hdr).await?;
        caller::check_allowed(&caller, &self.ctx.config.security.allowed_sandboxed_apps)?;
        Ok(self.list_delegations_inner().await?)
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
        caller::check_allowed(&caller, &self.ctx.config.security.allowed_sandboxed_apps)?;
        let device_id = device_id.get()?;
        if !delegation::valid_name(&device_id) {
            return Err(
                LinkError::InvalidArgs("`device_id` must be 1 to 64 printable characters".into()).into()
            );
        }
        match self.revoke_delegation_inner(&device_id).await {
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
        caller::check_allowed(&caller, &self.ctx.config.security.allowed_sandboxed_apps)?;
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

    #[zbus(property)]
    fn session_state(&self) -> u32 {
        self.ctx.account.info().state as u32
    }

    #[zbus(property)]
    fn user_id(&self) -> String {
        self.ctx.account.info().user_id
    }

    #[zbus(property)]
    fn device_id(&self) -> String {
        self.ctx.account.info().device_id
    }

    #[zbus(property)]
    fn homeserver(&self) -> String {
        self.ctx.account.info().homeserver
    }

    #[zbus(property)]
    fn capabilities(&self) -> Vec<String> {
        let info = self.ctx.account.info();
        let mut caps = info.capabilities;
        if info.state != SessionState::SignedIn {
            caps.retain(|c| c != "grant" && c != "delegate");
            caps.insert(0, "login".to_owned());
        }
        caps
    }
}

/// Emits `PropertiesChanged` for the session properties whenever the account changes.
pub async fn publish_session(conn: Connection, ctx: Arc<Context>) {
    let mut rx = ctx.account.subscribe();
    let Ok(iface) = conn.object_server().interface::<_, Manager>(super::MANAGER_PATH).await else { return };
    loop {
        if rx.changed().await.is_err() {
            return;
        }
        let em: &SignalEmitter<'_> = iface.signal_emitter();
        let m = iface.get().await;
        let _ = m.session_state_changed(em).await;
        let _ = m.user_id_changed(em).await;
        let _ = m.device_id_changed(em).await;
        let _ = m.homeserver_changed(em).await;
        let _ = m.capabilities_changed(em).await;
    }
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
