//! Identities: users, their addresses, merges and link codes, and a user's last direct chat.
//!
//! Every address belongs to exactly one user. A merge moves the merged user's addresses,
//! transcript and session row to the kept user and marks the merged user `merged_into` (it no
//! longer exists for reads). A link code is single-use and expires.

use rusqlite::{Connection, OptionalExtension, params};

use super::writer::atomic;
use super::{SqliteStore, db};
use crate::message::{Address, ChannelKind, SessionKey, UserId, now_ms};
use crate::store::{StoreError, UserRecord, parse_channel};

pub(super) async fn resolve_address(
    store: &SqliteStore,
    address: &Address,
) -> Result<UserId, StoreError> {
    let channel = address.channel.as_str();
    let sender = address.sender_id.clone();
    let lookup = move |conn: &Connection, sender: &str| {
        conn.prepare_cached("SELECT user_id FROM addresses WHERE channel = ?1 AND sender_id = ?2")
            .and_then(|mut s| {
                s.query_row(params![channel, sender], |r| r.get(0))
                    .optional()
            })
            .map_err(db)
    };
    let s2 = sender.clone();
    if let Some(id) = store.read(move |conn| lookup(conn, &s2)).await? {
        return Ok(id);
    }
    store.write(move |conn| {
        if let Some(id) = lookup(conn, &sender)? {
            return Ok(id);
        }
        atomic(conn, |conn| {
            let now = now_ms();
            conn.execute("INSERT INTO users (created_at) VALUES (?1)", [now])
                .map_err(db)?;
            let id = conn.last_insert_rowid();
            conn.execute(
                "INSERT INTO addresses (channel, sender_id, user_id, linked_at) VALUES (?1, ?2, ?3, ?4)",
                params![channel, sender, id, now],
            )
            .map_err(db)?;
            Ok(id)
        })
    })
    .await
}

pub(super) async fn user(store: &SqliteStore, id: UserId) -> Result<UserRecord, StoreError> {
    store.read(move |conn| {
        if !user_exists(conn, id)? {
            return Err(StoreError::NotFound(format!("no user {id}")));
        }
        let mut stmt = conn
            .prepare_cached(
                "SELECT channel, sender_id FROM addresses WHERE user_id = ?1 ORDER BY channel, sender_id",
            )
            .map_err(db)?;
        let rows = stmt
            .query_map([id], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))
            .map_err(db)?;
        let mut addresses = Vec::new();
        for row in rows {
            let (channel, sender_id) = row.map_err(db)?;
            addresses.push(Address {
                channel: parse_channel(&channel)?,
                sender_id,
            });
        }
        Ok(UserRecord { id, addresses })
    })
    .await
}

pub(super) async fn link_users(
    store: &SqliteStore,
    keep: UserId,
    merge: UserId,
) -> Result<(), StoreError> {
    if keep == merge {
        return Err(StoreError::Conflict(format!(
            "user {keep} is already linked"
        )));
    }
    store
        .write(move |conn| {
            atomic(conn, |conn| {
                for id in [keep, merge] {
                    if !user_exists(conn, id)? {
                        return Err(StoreError::NotFound(format!("no user {id}")));
                    }
                }
                let keep_key = SessionKey::User(keep).to_string();
                let merge_key = SessionKey::User(merge).to_string();
                let now = now_ms();
                conn.execute(
                    "UPDATE addresses SET user_id = ?1, linked_at = ?3 WHERE user_id = ?2",
                    params![keep, merge, now],
                )
                .map_err(db)?;
                conn.execute(
                    "UPDATE transcript SET session_key = ?1 WHERE session_key = ?2",
                    params![keep_key, merge_key],
                )
                .map_err(db)?;
                conn.execute(
                    "INSERT INTO sessions (key, created_at, last_active, turns)
                 SELECT ?1, created_at, last_active, turns FROM sessions WHERE key = ?2
                 ON CONFLICT (key) DO UPDATE SET
                    created_at = MIN(created_at, excluded.created_at),
                    last_active = MAX(last_active, excluded.last_active),
                    turns = turns + excluded.turns",
                    params![keep_key, merge_key],
                )
                .map_err(db)?;
                conn.execute("DELETE FROM sessions WHERE key = ?1", [&merge_key])
                    .map_err(db)?;
                conn.execute(
                    "UPDATE users SET merged_into = ?1 WHERE id = ?2",
                    params![keep, merge],
                )
                .map_err(db)?;
                conn.execute("UPDATE link_codes SET used = 1 WHERE user_id = ?1", [merge])
                    .map_err(db)?;
                super::usage::merge_users(conn, keep, merge)?;
                Ok(())
            })
        })
        .await
}

pub(super) async fn unlink_address(
    store: &SqliteStore,
    address: &Address,
) -> Result<UserId, StoreError> {
    let channel = address.channel.as_str();
    let sender = address.sender_id.clone();
    let display = address.to_string();
    store.write(move |conn| {
        atomic(conn, |conn| {
            let owner: Option<UserId> = conn
                .query_row(
                    "SELECT user_id FROM addresses WHERE channel = ?1 AND sender_id = ?2",
                    params![channel, sender],
                    |r| r.get(0),
                )
                .optional()
                .map_err(db)?;
            let owner =
                owner.ok_or_else(|| StoreError::NotFound(format!("no address {display}")))?;
            let count: i64 = conn
                .query_row(
                    "SELECT COUNT(*) FROM addresses WHERE user_id = ?1",
                    [owner],
                    |r| r.get(0),
                )
                .map_err(db)?;
            if count < 2 {
                return Err(StoreError::Conflict(format!(
                    "{display} is the only address of user {owner}; there is nothing to unlink"
                )));
            }
            let now = now_ms();
            conn.execute("INSERT INTO users (created_at) VALUES (?1)", [now])
                .map_err(db)?;
            let id = conn.last_insert_rowid();
            conn.execute(
                "UPDATE addresses SET user_id = ?1, linked_at = ?2 WHERE channel = ?3 AND sender_id = ?4",
                params![id, now, channel, sender],
            )
            .map_err(db)?;
            Ok(id)
        })
    })
    .await
}

pub(super) async fn list_users(
    store: &SqliteStore,
    channel: Option<ChannelKind>,
    after: Option<UserId>,
    limit: usize,
) -> Result<Vec<UserRecord>, StoreError> {
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    store
        .read(move |conn| {
            let mut stmt = conn
                .prepare_cached(
                    "SELECT id FROM users u WHERE merged_into IS NULL AND id > ?1
                   AND EXISTS (SELECT 1 FROM addresses a WHERE a.user_id = u.id
                               AND (?2 IS NULL OR a.channel = ?2))
                 ORDER BY id LIMIT ?3",
                )
                .map_err(db)?;
            let ids: Vec<UserId> = stmt
                .query_map(
                    params![after.unwrap_or(0), channel.map(ChannelKind::as_str), limit],
                    |r| r.get(0),
                )
                .map_err(db)?
                .collect::<Result<_, _>>()
                .map_err(db)?;
            addresses_of(conn, &ids)
        })
        .await
}

pub(super) async fn attach_address(
    store: &SqliteStore,
    user: UserId,
    address: &Address,
) -> Result<(), StoreError> {
    let channel = address.channel.as_str();
    let sender = address.sender_id.clone();
    store.write(move |conn| {
        atomic(conn, |conn| {
            if !user_exists(conn, user)? {
                return Err(StoreError::NotFound(format!("no user {user}")));
            }
            conn.execute(
                "INSERT INTO addresses (channel, sender_id, user_id, linked_at) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (channel, sender_id) DO UPDATE SET user_id = ?3, linked_at = ?4",
                params![channel, sender, user, now_ms()],
            )
            .map(|_| ())
            .map_err(db)
        })
    })
    .await
}

pub(super) async fn last_direct_chat(
    store: &SqliteStore,
    user: UserId,
) -> Result<Option<(ChannelKind, String)>, StoreError> {
    store
        .read(move |conn| {
            let row: Option<(String, String, i64)> = conn
                .query_row(
                    "SELECT i.channel, i.chat_id, i.id FROM inbox i
                 JOIN addresses a ON a.channel = i.channel AND a.sender_id = i.sender_id
                 WHERE a.user_id = ?1 AND i.chat_type = 'direct'
                 ORDER BY i.id DESC LIMIT 1",
                    [user],
                    |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
                )
                .optional()
                .map_err(db)?;
            // The chat of a direct message pruned from the inbox is kept in its address.
            let pruned: Option<(String, String, i64)> = conn
                .query_row(
                    "SELECT channel, last_chat_id, last_chat_inbox FROM addresses
                 WHERE user_id = ?1 AND last_chat_id IS NOT NULL
                 ORDER BY last_chat_inbox DESC LIMIT 1",
                    [user],
                    |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
                )
                .optional()
                .map_err(db)?;
            let newest = match (row, pruned) {
                (Some(a), Some(b)) => Some(if a.2 >= b.2 { a } else { b }),
                (a, b) => a.or(b),
            };
            newest
                .map(|(c, chat, _)| Ok((parse_channel(&c)?, chat)))
                .transpose()
        })
        .await
}

pub(super) async fn is_direct_chat_of(
    store: &SqliteStore,
    user: UserId,
    channel: ChannelKind,
    chat_id: &str,
) -> Result<bool, StoreError> {
    let chat = chat_id.to_owned();
    store
        .read(move |conn| {
            conn.query_row(
                "SELECT EXISTS (SELECT 1 FROM addresses a
                 WHERE a.user_id = ?1 AND a.channel = ?2 AND (a.last_chat_id = ?3
                   OR EXISTS (SELECT 1 FROM inbox i WHERE i.channel = a.channel
                     AND i.chat_id = ?3 AND i.sender_id = a.sender_id
                     AND i.chat_type = 'direct')))",
                params![user, channel.as_str(), chat],
                |r| r.get::<_, bool>(0),
            )
            .map_err(db)
        })
        .await
}

pub(super) async fn put_link_code(
    store: &SqliteStore,
    code: &str,
    user: UserId,
    expires_at_ms: i64,
) -> Result<(), StoreError> {
    let code = code.to_owned();
    store
        .write(move |conn| {
            // One live code per user: a new /link replaces the previous code.
            conn.execute(
                "UPDATE link_codes SET used = 1 WHERE user_id = ?1 AND used = 0",
                [user],
            )
            .map_err(db)?;
            conn.execute(
                "INSERT INTO link_codes (code, user_id, expires_at) VALUES (?1, ?2, ?3)",
                params![code, user, expires_at_ms],
            )
            .map(|_| ())
            .map_err(db)
        })
        .await
}

pub(super) async fn take_link_code(
    store: &SqliteStore,
    code: &str,
    now_ms: i64,
) -> Result<Option<UserId>, StoreError> {
    let code = code.to_owned();
    store
        .write(move |conn| {
            let user: Option<UserId> = conn
            .query_row(
                "UPDATE link_codes SET used = 1 WHERE code = ?1 AND used = 0 AND expires_at > ?2
                 RETURNING user_id",
                params![code, now_ms],
                |r| r.get(0),
            )
            .optional()
            .map_err(db)?;
            Ok(user)
        })
        .await
}

fn user_exists(conn: &Connection, id: UserId) -> Result<bool, StoreError> {
    conn.query_row(
        "SELECT 1 FROM users WHERE id = ?1 AND merged_into IS NULL",
        [id],
        |_| Ok(()),
    )
    .optional()
    .map(|o| o.is_some())
    .map_err(db)
}

/// The addresses of `users`, grouped by user, in the order given.
fn addresses_of(conn: &Connection, users: &[UserId]) -> Result<Vec<UserRecord>, StoreError> {
    let mut out: Vec<UserRecord> = users
        .iter()
        .map(|id| UserRecord {
            id: *id,
            addresses: Vec::new(),
        })
        .collect();
    if users.is_empty() {
        return Ok(out);
    }
    let marks = vec!["?"; users.len()].join(", ");
    let mut stmt = conn
        .prepare(&format!(
            "SELECT user_id, channel, sender_id FROM addresses WHERE user_id IN ({marks})
             ORDER BY user_id, channel, sender_id"
        ))
        .map_err(db)?;
    let rows = stmt
        .query_map(rusqlite::params_from_iter(users.iter()), |r| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, String>(2)?,
            ))
        })
        .map_err(db)?;
    let index: std::collections::HashMap<UserId, usize> =
        users.iter().enumerate().map(|(i, u)| (*u, i)).collect();
    for row in rows {
        let (user, channel, sender_id) = row.map_err(db)?;
        if let Some(i) = index.get(&user) {
            out[*i].addresses.push(Address {
                channel: parse_channel(&channel)?,
                sender_id,
            });
        }
    }
    Ok(out)
}
