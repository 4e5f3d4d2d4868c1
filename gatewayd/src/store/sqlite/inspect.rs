//! Read-only inspection of the SQLite store: inbox and outbox rows as stored, and transcript
//! entries with the inbox row whose turn wrote them. These back the admin API's `ListInbox`,
//! `ListOutbox` and the inbox ids of `GetSession`.
//!
//! Every query runs on a pooled read connection, never the writer, and is bounded by its
//! caller's `limit`; paging is by row id (`id > after`), so a page is stable while rows are added.

use rusqlite::{Connection, params};

use super::outbox::parse_class;
use super::{SqliteStore, db};
use crate::message::SessionKey;
use crate::store::{
    AttemptError, InboxFilter, InboxRecord, OutboxFilter, OutboxRecord, OutboxStatus, Role,
    StoreError, TracedEntry, TranscriptEntry, parse_channel,
};

/// A stored count as `u32`, saturating on corrupt values.
fn count(n: i64) -> u32 {
    u32::try_from(n.max(0)).unwrap_or(u32::MAX)
}

/// A limit as SQLite takes it.
fn sql_limit(limit: usize) -> i64 {
    i64::try_from(limit).unwrap_or(i64::MAX)
}

impl SqliteStore {
    /// Inbox rows matching `filter`, oldest first, after the id `after`.
    pub(super) async fn inspect_inbox(
        &self,
        filter: &InboxFilter,
        after: Option<i64>,
        limit: usize,
    ) -> Result<Vec<InboxRecord>, StoreError> {
        let filter = filter.clone();
        self.read(move |conn| {
            let mut stmt = conn
                .prepare_cached(
                    "SELECT id, channel, channel_message_id, chat_id, chat_type, sender_id, text,
                            reply_to, received_at, done, sender_name, blocked
                     FROM inbox
                     WHERE id > ?1
                       AND (?2 IS NULL OR channel = ?2)
                       AND (?3 IS NULL OR chat_id = ?3)
                       AND (?4 IS NULL OR done = ?4)
                     ORDER BY id LIMIT ?5",
                )
                .map_err(db)?;
            let rows = stmt
                .query_map(
                    params![
                        after.unwrap_or(0),
                        filter.channel,
                        filter.chat_id,
                        filter.done.map(i64::from),
                        sql_limit(limit)
                    ],
                    |r| {
                        Ok(InboxRecord {
                            id: r.get(0)?,
                            channel: r.get(1)?,
                            channel_message_id: r.get(2)?,
                            chat_id: r.get(3)?,
                            chat_type: r.get(4)?,
                            sender_id: r.get(5)?,
                            text: r.get(6)?,
                            reply_to: r.get(7)?,
                            received_at_ms: r.get(8)?,
                            done: r.get::<_, i64>(9)? != 0,
                            sender_name: r.get(10)?,
                            blocked: r.get::<_, i64>(11)? != 0,
                        })
                    },
                )
                .map_err(db)?;
            rows.map(|r| r.map_err(db)).collect()
        })
        .await
    }

    /// Outbox rows matching `filter`, oldest first, after the id `after`; with `with_errors`,
    /// each with its error history.
    pub(super) async fn inspect_outbox(
        &self,
        filter: &OutboxFilter,
        after: Option<i64>,
        limit: usize,
        with_errors: bool,
    ) -> Result<Vec<OutboxRecord>, StoreError> {
        let filter = filter.clone();
        self.read(move |conn| {
            let mut stmt = conn
                .prepare_cached(
                    "SELECT id, inbox_id, channel, chat_id, text, reply_to, status, attempts,
                            chunks_sent, last_error, error_class, created_at, updated_at
                     FROM outbox
                     WHERE id > ?1
                       AND (?2 IS NULL OR channel = ?2)
                       AND (?3 IS NULL OR chat_id = ?3)
                       AND (?4 IS NULL OR status = ?4)
                     ORDER BY id LIMIT ?5",
                )
                .map_err(db)?;
            let rows = stmt
                .query_map(
                    params![
                        after.unwrap_or(0),
                        filter.channel,
                        filter.chat_id,
                        filter.status.map(OutboxStatus::as_str),
                        sql_limit(limit)
                    ],
                    |r| {
                        Ok((
                            (
                                r.get::<_, i64>(0)?,
                                r.get::<_, Option<i64>>(1)?,
                                r.get::<_, String>(2)?,
                                r.get::<_, String>(3)?,
                                r.get::<_, String>(4)?,
                                r.get::<_, Option<String>>(5)?,
                            ),
                            (
                                r.get::<_, String>(6)?,
                                r.get::<_, i64>(7)?,
                                r.get::<_, i64>(8)?,
                                r.get::<_, Option<String>>(9)?,
                                r.get::<_, Option<String>>(10)?,
                                r.get::<_, i64>(11)?,
                                r.get::<_, i64>(12)?,
                            ),
                        ))
                    },
                )
                .map_err(db)?;
            let mut out = Vec::new();
            for row in rows {
                let (
                    (id, inbox_id, channel, chat_id, text, reply_to),
                    (status, attempts, chunks_sent, last_error, class, created, updated),
                ) = row.map_err(db)?;
                let status = OutboxStatus::parse(&status).ok_or_else(|| {
                    StoreError::Database(format!("corrupt outbox status `{status}`"))
                })?;
                out.push(OutboxRecord {
                    id,
                    // A reply that answers no message is stored with inbox id 0.
                    inbox_id: inbox_id.filter(|&i| i > 0),
                    channel,
                    chat_id,
                    text,
                    reply_to,
                    status,
                    attempts: count(attempts),
                    chunks_sent: count(chunks_sent),
                    last_error,
                    class: class.as_deref().map(parse_class).transpose()?,
                    created_at_ms: created,
                    updated_at_ms: updated,
                    errors: Vec::new(),
                    receipt: None,
                    receipt_error: None,
                });
            }
            for record in &mut out {
                (record.receipt, record.receipt_error) = super::receipts::of_row(conn, record.id)?;
            }
            if with_errors {
                for record in &mut out {
                    record.errors = errors_of(conn, record.id)?;
                }
            }
            Ok(out)
        })
        .await
    }

    /// The last `limit` entries of a session since its last reset, oldest first, each with the
    /// inbox id of its turn; the same entries as [`crate::store::Store::history`].
    pub(super) async fn inspect_history(
        &self,
        session: &SessionKey,
        limit: usize,
    ) -> Result<Vec<TracedEntry>, StoreError> {
        let key = session.to_string();
        self.read(move |conn| {
            let mut stmt = conn
                .prepare_cached(
                    "WITH last_reset AS (
                        SELECT at, id FROM transcript WHERE session_key = ?1 AND role = 'reset'
                        ORDER BY at DESC, id DESC LIMIT 1)
                     SELECT role, text, at, channel, inbox_id FROM transcript
                     WHERE session_key = ?1
                       AND (at, id) > (SELECT COALESCE(MAX(at), -1), COALESCE(MAX(id), -1) FROM last_reset)
                       AND role != 'reset'
                     ORDER BY at DESC, id DESC LIMIT ?2",
                )
                .map_err(db)?;
            let rows = stmt
                .query_map(params![key, sql_limit(limit)], |r| {
                    Ok((
                        r.get::<_, String>(0)?,
                        r.get::<_, String>(1)?,
                        r.get::<_, i64>(2)?,
                        r.get::<_, Option<String>>(3)?,
                        r.get::<_, Option<i64>>(4)?,
                    ))
                })
                .map_err(db)?;
            let mut out = Vec::new();
            for row in rows {
                let (role, text, at, channel, inbox_id) = row.map_err(db)?;
                out.push(TracedEntry {
                    entry: TranscriptEntry {
                        role: Role::parse(&role)
                            .ok_or_else(|| StoreError::Database(format!("corrupt role `{role}`")))?,
                        text,
                        at_ms: at,
                        channel: channel.as_deref().map(parse_channel).transpose()?,
                    },
                    inbox_id: inbox_id.filter(|&i| i > 0),
                });
            }
            out.reverse();
            Ok(out)
        })
        .await
    }
}

/// The failed attempts of one outbox row, oldest first.
fn errors_of(conn: &Connection, outbox_id: i64) -> Result<Vec<AttemptError>, StoreError> {
    let mut stmt = conn
        .prepare_cached(
            "SELECT at, attempt, class, error FROM delivery_errors WHERE outbox_id = ?1 ORDER BY id",
        )
        .map_err(db)?;
    let rows = stmt
        .query_map([outbox_id], |r| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, i64>(1)?,
                r.get::<_, String>(2)?,
                r.get::<_, String>(3)?,
            ))
        })
        .map_err(db)?;
    let mut out = Vec::new();
    for row in rows {
        let (at, attempt, class, error) = row.map_err(db)?;
        out.push(AttemptError {
            at_ms: at,
            attempt: count(attempt),
            class: parse_class(&class)?,
            error,
        });
    }
    Ok(out)
}
