//! The real stack on loopback (stack/start.sh): Synapse + the OAuth server. Helpers to sign in
//! accounts through the real device grant, play the user on the consent pages, and check tokens.

use std::{
    path::PathBuf,
    process::{Command, Stdio},
};

use anyhow::{Context as _, Result, anyhow, bail, ensure};
use matrix_sdk::{
    Client, SessionMeta, SessionTokens,
    authentication::oauth::{ClientId, OAuthSession, UserSession},
    reqwest,
    store::RoomLoadSettings,
};
use serde_json::Value;
use url::Url;

use crate::workspace_root;

/// A running stack, as described by `.stack/<name>/stack.env`.
#[derive(Debug, Clone)]
pub struct Stack {
    pub name: String,
    pub synapse: Url,
    pub oauth: Url,
    /// Synapse's server name (`127.0.0.1:<port>`, or e.g. `localhost` for a stack like many real
    /// deployments).
    pub server_name: String,
    /// Whether the server name's `.well-known/matrix/client` leads to Synapse.
    pub serves_well_known: bool,
    pub dir: PathBuf,
    /// Started by this handle (and stopped when it is dropped).
    owned: bool,
}

/// Tokens of a device signed in through the device grant.
pub struct DeviceTokens {
    pub client_id: String,
    pub access_token: String,
    pub refresh_token: String,
    pub user_id: String,
    pub device_id: String,
}

fn http() -> reqwest::Client {
    reqwest::Client::builder().timeout(std::time::Duration::from_secs(20)).build().expect("http client")
}

/// An HTTP client for matrix-sdk that asks for the identity encoding, as the daemon does: a
/// compressing proxy leaves its answers (and their ETags) as the server made them.
pub fn identity_http() -> reqwest::Client {
    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert(reqwest::header::ACCEPT_ENCODING, reqwest::header::HeaderValue::from_static("identity"));
    reqwest::Client::builder().default_headers(headers).build().expect("http client")
}

fn form(pairs: &[(&str, &str)]) -> String {
    let mut s = url::form_urlencoded::Serializer::new(String::new());
    for (k, v) in pairs {
        s.append_pair(k, v);
    }
    s.finish()
}

async fn post_form(url: &str, pairs: &[(&str, &str)]) -> Result<(u16, Value)> {
    let r = http()
        .post(url)
        .header("Content-Type", "application/x-www-form-urlencoded")
        .body(form(pairs))
        .send()
        .await?;
    let status = r.status().as_u16();
    Ok((status, serde_json::from_slice(&r.bytes().await?).unwrap_or(Value::Null)))
}

impl Stack {
    /// The stack that `make test` starts (`main`; `LINKD_STACK` names another running one).
    pub fn main() -> Result<Self> {
        Self::load(&std::env::var("LINKD_STACK").unwrap_or_else(|_| "main".to_owned()))
    }

    pub fn load(name: &str) -> Result<Self> {
        let dir = workspace_root().join(".stack").join(name);
        let env = std::fs::read_to_string(dir.join("stack.env")).with_context(|| {
            format!("the `{name}` stack is not running: start it with `stack/start.sh` (make test does)")
        })?;
        let get = |key: &str| {
            env.lines()
                .find_map(|l| l.strip_prefix(&format!("{key}=")))
                .map(str::to_owned)
                .ok_or_else(|| anyhow!("{key} missing from stack.env"))
        };
        Ok(Self {
            name: name.to_owned(),
            synapse: get("SYNAPSE_URL")?.parse()?,
            oauth: get("OAUTH_URL")?.parse()?,
            server_name: get("SERVER_NAME")?,
            serves_well_known: get("SERVE_WELLKNOWN")? == "true",
            dir,
            owned: false,
        })
    }

    /// Starts a private stack instance (own ports, own database) for tests that break things.
    pub fn start(name: &str, synapse_port: u16, oauth_port: u16, env: &[(&str, &str)]) -> Result<Self> {
        let mut cmd = Command::new(workspace_root().join("stack/start.sh"));
        cmd.env("STACK_NAME", name)
            .env("SYNAPSE_PORT", synapse_port.to_string())
            .env("OAUTH_PORT", oauth_port.to_string())
            .stdout(Stdio::null());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let st = cmd.status()?;
        ensure!(st.success(), "stack/start.sh for `{name}` failed");
        let mut s = Self::load(name)?;
        s.owned = true;
        Ok(s)
    }

    /// Stops this instance's Synapse only (to break a flow midway).
    pub fn kill_synapse(&self) -> Result<()> {
        let pid = std::fs::read_to_string(self.dir.join("synapse.pid"))?;
        Command::new("kill").arg(pid.trim()).status()?;
        Ok(())
    }

    pub fn stop(&self) {
        let _ = Command::new(workspace_root().join("stack/stop.sh"))
            .env("STACK_NAME", &self.name)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }

    /// A fresh localpart: tests never share an account.
    pub fn new_login(prefix: &str) -> String {
        use rand::RngCore;
        let mut b = [0u8; 4];
        rand::rng().fill_bytes(&mut b);
        format!("{prefix}{}", hex::encode(b))
    }

    pub fn user_id(&self, login: &str) -> String {
        format!("@{login}:{}", self.server_name)
    }

    /// How the daemon finds this stack's Synapse from its server name (a login's
    /// `homeserver_found`).
    pub fn found_by_server_name(&self) -> &'static str {
        use crate::api::results::homeserver_found as found;
        if self.serves_well_known { found::WELL_KNOWN } else { found::RENDEZVOUS_SERVER }
    }

    /// The user in the browser: confirms `user_code`, logs in as `login`, consents (or denies).
    /// Plays the user on the consent pages for the user code in `verification_uri` (as the
    /// browser the other device opened would).
    pub fn approve_uri(&self, verification_uri: &str, login: &str, deny: bool) -> Result<()> {
        let user_code =
            user_code_of(verification_uri).ok_or_else(|| anyhow!("no user code in the verification URI"))?;
        self.approve(&user_code, login, deny)
    }

    pub fn approve(&self, user_code: &str, login: &str, deny: bool) -> Result<()> {
        let mut cmd = Command::new(workspace_root().join("stack/approve.sh"));
        cmd.args([self.oauth.as_str(), user_code, login]);
        if deny {
            cmd.arg("deny");
        }
        let out = cmd.output()?;
        ensure!(out.status.success(), "approve.sh failed: {}", String::from_utf8_lossy(&out.stderr));
        Ok(())
    }

    async fn metadata(&self) -> Result<Value> {
        let url = self.oauth.join(".well-known/openid-configuration")?;
        Ok(serde_json::from_slice(&http().get(url).send().await?.bytes().await?)?)
    }

    /// Signs a device in through the real device grant, playing the user on the consent pages.
    pub async fn device_login(&self, login: &str, device_id: &str) -> Result<DeviceTokens> {
        let meta = self.metadata().await?;
        let endpoint = |k: &str| meta[k].as_str().map(str::to_owned).ok_or_else(|| anyhow!("no {k}"));
        let registration = serde_json::json!({
            "client_uri": "https://example.org/",
            "application_type": "native",
            "grant_types": ["urn:ietf:params:oauth:grant-type:device_code", "refresh_token"],
            "response_types": [],
            "token_endpoint_auth_method": "none",
        });
        let r = http()
            .post(endpoint("registration_endpoint")?)
            .header("Content-Type", "application/json")
            .body(registration.to_string())
            .send()
            .await?;
        let reg: Value = serde_json::from_slice(&r.bytes().await?)?;
        let client_id = reg["client_id"].as_str().ok_or_else(|| anyhow!("registration: {reg}"))?.to_owned();
        let scope = format!("urn:matrix:client:api:* urn:matrix:client:device:{device_id}");
        let (_, da) = post_form(
            &endpoint("device_authorization_endpoint")?,
            &[("client_id", &client_id), ("scope", &scope)],
        )
        .await?;
        let user_code = da["user_code"].as_str().ok_or_else(|| anyhow!("device authorization: {da}"))?;
        self.approve(user_code, login, false)?;
        let device_code = da["device_code"].as_str().unwrap_or_default();
        let (status, t) = post_form(
            &endpoint("token_endpoint")?,
            &[
                ("grant_type", "urn:ietf:params:oauth:grant-type:device_code"),
                ("client_id", &client_id),
                ("device_code", device_code),
            ],
        )
        .await?;
        if status != 200 {
            bail!("token endpoint answered {status}: {}", t["error"]);
        }
        Ok(DeviceTokens {
            client_id,
            access_token: t["access_token"].as_str().unwrap_or_default().to_owned(),
            refresh_token: t["refresh_token"].as_str().unwrap_or_default().to_owned(),
            user_id: self.user_id(login),
            device_id: device_id.to_owned(),
        })
    }

    /// `whoami` with a token: (user, device).
    pub async fn whoami(&self, access_token: &str) -> Result<(String, String)> {
        let r = http()
            .get(self.synapse.join("_matrix/client/v3/account/whoami")?)
            .header("Authorization", format!("Bearer {access_token}"))
            .send()
            .await?;
        let status = r.status();
        let v: Value = serde_json::from_slice(&r.bytes().await?)?;
        ensure!(status.is_success(), "whoami: {status} {}", v["errcode"]);
        Ok((
            v["user_id"].as_str().unwrap_or_default().to_owned(),
            v["device_id"].as_str().unwrap_or_default().to_owned(),
        ))
    }

    /// A plain signed-in matrix-sdk device of `login`, without cross-signing secrets: a bystander
    /// that reads what the server publishes.
    pub async fn observer(&self, login: &str) -> Result<Client> {
        let t = self.device_login(login, &format!("OBS{}", &Self::new_login("")[..6].to_uppercase())).await?;
        self.client_from(t).await
    }

    /// A matrix-sdk client restored from tokens of the device grant.
    async fn client_from(&self, t: DeviceTokens) -> Result<Client> {
        self.client_over(t, None).await
    }

    /// [`Self::client_from`] over a given HTTP client (matrix-sdk's own otherwise).
    async fn client_over(&self, t: DeviceTokens, http: Option<reqwest::Client>) -> Result<Client> {
        let mut builder = Client::builder().homeserver_url(self.synapse.clone()).handle_refresh_tokens();
        if let Some(http) = http {
            builder = builder.http_client(http);
        }
        let client = builder.build().await?;
        let meta = SessionMeta { user_id: t.user_id.parse()?, device_id: t.device_id.as_str().into() };
        let tokens = SessionTokens { access_token: t.access_token, refresh_token: Some(t.refresh_token) };
        let session =
            OAuthSession { client_id: ClientId::new(t.client_id), user: UserSession { meta, tokens } };
        client.oauth().restore_session(session, RoomLoadSettings::default()).await?;
        Ok(client)
    }

    /// A signed-in matrix-sdk device ("the phone") of a fresh account, with cross-signing and
    /// key backup set up by the client itself.
    pub async fn existing_device(&self, login: &str) -> Result<Client> {
        self.existing_device_over(login, None).await
    }

    /// [`Self::existing_device`] over a given HTTP client: behind a compressing proxy, one that
    /// asks for the identity encoding as the daemon does ([`identity_http`]) gets the rendezvous
    /// ETags as the homeserver made them, where matrix-sdk's own (gzip) gets them weakened.
    pub async fn existing_device_over(&self, login: &str, http: Option<reqwest::Client>) -> Result<Client> {
        let t =
            self.device_login(login, &format!("PHONE{}", &Self::new_login("")[..6].to_uppercase())).await?;
        let client = self.client_over(t, http).await?;
        client.encryption().bootstrap_cross_signing(None).await.context("bootstrap cross-signing")?;
        client.encryption().recovery().enable().await.context("enable key backup and recovery")?;
        Ok(client)
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        if self.owned {
            self.stop();
        }
    }
}

/// The `user_code` query parameter of a verification URI.
pub fn user_code_of(verification_uri: &str) -> Option<String> {
    Url::parse(verification_uri)
        .ok()?
        .query_pairs()
        .find(|(k, _)| k == "user_code")
        .map(|(_, v)| v.into_owned())
}

/// A private session whose daemon points at `stack`.
pub async fn daemon_session(stack: &Stack, flow_timeout: u64) -> Result<crate::Session> {
    let mut session = crate::Session::start().await?;
    session.write_config(&format!(
        "homeserver = \"{}\"\nlog_level = \"debug\"\n[timeouts]\nflow = {flow_timeout}\ndevice_creation = 30\n[desktop]\nopen_uri = false\n{}",
        stack.synapse,
        crate::LOCAL_TEST_SETUP
    ))?;
    session.start_daemon(&[]).await?;
    session
        .wait_session_state(crate::api::SessionState::SignedOut, std::time::Duration::from_secs(20))
        .await?;
    Ok(session)
}

/// The daemon's access token, as kept in the Secret Service (to prove it works on Synapse).
pub fn daemon_access_token(session: &crate::Session) -> Result<String> {
    let v = session.kept_session().ok_or_else(|| anyhow!("no session in the keyring"))?;
    Ok(v["access_token"].as_str().unwrap_or_default().to_owned())
}

/// Signs the daemon in (it shows the QR) with `phone`, a matrix-sdk existing device of `login`.
pub async fn sign_in_daemon(
    stack: &Stack,
    session: &crate::Session,
    phone: &Client,
    login: &str,
) -> Result<matrix_linkd_client::SignedIn> {
    use matrix_linkd_client::{LoginOptions, State};
    let linkd = session.client().await?;
    let mut flow = linkd
        .start_login(LoginOptions { homeserver: Some(stack.synapse.to_string()), ..Default::default() })
        .await?;
    crate::wait_state(&mut flow, State::QrReady).await?;
    let mut peer =
        crate::peers::grant_scanning(phone.clone(), flow.qr_code(crate::api::qr_formats::RAW).await?);
    let code = peer.shown_code().await?;
    crate::wait_state(&mut flow, State::WaitingForCheckCode).await?;
    flow.check_code(code).await?;
    let uri = peer.verification_uri().await?;
    stack.approve_uri(&uri, login, false)?;
    let signed_in = tokio::time::timeout(std::time::Duration::from_secs(90), flow.result()).await??;
    peer.finish().await?.map_err(|e| anyhow!("phone: {e}"))?;
    Ok(signed_in)
}

/// `observer` (another device of the same user) fetches `device_id` from the server.
async fn fetched_device(
    observer: &Client,
    device_id: &str,
) -> Result<matrix_sdk::encryption::identities::Device> {
    let user = observer.user_id().ok_or_else(|| anyhow!("observer not signed in"))?.to_owned();
    observer.encryption().request_user_identity(&user).await?;
    observer
        .encryption()
        .get_device(&user, device_id.into())
        .await?
        .ok_or_else(|| anyhow!("{device_id} is unknown to the other device"))
}

/// The server publishes `device_id` as signed by its owner's self-signing key.
pub async fn assert_cross_signed(observer: &Client, device_id: &str) -> Result<()> {
    let device = fetched_device(observer, device_id).await?;
    ensure!(device.is_cross_signed_by_owner(), "{device_id} is not cross-signed by its owner");
    Ok(())
}

/// `observer` (another device of the same user) sees `device_id` as cross-signed and verified.
pub async fn assert_seen_verified(observer: &Client, device_id: &str) -> Result<()> {
    let device = fetched_device(observer, device_id).await?;
    ensure!(device.is_cross_signed_by_owner(), "{device_id} is not cross-signed by its owner");
    ensure!(device.is_verified(), "{device_id} is not verified in the other device's eyes");
    Ok(())
}

/// A daemon signed in (by QR, from `phone`) to a fresh account of `login` on the main stack.
pub struct SignedInDaemon {
    pub stack: Stack,
    pub login: String,
    pub phone: Client,
    pub session: crate::Session,
}

pub async fn signed_in_daemon(login_prefix: &str) -> Result<SignedInDaemon> {
    let stack = Stack::main()?;
    let login = Stack::new_login(login_prefix);
    let phone = stack.existing_device(&login).await?;
    let session = daemon_session(&stack, 120).await?;
    sign_in_daemon(&stack, &session, &phone, &login).await?;
    Ok(SignedInDaemon { stack, login, phone, session })
}

/// The signed-out daemon behind `linkd` starts a login on `stack`, showing a QR code of the
/// `protocol` generation (`2024`, `latest`); returns it at `QrReady`.
pub async fn login_showing_qr(
    linkd: &matrix_linkd_client::Linkd,
    stack: &Stack,
    protocol: &str,
) -> Result<matrix_linkd_client::Flow> {
    let mut flow = linkd
        .start_login(matrix_linkd_client::LoginOptions {
            homeserver: Some(stack.synapse.to_string()),
            protocol: Some(protocol.into()),
            ..Default::default()
        })
        .await?;
    crate::wait_state(&mut flow, matrix_linkd_client::State::QrReady).await?;
    Ok(flow)
}

/// A grant at consent: the user approves on D-Bus, then on the OAuth page; waits for the end.
pub async fn consent_and_finish(
    stack: &Stack,
    mut flow: matrix_linkd_client::Flow,
    login: &str,
) -> Result<matrix_linkd_client::SignedIn> {
    crate::wait_state(&mut flow, matrix_linkd_client::State::WaitingForApproval).await?;
    let uri = flow.verification_uri().await?;
    flow.approve().await?;
    stack.approve_uri(&uri, login, false)?;
    Ok(tokio::time::timeout(std::time::Duration::from_secs(90), flow.result()).await??)
}
