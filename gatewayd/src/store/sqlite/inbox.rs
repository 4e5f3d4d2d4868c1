//! The inbox: committing inbound messages, deduplicated by `(channel, channel_message_id)`, and
//! reading the ones without a finished turn.
//!
//! A message is durable once [`commit`] returns. A repeat of the same pair is reported as a
//! duplicate of the first row instead of being stored again, for as long as the first row is
//! kept (the dedupe window).

use rusqlite::params;

use super::{SqliteStore, db};
use crate::message::{ChatType, InboundMessage};
use crate::store::{InboxOutcome, PendingInbound, StoreError, parse_channel};

pub(super) async fn commit(
    store: &SqliteStore,
    msg: &InboundMessage,
) -> Result<InboxOutcome, StoreError> {
    let msg = msg.clone();
    let attachments = if msg.attachments.is_empty() {
        None
    } else {
        Some(
            serde_json::to_string(&msg.attachments)
                .map_err(|e| StoreError::Database(format!("cannot encode attachments: {e}")))?,
        )
    };
    store
        .write(move |conn| {
            let inserted = conn
                .prepare_cached(
                    "INSERT OR IGNORE INTO inbox
                 (channel, channel_message_id, chat_id, chat_type, sender_id, text, received_at,
                  reply_to, attachments, sender_name, mentioned)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
                )
                .and_then(|mut s| {
                    s.execute(params![
                        msg.channel.as_str(),
                        msg.channel_message_id,
                        msg.chat_id,
                        msg.chat_type.as_str(),
                        msg.sender_id,
                        msg.text,
                        msg.received_at_ms,
                        msg.reply_to,
                        attachments,
                        msg.sender_name,
                        msg.mentioned
                    ])
                })
                .map_err(db)?;
            if inserted == 1 {
                return Ok(InboxOutcome::New(conn.last_insert_rowid()));
            }
            conn.prepare_cached(
                "SELECT id FROM inbox WHERE channel = ?1 AND channel_message_id = ?2",
            )
            .and_then(|mut s| {
                s.query_row(params![msg.channel.as_str(), msg.channel_message_id], |r| {
                    r.get(0)
                })
            })
            .map(InboxOutcome::Duplicate)
            .map_err(db)
        })
        .await
}

pub(super) async fn pending(store: &SqliteStore) -> Result<Vec<PendingInbound>, StoreError> {
    store.read(|conn| {
        let mut stmt = conn
            .prepare(
                "SELECT id, channel, channel_message_id, chat_id, chat_type, sender_id, text, received_at,
                        reply_to, attachments, sender_name, mentioned
                 FROM inbox WHERE done = 0 ORDER BY id",
            )
            .map_err(db)?;
        let rows = stmt
            .query_map([], |r| {
                Ok((
                    r.get::<_, i64>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, String>(2)?,
                    r.get::<_, String>(3)?,
                    r.get::<_, String>(4)?,
                    r.get::<_, String>(5)?,
                    r.get::<_, String>(6)?,
                    r.get::<_, i64>(7)?,
                    r.get::<_, Option<String>>(8)?,
                    r.get::<_, Option<String>>(9)?,
                    r.get::<_, Option<String>>(10)?,
                    r.get::<_, bool>(11)?,
                ))
            })
            .map_err(db)?;
        let mut out = Vec::new();
        for row in rows {
            let (
                id,
                channel,
                mid,
                chat,
                chat_type,
                sender,
                text,
                at,
                reply_to,
                attachments,
                sender_name,
                mentioned,
            ) = row.map_err(db)?;
            let attachments = match attachments {
                Some(json) => serde_json::from_str(&json).map_err(|e| {
                    StoreError::Database(format!("corrupt attachments of inbox row {id}: {e}"))
                })?,
                None => Vec::new(),
            };
            out.push(PendingInbound {
                inbox_id: id,
                message: InboundMessage {
                    channel: parse_channel(&channel)?,
                    channel_message_id: mid,
                    chat_id: chat,
                    chat_type: chat_type
                        .parse::<ChatType>()
                        .map_err(StoreError::Database)?,
                    sender_id: sender,
                    sender_name,
                    text,
                    reply_to,
                    attachments,
                    received_at_ms: at,
                    mentioned,
                },
            });
        }
        Ok(out)
    })
    .await
}

pub(super) async fn counts(store: &SqliteStore) -> Result<(u64, u64, u64), StoreError> {
    store
        .read(|conn| {
            conn.query_row(
                "SELECT (SELECT COUNT(*) FROM inbox WHERE done = 0),
                    (SELECT COUNT(*) FROM outbox WHERE status = 'pending'),
                    (SELECT COUNT(*) FROM outbox WHERE status = 'dead')",
                [],
                |r| {
                    Ok((
                        r.get::<_, i64>(0)?.unsigned_abs(),
                        r.get::<_, i64>(1)?.unsigned_abs(),
                        r.get::<_, i64>(2)?.unsigned_abs(),
                    ))
                },
            )
            .map_err(db)
        })
        .await
}
