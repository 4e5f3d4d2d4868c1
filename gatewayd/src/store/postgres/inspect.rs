//! Read-only inspection of the PostgreSQL store: inbox and outbox rows as stored, and
//! transcript entries with the inbox row whose turn wrote them. These back the admin API's
//! `ListInbox`, `ListOutbox` and the inbox ids of `GetSession`.
//!
//! Every query is bounded by its caller's `limit`; paging is by row id (`id > after`), so a
//! page is stable while rows are added.

use super::outbox::{errors_of, parse_class};
use super::transcript::{HISTORY_SQL, entry_from};
use super::{PostgresStore, col, db, to_i64};
use crate::message::SessionKey;
use crate::store::{
    InboxFilter, InboxRecord, OutboxFilter, OutboxRecord, OutboxStatus, StoreError, TracedEntry,
};

/// A stored count as `u32`, saturating on corrupt values.
fn count(n: i64) -> u32 {
    u32::try_from(n.max(0)).unwrap_or(u32::MAX)
}

pub(super) async fn inbox(
    store: &PostgresStore,
    filter: &InboxFilter,
    after: Option<i64>,
    limit: usize,
) -> Result<Vec<InboxRecord>, StoreError> {
    let client = store.client().await?;
    let rows = client
        .query(
            "SELECT id, channel, channel_message_id, chat_id, chat_type, sender_id, text,
                    reply_to, received_at, done, sender_name, blocked
             FROM inbox
             WHERE id > $1
               AND ($2::text IS NULL OR channel = $2)
               AND ($3::text IS NULL OR chat_id = $3)
               AND ($4::boolean IS NULL OR done = $4)
             ORDER BY id LIMIT $5",
            &[
                &after.unwrap_or(0),
                &filter.channel,
                &filter.chat_id,
                &filter.done,
                &to_i64(limit),
            ],
        )
        .await
        .map_err(db)?;
    rows.iter()
        .map(|r| {
            Ok(InboxRecord {
                id: col(r, 0)?,
                channel: col(r, 1)?,
                channel_message_id: col(r, 2)?,
                chat_id: col(r, 3)?,
                chat_type: col(r, 4)?,
                sender_id: col(r, 5)?,
                text: col(r, 6)?,
                reply_to: col(r, 7)?,
                received_at_ms: col(r, 8)?,
                done: col(r, 9)?,
                sender_name: col(r, 10)?,
                blocked: col(r, 11)?,
            })
        })
        .collect()
}

pub(super) async fn outbox(
    store: &PostgresStore,
    filter: &OutboxFilter,
    after: Option<i64>,
    limit: usize,
    with_errors: bool,
) -> Result<Vec<OutboxRecord>, StoreError> {
    let client = store.client().await?;
    let rows = client
        .query(
            "SELECT id, inbox_id, channel, chat_id, text, reply_to, status, attempts,
                    chunks_sent, last_error, error_class, created_at, updated_at
             FROM outbox
             WHERE id > $1
               AND ($2::text IS NULL OR channel = $2)
               AND ($3::text IS NULL OR chat_id = $3)
               AND ($4::text IS NULL OR status = $4)
             ORDER BY id LIMIT $5",
            &[
                &after.unwrap_or(0),
                &filter.channel,
                &filter.chat_id,
                &filter.status.map(OutboxStatus::as_str),
                &to_i64(limit),
            ],
        )
        .await
        .map_err(db)?;
    let mut out = Vec::with_capacity(rows.len());
    for r in &rows {
        let status: String = col(r, 6)?;
        let status = OutboxStatus::parse(&status)
            .ok_or_else(|| StoreError::Database(format!("corrupt outbox status `{status}`")))?;
        let inbox_id: Option<i64> = col(r, 1)?;
        let class: Option<String> = col(r, 10)?;
        out.push(OutboxRecord {
            id: col(r, 0)?,
            // A reply that answers no message is stored with inbox id 0.
            inbox_id: inbox_id.filter(|&i| i > 0),
            channel: col(r, 2)?,
            chat_id: col(r, 3)?,
            text: col(r, 4)?,
            reply_to: col(r, 5)?,
            status,
            attempts: count(col(r, 7)?),
            chunks_sent: count(col(r, 8)?),
            last_error: col(r, 9)?,
            class: class.as_deref().map(parse_class).transpose()?,
            created_at_ms: col(r, 11)?,
            updated_at_ms: col(r, 12)?,
            errors: Vec::new(),
            receipt: None,
            receipt_error: None,
        });
    }
    for record in &mut out {
        (record.receipt, record.receipt_error) =
            super::receipts::of_row(&client, record.id).await?;
        if with_errors {
            record.errors = errors_of(&client, record.id).await?;
        }
    }
    Ok(out)
}

pub(super) async fn history(
    store: &PostgresStore,
    session: &SessionKey,
    limit: usize,
) -> Result<Vec<TracedEntry>, StoreError> {
    let key = session.to_string();
    let client = store.client().await?;
    let stmt = client.prepare_cached(HISTORY_SQL).await.map_err(db)?;
    let rows = client
        .query(&stmt, &[&key, &to_i64(limit)])
        .await
        .map_err(db)?;
    let mut out = Vec::with_capacity(rows.len());
    for r in &rows {
        let inbox_id: Option<i64> = col(r, 4)?;
        out.push(TracedEntry {
            entry: entry_from(r)?,
            inbox_id: inbox_id.filter(|&i| i > 0),
        });
    }
    out.reverse();
    Ok(out)
}
