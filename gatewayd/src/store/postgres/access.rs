//! Access control in PostgreSQL: pairing requests (`pairing_requests`) with their kept messages
//! (`pairing_kept`), approved users (`access_approvals`), blocked users (`access_blocks`), and
//! inbox rows dropped without a turn (`inbox.done`, with `inbox.blocked` for a blocked sender).
//!
//! Every pairing write reads the requests before it changes them (the cap per channel, the
//! kept-message limit), so each holds the pairing advisory lock for its transaction: they run
//! one at a time across instances, as the embedded store's single writer runs them.

use deadpool_postgres::{GenericClient, Transaction};

use super::migrations::PAIRING_LOCK;
use super::{PostgresStore, col, db, to_i64};
use crate::message::UserId;
use crate::store::{
    Kept, PairingMessage, PairingRequest, PendingInbound, StoreError, UserFlags, parse_channel,
};

pub(super) async fn inbox_drop(
    store: &PostgresStore,
    inbox_id: i64,
    blocked: bool,
) -> Result<(), StoreError> {
    let client = store.client().await?;
    client
        .execute(
            "UPDATE inbox SET done = TRUE, blocked = $2 WHERE id = $1 AND NOT done",
            &[&inbox_id, &blocked],
        )
        .await
        .map_err(db)?;
    Ok(())
}

pub(super) async fn access_flags(
    store: &PostgresStore,
    user: UserId,
) -> Result<UserFlags, StoreError> {
    let client = store.client().await?;
    let stmt = client
        .prepare_cached(
            "SELECT
                EXISTS (SELECT 1 FROM access_approvals WHERE user_id = $1
                        OR user_id IN (SELECT id FROM users WHERE merged_into = $1)),
                EXISTS (SELECT 1 FROM access_blocks WHERE user_id = $1
                        OR user_id IN (SELECT id FROM users WHERE merged_into = $1)),
                (SELECT tokens_per_day FROM budget_overrides WHERE user_id = $1),
                (SELECT turns_per_minute FROM budget_overrides WHERE user_id = $1)",
        )
        .await
        .map_err(db)?;
    let row = client.query_one(&stmt, &[&user]).await.map_err(db)?;
    Ok(UserFlags {
        approved: col(&row, 0)?,
        blocked: col(&row, 1)?,
        budget: crate::store::BudgetOverride {
            tokens_per_day: col::<Option<i64>>(&row, 2)?.map(super::usage::to_u64),
            turns_per_minute: col::<Option<i64>>(&row, 3)?.map(super::usage::to_u64),
        },
    })
}

pub(super) async fn set_blocked(
    store: &PostgresStore,
    user: UserId,
    blocked: bool,
) -> Result<(), StoreError> {
    let now = crate::message::now_ms();
    let mut client = store.client().await?;
    let tx = client.transaction().await.map_err(db)?;
    let exists = tx
        .query_opt("SELECT 1 FROM users WHERE id = $1", &[&user])
        .await
        .map_err(db)?
        .is_some();
    if !exists {
        return Err(StoreError::NotFound(format!("no user {user}")));
    }
    if blocked {
        tx.execute(
            "INSERT INTO access_blocks (user_id, blocked_at) VALUES ($1, $2)
             ON CONFLICT (user_id) DO NOTHING",
            &[&user, &now],
        )
        .await
    } else {
        tx.execute(
            "DELETE FROM access_blocks WHERE user_id = $1
                OR user_id IN (SELECT id FROM users WHERE merged_into = $1)",
            &[&user],
        )
        .await
    }
    .map_err(db)?;
    tx.commit().await.map_err(db)
}

/// Takes the pairing lock for the rest of `tx`.
async fn lock(tx: &Transaction<'_>) -> Result<(), StoreError> {
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&PAIRING_LOCK])
        .await
        .map_err(db)?;
    Ok(())
}

pub(super) async fn pairing_expire(store: &PostgresStore, now: i64) -> Result<(), StoreError> {
    let mut client = store.client().await?;
    let tx = client.transaction().await.map_err(db)?;
    lock(&tx).await?;
    expire(&tx, now).await?;
    tx.commit().await.map_err(db)
}

/// Removes the requests expired at `now`, marking their kept messages done.
async fn expire(tx: &Transaction<'_>, now: i64) -> Result<(), StoreError> {
    tx.execute(
        "UPDATE inbox SET done = TRUE WHERE NOT done AND id IN (
            SELECT k.inbox_id FROM pairing_kept k JOIN pairing_requests p ON p.code = k.code
            WHERE p.expires_at <= $1)",
        &[&now],
    )
    .await
    .map_err(db)?;
    tx.execute(
        "DELETE FROM pairing_kept WHERE code IN
            (SELECT code FROM pairing_requests WHERE expires_at <= $1)",
        &[&now],
    )
    .await
    .map_err(db)?;
    tx.execute(
        "DELETE FROM pairing_requests WHERE expires_at <= $1",
        &[&now],
    )
    .await
    .map_err(db)?;
    Ok(())
}

pub(super) async fn pairing_keep(
    store: &PostgresStore,
    msg: PairingMessage,
) -> Result<Kept, StoreError> {
    let mut client = store.client().await?;
    let tx = client.transaction().await.map_err(db)?;
    lock(&tx).await?;
    expire(&tx, msg.now_ms).await?;
    let done: Option<bool> = tx
        .query_opt("SELECT done FROM inbox WHERE id = $1", &[&msg.inbox_id])
        .await
        .map_err(db)?
        .map(|r| col(&r, 0))
        .transpose()?;
    if done != Some(false) {
        tx.commit().await.map_err(db)?;
        return Ok(Kept::Settled);
    }
    let channel = msg.channel.as_str();
    let existing: Option<(String, i64)> = tx
        .query_opt(
            "SELECT code, last_reply_at FROM pairing_requests WHERE channel = $1 AND sender_id = $2",
            &[&channel, &msg.sender_id],
        )
        .await
        .map_err(db)?
        .map(|r| Ok::<_, StoreError>((col(&r, 0)?, col(&r, 1)?)))
        .transpose()?;
    let (code, reply, new) = match existing {
        Some((code, last_reply)) => {
            let reply = msg.now_ms.saturating_sub(last_reply) >= msg.reply_interval_ms;
            if reply {
                tx.execute(
                    "UPDATE pairing_requests SET last_reply_at = $2 WHERE code = $1",
                    &[&code, &msg.now_ms],
                )
                .await
                .map_err(db)?;
            }
            (code, reply, false)
        }
        None => {
            let row = tx
                .query_one(
                    "SELECT COUNT(*) FROM pairing_requests WHERE channel = $1",
                    &[&channel],
                )
                .await
                .map_err(db)?;
            let pending: i64 = col(&row, 0)?;
            if usize::try_from(pending).unwrap_or(usize::MAX) >= msg.max_pending {
                tx.execute(
                    "UPDATE inbox SET done = TRUE WHERE id = $1 AND NOT done",
                    &[&msg.inbox_id],
                )
                .await
                .map_err(db)?;
                tx.commit().await.map_err(db)?;
                return Ok(Kept::Full);
            }
            tx.execute(
                "INSERT INTO pairing_requests (code, channel, sender_id, user_id,
                    display_name, first_seen, expires_at, last_reply_at)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $6)",
                &[
                    &msg.new_code,
                    &channel,
                    &msg.sender_id,
                    &msg.user_id,
                    &msg.display_name,
                    &msg.now_ms,
                    &msg.expires_at_ms,
                ],
            )
            .await
            .map_err(db)?;
            (msg.new_code.clone(), true, true)
        }
    };
    tx.execute(
        "INSERT INTO pairing_kept (inbox_id, code) VALUES ($1, $2) ON CONFLICT (inbox_id) DO NOTHING",
        &[&msg.inbox_id, &code],
    )
    .await
    .map_err(db)?;
    // Older kept messages beyond the limit are marked done, unanswered.
    let keep = to_i64(msg.keep_max);
    let old: Vec<i64> = tx
        .query(
            "SELECT inbox_id FROM pairing_kept WHERE code = $1 ORDER BY inbox_id DESC OFFSET $2",
            &[&code, &keep],
        )
        .await
        .map_err(db)?
        .iter()
        .map(|r| col(r, 0))
        .collect::<Result<_, _>>()?;
    if !old.is_empty() {
        tx.execute("DELETE FROM pairing_kept WHERE inbox_id = ANY($1)", &[&old])
            .await
            .map_err(db)?;
        tx.execute(
            "UPDATE inbox SET done = TRUE WHERE id = ANY($1) AND NOT done",
            &[&old],
        )
        .await
        .map_err(db)?;
    }
    tx.commit().await.map_err(db)?;
    Ok(Kept::Kept { code, reply, new })
}

async fn requests(
    conn: &impl GenericClient,
    code: Option<&str>,
    now: i64,
) -> Result<Vec<PairingRequest>, StoreError> {
    let rows = conn
        .query(
            "SELECT code, channel, sender_id, user_id, display_name, first_seen, expires_at
             FROM pairing_requests
             WHERE expires_at > $1 AND ($2::text IS NULL OR code = $2) ORDER BY first_seen, code",
            &[&now, &code],
        )
        .await
        .map_err(db)?;
    let mut out = Vec::with_capacity(rows.len());
    for row in &rows {
        let code: String = col(row, 0)?;
        let channel: String = col(row, 1)?;
        let kept = conn
            .query(
                "SELECT inbox_id FROM pairing_kept WHERE code = $1 ORDER BY inbox_id",
                &[&code],
            )
            .await
            .map_err(db)?
            .iter()
            .map(|r| col(r, 0))
            .collect::<Result<Vec<i64>, _>>()?;
        out.push(PairingRequest {
            channel: parse_channel(&channel)?,
            sender_id: col(row, 2)?,
            user_id: col(row, 3)?,
            display_name: col(row, 4)?,
            first_seen_ms: col(row, 5)?,
            expires_at_ms: col(row, 6)?,
            kept,
            code,
        });
    }
    Ok(out)
}

pub(super) async fn pairing_list(
    store: &PostgresStore,
    now: i64,
) -> Result<Vec<PairingRequest>, StoreError> {
    let client = store.client().await?;
    requests(&client, None, now).await
}

pub(super) async fn pairing_get(
    store: &PostgresStore,
    code: &str,
    now: i64,
) -> Result<Option<PairingRequest>, StoreError> {
    let client = store.client().await?;
    Ok(requests(&client, Some(code), now).await?.into_iter().next())
}

/// Takes the pending request `code` out of the tables.
async fn take(tx: &Transaction<'_>, code: &str, now: i64) -> Result<PairingRequest, StoreError> {
    let request = requests(tx, Some(code), now)
        .await?
        .into_iter()
        .next()
        .ok_or_else(|| {
            StoreError::NotFound(format!(
                "no pending pairing request `{code}`; see `gatewayctl pairing list`"
            ))
        })?;
    tx.execute("DELETE FROM pairing_kept WHERE code = $1", &[&code])
        .await
        .map_err(db)?;
    tx.execute("DELETE FROM pairing_requests WHERE code = $1", &[&code])
        .await
        .map_err(db)?;
    Ok(request)
}

pub(super) async fn pairing_approve(
    store: &PostgresStore,
    code: &str,
    user: UserId,
    now: i64,
) -> Result<PairingRequest, StoreError> {
    let mut client = store.client().await?;
    let tx = client.transaction().await.map_err(db)?;
    lock(&tx).await?;
    let request = take(&tx, code, now).await?;
    tx.execute(
        "INSERT INTO access_approvals (user_id, approved_at) VALUES ($1, $2)
         ON CONFLICT (user_id) DO NOTHING",
        &[&user, &now],
    )
    .await
    .map_err(db)?;
    tx.commit().await.map_err(db)?;
    Ok(request)
}

pub(super) async fn pairing_deny(
    store: &PostgresStore,
    code: &str,
    now: i64,
) -> Result<PairingRequest, StoreError> {
    let mut client = store.client().await?;
    let tx = client.transaction().await.map_err(db)?;
    lock(&tx).await?;
    let request = take(&tx, code, now).await?;
    tx.execute(
        "UPDATE inbox SET done = TRUE WHERE id = ANY($1) AND NOT done",
        &[&request.kept],
    )
    .await
    .map_err(db)?;
    tx.commit().await.map_err(db)?;
    Ok(request)
}

pub(super) async fn inbox_rows(
    store: &PostgresStore,
    ids: &[i64],
) -> Result<Vec<PendingInbound>, StoreError> {
    let pending = super::inbox::pending(store, Some(ids)).await?;
    Ok(ids
        .iter()
        .filter_map(|id| pending.iter().find(|p| p.inbox_id == *id).cloned())
        .collect())
}
