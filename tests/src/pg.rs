//! The PostgreSQL side of the harness: which store backend the end-to-end tests run on, and a
//! fresh database per gateway on the test cluster.
//!
//! `GATEWAY_TEST_STORE=postgres` runs every [`crate::Gateway`] on PostgreSQL (unset or `sqlite`:
//! SQLite); `GATEWAY_TEST_PG_URL` is a libpq URL of a cluster the tests may create databases
//! on, such as `postgres://postgres@127.0.0.1:PORT/postgres` (`tests/run.sh` starts a
//! throwaway cluster and sets both for its second pass). Each [`TestDatabase`] is created empty
//! and dropped (with `FORCE`, so a killed daemon's connections do not keep it) when it is dropped.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::Context as _;

/// The environment variable naming the backend of the end-to-end tests.
pub const STORE_ENV: &str = "GATEWAY_TEST_STORE";
/// The environment variable holding the test cluster's URL.
pub const CLUSTER_ENV: &str = "GATEWAY_TEST_PG_URL";

/// Which store backend a test gateway runs on.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum StoreChoice {
    /// What `GATEWAY_TEST_STORE` says: `postgres`, or SQLite when it is unset or `sqlite`.
    #[default]
    FromEnv,
    /// SQLite in the gateway's data directory, whatever the environment says.
    Sqlite,
    /// A fresh database on the test cluster. With `via`, the daemon reaches the cluster at that
    /// address instead of the cluster's own (a [`crate::tcp_proxy::TcpProxy`] in front of it).
    Postgres {
        /// Where the daemon connects instead of the cluster's host and port.
        via: Option<SocketAddr>,
    },
}

/// The backend the environment selects, as `[store] backend` spells it.
///
/// # Panics
/// When `GATEWAY_TEST_STORE` is set to anything but `sqlite` or `postgres`.
pub fn env_backend() -> &'static str {
    match std::env::var(STORE_ENV) {
        Err(_) => "sqlite",
        Ok(v) => match v.trim() {
            "" | "sqlite" => "sqlite",
            "postgres" => "postgres",
            other => panic!("{STORE_ENV}={other:?}: expected `sqlite` or `postgres`"),
        },
    }
}

impl StoreChoice {
    /// This choice with `FromEnv` resolved.
    pub fn resolve(self) -> StoreChoice {
        match self {
            StoreChoice::FromEnv if env_backend() == "postgres" => {
                StoreChoice::Postgres { via: None }
            }
            StoreChoice::FromEnv => StoreChoice::Sqlite,
            other => other,
        }
    }

    /// The backend's name, as `[store] backend` spells it.
    pub fn backend(self) -> &'static str {
        match self.resolve() {
            StoreChoice::Postgres { .. } => "postgres",
            _ => "sqlite",
        }
    }
}

/// The test cluster's URL from `GATEWAY_TEST_PG_URL`.
pub fn cluster_url() -> anyhow::Result<String> {
    match std::env::var(CLUSTER_ENV) {
        Ok(url) if !url.trim().is_empty() => Ok(url.trim().to_owned()),
        _ => anyhow::bail!(
            "{CLUSTER_ENV} is not set: these tests need a PostgreSQL cluster they may create \
             databases on; run them through tests/run.sh, which starts one, or set \
             {CLUSTER_ENV}=postgres://USER@127.0.0.1:PORT/postgres"
        ),
    }
}

/// The host and port of the test cluster (`GATEWAY_TEST_PG_URL`; port 5432 when it names none),
/// for a [`crate::tcp_proxy::TcpProxy`] in front of it.
pub fn cluster_addr() -> anyhow::Result<SocketAddr> {
    use std::net::ToSocketAddrs as _;
    let url = cluster_url()?;
    let rest = url.split_once("://").map_or(url.as_str(), |(_, r)| r);
    let authority = rest.split(['/', '?']).next().unwrap_or_default();
    let host = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let host = if host.contains(':') {
        host.to_owned()
    } else {
        format!("{host}:5432")
    };
    host.to_socket_addrs()
        .with_context(|| format!("resolving {host} of {CLUSTER_ENV}"))?
        .next()
        .with_context(|| format!("{host} of {CLUSTER_ENV} has no address"))
}

/// `url` with its database (the path) replaced by `database`, and its host and port by `via`
/// when given. Only the URL form is understood (`postgres://[user@]host[:port][/db][?query]`).
pub fn with_database(url: &str, database: &str, via: Option<SocketAddr>) -> anyhow::Result<String> {
    let (scheme, rest) = url
        .split_once("://")
        .with_context(|| format!("{CLUSTER_ENV} is not a postgres:// URL"))?;
    let (rest, query) = match rest.split_once('?') {
        Some((r, q)) => (r, Some(q)),
        None => (rest, None),
    };
    let authority = rest.split_once('/').map_or(rest, |(a, _)| a);
    let (user, host) = match authority.rsplit_once('@') {
        Some((u, h)) => (Some(u), h),
        None => (None, authority),
    };
    let host = via.map_or_else(|| host.to_owned(), |a| a.to_string());
    let mut out = format!("{scheme}://");
    if let Some(u) = user {
        out.push_str(u);
        out.push('@');
    }
    out.push_str(&host);
    out.push('/');
    out.push_str(database);
    if let Some(q) = query {
        out.push('?');
        out.push_str(q);
    }
    Ok(out)
}

/// A database of its own on the test cluster, dropped with this value.
#[derive(Debug)]
pub struct TestDatabase {
    name: String,
    cluster: String,
}

impl TestDatabase {
    /// Creates a new, empty database on the cluster of `GATEWAY_TEST_PG_URL`.
    pub async fn create() -> anyhow::Result<TestDatabase> {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let cluster = cluster_url()?;
        let name = format!(
            "gw_test_{}_{}_{:08x}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed),
            rand::random::<u32>()
        );
        execute(&cluster, &format!("CREATE DATABASE {name}")).await?;
        Ok(TestDatabase { name, cluster })
    }

    /// The database's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Its URL, reached at `via` instead of the cluster's own address when given.
    pub fn url(&self, via: Option<SocketAddr>) -> anyhow::Result<String> {
        with_database(&self.cluster, &self.name, via)
    }

    /// Runs `sql` (one or more statements, no parameters) in this database.
    pub async fn execute(&self, sql: &str) -> anyhow::Result<()> {
        execute(&self.url(None)?, sql).await
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        // Drop may run on a runtime thread: the statement runs on a thread of its own, with a
        // runtime of its own, and is waited for, so the cluster does not fill up with databases.
        let cluster = self.cluster.clone();
        let sql = format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name);
        let dropped = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            rt.block_on(execute(&cluster, &sql))
        })
        .join();
        if let Ok(Err(e)) = dropped {
            eprintln!("cannot drop the test database {}: {e:#}", self.name);
        }
    }
}

/// Connects to `url`, runs `sql` as a simple query, and disconnects.
pub async fn execute(url: &str, sql: &str) -> anyhow::Result<()> {
    let (client, connection) = tokio::time::timeout(
        crate::TIMEOUT,
        tokio_postgres::connect(url, tokio_postgres::NoTls),
    )
    .await
    .context("connecting to the test cluster timed out")?
    .with_context(|| format!("connecting to the test cluster ({CLUSTER_ENV})"))?;
    let conn = tokio::spawn(connection);
    let done = tokio::time::timeout(crate::TIMEOUT, client.batch_execute(sql))
        .await
        .with_context(|| format!("`{sql}` timed out"))?
        .with_context(|| format!("`{sql}`"));
    drop(client);
    let _ = conn.await;
    done
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replaces_the_database_and_the_address() {
        let via: SocketAddr = "127.0.0.1:7".parse().expect("literal addr");
        assert_eq!(
            with_database("postgres://postgres@127.0.0.1:5/postgres", "d", None).expect("url"),
            "postgres://postgres@127.0.0.1:5/d"
        );
        assert_eq!(
            with_database("postgres://u:p@h:5/x?sslmode=disable", "d", Some(via)).expect("url"),
            "postgres://u:p@127.0.0.1:7/d?sslmode=disable"
        );
        assert_eq!(
            with_database("postgresql://h", "d", None).expect("url"),
            "postgresql://h/d"
        );
        assert!(with_database("host=h", "d", None).is_err());
    }
}
