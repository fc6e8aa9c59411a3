//! A desktop for the GTK app inside the test's private session: Xvfb, the accessibility bus
//! (`at-spi-bus-launcher`), the app itself, the AT-SPI driver (`gtk/tests/atspi_driver.py`) and
//! screenshots of each step under `target/gtk-artefacts/`.

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use matrix_linkd_tests::{Session, bin_dir, workspace_root};
use serde_json::Value;

pub struct Desktop {
    pub display: String,
    pub artefacts: PathBuf,
    xvfb: Child,
    a11y: Option<Child>,
    app: Option<Child>,
    windows: Vec<Child>,
    shots: usize,
}

impl Desktop {
    pub fn start(session: &Session, artefacts: &Path) -> Result<Self> {
        std::fs::create_dir_all(artefacts)?;
        let (xvfb, display) = matrix_linkd_tests::start_xvfb("1200x860x24")?;
        let mut desktop = Desktop {
            display,
            artefacts: artefacts.to_owned(),
            xvfb,
            a11y: None,
            app: None,
            windows: Vec::new(),
            shots: 0,
        };
        // The accessibility bus: GTK asks the session bus's org.a11y.Bus for its address.
        let launcher = ["/usr/libexec/at-spi-bus-launcher", "/usr/lib/at-spi2-core/at-spi-bus-launcher"]
            .into_iter()
            .find(|p| Path::new(p).exists())
            .context("at-spi-bus-launcher (apt-get install at-spi2-core)")?;
        desktop.a11y = Some(
            desktop
                .command(session, launcher)
                .arg("--launch-immediately")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()?,
        );
        let deadline = Instant::now() + Duration::from_secs(10);
        while !session
            .command("busctl")
            .args(["--user", "status", "org.a11y.Bus"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()?
            .success()
        {
            if Instant::now() > deadline {
                bail!("at-spi-bus-launcher did not take org.a11y.Bus");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(desktop)
    }

    /// A command in the session, on this display.
    pub fn command(&self, session: &Session, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut cmd = session.command(program);
        cmd.env("DISPLAY", &self.display)
            .env("GDK_BACKEND", "x11")
            .env("GSK_RENDERER", "cairo")
            .env("GSETTINGS_BACKEND", "memory")
            .env("GTK_A11Y", "atspi")
            // GtkFileChooserNative then asks the FileChooser portal (our stand-in).
            .env("GDK_DEBUG", "portals");
        cmd
    }

    /// Starts `matrix-link-gtk` (its log goes to the artefacts). `LINKD_GTK_BIN` runs another
    /// build of the app (an older commit's, to see a new test fail there).
    pub fn start_app(&mut self, session: &Session, args: &[&str]) -> Result<()> {
        let bin = std::env::var_os("LINKD_GTK_BIN")
            .map(PathBuf::from)
            .unwrap_or_else(|| bin_dir().join("matrix-link-gtk"));
        anyhow::ensure!(bin.exists(), "{} is missing: run `cargo build --workspace` first", bin.display());
        let log = std::fs::File::create(self.artefacts.join("app.log"))?;
        self.app = Some(
            self.command(session, bin)
                .args(args)
                .env("RUST_BACKTRACE", "1")
                .stdin(Stdio::null())
                .stdout(log.try_clone()?)
                .stderr(log)
                .spawn()?,
        );
        Ok(())
    }

    pub fn app_running(&mut self) -> bool {
        self.app.as_mut().is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// Shows the picture of QR code `qr` in a window of its own at (x, y) (ImageMagick's
    /// `display`), as the other device's screen would be, and waits until the screen shows it;
    /// returns its index for [`Desktop::close_window`].
    pub fn show_qr_picture(
        &mut self,
        session: &Session,
        png: &Path,
        qr: &[u8],
        x: u32,
        y: u32,
    ) -> Result<usize> {
        let child = self
            .command(session, "display")
            .args(["-geometry", &format!("+{x}+{y}"), "-title", "Other device"])
            .arg(png)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("display (apt-get install imagemagick)")?;
        self.windows.push(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let shot = self.artefacts.join("screen-now.png");
            self.capture(&shot)?;
            if matrix_linkd_client::qr::decode_image(&shot).is_ok_and(|found| found == qr) {
                std::fs::remove_file(&shot).ok();
                return Ok(self.windows.len() - 1);
            }
            anyhow::ensure!(Instant::now() < deadline, "the picture did not appear on the screen");
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Puts a PNG on the clipboard (`xclip` serves it until the desktop ends).
    pub fn copy_image(&mut self, session: &Session, png: &Path) -> Result<()> {
        let child = self
            .command(session, "xclip")
            .args(["-selection", "clipboard", "-t", "image/png", "-i", "-loops", "0", "-quiet"])
            .arg(png)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("xclip (apt-get install xclip)")?;
        self.windows.push(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let targets = self
                .command(session, "xclip")
                .args(["-selection", "clipboard", "-t", "TARGETS", "-o"])
                .stderr(Stdio::null())
                .output()?;
            if String::from_utf8_lossy(&targets.stdout).lines().any(|t| t == "image/png") {
                return Ok(());
            }
            anyhow::ensure!(Instant::now() < deadline, "xclip did not take the clipboard");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn close_window(&mut self, n: usize) {
        let _ = self.windows[n].kill();
        let _ = self.windows[n].wait();
    }

    /// Saves the screen as `NN-name.png` in the artefacts, once the page transition is over.
    pub fn screenshot(&mut self, name: &str) -> Result<PathBuf> {
        std::thread::sleep(Duration::from_millis(500));
        self.shots += 1;
        let file = self.artefacts.join(format!("{:02}-{name}.png", self.shots));
        self.capture(&file)?;
        Ok(file)
    }

    /// The QR code on the screen, once there is one for which `wanted` holds (a page shows its
    /// new code a moment after its text); the screenshot is saved as `NN-name.png`.
    pub fn screen_qr(&mut self, name: &str, wanted: impl Fn(&[u8]) -> bool) -> Result<Vec<u8>> {
        self.shots += 1;
        let file = self.artefacts.join(format!("{:02}-{name}.png", self.shots));
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            std::thread::sleep(Duration::from_millis(300));
            self.capture(&file)?;
            match matrix_linkd_client::qr::decode_image(&file) {
                Ok(qr) if wanted(&qr) => return Ok(qr),
                found => anyhow::ensure!(
                    Instant::now() < deadline,
                    "no wanted QR code on the screen ({:?}): {}",
                    found.map(|_| "another code"),
                    file.display()
                ),
            }
        }
    }

    fn capture(&self, file: &Path) -> Result<()> {
        let st =
            Command::new("import").args(["-display", &self.display, "-window", "root"]).arg(file).status()?;
        anyhow::ensure!(st.success(), "import failed");
        Ok(())
    }

    /// Runs one driver command (see `gtk/tests/atspi_driver.py`); fails if its widget did not
    /// appear. Returns the driver's JSON (`visible`, `name`).
    pub fn drive(&mut self, session: &Session, args: &[&str]) -> Result<Value> {
        let script = workspace_root().join("gtk/tests/atspi_driver.py");
        let out = self.command(session, "/usr/bin/python3").arg(script).args(args).output()?;
        let text = String::from_utf8_lossy(&out.stdout);
        let v: Value = serde_json::from_str(text.trim())
            .with_context(|| format!("driver {args:?}: {text}\n{}", String::from_utf8_lossy(&out.stderr)))?;
        if v["ok"] != true {
            let command = args
                .iter()
                .find(|a| !a.starts_with('-') && a.chars().all(|c| c.is_ascii_lowercase() || c == '-'));
            let shot = self.screenshot(&format!("failed-{}", command.unwrap_or(&"driver"))).ok();
            bail!(
                "driver {args:?} failed: {}\nvisible: {}\nscreenshot: {shot:?}\napp log:\n{}",
                v["error"],
                v["visible"],
                std::fs::read_to_string(self.artefacts.join("app.log")).unwrap_or_default()
            );
        }
        Ok(v)
    }
}

/// Whether the driver's `visible` list holds a widget of `role` named `name`.
pub fn shows(v: &Value, role: &str, name: &str) -> bool {
    v["visible"].as_array().is_some_and(|a| a.iter().any(|w| w[0] == role && w[1] == name))
}

/// Whether the driver's `visible` list holds a widget whose name starts with `prefix`.
pub fn shows_prefix(v: &Value, prefix: &str) -> bool {
    v["visible"]
        .as_array()
        .is_some_and(|a| a.iter().any(|w| w[1].as_str().is_some_and(|n| n.starts_with(prefix))))
}

impl Drop for Desktop {
    fn drop(&mut self) {
        for child in self.windows.iter_mut().chain(self.app.as_mut()) {
            let _ = child.kill();
            let _ = child.wait();
        }
        // SIGTERM: the launcher then stops the accessibility bus it started.
        if let Some(mut a11y) = self.a11y.take() {
            let _ = Command::new("kill").arg(a11y.id().to_string()).status();
            let _ = a11y.wait();
        }
        let _ = self.xvfb.kill();
        let _ = self.xvfb.wait();
    }
}
