//! From a `Start*` call's `a{sv}` options to the engine's request: one parser per flow kind, on
//! one typed reader of the options. What every kind shares (the caller, `handle_token`,
//! `detached`, `qr_code`) is read by `Manager::start_flow`.

use matrix_linkd_api::options as key;

pub use super::args::Options;
use super::{args::OptionValue, caller::Caller};
use crate::{
    config::Config,
    error::{LinkError, Result},
    protocol::{
        DelegationRequest, FlowRequest, GenerationChoice, GrantRequest, LoginRequest, Secret, delegated,
    },
};

/// Typed access to `a{sv}` options. Unknown keys are ignored (the dictionary is for extension);
/// a known key with the wrong type is `InvalidArgs`.
pub struct Opts<'a>(pub &'a Options);

impl Opts<'_> {
    fn wrong(key: &str, ty: &str) -> LinkError {
        LinkError::InvalidArgs(format!("option `{key}` must be of type `{ty}`"))
    }
    pub fn string(&self, key: &str) -> Result<Option<String>> {
        match self.0.get(key) {
            None => Ok(None),
            Some(OptionValue::Str(s)) => Ok(Some(s.clone())),
            Some(_) => Err(Self::wrong(key, "s")),
        }
    }
    pub fn boolean(&self, key: &str, default: bool) -> Result<bool> {
        match self.0.get(key) {
            None => Ok(default),
            Some(OptionValue::Bool(b)) => Ok(*b),
            Some(_) => Err(Self::wrong(key, "b")),
        }
    }
    /// A name shown to people: 1 to 64 printable characters.
    fn name(&self, key: &str) -> Result<Option<String>> {
        match self.string(key)? {
            Some(name) if !delegated::valid_name(&name) => {
                Err(LinkError::InvalidArgs(format!("`{key}` must be 1 to 64 printable characters")))
            }
            name => Ok(name),
        }
    }
    fn bytes(&self, key: &str) -> Result<Option<Vec<u8>>> {
        match self.0.get(key) {
            None => Ok(None),
            Some(OptionValue::Bytes(b)) => Ok(Some(b.clone())),
            Some(_) => Err(Self::wrong(key, "ay")),
        }
    }
    /// `qr_code`: the bytes the caller scanned, at most a QR code's worth.
    pub fn qr_code(&self) -> Result<Option<Secret<Vec<u8>>>> {
        let qr_code = self.bytes(key::QR_CODE)?.map(Secret);
        if qr_code.as_ref().is_some_and(|q| q.0.is_empty() || q.0.len() > super::args::limits::BYTES) {
            return Err(LinkError::InvalidQrCode("the QR code is empty or too long".into()));
        }
        Ok(qr_code)
    }
    /// The `protocol` option, else the config's choice.
    fn generation(&self, config: &Config) -> Result<GenerationChoice> {
        match self.string(key::PROTOCOL)? {
            Some(s) => s.parse(),
            None => Ok(config.protocol),
        }
    }
}

/// What a kind's parser makes of the options: the engine's request and how the D-Bus layer
/// presents the flow.
pub struct Parsed {
    pub request: FlowRequest,
    /// `notify`: consent and the end through desktop notifications (kinds that ask the user).
    pub notify: bool,
    /// `open_uri`: the consent page opened on `Approve` (kinds that ask the user).
    pub open_uri: bool,
    /// The program a delegation is for, for the approval notification.
    pub client_name: Option<String>,
}

/// What every parser gets besides the options.
pub struct Context<'a> {
    pub config: &'a Config,
    pub caller: &'a Caller,
    pub qr_code: Option<Secret<Vec<u8>>>,
}

/// `notify` and `open_uri` (the config may forbid opening pages). A sandboxed app cannot keep the
/// user from seeing what it does: `notify: false` is refused.
fn presentation(opts: &Opts<'_>, cx: &Context<'_>) -> Result<(bool, bool)> {
    let notify = opts.boolean(key::NOTIFY, true)?;
    if !notify && cx.caller.sandbox_app.is_some() {
        return Err(LinkError::NotAllowed("a sandboxed app cannot turn the notifications off".into()));
    }
    let open_uri = opts.boolean(key::OPEN_URI, true)? && cx.config.desktop.open_uri;
    Ok((notify, open_uri))
}

/// `StartGrant`: `protocol`, `qr_code`, `notify`, `open_uri`.
pub fn grant(opts: &Opts<'_>, cx: Context<'_>) -> Result<Parsed> {
    let (notify, open_uri) = presentation(opts, &cx)?;
    let timeouts = &cx.config.timeouts;
    let request = GrantRequest {
        generation: opts.generation(cx.config)?,
        qr_code: cx.qr_code,
        timeout: timeouts.flow(),
        device_creation_timeout: timeouts.device_creation(),
    };
    Ok(Parsed { request: FlowRequest::Grant(request), notify, open_uri, client_name: None })
}

/// `StartLogin`: `protocol`, `qr_code`, `homeserver`, `device_display_name`. The consent is given
/// on the other device: nothing is notified or opened here.
pub fn login(opts: &Opts<'_>, cx: Context<'_>) -> Result<Parsed> {
    let homeserver = match opts.string(key::HOMESERVER)? {
        Some(s) => Some(
            url::Url::parse(&s)
                .ok()
                .filter(|u| matches!(u.scheme(), "http" | "https"))
                .ok_or_else(|| LinkError::InvalidArgs("`homeserver` must be an http(s) URL".into()))?,
        ),
        None => cx.config.homeserver.clone(),
    };
    let device_display_name =
        opts.name(key::DEVICE_DISPLAY_NAME)?.unwrap_or_else(|| cx.config.device_display_name.clone());
    let request = LoginRequest {
        generation: opts.generation(cx.config)?,
        qr_code: cx.qr_code,
        homeserver,
        device_display_name,
        timeout: cx.config.timeouts.flow(),
    };
    Ok(Parsed { request: FlowRequest::Login(request), notify: false, open_uri: false, client_name: None })
}

/// `StartDelegation`: `client_name`, `device_display_name`, `share_secrets`, `notify`,
/// `open_uri`.
pub fn delegation(opts: &Opts<'_>, cx: Context<'_>) -> Result<Parsed> {
    let (notify, open_uri) = presentation(opts, &cx)?;
    let share_secrets = opts.boolean(key::SHARE_SECRETS, false)?;
    // The user must see who asks: an allow-listed sandboxed app is named by its app ID.
    let client_name = match &cx.caller.sandbox_app {
        Some(app) => app.clone(),
        None => opts.name(key::CLIENT_NAME)?.unwrap_or_else(|| "Matrix client".to_owned()),
    };
    let device_display_name = opts.name(key::DEVICE_DISPLAY_NAME)?.unwrap_or_else(|| client_name.clone());
    let timeouts = &cx.config.timeouts;
    let request = DelegationRequest {
        client_name: client_name.clone(),
        device_display_name,
        share_secrets,
        app_id: cx.caller.sandbox_app.clone(),
        timeout: timeouts.flow(),
        keys_timeout: timeouts.delegation_keys(),
    };
    Ok(Parsed { request: FlowRequest::Delegation(request), notify, open_uri, client_name: Some(client_name) })
}
