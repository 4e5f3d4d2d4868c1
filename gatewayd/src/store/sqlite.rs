//! The embedded store: one SQLite file in WAL mode, written by one thread with group commit.
//!
//! All writes go to a single writer thread over a channel. The writer takes every operation that
//! is waiting (up to [`MAX_BATCH`]), runs each inside its own savepoint so one failure does not
//! spoil the others, commits them all with one `COMMIT`, and only then answers each caller. So a
//! caller that is told "committed" can rely on it, and many small writes share one sync to disk
//! (`synchronous = FULL`, so a commit survives a power cut, not only a crash).
//! Reads use a small pool of separate connections, which WAL lets run beside the writer.
//! Migrations are embedded and applied in order at open, tracked by `PRAGMA user_version`.
//!
//! A second thread, the pruner, deletes what the [`Retention`] no longer keeps: each batch of at
//! most [`Retention::batch`] rows is one job through the writer, and the pruner waits for it
//! before sending the next, so ordinary writes are committed between batches. After a pass it
//! returns freed pages to the file system with `PRAGMA incremental_vacuum` in small steps (the
//! database uses `auto_vacuum = INCREMENTAL`; a file made without it is converted once, with a
//! `VACUUM`, at open) and counts the rows of every table for [`Store::storage`].
//!
//! A write that fails with `SQLITE_FULL` is rolled back like any failed write and reported as
//! [`StoreError::Full`]; the writer keeps running. While the disk is full the pruner probes
//! every second with a small write of its own, and when that succeeds it ticks
//! [`Store::recoveries`] so stranded messages are handled again.

mod inspect;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use rusqlite::{Connection, OptionalExtension, params};
use tokio::sync::oneshot;

use super::{
    AttemptError, DeadLetter, DeadSelector, InboxOutcome, NewReply, NodeRecord, NodeStatus,
    PendingInbound, Retention, Role, RunOrigin, RunRecord, RunStatus, SessionFilter, StorageStats,
    Store, StoreError, StoredSession, TranscriptEntry, TurnRecord, UserRecord, parse_channel,
};
use crate::channels::ErrorClass;
use crate::message::{
    Address, ChannelKind, ChatType, InboundMessage, OutboundMessage, SessionKey, UserId, now_ms,
};

/// Most operations committed together.
const MAX_BATCH: usize = 1024;
/// Read connections open at most: reads beyond this many wait for one, so a burst of
/// concurrent reads never exhausts file descriptors (each connection holds three).
const READ_POOL: usize = 8;
/// The writer's settings beyond [`open_connection`]'s. The WAL is copied back into the database
/// every 10 000 pages (~40 MiB) rather than SQLite's default 1 000: a page rewritten by many
/// commits is copied once per checkpoint, so the larger interval copies far less. The writer's
/// page cache is 8 MiB (default 2 MiB), so the indexes' hot pages are not re-read from the file.
const WRITER_PRAGMAS: &str = "PRAGMA wal_autocheckpoint = 10000; PRAGMA cache_size = -8192;";
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
    "sessions",
    "users",
    "addresses",
    "link_codes",
    "workflow_runs",
    "workflow_nodes",
];

const MIGRATIONS: &[&str] = &[
    r#"
CREATE TABLE inbox (
    id INTEGER PRIMARY KEY,
    channel TEXT NOT NULL,
    channel_message_id TEXT NOT NULL,
    chat_id TEXT NOT NULL,
    chat_type TEXT NOT NULL,
    sender_id TEXT NOT NULL,
    text TEXT NOT NULL,
    received_at INTEGER NOT NULL,
    done INTEGER NOT NULL DEFAULT 0,
    UNIQUE (channel, channel_message_id)
);
CREATE INDEX inbox_pending ON inbox (id) WHERE done = 0;
CREATE TABLE users (
    id INTEGER PRIMARY KEY,
    created_at INTEGER NOT NULL,
    merged_into INTEGER
);
CREATE TABLE addresses (
    channel TEXT NOT NULL,
    sender_id TEXT NOT NULL,
    user_id INTEGER NOT NULL REFERENCES users (id),
    linked_at INTEGER NOT NULL,
    PRIMARY KEY (channel, sender_id)
);
CREATE INDEX addresses_user ON addresses (user_id);
CREATE TABLE transcript (
    id INTEGER PRIMARY KEY,
    session_key TEXT NOT NULL,
    at INTEGER NOT NULL,
    role TEXT NOT NULL,
    text TEXT NOT NULL,
    channel TEXT,
    inbox_id INTEGER
);
CREATE INDEX transcript_session ON transcript (session_key, at, id);
CREATE TABLE sessions (
    key TEXT PRIMARY KEY,
    created_at INTEGER NOT NULL,
    last_active INTEGER NOT NULL,
    turns INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE outbox (
    id INTEGER PRIMARY KEY,
    inbox_id INTEGER,
    channel TEXT NOT NULL,
    chat_id TEXT NOT NULL,
    text TEXT NOT NULL,
    reply_to TEXT,
    status TEXT NOT NULL DEFAULT 'pending',
    attempts INTEGER NOT NULL DEFAULT 0,
    last_error TEXT,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL
);
CREATE INDEX outbox_pending ON outbox (id) WHERE status = 'pending';
CREATE INDEX outbox_dead ON outbox (channel, id) WHERE status = 'dead';
CREATE TABLE link_codes (
    code TEXT PRIMARY KEY,
    user_id INTEGER NOT NULL,
    expires_at INTEGER NOT NULL,
    used INTEGER NOT NULL DEFAULT 0
);
"#,
    r#"
ALTER TABLE outbox ADD COLUMN error_class TEXT;
ALTER TABLE outbox ADD COLUMN chunks_sent INTEGER NOT NULL DEFAULT 0;
CREATE TABLE delivery_errors (
    id INTEGER PRIMARY KEY,
    outbox_id INTEGER NOT NULL,
    at INTEGER NOT NULL,
    attempt INTEGER NOT NULL,
    class TEXT NOT NULL,
    error TEXT NOT NULL
);
CREATE INDEX delivery_errors_outbox ON delivery_errors (outbox_id, id);
"#,
    r#"
ALTER TABLE sessions ADD COLUMN last_channel TEXT;
CREATE INDEX sessions_channel ON sessions (last_channel, key);
"#,
    r#"
ALTER TABLE inbox ADD COLUMN reply_to TEXT;
ALTER TABLE inbox ADD COLUMN attachments TEXT;
"#,
    r#"
CREATE TABLE workflow_runs (
    id INTEGER PRIMARY KEY,
    workflow TEXT NOT NULL,
    inputs TEXT NOT NULL,
    origin TEXT,
    status TEXT NOT NULL,
    error TEXT,
    created_at INTEGER NOT NULL,
    finished_at INTEGER
);
CREATE INDEX workflow_runs_running ON workflow_runs (id) WHERE status = 'running';
CREATE INDEX workflow_runs_by_workflow ON workflow_runs (workflow, id);
CREATE TABLE workflow_nodes (
    run_id INTEGER NOT NULL,
    node TEXT NOT NULL,
    status TEXT NOT NULL,
    output TEXT,
    error TEXT,
    attempts INTEGER NOT NULL DEFAULT 0,
    started_at INTEGER,
    finished_at INTEGER,
    PRIMARY KEY (run_id, node)
);
"#,
    r#"
ALTER TABLE addresses ADD COLUMN last_chat_id TEXT;
ALTER TABLE addresses ADD COLUMN last_chat_inbox INTEGER;
CREATE TABLE space_probe (id INTEGER PRIMARY KEY, filler BLOB);
"#,
];

type Reply = Box<dyn FnOnce(Result<(), StoreError>) + Send>;
/// A write: given the connection it runs and returns how to answer its caller once the batch
/// is committed; given `None` (the batch failed before it ran) it runs nothing.
type Job = Box<dyn FnOnce(Option<&Connection>) -> Reply + Send>;

/// The SQLite store. Cheap to share behind an `Arc`.
pub struct SqliteStore {
    path: PathBuf,
    writer: Mutex<Option<mpsc::Sender<Job>>>,
    writer_thread: Mutex<Option<std::thread::JoinHandle<()>>>,
    /// Set if the writer thread panicked; every write then fails with [`StoreError::Closed`].
    writer_failed: Arc<Mutex<Option<String>>>,
    pruner: Mutex<Option<(mpsc::Sender<()>, std::thread::JoinHandle<()>)>>,
    readers: Mutex<Vec<Connection>>,
    read_slots: tokio::sync::Semaphore,
    shared: Arc<Shared>,
}

/// State shared by the store's handle, its writer and its pruner.
struct Shared {
    /// Writes are failing for lack of space.
    full: AtomicBool,
    /// Ticks on each recovery from a full disk.
    recoveries: tokio::sync::watch::Sender<u64>,
    /// Inbox rows whose handling failed on a write.
    stranded: Mutex<BTreeSet<i64>>,
    /// Turn commits that failed on a write.
    failed_turns: AtomicU64,
    /// The last row counts.
    stats: Mutex<(Vec<(String, u64)>, i64)>,
}

impl Shared {
    fn mark_full(&self, error: &StoreError) {
        if matches!(error, StoreError::Full(_)) && !self.full.swap(true, Ordering::AcqRel) {
            tracing::error!(message = "The disk is full; writes fail and inbound messages are refused until space returns.", %error);
        }
    }
}

fn db(e: rusqlite::Error) -> StoreError {
    if e.sqlite_error_code() == Some(rusqlite::ErrorCode::DiskFull) {
        StoreError::Full(e.to_string())
    } else {
        StoreError::Database(e.to_string())
    }
}

fn open_connection(path: &Path) -> Result<Connection, StoreError> {
    let conn = Connection::open(path).map_err(|e| {
        StoreError::Database(format!("cannot open database {}: {e}", path.display()))
    })?;
    conn.busy_timeout(std::time::Duration::from_secs(30))
        .map_err(db)?;
    // Room for every statement a connection prepares (rusqlite keeps 16 by default).
    conn.set_prepared_statement_cache_capacity(64);
    conn.execute_batch(
        "PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL; PRAGMA foreign_keys = ON;",
    )
    .map_err(db)?;
    Ok(conn)
}

impl SqliteStore {
    /// Opens (creating if needed) the database at `path` with the default [`Retention`].
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        Self::open_with(path, Retention::default())
    }

    /// Opens (creating if needed) the database at `path`, applies pending migrations, and
    /// starts the writer and the pruner.
    pub fn open_with(path: &Path, retention: Retention) -> Result<Self, StoreError> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| {
                StoreError::Database(format!("cannot create {}: {e}", dir.display()))
            })?;
        }
        let mut conn = open_connection(path)?;
        conn.execute_batch(WRITER_PRAGMAS).map_err(db)?;
        incremental_vacuum_mode(&conn, path)?;
        migrate(&mut conn)?;
        let shared = Arc::new(Shared {
            full: AtomicBool::new(false),
            recoveries: tokio::sync::watch::channel(0).0,
            stranded: Mutex::new(BTreeSet::new()),
            failed_turns: AtomicU64::new(0),
            stats: Mutex::new((Vec::new(), 0)),
        });
        let (tx, rx) = mpsc::channel::<Job>();
        let writer_failed = Arc::new(Mutex::new(None));
        let failed = writer_failed.clone();
        let writer_shared = shared.clone();
        let thread = std::thread::Builder::new()
            .name("store-writer".to_owned())
            .spawn(move || {
                let run = std::panic::AssertUnwindSafe(|| writer_loop(conn, rx, &writer_shared));
                if let Err(p) = std::panic::catch_unwind(run) {
                    let message = crate::supervise::panic_message(&*p);
                    tracing::error!(message = "The store writer panicked; nothing more can be written until gatewayd is restarted.", panic = %message);
                    if let Ok(mut f) = failed.lock() {
                        *f = Some(format!("panicked: {message}"));
                    }
                }
            })
            .map_err(|e| StoreError::Database(format!("cannot start the writer thread: {e}")))?;
        let (stop_tx, stop_rx) = mpsc::channel::<()>();
        let pruner = Pruner {
            writer: tx.clone(),
            shared: shared.clone(),
            path: path.to_path_buf(),
            retention,
            stop: Some(stop_rx),
        };
        let pruner_thread = std::thread::Builder::new()
            .name("store-pruner".to_owned())
            .spawn(move || pruner.run())
            .map_err(|e| StoreError::Database(format!("cannot start the pruner thread: {e}")))?;
        Ok(Self {
            path: path.to_path_buf(),
            writer: Mutex::new(Some(tx)),
            writer_thread: Mutex::new(Some(thread)),
            writer_failed,
            pruner: Mutex::new(Some((stop_tx, pruner_thread))),
            readers: Mutex::new(Vec::new()),
            read_slots: tokio::sync::Semaphore::new(READ_POOL),
            shared,
        })
    }

    /// Why the writer thread stopped, if it panicked.
    pub fn writer_failure(&self) -> Option<String> {
        self.writer_failed.lock().ok().and_then(|f| f.clone())
    }

    /// Makes the writer thread panic, for tests of supervision.
    #[doc(hidden)]
    pub fn panic_writer(&self) {
        let job: Job = Box::new(|_| panic!("injected fault: store writer"));
        if let Ok(guard) = self.writer.lock()
            && let Some(sender) = guard.as_ref()
        {
            let _ = sender.send(job);
        }
    }

    /// Runs `f` in the writer thread inside the next group commit.
    async fn write<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    {
        self.write_then(f, |_| {}).await
    }

    /// Like [`SqliteStore::write`], and runs `then` on the outcome in the writer thread, before
    /// the writer takes its next batch (so before any later write, such as a space probe).
    async fn write_then<T, F, A>(&self, f: F, then: A) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
        A: FnOnce(&Result<T, StoreError>) + Send + 'static,
    {
        let (tx, rx) = oneshot::channel();
        let job = job(&self.shared, f, move |r| {
            then(&r);
            let _ = tx.send(r);
        });
        {
            let guard = self.writer.lock().map_err(|_| StoreError::Closed)?;
            let sender = guard.as_ref().ok_or(StoreError::Closed)?;
            sender.send(job).map_err(|_| StoreError::Closed)?;
        }
        rx.await.map_err(|_| StoreError::Closed)?
    }

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

    /// Runs `f` on a pooled read connection in the blocking pool.
    async fn read<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    {
        let _slot = self
            .read_slots
            .acquire()
            .await
            .map_err(|_| StoreError::Closed)?;
        let pooled = self.readers.lock().ok().and_then(|mut p| p.pop());
        let path = self.path.clone();
        let (conn, result) = tokio::task::spawn_blocking(move || {
            let conn = match pooled {
                Some(c) => c,
                None => open_connection(&path)?,
            };
            let result = f(&conn);
            Ok::<_, StoreError>((conn, result))
        })
        .await
        .map_err(|e| StoreError::Database(format!("read task failed: {e}")))??;
        if let Ok(mut pool) = self.readers.lock()
            && pool.len() < READ_POOL
        {
            pool.push(conn);
        }
        result
    }
}

impl SqliteStore {
    /// [`Store::commit_turn`], with `then` run on its outcome in the writer thread.
    async fn commit_turn_once(
        &self,
        turn: TurnRecord,
        then: impl FnOnce(&Result<Vec<OutboundMessage>, StoreError>) + Send + 'static,
    ) -> Result<Vec<OutboundMessage>, StoreError> {
        self.write_then(
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

    /// Records a failed send in the row and its error history; `dead` also ends the row as a
    /// dead letter. Only a pending row changes.
    async fn record_failure(
        &self,
        id: i64,
        attempts: u32,
        class: ErrorClass,
        error: &str,
        dead: bool,
    ) -> Result<(), StoreError> {
        let error = error.to_owned();
        self.write(move |conn| {
            atomic(conn, |conn| {
                conn.prepare_cached(
                    "UPDATE outbox SET status = CASE WHEN ?6 THEN 'dead' ELSE status END,
                     attempts = ?2, last_error = ?3, error_class = ?4, updated_at = ?5
                     WHERE id = ?1 AND status = 'pending'",
                )
                .and_then(|mut s| {
                    s.execute(params![id, attempts, error, class.as_str(), now_ms(), dead])
                })
                .map_err(db)?;
                record_error(conn, id, attempts, class, &error)
            })
        })
        .await
    }
}

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
struct Pruner {
    writer: mpsc::Sender<Job>,
    shared: Arc<Shared>,
    path: PathBuf,
    retention: Retention,
    /// Closed when the store closes; `None` for a pass run on demand.
    stop: Option<mpsc::Receiver<()>>,
}

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

impl Pruner {
    fn run(self) {
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

/// Puts the database in `auto_vacuum = INCREMENTAL` mode, so pruned pages can be returned to
/// the file system. A new database takes the mode at once; an existing one made without it is
/// rewritten once with `VACUUM` (which needs free disk space about the size of the file). If
/// that fails the store still opens: pruned pages are reused, but the file does not shrink.
fn incremental_vacuum_mode(conn: &Connection, path: &Path) -> Result<(), StoreError> {
    const INCREMENTAL: i64 = 2;
    let mode: i64 = conn
        .query_row("PRAGMA auto_vacuum", [], |r| r.get(0))
        .map_err(db)?;
    if mode == INCREMENTAL {
        return Ok(());
    }
    let objects: i64 = conn
        .query_row("SELECT COUNT(*) FROM sqlite_master", [], |r| r.get(0))
        .map_err(db)?;
    conn.execute_batch("PRAGMA auto_vacuum = INCREMENTAL")
        .map_err(db)?;
    // Even a new, empty file needs the VACUUM: switching to WAL has already written its header.
    let started = Instant::now();
    if objects > 0 {
        tracing::info!(message = "Converting the database to incremental vacuum with a one-time VACUUM.", path = %path.display());
    }
    match conn.execute_batch("VACUUM") {
        Ok(()) if objects > 0 => tracing::info!(
            message = "Database converted to incremental vacuum.",
            elapsed_ms = started.elapsed().as_millis() as u64
        ),
        Ok(()) => {}
        Err(e) => {
            let error = db(e);
            tracing::warn!(message = "Cannot convert the database to incremental vacuum; pruned space is reused but the file does not shrink. It is tried again at the next start.", %error);
        }
    }
    Ok(())
}

fn migrate(conn: &mut Connection) -> Result<(), StoreError> {
    let version: usize = conn
        .query_row("PRAGMA user_version", [], |r| r.get::<_, i64>(0))
        .map_err(db)?
        .try_into()
        .map_err(|_| StoreError::Database("negative user_version".to_owned()))?;
    if version > MIGRATIONS.len() {
        return Err(StoreError::Database(format!(
            "the database is at schema version {version}, newer than this gatewayd knows ({}); upgrade gatewayd",
            MIGRATIONS.len()
        )));
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(version) {
        let tx = conn.transaction().map_err(db)?;
        tx.execute_batch(sql).map_err(db)?;
        tx.pragma_update(
            None,
            "user_version",
            i64::try_from(i + 1).unwrap_or(i64::MAX),
        )
        .map_err(db)?;
        tx.commit().map_err(db)?;
    }
    Ok(())
}

/// A job running `f`, whose caller is answered through `answer` once the batch is committed
/// (or with the batch's error). A `Full` result marks the store full.
fn job<T, F, A>(shared: &Arc<Shared>, f: F, answer: A) -> Job
where
    T: Send + 'static,
    F: FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    A: FnOnce(Result<T, StoreError>) + Send + 'static,
{
    let shared = shared.clone();
    Box::new(move |conn: Option<&Connection>| {
        let result = conn.map(f);
        if let Some(Err(e)) = &result {
            shared.mark_full(e);
        }
        Box::new(move |commit: Result<(), StoreError>| {
            answer(match (commit, result) {
                (Err(e), _) => Err(e),
                (Ok(()), Some(r)) => r,
                (Ok(()), None) => Err(StoreError::Database("the write did not run".to_owned())),
            });
        })
    })
}

fn writer_loop(conn: Connection, rx: mpsc::Receiver<Job>, shared: &Shared) {
    let mut batch: Vec<Job> = Vec::with_capacity(MAX_BATCH);
    let mut replies: Vec<Reply> = Vec::with_capacity(MAX_BATCH);
    while let Ok(first) = rx.recv() {
        batch.push(first);
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        if let Err(e) = conn.execute_batch("BEGIN IMMEDIATE") {
            let error = db(e);
            shared.mark_full(&error);
            tracing::error!(message = "Store writer cannot begin a transaction.", %error);
            // No job may run outside a transaction: each is answered with the error instead.
            for job in batch.drain(..) {
                job(None)(Err(error.clone()));
            }
            continue;
        }
        // Each job that writes more than one statement wraps them in `atomic`, so a failed job
        // leaves nothing behind and the rest of the batch still commits. But SQLite may roll
        // back the whole transaction on some errors (`SQLITE_FULL` among them): then the jobs
        // before it are lost too, and none after it may run, so the whole batch fails.
        let mut lost: Option<StoreError> = None;
        for job in batch.drain(..) {
            if lost.is_some() {
                replies.push(job(None));
                continue;
            }
            replies.push(job(Some(&conn)));
            if conn.is_autocommit() {
                let text = "the database rolled back the transaction".to_owned();
                lost = Some(if shared.full.load(Ordering::Acquire) {
                    StoreError::Full(text)
                } else {
                    StoreError::Database(text)
                });
            }
        }
        let commit = match lost {
            Some(e) => Err(e),
            None => conn.execute_batch("COMMIT").map_err(|e| match db(e) {
                StoreError::Full(m) => StoreError::Full(format!("commit failed: {m}")),
                other => StoreError::Database(format!("commit failed: {other}")),
            }),
        };
        if let Err(error) = &commit {
            shared.mark_full(error);
            if !conn.is_autocommit() {
                let _ = conn.execute_batch("ROLLBACK");
            }
        }
        for reply in replies.drain(..) {
            reply(commit.clone());
        }
    }
}

/// Runs `f` so that its statements are undone if it fails, leaving the rest of the batch intact.
fn atomic<T>(
    conn: &Connection,
    f: impl FnOnce(&Connection) -> Result<T, StoreError>,
) -> Result<T, StoreError> {
    // Cached statements: these run for nearly every write, and parsing them each time shows.
    let run = |sql: &str| {
        conn.prepare_cached(sql)
            .and_then(|mut s| s.execute([]))
            .map_err(db)
    };
    run("SAVEPOINT atomic")?;
    match f(conn) {
        Ok(v) => {
            run("RELEASE atomic")?;
            Ok(v)
        }
        Err(e) => {
            let _ = run("ROLLBACK TO atomic").and_then(|_| run("RELEASE atomic"));
            Err(e)
        }
    }
}

/// The columns [`outbound_from`] reads, in order.
const OUTBOUND_COLUMNS: &str = "id, channel, chat_id, text, reply_to, attempts, chunks_sent";

type OutboundRow = (i64, String, String, String, Option<String>, i64, i64);

fn row_to_outbound(r: &rusqlite::Row<'_>) -> rusqlite::Result<OutboundRow> {
    Ok((
        r.get(0)?,
        r.get(1)?,
        r.get(2)?,
        r.get(3)?,
        r.get(4)?,
        r.get(5)?,
        r.get(6)?,
    ))
}

fn outbound_from(
    (id, channel, chat_id, text, reply_to, attempts, chunks_sent): OutboundRow,
) -> Result<OutboundMessage, StoreError> {
    Ok(OutboundMessage {
        id,
        channel: parse_channel(&channel)?,
        chat_id,
        text,
        reply_to,
        attempts: u32::try_from(attempts).unwrap_or(u32::MAX),
        chunks_sent: u32::try_from(chunks_sent).unwrap_or(0),
    })
}

fn parse_class(s: &str) -> Result<ErrorClass, StoreError> {
    ErrorClass::parse(s).ok_or_else(|| StoreError::Database(format!("corrupt error class `{s}`")))
}

fn record_error(
    conn: &Connection,
    id: i64,
    attempt: u32,
    class: ErrorClass,
    error: &str,
) -> Result<(), StoreError> {
    conn.prepare_cached(
        "INSERT INTO delivery_errors (outbox_id, at, attempt, class, error) VALUES (?1, ?2, ?3, ?4, ?5)",
    )
    .and_then(|mut s| s.execute(params![id, now_ms(), attempt, class.as_str(), error]))
    .map(|_| ())
    .map_err(db)
}

/// The `WHERE` clause and parameters selecting dead letters.
fn dead_where(selector: &DeadSelector) -> (String, Vec<rusqlite::types::Value>) {
    use rusqlite::types::Value;
    let marks = |n: usize| vec!["?"; n.max(1)].join(", ");
    match selector {
        DeadSelector::Ids(ids) => {
            let mut values: Vec<Value> = ids.iter().map(|i| Value::Integer(*i)).collect();
            if values.is_empty() {
                values.push(Value::Null);
            }
            (
                format!("status = 'dead' AND id IN ({})", marks(ids.len())),
                values,
            )
        }
        DeadSelector::Channel { channel, classes } => {
            let mut values = vec![Value::Text(channel.as_str().to_owned())];
            let mut clause = "status = 'dead' AND channel = ?".to_owned();
            if let Some(classes) = classes {
                clause.push_str(&format!(" AND error_class IN ({})", marks(classes.len())));
                values.extend(classes.iter().map(|c| Value::Text(c.as_str().to_owned())));
                if classes.is_empty() {
                    values.push(Value::Null);
                }
            }
            (clause, values)
        }
    }
}

type DeadRow = (OutboundRow, Option<String>, Option<String>, i64, i64);

fn dead_letter_from(r: &rusqlite::Row<'_>) -> rusqlite::Result<DeadRow> {
    Ok((
        row_to_outbound(r)?,
        r.get(7)?,
        r.get(8)?,
        r.get(9)?,
        r.get(10)?,
    ))
}

fn to_dead_letter(
    (row, error, class, created, updated): DeadRow,
) -> Result<DeadLetter, StoreError> {
    Ok(DeadLetter {
        message: outbound_from(row)?,
        last_error: error.unwrap_or_default(),
        class: class
            .as_deref()
            .map_or(Ok(ErrorClass::Permanent), parse_class)?,
        created_at_ms: created,
        dead_at_ms: updated,
    })
}

fn insert_reply(
    conn: &Connection,
    inbox_id: i64,
    r: &NewReply,
    now: i64,
) -> Result<i64, StoreError> {
    conn.prepare_cached(
        "INSERT INTO outbox (inbox_id, channel, chat_id, text, reply_to, created_at, updated_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?6)",
    )
    .and_then(|mut s| {
        s.execute(params![
            inbox_id,
            r.channel.as_str(),
            r.chat_id,
            r.text,
            r.reply_to,
            now
        ])
    })
    .map_err(db)?;
    Ok(conn.last_insert_rowid())
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

#[async_trait]
impl Store for SqliteStore {
    async fn list_inbox(
        &self,
        f: &super::InboxFilter,
        after: Option<i64>,
        limit: usize,
    ) -> Result<Vec<super::InboxRecord>, StoreError> {
        self.inspect_inbox(f, after, limit).await
    }

    async fn list_outbox(
        &self,
        f: &super::OutboxFilter,
        after: Option<i64>,
        limit: usize,
        with_errors: bool,
    ) -> Result<Vec<super::OutboxRecord>, StoreError> {
        self.inspect_outbox(f, after, limit, with_errors).await
    }

    async fn history_traced(
        &self,
        session: &SessionKey,
        limit: usize,
    ) -> Result<Vec<super::TracedEntry>, StoreError> {
        self.inspect_history(session, limit).await
    }

    async fn inbox_commit(&self, msg: &InboundMessage) -> Result<InboxOutcome, StoreError> {
        let msg = msg.clone();
        let attachments = if msg.attachments.is_empty() {
            None
        } else {
            Some(
                serde_json::to_string(&msg.attachments)
                    .map_err(|e| StoreError::Database(format!("cannot encode attachments: {e}")))?,
            )
        };
        self.write(move |conn| {
            let inserted = conn
                .prepare_cached(
                    "INSERT OR IGNORE INTO inbox
                     (channel, channel_message_id, chat_id, chat_type, sender_id, text, received_at,
                      reply_to, attachments)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
                )
                .and_then(|mut s| {
                    s.execute(params![
                        msg.channel.as_str(),
                        msg.channel_message_id,
                        msg.chat_id,
                        msg.chat_type.as_str(),
                        msg.sender_id,
                        msg.text,
                        msg.received_at_ms,
                        msg.reply_to,
                        attachments
                    ])
                })
                .map_err(db)?;
            if inserted == 1 {
                return Ok(InboxOutcome::New(conn.last_insert_rowid()));
            }
            conn.prepare_cached(
                "SELECT id FROM inbox WHERE channel = ?1 AND channel_message_id = ?2",
            )
            .and_then(|mut s| {
                s.query_row(params![msg.channel.as_str(), msg.channel_message_id], |r| {
                    r.get(0)
                })
            })
            .map(InboxOutcome::Duplicate)
            .map_err(db)
        })
        .await
    }

    async fn inbox_pending(&self) -> Result<Vec<PendingInbound>, StoreError> {
        self.read(|conn| {
            let mut stmt = conn
                .prepare(
                    "SELECT id, channel, channel_message_id, chat_id, chat_type, sender_id, text, received_at,
                            reply_to, attachments
                     FROM inbox WHERE done = 0 ORDER BY id",
                )
                .map_err(db)?;
            let rows = stmt
                .query_map([], |r| {
                    Ok((
                        r.get::<_, i64>(0)?,
                        r.get::<_, String>(1)?,
                        r.get::<_, String>(2)?,
                        r.get::<_, String>(3)?,
                        r.get::<_, String>(4)?,
                        r.get::<_, String>(5)?,
                        r.get::<_, String>(6)?,
                        r.get::<_, i64>(7)?,
                        r.get::<_, Option<String>>(8)?,
                        r.get::<_, Option<String>>(9)?,
                    ))
                })
                .map_err(db)?;
            let mut out = Vec::new();
            for row in rows {
                let (id, channel, mid, chat, chat_type, sender, text, at, reply_to, attachments) =
                    row.map_err(db)?;
                let attachments = match attachments {
                    Some(json) => serde_json::from_str(&json).map_err(|e| {
                        StoreError::Database(format!("corrupt attachments of inbox row {id}: {e}"))
                    })?,
                    None => Vec::new(),
                };
                out.push(PendingInbound {
                    inbox_id: id,
                    message: InboundMessage {
                        channel: parse_channel(&channel)?,
                        channel_message_id: mid,
                        chat_id: chat,
                        chat_type: chat_type
                            .parse::<ChatType>()
                            .map_err(StoreError::Database)?,
                        sender_id: sender,
                        text,
                        reply_to,
                        attachments,
                        received_at_ms: at,
                    },
                });
            }
            Ok(out)
        })
        .await
    }

    async fn commit_turn(&self, turn: TurnRecord) -> Result<Vec<OutboundMessage>, StoreError> {
        let inbox_id = turn.inbox_id;
        let shared = self.shared.clone();
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
        self.commit_turn_once(turn, note).await
    }

    async fn history(
        &self,
        session: &SessionKey,
        limit: usize,
    ) -> Result<Vec<TranscriptEntry>, StoreError> {
        let key = session.to_string();
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.read(move |conn| {
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

    async fn outbox_pending(&self) -> Result<Vec<OutboundMessage>, StoreError> {
        self.read(|conn| {
            let mut stmt = conn
                .prepare(&format!(
                    "SELECT {OUTBOUND_COLUMNS} FROM outbox WHERE status = 'pending' ORDER BY id"
                ))
                .map_err(db)?;
            let rows = stmt.query_map([], row_to_outbound).map_err(db)?;
            rows.map(|r| r.map_err(db).and_then(outbound_from))
                .collect()
        })
        .await
    }

    async fn outbox_delivered(&self, id: i64) -> Result<(), StoreError> {
        self.write(move |conn| {
            conn.prepare_cached(
                "UPDATE outbox SET status = 'delivered', attempts = attempts + 1, updated_at = ?2
                 WHERE id = ?1 AND status = 'pending'",
            )
            .and_then(|mut s| s.execute(params![id, now_ms()]))
            .map(|_| ())
            .map_err(db)
        })
        .await
    }

    async fn outbox_progress(&self, id: i64, chunks_sent: u32) -> Result<(), StoreError> {
        self.write(move |conn| {
            conn.prepare_cached(
                "UPDATE outbox SET chunks_sent = ?2, updated_at = ?3 WHERE id = ?1 AND status = 'pending'",
            )
            .and_then(|mut s| s.execute(params![id, chunks_sent, now_ms()]))
            .map(|_| ())
            .map_err(db)
        })
        .await
    }

    async fn outbox_attempt_failed(
        &self,
        id: i64,
        attempts: u32,
        class: ErrorClass,
        error: &str,
    ) -> Result<(), StoreError> {
        self.record_failure(id, attempts, class, error, false).await
    }

    async fn outbox_dead(
        &self,
        id: i64,
        attempts: u32,
        class: ErrorClass,
        error: &str,
    ) -> Result<(), StoreError> {
        self.record_failure(id, attempts, class, error, true).await
    }

    async fn dead_letters(
        &self,
        channel: Option<ChannelKind>,
        after: Option<i64>,
        limit: usize,
    ) -> Result<Vec<DeadLetter>, StoreError> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.read(move |conn| {
            let mut stmt = conn
                .prepare_cached(&format!(
                    "SELECT {OUTBOUND_COLUMNS}, last_error, error_class, created_at, updated_at FROM outbox
                     WHERE status = 'dead' AND (?1 IS NULL OR channel = ?1) AND id > ?2
                     ORDER BY id LIMIT ?3"
                ))
                .map_err(db)?;
            let rows = stmt
                .query_map(
                    params![channel.map(ChannelKind::as_str), after.unwrap_or(0), limit],
                    dead_letter_from,
                )
                .map_err(db)?;
            rows.map(|r| r.map_err(db).and_then(to_dead_letter)).collect()
        })
        .await
    }

    async fn dead_letter(&self, id: i64) -> Result<(DeadLetter, Vec<AttemptError>), StoreError> {
        self.read(move |conn| {
            let letter = conn
                .query_row(
                    &format!(
                        "SELECT {OUTBOUND_COLUMNS}, last_error, error_class, created_at, updated_at
                         FROM outbox WHERE id = ?1 AND status = 'dead'"
                    ),
                    [id],
                    dead_letter_from,
                )
                .optional()
                .map_err(db)?
                .ok_or_else(|| StoreError::NotFound(format!("no dead letter {id}")))?;
            let mut stmt = conn
                .prepare_cached(
                    "SELECT at, attempt, class, error FROM delivery_errors WHERE outbox_id = ?1 ORDER BY id",
                )
                .map_err(db)?;
            let rows = stmt
                .query_map([id], |r| {
                    Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(1)?, r.get::<_, String>(2)?, r.get::<_, String>(3)?))
                })
                .map_err(db)?;
            let mut history = Vec::new();
            for row in rows {
                let (at, attempt, class, error) = row.map_err(db)?;
                history.push(AttemptError {
                    at_ms: at,
                    attempt: u32::try_from(attempt).unwrap_or(0),
                    class: parse_class(&class)?,
                    error,
                });
            }
            Ok((to_dead_letter(letter)?, history))
        })
        .await
    }

    async fn retry_dead(
        &self,
        selector: &DeadSelector,
    ) -> Result<Vec<OutboundMessage>, StoreError> {
        let (clause, values) = dead_where(selector);
        self.write(move |conn| {
            let mut stmt = conn
                .prepare(&format!(
                    "UPDATE outbox SET status = 'pending', attempts = 0, updated_at = {now}
                     WHERE {clause} RETURNING {OUTBOUND_COLUMNS}",
                    now = now_ms()
                ))
                .map_err(db)?;
            let rows = stmt
                .query_map(rusqlite::params_from_iter(values), row_to_outbound)
                .map_err(db)?;
            let mut out: Vec<OutboundMessage> = rows
                .map(|r| r.map_err(db).and_then(outbound_from))
                .collect::<Result<_, _>>()?;
            out.sort_by_key(|m| m.id);
            Ok(out)
        })
        .await
    }

    async fn drop_dead(&self, selector: &DeadSelector) -> Result<u64, StoreError> {
        let (clause, values) = dead_where(selector);
        self.write(move |conn| {
            conn.execute(
                &format!(
                    "UPDATE outbox SET status = 'dropped', updated_at = {now} WHERE {clause}",
                    now = now_ms()
                ),
                rusqlite::params_from_iter(values),
            )
            .map(|n| n as u64)
            .map_err(db)
        })
        .await
    }

    async fn resolve_address(&self, address: &Address) -> Result<UserId, StoreError> {
        let channel = address.channel.as_str();
        let sender = address.sender_id.clone();
        let lookup = move |conn: &Connection, sender: &str| {
            conn.prepare_cached(
                "SELECT user_id FROM addresses WHERE channel = ?1 AND sender_id = ?2",
            )
            .and_then(|mut s| {
                s.query_row(params![channel, sender], |r| r.get(0))
                    .optional()
            })
            .map_err(db)
        };
        let s2 = sender.clone();
        if let Some(id) = self.read(move |conn| lookup(conn, &s2)).await? {
            return Ok(id);
        }
        self.write(move |conn| {
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

    async fn user(&self, id: UserId) -> Result<UserRecord, StoreError> {
        self.read(move |conn| {
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

    async fn link_users(&self, keep: UserId, merge: UserId) -> Result<(), StoreError> {
        if keep == merge {
            return Err(StoreError::Conflict(format!(
                "user {keep} is already linked"
            )));
        }
        self.write(move |conn| {
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
                Ok(())
            })
        })
        .await
    }

    async fn unlink_address(&self, address: &Address) -> Result<UserId, StoreError> {
        let channel = address.channel.as_str();
        let sender = address.sender_id.clone();
        let display = address.to_string();
        self.write(move |conn| {
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

    async fn put_link_code(
        &self,
        code: &str,
        user: UserId,
        expires_at_ms: i64,
    ) -> Result<(), StoreError> {
        let code = code.to_owned();
        self.write(move |conn| {
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

    async fn take_link_code(&self, code: &str, now_ms: i64) -> Result<Option<UserId>, StoreError> {
        let code = code.to_owned();
        self.write(move |conn| {
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

    async fn counts(&self) -> Result<(u64, u64, u64), StoreError> {
        self.read(|conn| {
            conn.query_row(
                "SELECT (SELECT COUNT(*) FROM inbox WHERE done = 0),
                        (SELECT COUNT(*) FROM outbox WHERE status = 'pending'),
                        (SELECT COUNT(*) FROM outbox WHERE status = 'dead')",
                [],
                |r| {
                    Ok((
                        r.get::<_, i64>(0)?.unsigned_abs(),
                        r.get::<_, i64>(1)?.unsigned_abs(),
                        r.get::<_, i64>(2)?.unsigned_abs(),
                    ))
                },
            )
            .map_err(db)
        })
        .await
    }

    async fn list_sessions(
        &self,
        filter: &SessionFilter,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<StoredSession>, StoreError> {
        let filter = filter.clone();
        let after = after.unwrap_or("").to_owned();
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.read(move |conn| {
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

    async fn session(&self, key: &SessionKey) -> Result<Option<StoredSession>, StoreError> {
        let key = key.to_string();
        self.read(move |conn| {
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

    async fn count_sessions(&self) -> Result<u64, StoreError> {
        self.read(|conn| {
            conn.query_row("SELECT COUNT(*) FROM sessions", [], |r| r.get::<_, i64>(0))
                .map(i64::unsigned_abs)
                .map_err(db)
        })
        .await
    }

    async fn list_users(
        &self,
        channel: Option<ChannelKind>,
        after: Option<UserId>,
        limit: usize,
    ) -> Result<Vec<UserRecord>, StoreError> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.read(move |conn| {
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

    async fn attach_address(&self, user: UserId, address: &Address) -> Result<(), StoreError> {
        let channel = address.channel.as_str();
        let sender = address.sender_id.clone();
        self.write(move |conn| {
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

    async fn last_direct_chat(
        &self,
        user: UserId,
    ) -> Result<Option<(ChannelKind, String)>, StoreError> {
        self.read(move |conn| {
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

    async fn outbox_put(&self, reply: NewReply) -> Result<OutboundMessage, StoreError> {
        self.write(move |conn| {
            let id = insert_reply(conn, 0, &reply, now_ms())?;
            Ok(OutboundMessage {
                id,
                channel: reply.channel,
                chat_id: reply.chat_id,
                text: reply.text,
                reply_to: reply.reply_to,
                attempts: 0,
                chunks_sent: 0,
            })
        })
        .await
    }

    async fn run_create(
        &self,
        workflow: &str,
        inputs: &serde_json::Value,
        origin: Option<&RunOrigin>,
    ) -> Result<i64, StoreError> {
        let workflow = workflow.to_owned();
        let inputs = json_text(inputs)?;
        let origin = origin.map(json_text).transpose()?;
        self.write(move |conn| {
            conn.execute(
                "INSERT INTO workflow_runs (workflow, inputs, origin, status, created_at)
                 VALUES (?1, ?2, ?3, 'running', ?4)",
                params![workflow, inputs, origin, now_ms()],
            )
            .map_err(db)?;
            Ok(conn.last_insert_rowid())
        })
        .await
    }

    async fn run_node(&self, run: i64, node: &NodeRecord) -> Result<(), StoreError> {
        let node = node.clone();
        let output = node.output.as_ref().map(json_text).transpose()?;
        self.write(move |conn| {
            conn.prepare_cached(
                "INSERT OR REPLACE INTO workflow_nodes
                 (run_id, node, status, output, error, attempts, started_at, finished_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            )
            .and_then(|mut s| {
                s.execute(params![
                    run,
                    node.node,
                    node.status.as_str(),
                    output,
                    node.error,
                    node.attempts,
                    node.started_at_ms,
                    node.finished_at_ms
                ])
            })
            .map(|_| ())
            .map_err(db)
        })
        .await
    }

    async fn run_finish(
        &self,
        run: i64,
        status: RunStatus,
        error: Option<&str>,
    ) -> Result<(), StoreError> {
        let error = error.map(str::to_owned);
        self.write(move |conn| {
            conn.execute(
                "UPDATE workflow_runs SET status = ?2, error = ?3, finished_at = ?4 WHERE id = ?1",
                params![run, status.as_str(), error, now_ms()],
            )
            .map(|_| ())
            .map_err(db)
        })
        .await
    }

    async fn run_get(&self, run: i64) -> Result<RunRecord, StoreError> {
        self.read(move |conn| {
            let row = conn
                .query_row(
                    &format!("SELECT {RUN_COLUMNS} FROM workflow_runs WHERE id = ?1"),
                    [run],
                    run_row,
                )
                .optional()
                .map_err(db)?
                .ok_or_else(|| StoreError::NotFound(format!("no run {run}")))?;
            to_run(conn, row)
        })
        .await
    }

    async fn run_list(
        &self,
        workflow: Option<&str>,
        before: Option<i64>,
        limit: usize,
    ) -> Result<Vec<RunRecord>, StoreError> {
        let workflow = workflow.map(str::to_owned);
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.read(move |conn| {
            let mut stmt = conn
                .prepare_cached(&format!(
                    "SELECT {RUN_COLUMNS} FROM workflow_runs
                     WHERE (?1 IS NULL OR workflow = ?1) AND id < ?2 ORDER BY id DESC LIMIT ?3"
                ))
                .map_err(db)?;
            let rows: Vec<RunRow> = stmt
                .query_map(
                    params![workflow, before.unwrap_or(i64::MAX), limit],
                    run_row,
                )
                .map_err(db)?
                .collect::<Result<_, _>>()
                .map_err(db)?;
            rows.into_iter().map(|r| to_run(conn, r)).collect()
        })
        .await
    }

    async fn runs_unfinished(&self) -> Result<Vec<RunRecord>, StoreError> {
        self.read(|conn| {
            let mut stmt = conn
                .prepare(&format!(
                    "SELECT {RUN_COLUMNS} FROM workflow_runs WHERE status = 'running' ORDER BY id"
                ))
                .map_err(db)?;
            let rows: Vec<RunRow> = stmt
                .query_map([], run_row)
                .map_err(db)?
                .collect::<Result<_, _>>()
                .map_err(db)?;
            rows.into_iter().map(|r| to_run(conn, r)).collect()
        })
        .await
    }

    async fn storage(&self) -> Result<StorageStats, StoreError> {
        let size = |p: &Path| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0);
        let mut wal = self.path.clone().into_os_string();
        wal.push("-wal");
        let database_bytes = size(&self.path) + size(Path::new(&wal));
        let (table_rows, counted_at_ms) = self
            .shared
            .stats
            .lock()
            .map(|s| s.clone())
            .unwrap_or_default();
        Ok(StorageStats {
            database_bytes,
            table_rows,
            counted_at_ms,
        })
    }

    fn disk_full(&self) -> bool {
        self.shared.full.load(Ordering::Acquire)
    }

    fn recoveries(&self) -> tokio::sync::watch::Receiver<u64> {
        self.shared.recoveries.subscribe()
    }

    fn failed_turn_commits(&self) -> u64 {
        self.shared.failed_turns.load(Ordering::Acquire)
    }

    fn note_stranded(&self, inbox_id: i64) {
        if let Ok(mut stranded) = self.shared.stranded.lock() {
            stranded.insert(inbox_id);
        }
    }

    async fn take_stranded(&self) -> Result<Vec<PendingInbound>, StoreError> {
        let ids = self
            .shared
            .stranded
            .lock()
            .map(|mut s| std::mem::take(&mut *s))
            .unwrap_or_default();
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let pending = self.inbox_pending().await?;
        Ok(pending
            .into_iter()
            .filter(|p| ids.contains(&p.inbox_id))
            .collect())
    }

    async fn set_page_limit(&self, pages: Option<u64>) -> Result<u64, StoreError> {
        // SQLite's own ceiling; a limit below the current size is raised to the current size.
        let pages = i64::try_from(pages.unwrap_or(4_294_967_294)).unwrap_or(i64::MAX);
        self.write(move |conn| {
            conn.query_row(&format!("PRAGMA max_page_count = {pages}"), [], |_| Ok(()))
                .map_err(db)?;
            conn.query_row("PRAGMA page_count", [], |r| r.get::<_, i64>(0))
                .map(i64::unsigned_abs)
                .map_err(db)
        })
        .await
    }

    async fn close(&self) {
        // The pruner first: it holds a sender of the writer's channel.
        let pruner = self.pruner.lock().ok().and_then(|mut p| p.take());
        if let Some((stop, thread)) = pruner {
            drop(stop);
            let _ = tokio::task::spawn_blocking(move || thread.join()).await;
        }
        if let Ok(mut w) = self.writer.lock() {
            w.take();
        }
        let thread = self.writer_thread.lock().ok().and_then(|mut t| t.take());
        if let Some(thread) = thread {
            let _ = tokio::task::spawn_blocking(move || thread.join()).await;
        }
    }
}

fn json_text<T: serde::Serialize>(value: &T) -> Result<String, StoreError> {
    serde_json::to_string(value)
        .map_err(|e| StoreError::Database(format!("cannot encode JSON: {e}")))
}

fn json_parse<T: serde::de::DeserializeOwned>(text: &str, what: &str) -> Result<T, StoreError> {
    serde_json::from_str(text).map_err(|e| StoreError::Database(format!("corrupt {what}: {e}")))
}

type RunRow = (
    i64,
    String,
    String,
    Option<String>,
    String,
    Option<String>,
    i64,
    Option<i64>,
);

const RUN_COLUMNS: &str = "id, workflow, inputs, origin, status, error, created_at, finished_at";

fn run_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<RunRow> {
    Ok((
        r.get(0)?,
        r.get(1)?,
        r.get(2)?,
        r.get(3)?,
        r.get(4)?,
        r.get(5)?,
        r.get(6)?,
        r.get(7)?,
    ))
}

/// A run row with its nodes read from the same connection.
fn to_run(conn: &Connection, row: RunRow) -> Result<RunRecord, StoreError> {
    let (id, workflow, inputs, origin, status, error, created, finished) = row;
    let mut stmt = conn
        .prepare_cached(
            "SELECT node, status, output, error, attempts, started_at, finished_at
             FROM workflow_nodes WHERE run_id = ?1",
        )
        .map_err(db)?;
    let rows = stmt
        .query_map([id], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, Option<String>>(2)?,
                r.get::<_, Option<String>>(3)?,
                r.get::<_, i64>(4)?,
                r.get::<_, Option<i64>>(5)?,
                r.get::<_, Option<i64>>(6)?,
            ))
        })
        .map_err(db)?;
    let mut nodes = Vec::new();
    for row in rows {
        let (node, status, output, error, attempts, started, finished) = row.map_err(db)?;
        nodes.push(NodeRecord {
            status: NodeStatus::parse(&status)
                .ok_or_else(|| StoreError::Database(format!("corrupt node status `{status}`")))?,
            output: output
                .as_deref()
                .map(|o| json_parse(o, "node output"))
                .transpose()?,
            node,
            error,
            attempts: u32::try_from(attempts).unwrap_or(0),
            started_at_ms: started,
            finished_at_ms: finished,
        });
    }
    Ok(RunRecord {
        id,
        workflow,
        inputs: json_parse(&inputs, "run inputs")?,
        origin: origin
            .as_deref()
            .map(|o| json_parse(o, "run origin"))
            .transpose()?,
        status: RunStatus::parse(&status)
            .ok_or_else(|| StoreError::Database(format!("corrupt run status `{status}`")))?,
        error,
        created_at_ms: created,
        finished_at_ms: finished,
        nodes,
    })
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

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(id: &str, sender: &str) -> InboundMessage {
        InboundMessage {
            channel: ChannelKind::Http,
            channel_message_id: id.to_owned(),
            chat_id: format!("chat-{sender}"),
            chat_type: ChatType::Direct,
            sender_id: sender.to_owned(),
            text: format!("text {id}"),
            reply_to: None,
            attachments: Vec::new(),
            received_at_ms: now_ms(),
        }
    }

    fn open() -> (tempfile::TempDir, SqliteStore) {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = SqliteStore::open(&dir.path().join("g.db")).expect("open");
        (dir, store)
    }

    /// Commits a message that must be new to the inbox; its row id.
    async fn new_inbox_row(store: &SqliteStore, id: &str, sender: &str) -> i64 {
        match store.inbox_commit(&msg(id, sender)).await.expect("commit") {
            InboxOutcome::New(row) => row,
            InboxOutcome::Duplicate(row) => panic!("{id} was already in the inbox as row {row}"),
        }
    }

    const DAY_MS: i64 = 86_400_000;

    fn retention(batch: usize, transcript: Option<Duration>, window: usize) -> Retention {
        Retention {
            dedupe_window: Duration::from_secs(7 * 86_400),
            transcript,
            history_window: window,
            interval: Duration::from_secs(300),
            batch,
        }
    }

    fn entry(text: &str, at_ms: i64) -> TranscriptEntry {
        TranscriptEntry {
            role: Role::User,
            text: text.to_owned(),
            at_ms,
            channel: Some(ChannelKind::Http),
        }
    }

    /// Commits a new inbox row and a turn for it with one reply; the reply's outbox row.
    async fn answered(store: &SqliteStore, id: &str, session: i64, text: &str) -> OutboundMessage {
        let inbox_id = new_inbox_row(store, id, &format!("s{session}")).await;
        let mut rows = store
            .commit_turn(TurnRecord {
                inbox_id,
                session: SessionKey::User(session),
                entries: vec![entry(text, now_ms())],
                replies: vec![NewReply {
                    channel: ChannelKind::Http,
                    chat_id: format!("chat-s{session}"),
                    text: text.to_owned(),
                    reply_to: Some(id.to_owned()),
                }],
            })
            .await
            .expect("turn");
        rows.pop().expect("one reply")
    }

    fn pragma(path: &Path, name: &str) -> i64 {
        let conn = Connection::open(path).expect("open");
        conn.query_row(&format!("PRAGMA {name}"), [], |r| r.get(0))
            .expect("pragma")
    }

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
                channel: ChannelKind::Http,
                sender_id: "s4".into(),
            })
            .await
            .expect("user");
        let row = answered(&store, "hello", 4, "hi").await;
        store.outbox_delivered(row.id).await.expect("delivered");
        let before = store.last_direct_chat(user).await.expect("read");
        assert_eq!(before, Some((ChannelKind::Http, "chat-s4".to_owned())));
        let report = store
            .prune_now(now_ms() + 8 * DAY_MS, retention(1000, None, 20))
            .await
            .expect("prune");
        assert_eq!(report.inbox, 1);
        assert_eq!(store.last_direct_chat(user).await.expect("read"), before);
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

    #[test]
    fn an_existing_database_is_converted_to_incremental_vacuum_once() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("old.db");
        {
            let conn = Connection::open(&path).expect("open");
            conn.execute_batch("CREATE TABLE legacy (a); INSERT INTO legacy VALUES (1);")
                .expect("legacy table");
        }
        assert_eq!(pragma(&path, "auto_vacuum"), 0);
        let store = SqliteStore::open(&path).expect("open");
        drop(store);
        assert_eq!(pragma(&path, "auto_vacuum"), 2);
        let conn = Connection::open(&path).expect("open");
        let kept: i64 = conn
            .query_row("SELECT a FROM legacy", [], |r| r.get(0))
            .expect("data kept by the VACUUM");
        assert_eq!(kept, 1);
    }

    #[tokio::test]
    async fn a_full_disk_fails_writes_keeps_committed_ones_and_recovers_by_itself() {
        let (_dir, store) = open();
        let first = new_inbox_row(&store, "before", "a").await;
        let mut recoveries = store.recoveries();
        let pages = store.set_page_limit(Some(1)).await.expect("limit");
        assert!(pages > 1);
        // Fill what is left until a commit fails.
        let mut acknowledged = vec![first];
        let mut refused = None;
        for i in 0..10_000 {
            let mut m = msg(&format!("fill-{i}"), "a");
            m.text = "y".repeat(3000);
            match store.inbox_commit(&m).await {
                Ok(InboxOutcome::New(id)) => acknowledged.push(id),
                Ok(other) => panic!("unexpected {other:?}"),
                Err(e) => {
                    refused = Some(e);
                    break;
                }
            }
        }
        let refused = refused.expect("the limit was reached");
        assert!(matches!(refused, StoreError::Full(_)), "{refused}");
        assert!(store.disk_full());
        // A turn that needs space fails, changes nothing, and is remembered.
        let turn = TurnRecord {
            inbox_id: first,
            session: SessionKey::User(1),
            entries: vec![entry(&"z".repeat(100_000), now_ms())],
            replies: Vec::new(),
        };
        let failed = store.commit_turn(turn.clone()).await.expect_err("no space");
        assert!(matches!(failed, StoreError::Full(_)), "{failed}");
        // Reads still work, and every acknowledged message is still pending.
        let pending: Vec<i64> = store
            .inbox_pending()
            .await
            .expect("reads work")
            .iter()
            .map(|p| p.inbox_id)
            .collect();
        assert_eq!(pending, acknowledged);
        // Space returns: the pruner's probe notices within a few seconds.
        store.set_page_limit(None).await.expect("lift");
        tokio::time::timeout(Duration::from_secs(10), recoveries.changed())
            .await
            .expect("recovered in time")
            .expect("store open");
        assert!(!store.disk_full());
        let stranded: Vec<i64> = store
            .take_stranded()
            .await
            .expect("stranded")
            .iter()
            .map(|p| p.inbox_id)
            .collect();
        assert_eq!(stranded, vec![first]);
        store.commit_turn(turn).await.expect("turn commits now");
        assert!(matches!(
            store.inbox_commit(&msg("after", "a")).await,
            Ok(InboxOutcome::New(_))
        ));
        store.close().await;
    }

    #[tokio::test]
    async fn inbox_deduplicates_by_channel_message_id() {
        let (_dir, store) = open();
        let first = store.inbox_commit(&msg("m1", "a")).await.expect("commit");
        let again = store.inbox_commit(&msg("m1", "a")).await.expect("commit");
        let InboxOutcome::New(id) = first else {
            panic!("first copy must be new: {first:?}")
        };
        assert_eq!(again, InboxOutcome::Duplicate(id));
        assert_eq!(store.inbox_pending().await.expect("pending").len(), 1);
    }

    #[tokio::test]
    async fn a_turn_commits_once_and_only_once() {
        let (_dir, store) = open();
        let id = new_inbox_row(&store, "m1", "a").await;
        let turn = TurnRecord {
            inbox_id: id,
            session: SessionKey::User(1),
            entries: vec![TranscriptEntry {
                role: Role::User,
                text: "hi".into(),
                at_ms: 1,
                channel: Some(ChannelKind::Http),
            }],
            replies: vec![NewReply {
                channel: ChannelKind::Http,
                chat_id: "c".into(),
                text: "hi".into(),
                reply_to: Some("m1".into()),
            }],
        };
        let rows = store.commit_turn(turn.clone()).await.expect("turn");
        assert_eq!(rows.len(), 1);
        let err = store
            .commit_turn(turn)
            .await
            .expect_err("second turn refused");
        assert!(matches!(err, StoreError::Conflict(_)), "{err}");
        // The refused turn left nothing behind.
        assert_eq!(store.outbox_pending().await.expect("outbox").len(), 1);
        assert_eq!(
            store
                .history(&SessionKey::User(1), 10)
                .await
                .expect("h")
                .len(),
            1
        );
        assert!(store.inbox_pending().await.expect("pending").is_empty());
    }

    #[tokio::test]
    async fn a_session_row_counts_turns_and_follows_the_last_channel() {
        let (_dir, store) = open();
        let key = SessionKey::User(7);
        // Turns on http, http again, telegram, then a turn with no channel (a workflow's).
        let channels = [
            Some(ChannelKind::Http),
            Some(ChannelKind::Http),
            Some(ChannelKind::Telegram),
            None,
        ];
        for (i, channel) in channels.into_iter().enumerate() {
            let id = new_inbox_row(&store, &format!("m{i}"), "a").await;
            store
                .commit_turn(TurnRecord {
                    inbox_id: id,
                    session: key.clone(),
                    entries: vec![TranscriptEntry {
                        role: Role::User,
                        text: format!("t{i}"),
                        at_ms: i64::try_from(i).expect("small"),
                        channel,
                    }],
                    replies: Vec::new(),
                })
                .await
                .expect("turn");
            let row = store.session(&key).await.expect("read").expect("stored");
            assert_eq!(row.turns, u64::try_from(i + 1).expect("small"));
            let expected = if i < 2 {
                ChannelKind::Http
            } else {
                ChannelKind::Telegram
            };
            assert_eq!(row.last_channel, Some(expected), "after turn {i}");
        }
        // The channel index agrees with the row: listed under telegram, no longer under http.
        let by = |channel| SessionFilter {
            user: None,
            channel: Some(channel),
        };
        let telegram = store
            .list_sessions(&by(ChannelKind::Telegram), None, 10)
            .await
            .expect("list");
        assert_eq!(telegram.len(), 1);
        assert_eq!(telegram[0].key, key);
        let http = store
            .list_sessions(&by(ChannelKind::Http), None, 10)
            .await
            .expect("list");
        assert!(http.is_empty(), "{http:?}");
    }

    #[tokio::test]
    async fn concurrent_writes_share_commits_and_all_land() {
        let (_dir, store) = open();
        let store = std::sync::Arc::new(store);
        let mut tasks = Vec::new();
        for i in 0..500 {
            let store = store.clone();
            tasks.push(tokio::spawn(async move {
                store.inbox_commit(&msg(&format!("m{i}"), "a")).await
            }));
        }
        for t in tasks {
            assert!(matches!(t.await.expect("join"), Ok(InboxOutcome::New(_))));
        }
        assert_eq!(store.inbox_pending().await.expect("pending").len(), 500);
    }

    #[tokio::test]
    async fn linking_merges_transcripts_in_time_order() {
        let (_dir, store) = open();
        let a = store
            .resolve_address(&Address {
                channel: ChannelKind::Webchat,
                sender_id: "w".into(),
            })
            .await
            .expect("a");
        let b = store
            .resolve_address(&Address {
                channel: ChannelKind::Http,
                sender_id: "h".into(),
            })
            .await
            .expect("b");
        assert_ne!(a, b, "unknown addresses are isolated users");
        for (i, (user, at)) in [(a, 10), (b, 20), (a, 30)].into_iter().enumerate() {
            let id = new_inbox_row(&store, &format!("m{i}"), "x").await;
            store
                .commit_turn(TurnRecord {
                    inbox_id: id,
                    session: SessionKey::User(user),
                    entries: vec![TranscriptEntry {
                        role: Role::User,
                        text: format!("t{at}"),
                        at_ms: at,
                        channel: None,
                    }],
                    replies: vec![],
                })
                .await
                .expect("turn");
        }
        store.link_users(a, b).await.expect("link");
        let h = store.history(&SessionKey::User(a), 10).await.expect("h");
        let texts: Vec<_> = h.iter().map(|e| e.text.as_str()).collect();
        assert_eq!(texts, ["t10", "t20", "t30"]);
        assert_eq!(store.user(a).await.expect("user").addresses.len(), 2);
        assert!(matches!(store.user(b).await, Err(StoreError::NotFound(_))));
        let c = store
            .unlink_address(&Address {
                channel: ChannelKind::Http,
                sender_id: "h".into(),
            })
            .await
            .expect("unlink");
        assert_ne!(c, a);
        assert_eq!(
            store
                .history(&SessionKey::User(a), 10)
                .await
                .expect("h")
                .len(),
            3
        );
    }

    #[tokio::test]
    async fn workflow_runs_are_durable_with_their_nodes() {
        let (_dir, store) = open();
        let origin = RunOrigin {
            channel: ChannelKind::Http,
            chat_id: "c".into(),
            user: Some(3),
            trigger: "chat".into(),
        };
        let run = store
            .run_create(
                "triage",
                &serde_json::json!({"ticket": "help"}),
                Some(&origin),
            )
            .await
            .expect("create");
        let node = NodeRecord {
            node: "classify".into(),
            status: NodeStatus::Succeeded,
            output: Some(serde_json::json!("urgent")),
            error: None,
            attempts: 1,
            started_at_ms: Some(1),
            finished_at_ms: Some(2),
        };
        store.run_node(run, &node).await.expect("node");
        let unfinished = store.runs_unfinished().await.expect("unfinished");
        assert_eq!(unfinished.len(), 1);
        assert_eq!(unfinished[0].nodes, vec![node]);
        assert_eq!(unfinished[0].origin, Some(origin));
        store
            .run_finish(run, RunStatus::Succeeded, None)
            .await
            .expect("finish");
        assert!(
            store
                .runs_unfinished()
                .await
                .expect("unfinished")
                .is_empty()
        );
        let got = store.run_get(run).await.expect("get");
        assert_eq!(got.status, RunStatus::Succeeded);
        assert_eq!(
            store
                .run_list(Some("triage"), None, 10)
                .await
                .expect("list")
                .len(),
            1
        );
        assert!(matches!(
            store.run_get(99).await,
            Err(StoreError::NotFound(_))
        ));
    }

    #[tokio::test]
    async fn link_codes_are_single_use_and_expire() {
        let (_dir, store) = open();
        store.put_link_code("ABC123", 7, 1_000).await.expect("put");
        assert_eq!(
            store.take_link_code("ABC123", 2_000).await.expect("t"),
            None,
            "expired"
        );
        store.put_link_code("DEF456", 7, 5_000).await.expect("put");
        assert_eq!(
            store.take_link_code("DEF456", 2_000).await.expect("t"),
            Some(7)
        );
        assert_eq!(
            store.take_link_code("DEF456", 2_000).await.expect("t"),
            None,
            "used"
        );
    }
}
