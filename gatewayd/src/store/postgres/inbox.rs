//! The inbox in PostgreSQL: committing inbound messages, deduplicated by
//! `(channel, channel_message_id)` with `INSERT ... ON CONFLICT DO NOTHING`, and reading the
//! ones without a finished turn.
//!
//! A message is durable once [`commit`] returns: the insert is its own transaction, committed
//! with `synchronous_commit = on`. A repeat of the same pair, from this instance or another, is
//! reported as a duplicate of the first row instead of being stored again.

use tokio_postgres::Row;

use super::{PostgresStore, col, db};
use crate::message::{ChatType, InboundMessage};
use crate::store::{InboxOutcome, PendingInbound, StoreError, parse_channel};

pub(super) async fn commit(
    store: &PostgresStore,
    msg: &InboundMessage,
) -> Result<InboxOutcome, StoreError> {
    let attachments = if msg.attachments.is_empty() {
        None
    } else {
        Some(
            serde_json::to_string(&msg.attachments)
                .map_err(|e| StoreError::Database(format!("cannot encode attachments: {e}")))?,
        )
    };
    let client = store.client().await?;
    let insert = client
        .prepare_cached(
            "INSERT INTO inbox
             (channel, channel_message_id, chat_id, chat_type, sender_id, text, received_at,
              reply_to, attachments, sender_name, mentioned)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)
             ON CONFLICT (channel, channel_message_id) DO NOTHING
             RETURNING id",
        )
        .await
        .map_err(db)?;
    let select = client
        .prepare_cached("SELECT id FROM inbox WHERE channel = $1 AND channel_message_id = $2")
        .await
        .map_err(db)?;
    // Twice at most: the first row may be pruned between the insert and the select.
    for _ in 0..2 {
        let inserted = client
            .query_opt(
                &insert,
                &[
                    &msg.channel.as_str(),
                    &msg.channel_message_id,
                    &msg.chat_id,
                    &msg.chat_type.as_str(),
                    &msg.sender_id,
                    &msg.text,
                    &msg.received_at_ms,
                    &msg.reply_to,
                    &attachments,
                    &msg.sender_name,
                    &msg.mentioned,
                ],
            )
            .await
            .map_err(db)?;
        if let Some(row) = inserted {
            return Ok(InboxOutcome::New(col(&row, 0)?));
        }
        let existing = client
            .query_opt(&select, &[&msg.channel.as_str(), &msg.channel_message_id])
            .await
            .map_err(db)?;
        if let Some(row) = existing {
            return Ok(InboxOutcome::Duplicate(col(&row, 0)?));
        }
    }
    Err(StoreError::Database(format!(
        "inbox row ({}, {}) neither inserted nor found",
        msg.channel, msg.channel_message_id
    )))
}

/// The columns [`pending_from`] reads, in order.
pub(super) const PENDING_COLUMNS: &str = "id, channel, channel_message_id, chat_id, chat_type, \
     sender_id, text, received_at, reply_to, attachments, sender_name, mentioned";

/// Pending inbox rows, oldest first; only those of `ids` when given.
pub(super) async fn pending(
    store: &PostgresStore,
    ids: Option<&[i64]>,
) -> Result<Vec<PendingInbound>, StoreError> {
    let client = store.client().await?;
    let rows = match ids {
        None => {
            client
                .query(
                    &format!("SELECT {PENDING_COLUMNS} FROM inbox WHERE NOT done ORDER BY id"),
                    &[],
                )
                .await
        }
        Some(ids) => {
            client
                .query(
                    &format!(
                        "SELECT {PENDING_COLUMNS} FROM inbox WHERE NOT done AND id = ANY($1)
                         ORDER BY id"
                    ),
                    &[&ids],
                )
                .await
        }
    }
    .map_err(db)?;
    rows.iter().map(pending_from).collect()
}

pub(super) fn pending_from(r: &Row) -> Result<PendingInbound, StoreError> {
    let id: i64 = col(r, 0)?;
    let channel: String = col(r, 1)?;
    let chat_type: String = col(r, 4)?;
    let attachments: Option<String> = col(r, 9)?;
    let attachments = match attachments {
        Some(json) => serde_json::from_str(&json).map_err(|e| {
            StoreError::Database(format!("corrupt attachments of inbox row {id}: {e}"))
        })?,
        None => Vec::new(),
    };
    Ok(PendingInbound {
        inbox_id: id,
        message: InboundMessage {
            channel: parse_channel(&channel)?,
            channel_message_id: col(r, 2)?,
            chat_id: col(r, 3)?,
            chat_type: chat_type
                .parse::<ChatType>()
                .map_err(StoreError::Database)?,
            sender_id: col(r, 5)?,
            sender_name: col(r, 10)?,
            text: col(r, 6)?,
            reply_to: col(r, 8)?,
            attachments,
            received_at_ms: col(r, 7)?,
            mentioned: col(r, 11)?,
        },
    })
}

pub(super) async fn counts(store: &PostgresStore) -> Result<(u64, u64, u64), StoreError> {
    let client = store.client().await?;
    let row = client
        .query_one(
            "SELECT (SELECT COUNT(*) FROM inbox WHERE NOT done),
                (SELECT COUNT(*) FROM outbox WHERE status = 'pending'),
                (SELECT COUNT(*) FROM outbox WHERE status = 'dead')",
            &[],
        )
        .await
        .map_err(db)?;
    Ok((
        col::<i64>(&row, 0)?.unsigned_abs(),
        col::<i64>(&row, 1)?.unsigned_abs(),
        col::<i64>(&row, 2)?.unsigned_abs(),
    ))
}
