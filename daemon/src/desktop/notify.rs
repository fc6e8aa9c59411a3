//! Notifications, sent on the daemon's own bus connection.
//!
//! The approval notification is a place where a grant is consented to, so its answer must come
//! from the notification server and nobody else: we resolve the server's unique name, subscribe
//! to that sender's signals before `Notify`, and check the sender and path of every signal again
//! ourselves. Only the explicit `approve` action approves; there is no `default` action, so a
//! click on the body decides nothing. The notification lives in a task the flow owns; when the
//! flow ends, for any reason, the task closes it and ends.

use std::{collections::HashMap, future::Future, time::Duration};

use futures_util::StreamExt;
use tokio::{sync::oneshot, task::JoinHandle};
use tracing::{Instrument, debug, info};
use zbus::{
    Connection, MatchRule, Message, MessageStream,
    message::Type,
    names::OwnedUniqueName,
    zvariant::{DynamicType, Value},
};

const APP_NAME: &str = "matrix-linkd";
const SERVER_NAME: &str = "org.freedesktop.Notifications";
const SERVER_PATH: &str = "/org/freedesktop/Notifications";
const SERVER_INTERFACE: &str = "org.freedesktop.Notifications";
const DBUS_NAME: &str = "org.freedesktop.DBus";
const DBUS_PATH: &str = "/org/freedesktop/DBus";

/// The user's answer to the approval notification.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Choice {
    Approve,
    Deny,
}

/// The action keys of the approval notification, with their labels.
const APPROVE: &str = "approve";
const DENY: &str = "deny";
const ACTIONS: [&str; 4] = [APPROVE, "Approve", DENY, "Deny"];
const APPROVAL_SUMMARY: &str = "Sign in a new device?";
const APPROVAL_ICON: &str = "dialog-password";
/// How long a result notification stays, in milliseconds.
const RESULT_TIMEOUT_MS: i32 = 10_000;

/// How long one call to the bus or the notification server may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(5);
/// `GetCapabilities` is asked before every approval notification: keep it short.
const CAPABILITIES_TIMEOUT: Duration = Duration::from_secs(2);
/// How long the end of a flow waits for its approval task to close the notification.
const FINISH_TIMEOUT: Duration = Duration::from_secs(10);
/// Signals from the server queued for the approval task (each is read at once).
const MAX_QUEUED_SIGNALS: usize = 16;
/// The longest peer-chosen text shown as is.
const MAX_SHOWN_CHARS: usize = 64;

/// What the approval notification says. Never a secret: the new device's ID and the host of the
/// consent page, not the verification URI (it carries the user code) nor any code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApprovalRequest {
    device_id: Option<String>,
    consent_host: Option<String>,
    /// Delegation: the local program that asks for a device of its own.
    client: Option<String>,
}

impl ApprovalRequest {
    pub fn new(device_id: Option<&str>, verification_uri: &str) -> Self {
        let consent_host = url::Url::parse(verification_uri)
            .ok()
            .and_then(|u| u.host_str().map(shown))
            .filter(|h| !h.is_empty());
        Self { device_id: device_id.filter(|d| !d.is_empty()).map(shown), consent_host, client: None }
    }

    /// The request is a delegation: `client` (the name a local program gave, or its app ID) asks
    /// for the device.
    pub fn for_client(mut self, client: &str) -> Self {
        // A name may have inner spaces; everything else as for peer-chosen text.
        let words: Vec<String> = client.split(' ').filter(|w| !w.is_empty()).map(shown).collect();
        self.client = Some(words.join(" ")).filter(|c| !c.is_empty());
        self
    }

    /// The notification's body; escaped when the server reads markup in it.
    fn body(&self, markup: bool) -> String {
        let text = |s: &str| if markup { escape_markup(s) } else { s.to_owned() };
        let mut body = match (&self.client, &self.device_id) {
            (Some(client), Some(id)) => {
                format!("{} asks for a Matrix device of its own (device {}).", text(client), text(id))
            }
            (Some(client), None) => format!("{} asks for a Matrix device of its own.", text(client)),
            (None, Some(id)) => format!("Device {} wants to sign in to your Matrix account.", text(id)),
            (None, None) => "A new device wants to sign in to your Matrix account.".to_owned(),
        };
        if let Some(host) = &self.consent_host {
            body.push_str(&format!(" You will confirm on {}.", text(host)));
        }
        body.push_str(" Approve only if you started this yourself.");
        body
    }
}

/// Text the peer chose, made safe to show: printable ASCII only (no spaces, no direction
/// overrides), bounded in length.
fn shown(s: &str) -> String {
    let mut out: String =
        s.chars().take(MAX_SHOWN_CHARS).map(|c| if c.is_ascii_graphic() { c } else { '?' }).collect();
    if s.chars().nth(MAX_SHOWN_CHARS).is_some() {
        out.push('…');
    }
    out
}

fn escape_markup(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}

/// Runs `call` with [`CALL_TIMEOUT`]; `None` (logged) on error or timeout.
async fn timed<T, E: std::fmt::Display>(what: &str, call: impl Future<Output = Result<T, E>>) -> Option<T> {
    match tokio::time::timeout(CALL_TIMEOUT, call).await {
        Ok(Ok(v)) => Some(v),
        Ok(Err(e)) => {
            debug!(error = %e, "{what} failed");
            None
        }
        Err(_) => {
            debug!("{what}: no answer in time");
            None
        }
    }
}

/// The notification server as it is now: its unique name and what it can do.
struct Server {
    conn: Connection,
    name: OwnedUniqueName,
    capabilities: Vec<String>,
}

/// What the server told us about our notification.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Answer {
    Chose(Choice),
    Closed,
}

impl Server {
    /// The current owner of `org.freedesktop.Notifications`, started by D-Bus activation when
    /// nobody owns it. `None` when there is no notification server.
    async fn find(conn: &Connection) -> Option<Self> {
        let owner =
            || conn.call_method(Some(DBUS_NAME), DBUS_PATH, Some(DBUS_NAME), "GetNameOwner", &SERVER_NAME);
        let reply = match tokio::time::timeout(CALL_TIMEOUT, owner()).await {
            Ok(Ok(reply)) => reply,
            _ => {
                timed(
                    "starting the notification server",
                    conn.call_method(
                        Some(DBUS_NAME),
                        DBUS_PATH,
                        Some(DBUS_NAME),
                        "StartServiceByName",
                        &(SERVER_NAME, 0u32),
                    ),
                )
                .await?;
                timed("GetNameOwner", owner()).await?
            }
        };
        let name: OwnedUniqueName = reply.body().deserialize().ok()?;
        let mut server = Self { conn: conn.clone(), name, capabilities: Vec::new() };
        let caps = server.call("GetCapabilities", &());
        server.capabilities = match tokio::time::timeout(CAPABILITIES_TIMEOUT, caps).await {
            Ok(Some(reply)) => reply.body().deserialize().unwrap_or_default(),
            _ => Vec::new(),
        };
        Some(server)
    }

    fn can(&self, capability: &str) -> bool {
        self.capabilities.iter().any(|c| c == capability)
    }

    /// Calls `method` on the server's unique name, never on whoever owns the well-known one later.
    async fn call<B>(&self, method: &str, body: &B) -> Option<Message>
    where
        B: serde::Serialize + DynamicType,
    {
        let call = self.conn.call_method(
            Some(self.name.as_ref()),
            SERVER_PATH,
            Some(SERVER_INTERFACE),
            method,
            body,
        );
        timed(method, call).await
    }

    /// The server's signals on its object. Subscribed before `Notify`, so that no answer comes
    /// before we listen; the bus delivers only what the server itself sends.
    async fn signals(&self) -> Option<MessageStream> {
        let rule = MatchRule::builder()
            .msg_type(Type::Signal)
            .sender(self.name.as_ref())
            .ok()?
            .path(SERVER_PATH)
            .ok()?
            .interface(SERVER_INTERFACE)
            .ok()?
            .build();
        timed(
            "subscribing to the notification server",
            MessageStream::for_match_rule(rule, &self.conn, Some(MAX_QUEUED_SIGNALS)),
        )
        .await
    }

    /// What `msg` says about notification `id`, if it is the server's own signal about it.
    fn answer(&self, msg: &Message, id: u32) -> Option<Answer> {
        let h = msg.header();
        let from_server = h.message_type() == Type::Signal
            && h.sender().is_some_and(|s| *s == self.name)
            && h.path().is_some_and(|p| p.as_str() == SERVER_PATH)
            && h.interface().is_some_and(|i| i.as_str() == SERVER_INTERFACE);
        if !from_server {
            debug!("ignored a notification signal that is not the server's");
            return None;
        }
        match h.member()?.as_str() {
            "ActionInvoked" => {
                let (n, key): (u32, String) = msg.body().deserialize().ok()?;
                if n != id {
                    return None;
                }
                match key.as_str() {
                    APPROVE => Some(Answer::Chose(Choice::Approve)),
                    DENY => Some(Answer::Chose(Choice::Deny)),
                    _ => {
                        debug!("ignored an action we did not offer");
                        None
                    }
                }
            }
            "NotificationClosed" => {
                let (n, _reason): (u32, u32) = msg.body().deserialize().ok()?;
                (n == id).then_some(Answer::Closed)
            }
            _ => None,
        }
    }
}

/// The approval notification, once shown.
struct Prompt {
    server: Server,
    id: u32,
    /// The server's signals, while the answer matters.
    signals: Option<MessageStream>,
}

impl Prompt {
    /// `None` when there is no notification server or it refused the notification.
    async fn show(conn: &Connection, request: &ApprovalRequest) -> Option<Self> {
        Self::show_with(conn, APPROVAL_SUMMARY, &ACTIONS, |markup| request.body(markup)).await
    }

    /// A notification with `summary`, the body `body(markup)` and the two buttons `actions`
    /// (`approve` and `deny` keys with their labels).
    async fn show_with(
        conn: &Connection,
        summary: &str,
        actions: &[&str; 4],
        body: impl FnOnce(bool) -> String,
    ) -> Option<Self> {
        let Some(server) = Server::find(conn).await else {
            debug!("no notification server");
            return None;
        };
        let with_actions = server.can("actions");
        let signals = if with_actions { Some(server.signals().await?) } else { None };
        let actions: &[&str] = if with_actions { actions } else { &[] };
        let body = body(server.can("body-markup"));
        let hints: HashMap<&str, Value<'_>> = HashMap::new();
        let reply = server
            .call("Notify", &(APP_NAME, 0u32, APPROVAL_ICON, summary, body.as_str(), actions, hints, 0i32))
            .await?;
        let id: u32 = reply.body().deserialize().ok()?;
        debug!(id, with_actions, "approval notification shown");
        Some(Self { server, id, signals })
    }

    /// The next answer about our notification; `None` when none can come any more (no buttons,
    /// or the connection closed).
    async fn next_answer(&mut self) -> Option<Answer> {
        let signals = self.signals.as_mut()?;
        while let Some(msg) = signals.next().await {
            if let Ok(msg) = msg
                && let Some(answer) = self.server.answer(&msg, self.id)
            {
                return Some(answer);
            }
        }
        None
    }

    async fn close(self) {
        // Unsubscribes first: the server's own `NotificationClosed` is of no interest now.
        drop(self.signals);
        if self.server.call("CloseNotification", &self.id).await.is_some() {
            debug!(id = self.id, "approval notification closed");
        }
    }
}

/// Shows the approval notification, hands the user's choice (at most one) to `on_choice`, and
/// closes the notification once `ended` resolves, unless the server closed it already.
async fn run_approval(
    conn: Connection,
    request: ApprovalRequest,
    on_choice: impl FnOnce(Choice),
    mut ended: oneshot::Receiver<()>,
) {
    // Not raced with `ended`: stopping halfway could leave a notification up whose id we never
    // learnt. Every step is bounded by `CALL_TIMEOUT`.
    let Some(mut prompt) = Prompt::show(&conn, &request).await else { return };
    let mut on_choice = Some(on_choice);
    let mut listening = true;
    let mut open = true;
    loop {
        tokio::select! {
            _ = &mut ended => break,
            answer = prompt.next_answer(), if listening => match answer {
                Some(Answer::Chose(choice)) => {
                    if let Some(decide) = on_choice.take() {
                        info!(?choice, "approval notification answered");
                        decide(choice);
                    }
                }
                Some(Answer::Closed) => {
                    debug!("approval notification closed without a choice");
                    (listening, open) = (false, false);
                    prompt.signals = None;
                }
                None => {
                    listening = false;
                    prompt.signals = None;
                }
            },
        }
    }
    if open {
        prompt.close().await;
    }
}

/// The task behind one approval notification. Ending it ([`ApprovalTask::finish`]) closes the
/// notification; dropping it aborts the task.
pub struct ApprovalTask {
    task: JoinHandle<()>,
    end: Option<oneshot::Sender<()>>,
}

/// Asks for approval in a notification on the daemon's connection `conn`, in the current span.
/// `on_choice` gets the user's click on "Approve" or "Deny", if one comes; closing the
/// notification is no choice (the D-Bus owner still decides).
pub fn spawn_approval(
    conn: Connection,
    request: ApprovalRequest,
    on_choice: impl FnOnce(Choice) + Send + 'static,
) -> ApprovalTask {
    let (end, ended) = oneshot::channel();
    let task = tokio::spawn(run_approval(conn, request, on_choice, ended).in_current_span());
    ApprovalTask { task, end: Some(end) }
}

impl ApprovalTask {
    /// The flow ended: closes the notification and waits for the task, aborting it if the server
    /// does not answer in time.
    pub async fn finish(mut self) {
        drop(self.end.take());
        if tokio::time::timeout(FINISH_TIMEOUT, &mut self.task).await.is_err() {
            debug!("approval notification task did not end in time; aborted");
        }
        // `Drop` aborts what is left.
    }
}

impl Drop for ApprovalTask {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The buttons of a permission question.
const PERMISSION_ACTIONS: [&str; 4] = [APPROVE, "Allow", DENY, "Deny"];

/// Asks the user in a notification whether the sandboxed app `app` may `what` ("get a Matrix
/// device of its own", …). The user's button, if one is pressed within `wait`; `None` when there
/// is no notification server with buttons, the notification was closed, or no answer came. The
/// notification is closed when the question ends.
pub async fn ask_permission(conn: &Connection, app: &str, what: &str, wait: Duration) -> Option<Choice> {
    let app = shown(app);
    let summary = format!("Allow {app}?");
    let body = |markup: bool| {
        let text = |s: &str| if markup { escape_markup(s) } else { s.to_owned() };
        format!(
            "The sandboxed app {} asks to {}. Your answer is remembered; reset it in the Matrix \
             device link app or with `flatpak permission-reset {}`.",
            text(&app),
            text(what),
            text(&app)
        )
    };
    let mut prompt = Prompt::show_with(conn, &summary, &PERMISSION_ACTIONS, body).await?;
    let answer = tokio::time::timeout(wait, prompt.next_answer()).await;
    let open = !matches!(answer, Ok(Some(Answer::Closed)));
    if open {
        prompt.close().await;
    }
    match answer {
        Ok(Some(Answer::Chose(choice))) => {
            info!(?choice, "permission question answered");
            Some(choice)
        }
        _ => None,
    }
}

/// A one-line result notification on the daemon's connection. Never carries a secret.
pub async fn notify_result(conn: Connection, summary: &str, body: &str) {
    let actions: &[&str] = &[];
    let hints: HashMap<&str, Value<'_>> = HashMap::new();
    let args = (APP_NAME, 0u32, "", summary, body, actions, hints, RESULT_TIMEOUT_MS);
    // To the well-known name: this one expects no answer, and may start the server.
    let call = conn.call_method(Some(SERVER_NAME), SERVER_PATH, Some(SERVER_INTERFACE), "Notify", &args);
    if timed("result notification", call).await.is_none() {
        debug!("result notification not shown");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_body_names_the_device_and_the_host_only() {
        let r = ApprovalRequest::new(Some("ABCDEF"), "https://account.example.org:8443/link?code=SECRET12");
        let body = r.body(false);
        assert_eq!(
            body,
            "Device ABCDEF wants to sign in to your Matrix account. You will confirm on \
             account.example.org. Approve only if you started this yourself."
        );
        assert!(!body.contains("SECRET12") && !body.contains("8443") && !body.contains("/link"));
    }

    #[test]
    fn peer_chosen_text_is_tamed() {
        let r = ApprovalRequest::new(Some("<b>A&B</b> \u{202e}X"), "not a uri");
        assert_eq!(r.device_id.as_deref(), Some("<b>A&B</b>??X"));
        assert_eq!(r.consent_host, None);
        assert!(r.body(true).starts_with("Device &lt;b&gt;A&amp;B&lt;/b&gt;??X wants"));
        assert!(!r.body(true).contains("confirm on"));
        let long = ApprovalRequest::new(Some(&"D".repeat(200)), "https://h.example/");
        assert_eq!(long.device_id.as_deref().map(|d| d.chars().count()), Some(MAX_SHOWN_CHARS + 1));
        let none = ApprovalRequest::new(None, "https://h.example/");
        assert!(none.body(false).starts_with("A new device wants"));
    }

    #[test]
    fn a_delegation_names_the_program() {
        let r = ApprovalRequest::new(Some("ABC"), "https://auth.example/device?user_code=SECRET")
            .for_client("My  <Bot>\u{202e}");
        assert_eq!(
            r.body(true),
            "My &lt;Bot&gt;? asks for a Matrix device of its own (device ABC). You will confirm on \
             auth.example. Approve only if you started this yourself."
        );
        assert!(!r.body(false).contains("SECRET"));
    }
}
