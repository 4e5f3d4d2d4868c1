//! The shared store: one PostgreSQL database, written through a pool of connections, that
//! several gateway instances may use at once.
//!
//! Every operation takes a pooled connection and runs as one transaction (or one statement),
//! answering its caller only after `COMMIT` has returned. Every connection is opened with
//! `synchronous_commit = on`, so a commit is flushed to the WAL before it is acknowledged;
//! concurrent commits on different connections share WAL flushes (PostgreSQL's own group
//! commit), which is what batching through one writer gives the embedded store. A unique key
//! that two instances might write at once is written with `INSERT ... ON CONFLICT`, and the
//! multi-statement operations that read before they write (identity merges, pairing) hold a
//! transaction-level advisory lock of their area, so they run one at a time as SQLite runs them.
//!
//! Migrations are embedded and applied at open inside one transaction holding an advisory lock
//! ([`migrations`]), so instances starting together apply them once. The pool (deadpool)
//! checks a connection before handing it out again (`RecyclingMethod::Verified`), so a
//! connection broken by a database restart is replaced and the store works again as soon as the
//! database is back.
//!
//! A write that fails because the disk is full (SQLSTATE 53100) is reported as
//! [`StoreError::Full`]; one that fails because the database cannot be reached is a
//! [`StoreError::Database`] saying so. Either marks the store, and a background task then
//! probes every second with a small write; when one commits it ticks [`Store::recoveries`], so
//! stranded messages are handled again. The same task prunes what the [`Retention`] no longer
//! keeps ([`retention`]) and counts rows for [`Store::storage`].
//!
//! This file holds the handle, its pool and the [`Store`] implementation, which hands each
//! operation to the submodule of its area: [`cluster`] (membership and leases), [`rates`] (the shared rate-limit buckets), [`inbox`], [`transcript`] (turns and sessions),
//! [`outbox`] (with dead letters), [`receipts`], [`cursors`], [`identity`], [`access`],
//! [`usage`], [`runs`] and [`inspect`].

mod access;
mod cluster;
mod cluster_work;
mod copy;
mod cursors;
mod identity;
mod inbox;
mod inspect;
mod migrations;
mod outbox;
mod rates;
mod receipts;
mod retention;
mod runs;
mod transcript;
mod usage;
mod webchat_sockets;

use std::collections::BTreeSet;
use std::future::Future;
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use deadpool_postgres::{
    Manager, ManagerConfig, Pool, PoolError, RecyclingMethod, Runtime, TimeoutType,
};
use tokio_postgres::NoTls;
use tokio_postgres::error::SqlState;

pub use copy::{TableCopy, migrate_from_sqlite};
pub use migrations::SCHEMA_VERSION;
pub use retention::PruneReport;

use super::{
    AttemptError, DeadLetter, DeadSelector, InboxOutcome, NewReply, NodeRecord, PendingInbound,
    Retention, RunOrigin, RunRecord, RunStatus, SessionFilter, StorageStats, Store, StoreError,
    StoredSession, TranscriptEntry, TurnRecord, UserRecord,
};
use super::{BudgetOverride, UsageRecord, UsageTotal};
use crate::message::{Address, ChannelKind, InboundMessage, OutboundMessage, SessionKey, UserId};
use crate::send::ErrorClass;

/// The default number of pooled connections (`store.max_connections`).
pub const DEFAULT_MAX_CONNECTIONS: usize = 16;
/// How long opening (or checking) a connection may take before the database counts as
/// unreachable.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a transaction may sit idle between two statements before the server ends it (every
/// transaction of the store sends its statements back to back).
const IDLE_IN_TRANSACTION: Duration = Duration::from_secs(1);
/// How long an operation waits for a pooled connection to come free.
const WAIT_TIMEOUT: Duration = Duration::from_secs(30);

/// The prefix of every error that says the database could not be reached.
const UNREACHABLE: &str = "the database is unreachable";
/// The prefix of an error of a transaction PostgreSQL aborted for a deadlock or a
/// serialization conflict with another one: running it again may succeed.
pub(super) const CONFLICTED: &str = "the transaction conflicted with a concurrent one";

/// The PostgreSQL store. Cheap to share behind an `Arc`.
pub struct PostgresStore {
    pool: Pool,
    /// How to open a connection outside the pool (the cluster's `LISTEN`).
    pg_config: tokio_postgres::Config,
    shared: Arc<Shared>,
    /// Set by [`Store::close`]: every later operation fails with [`StoreError::Closed`].
    closed: AtomicBool,
    background: Mutex<
        Option<(
            tokio::sync::watch::Sender<bool>,
            tokio::task::JoinHandle<()>,
        )>,
    >,
}

/// Rows per table, the database's size in bytes, and when they were counted (ms).
type Counted = (Vec<(String, u64)>, u64, i64);

/// State shared by the store's handle and its background task.
struct Shared {
    /// Writes are failing for lack of space.
    full: AtomicBool,
    /// The database could not be reached.
    down: AtomicBool,
    /// The background task prunes (in a cluster, only on the scheduler's holder).
    pruning: AtomicBool,
    /// Ticks on each recovery.
    recoveries: tokio::sync::watch::Sender<u64>,
    /// Inbox rows whose handling failed on a write.
    stranded: Mutex<BTreeSet<i64>>,
    /// Turn commits that failed on a write.
    failed_turns: AtomicU64,
    /// The last row counts and the database size, with when they were taken.
    stats: Mutex<Counted>,
}

impl Shared {
    /// Marks the store full or unreachable after `error`.
    fn note(&self, error: &StoreError) {
        match error {
            StoreError::Full(_) if !self.full.swap(true, Ordering::AcqRel) => {
                tracing::error!(message = "The database's disk is full; writes fail and inbound messages are refused until space returns.", %error);
            }
            StoreError::Database(m)
                if m.starts_with(UNREACHABLE) && !self.down.swap(true, Ordering::AcqRel) =>
            {
                tracing::error!(message = "The database is unreachable; writes fail until it is back.", %error);
            }
            _ => {}
        }
    }
}

/// A PostgreSQL error as a [`StoreError`]: a full disk is `Full`, a lost or refused connection
/// says the database is unreachable.
pub(crate) fn db(e: tokio_postgres::Error) -> StoreError {
    if e.code() == Some(&SqlState::DISK_FULL) {
        return StoreError::Full(
            e.as_db_error()
                .map_or_else(|| e.to_string(), |d| d.to_string()),
        );
    }
    if e.code() == Some(&SqlState::T_R_DEADLOCK_DETECTED)
        || e.code() == Some(&SqlState::T_R_SERIALIZATION_FAILURE)
    {
        let detail = e
            .as_db_error()
            .map_or_else(|| e.to_string(), |d| d.to_string());
        return StoreError::Database(format!("{CONFLICTED}: {detail}"));
    }
    if let Some(d) = e.as_db_error() {
        // Class 08 (connection exception) and 57P01..03 (the server is shutting down).
        let code = d.code().code();
        if code.starts_with("08") || code.starts_with("57P") {
            return StoreError::Database(format!("{UNREACHABLE}: {d}"));
        }
        return StoreError::Database(d.to_string());
    }
    let io = std::error::Error::source(&e).is_some_and(|s| s.is::<std::io::Error>());
    if e.is_closed() || io || e.to_string().starts_with("error connecting") {
        StoreError::Database(format!("{UNREACHABLE}: {e}"))
    } else {
        StoreError::Database(e.to_string())
    }
}

fn pool_error(e: PoolError) -> StoreError {
    match e {
        PoolError::Closed => StoreError::Closed,
        PoolError::Backend(e) => match db(e) {
            StoreError::Database(m) if !m.starts_with(UNREACHABLE) => {
                StoreError::Database(format!("{UNREACHABLE}: {m}"))
            }
            other => other,
        },
        // Every pooled connection stayed busy: the database answers, the pool is too small.
        PoolError::Timeout(TimeoutType::Wait) => StoreError::Database(format!(
            "every pooled connection stayed busy for {}s; raise store.max_connections",
            WAIT_TIMEOUT.as_secs()
        )),
        PoolError::Timeout(_) => StoreError::Database(format!(
            "{UNREACHABLE}: no connection within {}s",
            CONNECT_TIMEOUT.as_secs()
        )),
        other => StoreError::Database(format!("{UNREACHABLE}: {other}")),
    }
}

/// Where `config` points, without its password: `host:port/dbname`, for logs and errors.
pub fn describe(config: &tokio_postgres::Config) -> String {
    use tokio_postgres::config::Host;
    let host = match config.get_hosts().first() {
        Some(Host::Tcp(h)) => h.clone(),
        #[cfg(unix)]
        Some(Host::Unix(p)) => p.display().to_string(),
        None => "localhost".to_owned(),
    };
    let port = config.get_ports().first().copied().unwrap_or(5432);
    let dbname = config
        .get_dbname()
        .or(config.get_user())
        .unwrap_or("postgres");
    format!("{host}:{port}/{dbname}")
}

/// Parses a libpq URL (or key=value string) without ever echoing it: it may hold a password.
/// The store connects without TLS, so a URL that demands it (`sslmode=require`) is refused here
/// rather than failing at every connection.
pub fn parse_url(url: &str) -> Result<tokio_postgres::Config, StoreError> {
    let config = tokio_postgres::Config::from_str(url.trim()).map_err(|e| {
        StoreError::Database(format!(
            "the database URL is not a libpq URL ({e}); write e.g. postgres://user:password@host:5432/dbname"
        ))
    })?;
    if config.get_ssl_mode() == tokio_postgres::config::SslMode::Require {
        return Err(StoreError::Database(
            "the database URL asks for sslmode=require, but gatewayd connects without TLS; use a Unix socket or a private network and sslmode=disable (or prefer)".to_owned(),
        ));
    }
    Ok(config)
}

impl PostgresStore {
    /// Opens the database at `url` with the default [`Retention`] and pool size.
    pub async fn open(url: &str) -> Result<Self, StoreError> {
        Self::open_with(url, Retention::default(), DEFAULT_MAX_CONNECTIONS).await
    }

    /// Opens the database at `url` (a libpq URL) with a pool of at most `max_connections`,
    /// applies pending migrations, and starts the background task (pruner and probes).
    pub async fn open_with(
        url: &str,
        retention: Retention,
        max_connections: usize,
    ) -> Result<Self, StoreError> {
        Self::open_config(parse_url(url)?, retention, max_connections).await
    }

    /// [`PostgresStore::open_with`] for a parsed connection config.
    pub async fn open_config(
        mut config: tokio_postgres::Config,
        retention: Retention,
        max_connections: usize,
    ) -> Result<Self, StoreError> {
        // Set on every connection the pool opens: a commit is acknowledged once it is on disk;
        // and a transaction left idle (its instance paused, e.g. by SIGSTOP, between two
        // statements) is ended by the server, so its row locks (a fenced commit's lease row)
        // never hold up another instance's takeover for longer than that.
        config.options(format!(
            "-c synchronous_commit=on -c idle_in_transaction_session_timeout={}",
            IDLE_IN_TRANSACTION.as_millis()
        ));
        if config.get_application_name().is_none() {
            config.application_name("gatewayd");
        }
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(CONNECT_TIMEOUT);
        }
        let target = describe(&config);
        let pg_config = config.clone();
        let manager = Manager::from_config(
            config,
            NoTls,
            ManagerConfig {
                recycling_method: RecyclingMethod::Verified,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(max_connections.max(1))
            .runtime(Runtime::Tokio1)
            .wait_timeout(Some(WAIT_TIMEOUT))
            .create_timeout(Some(CONNECT_TIMEOUT))
            .recycle_timeout(Some(CONNECT_TIMEOUT))
            .build()
            .map_err(|e| StoreError::Database(format!("cannot build the connection pool: {e}")))?;
        {
            let mut client = pool.get().await.map_err(|e| match pool_error(e) {
                StoreError::Database(m) => {
                    StoreError::Database(format!("cannot connect to {target}: {m}"))
                }
                other => other,
            })?;
            migrations::migrate(&mut client).await?;
        }
        tracing::info!(message = "Opened the PostgreSQL store.", database = %target);
        let shared = Arc::new(Shared {
            full: AtomicBool::new(false),
            down: AtomicBool::new(false),
            pruning: AtomicBool::new(true),
            recoveries: tokio::sync::watch::channel(0).0,
            stranded: Mutex::new(BTreeSet::new()),
            failed_turns: AtomicU64::new(0),
            stats: Mutex::new((Vec::new(), 0, 0)),
        });
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let task = retention::Background {
            pool: pool.clone(),
            shared: shared.clone(),
            retention,
        };
        let handle = tokio::spawn(task.run(stop_rx));
        Ok(Self {
            pool,
            pg_config,
            shared,
            closed: AtomicBool::new(false),
            background: Mutex::new(Some((stop_tx, handle))),
        })
    }

    /// Test hook: the value of setting `name` on a pooled connection, as the store's own
    /// statements see it.
    #[doc(hidden)]
    pub async fn setting(&self, name: &str) -> Result<String, StoreError> {
        let client = self.client().await?;
        let row = client
            .query_one("SELECT current_setting($1)", &[&name])
            .await
            .map_err(db)?;
        col(&row, 0)
    }

    /// A pooled connection, or why there is none.
    pub(super) async fn client(&self) -> Result<deadpool_postgres::Object, StoreError> {
        if self.closed.load(Ordering::Acquire) {
            return Err(StoreError::Closed);
        }
        self.pool.get().await.map_err(pool_error)
    }

    /// Runs `op`, marking the store full or unreachable when it fails for that reason.
    async fn track<T>(
        &self,
        op: impl Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        let result = op.await;
        if let Err(e) = &result {
            self.shared.note(e);
        }
        result
    }
}

#[async_trait]
impl Store for PostgresStore {
    fn cluster_store(self: Arc<Self>) -> Option<Arc<dyn crate::store::cluster::ClusterStore>> {
        Some(self)
    }

    async fn cursor(&self, channel: ChannelKind, name: &str) -> Result<Option<i64>, StoreError> {
        self.track(cursors::get(self, channel, name)).await
    }

    async fn advance_cursor(
        &self,
        channel: ChannelKind,
        name: &str,
        value: i64,
    ) -> Result<i64, StoreError> {
        self.track(cursors::advance(self, channel, name, value))
            .await
    }

    async fn last_inbound_at(
        &self,
        channel: ChannelKind,
        chat_id: &str,
    ) -> Result<Option<i64>, StoreError> {
        self.track(receipts::last_inbound_at(self, channel, chat_id))
            .await
    }

    async fn outbox_platform_id(
        &self,
        id: i64,
        chunk: u32,
        channel: ChannelKind,
        platform_id: &str,
    ) -> Result<(), StoreError> {
        self.track(receipts::platform_id(self, id, chunk, channel, platform_id))
            .await
    }

    async fn record_receipt(
        &self,
        channel: ChannelKind,
        platform_id: &str,
        status: super::ReceiptStatus,
        error: Option<&str>,
    ) -> Result<Option<i64>, StoreError> {
        self.track(receipts::record(self, channel, platform_id, status, error))
            .await
    }

    async fn list_inbox(
        &self,
        f: &super::InboxFilter,
        after: Option<i64>,
        limit: usize,
    ) -> Result<Vec<super::InboxRecord>, StoreError> {
        self.track(inspect::inbox(self, f, after, limit)).await
    }

    async fn list_outbox(
        &self,
        f: &super::OutboxFilter,
        after: Option<i64>,
        limit: usize,
        with_errors: bool,
    ) -> Result<Vec<super::OutboxRecord>, StoreError> {
        self.track(inspect::outbox(self, f, after, limit, with_errors))
            .await
    }

    async fn history_traced(
        &self,
        session: &SessionKey,
        limit: usize,
    ) -> Result<Vec<super::TracedEntry>, StoreError> {
        self.track(inspect::history(self, session, limit)).await
    }

    async fn inbox_commit(&self, msg: &InboundMessage) -> Result<InboxOutcome, StoreError> {
        self.track(inbox::commit(self, msg)).await
    }

    async fn inbox_pending(&self) -> Result<Vec<PendingInbound>, StoreError> {
        self.track(inbox::pending(self, None)).await
    }

    async fn commit_turn(&self, turn: TurnRecord) -> Result<Vec<OutboundMessage>, StoreError> {
        self.track(transcript::commit_turn(self, turn, None)).await
    }

    async fn history(
        &self,
        session: &SessionKey,
        limit: usize,
    ) -> Result<Vec<TranscriptEntry>, StoreError> {
        self.track(transcript::history(self, session, limit)).await
    }

    async fn outbox_pending(&self) -> Result<Vec<OutboundMessage>, StoreError> {
        self.track(outbox::pending(self)).await
    }

    async fn outbox_delivered(&self, id: i64) -> Result<(), StoreError> {
        self.track(outbox::delivered(self, id)).await
    }

    async fn outbox_progress(&self, id: i64, chunks_sent: u32) -> Result<(), StoreError> {
        self.track(outbox::progress(self, id, chunks_sent)).await
    }

    async fn outbox_attempt_failed(
        &self,
        id: i64,
        attempts: u32,
        class: ErrorClass,
        error: &str,
    ) -> Result<(), StoreError> {
        self.track(outbox::record_failure(
            self, id, attempts, class, error, false,
        ))
        .await
    }

    async fn outbox_dead(
        &self,
        id: i64,
        attempts: u32,
        class: ErrorClass,
        error: &str,
    ) -> Result<(), StoreError> {
        self.track(outbox::record_failure(
            self, id, attempts, class, error, true,
        ))
        .await
    }

    async fn dead_letters(
        &self,
        channel: Option<ChannelKind>,
        after: Option<i64>,
        limit: usize,
    ) -> Result<Vec<DeadLetter>, StoreError> {
        self.track(outbox::dead_letters(self, channel, after, limit))
            .await
    }

    async fn dead_letter(&self, id: i64) -> Result<(DeadLetter, Vec<AttemptError>), StoreError> {
        self.track(outbox::dead_letter(self, id)).await
    }

    async fn retry_dead(
        &self,
        selector: &DeadSelector,
    ) -> Result<Vec<OutboundMessage>, StoreError> {
        self.track(outbox::retry_dead(self, selector)).await
    }

    async fn drop_dead(&self, selector: &DeadSelector) -> Result<u64, StoreError> {
        self.track(outbox::drop_dead(self, selector)).await
    }

    async fn resolve_address(&self, address: &Address) -> Result<UserId, StoreError> {
        self.track(identity::resolve_address(self, address)).await
    }

    async fn user(&self, id: UserId) -> Result<UserRecord, StoreError> {
        self.track(identity::user(self, id)).await
    }

    async fn link_users(&self, keep: UserId, merge: UserId) -> Result<(), StoreError> {
        self.track(identity::link_users(self, keep, merge)).await
    }

    async fn unlink_address(&self, address: &Address) -> Result<UserId, StoreError> {
        self.track(identity::unlink_address(self, address)).await
    }

    async fn put_link_code(
        &self,
        code: &str,
        user: UserId,
        expires_at_ms: i64,
    ) -> Result<(), StoreError> {
        self.track(identity::put_link_code(self, code, user, expires_at_ms))
            .await
    }

    async fn take_link_code(&self, code: &str, now_ms: i64) -> Result<Option<UserId>, StoreError> {
        self.track(identity::take_link_code(self, code, now_ms))
            .await
    }

    async fn counts(&self) -> Result<(u64, u64, u64), StoreError> {
        self.track(inbox::counts(self)).await
    }

    async fn list_sessions(
        &self,
        filter: &SessionFilter,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<StoredSession>, StoreError> {
        self.track(transcript::list_sessions(self, filter, after, limit))
            .await
    }

    async fn session(&self, key: &SessionKey) -> Result<Option<StoredSession>, StoreError> {
        self.track(transcript::session(self, key)).await
    }

    async fn count_sessions(&self) -> Result<u64, StoreError> {
        self.track(transcript::count_sessions(self)).await
    }

    async fn list_users(
        &self,
        channel: Option<ChannelKind>,
        after: Option<UserId>,
        limit: usize,
    ) -> Result<Vec<UserRecord>, StoreError> {
        self.track(identity::list_users(self, channel, after, limit))
            .await
    }

    async fn attach_address(&self, user: UserId, address: &Address) -> Result<(), StoreError> {
        self.track(identity::attach_address(self, user, address))
            .await
    }

    async fn last_direct_chat(
        &self,
        user: UserId,
    ) -> Result<Option<(ChannelKind, String)>, StoreError> {
        self.track(identity::last_direct_chat(self, user)).await
    }

    async fn is_direct_chat_of(
        &self,
        user: UserId,
        channel: ChannelKind,
        chat_id: &str,
    ) -> Result<bool, StoreError> {
        self.track(identity::is_direct_chat_of(self, user, channel, chat_id))
            .await
    }

    async fn outbox_put(&self, reply: NewReply) -> Result<OutboundMessage, StoreError> {
        self.track(outbox::put(self, reply)).await
    }

    async fn run_create(
        &self,
        workflow: &str,
        inputs: &serde_json::Value,
        origin: Option<&RunOrigin>,
    ) -> Result<i64, StoreError> {
        self.track(runs::create(self, workflow, inputs, origin))
            .await
    }

    async fn run_node(&self, run: i64, node: &NodeRecord) -> Result<(), StoreError> {
        self.track(runs::node(self, run, node)).await
    }

    async fn run_finish(
        &self,
        run: i64,
        status: RunStatus,
        error: Option<&str>,
    ) -> Result<(), StoreError> {
        self.track(runs::finish(self, run, status, error)).await
    }

    async fn run_get(&self, run: i64) -> Result<RunRecord, StoreError> {
        self.track(runs::get(self, run)).await
    }

    async fn run_list(
        &self,
        workflow: Option<&str>,
        before: Option<i64>,
        limit: usize,
    ) -> Result<Vec<RunRecord>, StoreError> {
        self.track(runs::list(self, workflow, before, limit)).await
    }

    async fn runs_unfinished(&self) -> Result<Vec<RunRecord>, StoreError> {
        self.track(runs::unfinished(self)).await
    }

    async fn storage(&self) -> Result<StorageStats, StoreError> {
        let (table_rows, database_bytes, counted_at_ms) = self
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
        "postgres"
    }

    async fn ping(&self) -> Result<(), StoreError> {
        self.track(async {
            let client = self.client().await?;
            client.query_one("SELECT 1", &[]).await.map_err(db)?;
            Ok(())
        })
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
        let ids: Vec<i64> = ids.into_iter().collect();
        self.track(inbox::pending(self, Some(&ids))).await
    }

    async fn commit_turn_with_usage(
        &self,
        turn: TurnRecord,
        usage: Option<UsageRecord>,
    ) -> Result<Vec<OutboundMessage>, StoreError> {
        self.track(transcript::commit_turn(self, turn, usage)).await
    }

    async fn usage_totals(
        &self,
        user: Option<UserId>,
        since_ms: i64,
    ) -> Result<Vec<UsageTotal>, StoreError> {
        self.track(usage::totals(self, user, since_ms)).await
    }

    async fn turn_times(&self, user: UserId, since_ms: i64) -> Result<Vec<i64>, StoreError> {
        self.track(usage::turn_times(self, user, since_ms)).await
    }

    async fn budget_override(&self, user: UserId) -> Result<BudgetOverride, StoreError> {
        self.track(usage::get_override(self, user)).await
    }

    async fn set_budget_override(
        &self,
        user: UserId,
        limits: BudgetOverride,
    ) -> Result<(), StoreError> {
        self.track(usage::set_override(self, user, limits)).await
    }

    async fn close(&self) {
        self.closed.store(true, Ordering::Release);
        let background = self.background.lock().ok().and_then(|mut b| b.take());
        if let Some((stop, handle)) = background {
            let _ = stop.send(true);
            let _ = handle.await;
        }
        self.pool.close();
    }

    async fn inbox_drop(&self, inbox_id: i64, blocked: bool) -> Result<(), StoreError> {
        self.track(access::inbox_drop(self, inbox_id, blocked))
            .await
    }

    async fn access_flags(&self, user: UserId) -> Result<crate::store::UserFlags, StoreError> {
        self.track(access::access_flags(self, user)).await
    }

    async fn set_blocked(&self, user: UserId, blocked: bool) -> Result<(), StoreError> {
        self.track(access::set_blocked(self, user, blocked)).await
    }

    async fn pairing_keep(
        &self,
        msg: crate::store::PairingMessage,
    ) -> Result<crate::store::Kept, StoreError> {
        self.track(access::pairing_keep(self, msg)).await
    }

    async fn pairing_list(
        &self,
        now_ms: i64,
    ) -> Result<Vec<crate::store::PairingRequest>, StoreError> {
        self.track(access::pairing_list(self, now_ms)).await
    }

    async fn pairing_get(
        &self,
        code: &str,
        now_ms: i64,
    ) -> Result<Option<crate::store::PairingRequest>, StoreError> {
        self.track(access::pairing_get(self, code, now_ms)).await
    }

    async fn pairing_approve(
        &self,
        code: &str,
        user: UserId,
        now_ms: i64,
    ) -> Result<crate::store::PairingRequest, StoreError> {
        self.track(access::pairing_approve(self, code, user, now_ms))
            .await
    }

    async fn pairing_deny(
        &self,
        code: &str,
        now_ms: i64,
    ) -> Result<crate::store::PairingRequest, StoreError> {
        self.track(access::pairing_deny(self, code, now_ms)).await
    }

    async fn pairing_expire(&self, now_ms: i64) -> Result<(), StoreError> {
        self.track(access::pairing_expire(self, now_ms)).await
    }

    async fn inbox_rows(&self, ids: &[i64]) -> Result<Vec<PendingInbound>, StoreError> {
        self.track(access::inbox_rows(self, ids)).await
    }
}

/// A count or size as PostgreSQL's `BIGINT` takes it, saturating.
pub(super) fn to_i64<N: TryInto<i64>>(n: N) -> i64 {
    n.try_into().unwrap_or(i64::MAX)
}

/// Column `i` of `row`, or an error naming it (a type that does not match is a corrupt row, not
/// a panic).
pub(super) fn col<'a, T: tokio_postgres::types::FromSql<'a>>(
    row: &'a tokio_postgres::Row,
    i: usize,
) -> Result<T, StoreError> {
    row.try_get(i)
        .map_err(|e| StoreError::Database(format!("corrupt row: {e}")))
}
