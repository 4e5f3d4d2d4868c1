//! Platform receipts: the platform's id of each sent chunk, what the platform later reported
//! about it (WhatsApp's `statuses[]`), and the time of a chat's newest inbound message, which a
//! channel with a reply window (WhatsApp's 24 hours) is checked against.
//!
//! A receipt only moves forward (`sent → delivered → read`, `failed` from any of them), whatever
//! order the platform's reports arrive in; and a receipt that arrives before the send it reports
//! on is recorded is kept, then joined to its row when the send is.

use rusqlite::{OptionalExtension, params};

use super::{SqliteStore, db};
use crate::message::{ChannelKind, now_ms};
use crate::store::{ReceiptStatus, StoreError};

/// Rank of a stored status: the order a receipt may move in.
const RANK: &str = "CASE {col} WHEN 'sent' THEN 1 WHEN 'delivered' THEN 2 WHEN 'read' THEN 3 \
                    WHEN 'failed' THEN 4 ELSE 0 END";

fn rank(col: &str) -> String {
    RANK.replace("{col}", col)
}

pub(super) async fn last_inbound_at(
    store: &SqliteStore,
    channel: ChannelKind,
    chat_id: &str,
) -> Result<Option<i64>, StoreError> {
    let chat_id = chat_id.to_owned();
    store
        .read(move |conn| {
            conn.prepare_cached(
                "SELECT MAX(received_at) FROM inbox WHERE channel = ?1 AND chat_id = ?2",
            )
            .and_then(|mut s| {
                s.query_row(params![channel.as_str(), chat_id], |r| {
                    r.get::<_, Option<i64>>(0)
                })
            })
            .map_err(db)
        })
        .await
}

pub(super) async fn platform_id(
    store: &SqliteStore,
    id: i64,
    chunk: u32,
    channel: ChannelKind,
    platform_id: &str,
) -> Result<(), StoreError> {
    let platform_id = platform_id.to_owned();
    store
        .write(move |conn| {
            conn.prepare_cached(
                "INSERT INTO outbox_receipts (channel, platform_id, outbox_id, chunk, updated_at)
                 VALUES (?1, ?2, ?3, ?4, ?5)
                 ON CONFLICT (channel, platform_id)
                 DO UPDATE SET outbox_id = excluded.outbox_id, chunk = excluded.chunk",
            )
            .and_then(|mut s| {
                s.execute(params![channel.as_str(), platform_id, id, chunk, now_ms()])
            })
            .map(|_| ())
            .map_err(db)
        })
        .await
}

pub(super) async fn record(
    store: &SqliteStore,
    channel: ChannelKind,
    platform_id: &str,
    status: ReceiptStatus,
    error: Option<&str>,
) -> Result<Option<i64>, StoreError> {
    let platform_id = platform_id.to_owned();
    let error = error.map(str::to_owned);
    let sql = format!(
        "INSERT INTO outbox_receipts (channel, platform_id, status, error, updated_at)
         VALUES (?1, ?2, ?3, ?4, ?5)
         ON CONFLICT (channel, platform_id) DO UPDATE
         SET status = excluded.status, error = excluded.error, updated_at = excluded.updated_at
         WHERE {new} > {old}",
        new = rank("excluded.status"),
        old = rank("outbox_receipts.status"),
    );
    store
        .write(move |conn| {
            conn.prepare_cached(&sql)
                .and_then(|mut s| {
                    s.execute(params![
                        channel.as_str(),
                        platform_id,
                        status.as_str(),
                        error,
                        now_ms()
                    ])
                })
                .map_err(db)?;
            conn.prepare_cached(
                "SELECT outbox_id FROM outbox_receipts WHERE channel = ?1 AND platform_id = ?2",
            )
            .and_then(|mut s| {
                s.query_row(params![channel.as_str(), platform_id], |r| {
                    r.get::<_, Option<i64>>(0)
                })
                .optional()
            })
            .map(Option::flatten)
            .map_err(db)
        })
        .await
}

/// The receipt shown for outbox row `id`: its least advanced reported chunk, `failed` first.
pub(super) fn of_row(
    conn: &rusqlite::Connection,
    id: i64,
) -> Result<(Option<ReceiptStatus>, Option<String>), StoreError> {
    let sql = format!(
        "SELECT status, error FROM outbox_receipts
         WHERE outbox_id = ?1 AND status IS NOT NULL
         ORDER BY CASE status WHEN 'failed' THEN 0 ELSE {rank} END, chunk LIMIT 1",
        rank = rank("status")
    );
    let found = conn
        .prepare_cached(&sql)
        .and_then(|mut s| {
            s.query_row([id], |r| {
                Ok((r.get::<_, String>(0)?, r.get::<_, Option<String>>(1)?))
            })
            .optional()
        })
        .map_err(db)?;
    match found {
        None => Ok((None, None)),
        Some((status, error)) => {
            let status = ReceiptStatus::parse(&status).ok_or_else(|| {
                StoreError::Database(format!("corrupt receipt status `{status}`"))
            })?;
            Ok((Some(status), error))
        }
    }
}
