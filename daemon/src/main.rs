//! `matrix-linkd`: the daemon binary.

use std::{process::ExitCode, sync::Arc};

use clap::Parser;
use matrix_linkd::{
    account::{Account, InstanceLock},
    cli::Args,
    config::{self, Config, Source},
    dbus::{self, Context},
    protocol::{AccountPort, Engine, engine::OwnEngine},
};
use tracing::{error, info};

fn main() -> ExitCode {
    let args = Args::parse();
    let loaded = match &args.config {
        Some(path) => Config::load_file(path).map(|c| (c, Source::File(path.clone()))),
        None => Config::load_default(),
    };
    let (cfg, source) = match loaded {
        Ok(v) => v,
        Err(e) => {
            eprintln!("matrix-linkd: configuration error: {e}");
            return ExitCode::from(2);
        }
    };
    if args.check_config {
        println!("configuration OK ({source})");
        return ExitCode::SUCCESS;
    }
    matrix_linkd::logging::init(args.log_level.unwrap_or(cfg.log_level));
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("matrix-linkd: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(run(cfg, source))
}

async fn run(cfg: Config, source: Source) -> ExitCode {
    info!(config = %source, version = env!("CARGO_PKG_VERSION"), "starting");
    let cfg = Arc::new(cfg);
    let engine: Arc<dyn Engine> = Arc::new(OwnEngine::new(&cfg.oauth, cfg.security.reach()));
    let data_dir = config::data_dir();
    // One daemon per data directory, whatever bus it is on; then one per bus.
    let _lock = match InstanceLock::acquire(&data_dir) {
        Ok(lock) => lock,
        Err(e) => {
            error!("{e}; exiting");
            return ExitCode::from(ALREADY_RUNNING);
        }
    };
    let account = Account::new(&data_dir);
    let ctx = Context::new(cfg, account.clone(), engine);
    let conn = match dbus::serve(ctx.clone()).await {
        Ok(c) => c,
        Err(e @ dbus::ServeError::NameTaken) => {
            error!("{e}; exiting");
            return ExitCode::from(ALREADY_RUNNING);
        }
        Err(e) => {
            error!(error = %e, "cannot serve on the session bus");
            return ExitCode::FAILURE;
        }
    };
    // Flows a killed daemon left: their rendezvous sessions, codes and tokens (`protocol::intent`).
    let (recovering, left): (_, Arc<dyn AccountPort>) = (ctx.engine.clone(), account.clone());
    tokio::spawn(async move { recovering.recover(left).await });
    tokio::spawn(async move { account.restore().await });

    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            error!(error = %e, "cannot watch SIGTERM");
            return ExitCode::FAILURE;
        }
    };
    let code = tokio::select! {
        _ = term.recv() => { info!("SIGTERM"); ExitCode::SUCCESS }
        _ = tokio::signal::ctrl_c() => { info!("SIGINT"); ExitCode::SUCCESS }
        why = dbus::name_lost(&conn) => { error!("{why}; telling the other devices and exiting"); ExitCode::FAILURE }
    };
    dbus::shutdown(&conn, &ctx, SHUTDOWN_LIMIT).await;
    info!("stopped");
    code
}

/// Exit status when another daemon already serves this data directory or bus name.
const ALREADY_RUNNING: u8 = 3;
/// How long shutdown may take to tell the other devices and delete rendezvous sessions.
const SHUTDOWN_LIMIT: std::time::Duration = std::time::Duration::from_secs(10);
