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
mod store_impl;
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
