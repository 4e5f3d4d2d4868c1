//! Retention in PostgreSQL: the background task, what one prune pass deletes, space and
//! reachability probes, and the row counts [`Store::storage`](crate::store::Store::storage)
//! reports.
//!
//! The task deletes what the [`Retention`] no longer keeps, each batch of at most
//! [`Retention::batch`] rows one transaction, so ordinary writes interleave. Pending inbox and
//! outbox rows and dead letters are never pruned; each session keeps its last history window.
//! PostgreSQL's autovacuum returns the space, so there is no vacuum step. While the store is
//! marked full or unreachable the task probes every second with a small write of its own, and
//! ticks the recoveries when one commits. When several instances of a cluster share the
//! database only the holder of the scheduler's lease prunes (the others' passes are switched
//! off through `ClusterStore::set_pruning`); the deletes are idempotent anyway.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use deadpool_postgres::{Pool, Transaction};

use super::{PostgresStore, Shared, col, db, pool_error};
use crate::message::{ChatType, now_ms};
use crate::store::{Retention, StoreError};

/// How often the task probes while the store is full or unreachable.
const PROBE_INTERVAL: Duration = Duration::from_secs(1);
/// Sessions one transcript-prune batch looks at, at most.
const SESSIONS_PER_BATCH: i64 = 200;
/// The tables whose rows `storage` reports, in this order (the embedded store's order).
pub(crate) const TABLES: &[&str] = &[
    "inbox",
    "transcript",
    "outbox",
    "delivery_errors",
    "outbox_receipts",
    "channel_cursors",
    "sessions",
    "users",
    "addresses",
    "link_codes",
    "workflow_runs",
    "workflow_nodes",
    "usage",
    "budget_overrides",
    "pairing_requests",
    "pairing_kept",
    "access_approvals",
    "access_blocks",
];

/// What one prune pass deleted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PruneReport {
    /// Done inbox rows.
    pub inbox: u64,
    /// Delivered or dropped outbox rows (with their error histories and receipts).
    pub outbox: u64,
    /// Transcript entries.
    pub transcript: u64,
    /// Expired link codes.
    pub link_codes: u64,
    /// Transactions the pass took.
    pub batches: u64,
}

impl PruneReport {
    fn rows(&self) -> u64 {
        self.inbox + self.outbox + self.transcript + self.link_codes
    }
}

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// The store's background task: prune passes on an interval, probes while marked.
pub(super) struct Background {
    pub(super) pool: Pool,
    pub(super) shared: Arc<Shared>,
    pub(super) retention: Retention,
}

impl Background {
    pub(super) async fn run(self, mut stop: tokio::sync::watch::Receiver<bool>) {
        self.count_rows().await;
        let mut next_pass = Instant::now() + self.retention.interval;
        loop {
            tokio::select! {
                _ = stop.changed() => return,
                () = tokio::time::sleep(PROBE_INTERVAL) => {}
            }
            if self.shared.full.load(Ordering::Acquire) || self.shared.down.load(Ordering::Acquire)
            {
                self.probe().await;
            }
            if Instant::now() < next_pass {
                continue;
            }
            if !self.shared.pruning.load(Ordering::Acquire) {
                // Another instance of the cluster holds the scheduler and prunes.
                next_pass = Instant::now() + self.retention.interval;
                continue;
            }
            let started = Instant::now();
            match pass(&self.pool, self.retention, now_ms()).await {
                Ok(report) if report.rows() > 0 => tracing::info!(
                    message = "Pruned the database.",
                    inbox = report.inbox,
                    outbox = report.outbox,
                    transcript = report.transcript,
                    link_codes = report.link_codes,
                    batches = report.batches,
                    elapsed_ms = started.elapsed().as_millis() as u64
                ),
                Ok(_) => {}
                Err(StoreError::Closed) => return,
                Err(error) => {
                    self.shared.note(&error);
                    tracing::warn!(message = "Prune pass failed; it runs again at the next interval.", %error);
                }
            }
            self.count_rows().await;
            next_pass = Instant::now() + self.retention.interval;
        }
    }

    /// A write that needs new space (64 KiB, deleted again in the same transaction): when it
    /// commits, the database is reachable and has space again.
    async fn probe(&self) {
        let result = async {
            let mut client = self.pool.get().await.map_err(pool_error)?;
            let tx = client.transaction().await.map_err(db)?;
            tx.execute(
                "INSERT INTO space_probe (filler) VALUES (decode(repeat('00', 65536), 'hex'))",
                &[],
            )
            .await
            .map_err(db)?;
            tx.execute("DELETE FROM space_probe", &[])
                .await
                .map_err(db)?;
            tx.commit().await.map_err(db)
        }
        .await;
        if result.is_ok() {
            let full = self.shared.full.swap(false, Ordering::AcqRel);
            let down = self.shared.down.swap(false, Ordering::AcqRel);
            if full || down {
                tracing::info!(
                    message = "The database accepts writes again; inbound messages are accepted and stranded ones handled."
                );
                self.shared.recoveries.send_modify(|n| *n += 1);
            }
        }
    }

    /// Counts the rows of every table and the database's size, for `storage`.
    async fn count_rows(&self) {
        match counts(&self.pool).await {
            Ok((rows, bytes)) => {
                if let Ok(mut stats) = self.shared.stats.lock() {
                    *stats = (rows, bytes, now_ms());
                }
            }
            Err(error) => tracing::warn!(message = "Cannot count the database's rows.", %error),
        }
    }
}

async fn counts(pool: &Pool) -> Result<(Vec<(String, u64)>, u64), StoreError> {
    let client = pool.get().await.map_err(pool_error)?;
    let mut rows = Vec::with_capacity(TABLES.len());
    for t in TABLES {
        let row = client
            .query_one(&format!("SELECT COUNT(*) FROM {t}"), &[])
            .await
            .map_err(db)?;
        rows.push(((*t).to_owned(), col::<i64>(&row, 0)?.unsigned_abs()));
    }
    let row = client
        .query_one("SELECT pg_database_size(current_database())", &[])
        .await
        .map_err(db)?;
    Ok((rows, col::<i64>(&row, 0)?.unsigned_abs()))
}

/// One pass: every kind of row the retention lets go, in batches.
async fn pass(pool: &Pool, retention: Retention, now: i64) -> Result<PruneReport, StoreError> {
    let limit = i64::try_from(retention.batch.max(1)).unwrap_or(1000);
    let mut report = PruneReport::default();
    let dedupe_cutoff = now.saturating_sub(millis(retention.dedupe_window));
    let mut client = pool.get().await.map_err(pool_error)?;
    let mut cursor = 0;
    loop {
        let tx = client.transaction().await.map_err(db)?;
        let (n, next, finished) = prune_inbox(&tx, dedupe_cutoff, cursor, limit).await?;
        tx.commit().await.map_err(db)?;
        report.inbox += n;
        report.batches += 1;
        cursor = next;
        if finished {
            break;
        }
    }
    let mut cursor = 0;
    loop {
        let tx = client.transaction().await.map_err(db)?;
        let (n, next, finished) = prune_outbox(&tx, dedupe_cutoff, cursor, limit).await?;
        tx.commit().await.map_err(db)?;
        report.outbox += n;
        report.batches += 1;
        cursor = next;
        if finished {
            break;
        }
    }
    if let Some(keep) = retention.transcript {
        let cutoff = now.saturating_sub(millis(keep));
        let window = i64::try_from(retention.history_window.max(1)).unwrap_or(i64::MAX);
        let mut cursor = String::new();
        loop {
            let tx = client.transaction().await.map_err(db)?;
            let (n, next, finished) = prune_transcript(&tx, cutoff, &cursor, window, limit).await?;
            tx.commit().await.map_err(db)?;
            report.transcript += n;
            report.batches += 1;
            cursor = next;
            if finished {
                break;
            }
        }
    }
    loop {
        let n = client
            .execute(
                "DELETE FROM link_codes WHERE code IN
                 (SELECT code FROM link_codes WHERE expires_at < $1 LIMIT $2)",
                &[&now, &limit],
            )
            .await
            .map_err(db)?;
        report.link_codes += n;
        report.batches += 1;
        if i64::try_from(n).unwrap_or(i64::MAX) < limit {
            break;
        }
    }
    Ok(report)
}

/// Deletes done inbox rows received before `cutoff`, looking at `limit` rows after id `after`
/// in arrival order and stopping at the first one younger than the cutoff. Remembers each
/// deleted direct message's chat in its address, for `last_direct_chat`.
/// Returns (deleted, last id looked at, whether the pass is finished).
async fn prune_inbox(
    tx: &Transaction<'_>,
    cutoff: i64,
    after: i64,
    limit: i64,
) -> Result<(u64, i64, bool), StoreError> {
    let rows = tx
        .query(
            "SELECT id, done, received_at, chat_type, channel, sender_id, chat_id FROM inbox
             WHERE id > $1 ORDER BY id LIMIT $2",
            &[&after, &limit],
        )
        .await
        .map_err(db)?;
    let finished = i64::try_from(rows.len()).unwrap_or(i64::MAX) < limit;
    let remember = tx
        .prepare_cached(
            "UPDATE addresses SET last_chat_id = $1, last_chat_inbox = $2
             WHERE channel = $3 AND sender_id = $4 AND COALESCE(last_chat_inbox, 0) < $2",
        )
        .await
        .map_err(db)?;
    let mut doomed = Vec::new();
    let mut last = after;
    let mut stopped = false;
    for r in &rows {
        let id: i64 = col(r, 0)?;
        let done: bool = col(r, 1)?;
        let received_at: i64 = col(r, 2)?;
        if received_at >= cutoff {
            stopped = true;
            break;
        }
        last = id;
        if !done {
            continue;
        }
        let chat_type: String = col(r, 3)?;
        if chat_type == ChatType::Direct.as_str() {
            let channel: String = col(r, 4)?;
            let sender: String = col(r, 5)?;
            let chat: String = col(r, 6)?;
            tx.execute(&remember, &[&chat, &id, &channel, &sender])
                .await
                .map_err(db)?;
        }
        doomed.push(id);
    }
    tx.execute("DELETE FROM inbox WHERE id = ANY($1)", &[&doomed])
        .await
        .map_err(db)?;
    Ok((doomed.len() as u64, last, finished || stopped))
}

/// Deletes delivered and dropped outbox rows (and their error histories and receipts) last
/// changed before `cutoff`, looking at `limit` rows after id `after` and stopping at the first
/// one created after the cutoff. Pending rows and dead letters stay. Returns as [`prune_inbox`].
async fn prune_outbox(
    tx: &Transaction<'_>,
    cutoff: i64,
    after: i64,
    limit: i64,
) -> Result<(u64, i64, bool), StoreError> {
    let rows = tx
        .query(
            "SELECT id, status, created_at, updated_at FROM outbox WHERE id > $1 ORDER BY id LIMIT $2",
            &[&after, &limit],
        )
        .await
        .map_err(db)?;
    let finished = i64::try_from(rows.len()).unwrap_or(i64::MAX) < limit;
    let mut doomed = Vec::new();
    let mut last = after;
    let mut stopped = false;
    for r in &rows {
        let id: i64 = col(r, 0)?;
        let status: String = col(r, 1)?;
        let created_at: i64 = col(r, 2)?;
        let updated_at: i64 = col(r, 3)?;
        if created_at >= cutoff {
            stopped = true;
            break;
        }
        last = id;
        if (status == "delivered" || status == "dropped") && updated_at < cutoff {
            doomed.push(id);
        }
    }
    for sql in [
        "DELETE FROM delivery_errors WHERE outbox_id = ANY($1)",
        "DELETE FROM outbox_receipts WHERE outbox_id = ANY($1)",
        "DELETE FROM outbox WHERE id = ANY($1)",
    ] {
        tx.execute(sql, &[&doomed]).await.map_err(db)?;
    }
    Ok((doomed.len() as u64, last, finished || stopped))
}

/// Deletes transcript entries older than `cutoff` of the sessions after key `after`, except
/// each session's newest `window` entries, at most `limit` entries. Returns (deleted, the last
/// session finished, whether the pass is finished).
async fn prune_transcript(
    tx: &Transaction<'_>,
    cutoff: i64,
    after: &str,
    window: i64,
    limit: i64,
) -> Result<(u64, String, bool), StoreError> {
    let keys: Vec<String> = tx
        .query(
            "SELECT key FROM sessions WHERE key > $1 ORDER BY key LIMIT $2",
            &[&after, &SESSIONS_PER_BATCH],
        )
        .await
        .map_err(db)?
        .iter()
        .map(|r| col(r, 0))
        .collect::<Result<_, _>>()?;
    let finished = i64::try_from(keys.len()).unwrap_or(i64::MAX) < SESSIONS_PER_BATCH;
    let mut deleted: i64 = 0;
    let mut last = after.to_owned();
    for key in keys {
        let remaining = limit - deleted;
        if remaining <= 0 {
            return Ok((deleted.unsigned_abs(), last, false));
        }
        // The oldest entry of the window that is kept whatever its age.
        let boundary = tx
            .query_opt(
                "SELECT at, id FROM transcript WHERE session_key = $1
                 ORDER BY at DESC, id DESC LIMIT 1 OFFSET $2",
                &[&key, &(window - 1)],
            )
            .await
            .map_err(db)?;
        if let Some(b) = boundary {
            let at: i64 = col(&b, 0)?;
            let id: i64 = col(&b, 1)?;
            let n = tx
                .execute(
                    "DELETE FROM transcript WHERE id IN (
                        SELECT id FROM transcript WHERE session_key = $1 AND (at, id) < ($2, $3)
                          AND at < $4 ORDER BY at, id LIMIT $5)",
                    &[&key, &at, &id, &cutoff, &remaining],
                )
                .await
                .map_err(db)?;
            let n = i64::try_from(n).unwrap_or(i64::MAX);
            deleted += n;
            if n >= remaining {
                // The session may have more: the next batch starts with it again.
                return Ok((deleted.unsigned_abs(), last, false));
            }
        }
        last = key;
    }
    Ok((deleted.unsigned_abs(), last, finished))
}

impl PostgresStore {
    /// Runs one prune pass now, as if the time were `now_ms`; what it deleted. Counts the rows
    /// for `storage` afterwards.
    pub async fn prune_now(
        &self,
        now_ms: i64,
        retention: Retention,
    ) -> Result<PruneReport, StoreError> {
        if self.closed.load(Ordering::Acquire) {
            return Err(StoreError::Closed);
        }
        let report = pass(&self.pool, retention, now_ms).await?;
        let (rows, bytes) = counts(&self.pool).await?;
        if let Ok(mut stats) = self.shared.stats.lock() {
            *stats = (rows, bytes, crate::message::now_ms());
        }
        Ok(report)
    }
}
