//! Benchmark: identity resolution and session routing with many known users, through the real
//! `Router` (`gatewayd::session::router`), `Identity` cache and SQLite store. A data file is
//! filled with `USERS` users (default 1 000 000), each with one address spread over the four
//! channels, bulk-inserted after the store created the schema; then it measures:
//!
//! - `locate/warm`: `Router::locate` (identity → session key) of a random known user, every
//!   address already in the identity cache;
//! - `locate/cold`: `Router::locate` of a known user whose address is not cached, so the lookup
//!   goes to SQLite (a read connection in the blocking pool; an existing row among `USERS`, the
//!   file itself in the OS page cache);
//! - `route/resident`: the whole `Router::route` of a direct message to one of `RESIDENT`
//!   (default 10 000) resident sessions: cached identity, key, LRU lookup under the lock, the
//!   in-flight count, and the send into a mailbox that has room. Each batch runs on its own
//!   current-thread runtime and never yields while it is timed, so the session workers are never
//!   polled and no agent turn or store commit is measured; the runtime is dropped afterwards with
//!   the messages unhandled. What this leaves out: a worker parked in `recv` is woken by the
//!   first message of a batch (a run-queue push; on the multi-threaded runtime possibly the
//!   unparking of an idle thread), and contention with workers taking the same lock.
//!
//! Criterion prints a mean per case. Because the target is a p99, the bench then times
//! `SAMPLES` (default 1 000 000) single calls of each case with `Instant` into an HdrHistogram
//! and prints p50/p90/p99/p99.9/max, and the resident-set size before and after the identity
//! cache was filled with every user (the cache is sized to hold them all,
//! `gateway.identity_cache_size = USERS`). Run with `cargo bench -p gatewayd --bench routing`;
//! `USERS=n`, `RESIDENT=n` and `SAMPLES=n` shrink it.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::Criterion;
use gatewayd::agent::{Agent, Echo};
use gatewayd::delivery::{Delivery, RetryPolicy};
use gatewayd::events::EventBus;
use gatewayd::identity::Identity;
use gatewayd::message::{ChannelKind, ChatType, InboundMessage, SessionKey};
use gatewayd::session::Context;
use gatewayd::session::router::Router;
use gatewayd::store::sqlite::SqliteStore;
use gatewayd::store::{SharedStore, Store};
use hdrhistogram::Histogram;

/// A bijective 64-bit mix (splitmix64's finalizer): distinct inputs give distinct outputs.
fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

/// A small deterministic generator for picking users.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: usize) -> usize {
        self.0 = self.0.wrapping_add(1);
        (mix(self.0) % n as u64) as usize
    }

    fn shuffle<T>(&mut self, v: &mut [T]) {
        for i in (1..v.len()).rev() {
            v.swap(i, self.below(i + 1));
        }
    }
}

/// The address of user number `i` (0-based): a channel and a platform id that looks random.
fn address(i: usize) -> (ChannelKind, String) {
    const CHANNELS: [ChannelKind; 4] = [
        ChannelKind::new("webchat"),
        ChannelKind::new("http"),
        ChannelKind::new("telegram"),
        ChannelKind::new("discord"),
    ];
    let channel = CHANNELS[i % CHANNELS.len()];
    (channel, format!("{:016x}", mix(i as u64)))
}

/// A direct message from user number `i`.
fn message(i: usize, n: u64) -> InboundMessage {
    let (channel, sender_id) = address(i);
    InboundMessage {
        channel,
        channel_message_id: format!("m{n}"),
        chat_id: sender_id.clone(),
        chat_type: ChatType::Direct,
        sender_id,
        text: "hello".to_owned(),
        reply_to: None,
        attachments: Vec::new(),
        sender_name: None,
        received_at_ms: 1_700_000_000_000,
        mentioned: false,
    }
}

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.replace('_', "").parse().ok())
        .unwrap_or(default)
}

/// Creates the schema through the store, then inserts `users` users and their addresses in one
/// transaction; user number `i` gets id `i + 1`.
fn populate(path: &Path, users: usize) {
    let rt = current_thread();
    rt.block_on(async {
        let store = SqliteStore::open(path).expect("create the store and its schema");
        store.close().await;
    });
    let mut conn = rusqlite::Connection::open(path).expect("open the database for bulk insert");
    conn.execute_batch("PRAGMA journal_mode = WAL; PRAGMA synchronous = OFF;")
        .expect("pragmas");
    let tx = conn.transaction().expect("begin");
    {
        let mut user = tx
            .prepare("INSERT INTO users (id, created_at) VALUES (?1, ?2)")
            .expect("prepare users");
        let mut addr = tx
            .prepare(
                "INSERT INTO addresses (channel, sender_id, user_id, linked_at) VALUES (?1, ?2, ?3, ?4)",
            )
            .expect("prepare addresses");
        let at = 1_700_000_000_000_i64;
        for i in 0..users {
            let id = i as i64 + 1;
            let (channel, sender) = address(i);
            user.execute(rusqlite::params![id, at])
                .expect("insert user");
            addr.execute(rusqlite::params![channel.as_str(), sender, id, at])
                .expect("insert address");
        }
    }
    tx.commit().expect("commit");
    conn.execute_batch("PRAGMA wal_checkpoint(TRUNCATE);")
        .expect("checkpoint");
}

fn current_thread() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

/// What every router of this bench shares except the identity cache.
struct Parts {
    store: SharedStore,
    events: EventBus,
    agent: Arc<Agent>,
    delivery: Delivery,
    /// The identity cache's size: every user, so the warm cases find all of them cached.
    users: usize,
}

impl Parts {
    fn context(&self, identity: Arc<Identity>) -> Arc<Context> {
        Arc::new(Context {
            store: self.store.clone(),
            identity,
            agent: self.agent.clone(),
            delivery: self.delivery.clone(),
            events: self.events.clone(),
            history_window: 20,
            workflows: None,
            supervisor: gatewayd::supervise::Supervisor::new(),
            budgets: Arc::new(gatewayd::budget::Budgets::new(
                Default::default(),
                self.store.clone(),
            )),
            access: Arc::new(gatewayd::access::Access::new(
                &gatewayd::config::Config::default(),
                Vec::new(),
                self.store.clone(),
                self.delivery.clone(),
            )),
            cluster: None,
        })
    }

    fn fresh_identity(&self) -> Arc<Identity> {
        Arc::new(Identity::with_cache_size(
            self.store.clone(),
            self.events.clone(),
            self.users,
        ))
    }
}

/// Resident-set size of this process, bytes.
fn rss_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .map_or(0, |kb| kb * 1024)
}

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000_000, 3).expect("histogram bounds")
}

/// Records one duration in nanoseconds.
fn record(h: &mut Histogram<u64>, d: Duration) {
    h.saturating_record(u64::try_from(d.as_nanos()).unwrap_or(u64::MAX).max(1));
}

/// A fresh current-thread runtime with a router whose `resident` sessions were started (one
/// message each, whose worker never runs), with mailboxes of `mailbox`.
fn resident_router(
    parts: &Parts,
    identity: &Arc<Identity>,
    resident: &[usize],
    mailbox: usize,
) -> (tokio::runtime::Runtime, Arc<Router>) {
    let rt = current_thread();
    let router = Router::new(
        parts.context(identity.clone()),
        resident.len(),
        mailbox.max(1024),
    );
    rt.block_on(tokio::task::unconstrained(async {
        for (n, &u) in resident.iter().enumerate() {
            router
                .route(n as i64, message(u, n as u64))
                .await
                .expect("start a resident session");
        }
    }));
    assert_eq!(router.resident_count(), resident.len());
    (rt, router)
}

/// Routes `msgs` through a fresh router of `resident` sessions; returns the time of each call
/// (`each`) or of the whole batch.
fn route_batch(
    parts: &Parts,
    identity: &Arc<Identity>,
    resident: &[usize],
    msgs: Vec<InboundMessage>,
    mut each: Option<&mut Histogram<u64>>,
) -> Duration {
    let routed = msgs.len();
    let mailbox = 4 * routed / resident.len().max(1) + 16;
    let (rt, router) = resident_router(parts, identity, resident, mailbox);
    let total = rt.block_on(tokio::task::unconstrained(async {
        let started = Instant::now();
        for (n, msg) in msgs.into_iter().enumerate() {
            let t = Instant::now();
            router.route(n as i64, msg).await.expect("route");
            if let Some(h) = each.as_deref_mut() {
                record(h, t.elapsed());
            }
        }
        started.elapsed()
    }));
    // Every message stayed in a mailbox: nothing was handled while timing.
    let in_flight: usize = router.resident().iter().map(|s| s.in_flight).sum();
    assert_eq!(
        in_flight,
        resident.len() + routed,
        "a worker ran during the batch"
    );
    drop(router);
    drop(rt);
    total
}

fn percentiles(name: &str, h: &Histogram<u64>) -> String {
    let us = |q: f64| h.value_at_quantile(q) as f64 / 1000.0;
    format!(
        "{name:<16} n={:<8} p50={:>8.2}us p90={:>8.2}us p99={:>8.2}us p99.9={:>8.2}us max={:>9.2}us mean={:>8.2}us",
        h.len(),
        us(0.5),
        us(0.9),
        us(0.99),
        us(0.999),
        h.max() as f64 / 1000.0,
        h.mean() / 1000.0
    )
}

fn main() {
    let users = env_usize("USERS", 1_000_000).max(1);
    let resident_n = env_usize("RESIDENT", 10_000).clamp(1, users);
    let samples = env_usize("SAMPLES", 1_000_000).max(1);
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("gateway.db");
    let t = Instant::now();
    populate(&path, users);
    let populate_s = t.elapsed().as_secs_f64();

    let store: SharedStore = Arc::new(SqliteStore::open(&path).expect("reopen the store"));
    let events = EventBus::new(1024);
    let parts = Parts {
        delivery: Delivery::new(
            store.clone(),
            events.clone(),
            Vec::new(),
            RetryPolicy {
                max_attempts: 1,
                base: Duration::from_millis(10),
                max: Duration::from_millis(10),
            },
        ),
        agent: Arc::new(Agent::new(
            Arc::new(Echo),
            None,
            1,
            Duration::from_millis(10),
        )),
        store,
        events,
        users,
    };
    let rt = current_thread();
    let mut rng = Rng(42);

    // Cold: every user once, in random order, through one router whose cache starts empty.
    // This also fills that cache with every user, for the warm cases and the RSS figure.
    let identity = parts.fresh_identity();
    let warm = Router::new(parts.context(identity.clone()), 1, 1);
    let mut order: Vec<usize> = (0..users).collect();
    rng.shuffle(&mut order);
    let rss_before = rss_bytes();
    let mut cold_h = histogram();
    rt.block_on(async {
        for (n, &u) in order.iter().enumerate() {
            let msg = message(u, n as u64);
            let t = Instant::now();
            let (user, key) = warm.locate(&msg).await.expect("locate");
            record(&mut cold_h, t.elapsed());
            assert_eq!(user, u as i64 + 1, "a known user, not a new one");
            assert_eq!(key, SessionKey::User(user));
        }
    });
    let rss_after = rss_bytes();

    // Warm: random users, all cached.
    let mut warm_h = histogram();
    rt.block_on(async {
        for n in 0..samples {
            let msg = message(rng.below(users), n as u64);
            let t = Instant::now();
            let located = warm.locate(&msg).await;
            record(&mut warm_h, t.elapsed());
            located.expect("locate");
        }
    });

    // Route: random messages to resident sessions, in batches of at most 100 000 per router.
    let resident: Vec<usize> = order[..resident_n].to_vec();
    let mut route_h = histogram();
    let mut left = samples;
    while left > 0 {
        let batch = left.min(100_000);
        let msgs: Vec<InboundMessage> = (0..batch)
            .map(|n| message(resident[rng.below(resident_n)], n as u64))
            .collect();
        route_batch(&parts, &identity, &resident, msgs, Some(&mut route_h));
        left -= batch;
    }

    // Criterion: means of the same three cases.
    let mut c = Criterion::default()
        .sample_size(50)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(5))
        .configure_from_args();
    let mut group = c.benchmark_group(format!("routing_{users}_users"));
    group.bench_function("locate/warm", |b| {
        b.iter_custom(|iters| {
            let msgs: Vec<InboundMessage> =
                (0..iters).map(|n| message(rng.below(users), n)).collect();
            rt.block_on(async {
                let started = Instant::now();
                for msg in &msgs {
                    warm.locate(msg).await.expect("locate");
                }
                started.elapsed()
            })
        })
    });
    let mut cursor = 0;
    group.bench_function("locate/cold", |b| {
        b.iter_custom(|iters| {
            let router = Router::new(parts.context(parts.fresh_identity()), 1, 1);
            let msgs: Vec<InboundMessage> = (0..iters)
                .map(|n| {
                    cursor = (cursor + 1) % users;
                    message(order[cursor], n)
                })
                .collect();
            rt.block_on(async {
                let started = Instant::now();
                for msg in &msgs {
                    router.locate(msg).await.expect("locate");
                }
                started.elapsed()
            })
        })
    });
    group.bench_function(format!("route/resident_{resident_n}"), |b| {
        b.iter_custom(|iters| {
            let msgs: Vec<InboundMessage> = (0..iters)
                .map(|n| message(resident[rng.below(resident_n)], n))
                .collect();
            route_batch(&parts, &identity, &resident, msgs, None)
        })
    });
    group.finish();
    c.final_summary();

    let mib = |b: u64| b as f64 / (1024.0 * 1024.0);
    println!();
    println!("==== routing: {users} known users, {resident_n} resident sessions ====");
    println!("populate (bulk insert) {populate_s:.1}s");
    println!("{}", percentiles("locate/cold", &cold_h));
    println!("{}", percentiles("locate/warm", &warm_h));
    println!("{}", percentiles("route/resident", &route_h));
    println!(
        "RSS before filling the identity cache {:.1} MiB, after {:.1} MiB: {:.1} MiB for {users} users, {:.0} bytes per cached user",
        mib(rss_before),
        mib(rss_after),
        mib(rss_after.saturating_sub(rss_before)),
        rss_after.saturating_sub(rss_before) as f64 / users as f64
    );
    println!(
        "{{\"bench\":\"routing\",\"users\":{users},\"resident\":{resident_n},\"cold_p99_us\":{:.2},\"warm_p99_us\":{:.2},\"route_p99_us\":{:.2},\"cache_bytes_per_user\":{:.0}}}",
        cold_h.value_at_quantile(0.99) as f64 / 1000.0,
        warm_h.value_at_quantile(0.99) as f64 / 1000.0,
        route_h.value_at_quantile(0.99) as f64 / 1000.0,
        rss_after.saturating_sub(rss_before) as f64 / users as f64
    );
}
