//! Token usage and budget overrides: one `usage` row per agent turn (inserted inside the turn's
//! savepoint, see [`super::transcript`]), summed per user over a period, and one
//! `budget_overrides` row per user with limits of their own.
//!
//! Counts are stored as SQLite integers (`i64`); a count beyond `i64::MAX` is stored as
//! `i64::MAX`, and sums saturate the same way.

use rusqlite::{Connection, OptionalExtension, params};

use super::{SqliteStore, db};
use crate::message::{UserId, now_ms};
use crate::store::{BudgetOverride, StoreError, UsageRecord, UsageTotal};

fn to_i64(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

fn to_u64(n: i64) -> u64 {
    u64::try_from(n).unwrap_or(0)
}

/// Inserts `usage` on `conn` (inside the caller's transaction).
pub(super) fn insert(conn: &Connection, usage: &UsageRecord) -> Result<(), StoreError> {
    conn.prepare_cached(
        "INSERT INTO usage (user_id, session_key, inbox_id, at, prompt_tokens, completion_tokens, estimated)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
    )
    .and_then(|mut s| {
        s.execute(params![
            usage.user,
            usage.session.to_string(),
            usage.inbox_id,
            usage.at_ms,
            to_i64(usage.prompt_tokens),
            to_i64(usage.completion_tokens),
            usage.estimated,
        ])
    })
    .map_err(db)?;
    Ok(())
}

/// Moves `merge`'s usage to `keep` (inside the link's transaction), so a linked person's
/// budget counts what both spent. `keep`'s budget override stays; `merge`'s is taken only when
/// `keep` has none.
pub(super) fn merge_users(
    conn: &Connection,
    keep: UserId,
    merge: UserId,
) -> Result<(), StoreError> {
    let keep_key = crate::message::SessionKey::User(keep).to_string();
    let merge_key = crate::message::SessionKey::User(merge).to_string();
    conn.execute(
        "UPDATE usage SET user_id = ?1 WHERE user_id = ?2",
        params![keep, merge],
    )
    .map_err(db)?;
    conn.execute(
        "UPDATE usage SET session_key = ?1 WHERE session_key = ?2",
        params![keep_key, merge_key],
    )
    .map_err(db)?;
    conn.execute(
        "INSERT OR IGNORE INTO budget_overrides (user_id, tokens_per_day, turns_per_minute, updated_at)
         SELECT ?1, tokens_per_day, turns_per_minute, updated_at FROM budget_overrides WHERE user_id = ?2",
        params![keep, merge],
    )
    .map_err(db)?;
    conn.execute("DELETE FROM budget_overrides WHERE user_id = ?1", [merge])
        .map_err(db)?;
    Ok(())
}

pub(super) async fn totals(
    store: &SqliteStore,
    user: Option<UserId>,
    since_ms: i64,
) -> Result<Vec<UsageTotal>, StoreError> {
    store
        .read(move |conn| {
            let mut stmt = conn
                .prepare_cached(
                    "SELECT user_id, TOTAL(prompt_tokens), TOTAL(completion_tokens), COUNT(*),
                            MAX(estimated)
                     FROM usage WHERE at >= ?1 AND (?2 IS NULL OR user_id = ?2)
                     GROUP BY user_id
                     ORDER BY TOTAL(prompt_tokens) + TOTAL(completion_tokens) DESC, user_id",
                )
                .map_err(db)?;
            let rows = stmt
                .query_map(params![since_ms, user], |r| {
                    // TOTAL() is a float, so a sum never overflows; it is cut to u64 here.
                    Ok(UsageTotal {
                        user: r.get(0)?,
                        prompt_tokens: r.get::<_, f64>(1)? as u64,
                        completion_tokens: r.get::<_, f64>(2)? as u64,
                        turns: to_u64(r.get(3)?),
                        estimated: r.get::<_, i64>(4)? != 0,
                    })
                })
                .map_err(db)?;
            rows.collect::<Result<Vec<_>, _>>().map_err(db)
        })
        .await
}

pub(super) async fn turn_times(
    store: &SqliteStore,
    user: UserId,
    since_ms: i64,
) -> Result<Vec<i64>, StoreError> {
    store
        .read(move |conn| {
            let mut stmt = conn
                .prepare_cached(
                    "SELECT at FROM usage WHERE user_id = ?1 AND at >= ?2 ORDER BY at, id",
                )
                .map_err(db)?;
            let rows = stmt
                .query_map(params![user, since_ms], |r| r.get::<_, i64>(0))
                .map_err(db)?;
            rows.collect::<Result<Vec<_>, _>>().map_err(db)
        })
        .await
}

pub(super) async fn get_override(
    store: &SqliteStore,
    user: UserId,
) -> Result<BudgetOverride, StoreError> {
    store.read(move |conn| override_of(conn, user)).await
}

/// `user`'s budget override on `conn` (empty when none is set).
pub(super) fn override_of(
    conn: &rusqlite::Connection,
    user: UserId,
) -> Result<BudgetOverride, StoreError> {
    conn.prepare_cached(
        "SELECT tokens_per_day, turns_per_minute FROM budget_overrides WHERE user_id = ?1",
    )
    .and_then(|mut s| {
        s.query_row([user], |r| {
            Ok(BudgetOverride {
                tokens_per_day: r.get::<_, Option<i64>>(0)?.map(to_u64),
                turns_per_minute: r.get::<_, Option<i64>>(1)?.map(to_u64),
            })
        })
        .optional()
    })
    .map(Option::unwrap_or_default)
    .map_err(db)
}

pub(super) async fn set_override(
    store: &SqliteStore,
    user: UserId,
    limits: BudgetOverride,
) -> Result<(), StoreError> {
    store
        .write(move |conn| {
            if limits.is_empty() {
                conn.prepare_cached("DELETE FROM budget_overrides WHERE user_id = ?1")
                    .and_then(|mut s| s.execute([user]))
                    .map_err(db)?;
                return Ok(());
            }
            conn.prepare_cached(
                "INSERT INTO budget_overrides (user_id, tokens_per_day, turns_per_minute, updated_at)
                 VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (user_id) DO UPDATE SET tokens_per_day = excluded.tokens_per_day,
                     turns_per_minute = excluded.turns_per_minute, updated_at = excluded.updated_at",
            )
            .and_then(|mut s| {
                s.execute(params![
                    user,
                    limits.tokens_per_day.map(to_i64),
                    limits.turns_per_minute.map(to_i64),
                    now_ms()
                ])
            })
            .map_err(db)?;
            Ok(())
        })
        .await
}

#[cfg(test)]
mod tests {
    use super::super::test_support::*;
    use crate::message::{SessionKey, now_ms};
    use crate::store::{BudgetOverride, Store, StoreError, TurnRecord, UsageRecord, UsageTotal};

    fn turn(inbox_id: i64, user: i64) -> TurnRecord {
        TurnRecord {
            inbox_id,
            session: SessionKey::User(user),
            entries: vec![entry("hi", now_ms())],
            replies: Vec::new(),
            fence: None,
        }
    }

    fn usage(inbox_id: i64, user: i64, at_ms: i64, p: u64, c: u64, est: bool) -> UsageRecord {
        UsageRecord {
            user,
            session: SessionKey::User(user),
            inbox_id,
            at_ms,
            prompt_tokens: p,
            completion_tokens: c,
            estimated: est,
        }
    }

    #[tokio::test]
    async fn usage_commits_with_its_turn_and_sums_per_user() {
        let (_dir, store) = open();
        let now = now_ms();
        let a = new_inbox_row(&store, "a", "u1").await;
        let b = new_inbox_row(&store, "b", "u1").await;
        let c = new_inbox_row(&store, "c", "u2").await;
        for (row, user, at, p, cc, est) in [
            (a, 1, now - 120_000, 10, 2, false),
            (b, 1, now, 5, 1, true),
            (c, 2, now, 100, 50, false),
        ] {
            store
                .commit_turn_with_usage(turn(row, user), Some(usage(row, user, at, p, cc, est)))
                .await
                .expect("turn");
        }
        // A second turn for the same row is refused, and its usage is not recorded either.
        let again = store
            .commit_turn_with_usage(turn(a, 1), Some(usage(a, 1, now, 1000, 1000, false)))
            .await;
        assert!(matches!(again, Err(StoreError::Conflict(_))), "{again:?}");
        let all = store.usage_totals(None, 0).await.expect("totals");
        assert_eq!(
            all,
            [
                UsageTotal {
                    user: 2,
                    prompt_tokens: 100,
                    completion_tokens: 50,
                    turns: 1,
                    estimated: false
                },
                UsageTotal {
                    user: 1,
                    prompt_tokens: 15,
                    completion_tokens: 3,
                    turns: 2,
                    estimated: true
                },
            ]
        );
        let recent = store
            .usage_totals(Some(1), now - 60_000)
            .await
            .expect("totals");
        assert_eq!(recent.len(), 1);
        assert_eq!((recent[0].tokens(), recent[0].turns), (6, 1));
        assert_eq!(
            store.turn_times(1, 0).await.expect("times"),
            [now - 120_000, now]
        );
    }

    #[tokio::test]
    async fn linking_users_moves_the_merged_users_usage_and_override() {
        let (_dir, store) = open();
        let now = now_ms();
        let a = new_inbox_row(&store, "a", "u1").await;
        let b = new_inbox_row(&store, "b", "u2").await;
        let keep = store
            .resolve_address(&msg("a", "u1").address())
            .await
            .expect("u1");
        let merge = store
            .resolve_address(&msg("b", "u2").address())
            .await
            .expect("u2");
        for (row, user) in [(a, keep), (b, merge)] {
            store
                .commit_turn_with_usage(turn(row, user), Some(usage(row, user, now, 10, 1, false)))
                .await
                .expect("turn");
        }
        let limits = BudgetOverride {
            tokens_per_day: Some(5),
            turns_per_minute: None,
        };
        store.set_budget_override(merge, limits).await.expect("set");
        store.link_users(keep, merge).await.expect("link");
        let totals = store.usage_totals(None, 0).await.expect("totals");
        assert_eq!(totals.len(), 1, "{totals:?}");
        assert_eq!(
            (totals[0].user, totals[0].tokens(), totals[0].turns),
            (keep, 22, 2)
        );
        assert_eq!(store.budget_override(keep).await.expect("get"), limits);
        assert!(store.budget_override(merge).await.expect("get").is_empty());
    }

    #[tokio::test]
    async fn an_override_is_set_replaced_and_cleared() {
        let (_dir, store) = open();
        assert_eq!(
            store.budget_override(7).await.expect("get"),
            BudgetOverride::default()
        );
        let limits = BudgetOverride {
            tokens_per_day: Some(500),
            turns_per_minute: None,
        };
        store.set_budget_override(7, limits).await.expect("set");
        assert_eq!(store.budget_override(7).await.expect("get"), limits);
        let limits = BudgetOverride {
            tokens_per_day: None,
            turns_per_minute: Some(u64::MAX),
        };
        store.set_budget_override(7, limits).await.expect("set");
        assert_eq!(
            store
                .budget_override(7)
                .await
                .expect("get")
                .turns_per_minute,
            Some(i64::MAX as u64),
            "stored saturated"
        );
        store
            .set_budget_override(7, BudgetOverride::default())
            .await
            .expect("clear");
        assert!(store.budget_override(7).await.expect("get").is_empty());
    }
}
