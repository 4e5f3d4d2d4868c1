//! The outbox and its dead letters: replies to send, their attempts and error history, and the
//! operator's retry and drop.
//!
//! A row only moves `pending → delivered`, `pending → dead`, or (by an operator) `dead →
//! pending` and `dead → dropped`; every update names the state it expects, so a late answer for
//! a row that has moved on changes nothing.

use rusqlite::{Connection, OptionalExtension, params};

use super::writer::atomic;
use super::{SqliteStore, db};
use crate::message::{ChannelKind, OutboundMessage, now_ms};
use crate::send::ErrorClass;
use crate::store::{AttemptError, DeadLetter, DeadSelector, NewReply, StoreError, parse_channel};

pub(super) async fn pending(store: &SqliteStore) -> Result<Vec<OutboundMessage>, StoreError> {
    store
        .read(|conn| {
            let mut stmt = conn
                .prepare(&format!(
                    "SELECT {OUTBOUND_COLUMNS} FROM outbox WHERE status = 'pending' ORDER BY id"
                ))
                .map_err(db)?;
            let rows = stmt.query_map([], row_to_outbound).map_err(db)?;
            rows.map(|r| r.map_err(db).and_then(outbound_from))
                .collect()
        })
        .await
}

pub(super) async fn delivered(store: &SqliteStore, id: i64) -> Result<(), StoreError> {
    store
        .write(move |conn| {
            conn.prepare_cached(
                "UPDATE outbox SET status = 'delivered', attempts = attempts + 1, updated_at = ?2
             WHERE id = ?1 AND status = 'pending'",
            )
            .and_then(|mut s| s.execute(params![id, now_ms()]))
            .map(|_| ())
            .map_err(db)
        })
        .await
}

pub(super) async fn progress(
    store: &SqliteStore,
    id: i64,
    chunks_sent: u32,
) -> Result<(), StoreError> {
    store.write(move |conn| {
        conn.prepare_cached(
            "UPDATE outbox SET chunks_sent = ?2, updated_at = ?3 WHERE id = ?1 AND status = 'pending'",
        )
        .and_then(|mut s| s.execute(params![id, chunks_sent, now_ms()]))
        .map(|_| ())
        .map_err(db)
    })
    .await
}

/// Records a failed send in the row and its error history; `dead` also ends the row as a
/// dead letter. Only a pending row changes.
pub(super) async fn record_failure(
    store: &SqliteStore,
    id: i64,
    attempts: u32,
    class: ErrorClass,
    error: &str,
    dead: bool,
) -> Result<(), StoreError> {
    let error = error.to_owned();
    store
        .write(move |conn| {
            atomic(conn, |conn| {
                conn.prepare_cached(
                    "UPDATE outbox SET status = CASE WHEN ?6 THEN 'dead' ELSE status END,
                 attempts = ?2, last_error = ?3, error_class = ?4, updated_at = ?5
                 WHERE id = ?1 AND status = 'pending'",
                )
                .and_then(|mut s| {
                    s.execute(params![id, attempts, error, class.as_str(), now_ms(), dead])
                })
                .map_err(db)?;
                record_error(conn, id, attempts, class, &error)
            })
        })
        .await
}

pub(super) async fn put(
    store: &SqliteStore,
    reply: NewReply,
) -> Result<OutboundMessage, StoreError> {
    store
        .write(move |conn| {
            let id = insert_reply(conn, 0, &reply, now_ms())?;
            Ok(OutboundMessage {
                id,
                channel: reply.channel,
                chat_id: reply.chat_id,
                text: reply.text,
                reply_to: reply.reply_to,
                attempts: 0,
                chunks_sent: 0,
            })
        })
        .await
}

pub(super) fn insert_reply(
    conn: &Connection,
    inbox_id: i64,
    r: &NewReply,
    now: i64,
) -> Result<i64, StoreError> {
    conn.prepare_cached(
        "INSERT INTO outbox (inbox_id, channel, chat_id, text, reply_to, created_at, updated_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?6)",
    )
    .and_then(|mut s| {
        s.execute(params![
            inbox_id,
            r.channel.as_str(),
            r.chat_id,
            r.text,
            r.reply_to,
            now
        ])
    })
    .map_err(db)?;
    Ok(conn.last_insert_rowid())
}

pub(super) async fn dead_letters(
    store: &SqliteStore,
    channel: Option<ChannelKind>,
    after: Option<i64>,
    limit: usize,
) -> Result<Vec<DeadLetter>, StoreError> {
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    store.read(move |conn| {
        let mut stmt = conn
            .prepare_cached(&format!(
                "SELECT {OUTBOUND_COLUMNS}, last_error, error_class, created_at, updated_at FROM outbox
                 WHERE status = 'dead' AND (?1 IS NULL OR channel = ?1) AND id > ?2
                 ORDER BY id LIMIT ?3"
            ))
            .map_err(db)?;
        let rows = stmt
            .query_map(
                params![channel.map(ChannelKind::as_str), after.unwrap_or(0), limit],
                dead_letter_from,
            )
            .map_err(db)?;
        rows.map(|r| r.map_err(db).and_then(to_dead_letter)).collect()
    })
    .await
}

pub(super) async fn dead_letter(
    store: &SqliteStore,
    id: i64,
) -> Result<(DeadLetter, Vec<AttemptError>), StoreError> {
    store.read(move |conn| {
        let letter = conn
            .query_row(
                &format!(
                    "SELECT {OUTBOUND_COLUMNS}, last_error, error_class, created_at, updated_at
                     FROM outbox WHERE id = ?1 AND status = 'dead'"
                ),
                [id],
                dead_letter_from,
            )
            .optional()
            .map_err(db)?
            .ok_or_else(|| StoreError::NotFound(format!("no dead letter {id}")))?;
        let mut stmt = conn
            .prepare_cached(
                "SELECT at, attempt, class, error FROM delivery_errors WHERE outbox_id = ?1 ORDER BY id",
            )
            .map_err(db)?;
        let rows = stmt
            .query_map([id], |r| {
                Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(1)?, r.get::<_, String>(2)?, r.get::<_, String>(3)?))
            })
            .map_err(db)?;
        let mut history = Vec::new();
        for row in rows {
            let (at, attempt, class, error) = row.map_err(db)?;
            history.push(AttemptError {
                at_ms: at,
                attempt: u32::try_from(attempt).unwrap_or(0),
                class: parse_class(&class)?,
                error,
            });
        }
        Ok((to_dead_letter(letter)?, history))
    })
    .await
}

pub(super) async fn retry_dead(
    store: &SqliteStore,
    selector: &DeadSelector,
) -> Result<Vec<OutboundMessage>, StoreError> {
    let (clause, values) = dead_where(selector);
    store
        .write(move |conn| {
            let mut stmt = conn
                .prepare(&format!(
                    "UPDATE outbox SET status = 'pending', attempts = 0, updated_at = {now}
                 WHERE {clause} RETURNING {OUTBOUND_COLUMNS}",
                    now = now_ms()
                ))
                .map_err(db)?;
            let rows = stmt
                .query_map(rusqlite::params_from_iter(values), row_to_outbound)
                .map_err(db)?;
            let mut out: Vec<OutboundMessage> = rows
                .map(|r| r.map_err(db).and_then(outbound_from))
                .collect::<Result<_, _>>()?;
            out.sort_by_key(|m| m.id);
            Ok(out)
        })
        .await
}

pub(super) async fn drop_dead(
    store: &SqliteStore,
    selector: &DeadSelector,
) -> Result<u64, StoreError> {
    let (clause, values) = dead_where(selector);
    store
        .write(move |conn| {
            conn.execute(
                &format!(
                    "UPDATE outbox SET status = 'dropped', updated_at = {now} WHERE {clause}",
                    now = now_ms()
                ),
                rusqlite::params_from_iter(values),
            )
            .map(|n| n as u64)
            .map_err(db)
        })
        .await
}

/// The columns [`outbound_from`] reads, in order.
const OUTBOUND_COLUMNS: &str = "id, channel, chat_id, text, reply_to, attempts, chunks_sent";

type OutboundRow = (i64, String, String, String, Option<String>, i64, i64);

fn row_to_outbound(r: &rusqlite::Row<'_>) -> rusqlite::Result<OutboundRow> {
    Ok((
        r.get(0)?,
        r.get(1)?,
        r.get(2)?,
        r.get(3)?,
        r.get(4)?,
        r.get(5)?,
        r.get(6)?,
    ))
}

fn outbound_from(
    (id, channel, chat_id, text, reply_to, attempts, chunks_sent): OutboundRow,
) -> Result<OutboundMessage, StoreError> {
    Ok(OutboundMessage {
        id,
        channel: parse_channel(&channel)?,
        chat_id,
        text,
        reply_to,
        attempts: u32::try_from(attempts).unwrap_or(u32::MAX),
        chunks_sent: u32::try_from(chunks_sent).unwrap_or(0),
    })
}

pub(super) fn parse_class(s: &str) -> Result<ErrorClass, StoreError> {
    ErrorClass::parse(s).ok_or_else(|| StoreError::Database(format!("corrupt error class `{s}`")))
}

fn record_error(
    conn: &Connection,
    id: i64,
    attempt: u32,
    class: ErrorClass,
    error: &str,
) -> Result<(), StoreError> {
    conn.prepare_cached(
        "INSERT INTO delivery_errors (outbox_id, at, attempt, class, error) VALUES (?1, ?2, ?3, ?4, ?5)",
    )
    .and_then(|mut s| s.execute(params![id, now_ms(), attempt, class.as_str(), error]))
    .map(|_| ())
    .map_err(db)
}

/// The `WHERE` clause and parameters selecting dead letters.
fn dead_where(selector: &DeadSelector) -> (String, Vec<rusqlite::types::Value>) {
    use rusqlite::types::Value;
    let marks = |n: usize| vec!["?"; n.max(1)].join(", ");
    match selector {
        DeadSelector::Ids(ids) => {
            let mut values: Vec<Value> = ids.iter().map(|i| Value::Integer(*i)).collect();
            if values.is_empty() {
                values.push(Value::Null);
            }
            (
                format!("status = 'dead' AND id IN ({})", marks(ids.len())),
                values,
            )
        }
        DeadSelector::Channel { channel, classes } => {
            let mut values = vec![Value::Text(channel.as_str().to_owned())];
            let mut clause = "status = 'dead' AND channel = ?".to_owned();
            if let Some(classes) = classes {
                clause.push_str(&format!(" AND error_class IN ({})", marks(classes.len())));
                values.extend(classes.iter().map(|c| Value::Text(c.as_str().to_owned())));
                if classes.is_empty() {
                    values.push(Value::Null);
                }
            }
            (clause, values)
        }
    }
}

type DeadRow = (OutboundRow, Option<String>, Option<String>, i64, i64);

fn dead_letter_from(r: &rusqlite::Row<'_>) -> rusqlite::Result<DeadRow> {
    Ok((
        row_to_outbound(r)?,
        r.get(7)?,
        r.get(8)?,
        r.get(9)?,
        r.get(10)?,
    ))
}

fn to_dead_letter(
    (row, error, class, created, updated): DeadRow,
) -> Result<DeadLetter, StoreError> {
    Ok(DeadLetter {
        message: outbound_from(row)?,
        last_error: error.unwrap_or_default(),
        class: class
            .as_deref()
            .map_or(Ok(ErrorClass::Permanent), parse_class)?,
        created_at_ms: created,
        dead_at_ms: updated,
    })
}
