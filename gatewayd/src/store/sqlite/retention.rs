//! Retention: the pruner thread, what one prune pass deletes, and returning freed pages.
//!
//! The pruner deletes what the [`Retention`] no longer keeps: each batch of at most
//! [`Retention::batch`] rows is one job through the writer, and the pruner waits for it before
//! sending the next, so ordinary writes are committed between batches. Pending inbox and outbox
//! rows and dead letters are never pruned; each session keeps its last history window. After a
//! pass it returns freed pages with `PRAGMA incremental_vacuum` in small steps and counts the
//! rows of every table for [`Store::storage`](crate::store::Store::storage). While the disk is
//! full it probes every second with a small write of its own and ticks the recoveries when one
//! commits.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use rusqlite::{Connection, OptionalExtension, params};

use super::writer::{Job, atomic, job};
use super::{Shared, SqliteStore, db, open_connection};
use crate::message::{ChatType, now_ms};
use crate::store::{Retention, StoreError};

/// How often the pruner probes for space while the disk is full.
const PROBE_INTERVAL: Duration = Duration::from_secs(1);
/// Pages one incremental-vacuum step returns to the file system (1 MiB of 4 KiB pages).
const VACUUM_STEP: i64 = 256;
/// Sessions one transcript-prune batch looks at, at most.
const SESSIONS_PER_BATCH: i64 = 200;
/// The tables whose rows `storage` reports, in this order.
const TABLES: &[&str] = &[
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
    /// Delivered or dropped outbox rows (with their error histories).
    pub outbox: u64,
    /// Transcript entries.
    pub transcript: u64,
    /// Expired link codes.
    pub link_codes: u64,
    /// Pages returned to the file system by incremental vacuum.
    pub pages_freed: u64,
    /// Write jobs (transactions) the pass took.
    pub batches: u64,
    /// Most rows one of those transactions deleted.
    pub largest_batch: u64,
}

impl PruneReport {
    fn rows(&self) -> u64 {
        self.inbox + self.outbox + self.transcript + self.link_codes
    }
}

/// The pruner thread: prune passes on an interval, space probes while the disk is full.
pub(super) struct Pruner {
    pub(super) writer: mpsc::Sender<Job>,
    pub(super) shared: Arc<Shared>,
    pub(super) path: PathBuf,
    pub(super) retention: Retention,
    /// Closed when the store closes; `None` for a pass run on demand.
    pub(super) stop: Option<mpsc::Receiver<()>>,
}

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

impl Pruner {
    pub(super) fn run(self) {
        let Some(stop) = &self.stop else { return };
        self.count_rows();
        let mut next_pass = Instant::now() + self.retention.interval;
        loop {
            match stop.recv_timeout(PROBE_INTERVAL) {
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Ok(()) | Err(mpsc::RecvTimeoutError::Disconnected) => return,
            }
            if self.shared.full.load(Ordering::Acquire) {
                self.probe();
            }
            if Instant::now() < next_pass {
                continue;
            }
            let started = Instant::now();
            match self.pass(now_ms()) {
                Ok(report) if report.rows() > 0 || report.pages_freed > 0 => {
                    tracing::info!(
                        message = "Pruned the database.",
                        inbox = report.inbox,
                        outbox = report.outbox,
                        transcript = report.transcript,
                        link_codes = report.link_codes,
                        pages_freed = report.pages_freed,
                        batches = report.batches,
                        elapsed_ms = started.elapsed().as_millis() as u64
                    );
                }
                Ok(_) => {}
                Err(StoreError::Closed) => return,
                Err(error) => {
                    tracing::warn!(message = "Prune pass failed; it runs again at the next interval.", %error);
                }
            }
            next_pass = Instant::now() + self.retention.interval;
        }
    }

    fn stopped(&self) -> bool {
        self.stop
            .as_ref()
            .is_some_and(|s| matches!(s.try_recv(), Err(mpsc::TryRecvError::Disconnected)))
    }

    /// Runs `f` through the writer and waits for its commit.
    fn write<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    {
        let (tx, rx) = mpsc::channel();
        let job = job(&self.shared, f, move |r| {
            let _ = tx.send(r);
        });
        self.writer.send(job).map_err(|_| StoreError::Closed)?;
        rx.recv().map_err(|_| StoreError::Closed)?
    }

    /// A write that needs new pages (64 KiB, removed again in the same transaction): when it
    /// commits, there is space again.
    fn probe(&self) {
        let result = self.write(|conn| {
            atomic(conn, |conn| {
                conn.execute(
                    "INSERT INTO space_probe (filler) VALUES (zeroblob(65536))",
                    [],
                )
                .map_err(db)?;
                conn.execute("DELETE FROM space_probe", []).map_err(db)?;
                Ok(())
            })
        });
        if result.is_ok() && self.shared.full.swap(false, Ordering::AcqRel) {
            tracing::info!(
                message = "The disk has space again; inbound messages are accepted and stranded ones handled."
            );
            self.shared.recoveries.send_modify(|n| *n += 1);
        }
    }

    /// One pass: every kind of row the retention lets go, in batches, then vacuum and count.
    fn pass(&self, now: i64) -> Result<PruneReport, StoreError> {
        let retention = self.retention;
        let limit = i64::try_from(retention.batch.max(1)).unwrap_or(1000);
        let mut report = PruneReport::default();
        let dedupe_cutoff = now.saturating_sub(millis(retention.dedupe_window));
        let mut cursor = 0;
        loop {
            if self.stopped() {
                return Ok(report);
            }
            let (n, next, finished) =
                self.write(move |c| atomic(c, |c| prune_inbox(c, dedupe_cutoff, cursor, limit)))?;
            report.inbox += n;
            report.batches += 1;
            report.largest_batch = report.largest_batch.max(n);
            cursor = next;
            if finished {
                break;
            }
        }
        let mut cursor = 0;
        loop {
            if self.stopped() {
                return Ok(report);
            }
            let (n, next, finished) =
                self.write(move |c| atomic(c, |c| prune_outbox(c, dedupe_cutoff, cursor, limit)))?;
            report.outbox += n;
            report.batches += 1;
            report.largest_batch = report.largest_batch.max(n);
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
                if self.stopped() {
                    return Ok(report);
                }
                let after = cursor.clone();
                let (n, next, finished) = self.write(move |c| {
                    atomic(c, |c| prune_transcript(c, cutoff, &after, window, limit))
                })?;
                report.transcript += n;
                report.batches += 1;
                report.largest_batch = report.largest_batch.max(n);
                cursor = next;
                if finished {
                    break;
                }
            }
        }
        loop {
            let n = self.write(move |c| {
                c.execute(
                    "DELETE FROM link_codes WHERE code IN
                     (SELECT code FROM link_codes WHERE expires_at < ?1 LIMIT ?2)",
                    params![now, limit],
                )
                .map_err(db)
            })?;
            report.link_codes += n as u64;
            report.batches += 1;
            report.largest_batch = report.largest_batch.max(n as u64);
            if (n as i64) < limit {
                break;
            }
        }
        loop {
            if self.stopped() {
                return Ok(report);
            }
            let freed = self.write(vacuum_step)?;
            report.batches += 1;
            report.pages_freed += freed;
            if freed == 0 {
                break;
            }
        }
        self.count_rows();
        Ok(report)
    }

    /// Counts the rows of every table on a connection of its own, for [`Store::storage`].
    fn count_rows(&self) {
        let counted = open_connection(&self.path).and_then(|conn| {
            TABLES
                .iter()
                .map(|t| {
                    conn.query_row(&format!("SELECT COUNT(*) FROM {t}"), [], |r| {
                        r.get::<_, i64>(0)
                    })
                    .map(|n| ((*t).to_owned(), n.unsigned_abs()))
                    .map_err(db)
                })
                .collect::<Result<Vec<_>, _>>()
        });
        match counted {
            Ok(rows) => {
                if let Ok(mut stats) = self.shared.stats.lock() {
                    *stats = (rows, now_ms());
                }
            }
            Err(error) => tracing::warn!(message = "Cannot count the database's rows.", %error),
        }
    }
}

/// Deletes done inbox rows received before `cutoff`, looking at `limit` rows after id `after`
/// in arrival order and stopping at the first one younger than the cutoff. Remembers each
/// deleted direct message's chat in its address, for [`Store::last_direct_chat`].
/// Returns (deleted, last id looked at, whether the pass is finished).
fn prune_inbox(
    conn: &Connection,
    cutoff: i64,
    after: i64,
    limit: i64,
) -> Result<(u64, i64, bool), StoreError> {
    type Row = (i64, i64, i64, String, String, String, String);
    let rows: Vec<Row> = conn
        .prepare_cached(
            "SELECT id, done, received_at, chat_type, channel, sender_id, chat_id FROM inbox
             WHERE id > ?1 ORDER BY id LIMIT ?2",
        )
        .and_then(|mut s| {
            s.query_map(params![after, limit], |r| {
                Ok((
                    r.get(0)?,
                    r.get(1)?,
                    r.get(2)?,
                    r.get(3)?,
                    r.get(4)?,
                    r.get(5)?,
                    r.get(6)?,
                ))
            })?
            .collect()
        })
        .map_err(db)?;
    let finished = (rows.len() as i64) < limit;
    let mut deleted = 0;
    let mut last = after;
    for (id, done, received_at, chat_type, channel, sender, chat) in rows {
        if received_at >= cutoff {
            return Ok((deleted, last, true));
        }
        last = id;
        if done == 0 {
            continue;
        }
        if chat_type == ChatType::Direct.as_str() {
            conn.prepare_cached(
                "UPDATE addresses SET last_chat_id = ?1, last_chat_inbox = ?2
                 WHERE channel = ?3 AND sender_id = ?4 AND COALESCE(last_chat_inbox, 0) < ?2",
            )
            .and_then(|mut s| s.execute(params![chat, id, channel, sender]))
            .map_err(db)?;
        }
        conn.prepare_cached("DELETE FROM inbox WHERE id = ?1")
            .and_then(|mut s| s.execute([id]))
            .map_err(db)?;
        deleted += 1;
    }
    Ok((deleted, last, finished))
}

/// Deletes delivered and dropped outbox rows (and their error histories) last changed before
/// `cutoff`, looking at `limit` rows after id `after` and stopping at the first one committed
/// after the cutoff. Pending rows and dead letters stay. Returns as [`prune_inbox`].
fn prune_outbox(
    conn: &Connection,
    cutoff: i64,
    after: i64,
    limit: i64,
) -> Result<(u64, i64, bool), StoreError> {
    let rows: Vec<(i64, String, i64, i64)> = conn
        .prepare_cached(
            "SELECT id, status, created_at, updated_at FROM outbox WHERE id > ?1 ORDER BY id LIMIT ?2",
        )
        .and_then(|mut s| {
            s.query_map(params![after, limit], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
            })?
            .collect()
        })
        .map_err(db)?;
    let finished = (rows.len() as i64) < limit;
    let mut deleted = 0;
    let mut last = after;
    for (id, status, created_at, updated_at) in rows {
        if created_at >= cutoff {
            return Ok((deleted, last, true));
        }
        last = id;
        if !(status == "delivered" || status == "dropped") || updated_at >= cutoff {
            continue;
        }
        conn.prepare_cached("DELETE FROM delivery_errors WHERE outbox_id = ?1")
            .and_then(|mut s| s.execute([id]))
            .map_err(db)?;
        conn.prepare_cached("DELETE FROM outbox_receipts WHERE outbox_id = ?1")
            .and_then(|mut s| s.execute([id]))
            .map_err(db)?;
        conn.prepare_cached("DELETE FROM outbox WHERE id = ?1")
            .and_then(|mut s| s.execute([id]))
            .map_err(db)?;
        deleted += 1;
    }
    Ok((deleted, last, finished))
}

/// Deletes transcript entries older than `cutoff` of the sessions after key `after`, except
/// each session's newest `window` entries, at most `limit` entries. Returns (deleted, the last
/// session finished, whether the pass is finished).
fn prune_transcript(
    conn: &Connection,
    cutoff: i64,
    after: &str,
    window: i64,
    limit: i64,
) -> Result<(u64, String, bool), StoreError> {
    let keys: Vec<String> = conn
        .prepare_cached("SELECT key FROM sessions WHERE key > ?1 ORDER BY key LIMIT ?2")
        .and_then(|mut s| {
            s.query_map(params![after, SESSIONS_PER_BATCH], |r| r.get(0))?
                .collect()
        })
        .map_err(db)?;
    let finished = (keys.len() as i64) < SESSIONS_PER_BATCH;
    let mut deleted: i64 = 0;
    let mut last = after.to_owned();
    for key in keys {
        let remaining = limit - deleted;
        if remaining <= 0 {
            return Ok((deleted.unsigned_abs(), last, false));
        }
        // The oldest entry of the window that is kept whatever its age.
        let boundary: Option<(i64, i64)> = conn
            .prepare_cached(
                "SELECT at, id FROM transcript WHERE session_key = ?1
                 ORDER BY at DESC, id DESC LIMIT 1 OFFSET ?2",
            )
            .and_then(|mut s| {
                s.query_row(params![key, window - 1], |r| Ok((r.get(0)?, r.get(1)?)))
                    .optional()
            })
            .map_err(db)?;
        if let Some((at, id)) = boundary {
            let n = conn
                .prepare_cached(
                    "DELETE FROM transcript WHERE id IN (
                        SELECT id FROM transcript WHERE session_key = ?1 AND (at, id) < (?2, ?3)
                          AND at < ?4 ORDER BY at, id LIMIT ?5)",
                )
                .and_then(|mut s| s.execute(params![key, at, id, cutoff, remaining]))
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

/// Returns up to [`VACUUM_STEP`] free pages to the file system; how many it returned.
fn vacuum_step(conn: &Connection) -> Result<u64, StoreError> {
    let free = |conn: &Connection| {
        conn.query_row("PRAGMA freelist_count", [], |r| r.get::<_, i64>(0))
            .map_err(db)
    };
    let before = free(conn)?;
    if before == 0 {
        return Ok(0);
    }
    conn.execute_batch(&format!("PRAGMA incremental_vacuum({VACUUM_STEP})"))
        .map_err(db)?;
    Ok((before - free(conn)?).unsigned_abs())
}

impl SqliteStore {
    /// Runs one prune pass now, as if the time were `now_ms`; what it deleted.
    pub async fn prune_now(
        &self,
        now_ms: i64,
        retention: Retention,
    ) -> Result<PruneReport, StoreError> {
        let writer = self
            .writer
            .lock()
            .map_err(|_| StoreError::Closed)?
            .clone()
            .ok_or(StoreError::Closed)?;
        let pruner = Pruner {
            writer,
            shared: self.shared.clone(),
            path: self.path.clone(),
            retention,
            stop: None,
        };
        tokio::task::spawn_blocking(move || pruner.pass(now_ms))
            .await
            .map_err(|e| StoreError::Database(format!("prune task failed: {e}")))?
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::{Address, ChannelKind, SessionKey};
    use crate::send::ErrorClass;
    use crate::store::sqlite::test_support::*;
    use crate::store::{InboxOutcome, Store, TranscriptEntry, TurnRecord};

    #[tokio::test]
    async fn pruning_keeps_pending_rows_dead_letters_and_the_window_and_drops_the_rest() {
        let (_dir, store) = open();
        let delivered = answered(&store, "done-1", 1, "a").await;
        store
            .outbox_delivered(delivered.id)
            .await
            .expect("delivered");
        let dead = answered(&store, "done-2", 2, "b").await;
        store
            .outbox_dead(dead.id, 3, ErrorClass::Permanent, "gone")
            .await
            .expect("dead");
        let _pending_reply = answered(&store, "done-3", 3, "c").await;
        let pending_in = new_inbox_row(&store, "pending-1", "p").await;

        // Inside the dedupe window nothing goes, and a redelivery is still a duplicate.
        let report = store
            .prune_now(now_ms(), retention(1000, None, 20))
            .await
            .expect("prune");
        assert_eq!(report.inbox + report.outbox, 0, "{report:?}");
        assert!(matches!(
            store
                .inbox_commit(&msg("done-1", "s1"))
                .await
                .expect("commit"),
            InboxOutcome::Duplicate(_)
        ));

        // Eight days later: done inbox rows and the delivered reply go; the rest stays.
        let report = store
            .prune_now(now_ms() + 8 * DAY_MS, retention(1000, None, 20))
            .await
            .expect("prune");
        assert_eq!(report.inbox, 3, "{report:?}");
        assert_eq!(report.outbox, 1, "{report:?}");
        let pending: Vec<i64> = store
            .inbox_pending()
            .await
            .expect("pending")
            .iter()
            .map(|p| p.inbox_id)
            .collect();
        assert_eq!(pending, vec![pending_in]);
        let (inbox_pending, outbox_pending, dead_letters) = store.counts().await.expect("counts");
        assert_eq!((inbox_pending, outbox_pending, dead_letters), (1, 1, 1));
        let (letter, history) = store.dead_letter(dead.id).await.expect("dead letter kept");
        assert_eq!(letter.last_error, "gone");
        assert_eq!(history.len(), 1);
        // The transcript is kept forever by default.
        assert_eq!(
            store
                .history(&SessionKey::User(1), 10)
                .await
                .expect("h")
                .len(),
            1
        );
        // A redelivery older than the window is new: documented.
        assert!(matches!(
            store
                .inbox_commit(&msg("done-1", "s1"))
                .await
                .expect("commit"),
            InboxOutcome::New(_)
        ));
    }

    #[tokio::test]
    async fn pruning_deletes_in_batches_of_at_most_the_configured_size() {
        let (_dir, store) = open();
        let store = std::sync::Arc::new(store);
        let mut tasks = Vec::new();
        for i in 0..250 {
            let store = store.clone();
            tasks.push(tokio::spawn(async move {
                answered(&store, &format!("m{i}"), i % 7, "x").await
            }));
        }
        for t in tasks {
            let row = t.await.expect("join");
            store.outbox_delivered(row.id).await.expect("delivered");
        }
        let report = store
            .prune_now(now_ms() + 8 * DAY_MS, retention(100, None, 20))
            .await
            .expect("prune");
        assert_eq!((report.inbox, report.outbox), (250, 250), "{report:?}");
        assert!(report.largest_batch <= 100, "{report:?}");
        assert!(report.batches >= 6, "{report:?}");
        let stats = store.storage().await.expect("storage");
        let rows = |t: &str| {
            stats
                .table_rows
                .iter()
                .find(|(name, _)| name == t)
                .map(|(_, n)| *n)
        };
        assert_eq!(rows("inbox"), Some(0), "{stats:?}");
        assert_eq!(rows("outbox"), Some(0), "{stats:?}");
        assert_eq!(rows("transcript"), Some(250), "{stats:?}");
        assert!(
            stats.counted_at_ms > 0 && stats.database_bytes > 0,
            "{stats:?}"
        );
    }

    #[tokio::test]
    async fn transcript_pruning_keeps_each_sessions_last_history_window() {
        let (_dir, store) = open();
        let old = now_ms() - 10 * DAY_MS;
        let sessions = [(1, 30, old), (2, 3, old), (3, 12, now_ms())];
        for (user, entries, at) in sessions {
            for i in 0..entries {
                let id = new_inbox_row(&store, &format!("u{user}-{i}"), "x").await;
                store
                    .commit_turn(TurnRecord {
                        inbox_id: id,
                        session: SessionKey::User(user),
                        entries: vec![entry(&format!("t{i}"), at + i)],
                        replies: Vec::new(),
                        fence: None,
                    })
                    .await
                    .expect("turn");
            }
        }
        // Forever (the default): nothing.
        let report = store
            .prune_now(now_ms(), retention(1000, None, 5))
            .await
            .expect("prune");
        assert_eq!(report.transcript, 0);
        // One day, window 5, batches of 10: the old session keeps its last 5, the short
        // one keeps all 3, the recent one keeps all 12.
        let report = store
            .prune_now(
                now_ms(),
                retention(10, Some(Duration::from_secs(86_400)), 5),
            )
            .await
            .expect("prune");
        assert_eq!(report.transcript, 25, "{report:?}");
        assert!(report.largest_batch <= 10, "{report:?}");
        let texts = |h: Vec<TranscriptEntry>| h.into_iter().map(|e| e.text).collect::<Vec<_>>();
        assert_eq!(
            texts(store.history(&SessionKey::User(1), 100).await.expect("h")),
            ["t25", "t26", "t27", "t28", "t29"]
        );
        assert_eq!(
            store
                .history(&SessionKey::User(2), 100)
                .await
                .expect("h")
                .len(),
            3
        );
        assert_eq!(
            store
                .history(&SessionKey::User(3), 100)
                .await
                .expect("h")
                .len(),
            12
        );
    }

    #[tokio::test]
    async fn the_last_direct_chat_outlives_its_pruned_inbox_row() {
        let (_dir, store) = open();
        let user = store
            .resolve_address(&Address {
                channel: ChannelKind::new("http"),
                sender_id: "s4".into(),
            })
            .await
            .expect("user");
        let row = answered(&store, "hello", 4, "hi").await;
        store.outbox_delivered(row.id).await.expect("delivered");
        let before = store.last_direct_chat(user).await.expect("read");
        assert_eq!(
            before,
            Some((ChannelKind::new("http"), "chat-s4".to_owned()))
        );
        let report = store
            .prune_now(now_ms() + 8 * DAY_MS, retention(1000, None, 20))
            .await
            .expect("prune");
        assert_eq!(report.inbox, 1);
        assert_eq!(store.last_direct_chat(user).await.expect("read"), before);
        assert!(
            store
                .is_direct_chat_of(user, ChannelKind::new("http"), "chat-s4")
                .await
                .expect("read"),
            "the pruned chat is still the user's"
        );
    }

    #[tokio::test]
    async fn pruning_returns_the_freed_pages_to_the_file_system() {
        let (dir, store) = open();
        let path = dir.path().join("g.db");
        assert_eq!(pragma(&path, "auto_vacuum"), 2, "incremental");
        let store = std::sync::Arc::new(store);
        let big = "x".repeat(4000);
        let mut tasks = Vec::new();
        for i in 0..400 {
            let (store, big) = (store.clone(), big.clone());
            tasks.push(tokio::spawn(async move {
                answered(&store, &format!("m{i}"), i % 5, &big).await
            }));
        }
        for t in tasks {
            let row = t.await.expect("join");
            store.outbox_delivered(row.id).await.expect("delivered");
        }
        let before = pragma(&path, "page_count");
        let report = store
            .prune_now(
                now_ms() + 8 * DAY_MS,
                retention(1000, Some(Duration::from_secs(3600)), 2),
            )
            .await
            .expect("prune");
        assert_eq!(report.inbox, 400, "{report:?}");
        assert_eq!(report.transcript, 400 - 5 * 2, "{report:?}");
        let after = pragma(&path, "page_count");
        assert!(report.pages_freed > 0, "{report:?}");
        assert_eq!(pragma(&path, "freelist_count"), 0);
        assert!(
            after * 4 < before,
            "pages: {before} before pruning, {after} after"
        );
    }
}
