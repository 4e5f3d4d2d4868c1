//! `gatewayctl deadletters`: replies that could not be delivered — list them (oldest first),
//! show one with every failed attempt, and retry or drop them by id or by channel.

use clap::{ArgGroup, Args, Subcommand};
use gateway_proto::admin as pb;
use serde::Serialize;

use crate::client::Api;
use crate::model::{Channel, ErrorClass, channel_filter, channel_or};
use crate::output::{Format, Out, Table, ago, now_ms, text, time, utc};

/// `deadletters …`.
#[derive(Debug, Subcommand)]
pub enum Cmd {
    /// List dead letters, oldest first.
    List {
        /// Only this channel.
        #[arg(long, value_name = "CHANNEL")]
        channel: Option<Channel>,
        /// Most dead letters per page (server default 100).
        #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=1000))]
        limit: Option<u32>,
        /// Start after this cursor (the `next_cursor` of the previous page).
        #[arg(long, value_name = "C")]
        cursor: Option<String>,
    },
    /// Show one dead letter with its error history.
    Show {
        /// The dead letter's id.
        id: i64,
    },
    /// Put dead letters back in the delivery queue.
    Retry(Selector),
    /// Drop dead letters (kept in the database as dropped).
    Drop(Selector),
}

/// Which dead letters: some ids, or every one of a channel.
#[derive(Debug, Args)]
#[command(group(ArgGroup::new("which").required(true).args(["ids", "channel"])))]
pub struct Selector {
    /// These dead letters.
    #[arg(value_name = "ID")]
    ids: Vec<i64>,
    /// Every dead letter of this channel.
    #[arg(long, value_name = "CHANNEL")]
    channel: Option<Channel>,
}

impl Selector {
    fn to_pb(&self) -> pb::DeadLetterSelector {
        use pb::dead_letter_selector::Selector as S;
        pb::DeadLetterSelector {
            selector: Some(match &self.channel {
                Some(c) => S::Channel(c.to_pb()),
                None => S::Ids(pb::Ids {
                    ids: self.ids.clone(),
                }),
            }),
        }
    }
}

/// One dead letter in JSON.
#[derive(Debug, Serialize)]
struct DeadLetter {
    id: i64,
    channel: Option<Channel>,
    chat_id: String,
    text: String,
    reply_to: Option<String>,
    attempts: u32,
    last_error: String,
    error_class: ErrorClass,
    created_at_ms: Option<i64>,
    dead_at_ms: Option<i64>,
}

impl DeadLetter {
    fn from_pb(d: &pb::DeadLetter) -> Self {
        Self {
            id: d.id,
            channel: Channel::from_pb(&d.channel),
            chat_id: d.chat_id.clone(),
            text: d.text.clone(),
            reply_to: text(&d.reply_to),
            attempts: d.attempts,
            last_error: d.last_error.clone(),
            error_class: ErrorClass::from_pb(d.error_class),
            created_at_ms: time(d.created_at_ms),
            dead_at_ms: time(d.dead_at_ms),
        }
    }
}

/// `deadletters list` in JSON.
#[derive(Debug, Serialize)]
struct DeadLetterList {
    dead_letters: Vec<DeadLetter>,
    next_cursor: Option<String>,
    total: u64,
}

/// One failed attempt in JSON.
#[derive(Debug, Serialize)]
struct Attempt {
    attempt: u32,
    at_ms: i64,
    error_class: ErrorClass,
    error: String,
}

/// `deadletters show` in JSON.
#[derive(Debug, Serialize)]
struct DeadLetterShow {
    dead_letter: DeadLetter,
    errors: Vec<Attempt>,
}

/// `deadletters retry` in JSON.
#[derive(Debug, Serialize)]
struct Retried {
    retried: u64,
}

/// `deadletters drop` in JSON.
#[derive(Debug, Serialize)]
struct Dropped {
    dropped: u64,
}

/// Runs `deadletters …`.
pub async fn run(mut api: Api, format: Format, cmd: Cmd) -> anyhow::Result<()> {
    let out = Out;
    let now = now_ms();
    match cmd {
        Cmd::List {
            channel,
            limit,
            cursor,
        } => {
            let r = api
                .client
                .list_dead_letters(pb::ListDeadLettersRequest {
                    cursor: cursor.unwrap_or_default(),
                    limit: limit.unwrap_or(0),
                    channel: channel_filter(channel.as_ref()),
                })
                .await
                .map_err(|s| api.error(s))?
                .into_inner();
            let list = DeadLetterList {
                dead_letters: r.dead_letters.iter().map(DeadLetter::from_pb).collect(),
                next_cursor: text(&r.next_cursor),
                total: r.total,
            };
            if format == Format::Json {
                return out.json(&list);
            }
            let mut t = Table::new(&[
                "ID",
                "CHANNEL",
                "CHAT",
                "CLASS",
                "TRIES",
                "DIED",
                "LAST ERROR",
            ]);
            for d in &list.dead_letters {
                t.row(vec![
                    d.id.to_string(),
                    channel_or(d.channel.as_ref(), "?").to_owned(),
                    d.chat_id.clone(),
                    d.error_class.name().to_owned(),
                    d.attempts.to_string(),
                    ago(d.dead_at_ms.unwrap_or(0), now),
                    d.last_error.clone(),
                ]);
            }
            if !t.is_empty() {
                out.table(&t)?;
            }
            out.line(format!("{} dead letter(s) in all", list.total))?;
            if let Some(next) = list.next_cursor {
                out.line(format!("more: --cursor {next}"))?;
            }
            Ok(())
        }
        Cmd::Show { id } => {
            let r = api
                .client
                .get_dead_letter(pb::GetDeadLetterRequest { id })
                .await
                .map_err(|s| api.error(s))?
                .into_inner();
            let dead_letter = r
                .dead_letter
                .as_ref()
                .map(DeadLetter::from_pb)
                .ok_or_else(|| anyhow::anyhow!("gatewayd sent no dead letter {id}"))?;
            let show = DeadLetterShow {
                dead_letter,
                errors: r
                    .errors
                    .iter()
                    .map(|e| Attempt {
                        attempt: e.attempt,
                        at_ms: e.at_ms,
                        error_class: ErrorClass::from_pb(e.error_class),
                        error: e.error.clone(),
                    })
                    .collect(),
            };
            if format == Format::Json {
                return out.json(&show);
            }
            let d = &show.dead_letter;
            let when = |ms: Option<i64>| ms.map_or("-".to_owned(), |ms| utc(ms, false));
            out.field("dead letter", d.id.to_string())?;
            out.field("channel", channel_or(d.channel.as_ref(), "?"))?;
            out.field("chat", &d.chat_id)?;
            out.field("reply to", d.reply_to.as_deref().unwrap_or("-"))?;
            out.field("created", when(d.created_at_ms))?;
            out.field("died", when(d.dead_at_ms))?;
            out.field("attempts", d.attempts.to_string())?;
            out.field("class", d.error_class.name())?;
            out.field("last error", &d.last_error)?;
            out.field("text", &d.text)?;
            out.line("")?;
            let mut t = Table::new(&["ATTEMPT", "WHEN", "CLASS", "ERROR"]).wrap_last();
            for e in &show.errors {
                t.row(vec![
                    e.attempt.to_string(),
                    utc(e.at_ms, false),
                    e.error_class.name().to_owned(),
                    e.error.clone(),
                ]);
            }
            out.table(&t)
        }
        Cmd::Retry(selector) => {
            let retried = api
                .client
                .retry_dead_letters(pb::RetryDeadLettersRequest {
                    selector: Some(selector.to_pb()),
                })
                .await
                .map_err(|s| api.error(s))?
                .into_inner()
                .retried;
            if format == Format::Json {
                return out.json(&Retried { retried });
            }
            out.line(format!(
                "retried {retried} dead letter(s); they are back in the delivery queue"
            ))
        }
        Cmd::Drop(selector) => {
            let dropped = api
                .client
                .drop_dead_letters(pb::DropDeadLettersRequest {
                    selector: Some(selector.to_pb()),
                })
                .await
                .map_err(|s| api.error(s))?
                .into_inner()
                .dropped;
            if format == Format::Json {
                return out.json(&Dropped { dropped });
            }
            out.line(format!("dropped {dropped} dead letter(s)"))
        }
    }
}
