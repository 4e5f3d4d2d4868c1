//! The `gatewayd` binary: reads the configuration, sets up logging, runs the gateway until
//! SIGINT or SIGTERM, and offers `check-config` to validate a file without starting anything.

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
