//! The shared rate-limit buckets in PostgreSQL: one row of `rate_buckets` per channel
//! (`<channel>`) and per chat (`<channel>:<chat>`), a GCRA in whole milliseconds of the
//! server's clock (`gw_now_ms()`), so every instance spends from the same buckets.
//!
//! A take is one transaction: the rows of the limited buckets are locked `FOR UPDATE` in key
//! order (two takes that share rows lock them in the same order, so they never deadlock), the
//! rows of pause-only buckets are read without a lock, the server's clock is read after the
//! last lock is held, and then either every limited row moves its `tat` one interval on, or
//! the transaction rolls back and nothing moves. A bucket that has no row yet is created (with
//! a `tat` in the past: a full burst) outside the take's transaction, which then starts again,
//! so no lock is ever taken out of key order. Every value is a `BIGINT` of ms: no float drifts.

use super::{PostgresStore, col, db};
use crate::store::StoreError;
use crate::store::cluster::{RateBucket, RateBucketRow, RateTake};

/// Times a take starts again after creating the rows it found missing.
const CREATE_ATTEMPTS: usize = 3;

/// The limited rows locked in key order, the pause-only rows read, and the server's clock read
/// once per row after that row's lock is held (the take uses the largest).
const LOCK_AND_READ: &str = "
WITH locked AS MATERIALIZED (
    SELECT key, tat, paused_until FROM rate_buckets
    WHERE key = ANY($1::TEXT[]) ORDER BY key FOR UPDATE
)
SELECT key, tat, paused_until, TRUE, gw_now_ms() FROM locked
UNION ALL
SELECT key, tat, paused_until, FALSE, gw_now_ms() FROM rate_buckets WHERE key = ANY($2::TEXT[])
UNION ALL
SELECT NULL::TEXT, NULL::BIGINT, NULL::BIGINT, NULL::BOOLEAN, gw_now_ms()";

/// What one row read by [`LOCK_AND_READ`] says.
struct Read {
    key: String,
    tat: i64,
    paused_until: i64,
    locked: bool,
}

/// The decision for rows read at server time `now`: the new `tat` of every limited bucket, or
/// how long to wait (and whether a pause is why).
fn decide(
    limited: &[&RateBucket],
    rows: &[Read],
    now: i64,
) -> Result<Vec<(String, i64)>, (i64, String, bool)> {
    let mut wait = 0i64;
    let mut paused = false;
    let mut by = "";
    for row in rows {
        let pause = row.paused_until.saturating_sub(now);
        if pause > 0 && pause >= wait {
            wait = pause;
            paused = true;
            by = &row.key;
        }
    }
    let mut moved = Vec::with_capacity(limited.len());
    for bucket in limited {
        let Some(row) = rows.iter().find(|r| r.locked && r.key == bucket.key) else {
            continue;
        };
        let early = row
            .tat
            .saturating_sub(bucket.tolerance_ms)
            .saturating_sub(now);
        if early > wait {
            wait = early;
            paused = false;
            by = &bucket.key;
        }
        moved.push((
            bucket.key.clone(),
            row.tat.max(now).saturating_add(bucket.interval_ms),
        ));
    }
    if wait > 0 {
        Err((wait, by.to_owned(), paused))
    } else {
        Ok(moved)
    }
}

/// [`ClusterStore::rate_take`](crate::store::cluster::ClusterStore::rate_take).
pub(super) async fn take(
    pg: &PostgresStore,
    buckets: &[RateBucket],
) -> Result<RateTake, StoreError> {
    let mut limited: Vec<&RateBucket> = buckets.iter().filter(|b| b.interval_ms > 0).collect();
    limited.sort_by(|a, b| a.key.cmp(&b.key));
    limited.dedup_by(|a, b| a.key == b.key);
    let limited_keys: Vec<&str> = limited.iter().map(|b| b.key.as_str()).collect();
    let peek_keys: Vec<&str> = buckets
        .iter()
        .filter(|b| b.interval_ms <= 0 && !limited_keys.contains(&b.key.as_str()))
        .map(|b| b.key.as_str())
        .collect();
    let mut client = pg.client().await?;
    for _ in 0..CREATE_ATTEMPTS {
        let tx = client.transaction().await.map_err(db)?;
        let stmt = tx.prepare_cached(LOCK_AND_READ).await.map_err(db)?;
        let raw = tx
            .query(&stmt, &[&limited_keys, &peek_keys])
            .await
            .map_err(db)?;
        let mut now = i64::MIN;
        let mut rows = Vec::with_capacity(raw.len());
        for r in &raw {
            now = now.max(col::<i64>(r, 4)?);
            if let Some(key) = col::<Option<String>>(r, 0)? {
                rows.push(Read {
                    key,
                    tat: col(r, 1)?,
                    paused_until: col(r, 2)?,
                    locked: col(r, 3)?,
                });
            }
        }
        let missing: Vec<&str> = limited_keys
            .iter()
            .copied()
            .filter(|k| !rows.iter().any(|r| r.locked && r.key == *k))
            .collect();
        if !missing.is_empty() {
            tx.rollback().await.map_err(db)?;
            client
                .execute(
                    "INSERT INTO rate_buckets (key, tat) SELECT unnest($1::TEXT[]), 0
                     ON CONFLICT (key) DO NOTHING",
                    &[&missing],
                )
                .await
                .map_err(db)?;
            continue;
        }
        return match decide(&limited, &rows, now) {
            Err((ms, key, paused)) => {
                tx.rollback().await.map_err(db)?;
                Ok(RateTake::Wait {
                    ms: ms.max(1),
                    key,
                    paused,
                })
            }
            Ok(moved) => {
                if !moved.is_empty() {
                    let (keys, tats): (Vec<&str>, Vec<i64>) =
                        moved.iter().map(|(k, t)| (k.as_str(), *t)).unzip();
                    let stmt = tx
                        .prepare_cached(
                            "UPDATE rate_buckets AS b SET tat = v.tat
                             FROM unnest($1::TEXT[], $2::BIGINT[]) AS v(key, tat)
                             WHERE b.key = v.key",
                        )
                        .await
                        .map_err(db)?;
                    tx.execute(&stmt, &[&keys, &tats]).await.map_err(db)?;
                }
                tx.commit().await.map_err(db)?;
                Ok(RateTake::Granted {
                    at_ms: now,
                    tats: moved,
                })
            }
        };
    }
    Err(StoreError::Database(format!(
        "rate bucket rows {limited_keys:?} were missing after {CREATE_ATTEMPTS} attempts to create them"
    )))
}

/// [`ClusterStore::rate_pause`](crate::store::cluster::ClusterStore::rate_pause).
pub(super) async fn pause(pg: &PostgresStore, key: &str, pause_ms: i64) -> Result<i64, StoreError> {
    let client = pg.client().await?;
    let row = client
        .query_one(
            "INSERT INTO rate_buckets (key, tat, paused_until) VALUES ($1, 0, gw_now_ms() + $2)
             ON CONFLICT (key) DO UPDATE
             SET paused_until = GREATEST(rate_buckets.paused_until, excluded.paused_until)
             RETURNING paused_until",
            &[&key, &pause_ms.max(0)],
        )
        .await
        .map_err(db)?;
    col(&row, 0)
}

/// [`ClusterStore::rate_buckets`](crate::store::cluster::ClusterStore::rate_buckets).
pub(super) async fn rows(
    pg: &PostgresStore,
    keys: &[String],
) -> Result<Vec<RateBucketRow>, StoreError> {
    let client = pg.client().await?;
    let rows = client
        .query(
            "SELECT key, tat, paused_until FROM rate_buckets WHERE key = ANY($1) ORDER BY key",
            &[&keys],
        )
        .await
        .map_err(db)?;
    rows.iter()
        .map(|r| {
            Ok(RateBucketRow {
                key: col(r, 0)?,
                tat_ms: col(r, 1)?,
                paused_until_ms: col(r, 2)?,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bucket(key: &str, interval_ms: i64, burst: i64) -> RateBucket {
        RateBucket {
            key: key.to_owned(),
            interval_ms,
            tolerance_ms: interval_ms * (burst - 1),
        }
    }

    fn read(key: &str, tat: i64, paused_until: i64, locked: bool) -> Read {
        Read {
            key: key.to_owned(),
            tat,
            paused_until,
            locked,
        }
    }

    #[test]
    fn a_full_bucket_passes_and_moves_one_interval_past_now() {
        let b = bucket("t:1", 1000, 3);
        let moved = decide(&[&b], &[read("t:1", 0, 0, true)], 5000).expect("passes");
        assert_eq!(moved, vec![("t:1".to_owned(), 6000)]);
    }

    #[test]
    fn a_burst_passes_at_once_and_the_next_waits_one_interval() {
        let b = bucket("t:1", 1000, 3);
        let mut tat = 0;
        for _ in 0..3 {
            let moved = decide(&[&b], &[read("t:1", tat, 0, true)], 5000).expect("in the burst");
            tat = moved[0].1;
        }
        assert_eq!(tat, 8000);
        assert_eq!(
            decide(&[&b], &[read("t:1", tat, 0, true)], 5000),
            Err((1000, "t:1".to_owned(), false))
        );
        assert!(decide(&[&b], &[read("t:1", tat, 0, true)], 6000).is_ok());
    }

    #[test]
    fn both_buckets_or_neither_and_the_longer_wait_wins() {
        let channel = bucket("t", 200, 1);
        let chat = bucket("t:1", 1000, 1);
        let rows = [read("t", 5100, 0, true), read("t:1", 5000, 0, true)];
        assert_eq!(
            decide(&[&channel, &chat], &rows, 5000),
            Err((100, "t".to_owned(), false))
        );
        let rows = [read("t", 5000, 0, true), read("t:1", 5600, 0, true)];
        assert_eq!(
            decide(&[&channel, &chat], &rows, 5000),
            Err((600, "t:1".to_owned(), false))
        );
    }

    #[test]
    fn a_pause_holds_even_a_bucket_without_a_limit() {
        let rows = [read("t", 0, 7500, false), read("t:1", 0, 0, true)];
        let chat = bucket("t:1", 1000, 1);
        assert_eq!(
            decide(&[&chat], &rows, 5000),
            Err((2500, "t".to_owned(), true))
        );
        assert!(decide(&[&chat], &rows, 7500).is_ok());
    }
}
