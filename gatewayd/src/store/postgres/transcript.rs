//! Transcripts and sessions in PostgreSQL: the atomic turn, a session's history, and the
//! session rows.
//!
//! A turn (transcript entries, outbox rows, the usage row, the inbox row's `done` mark and the
//! session row's count) is one transaction: all of it is committed or none of it. The `done`
//! mark is written first, `WHERE NOT done`, so a second turn for the same inbox row, from this
//! instance or another, waits on the row lock and is then refused with [`StoreError::Conflict`]
//! and leaves nothing. In multi-instance mode the turn carries the fence of its session's
//! partition, checked first in the same transaction: a turn whose lease expired or moved is
//! refused with [`StoreError::Fenced`] and leaves nothing; its replies are filed under that
//! partition.

use std::sync::atomic::Ordering;

use deadpool_postgres::Transaction;
use tokio_postgres::Row;

use super::outbox::insert_reply;
use super::{CONFLICTED, PostgresStore, col, db, to_i64};
use crate::message::{ChannelKind, OutboundMessage, SessionKey, now_ms};
use crate::store::{
    Role, SessionFilter, StoreError, StoredSession, TranscriptEntry, TurnRecord, UsageRecord,
    parse_channel,
};

pub(super) async fn commit_turn(
    store: &PostgresStore,
    turn: TurnRecord,
    usage: Option<UsageRecord>,
) -> Result<Vec<OutboundMessage>, StoreError> {
    let inbox_id = turn.inbox_id;
    // A turn PostgreSQL aborted for a deadlock with another transaction (a merge of the same
    // user, say) left nothing behind, and is run again.
    let mut attempts = 0;
    let result = loop {
        attempts += 1;
        match commit_turn_once(store, turn.clone(), usage.clone()).await {
            Err(StoreError::Database(m)) if m.starts_with(CONFLICTED) && attempts < 3 => {}
            other => break other,
        }
    };
    if let Ok(mut stranded) = store.shared.stranded.lock() {
        match &result {
            Ok(_) | Err(StoreError::Conflict(_) | StoreError::Fenced(_)) => {
                stranded.remove(&inbox_id);
            }
            Err(StoreError::Closed) => {}
            Err(_) => {
                stranded.insert(inbox_id);
                store.shared.failed_turns.fetch_add(1, Ordering::AcqRel);
            }
        }
    }
    result
}

async fn commit_turn_once(
    store: &PostgresStore,
    turn: TurnRecord,
    usage: Option<UsageRecord>,
) -> Result<Vec<OutboundMessage>, StoreError> {
    let mut client = store.client().await?;
    let tx = client.transaction().await.map_err(db)?;
    let key = turn.session.to_string();
    let now = now_ms();
    // Multi-instance mode: the partition's lease must still be held, and stays so (its row is
    // locked FOR SHARE) until this transaction ends, so a takeover waits for it.
    if let Some(fence) = &turn.fence {
        super::cluster::fence_check(&tx, fence).await?;
    }
    let mark = tx
        .prepare_cached("UPDATE inbox SET done = TRUE WHERE id = $1 AND NOT done")
        .await
        .map_err(db)?;
    let marked = tx.execute(&mark, &[&turn.inbox_id]).await.map_err(db)?;
    if marked == 0 {
        return Err(StoreError::Conflict(format!(
            "inbox message {} already has a finished turn",
            turn.inbox_id
        )));
    }
    if !turn.entries.is_empty() {
        let insert = tx
            .prepare_cached(
                "INSERT INTO transcript (session_key, at, role, text, channel, inbox_id)
                 VALUES ($1, $2, $3, $4, $5, $6)",
            )
            .await
            .map_err(db)?;
        for e in &turn.entries {
            tx.execute(
                &insert,
                &[
                    &key,
                    &e.at_ms,
                    &e.role.as_str(),
                    &e.text,
                    &e.channel.map(ChannelKind::as_str),
                    &turn.inbox_id,
                ],
            )
            .await
            .map_err(db)?;
        }
    }
    if let Some(first) = turn.entries.first() {
        count_turn(&tx, &key, now, first.channel).await?;
    }
    if let Some(usage) = &usage {
        super::usage::insert(&tx, usage).await?;
    }
    let partition: Option<i32> = turn
        .fence
        .as_ref()
        .and_then(|f| f.partition())
        .and_then(|p| i32::try_from(p).ok());
    let mut out = Vec::with_capacity(turn.replies.len());
    for r in &turn.replies {
        let id = insert_reply(&tx, turn.inbox_id, r, now).await?;
        if let Some(p) = partition {
            let set = tx
                .prepare_cached("UPDATE outbox SET partition = $2 WHERE id = $1")
                .await
                .map_err(db)?;
            tx.execute(&set, &[&id, &p]).await.map_err(db)?;
        }
        out.push(OutboundMessage {
            id,
            channel: r.channel,
            chat_id: r.chat_id.clone(),
            text: r.text.clone(),
            reply_to: r.reply_to.clone(),
            attempts: 0,
            chunks_sent: 0,
        });
    }
    tx.commit().await.map_err(db)?;
    Ok(out)
}

/// The last `limit` entries of `key` since its last reset, newest first, with their inbox ids.
pub(super) const HISTORY_SQL: &str = "WITH last_reset AS (
        SELECT at, id FROM transcript WHERE session_key = $1 AND role = 'reset'
        ORDER BY at DESC, id DESC LIMIT 1)
     SELECT role, text, at, channel, inbox_id FROM transcript
     WHERE session_key = $1
       AND (at, id) > (SELECT COALESCE(MAX(at), -1), COALESCE(MAX(id), -1) FROM last_reset)
       AND role <> 'reset'
     ORDER BY at DESC, id DESC LIMIT $2";

/// A row of [`HISTORY_SQL`] as an entry.
pub(super) fn entry_from(r: &Row) -> Result<TranscriptEntry, StoreError> {
    let role: String = col(r, 0)?;
    let channel: Option<String> = col(r, 3)?;
    Ok(TranscriptEntry {
        role: Role::parse(&role)
            .ok_or_else(|| StoreError::Database(format!("corrupt role `{role}`")))?,
        text: col(r, 1)?,
        at_ms: col(r, 2)?,
        channel: channel.as_deref().map(parse_channel).transpose()?,
    })
}

pub(super) async fn history(
    store: &PostgresStore,
    session: &SessionKey,
    limit: usize,
) -> Result<Vec<TranscriptEntry>, StoreError> {
    let key = session.to_string();
    let client = store.client().await?;
    let stmt = client.prepare_cached(HISTORY_SQL).await.map_err(db)?;
    let rows = client
        .query(&stmt, &[&key, &to_i64(limit)])
        .await
        .map_err(db)?;
    let mut out = rows.iter().map(entry_from).collect::<Result<Vec<_>, _>>()?;
    out.reverse();
    Ok(out)
}

/// Counts one more turn in the session row `key` (creating it), and records `channel` as its
/// last one unless `None`.
async fn count_turn(
    tx: &Transaction<'_>,
    key: &str,
    now: i64,
    channel: Option<ChannelKind>,
) -> Result<(), StoreError> {
    let channel = channel.map(ChannelKind::as_str);
    let stmt = tx
        .prepare_cached(
            "INSERT INTO sessions (key, created_at, last_active, turns, last_channel)
             VALUES ($1, $2, $2, 1, $3)
             ON CONFLICT (key) DO UPDATE SET last_active = $2, turns = sessions.turns + 1,
                last_channel = COALESCE($3, sessions.last_channel)",
        )
        .await
        .map_err(db)?;
    tx.execute(&stmt, &[&key, &now, &channel])
        .await
        .map_err(db)?;
    Ok(())
}

const SESSION_COLUMNS: &str = "key, created_at, last_active, turns, last_channel";

pub(super) async fn list_sessions(
    store: &PostgresStore,
    filter: &SessionFilter,
    after: Option<&str>,
    limit: usize,
) -> Result<Vec<StoredSession>, StoreError> {
    let after = after.unwrap_or("");
    let limit = to_i64(limit);
    let client = store.client().await?;
    let channel = filter.channel.map(ChannelKind::as_str);
    let rows = if let Some(user) = filter.user {
        let key = SessionKey::User(user).to_string();
        client
            .query(
                &format!(
                    "SELECT {SESSION_COLUMNS} FROM sessions WHERE key = $1 AND key > $2
                     AND ($3::text IS NULL OR last_channel = $3)"
                ),
                &[&key, &after, &channel],
            )
            .await
    } else {
        match channel {
            None => {
                client
                    .query(
                        &format!(
                            "SELECT {SESSION_COLUMNS} FROM sessions
                             WHERE key > $1 ORDER BY key LIMIT $2"
                        ),
                        &[&after, &limit],
                    )
                    .await
            }
            Some(c) => {
                client
                    .query(
                        &format!(
                            "SELECT {SESSION_COLUMNS} FROM sessions
                             WHERE last_channel = $3 AND key > $1 ORDER BY key LIMIT $2"
                        ),
                        &[&after, &limit, &c],
                    )
                    .await
            }
        }
    }
    .map_err(db)?;
    rows.iter().map(to_session).collect()
}

pub(super) async fn session(
    store: &PostgresStore,
    key: &SessionKey,
) -> Result<Option<StoredSession>, StoreError> {
    let key = key.to_string();
    let client = store.client().await?;
    client
        .query_opt(
            &format!("SELECT {SESSION_COLUMNS} FROM sessions WHERE key = $1"),
            &[&key],
        )
        .await
        .map_err(db)?
        .as_ref()
        .map(to_session)
        .transpose()
}

pub(super) async fn count_sessions(store: &PostgresStore) -> Result<u64, StoreError> {
    let client = store.client().await?;
    let row = client
        .query_one("SELECT COUNT(*) FROM sessions", &[])
        .await
        .map_err(db)?;
    Ok(col::<i64>(&row, 0)?.unsigned_abs())
}

fn to_session(r: &Row) -> Result<StoredSession, StoreError> {
    let key: String = col(r, 0)?;
    let channel: Option<String> = col(r, 4)?;
    Ok(StoredSession {
        key: key.parse().map_err(StoreError::Database)?,
        created_at_ms: col(r, 1)?,
        last_active_ms: col(r, 2)?,
        turns: col::<i64>(r, 3)?.unsigned_abs(),
        last_channel: channel.as_deref().map(parse_channel).transpose()?,
    })
}
