//! A bare D-Bus caller for the sandbox tests: calls `Manager.StartGrant` (or another `Start*`) with
//! the given string options and prints the D-Bus error name, or `OK <flow path>`, on stdout, then
//! stays on the bus for `--hold` seconds (its flow lives as long). The tests run it inside fake
//! sandboxes (a chroot with a `/.flatpak-info`, a Flatpak-named cgroup) or as a non-dumpable
//! process.
//!
//! `linkd-caller --address <bus address> [--method StartGrant|StartLogin|StartDelegation|
//!  ListDelegations|RevokeDelegation|SignOut] [--option key=value|key=b:true]... [--arg STRING]
//!  [--get PROPERTY] [--introspect PATH] [--hold SECS] [--non-dumpable]`
//!
//! `ListDelegations` prints `OK <number of devices>`, `RevokeDelegation` (`--arg` the device)
//! `OK <how>`, `SignOut` `OK`, `--get` (a Manager property, instead of a method) `OK <value>`,
//! `--introspect` (instead of a method) `OK <the names of the nodes in the description, comma-separated>`.

use std::{collections::HashMap, process::ExitCode};

use anyhow::{Context as _, Result, bail};
use matrix_linkd_tests::{BUS_NAME, MANAGER_PATH, api::MANAGER_INTERFACE};
use zbus::zvariant::{OwnedObjectPath, Value};

struct Args {
    address: String,
    method: String,
    options: Vec<(String, String)>,
    arg: Option<String>,
    get: Option<String>,
    introspect: Option<String>,
    hold: u64,
    non_dumpable: bool,
}

fn args() -> Result<Args> {
    let mut address = std::env::var("DBUS_SESSION_BUS_ADDRESS").ok();
    let mut method = "StartGrant".to_owned();
    let mut non_dumpable = false;
    let mut options = Vec::new();
    let mut hold = 0;
    let (mut device, mut get, mut introspect) = (None, None, None);
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--address" => address = Some(it.next().context("--address needs a value")?),
            "--method" => method = it.next().context("--method needs a value")?,
            "--non-dumpable" => non_dumpable = true,
            "--option" => {
                let pair = it.next().context("--option needs key=value")?;
                let (k, v) = pair.split_once('=').context("--option needs key=value")?;
                options.push((k.to_owned(), v.to_owned()));
            }
            "--arg" => device = Some(it.next().context("--arg needs a value")?),
            "--get" => get = Some(it.next().context("--get needs a property")?),
            "--introspect" => introspect = Some(it.next().context("--introspect needs a path")?),
            "--hold" => hold = it.next().context("--hold needs seconds")?.parse()?,
            other => bail!("unknown argument `{other}`"),
        }
    }
    Ok(Args {
        address: address.context("no --address and no DBUS_SESSION_BUS_ADDRESS")?,
        method,
        options,
        arg: device,
        get,
        introspect,
        hold,
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
    let options: HashMap<&str, Value<'_>> = args
        .options
        .iter()
        .map(|(k, v)| {
            let value = match v.as_str() {
                "b:true" => Value::from(true),
                "b:false" => Value::from(false),
                v => Value::from(v),
            };
            (k.as_str(), value)
        })
        .collect();
    let reply = if let Some(path) = &args.introspect {
        let iface = "org.freedesktop.DBus.Introspectable";
        conn.call_method(Some(BUS_NAME), path.as_str(), Some(iface), "Introspect", &()).await
    } else if let Some(property) = &args.get {
        let properties = "org.freedesktop.DBus.Properties";
        let body = (MANAGER_INTERFACE, property.as_str());
        conn.call_method(Some(BUS_NAME), MANAGER_PATH, Some(properties), "Get", &body).await
    } else {
        let method = args.method.as_str();
        match method {
            "ListDelegations" | "SignOut" => {
                conn.call_method(Some(BUS_NAME), MANAGER_PATH, Some(MANAGER_INTERFACE), method, &()).await
            }
            "RevokeDelegation" => {
                let device = args.arg.clone().unwrap_or_default();
                conn.call_method(Some(BUS_NAME), MANAGER_PATH, Some(MANAGER_INTERFACE), method, &(device,))
                    .await
            }
            _ => {
                conn.call_method(Some(BUS_NAME), MANAGER_PATH, Some(MANAGER_INTERFACE), method, &(options,))
                    .await
            }
        }
    };
    let line = match reply {
        Ok(msg) if args.introspect.is_some() => {
            let xml: String = msg.body().deserialize()?;
            let nodes: Vec<&str> =
                xml.split("<node name=\"").skip(1).filter_map(|rest| rest.split('"').next()).collect();
            format!("OK {}", nodes.join(","))
        }
        Ok(msg) if args.get.is_some() => {
            format!("OK {:?}", msg.body().deserialize::<zbus::zvariant::OwnedValue>()?)
        }
        Ok(msg) => match args.method.as_str() {
            "ListDelegations" => {
                format!("OK {}", msg.body().deserialize::<Vec<(String, String, String, u64)>>()?.len())
            }
            "SignOut" => "OK".to_owned(),
            "RevokeDelegation" => format!("OK {}", msg.body().deserialize::<String>()?),
            _ => format!("OK {}", msg.body().deserialize::<OwnedObjectPath>()?.as_str()),
        },
        Err(zbus::Error::MethodError(name, text, _)) => {
            eprintln!("{name}: {}", text.unwrap_or_default());
            name.to_string()
        }
        Err(e) => return Err(e.into()),
    };
    if args.hold > 0 {
        println!("{line}");
        tokio::time::sleep(std::time::Duration::from_secs(args.hold)).await;
        return Ok(String::new());
    }
    Ok(line)
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
