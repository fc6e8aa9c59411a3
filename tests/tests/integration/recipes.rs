//! The applet recipes of `examples/` (GJS, Python with PyGObject) against the real daemon on a
//! private bus, mock homeserver: each does a whole grant with the daemon showing the QR code, which
//! a matrix-sdk new device scans from the PNG the recipe saved.

use std::{path::Path, process::Stdio, time::Duration};

use anyhow::{Context, Result, anyhow, bail};
use matrix_linkd_tests::{peers, signed_in_setup, workspace_root};
use tokio::io::{AsyncBufReadExt, BufReader};

/// Runs `program recipe --yes --no-notify --qr-png …` in the daemon's session; the new device
/// scans the saved PNG, its check code reaches the recipe through `LINKD_CHECK_CODE_FILE`.
async fn grant_with_recipe(program: &str, recipe: &str) -> Result<()> {
    let s = signed_in_setup(60).await?;
    let dir = s.session.dir.path();
    let (png, code_file) = (dir.join("recipe-qr.png"), dir.join("recipe-code"));
    let mut cmd = s.session.command(program);
    if program.ends_with("gjs") {
        cmd.arg("-m");
    }
    cmd.arg(workspace_root().join(recipe))
        .args(["--yes", "--no-notify", "--qr-png"])
        .arg(&png)
        .env("LINKD_CHECK_CODE_FILE", &code_file)
        .env("LINKD_INTERFACES_DIR", workspace_root().join("dbus"))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = tokio::process::Command::from(cmd)
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("{program} (.ci/deps.sh installs gjs and python3-gi)"))?;
    let mut lines = BufReader::new(child.stdout.take().expect("piped")).lines();
    let new_device = s.hs.new_device().await;
    let (mut transcript, mut peer, mut planned) = (String::new(), None, false);
    loop {
        let line = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
            .await
            .map_err(|_| anyhow!("{recipe} said nothing for 30 s:\n{transcript}"))??;
        let Some(line) = line else { break };
        transcript.push_str(&line);
        transcript.push('\n');
        if line.starts_with("QR code written to ") && peer.is_none() {
            let qr = matrix_linkd_client::qr::decode_image(&png)?;
            let mut p = peers::login_scanning(new_device.clone(), qr);
            let code = p.shown_code().await?;
            write_atomically(&code_file, &format!("{code:02}\n"))?;
            peer = Some(p);
        }
        if line.starts_with("A new device asks to sign in") && !planned {
            s.hs.plan_login();
            planned = true;
        }
    }
    let out = child.wait_with_output().await?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() {
        bail!("{recipe} failed ({}):\n{transcript}\nstderr:\n{stderr}", out.status);
    }
    assert!(transcript.starts_with("Scan this QR code with the new device:"), "{transcript}");
    assert!(
        transcript.lines().any(|l| l.contains('█') || l.contains('▀') || l.contains('▄')),
        "the terminal QR code is drawn:\n{transcript}"
    );
    assert!(transcript.contains("Enter the two-digit code shown on the new device"), "{transcript}");
    let done = format!("Done: {} signed in as device ", s.signed_in.user_id);
    assert!(transcript.contains(&done), "{transcript}");
    let peer = peer.ok_or_else(|| anyhow!("the recipe saved no QR code:\n{transcript}"))?;
    peer.finish().await?.map_err(|e| anyhow!("new device: {e}"))?;
    peers::assert_verified_new_device(&new_device).await
}

fn write_atomically(path: &Path, text: &str) -> Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text)?;
    std::fs::rename(tmp, path)?;
    Ok(())
}

/// `examples/gjs/grant.js`, as a GNOME Shell extension calls the service.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gjs_recipe_grants_a_device() -> Result<()> {
    grant_with_recipe("/usr/bin/gjs", "examples/gjs/grant.js").await
}

/// `examples/python/grant.py` with Debian's PyGObject (not a venv's Python: it has no `gi`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_python_recipe_grants_a_device() -> Result<()> {
    grant_with_recipe("/usr/bin/python3", "examples/python/grant.py").await
}
