//! `gatewayctl budgets`: set or clear one user's own LLM budget, in place of the user limits
//! of `[budgets]` (tokens per UTC day, turns per sliding 60 seconds).

use clap::Subcommand;
use gateway_proto::admin as pb;
use serde::Serialize;

use crate::client::Api;
use crate::output::{Format, Out};

/// `budgets …`.
#[derive(Debug, Subcommand)]
pub enum Cmd {
    /// Give USER limits of their own; a limit not given keeps USER's earlier override.
    Set {
        /// The user id.
        user_id: i64,
        /// Prompt plus completion tokens per UTC day.
        #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
        tokens_per_day: Option<u64>,
        /// Agent turns per sliding 60 seconds.
        #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
        turns_per_minute: Option<u64>,
    },
    /// Remove USER's own limits; the configured ones apply again.
    Clear {
        /// The user id.
        user_id: i64,
    },
}

/// A user's override in JSON.
#[derive(Debug, Serialize)]
struct Override {
    user_id: i64,
    tokens_per_day: Option<u64>,
    turns_per_minute: Option<u64>,
}

/// Runs `budgets …`.
pub async fn run(mut api: Api, format: Format, cmd: Cmd) -> anyhow::Result<()> {
    let (user_id, request) = match cmd {
        Cmd::Set {
            user_id,
            tokens_per_day,
            turns_per_minute,
        } => {
            if tokens_per_day.is_none() && turns_per_minute.is_none() {
                anyhow::bail!(
                    "say which limit to set: --tokens-per-day N and/or --turns-per-minute N (to remove USER's limits: gatewayctl budgets clear {user_id})"
                );
            }
            (
                user_id,
                pb::SetBudgetRequest {
                    user_id,
                    tokens_per_day,
                    turns_per_minute,
                    clear: false,
                },
            )
        }
        Cmd::Clear { user_id } => (
            user_id,
            pb::SetBudgetRequest {
                user_id,
                tokens_per_day: None,
                turns_per_minute: None,
                clear: true,
            },
        ),
    };
    let r = api
        .client
        .set_budget(request)
        .await
        .map_err(|s| api.error(s))?
        .into_inner();
    let o = Override {
        user_id,
        tokens_per_day: r.tokens_per_day,
        turns_per_minute: r.turns_per_minute,
    };
    let out = Out;
    if format == Format::Json {
        return out.json(&o);
    }
    let show = |v: Option<u64>| v.map_or_else(|| "configured".to_owned(), |n| n.to_string());
    out.field("user", o.user_id.to_string())?;
    out.field("tokens per day", show(o.tokens_per_day))?;
    out.field("turns per minute", show(o.turns_per_minute))
}
