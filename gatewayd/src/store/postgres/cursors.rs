//! Adapters' watermarks in PostgreSQL: one number per `(channel, name)`.
//!
//! A watermark only moves forward: the upsert keeps `GREATEST(stored, new)`, so adapters may
//! advance it from concurrent webhook handlers, and from several instances, in any order.

use super::{PostgresStore, col, db};
use crate::message::{ChannelKind, now_ms};
use crate::store::StoreError;

pub(super) async fn get(
    store: &PostgresStore,
    channel: ChannelKind,
    name: &str,
) -> Result<Option<i64>, StoreError> {
    let client = store.client().await?;
    let stmt = client
        .prepare_cached("SELECT value FROM channel_cursors WHERE channel = $1 AND name = $2")
        .await
        .map_err(db)?;
    let row = client
        .query_opt(&stmt, &[&channel.as_str(), &name])
        .await
        .map_err(db)?;
    row.map(|r| col(&r, 0)).transpose()
}

pub(super) async fn advance(
    store: &PostgresStore,
    channel: ChannelKind,
    name: &str,
    value: i64,
) -> Result<i64, StoreError> {
    let client = store.client().await?;
    let stmt = client
        .prepare_cached(
            "INSERT INTO channel_cursors (channel, name, value, updated_at)
             VALUES ($1, $2, $3, $4)
             ON CONFLICT (channel, name) DO UPDATE
             SET value = GREATEST(channel_cursors.value, excluded.value),
                 updated_at = excluded.updated_at
             RETURNING value",
        )
        .await
        .map_err(db)?;
    let row = client
        .query_one(&stmt, &[&channel.as_str(), &name, &value, &now_ms()])
        .await
        .map_err(db)?;
    col(&row, 0)
}
