//! Identities in PostgreSQL: users, their addresses, merges and link codes, and a user's last
//! direct chat.
//!
//! Every address belongs to exactly one user. A new address's user and address row are one
//! transaction, and the address is inserted `ON CONFLICT DO NOTHING`: when two instances meet
//! the same new address at once, one user wins and the other transaction is rolled back and
//! reads it. Merges, unlinks and attaches read before they write, so they hold the identity
//! advisory lock for their transaction and run one at a time.

use deadpool_postgres::{GenericClient, Transaction};

use super::migrations::IDENTITY_LOCK;
use super::{PostgresStore, col, db, to_i64};
use crate::message::{Address, ChannelKind, SessionKey, UserId, now_ms};
use crate::store::{StoreError, UserRecord, parse_channel};

async fn lookup(
    conn: &impl GenericClient,
    channel: &str,
    sender: &str,
) -> Result<Option<UserId>, StoreError> {
    let stmt = conn
        .prepare_cached("SELECT user_id FROM addresses WHERE channel = $1 AND sender_id = $2")
        .await
        .map_err(db)?;
    let row = conn
        .query_opt(&stmt, &[&channel, &sender])
        .await
        .map_err(db)?;
    row.map(|r| col(&r, 0)).transpose()
}

/// Takes the identity lock for the rest of `tx`.
async fn lock(tx: &Transaction<'_>) -> Result<(), StoreError> {
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&IDENTITY_LOCK])
        .await
        .map_err(db)?;
    Ok(())
}

pub(super) async fn resolve_address(
    store: &PostgresStore,
    address: &Address,
) -> Result<UserId, StoreError> {
    let channel = address.channel.as_str();
    let sender = address.sender_id.as_str();
    let mut client = store.client().await?;
    if let Some(id) = lookup(&client, channel, sender).await? {
        return Ok(id);
    }
    {
        let tx = client.transaction().await.map_err(db)?;
        let now = now_ms();
        let row = tx
            .query_one(
                "INSERT INTO users (created_at) VALUES ($1) RETURNING id",
                &[&now],
            )
            .await
            .map_err(db)?;
        let id: UserId = col(&row, 0)?;
        let inserted = tx
            .execute(
                "INSERT INTO addresses (channel, sender_id, user_id, linked_at)
                 VALUES ($1, $2, $3, $4) ON CONFLICT (channel, sender_id) DO NOTHING",
                &[&channel, &sender, &id, &now],
            )
            .await
            .map_err(db)?;
        if inserted == 1 {
            tx.commit().await.map_err(db)?;
            return Ok(id);
        }
        // Another writer created it first: this user is rolled back, and theirs is read.
        tx.rollback().await.map_err(db)?;
    }
    lookup(&client, channel, sender)
        .await?
        .ok_or_else(|| StoreError::Database(format!("address {address} vanished")))
}

pub(super) async fn user(store: &PostgresStore, id: UserId) -> Result<UserRecord, StoreError> {
    let client = store.client().await?;
    if !user_exists(&client, id).await? {
        return Err(StoreError::NotFound(format!("no user {id}")));
    }
    let mut out = addresses_of(&client, &[id]).await?;
    out.pop()
        .ok_or_else(|| StoreError::NotFound(format!("no user {id}")))
}

pub(super) async fn link_users(
    store: &PostgresStore,
    keep: UserId,
    merge: UserId,
) -> Result<(), StoreError> {
    if keep == merge {
        return Err(StoreError::Conflict(format!(
            "user {keep} is already linked"
        )));
    }
    let mut client = store.client().await?;
    let tx = client.transaction().await.map_err(db)?;
    lock(&tx).await?;
    for id in [keep, merge] {
        if !user_exists(&tx, id).await? {
            return Err(StoreError::NotFound(format!("no user {id}")));
        }
    }
    let keep_key = SessionKey::User(keep).to_string();
    let merge_key = SessionKey::User(merge).to_string();
    let now = now_ms();
    tx.execute(
        "UPDATE addresses SET user_id = $1, linked_at = $3 WHERE user_id = $2",
        &[&keep, &merge, &now],
    )
    .await
    .map_err(db)?;
    tx.execute(
        "UPDATE transcript SET session_key = $1 WHERE session_key = $2",
        &[&keep_key, &merge_key],
    )
    .await
    .map_err(db)?;
    tx.execute(
        "INSERT INTO sessions (key, created_at, last_active, turns)
         SELECT $1, created_at, last_active, turns FROM sessions WHERE key = $2
         ON CONFLICT (key) DO UPDATE SET
            created_at = LEAST(sessions.created_at, excluded.created_at),
            last_active = GREATEST(sessions.last_active, excluded.last_active),
            turns = sessions.turns + excluded.turns",
        &[&keep_key, &merge_key],
    )
    .await
    .map_err(db)?;
    tx.execute("DELETE FROM sessions WHERE key = $1", &[&merge_key])
        .await
        .map_err(db)?;
    tx.execute(
        "UPDATE users SET merged_into = $1 WHERE id = $2",
        &[&keep, &merge],
    )
    .await
    .map_err(db)?;
    tx.execute(
        "UPDATE link_codes SET used = TRUE WHERE user_id = $1",
        &[&merge],
    )
    .await
    .map_err(db)?;
    super::usage::merge_users(&tx, keep, merge).await?;
    tx.commit().await.map_err(db)
}

pub(super) async fn unlink_address(
    store: &PostgresStore,
    address: &Address,
) -> Result<UserId, StoreError> {
    let channel = address.channel.as_str();
    let sender = address.sender_id.as_str();
    let mut client = store.client().await?;
    let tx = client.transaction().await.map_err(db)?;
    lock(&tx).await?;
    let owner = lookup(&tx, channel, sender)
        .await?
        .ok_or_else(|| StoreError::NotFound(format!("no address {address}")))?;
    let row = tx
        .query_one(
            "SELECT COUNT(*) FROM addresses WHERE user_id = $1",
            &[&owner],
        )
        .await
        .map_err(db)?;
    if col::<i64>(&row, 0)? < 2 {
        return Err(StoreError::Conflict(format!(
            "{address} is the only address of user {owner}; there is nothing to unlink"
        )));
    }
    let now = now_ms();
    let row = tx
        .query_one(
            "INSERT INTO users (created_at) VALUES ($1) RETURNING id",
            &[&now],
        )
        .await
        .map_err(db)?;
    let id: UserId = col(&row, 0)?;
    tx.execute(
        "UPDATE addresses SET user_id = $1, linked_at = $2 WHERE channel = $3 AND sender_id = $4",
        &[&id, &now, &channel, &sender],
    )
    .await
    .map_err(db)?;
    tx.commit().await.map_err(db)?;
    Ok(id)
}

pub(super) async fn list_users(
    store: &PostgresStore,
    channel: Option<ChannelKind>,
    after: Option<UserId>,
    limit: usize,
) -> Result<Vec<UserRecord>, StoreError> {
    let client = store.client().await?;
    let rows = client
        .query(
            "SELECT id FROM users u WHERE merged_into IS NULL AND id > $1
               AND EXISTS (SELECT 1 FROM addresses a WHERE a.user_id = u.id
                           AND ($2::text IS NULL OR a.channel = $2))
             ORDER BY id LIMIT $3",
            &[
                &after.unwrap_or(0),
                &channel.map(ChannelKind::as_str),
                &to_i64(limit),
            ],
        )
        .await
        .map_err(db)?;
    let ids: Vec<UserId> = rows.iter().map(|r| col(r, 0)).collect::<Result<_, _>>()?;
    addresses_of(&client, &ids).await
}

pub(super) async fn attach_address(
    store: &PostgresStore,
    user: UserId,
    address: &Address,
) -> Result<(), StoreError> {
    let mut client = store.client().await?;
    let tx = client.transaction().await.map_err(db)?;
    lock(&tx).await?;
    if !user_exists(&tx, user).await? {
        return Err(StoreError::NotFound(format!("no user {user}")));
    }
    tx.execute(
        "INSERT INTO addresses (channel, sender_id, user_id, linked_at) VALUES ($1, $2, $3, $4)
         ON CONFLICT (channel, sender_id) DO UPDATE SET user_id = $3, linked_at = $4",
        &[
            &address.channel.as_str(),
            &address.sender_id,
            &user,
            &now_ms(),
        ],
    )
    .await
    .map_err(db)?;
    tx.commit().await.map_err(db)
}

pub(super) async fn last_direct_chat(
    store: &PostgresStore,
    user: UserId,
) -> Result<Option<(ChannelKind, String)>, StoreError> {
    let client = store.client().await?;
    let read = |r: tokio_postgres::Row| -> Result<(String, String, i64), StoreError> {
        Ok((col(&r, 0)?, col(&r, 1)?, col(&r, 2)?))
    };
    let row = client
        .query_opt(
            "SELECT i.channel, i.chat_id, i.id FROM inbox i
             JOIN addresses a ON a.channel = i.channel AND a.sender_id = i.sender_id
             WHERE a.user_id = $1 AND i.chat_type = 'direct'
             ORDER BY i.id DESC LIMIT 1",
            &[&user],
        )
        .await
        .map_err(db)?
        .map(read)
        .transpose()?;
    // The chat of a direct message pruned from the inbox is kept in its address.
    let pruned = client
        .query_opt(
            "SELECT channel, last_chat_id, last_chat_inbox FROM addresses
             WHERE user_id = $1 AND last_chat_id IS NOT NULL
             ORDER BY last_chat_inbox DESC LIMIT 1",
            &[&user],
        )
        .await
        .map_err(db)?
        .map(read)
        .transpose()?;
    let newest = match (row, pruned) {
        (Some(a), Some(b)) => Some(if a.2 >= b.2 { a } else { b }),
        (a, b) => a.or(b),
    };
    newest
        .map(|(c, chat, _)| Ok((parse_channel(&c)?, chat)))
        .transpose()
}

pub(super) async fn is_direct_chat_of(
    store: &PostgresStore,
    user: UserId,
    channel: ChannelKind,
    chat_id: &str,
) -> Result<bool, StoreError> {
    let client = store.client().await?;
    let row = client
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM addresses a
             WHERE a.user_id = $1 AND a.channel = $2 AND (a.last_chat_id = $3
               OR EXISTS (SELECT 1 FROM inbox i WHERE i.channel = a.channel
                 AND i.chat_id = $3 AND i.sender_id = a.sender_id
                 AND i.chat_type = 'direct')))",
            &[&user, &channel.as_str(), &chat_id],
        )
        .await
        .map_err(db)?;
    col(&row, 0)
}

pub(super) async fn put_link_code(
    store: &PostgresStore,
    code: &str,
    user: UserId,
    expires_at_ms: i64,
) -> Result<(), StoreError> {
    let mut client = store.client().await?;
    let tx = client.transaction().await.map_err(db)?;
    // One live code per user: a new /link replaces the previous code.
    tx.execute(
        "UPDATE link_codes SET used = TRUE WHERE user_id = $1 AND NOT used",
        &[&user],
    )
    .await
    .map_err(db)?;
    tx.execute(
        "INSERT INTO link_codes (code, user_id, expires_at) VALUES ($1, $2, $3)",
        &[&code, &user, &expires_at_ms],
    )
    .await
    .map_err(db)?;
    tx.commit().await.map_err(db)
}

pub(super) async fn take_link_code(
    store: &PostgresStore,
    code: &str,
    now_ms: i64,
) -> Result<Option<UserId>, StoreError> {
    let client = store.client().await?;
    let row = client
        .query_opt(
            "UPDATE link_codes SET used = TRUE WHERE code = $1 AND NOT used AND expires_at > $2
             RETURNING user_id",
            &[&code, &now_ms],
        )
        .await
        .map_err(db)?;
    row.map(|r| col(&r, 0)).transpose()
}

async fn user_exists(conn: &impl GenericClient, id: UserId) -> Result<bool, StoreError> {
    let stmt = conn
        .prepare_cached("SELECT 1 FROM users WHERE id = $1 AND merged_into IS NULL")
        .await
        .map_err(db)?;
    Ok(conn.query_opt(&stmt, &[&id]).await.map_err(db)?.is_some())
}

/// The addresses of `users`, grouped by user, in the order given.
async fn addresses_of(
    conn: &impl GenericClient,
    users: &[UserId],
) -> Result<Vec<UserRecord>, StoreError> {
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
    let rows = conn
        .query(
            "SELECT user_id, channel, sender_id FROM addresses WHERE user_id = ANY($1)
             ORDER BY user_id, channel, sender_id",
            &[&users],
        )
        .await
        .map_err(db)?;
    let index: std::collections::HashMap<UserId, usize> =
        users.iter().enumerate().map(|(i, u)| (*u, i)).collect();
    for r in &rows {
        let user: i64 = col(r, 0)?;
        let channel: String = col(r, 1)?;
        if let Some(i) = index.get(&user) {
            out[*i].addresses.push(Address {
                channel: parse_channel(&channel)?,
                sender_id: col(r, 2)?,
            });
        }
    }
    Ok(out)
}
