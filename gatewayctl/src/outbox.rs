//! `gatewayctl outbox list`: the replies in the outbox, oldest first, with their delivery
//! status and what the platform later reported about them (a receipt: sent, delivered, read or
//! failed, for channels that report one, such as WhatsApp).

use clap::ValueEnum;
use gateway_proto::admin as pb;
use serde::Serialize;

use crate::client::Api;
use crate::model::{Channel, ErrorClass, channel_filter, channel_or};
use crate::output::{Format, Out, Table, ago, now_ms, text, time};

/// `outbox …`.
#[derive(Debug, clap::Subcommand)]
pub enum Cmd {
    /// List outbox rows, oldest first.
    List {
        /// Only this channel.
        #[arg(long, value_name = "CHANNEL")]
        channel: Option<Channel>,
        /// Only this chat.
        #[arg(long, value_name = "CHAT")]
        chat: Option<String>,
        /// Only rows with this status.
        #[arg(long, value_enum, value_name = "STATUS")]
        status: Option<Status>,
        /// Most rows per page (server default 100).
        #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=1000))]
        limit: Option<u32>,
        /// Start after this cursor (the `next_cursor` of the previous page).
        #[arg(long, value_name = "C")]
        cursor: Option<String>,
    },
}

/// An outbox row's status, as `--status` takes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Still to send.
    Pending,
    /// Sent.
    Delivered,
    /// A dead letter.
    Dead,
    /// A dead letter that was dropped.
    Dropped,
}

impl Status {
    fn to_pb(self) -> pb::OutboxStatus {
        match self {
            Self::Pending => pb::OutboxStatus::Pending,
            Self::Delivered => pb::OutboxStatus::Delivered,
            Self::Dead => pb::OutboxStatus::Dead,
            Self::Dropped => pb::OutboxStatus::Dropped,
        }
    }

    fn from_pb(value: i32) -> Option<Self> {
        match pb::OutboxStatus::try_from(value).ok()? {
            pb::OutboxStatus::Pending => Some(Self::Pending),
            pb::OutboxStatus::Delivered => Some(Self::Delivered),
            pb::OutboxStatus::Dead => Some(Self::Dead),
            pb::OutboxStatus::Dropped => Some(Self::Dropped),
            pb::OutboxStatus::Unspecified => None,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Delivered => "delivered",
            Self::Dead => "dead",
            Self::Dropped => "dropped",
        }
    }
}

/// What the platform reported about a reply it accepted.
fn receipt_name(value: i32) -> Option<&'static str> {
    match pb::ReceiptStatus::try_from(value).ok()? {
        pb::ReceiptStatus::Sent => Some("sent"),
        pb::ReceiptStatus::Delivered => Some("delivered"),
        pb::ReceiptStatus::Read => Some("read"),
        pb::ReceiptStatus::Failed => Some("failed"),
        pb::ReceiptStatus::Unspecified => None,
    }
}

/// One outbox row in JSON.
#[derive(Debug, Serialize)]
struct Entry {
    id: i64,
    inbox_id: Option<i64>,
    channel: Option<Channel>,
    chat_id: String,
    text: String,
    reply_to: Option<String>,
    status: Option<Status>,
    attempts: u32,
    chunks_sent: u32,
    last_error: Option<String>,
    error_class: ErrorClass,
    receipt_status: Option<&'static str>,
    receipt_error: Option<String>,
    created_at_ms: Option<i64>,
    updated_at_ms: Option<i64>,
}

impl Entry {
    fn from_pb(e: &pb::OutboxEntry) -> Self {
        Self {
            id: e.id,
            inbox_id: (e.inbox_id > 0).then_some(e.inbox_id),
            channel: Channel::from_pb(&e.channel),
            chat_id: e.chat_id.clone(),
            text: e.text.clone(),
            reply_to: text(&e.reply_to),
            status: Status::from_pb(e.status),
            attempts: e.attempts,
            chunks_sent: e.chunks_sent,
            last_error: text(&e.last_error),
            error_class: ErrorClass::from_pb(e.error_class),
            receipt_status: receipt_name(e.receipt_status),
            receipt_error: text(&e.receipt_error),
            created_at_ms: time(e.created_at_ms),
            updated_at_ms: time(e.updated_at_ms),
        }
    }
}

/// `outbox list` in JSON.
#[derive(Debug, Serialize)]
struct EntryList {
    entries: Vec<Entry>,
    next_cursor: Option<String>,
}

/// Runs `outbox …`.
pub async fn run(mut api: Api, format: Format, cmd: Cmd) -> anyhow::Result<()> {
    let out = Out;
    let now = now_ms();
    let Cmd::List {
        channel,
        chat,
        status,
        limit,
        cursor,
    } = cmd;
    let r = api
        .client
        .list_outbox(pb::ListOutboxRequest {
            cursor: cursor.unwrap_or_default(),
            limit: limit.unwrap_or(0),
            channel: channel_filter(channel.as_ref()),
            chat_id: chat.unwrap_or_default(),
            status: status.map_or(pb::OutboxStatus::Unspecified, Status::to_pb) as i32,
            include_errors: false,
        })
        .await
        .map_err(|s| api.error(s))?
        .into_inner();
    let list = EntryList {
        entries: r.entries.iter().map(Entry::from_pb).collect(),
        next_cursor: text(&r.next_cursor),
    };
    if format == Format::Json {
        return out.json(&list);
    }
    let mut t = Table::new(&[
        "ID", "CHANNEL", "CHAT", "STATUS", "TRIES", "RECEIPT", "CHANGED", "ERROR",
    ]);
    for e in &list.entries {
        let error = e
            .receipt_error
            .as_deref()
            .or(e.last_error.as_deref())
            .unwrap_or("-");
        t.row(vec![
            e.id.to_string(),
            channel_or(e.channel.as_ref(), "?").to_owned(),
            e.chat_id.clone(),
            e.status.map_or("?", Status::name).to_owned(),
            e.attempts.to_string(),
            e.receipt_status.unwrap_or("-").to_owned(),
            ago(e.updated_at_ms.unwrap_or(0), now),
            error.to_owned(),
        ]);
    }
    if t.is_empty() {
        out.line("no outbox rows")?;
    } else {
        out.table(&t)?;
    }
    if let Some(next) = list.next_cursor {
        out.line(format!("more: --cursor {next}"))?;
    }
    Ok(())
}
