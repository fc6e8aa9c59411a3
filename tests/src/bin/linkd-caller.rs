//! A bare D-Bus caller for the sandbox tests: calls `Manager.StartGrant` (or `StartLogin`) with
//! empty options and prints the D-Bus error name, or `OK <flow path>`, on stdout. The tests run it
//! inside fake sandboxes (a chroot with a `/.flatpak-info`, a Flatpak-named cgroup) or as a
//! non-dumpable process.
//!
//! `linkd-caller --address <bus address> [--method StartGrant|StartLogin] [--non-dumpable]`

use std::{collections::HashMap, process::ExitCode};

use anyhow::{Context as _, Result, bail};
use matrix_linkd_tests::{BUS_NAME, MANAGER_PATH};
use zbus::zvariant::{OwnedObjectPath, Value};

const MANAGER_IFACE: &str = "io.github.matrix_linkd.Linkd1.Manager";

struct Args {
    address: String,
    method: String,
    non_dumpable: bool,
}

fn args() -> Result<Args> {
    let mut address = std::env::var("DBUS_SESSION_BUS_ADDRESS").ok();
    let mut method = "StartGrant".to_owned();
    let mut non_dumpable = false;
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--address" => address = Some(it.next().context("--address needs a value")?),
            "--method" => method = it.next().context("--method needs a value")?,
            "--non-dumpable" => non_dumpable = true,
            other => bail!("unknown argument `{other}`"),
        }
    }
    Ok(Args {
        address: address.context("no --address and no DBUS_SESSION_BUS_ADDRESS")?,
        method,
        non_dumpable,
    })
}

async fn run() -> Result<String> {
    let args = args()?;
    if args.non_dumpable {
        // Makes /proc/<pid>/root (and other ptrace-guarded entries) unreadable to processes
        // without CAP_SYS_PTRACE, even of the same user.
        rustix::process::set_dumpable_behavior(rustix::process::DumpableBehavior::NotDumpable)?;
    }
    let conn = zbus::connection::Builder::address(args.address.as_str())?.build().await?;
    let options: HashMap<&str, Value<'_>> = HashMap::new();
    let reply = conn
        .call_method(Some(BUS_NAME), MANAGER_PATH, Some(MANAGER_IFACE), args.method.as_str(), &(options,))
        .await;
    Ok(match reply {
        Ok(msg) => format!("OK {}", msg.body().deserialize::<OwnedObjectPath>()?.as_str()),
        Err(zbus::Error::MethodError(name, text, _)) => {
            eprintln!("{name}: {}", text.unwrap_or_default());
            name.to_string()
        }
        Err(e) => return Err(e.into()),
    })
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    match run().await {
        Ok(line) => {
            println!("{line}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("linkd-caller: {e:#}");
            ExitCode::FAILURE
        }
    }
}
