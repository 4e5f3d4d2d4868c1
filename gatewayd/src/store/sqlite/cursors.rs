//! Adapters' watermarks: one number per `(channel, name)`, such as the platform time of the
//! newest message a channel committed, where its catch-up after a restart starts.
//!
//! A watermark only moves forward: advancing it to an earlier value keeps the stored one, so
//! adapters may advance it from concurrent webhook handlers in any order. Rows are tiny, one per
//! channel and name, and are never pruned.

use rusqlite::{OptionalExtension, params};

use super::{SqliteStore, db};
use crate::message::{ChannelKind, now_ms};
use crate::store::StoreError;

pub(super) async fn get(
    store: &SqliteStore,
    channel: ChannelKind,
    name: &str,
) -> Result<Option<i64>, StoreError> {
    let name = name.to_owned();
    store
        .read(move |conn| {
            conn.prepare_cached(
                "SELECT value FROM channel_cursors WHERE channel = ?1 AND name = ?2",
            )
            .and_then(|mut s| {
                s.query_row(params![channel.as_str(), name], |r| r.get::<_, i64>(0))
                    .optional()
            })
            .map_err(db)
        })
        .await
}

pub(super) async fn advance(
    store: &SqliteStore,
    channel: ChannelKind,
    name: &str,
    value: i64,
) -> Result<i64, StoreError> {
    let name = name.to_owned();
    store
        .write(move |conn| {
            conn.prepare_cached(
                "INSERT INTO channel_cursors (channel, name, value, updated_at)
                 VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (channel, name) DO UPDATE
                 SET value = MAX(value, excluded.value), updated_at = excluded.updated_at
                 RETURNING value",
            )
            .and_then(|mut s| {
                s.query_row(params![channel.as_str(), name, value, now_ms()], |r| {
                    r.get::<_, i64>(0)
                })
            })
            .map_err(db)
        })
        .await
}
