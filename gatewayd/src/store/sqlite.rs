//! The embedded store: one SQLite file in WAL mode, written by one thread with group commit.
//!
//! All writes go to a single writer thread over a channel ([`writer`]). The writer takes every
//! operation that is waiting, runs each inside its own savepoint so one failure does not spoil
//! the others, commits them all with one `COMMIT`, and only then answers each caller. So a
//! caller that is told "committed" can rely on it, and many small writes share one sync to disk
//! (`synchronous = FULL`, so a commit survives a power cut, not only a crash).
//! Reads use a small pool of separate connections, which WAL lets run beside the writer.
//! Migrations are embedded and applied in order at open, tracked by `PRAGMA user_version`
//! ([`migrations`]).
//!
//! A second thread, the pruner ([`retention`]), deletes what the [`Retention`] no longer keeps,
//! in batches through the writer, returns freed pages to the file system with
//! `PRAGMA incremental_vacuum` (the database uses `auto_vacuum = INCREMENTAL`; a file made
//! without it is converted once, with a `VACUUM`, at open) and counts the rows of every table
//! for [`Store::storage`].
//!
//! A write that fails with `SQLITE_FULL` is rolled back like any failed write and reported as
//! [`StoreError::Full`]; the writer keeps running. While the disk is full the pruner probes
//! every second with a small write of its own, and when that succeeds it ticks
//! [`Store::recoveries`] so stranded messages are handled again.
//!
//! This file holds the handle, its connections and the [`Store`] implementation, which hands
//! each operation to the submodule of its area: [`inbox`], [`transcript`] (turns and sessions),
//! [`outbox`] (with dead letters), [`receipts`], [`cursors`] (adapters' watermarks),
//! [`identity`] and [`runs`] (workflow runs).

mod access;
mod cursors;
mod identity;
mod inbox;
mod migrations;
mod outbox;
mod receipts;
mod retention;
mod runs;
#[cfg(test)]
mod test_support;
mod transcript;
mod usage;
mod writer;

mod inspect;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use rusqlite::Connection;
use tokio::sync::oneshot;

pub use retention::PruneReport;

use super::{
    AttemptError, DeadLetter, DeadSelector, InboxOutcome, NewReply, NodeRecord, PendingInbound,
    Retention, RunOrigin, RunRecord, RunStatus, SessionFilter, StorageStats, Store, StoreError,
    StoredSession, TranscriptEntry, TurnRecord, UserRecord,
};
use super::{BudgetOverride, UsageRecord, UsageTotal};
use crate::message::{Address, ChannelKind, InboundMessage, OutboundMessage, SessionKey, UserId};
use crate::send::ErrorClass;
use migrations::{incremental_vacuum_mode, migrate};
use retention::Pruner;
use writer::{Job, job, writer_loop};

/// Read connections open at most: reads beyond this many wait for one, so a burst of
/// concurrent reads never exhausts file descriptors (each connection holds three).
const READ_POOL: usize = 8;
/// The writer's settings beyond [`open_connection`]'s. The WAL is copied back into the database
/// every 10 000 pages (~40 MiB) rather than SQLite's default 1 000: a page rewritten by many
/// commits is copied once per checkpoint, so the larger interval copies far less. The writer's
/// page cache is 8 MiB (default 2 MiB), so the indexes' hot pages are not re-read from the file.
const WRITER_PRAGMAS: &str = "PRAGMA wal_autocheckpoint = 10000; PRAGMA cache_size = -8192;";

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

#[async_trait]
impl Store for SqliteStore {
    async fn cursor(&self, channel: ChannelKind, name: &str) -> Result<Option<i64>, StoreError> {
        cursors::get(self, channel, name).await
    }

    async fn advance_cursor(
        &self,
        channel: ChannelKind,
        name: &str,
        value: i64,
    ) -> Result<i64, StoreError> {
        cursors::advance(self, channel, name, value).await
    }

    async fn last_inbound_at(
        &self,
        channel: ChannelKind,
        chat_id: &str,
    ) -> Result<Option<i64>, StoreError> {
        receipts::last_inbound_at(self, channel, chat_id).await
    }

    async fn outbox_platform_id(
        &self,
        id: i64,
        chunk: u32,
        channel: ChannelKind,
        platform_id: &str,
    ) -> Result<(), StoreError> {
        receipts::platform_id(self, id, chunk, channel, platform_id).await
    }

    async fn record_receipt(
        &self,
        channel: ChannelKind,
        platform_id: &str,
        status: super::ReceiptStatus,
        error: Option<&str>,
    ) -> Result<Option<i64>, StoreError> {
        receipts::record(self, channel, platform_id, status, error).await
    }

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
        inbox::commit(self, msg).await
    }

    async fn inbox_pending(&self) -> Result<Vec<PendingInbound>, StoreError> {
        inbox::pending(self).await
    }

    async fn commit_turn(&self, turn: TurnRecord) -> Result<Vec<OutboundMessage>, StoreError> {
        transcript::commit_turn(self, turn, None).await
    }

    async fn history(
        &self,
        session: &SessionKey,
        limit: usize,
    ) -> Result<Vec<TranscriptEntry>, StoreError> {
        transcript::history(self, session, limit).await
    }

    async fn outbox_pending(&self) -> Result<Vec<OutboundMessage>, StoreError> {
        outbox::pending(self).await
    }

    async fn outbox_delivered(&self, id: i64) -> Result<(), StoreError> {
        outbox::delivered(self, id).await
    }

    async fn outbox_progress(&self, id: i64, chunks_sent: u32) -> Result<(), StoreError> {
        outbox::progress(self, id, chunks_sent).await
    }

    async fn outbox_attempt_failed(
        &self,
        id: i64,
        attempts: u32,
        class: ErrorClass,
        error: &str,
    ) -> Result<(), StoreError> {
        outbox::record_failure(self, id, attempts, class, error, false).await
    }

    async fn outbox_dead(
        &self,
        id: i64,
        attempts: u32,
        class: ErrorClass,
        error: &str,
    ) -> Result<(), StoreError> {
        outbox::record_failure(self, id, attempts, class, error, true).await
    }

    async fn dead_letters(
        &self,
        channel: Option<ChannelKind>,
        after: Option<i64>,
        limit: usize,
    ) -> Result<Vec<DeadLetter>, StoreError> {
        outbox::dead_letters(self, channel, after, limit).await
    }

    async fn dead_letter(&self, id: i64) -> Result<(DeadLetter, Vec<AttemptError>), StoreError> {
        outbox::dead_letter(self, id).await
    }

    async fn retry_dead(
        &self,
        selector: &DeadSelector,
    ) -> Result<Vec<OutboundMessage>, StoreError> {
        outbox::retry_dead(self, selector).await
    }

    async fn drop_dead(&self, selector: &DeadSelector) -> Result<u64, StoreError> {
        outbox::drop_dead(self, selector).await
    }

    async fn resolve_address(&self, address: &Address) -> Result<UserId, StoreError> {
        identity::resolve_address(self, address).await
    }

    async fn user(&self, id: UserId) -> Result<UserRecord, StoreError> {
        identity::user(self, id).await
    }

    async fn link_users(&self, keep: UserId, merge: UserId) -> Result<(), StoreError> {
        identity::link_users(self, keep, merge).await
    }

    async fn unlink_address(&self, address: &Address) -> Result<UserId, StoreError> {
        identity::unlink_address(self, address).await
    }

    async fn put_link_code(
        &self,
        code: &str,
        user: UserId,
        expires_at_ms: i64,
    ) -> Result<(), StoreError> {
        identity::put_link_code(self, code, user, expires_at_ms).await
    }

    async fn take_link_code(&self, code: &str, now_ms: i64) -> Result<Option<UserId>, StoreError> {
        identity::take_link_code(self, code, now_ms).await
    }

    async fn counts(&self) -> Result<(u64, u64, u64), StoreError> {
        inbox::counts(self).await
    }

    async fn list_sessions(
        &self,
        filter: &SessionFilter,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<StoredSession>, StoreError> {
        transcript::list_sessions(self, filter, after, limit).await
    }

    async fn session(&self, key: &SessionKey) -> Result<Option<StoredSession>, StoreError> {
        transcript::session(self, key).await
    }

    async fn count_sessions(&self) -> Result<u64, StoreError> {
        transcript::count_sessions(self).await
    }

    async fn list_users(
        &self,
        channel: Option<ChannelKind>,
        after: Option<UserId>,
        limit: usize,
    ) -> Result<Vec<UserRecord>, StoreError> {
        identity::list_users(self, channel, after, limit).await
    }

    async fn attach_address(&self, user: UserId, address: &Address) -> Result<(), StoreError> {
        identity::attach_address(self, user, address).await
    }

    async fn last_direct_chat(
        &self,
        user: UserId,
    ) -> Result<Option<(ChannelKind, String)>, StoreError> {
        identity::last_direct_chat(self, user).await
    }

    async fn is_direct_chat_of(
        &self,
        user: UserId,
        channel: ChannelKind,
        chat_id: &str,
    ) -> Result<bool, StoreError> {
        identity::is_direct_chat_of(self, user, channel, chat_id).await
    }

    async fn outbox_put(&self, reply: NewReply) -> Result<OutboundMessage, StoreError> {
        outbox::put(self, reply).await
    }

    async fn run_create(
        &self,
        workflow: &str,
        inputs: &serde_json::Value,
        origin: Option<&RunOrigin>,
    ) -> Result<i64, StoreError> {
        runs::create(self, workflow, inputs, origin).await
    }

    async fn run_node(&self, run: i64, node: &NodeRecord) -> Result<(), StoreError> {
        runs::node(self, run, node).await
    }

    async fn run_finish(
        &self,
        run: i64,
        status: RunStatus,
        error: Option<&str>,
    ) -> Result<(), StoreError> {
        runs::finish(self, run, status, error).await
    }

    async fn run_get(&self, run: i64) -> Result<RunRecord, StoreError> {
        runs::get(self, run).await
    }

    async fn run_list(
        &self,
        workflow: Option<&str>,
        before: Option<i64>,
        limit: usize,
    ) -> Result<Vec<RunRecord>, StoreError> {
        runs::list(self, workflow, before, limit).await
    }

    async fn runs_unfinished(&self) -> Result<Vec<RunRecord>, StoreError> {
        runs::unfinished(self).await
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

    fn backend(&self) -> &'static str {
        "sqlite"
    }

    async fn ping(&self) -> Result<(), StoreError> {
        self.read(|conn| conn.query_row("SELECT 1", [], |_| Ok(())).map_err(db))
            .await
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

    async fn commit_turn_with_usage(
        &self,
        turn: TurnRecord,
        usage: Option<UsageRecord>,
    ) -> Result<Vec<OutboundMessage>, StoreError> {
        transcript::commit_turn(self, turn, usage).await
    }

    async fn usage_totals(
        &self,
        user: Option<UserId>,
        since_ms: i64,
    ) -> Result<Vec<UsageTotal>, StoreError> {
        usage::totals(self, user, since_ms).await
    }

    async fn turn_times(&self, user: UserId, since_ms: i64) -> Result<Vec<i64>, StoreError> {
        usage::turn_times(self, user, since_ms).await
    }

    async fn budget_override(&self, user: UserId) -> Result<BudgetOverride, StoreError> {
        usage::get_override(self, user).await
    }

    async fn set_budget_override(
        &self,
        user: UserId,
        limits: BudgetOverride,
    ) -> Result<(), StoreError> {
        usage::set_override(self, user, limits).await
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

    async fn inbox_drop(&self, inbox_id: i64, blocked: bool) -> Result<(), StoreError> {
        access::inbox_drop(self, inbox_id, blocked).await
    }

    async fn access_flags(&self, user: UserId) -> Result<crate::store::UserFlags, StoreError> {
        access::access_flags(self, user).await
    }

    async fn set_blocked(&self, user: UserId, blocked: bool) -> Result<(), StoreError> {
        access::set_blocked(self, user, blocked).await
    }

    async fn pairing_keep(
        &self,
        msg: crate::store::PairingMessage,
    ) -> Result<crate::store::Kept, StoreError> {
        access::pairing_keep(self, msg).await
    }

    async fn pairing_list(
        &self,
        now_ms: i64,
    ) -> Result<Vec<crate::store::PairingRequest>, StoreError> {
        access::pairing_list(self, now_ms).await
    }

    async fn pairing_get(
        &self,
        code: &str,
        now_ms: i64,
    ) -> Result<Option<crate::store::PairingRequest>, StoreError> {
        access::pairing_get(self, code, now_ms).await
    }

    async fn pairing_approve(
        &self,
        code: &str,
        user: UserId,
        now_ms: i64,
    ) -> Result<crate::store::PairingRequest, StoreError> {
        access::pairing_approve(self, code, user, now_ms).await
    }

    async fn pairing_deny(
        &self,
        code: &str,
        now_ms: i64,
    ) -> Result<crate::store::PairingRequest, StoreError> {
        access::pairing_deny(self, code, now_ms).await
    }

    async fn pairing_expire(&self, now_ms: i64) -> Result<(), StoreError> {
        access::pairing_expire(self, now_ms).await
    }

    async fn inbox_rows(&self, ids: &[i64]) -> Result<Vec<PendingInbound>, StoreError> {
        access::inbox_rows(self, ids).await
    }
}
