//! A fresh PostgreSQL database per test, on the cluster named by `GATEWAY_TEST_PG_URL`.
//!
//! `GATEWAY_TEST_PG_URL` is a superuser libpq URL such as
//! `postgres://postgres@127.0.0.1:54329/postgres`; `tests/run.sh` starts a throwaway cluster and
//! exports it. Each [`FreshDatabase`] creates a database with a unique name and drops it again
//! when it is dropped.

#![allow(dead_code)]

use std::sync::atomic::{AtomicU64, Ordering};

/// The variable naming the test cluster.
pub const PG_URL_VAR: &str = "GATEWAY_TEST_PG_URL";

/// The test cluster's URL, or a panic saying how to get one.
pub fn cluster_url() -> String {
    match std::env::var(PG_URL_VAR) {
        Ok(url) if !url.trim().is_empty() => url.trim().to_owned(),
        _ => panic!(
            "{PG_URL_VAR} is not set: run tests/run.sh (it starts a throwaway PostgreSQL cluster), \
             or set {PG_URL_VAR} to a superuser URL such as postgres://postgres@127.0.0.1:54329/postgres"
        ),
    }
}

/// `url` with its database name replaced by `dbname`.
pub fn with_dbname(url: &str, dbname: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (url, None),
    };
    let authority_start = base.find("://").map_or(0, |i| i + 3);
    let base = match base[authority_start..].find('/') {
        Some(slash) => &base[..authority_start + slash],
        None => base,
    };
    match query {
        Some(q) => format!("{base}/{dbname}?{q}"),
        None => format!("{base}/{dbname}"),
    }
}

/// A superuser connection to the cluster's maintenance database.
pub async fn admin() -> tokio_postgres::Client {
    let (client, connection) = tokio_postgres::connect(&cluster_url(), tokio_postgres::NoTls)
        .await
        .unwrap_or_else(|e| panic!("cannot connect to {PG_URL_VAR}: {e}"));
    tokio::spawn(connection);
    client
}

/// A database made for one test, dropped when this is.
pub struct FreshDatabase {
    pub name: String,
    pub url: String,
}

static NEXT: AtomicU64 = AtomicU64::new(0);

impl FreshDatabase {
    pub async fn new() -> Self {
        let name = format!(
            "gw_test_{}_{}_{}",
            std::process::id(),
            gatewayd::message::now_ms(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        admin()
            .await
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .await
            .expect("create the test database");
        let url = with_dbname(&cluster_url(), &name);
        Self { name, url }
    }
}

impl Drop for FreshDatabase {
    fn drop(&mut self) {
        let name = self.name.clone();
        // A runtime of its own: this may run inside a test's runtime, which cannot block.
        let _ = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            rt.block_on(async {
                if let Ok((client, connection)) =
                    tokio_postgres::connect(&cluster_url(), tokio_postgres::NoTls).await
                {
                    tokio::spawn(connection);
                    let _ = client
                        .batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                        .await;
                }
            });
        })
        .join();
    }
}
