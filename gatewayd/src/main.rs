//! The `gatewayd` binary: reads the configuration, sets up logging, runs the gateway until
//! SIGINT or SIGTERM, and offers `check-config` to validate a file without starting anything and
//! `migrate-store` to copy an SQLite store into PostgreSQL.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use gatewayd::config::Config;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::Layer;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

const DEFAULT_CONFIG: &str = "config/gatewayd.toml";

/// The gateway daemon: puts AI agents on chat channels.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    /// Configuration file [default: config/gatewayd.toml].
    #[arg(long, global = true, env = "GATEWAYD_CONFIG", value_name = "PATH")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Validate the configuration, print every error with its key path and line, and exit.
    CheckConfig,
    /// Copy an SQLite store into an empty PostgreSQL database, verify every table, and exit.
    /// Run it while gatewayd is stopped.
    MigrateStore {
        /// The store to copy: `sqlite:PATH`, or `sqlite` for the file `[store] path` names.
        #[arg(long, value_name = "sqlite:PATH")]
        from: String,
        /// Where to: `postgres` (the URL from `[store] url_env` or `url_file` of the
        /// configuration) or `postgres:URL`.
        #[arg(long, value_name = "postgres[:URL]")]
        to: String,
    },
}

fn load(path: &Path) -> Result<Config, ExitCode> {
    gatewayd::channels::registry::load_config(path).map_err(|errors| {
        eprint!("{errors}");
        ExitCode::from(2)
    })
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let path = cli
        .config
        .clone()
        .unwrap_or_else(|| PathBuf::from(DEFAULT_CONFIG));
    let config = match load(&path) {
        Ok(c) => c,
        Err(code) => return code,
    };
    if let Some(Command::CheckConfig) = cli.command {
        for warning in gatewayd::channels::registry::access_warnings(&config) {
            eprintln!("warning: {warning}");
        }
        return check_workflows(&config, &path);
    }
    if let Some(Command::MigrateStore { from, to }) = &cli.command {
        return migrate_store(&config, from, to);
    }
    let log_dir = config.log_dir();
    if let Err(e) = std::fs::create_dir_all(&log_dir) {
        eprintln!(
            "gatewayd: cannot create the log directory {}: {e}; check gateway.data_dir and log.dir",
            log_dir.display()
        );
        return ExitCode::FAILURE;
    }
    let file = tracing_appender::rolling::daily(&log_dir, "gatewayd.log");
    // 16 384 buffered lines (512 KiB) instead of the default 128 000 (4 MiB, allocated and
    // touched up front, a fifth of an idle gatewayd's memory). Lossy, as by default: a burst
    // that outruns the disk drops log lines rather than stalling the gateway.
    let (file, _guard) = tracing_appender::non_blocking::NonBlockingBuilder::default()
        .buffered_lines_limit(16_384)
        .thread_name("log-writer")
        .finish(file);
    let filter = || {
        EnvFilter::try_from_default_env()
            .or_else(|_| EnvFilter::try_new(&config.log.level))
            .unwrap_or_else(|_| EnvFilter::new("info"))
    };
    tracing_subscriber::registry()
        .with(
            tracing_subscriber::fmt::layer()
                .with_ansi(std::io::stderr().is_terminal())
                .with_writer(std::io::stderr)
                .with_filter(filter()),
        )
        .with(
            tracing_subscriber::fmt::layer()
                .with_ansi(false)
                .with_writer(file)
                .with_filter(filter()),
        )
        .init();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("gatewayd: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let path_text = path.display().to_string();
    let result = runtime.block_on(gatewayd::runtime::run(
        config,
        &path_text,
        shutdown_signal(),
    ));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(message = "gatewayd failed.", error = %format!("{e:#}"));
            eprintln!("gatewayd: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// The rest of `check-config`: every workflow file, against the built-in tools and the enabled
/// channels.
fn check_workflows(config: &Config, path: &Path) -> ExitCode {
    let dir = &config.workflows.dir;
    if !config.workflows.enabled || !dir.is_dir() {
        println!("{} is valid", path.display());
        return ExitCode::SUCCESS;
    }
    let known =
        gatewayd::workflow::validate::Known::builtin(gatewayd::channels::registry::enabled(config))
            .with_all_channels(gatewayd::channels::registry::names());
    let (workflows, errors) = gatewayd::workflow::validate::load_dir(dir, &known);
    if errors.is_empty() {
        println!(
            "{} is valid; {} workflow(s) in {} are valid",
            path.display(),
            workflows.len(),
            dir.display()
        );
        return ExitCode::SUCCESS;
    }
    eprintln!("{} has {} workflow error(s):", dir.display(), errors.len());
    for e in &errors {
        eprintln!("  {e}");
    }
    ExitCode::from(2)
}

/// `migrate-store`: copies the SQLite store `from` names into the PostgreSQL database `to`
/// names and prints what each table holds; exits 2 on a bad argument, 1 on a failed copy.
fn migrate_store(config: &Config, from: &str, to: &str) -> ExitCode {
    let source = match from.strip_prefix("sqlite:") {
        Some(path) if !path.is_empty() => PathBuf::from(path),
        _ if from == "sqlite" => config.database_path(),
        _ => {
            eprintln!(
                "gatewayd migrate-store: --from takes sqlite:PATH (or sqlite for [store] path), not `{from}`"
            );
            return ExitCode::from(2);
        }
    };
    let url = if to.starts_with("postgres://") || to.starts_with("postgresql://") {
        to.to_owned()
    } else if let Some(url) = to.strip_prefix("postgres:") {
        url.to_owned()
    } else if to == "postgres" {
        match config.store_url() {
            Ok(Some(url)) => url,
            Ok(None) => {
                eprintln!(
                    "gatewayd migrate-store: --to postgres takes the URL from [store] url_env or url_file, and neither is set; set one or write --to postgres:URL"
                );
                return ExitCode::from(2);
            }
            Err(e) => {
                eprintln!("gatewayd migrate-store: {e}");
                return ExitCode::from(2);
            }
        }
    } else {
        eprintln!(
            "gatewayd migrate-store: --to takes postgres (the [store] URL) or postgres:URL, not `{to}`"
        );
        return ExitCode::from(2);
    };
    let target = match gatewayd::store::postgres::parse_url(&url) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("gatewayd migrate-store: {e}");
            return ExitCode::from(2);
        }
    };
    let target_name = gatewayd::store::postgres::describe(&target);
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("gatewayd: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(gatewayd::store::postgres::migrate_from_sqlite(
        &source, target,
    )) {
        Ok(tables) => {
            println!("copied {} to {target_name}:", source.display());
            println!("  {:<18} {:>10}  checksum", "table", "rows");
            for t in &tables {
                println!("  {:<18} {:>10}  {}", t.table, t.rows, t.checksum);
            }
            println!("every table verified; set [store] backend = \"postgres\" and start gatewayd");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("gatewayd migrate-store: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn shutdown_signal() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        () = ctrl_c => tracing::info!(message = "SIGINT received."),
        () = term => tracing::info!(message = "SIGTERM received."),
    }
}
