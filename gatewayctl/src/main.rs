//! gatewayctl: the operator's command line for gatewayd, over the gRPC admin API
//! (`gateway.admin.v1`). This file parses the arguments and dispatches to one module per
//! command group; `client` connects and explains failures, `output` prints tables and JSON.
//!
//! Exit codes: 0 on success, 1 when the command fails (one `gatewayctl: …` line on stderr),
//! 2 for bad arguments (clap's usage message).

mod budgets;
mod channels;
mod client;
mod cluster;
mod console;
mod deadletters;
mod events;
mod identities;
mod model;
mod outbox;
mod output;
mod pairing;
mod ratelimits;
mod runs;
mod sessions;
mod status;
mod usage;
mod workflows;

use std::process::ExitCode;

use clap::{CommandFactory, Parser, Subcommand};

use crate::client::Api;
use crate::output::Format;

/// Operate a running gatewayd over its admin API.
#[derive(Debug, Parser)]
#[command(name = "gatewayctl", version)]
struct Cli {
    /// gatewayd's admin API, as http://HOST:PORT.
    #[arg(
        long,
        long_help = "gatewayd's admin API as http://HOST:PORT: [admin] listen in its config",
        global = true,
        env = "GATEWAYCTL_ADDR",
        default_value = "http://127.0.0.1:50051",
        hide_env_values = true,
        value_name = "URL",
        value_parser = client::parse_addr,
        help_heading = "Global options"
    )]
    addr: String,

    /// Bearer token, when gatewayd requires one.
    #[arg(
        long,
        long_help = "Bearer token, when gatewayd requires one ([admin] token_env or\ntoken_file); sent as `authorization: Bearer <TOKEN>`, never printed",
        global = true,
        env = "GATEWAYCTL_TOKEN",
        hide_env_values = true,
        value_name = "TOKEN",
        help_heading = "Global options"
    )]
    token: Option<String>,

    /// Tables for people, or JSON for scripts.
    #[arg(
        long,
        long_help = "Tables for people (80 columns), or JSON for scripts: one document\nper command, one line per event; shapes in gatewayctl/README.md",
        global = true,
        value_enum,
        default_value_t = Format::Table,
        help_heading = "Global options"
    )]
    output: Format,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// The gateway at a glance: traffic, sessions, queues, channels.
    Status,
    /// Conversations: list, show with transcript, evict from memory.
    #[command(subcommand)]
    Sessions(sessions::Cmd),
    /// People and their addresses: list, show, link, unlink, block, unblock.
    #[command(subcommand)]
    Identities(identities::Cmd),
    /// Channel health and counters; reconnect a channel.
    #[command(subcommand)]
    Channels(channels::Cmd),
    /// Outbound rate-limit buckets per channel and the hottest chats.
    Ratelimits {
        /// Per-chat buckets to show per channel (server default 10).
        #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=1000))]
        hottest: Option<u32>,
    },
    /// Replies that could not be delivered: list, show, retry, drop.
    #[command(subcommand)]
    Deadletters(deadletters::Cmd),
    /// Replies in the outbox: their status and what the platform reported about them.
    #[command(subcommand)]
    Outbox(outbox::Cmd),
    /// DAG workflows: list, validate the files, start a run.
    #[command(subcommand)]
    Workflows(workflows::Cmd),
    /// Workflow runs: list, show one node by node.
    #[command(subcommand)]
    Runs(runs::Cmd),
    /// Follow the live event stream until interrupted (Ctrl-C).
    Events,
    /// The live operator console: every tab, actions with confirmation (`?` for keys).
    Console,
    /// LLM tokens per user, and today's use against the budgets.
    Usage {
        /// Only this user.
        #[arg(long, value_name = "USER_ID")]
        user: Option<i64>,
        /// The period back from now, e.g. 7d, 12h, 30m (default: the current UTC day).
        #[arg(long, value_name = "PERIOD", value_parser = usage::parse_since)]
        since: Option<u64>,
    },
    /// Per-user LLM budgets: set or clear a user's own limits.
    #[command(subcommand)]
    Budgets(budgets::Cmd),
    /// Senders waiting for approval: list, approve, deny.
    #[command(subcommand)]
    Pairing(pairing::Cmd),
    /// The cluster's instances: heartbeats, state, the partitions and leases each holds.
    Cluster {
        /// JSON for scripts (the same as `--output json`).
        #[arg(long)]
        json: bool,
    },
    /// Print a shell completion script (bash, zsh, fish, …).
    Completions {
        /// The shell.
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("gatewayctl: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        // The reader went away (`gatewayctl … | head`): nothing more to say.
        Err(e)
            if e.downcast_ref::<std::io::Error>()
                .is_some_and(|e| e.kind() == std::io::ErrorKind::BrokenPipe) =>
        {
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("gatewayctl: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let format = cli.output;
    if let Command::Completions { shell } = cli.command {
        let mut script = Vec::new();
        clap_complete::generate(shell, &mut Cli::command(), "gatewayctl", &mut script);
        return output::Out.line(String::from_utf8_lossy(&script).trim_end());
    }
    // The event stream (also followed by `workflows run --wait`) must not have a call timeout.
    let streaming = matches!(
        cli.command,
        Command::Events | Command::Workflows(workflows::Cmd::Run { wait: true, .. })
    );
    // The console connects (and reconnects) by itself, and starts even while gatewayd is down.
    if let Command::Console = cli.command {
        return console::run(cli.addr, cli.token).await;
    }
    let api = Api::connect(&cli.addr, cli.token.as_deref(), streaming).await?;
    match cli.command {
        Command::Status => status::run(api, format).await,
        Command::Sessions(cmd) => sessions::run(api, format, cmd).await,
        Command::Identities(cmd) => identities::run(api, format, cmd).await,
        Command::Channels(cmd) => channels::run(api, format, cmd).await,
        Command::Ratelimits { hottest } => ratelimits::run(api, format, hottest).await,
        Command::Deadletters(cmd) => deadletters::run(api, format, cmd).await,
        Command::Outbox(cmd) => outbox::run(api, format, cmd).await,
        Command::Workflows(cmd) => workflows::run(api, format, cmd).await,
        Command::Runs(cmd) => runs::run(api, format, cmd).await,
        Command::Events => events::run(api, format, &cli.addr).await,
        Command::Usage { user, since } => usage::run(api, format, user, since).await,
        Command::Budgets(cmd) => budgets::run(api, format, cmd).await,
        Command::Pairing(cmd) => pairing::run(api, format, cmd).await,
        Command::Cluster { json } => {
            let format = if json { Format::Json } else { format };
            cluster::run(api, format).await
        }
        Command::Completions { .. } | Command::Console => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("gatewayctl").chain(args.iter().copied()))
    }

    #[test]
    fn the_command_line_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn dead_letters_are_selected_by_ids_or_by_channel_never_both_nor_neither() {
        assert!(parse(&["deadletters", "retry", "1", "2"]).is_ok());
        assert!(parse(&["deadletters", "drop", "--channel", "http"]).is_ok());
        for bad in [
            &["deadletters", "retry"][..],
            &["deadletters", "retry", "1", "--channel", "http"],
            &["deadletters", "drop"],
            &["deadletters", "drop", "x"],
        ] {
            let err = parse(bad).expect_err("usage error");
            assert_eq!(err.exit_code(), 2, "{bad:?}");
        }
    }

    #[test]
    fn link_needs_exactly_one_of_user_or_address() {
        assert!(parse(&["identities", "link", "1", "--user", "2"]).is_ok());
        assert!(parse(&["identities", "link", "1", "--address", "http:bob"]).is_ok());
        for bad in [
            &["identities", "link", "1"][..],
            &[
                "identities",
                "link",
                "1",
                "--user",
                "2",
                "--address",
                "http:bob",
            ],
            &["identities", "link", "1", "--address", "bob"],
            &["identities", "unlink", "nochannel"],
        ] {
            assert_eq!(
                parse(bad).expect_err("usage error").exit_code(),
                2,
                "{bad:?}"
            );
        }
    }

    #[test]
    fn workflow_runs_take_repeated_inputs() {
        let cli = parse(&[
            "workflows",
            "run",
            "daily_report",
            "--input",
            "topic=Rust",
            "--input",
            "n=3",
            "--to",
            "webchat:ops:room",
            "--wait",
        ])
        .expect("ok");
        let Command::Workflows(workflows::Cmd::Run {
            name,
            inputs,
            wait,
            to,
        }) = cli.command
        else {
            panic!("parsed as workflows run");
        };
        assert_eq!(
            (name.as_str(), inputs.len(), wait, to.as_deref()),
            ("daily_report", 2, true, Some("webchat:ops:room"))
        );
        for bad in [
            &["workflows", "run"][..],
            &["workflows", "run", "x", "--input", "novalue"],
            &["workflows", "run", "x", "--to", "webchat"],
            &["workflows", "run", "x", "--to", ":1"],
            &["workflows", "run", "x", "--to", "http: "],
            &["runs", "show"],
            &["runs", "show", "x"],
            &["runs", "list", "--limit", "0"],
        ] {
            assert_eq!(
                parse(bad).expect_err("usage error").exit_code(),
                2,
                "{bad:?}"
            );
        }
        assert!(parse(&["runs", "list", "--workflow", "w", "--cursor", "9"]).is_ok());
        // The gateway, not gatewayctl, knows which channels exist.
        assert!(parse(&["workflows", "run", "x", "--to", "pigeon:1"]).is_ok());
    }

    #[test]
    fn global_options_go_anywhere() {
        let cli = parse(&["status", "--output", "json", "--addr", "127.0.0.1:1"]).expect("ok");
        assert_eq!(cli.output, Format::Json);
        assert_eq!(cli.addr, "http://127.0.0.1:1");
        assert!(parse(&["--addr", "https://x:1", "status"]).is_err());
        assert!(parse(&["sessions", "list", "--limit", "0"]).is_err());
    }
}
