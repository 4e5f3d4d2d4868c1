//! Transcripts and sessions: the atomic turn, a session's history, and the session rows.
//!
//! A turn (transcript entries, outbox rows, the inbox row's `done` mark and the session row's
//! count) is one savepoint in one group commit: all of it is committed or none of it. A second
//! turn for the same inbox row is refused with [`StoreError::Conflict`] and leaves nothing.

use std::sync::atomic::Ordering;

use rusqlite::{Connection, OptionalExtension, params};

use super::outbox::insert_reply;
use super::writer::atomic;
use super::{SqliteStore, db};
use crate::message::{ChannelKind, OutboundMessage, SessionKey, now_ms};
use crate::store::{
    Role, SessionFilter, StoreError, StoredSession, TranscriptEntry, TurnRecord, UsageRecord,
    parse_channel,
};

pub(super) async fn commit_turn(
    store: &SqliteStore,
    turn: TurnRecord,
    usage: Option<UsageRecord>,
) -> Result<Vec<OutboundMessage>, StoreError> {
    let inbox_id = turn.inbox_id;
    let shared = store.shared.clone();
    // Noted in the writer thread, so a recovery that follows sees it.
    let note = move |result: &Result<Vec<OutboundMessage>, StoreError>| {
        if let Ok(mut stranded) = shared.stranded.lock() {
            match result {
                Ok(_) | Err(StoreError::Conflict(_)) => {
                    stranded.remove(&inbox_id);
                }
                Err(StoreError::Closed) => {}
                Err(_) => {
                    stranded.insert(inbox_id);
                    shared.failed_turns.fetch_add(1, Ordering::AcqRel);
                }
            }
        }
    };
    commit_turn_once(store, turn, usage, note).await
}

/// [`Store::commit_turn`], with `then` run on its outcome in the writer thread.
async fn commit_turn_once(
    store: &SqliteStore,
    turn: TurnRecord,
    usage: Option<UsageRecord>,
    then: impl FnOnce(&Result<Vec<OutboundMessage>, StoreError>) + Send + 'static,
) -> Result<Vec<OutboundMessage>, StoreError> {
    store
        .write_then(
            move |conn| {
                atomic(conn, |conn| {
                    let key = turn.session.to_string();
                    let now = now_ms();
                    let marked = conn
                        .prepare_cached("UPDATE inbox SET done = 1 WHERE id = ?1 AND done = 0")
                        .and_then(|mut s| s.execute([turn.inbox_id]))
                        .map_err(db)?;
                    if marked == 0 {
                        return Err(StoreError::Conflict(format!(
                            "inbox message {} already has a finished turn",
                            turn.inbox_id
                        )));
                    }
                    {
                        let mut stmt = conn
                    .prepare_cached(
                        "INSERT INTO transcript (session_key, at, role, text, channel, inbox_id)
                         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                    )
                    .map_err(db)?;
                        for e in &turn.entries {
                            stmt.execute(params![
                                key,
                                e.at_ms,
                                e.role.as_str(),
                                e.text,
                                e.channel.map(ChannelKind::as_str),
                                turn.inbox_id
                            ])
                            .map_err(db)?;
                        }
                    }
                    if let Some(first) = turn.entries.first() {
                        count_turn(conn, &key, now, first.channel)?;
                    }
                    if let Some(usage) = &usage {
                        super::usage::insert(conn, usage)?;
                    }
                    let mut out = Vec::with_capacity(turn.replies.len());
                    for r in &turn.replies {
                        let id = insert_reply(conn, turn.inbox_id, r, now)?;
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
                    Ok(out)
                })
            },
            then,
        )
        .await
}

pub(super) async fn history(
    store: &SqliteStore,
    session: &SessionKey,
    limit: usize,
) -> Result<Vec<TranscriptEntry>, StoreError> {
    let key = session.to_string();
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    store.read(move |conn| {
        let mut stmt = conn
            .prepare_cached(
                "WITH last_reset AS (
                    SELECT at, id FROM transcript WHERE session_key = ?1 AND role = 'reset'
                    ORDER BY at DESC, id DESC LIMIT 1)
                 SELECT role, text, at, channel FROM transcript
                 WHERE session_key = ?1
                   AND (at, id) > (SELECT COALESCE(MAX(at), -1), COALESCE(MAX(id), -1) FROM last_reset)
                   AND role != 'reset'
                 ORDER BY at DESC, id DESC LIMIT ?2",
            )
            .map_err(db)?;
        let rows = stmt
            .query_map(params![key, limit], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, i64>(2)?,
                    r.get::<_, Option<String>>(3)?,
                ))
            })
            .map_err(db)?;
        let mut out = Vec::new();
        for row in rows {
            let (role, text, at, channel) = row.map_err(db)?;
            out.push(TranscriptEntry {
                role: Role::parse(&role)
                    .ok_or_else(|| StoreError::Database(format!("corrupt role `{role}`")))?,
                text,
                at_ms: at,
                channel: channel.as_deref().map(parse_channel).transpose()?,
            });
        }
        out.reverse();
        Ok(out)
    })
    .await
}

/// Counts one more turn in the session row `key` (creating it), and records `channel` as its
/// last one unless `None`.
fn count_turn(
    conn: &Connection,
    key: &str,
    now: i64,
    channel: Option<ChannelKind>,
) -> Result<(), StoreError> {
    let channel = channel.map(ChannelKind::as_str);
    // The common case, a known session on the same channel: an update that leaves
    // `last_channel`, and so its `sessions_channel` index entry, untouched.
    let same_channel = conn
        .prepare_cached(
            "UPDATE sessions SET last_active = ?2, turns = turns + 1
             WHERE key = ?1 AND (?3 IS NULL OR last_channel IS ?3)",
        )
        .and_then(|mut s| s.execute(params![key, now, channel]))
        .map_err(db)?;
    if same_channel == 0 {
        conn.prepare_cached(
            "INSERT INTO sessions (key, created_at, last_active, turns, last_channel)
             VALUES (?1, ?2, ?2, 1, ?3)
             ON CONFLICT (key) DO UPDATE SET last_active = ?2, turns = turns + 1,
                last_channel = COALESCE(?3, last_channel)",
        )
        .and_then(|mut s| s.execute(params![key, now, channel]))
        .map_err(db)?;
    }
    Ok(())
}

pub(super) async fn list_sessions(
    store: &SqliteStore,
    filter: &SessionFilter,
    after: Option<&str>,
    limit: usize,
) -> Result<Vec<StoredSession>, StoreError> {
    let filter = filter.clone();
    let after = after.unwrap_or("").to_owned();
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    store
        .read(move |conn| {
            let rows: Vec<SessionRow> = if let Some(user) = filter.user {
                let key = SessionKey::User(user).to_string();
                conn.query_row(
                    &format!("SELECT {SESSION_COLUMNS} FROM sessions WHERE key = ?1 AND key > ?2"),
                    params![key, after],
                    session_row,
                )
                .optional()
                .map_err(db)?
                .into_iter()
                .filter(|r| {
                    filter
                        .channel
                        .is_none_or(|c| r.4.as_deref() == Some(c.as_str()))
                })
                .collect()
            } else {
                // A filtered page reads `sessions_channel` (last_channel, key) from the cursor
                // on. One statement with `(? IS NULL OR last_channel = ?)` would keep SQLite on
                // the key index, walking every key after the cursor until `limit` rows of the
                // channel turned up (tens of ms over 1M sessions for a rare channel).
                let sql = match filter.channel {
                    None => format!(
                        "SELECT {SESSION_COLUMNS} FROM sessions
                     WHERE key > ?1 ORDER BY key LIMIT ?2"
                    ),
                    Some(_) => format!(
                        "SELECT {SESSION_COLUMNS} FROM sessions
                     WHERE last_channel = ?3 AND key > ?1 ORDER BY key LIMIT ?2"
                    ),
                };
                let mut stmt = conn.prepare_cached(&sql).map_err(db)?;
                let rows = match filter.channel {
                    None => stmt.query_map(params![after, limit], session_row),
                    Some(c) => stmt.query_map(params![after, limit, c.as_str()], session_row),
                }
                .map_err(db)?;
                rows.collect::<Result<_, _>>().map_err(db)?
            };
            rows.into_iter().map(to_session).collect()
        })
        .await
}

pub(super) async fn session(
    store: &SqliteStore,
    key: &SessionKey,
) -> Result<Option<StoredSession>, StoreError> {
    let key = key.to_string();
    store
        .read(move |conn| {
            conn.query_row(
                &format!("SELECT {SESSION_COLUMNS} FROM sessions WHERE key = ?1"),
                [key],
                session_row,
            )
            .optional()
            .map_err(db)?
            .map(to_session)
            .transpose()
        })
        .await
}

pub(super) async fn count_sessions(store: &SqliteStore) -> Result<u64, StoreError> {
    store
        .read(|conn| {
            conn.query_row("SELECT COUNT(*) FROM sessions", [], |r| r.get::<_, i64>(0))
                .map(i64::unsigned_abs)
                .map_err(db)
        })
        .await
}

type SessionRow = (String, i64, i64, i64, Option<String>);

const SESSION_COLUMNS: &str = "key, created_at, last_active, turns, last_channel";

fn session_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<SessionRow> {
    Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
}

fn to_session(
    (key, created, active, turns, channel): SessionRow,
) -> Result<StoredSession, StoreError> {
    Ok(StoredSession {
        key: key.parse().map_err(StoreError::Database)?,
        created_at_ms: created,
        last_active_ms: active,
        turns: turns.unsigned_abs(),
        last_channel: channel.as_deref().map(parse_channel).transpose()?,
    })
}
