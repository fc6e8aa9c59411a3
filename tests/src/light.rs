//! Delegation on the real stack: the signed-in daemon provisions a device for a "light client"
//! (`StartDelegation`, `Flow.TakeSession`), and that client runs from the session it was handed:
//! matrix-sdk in this process (`DelegatedSession::into_client`) or matrix-js-sdk 43 in Node
//! (`stack/node/js-light-client.mjs`). Also what the account's other device (the "phone") does
//! around it: an encrypted room with a message before and one after the delegation, and checks
//! of the new device from outside.

use std::{
    collections::HashMap,
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, anyhow, bail, ensure};
use matrix_linkd_client::{DelegateOptions, DelegatedSession, Flow, Linkd, SessionState, State};
use matrix_sdk::{
    Client,
    config::SyncSettings,
    room::MessagesOptions,
    ruma::{
        OwnedRoomId, RoomId,
        api::client::room::create_room,
        events::{
            InitialStateEvent,
            room::{encryption::RoomEncryptionEventContent, message::RoomMessageEventContent},
        },
    },
};
use serde_json::Value;

use crate::{Session, stack::Stack, wait_state, workspace_root};

/// Delegation options for tests: no notification and nothing opened; the test plays the user.
pub fn quiet_delegation(share_secrets: bool) -> DelegateOptions {
    DelegateOptions {
        client_name: "Test light client".into(),
        device_display_name: Some("Light client device".into()),
        share_secrets,
        notify: Some(false),
        open_uri: Some(false),
        ..Default::default()
    }
}

/// Daemon settings for the delegation tests.
pub struct DaemonSettings {
    /// `timeouts.delegation_keys`, seconds.
    pub delegation_keys: u64,
    /// `desktop.open_uri` (the account page of `RevokeDelegation` is only opened with it).
    pub open_uri: bool,
    /// `log_level`.
    pub log_level: &'static str,
}

impl Default for DaemonSettings {
    fn default() -> Self {
        Self { delegation_keys: 60, open_uri: false, log_level: "debug" }
    }
}

/// A private session whose daemon points at `stack`, signed out, with `settings`.
pub async fn delegation_daemon_session(stack: &Stack, settings: &DaemonSettings) -> Result<Session> {
    let mut session = Session::start().await?;
    session.write_config(&format!(
        "homeserver = \"{}\"\nlog_level = \"{}\"\n[timeouts]\nflow = 300\ndevice_creation = 30\n\
         delegation_keys = {}\n[desktop]\nopen_uri = {}\n{}",
        stack.synapse,
        settings.log_level,
        settings.delegation_keys,
        settings.open_uri,
        crate::LOCAL_TEST_SETUP
    ))?;
    session.start_daemon(&[]).await?;
    session.wait_session_state(SessionState::SignedOut, Duration::from_secs(20)).await?;
    Ok(session)
}

/// A daemon signed in (by QR, from `phone`) to a fresh account on the main stack.
pub struct DelegatingDaemon {
    pub stack: Stack,
    pub login: String,
    /// The account's other device: matrix-sdk, cross-signing and key backup set up.
    pub phone: Client,
    pub session: Session,
}

pub async fn delegating_daemon(login_prefix: &str, settings: &DaemonSettings) -> Result<DelegatingDaemon> {
    delegating_daemon_on(Stack::main()?, login_prefix, settings).await
}

pub async fn delegating_daemon_on(
    stack: Stack,
    login_prefix: &str,
    settings: &DaemonSettings,
) -> Result<DelegatingDaemon> {
    let login = Stack::new_login(login_prefix);
    let phone = stack.existing_device(&login).await?;
    let session = delegation_daemon_session(&stack, settings).await?;
    crate::stack::sign_in_daemon(&stack, &session, &phone, &login).await?;
    Ok(DelegatingDaemon { stack, login, phone, session })
}

/// A delegation flow at consent: the owner approves on D-Bus, the user consents on the OAuth
/// server's page; returns the new device's ID once the session is ready (`SyncingSecrets`).
pub async fn consent(stack: &Stack, flow: &mut Flow, login: &str) -> Result<String> {
    wait_state(flow, State::WaitingForApproval).await?;
    let device_id = flow.proxy().peer_device_id().await?;
    ensure!(!device_id.is_empty(), "no PeerDeviceId in WaitingForApproval");
    let uri = flow.verification_uri().await?;
    flow.approve().await?;
    stack.approve_uri(&uri, login, false)?;
    wait_state(flow, State::SyncingSecrets).await?;
    Ok(device_id)
}

/// Starts a delegation, consents and takes the session. The flow is still running: without
/// shared secrets it ends once the client uploaded its device keys and the daemon signed them.
pub async fn delegate(
    stack: &Stack,
    linkd: &Linkd,
    login: &str,
    options: DelegateOptions,
) -> Result<(Flow, DelegatedSession)> {
    let mut flow = linkd.start_delegation(options).await?;
    let device_id = consent(stack, &mut flow, login).await?;
    let session = flow.take_session().await?;
    ensure!(session.device_id == device_id, "the session names {} not {device_id}", session.device_id);
    Ok((flow, session))
}

/// The strings of a session document that must never show anywhere else: both tokens and every
/// private key it carries.
pub fn secret_strings(session: &DelegatedSession) -> Vec<String> {
    let mut out = vec![session.access_token.clone()];
    out.extend(session.refresh_token.clone());
    if let Some(secrets) = &session.secrets {
        fn leaves(v: &Value, out: &mut Vec<String>) {
            match v {
                Value::String(s) => out.push(s.clone()),
                Value::Object(m) => m.values().for_each(|v| leaves(v, out)),
                Value::Array(a) => a.iter().for_each(|v| leaves(v, out)),
                _ => {}
            }
        }
        leaves(&secrets["cross_signing"], &mut out);
        leaves(&secrets["backup"]["key"], &mut out);
    }
    out.retain(|s| s.len() >= 8);
    out
}

/// The session document as TakeSession's fd held it (for the js light client).
pub fn session_json(session: &DelegatedSession) -> Result<Vec<u8>> {
    Ok(serde_json::to_vec(session)?)
}

fn http() -> matrix_sdk::reqwest::Client {
    matrix_sdk::reqwest::Client::builder().timeout(Duration::from_secs(20)).build().expect("http client")
}

/// `GET /_matrix/client/v3/devices/{device_id}` with `access_token`: the HTTP status.
pub async fn device_status(stack: &Stack, access_token: &str, device_id: &str) -> Result<u16> {
    let mut url = stack.synapse.join("_matrix/client/v3/devices/")?;
    url.path_segments_mut().map_err(|_| anyhow!("base URL"))?.pop_if_empty().push(device_id);
    let r = http().get(url).header("Authorization", format!("Bearer {access_token}")).send().await?;
    Ok(r.status().as_u16())
}

/// Waits until the homeserver no longer knows `device_id` (404 for the account's other device).
pub async fn wait_device_gone(
    stack: &Stack,
    phone: &Client,
    device_id: &str,
    timeout: Duration,
) -> Result<()> {
    let token = phone.access_token().ok_or_else(|| anyhow!("the phone has no token"))?;
    let deadline = Instant::now() + timeout;
    loop {
        let status = device_status(stack, &token, device_id).await?;
        if status == 404 {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("{device_id} is still known to the homeserver (GET /devices answers {status})");
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Whether `access_token` still works on the homeserver (`whoami`).
pub async fn token_works(stack: &Stack, access_token: &str) -> Result<bool> {
    let r = http()
        .get(stack.synapse.join("_matrix/client/v3/account/whoami")?)
        .header("Authorization", format!("Bearer {access_token}"))
        .send()
        .await?;
    Ok(r.status().is_success())
}

// ---------------------------------------------------------------------------------------------
// The phone's side: an encrypted room and its messages.

/// The phone creates a private encrypted room of its own (the light client, the same account, is
/// in it too).
pub async fn encrypted_room(phone: &Client) -> Result<OwnedRoomId> {
    let mut request = create_room::v3::Request::new();
    request.name = Some("delegation test".into());
    request.initial_state = vec![
        InitialStateEvent::with_empty_state_key(RoomEncryptionEventContent::with_recommended_defaults())
            .to_raw_any(),
    ];
    let room = phone.create_room(request).await.context("create the encrypted room")?;
    Ok(room.room_id().to_owned())
}

/// The phone sends `text` to `room_id` (encrypted for the devices it knows of its own account).
pub async fn send_text(phone: &Client, room_id: &RoomId, text: &str) -> Result<()> {
    let room = phone.get_room(room_id).ok_or_else(|| anyhow!("the phone does not know {room_id}"))?;
    room.send(RoomMessageEventContent::text_plain(text)).await.context("send")?;
    Ok(())
}

/// Waits until the phone uploaded its room keys to the key backup.
pub async fn wait_backed_up(phone: &Client) -> Result<()> {
    tokio::time::timeout(Duration::from_secs(60), phone.encryption().backups().wait_for_steady_state())
        .await
        .map_err(|_| anyhow!("the phone's key backup did not settle"))?
        .map_err(|e| anyhow!("the phone's key backup: {e:?}"))?;
    Ok(())
}

/// The phone learns the account's current devices (a keys query), so that its next message is
/// encrypted for a device that appeared since.
pub async fn refresh_devices(phone: &Client) -> Result<()> {
    let user = phone.user_id().ok_or_else(|| anyhow!("phone not signed in"))?.to_owned();
    phone.encryption().request_user_identity(&user).await?;
    Ok(())
}

/// Messages with unique bodies: one sent before the delegation, one after.
pub fn message_bodies(tag: &str) -> (String, String) {
    let n = Stack::new_login("");
    (format!("before the delegation {tag} {n}"), format!("after the delegation {tag} {n}"))
}

// ---------------------------------------------------------------------------------------------
// matrix-sdk as the light client.

/// The trust of a device from its own point of view.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OwnTrust {
    /// Signed by the account's self-signing key (`is_cross_signed_by_owner`).
    pub cross_signed_by_owner: bool,
    /// Also trusted through the account's identity, which the client itself verified
    /// (`is_verified`): only with the master key, i.e. shared secrets.
    pub verified: bool,
}

/// A matrix-sdk client of a delegated device, with its own store.
pub struct LightClient {
    pub client: Client,
    pub device_id: String,
    pub with_secrets: bool,
    _store: tempfile::TempDir,
}

impl LightClient {
    /// A matrix-sdk client of the delegated device in a fresh store, set up as
    /// `DelegatedSession::into_client` (client-lib feature `matrix-sdk`) does it.
    pub async fn start(session: DelegatedSession) -> Result<Self> {
        let store = tempfile::Builder::new().prefix("light-client-").tempdir()?;
        let device_id = session.device_id.clone();
        let with_secrets = session.has_secrets();
        let client = session.into_client(store.path(), None).await.context("into_client")?;
        Ok(Self { client, device_id, with_secrets, _store: store })
    }

    /// One sync (keys, to-device messages, rooms), returning quickly.
    pub async fn sync(&self) -> Result<()> {
        self.client.sync_once(SyncSettings::default().timeout(Duration::from_millis(500))).await?;
        Ok(())
    }

    /// Its own device as the client sees it, after asking the homeserver again.
    pub async fn own_trust(&self) -> Result<OwnTrust> {
        let user = self.client.user_id().ok_or_else(|| anyhow!("light client not signed in"))?.to_owned();
        self.client.encryption().request_user_identity(&user).await?;
        let device = self
            .client
            .encryption()
            .get_own_device()
            .await?
            .ok_or_else(|| anyhow!("the light client does not know its own device"))?;
        Ok(OwnTrust {
            cross_signed_by_owner: device.is_cross_signed_by_owner(),
            verified: device.is_verified(),
        })
    }

    /// Waits until its own device is cross-signed by the account (and, with shared secrets,
    /// verified through the identity the client trusts).
    pub async fn wait_cross_signed(&self, timeout: Duration) -> Result<OwnTrust> {
        let deadline = Instant::now() + timeout;
        loop {
            self.sync().await?;
            let trust = self.own_trust().await?;
            if trust.cross_signed_by_owner && (trust.verified || !self.with_secrets) {
                return Ok(trust);
            }
            if Instant::now() > deadline {
                bail!("the light client's own device did not become cross-signed: {trust:?}");
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    }

    /// Refreshes the tokens once, as a client does when its access token expires: the refresh
    /// token rotates and the daemon's copies stop working.
    pub async fn refresh_once(&self) -> Result<()> {
        self.client.oauth().refresh_access_token().await.map_err(|e| anyhow!("refresh: {e}"))?;
        Ok(())
    }

    /// Reads `room_id` until each of `expected` was decrypted or `timeout` passed. With the backup
    /// key, fetches the room's keys from the key backup first (as a client restoring history
    /// does). Returns, per body, whether it was decrypted.
    pub async fn decrypted(
        &self,
        room_id: &RoomId,
        expected: &[&str],
        timeout: Duration,
    ) -> Result<HashMap<String, bool>> {
        let deadline = Instant::now() + timeout;
        let mut from_backup = false;
        loop {
            self.sync().await?;
            let found = self.read_room(room_id).await?;
            let result: HashMap<String, bool> =
                expected.iter().map(|t| (t.to_string(), found.iter().any(|b| b == t))).collect();
            if result.values().all(|&d| d) || Instant::now() > deadline {
                return Ok(result);
            }
            if !from_backup && self.client.encryption().backups().are_enabled().await {
                self.client.encryption().backups().download_room_keys_for_room(room_id).await?;
                from_backup = true;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    /// The bodies of the room's last messages it could decrypt.
    async fn read_room(&self, room_id: &RoomId) -> Result<Vec<String>> {
        let Some(room) = self.client.get_room(room_id) else { return Ok(Vec::new()) };
        let messages = room.messages(MessagesOptions::backward()).await?;
        Ok(messages
            .chunk
            .iter()
            .filter(|e| !e.kind.is_utd())
            .filter_map(|e| e.raw().deserialize_as::<Value>().ok())
            .filter(|v| v["type"] == "m.room.message")
            .filter_map(|v| v["content"]["body"].as_str().map(str::to_owned))
            .collect())
    }
}

// ---------------------------------------------------------------------------------------------
// matrix-js-sdk as the light client.

/// `stack/node/js-light-client.mjs` running on a session document.
pub struct JsLightClient {
    pub dir: tempfile::TempDir,
    child: Child,
}

impl JsLightClient {
    /// Starts it on `session` (written to a private file in its directory), reading `room` for
    /// `expected` bodies once the test wrote `sent`. `extra`: more arguments (`--refresh-once`,
    /// `--messages-timeout N`).
    pub fn start(
        session: &DelegatedSession,
        room: Option<&RoomId>,
        expected: &[&str],
        extra: &[&str],
    ) -> Result<Self> {
        use std::os::unix::fs::OpenOptionsExt;
        let dir = tempfile::Builder::new().prefix("js-light-").tempdir()?;
        let session_file = dir.path().join("session.json");
        let mut f =
            std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&session_file)?;
        std::io::Write::write_all(&mut f, &session_json(session)?)?;
        drop(f);
        let node_dir = workspace_root().join("stack/node");
        let log = std::fs::File::create(dir.path().join("client.log"))?;
        let mut cmd = Command::new(node_dir.join("node_modules/.bin/node"));
        cmd.arg(node_dir.join("js-light-client.mjs"))
            .arg("--session")
            .arg(&session_file)
            .arg("--dir")
            .arg(dir.path())
            .args(["--timeout", "150"]);
        if let Some(room) = room {
            cmd.args(["--room", room.as_str()]);
        }
        for t in expected {
            cmd.args(["--expect", t]);
        }
        cmd.args(extra);
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .context("node js-light-client.mjs (stack/install.sh installs node)")?;
        Ok(Self { dir, child })
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    async fn read(&mut self, name: &str, timeout: Duration) -> Result<String> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(s) = std::fs::read_to_string(self.path(name)) {
                return Ok(s.trim().to_owned());
            }
            if name != "result.json" && self.path("result.json").exists() {
                bail!(
                    "the js light client ended before writing {name}: {}\n{}",
                    std::fs::read_to_string(self.path("result.json")).unwrap_or_default(),
                    self.log()
                );
            }
            if Instant::now() > deadline {
                bail!("the js light client did not write {name} in time; log:\n{}", self.log());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits until its device is cross-signed (`ready`, a status object).
    pub async fn ready(&mut self) -> Result<Value> {
        Ok(serde_json::from_str(&self.read("ready", Duration::from_secs(120)).await?)?)
    }

    /// Tells it the messages were sent: it reads the room now.
    pub fn mark_sent(&self) -> Result<()> {
        std::fs::write(self.path(".sent.tmp"), "sent\n")?;
        std::fs::rename(self.path(".sent.tmp"), self.path("sent"))?;
        Ok(())
    }

    /// The outcome it wrote; waits for it.
    pub async fn result(&mut self) -> Result<Value> {
        let text = self.read("result.json", Duration::from_secs(150)).await?;
        let _ = tokio::task::block_in_place(|| self.child.wait());
        Ok(serde_json::from_str(&text)?)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.path("client.log")).unwrap_or_default()
    }
}

impl Drop for JsLightClient {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = Command::new("kill").arg(self.child.id().to_string()).status();
            let _ = self.child.wait();
        }
    }
}
