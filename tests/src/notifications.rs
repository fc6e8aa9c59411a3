//! A real notification server (dunst under Xvfb) on a session's bus, and a monitor that records
//! the notification traffic on it.

use std::{
    io::{BufRead, BufReader},
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

use crate::Session;

/// Xvfb and dunst: a real notification server with actions, on this session's bus.
///
/// dunst shows a notification's actions in its context menu (`dunstctl context`, or `dunstctl
/// action N` on a notification without a `default` action): it writes one line per action to
/// its `dmenu` command and invokes the line that command prints. Ours is a script that records
/// the menu and prints the first line holding the text given to [`Notifications::pick_in_menu`],
/// or nothing (the user closed the menu) when none was given.
pub struct Notifications {
    xvfb: Child,
    dunst: Child,
    dir: PathBuf,
}

impl Notifications {
    /// What the menu script prints next time: the first menu line containing `text`, or nothing.
    pub fn pick_in_menu(&self, text: Option<&str>) -> Result<()> {
        let pick = self.dir.join("pick");
        match text {
            Some(t) => std::fs::write(pick, t)?,
            None => {
                if pick.exists() {
                    std::fs::remove_file(pick)?;
                }
            }
        }
        Ok(())
    }

    /// The lines of the last menu dunst offered (empty until it offered one).
    pub fn last_menu(&self) -> String {
        std::fs::read_to_string(self.dir.join("menu")).unwrap_or_default()
    }
}

impl Drop for Notifications {
    fn drop(&mut self) {
        for c in [&mut self.dunst, &mut self.xvfb] {
            c.kill().ok();
            c.wait().ok();
        }
    }
}

/// An Xvfb X server of `geometry` (`WxHxDEPTH`) and its display name (`:N`), once it accepts
/// clients: Xvfb writes the display number to the -displayfd descriptor then.
pub fn start_xvfb(geometry: &str) -> Result<(Child, String)> {
    let mut xvfb = Command::new("Xvfb")
        .args(["-displayfd", "1", "-screen", "0", geometry, "-nolisten", "tcp"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .context("Xvfb (apt-get install xvfb)")?;
    let mut display = String::new();
    BufReader::new(xvfb.stdout.take().expect("piped")).read_line(&mut display)?;
    Ok((xvfb, format!(":{}", display.trim())))
}

impl Session {
    pub fn start_notifications(&self) -> Result<Notifications> {
        let (mut xvfb, display) = start_xvfb("800x600x24")?;
        let dir = self.dir.path().join("dunst");
        std::fs::create_dir_all(&dir)?;
        let script = dir.join("menu.sh");
        std::fs::write(
            &script,
            format!(
                "#!/bin/sh\nd='{d}'\ncat > \"$d/menu.tmp\"\nmv \"$d/menu.tmp\" \"$d/menu\"\n\
                 [ -s \"$d/pick\" ] && grep -F -m1 -- \"$(cat \"$d/pick\")\" \"$d/menu\"\nexit 0\n",
                d = dir.display()
            ),
        )?;
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755))?;
        let config = dir.join("dunstrc");
        std::fs::write(&config, format!("[global]\ndmenu = \"{}\"\n", script.display()))?;
        let dunst = self
            .command("dunst")
            .arg("-config")
            .arg(&config)
            .env("DISPLAY", &display)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("dunst (apt-get install dunst)");
        let dunst = match dunst {
            Ok(d) => d,
            Err(e) => {
                xvfb.kill().ok();
                return Err(e);
            }
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let st =
                self.command("dunstctl").arg("count").stdout(Stdio::null()).stderr(Stdio::null()).status()?;
            if st.success() {
                break;
            }
            if Instant::now() > deadline {
                bail!("dunst did not come up");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(Notifications { xvfb, dunst, dir })
    }

    /// `dunstctl` in this session.
    pub fn dunstctl(&self, args: &[&str]) -> Result<String> {
        let out = self.command("dunstctl").args(args).output()?;
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }
}

/// A `Notify` call seen on the bus, with the id the notification server answered.
#[derive(Debug, Clone)]
pub struct SeenNotification {
    /// The unique name that called `Notify`.
    pub sender: String,
    pub id: u32,
    pub summary: String,
    pub body: String,
    /// Action keys and labels, as sent.
    pub actions: Vec<String>,
}

/// A D-Bus monitor on a session's bus that records the notification traffic: calls to and signals
/// of `org.freedesktop.Notifications`, and method returns (to learn the ids `Notify` returned).
pub struct NotificationMonitor {
    messages: std::sync::Arc<std::sync::Mutex<Vec<zbus::Message>>>,
    task: tokio::task::JoinHandle<()>,
}

const NOTIFICATIONS_IFACE: &str = "org.freedesktop.Notifications";

impl NotificationMonitor {
    fn messages(&self) -> Vec<zbus::Message> {
        self.messages.lock().expect("monitor lock").clone()
    }

    /// Every answered `Notify` call so far, in order.
    pub fn notifications(&self) -> Vec<SeenNotification> {
        type NotifyArgs = (
            String,
            u32,
            String,
            String,
            String,
            Vec<String>,
            std::collections::HashMap<String, zbus::zvariant::OwnedValue>,
            i32,
        );
        let messages = self.messages();
        let mut seen = Vec::new();
        for call in &messages {
            let h = call.header();
            if h.message_type() != zbus::message::Type::MethodCall
                || h.interface().map(|i| i.as_str()) != Some(NOTIFICATIONS_IFACE)
                || h.member().map(|m| m.as_str()) != Some("Notify")
            {
                continue;
            }
            let Some(sender) = h.sender().map(|s| s.to_string()) else { continue };
            let Ok((_, _, _, summary, body, actions, _, _)) = call.body().deserialize::<NotifyArgs>() else {
                continue;
            };
            let serial = call.primary_header().serial_num();
            let reply = messages.iter().find(|r| {
                let rh = r.header();
                rh.message_type() == zbus::message::Type::MethodReturn
                    && rh.reply_serial() == Some(serial)
                    && rh.destination().map(|d| d.to_string()).as_deref() == Some(sender.as_str())
            });
            if let Some(id) = reply.and_then(|r| r.body().deserialize::<u32>().ok()) {
                seen.push(SeenNotification { sender, id, summary, body, actions });
            }
        }
        seen
    }

    /// Whether someone called `CloseNotification(id)`.
    pub fn close_called(&self, id: u32) -> bool {
        self.messages().iter().any(|m| {
            let h = m.header();
            h.message_type() == zbus::message::Type::MethodCall
                && h.interface().map(|i| i.as_str()) == Some(NOTIFICATIONS_IFACE)
                && h.member().map(|m| m.as_str()) == Some("CloseNotification")
                && m.body().deserialize::<u32>().ok() == Some(id)
        })
    }

    /// Whether `sender` (the notification server's unique name) emitted `NotificationClosed(id, _)`.
    pub fn closed_signal(&self, sender: &str, id: u32) -> bool {
        self.messages().iter().any(|m| {
            let h = m.header();
            h.message_type() == zbus::message::Type::Signal
                && h.sender().map(|s| s.as_str()) == Some(sender)
                && h.interface().map(|i| i.as_str()) == Some(NOTIFICATIONS_IFACE)
                && h.member().map(|m| m.as_str()) == Some("NotificationClosed")
                && m.body().deserialize::<(u32, u32)>().ok().map(|(n, _)| n) == Some(id)
        })
    }
}

impl Drop for NotificationMonitor {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Session {
    /// Starts recording the notification traffic on this bus.
    pub async fn monitor_notifications(&self) -> Result<NotificationMonitor> {
        use futures_util::StreamExt;
        let conn = self.connect().await?;
        let mut stream = zbus::MessageStream::from(&conn);
        let rules = [
            "type='method_call',interface='org.freedesktop.Notifications'",
            "type='signal',interface='org.freedesktop.Notifications'",
            "type='method_return'",
        ];
        conn.call_method(
            Some("org.freedesktop.DBus"),
            "/org/freedesktop/DBus",
            Some("org.freedesktop.DBus.Monitoring"),
            "BecomeMonitor",
            &(&rules[..], 0u32),
        )
        .await?;
        let messages = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let task = tokio::spawn({
            let messages = messages.clone();
            async move {
                let _conn = conn;
                while let Some(Ok(msg)) = stream.next().await {
                    messages.lock().expect("monitor lock").push(msg);
                }
            }
        });
        Ok(NotificationMonitor { messages, task })
    }
}
