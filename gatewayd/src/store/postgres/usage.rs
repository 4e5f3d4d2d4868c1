//! Token usage and budget overrides in PostgreSQL: one `usage` row per agent turn (inserted in
//! the turn's transaction, see [`super::transcript`]), summed per user over a period, and one
//! `budget_overrides` row per user with limits of their own.
//!
//! Counts are stored as `BIGINT`; a count beyond `i64::MAX` is stored as `i64::MAX`. Sums are
//! taken as `float8`, so they never overflow, and cut to `u64` as the embedded store cuts them.

use deadpool_postgres::Transaction;

use super::{PostgresStore, col, db, to_i64};
use crate::message::{UserId, now_ms};
use crate::store::{BudgetOverride, StoreError, UsageRecord, UsageTotal};

pub(super) fn to_u64(n: i64) -> u64 {
    u64::try_from(n).unwrap_or(0)
}

/// Inserts `usage` inside the caller's transaction.
pub(super) async fn insert(tx: &Transaction<'_>, usage: &UsageRecord) -> Result<(), StoreError> {
    let stmt = tx
        .prepare_cached(
            "INSERT INTO usage (user_id, session_key, inbox_id, at, prompt_tokens,
                completion_tokens, estimated)
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .await
        .map_err(db)?;
    tx.execute(
        &stmt,
        &[
            &usage.user,
            &usage.session.to_string(),
            &usage.inbox_id,
            &usage.at_ms,
            &to_i64(usage.prompt_tokens),
            &to_i64(usage.completion_tokens),
            &usage.estimated,
        ],
    )
    .await
    .map_err(db)?;
    Ok(())
}

/// Moves `merge`'s usage to `keep` (inside the link's transaction). `keep`'s budget override
/// stays; `merge`'s is taken only when `keep` has none.
pub(super) async fn merge_users(
    tx: &Transaction<'_>,
    keep: UserId,
    merge: UserId,
) -> Result<(), StoreError> {
    let keep_key = crate::message::SessionKey::User(keep).to_string();
    let merge_key = crate::message::SessionKey::User(merge).to_string();
    tx.execute(
        "UPDATE usage SET user_id = $1 WHERE user_id = $2",
        &[&keep, &merge],
    )
    .await
    .map_err(db)?;
    tx.execute(
        "UPDATE usage SET session_key = $1 WHERE session_key = $2",
        &[&keep_key, &merge_key],
    )
    .await
    .map_err(db)?;
    tx.execute(
        "INSERT INTO budget_overrides (user_id, tokens_per_day, turns_per_minute, updated_at)
         SELECT $1, tokens_per_day, turns_per_minute, updated_at FROM budget_overrides
         WHERE user_id = $2
         ON CONFLICT (user_id) DO NOTHING",
        &[&keep, &merge],
    )
    .await
    .map_err(db)?;
    tx.execute("DELETE FROM budget_overrides WHERE user_id = $1", &[&merge])
        .await
        .map_err(db)?;
    Ok(())
}

pub(super) async fn totals(
    store: &PostgresStore,
    user: Option<UserId>,
    since_ms: i64,
) -> Result<Vec<UsageTotal>, StoreError> {
    let client = store.client().await?;
    let stmt = client
        .prepare_cached(
            "SELECT user_id, SUM(prompt_tokens)::float8, SUM(completion_tokens)::float8,
                    COUNT(*), bool_or(estimated)
             FROM usage WHERE at >= $1 AND ($2::bigint IS NULL OR user_id = $2)
             GROUP BY user_id
             ORDER BY SUM(prompt_tokens)::float8 + SUM(completion_tokens)::float8 DESC, user_id",
        )
        .await
        .map_err(db)?;
    let rows = client.query(&stmt, &[&since_ms, &user]).await.map_err(db)?;
    rows.iter()
        .map(|r| {
            Ok(UsageTotal {
                user: col(r, 0)?,
                prompt_tokens: col::<f64>(r, 1)? as u64,
                completion_tokens: col::<f64>(r, 2)? as u64,
                turns: to_u64(col(r, 3)?),
                estimated: col(r, 4)?,
            })
        })
        .collect()
}

pub(super) async fn turn_times(
    store: &PostgresStore,
    user: UserId,
    since_ms: i64,
) -> Result<Vec<i64>, StoreError> {
    let client = store.client().await?;
    let stmt = client
        .prepare_cached("SELECT at FROM usage WHERE user_id = $1 AND at >= $2 ORDER BY at, id")
        .await
        .map_err(db)?;
    let rows = client.query(&stmt, &[&user, &since_ms]).await.map_err(db)?;
    rows.iter().map(|r| col(r, 0)).collect()
}

pub(super) async fn get_override(
    store: &PostgresStore,
    user: UserId,
) -> Result<BudgetOverride, StoreError> {
    let client = store.client().await?;
    let row = client
        .query_opt(
            "SELECT tokens_per_day, turns_per_minute FROM budget_overrides WHERE user_id = $1",
            &[&user],
        )
        .await
        .map_err(db)?;
    match row {
        None => Ok(BudgetOverride::default()),
        Some(r) => Ok(BudgetOverride {
            tokens_per_day: col::<Option<i64>>(&r, 0)?.map(to_u64),
            turns_per_minute: col::<Option<i64>>(&r, 1)?.map(to_u64),
        }),
    }
}

pub(super) async fn set_override(
    store: &PostgresStore,
    user: UserId,
    limits: BudgetOverride,
) -> Result<(), StoreError> {
    let client = store.client().await?;
    if limits.is_empty() {
        client
            .execute("DELETE FROM budget_overrides WHERE user_id = $1", &[&user])
            .await
            .map_err(db)?;
        return Ok(());
    }
    client
        .execute(
            "INSERT INTO budget_overrides (user_id, tokens_per_day, turns_per_minute, updated_at)
             VALUES ($1, $2, $3, $4)
             ON CONFLICT (user_id) DO UPDATE SET tokens_per_day = excluded.tokens_per_day,
                 turns_per_minute = excluded.turns_per_minute, updated_at = excluded.updated_at",
            &[
                &user,
                &limits.tokens_per_day.map(to_i64),
                &limits.turns_per_minute.map(to_i64),
                &now_ms(),
            ],
        )
        .await
        .map_err(db)?;
    Ok(())
}
