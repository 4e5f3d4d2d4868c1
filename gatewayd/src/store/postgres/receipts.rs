//! Platform receipts in PostgreSQL: the platform's id of each sent chunk, what the platform
//! later reported about it, and the time of a chat's newest inbound message (for reply windows).
//!
//! A receipt only moves forward (`sent → delivered → read`, `failed` from any of them): the
//! upsert's `WHERE` compares ranks, so reports arriving in any order, at any instance, end in
//! the most advanced one. A receipt that arrives before its send is recorded is kept, then
//! joined to its row when the send is.

use deadpool_postgres::GenericClient;

use super::{PostgresStore, col, db};
use crate::message::{ChannelKind, now_ms};
use crate::store::{ReceiptStatus, StoreError};

/// Rank of a stored status: the order a receipt may move in.
const RANK: &str = "CASE {col} WHEN 'sent' THEN 1 WHEN 'delivered' THEN 2 WHEN 'read' THEN 3 \
                    WHEN 'failed' THEN 4 ELSE 0 END";

fn rank(col: &str) -> String {
    RANK.replace("{col}", col)
}

pub(super) async fn last_inbound_at(
    store: &PostgresStore,
    channel: ChannelKind,
    chat_id: &str,
) -> Result<Option<i64>, StoreError> {
    let client = store.client().await?;
    let stmt = client
        .prepare_cached("SELECT MAX(received_at) FROM inbox WHERE channel = $1 AND chat_id = $2")
        .await
        .map_err(db)?;
    let row = client
        .query_one(&stmt, &[&channel.as_str(), &chat_id])
        .await
        .map_err(db)?;
    col(&row, 0)
}

pub(super) async fn platform_id(
    store: &PostgresStore,
    id: i64,
    chunk: u32,
    channel: ChannelKind,
    platform_id: &str,
) -> Result<(), StoreError> {
    let client = store.client().await?;
    let stmt = client
        .prepare_cached(
            "INSERT INTO outbox_receipts (channel, platform_id, outbox_id, chunk, updated_at)
             VALUES ($1, $2, $3, $4, $5)
             ON CONFLICT (channel, platform_id)
             DO UPDATE SET outbox_id = excluded.outbox_id, chunk = excluded.chunk",
        )
        .await
        .map_err(db)?;
    client
        .execute(
            &stmt,
            &[
                &channel.as_str(),
                &platform_id,
                &id,
                &i64::from(chunk),
                &now_ms(),
            ],
        )
        .await
        .map_err(db)?;
    Ok(())
}

pub(super) async fn record(
    store: &PostgresStore,
    channel: ChannelKind,
    platform_id: &str,
    status: ReceiptStatus,
    error: Option<&str>,
) -> Result<Option<i64>, StoreError> {
    let sql = format!(
        "INSERT INTO outbox_receipts (channel, platform_id, status, error, updated_at)
         VALUES ($1, $2, $3, $4, $5)
         ON CONFLICT (channel, platform_id) DO UPDATE
         SET status = excluded.status, error = excluded.error, updated_at = excluded.updated_at
         WHERE {new} > {old}",
        new = rank("excluded.status"),
        old = rank("outbox_receipts.status"),
    );
    let client = store.client().await?;
    let stmt = client.prepare_cached(&sql).await.map_err(db)?;
    client
        .execute(
            &stmt,
            &[
                &channel.as_str(),
                &platform_id,
                &status.as_str(),
                &error,
                &now_ms(),
            ],
        )
        .await
        .map_err(db)?;
    let stmt = client
        .prepare_cached(
            "SELECT outbox_id FROM outbox_receipts WHERE channel = $1 AND platform_id = $2",
        )
        .await
        .map_err(db)?;
    let row = client
        .query_opt(&stmt, &[&channel.as_str(), &platform_id])
        .await
        .map_err(db)?;
    match row {
        Some(r) => col(&r, 0),
        None => Ok(None),
    }
}

/// The receipt shown for outbox row `id`: its least advanced reported chunk, `failed` first.
pub(super) async fn of_row(
    conn: &impl GenericClient,
    id: i64,
) -> Result<(Option<ReceiptStatus>, Option<String>), StoreError> {
    let sql = format!(
        "SELECT status, error FROM outbox_receipts
         WHERE outbox_id = $1 AND status IS NOT NULL
         ORDER BY CASE status WHEN 'failed' THEN 0 ELSE {rank} END, chunk LIMIT 1",
        rank = rank("status")
    );
    let stmt = conn.prepare_cached(&sql).await.map_err(db)?;
    let found = conn.query_opt(&stmt, &[&id]).await.map_err(db)?;
    match found {
        None => Ok((None, None)),
        Some(r) => {
            let status: String = col(&r, 0)?;
            let status = ReceiptStatus::parse(&status).ok_or_else(|| {
                StoreError::Database(format!("corrupt receipt status `{status}`"))
            })?;
            Ok((Some(status), col(&r, 1)?))
        }
    }
}
