//! Leader leases on PostgreSQL (`cluster::leader`): two runners of one lease, as two instances
//! would run it, never run the job at the same time; the second takes over once the first shut
//! down (at once, the lease released) or froze (its renewals blocked, after the expiry), and
//! the first's job has always exited before the second's starts; a frozen holder's fence is
//! refused afterwards.
//!
//! Every test runs on the cluster named by `GATEWAY_TEST_PG_URL` (`tests/run.sh` starts one), in
//! a fresh database.

mod pg_support;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use gatewayd::cluster::leader::Leadership;
use gatewayd::store::StoreError;
use gatewayd::store::cluster::{
    ClusterStore, Fence, InstanceInfo, InstanceRow, LeaseHeld, LeaseRow, RateBucket, RateBucketRow,
    RateTake, SocketHolder,
};
use gatewayd::store::postgres::PostgresStore;
use pg_support::FreshDatabase;
use tokio::sync::{Notify, watch};
use tokio::time::Instant;

const TTL: Duration = Duration::from_millis(1500);
const RENEW: Duration = Duration::from_millis(250);
const LEASE: &str = "conn:test";

/// A store whose renewals can be frozen, as a paused instance's would be.
struct Freezable {
    inner: Arc<PostgresStore>,
    frozen: AtomicBool,
    thawed: Notify,
}

impl Freezable {
    fn new(inner: Arc<PostgresStore>) -> Arc<Self> {
        Arc::new(Self {
            inner,
            frozen: AtomicBool::new(false),
            thawed: Notify::new(),
        })
    }
}

#[async_trait]
impl ClusterStore for Freezable {
    async fn server_now_ms(&self) -> Result<i64, StoreError> {
        self.inner.server_now_ms().await
    }
    async fn heartbeat(&self, me: &InstanceInfo) -> Result<(), StoreError> {
        self.inner.heartbeat(me).await
    }
    async fn leave(&self, instance_id: &str) -> Result<(), StoreError> {
        self.inner.leave(instance_id).await
    }
    async fn instances(&self) -> Result<Vec<InstanceRow>, StoreError> {
        self.inner.instances().await
    }
    async fn forget_instances(&self, older_than: Duration) -> Result<u64, StoreError> {
        self.inner.forget_instances(older_than).await
    }
    async fn lease_acquire(
        &self,
        names: &[String],
        me: &str,
        ttl: Duration,
    ) -> Result<Vec<LeaseHeld>, StoreError> {
        self.inner.lease_acquire(names, me, ttl).await
    }
    async fn lease_renew(
        &self,
        names: &[String],
        me: &str,
        ttl: Duration,
    ) -> Result<Vec<LeaseHeld>, StoreError> {
        loop {
            let thawed = self.thawed.notified();
            if !self.frozen.load(Ordering::Acquire) {
                break;
            }
            thawed.await;
        }
        self.inner.lease_renew(names, me, ttl).await
    }
    async fn lease_release(&self, names: &[String], me: &str) -> Result<(), StoreError> {
        self.inner.lease_release(names, me).await
    }
    async fn leases(&self) -> Result<Vec<LeaseRow>, StoreError> {
        self.inner.leases().await
    }
    async fn fence_holds(&self, fence: &Fence) -> Result<bool, StoreError> {
        self.inner.fence_holds(fence).await
    }
    async fn lease_meta(&self, name: &str) -> Result<Option<String>, StoreError> {
        self.inner.lease_meta(name).await
    }
    async fn set_lease_meta(&self, fence: &Fence, meta: &str) -> Result<(), StoreError> {
        self.inner.set_lease_meta(fence, meta).await
    }
    fn set_pruning(&self, on: bool) {
        self.inner.set_pruning(on);
    }
    async fn webchat_socket_opened(&self, chat_id: &str, me: &str) -> Result<(), StoreError> {
        self.inner.webchat_socket_opened(chat_id, me).await
    }
    async fn webchat_socket_closed(&self, chat_id: &str, me: &str) -> Result<(), StoreError> {
        self.inner.webchat_socket_closed(chat_id, me).await
    }
    async fn webchat_sockets_clear(&self, me: &str) -> Result<u64, StoreError> {
        self.inner.webchat_sockets_clear(me).await
    }
    async fn webchat_socket_holders(
        &self,
        chat_id: &str,
        except: &str,
        alive_within: Duration,
    ) -> Result<Vec<SocketHolder>, StoreError> {
        self.inner
            .webchat_socket_holders(chat_id, except, alive_within)
            .await
    }
    async fn rate_take(&self, buckets: &[RateBucket]) -> Result<RateTake, StoreError> {
        self.inner.rate_take(buckets).await
    }
    async fn rate_pause(&self, key: &str, pause_ms: i64) -> Result<i64, StoreError> {
        self.inner.rate_pause(key, pause_ms).await
    }
    async fn rate_buckets(&self, keys: &[String]) -> Result<Vec<RateBucketRow>, StoreError> {
        self.inner.rate_buckets(keys).await
    }
}

/// What the jobs did, in order.
#[derive(Default)]
struct Log {
    running: AtomicUsize,
    most: AtomicUsize,
    events: Mutex<Vec<(&'static str, &'static str, Instant, i64)>>,
    fences: Mutex<Vec<(&'static str, Fence)>>,
}

impl Log {
    fn record(&self, who: &'static str, what: &'static str, epoch: i64) {
        self.events
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push((who, what, Instant::now(), epoch));
    }

    fn events(&self) -> Vec<(&'static str, &'static str, Instant, i64)> {
        self.events
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    fn starts_of(&self, who: &str) -> usize {
        self.events()
            .iter()
            .filter(|e| e.0 == who && e.1 == "start")
            .count()
    }
}

/// Starts runner `who` of [`LEASE`] on `store`; its job counts itself running until it is told
/// to stop, and takes `exit_work` to wind down (so a slow exit is visible).
fn runner(
    who: &'static str,
    store: Arc<dyn ClusterStore>,
    log: Arc<Log>,
    exit_work: Duration,
) -> (watch::Sender<bool>, tokio::task::JoinHandle<()>) {
    let (stop, shutdown) = watch::channel(false);
    let leadership = Leadership::new(store, who, TTL, RENEW);
    let task = tokio::spawn(async move {
        leadership
            .run(LEASE, shutdown, |guard| {
                let log = log.clone();
                async move {
                    let now = log.running.fetch_add(1, Ordering::AcqRel) + 1;
                    log.most.fetch_max(now, Ordering::AcqRel);
                    log.record(who, "start", guard.epoch());
                    log.fences
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner)
                        .push((who, guard.fence().clone()));
                    guard.lost().await;
                    // Winding down (flushing a cursor, closing a socket) takes a moment.
                    tokio::time::sleep(exit_work).await;
                    log.record(who, "exit", guard.epoch());
                    log.running.fetch_sub(1, Ordering::AcqRel);
                }
            })
            .await;
    });
    (stop, task)
}

async fn wait_until(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Every job start comes after the previous job's exit, and never two at once.
fn assert_one_at_a_time(log: &Log) {
    assert_eq!(log.most.load(Ordering::Acquire), 1, "two jobs ran at once");
    let events = log.events();
    let mut open: Option<(&str, i64)> = None;
    for (who, what, _, epoch) in &events {
        match *what {
            "start" => {
                assert!(
                    open.is_none(),
                    "{who} started while {open:?} ran: {events:?}"
                );
                open = Some((who, *epoch));
            }
            _ => {
                assert_eq!(open, Some((*who, *epoch)), "{events:?}");
                open = None;
            }
        }
    }
    let epochs: Vec<i64> = events
        .iter()
        .filter(|e| e.1 == "start")
        .map(|e| e.3)
        .collect();
    assert!(
        epochs.windows(2).all(|w| w[1] > w[0]),
        "every handover raises the epoch: {epochs:?}"
    );
}

async fn two_stores(db: &FreshDatabase) -> (Arc<PostgresStore>, Arc<PostgresStore>) {
    let a = Arc::new(PostgresStore::open(&db.url).await.expect("open a"));
    let b = Arc::new(PostgresStore::open(&db.url).await.expect("open b"));
    (a, b)
}

#[tokio::test]
async fn the_second_runner_takes_over_at_once_when_the_first_shuts_down() {
    let db = FreshDatabase::new().await;
    let (a, b) = two_stores(&db).await;
    let log = Arc::new(Log::default());
    let (stop_a, task_a) = runner("a", a.clone(), log.clone(), Duration::from_millis(300));
    wait_until("a to hold the lease", Duration::from_secs(10), || {
        log.starts_of("a") == 1
    })
    .await;
    let (stop_b, task_b) = runner("b", b.clone(), log.clone(), Duration::ZERO);
    // b keeps trying while a holds: a few renewals pass without a takeover.
    let held_until = Instant::now() + TTL * 2;
    while Instant::now() < held_until {
        assert_eq!(log.starts_of("b"), 0, "b started while a held the lease");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let stopped_at = Instant::now();
    let _ = stop_a.send(true);
    tokio::time::timeout(Duration::from_secs(10), task_a)
        .await
        .expect("a stops")
        .expect("a's task");
    wait_until("b to take over", Duration::from_secs(10), || {
        log.starts_of("b") == 1
    })
    .await;
    let events = log.events();
    let b_start = events
        .iter()
        .find(|e| e.0 == "b" && e.1 == "start")
        .map(|e| e.2)
        .expect("b started");
    assert!(
        b_start.duration_since(stopped_at) < TTL,
        "a released the lease, so b need not wait for its expiry: {:?}",
        b_start.duration_since(stopped_at)
    );
    assert_one_at_a_time(&log);
    let leases = a.leases().await.expect("leases");
    let row = leases
        .iter()
        .find(|l| l.name == LEASE)
        .expect("the lease row");
    assert_eq!(row.owner.as_deref(), Some("b"));
    let _ = stop_b.send(true);
    tokio::time::timeout(Duration::from_secs(10), task_b)
        .await
        .expect("b stops")
        .expect("b's task");
    let leases = a.leases().await.expect("leases");
    let row = leases
        .iter()
        .find(|l| l.name == LEASE)
        .expect("the lease row");
    assert_eq!(row.owner, None, "released on shutdown");
    assert_one_at_a_time(&log);
}

#[tokio::test]
async fn a_frozen_holder_stops_by_its_deadline_before_the_next_one_starts_and_is_fenced() {
    let db = FreshDatabase::new().await;
    let (a, b) = two_stores(&db).await;
    let frozen_a = Freezable::new(a.clone());
    let log = Arc::new(Log::default());
    let (stop_a, task_a) = runner(
        "a",
        frozen_a.clone(),
        log.clone(),
        Duration::from_millis(50),
    );
    wait_until("a to hold the lease", Duration::from_secs(10), || {
        log.starts_of("a") == 1
    })
    .await;
    let (stop_b, task_b) = runner("b", b.clone(), log.clone(), Duration::ZERO);
    frozen_a.frozen.store(true, Ordering::Release);
    let froze_at = Instant::now();
    wait_until("b to take over", Duration::from_secs(10), || {
        log.starts_of("b") == 1
    })
    .await;
    let events = log.events();
    let a_exit = events
        .iter()
        .find(|e| e.0 == "a" && e.1 == "exit")
        .map(|e| e.2)
        .expect("a's job exited before b's started");
    assert!(
        a_exit.duration_since(froze_at) < TTL,
        "a stops by its local deadline, before the lease expires"
    );
    assert_one_at_a_time(&log);
    // a's fence is refused now; b's holds.
    let fences = log
        .fences
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .clone();
    let fence_a = &fences.iter().find(|f| f.0 == "a").expect("a's fence").1;
    let fence_b = &fences.iter().find(|f| f.0 == "b").expect("b's fence").1;
    assert!(fence_b.epoch > fence_a.epoch);
    match a.set_lease_meta(fence_a, r#"{"offset": 1}"#).await {
        Err(StoreError::Fenced(_)) => {}
        other => panic!("a stale holder's write is fenced, not {other:?}"),
    }
    b.set_lease_meta(fence_b, r#"{"offset": 2}"#)
        .await
        .expect("the holder writes");
    assert_eq!(
        a.lease_meta(LEASE).await.expect("meta").as_deref(),
        Some(r#"{"offset": 2}"#)
    );
    // Thawed, a finds its lease gone and waits its turn.
    frozen_a.frozen.store(false, Ordering::Release);
    frozen_a.thawed.notify_waiters();
    let watch_until = Instant::now() + TTL * 2;
    while Instant::now() < watch_until {
        assert_eq!(
            log.starts_of("a"),
            1,
            "a started again while b held the lease"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let _ = stop_a.send(true);
    let _ = stop_b.send(true);
    for task in [task_a, task_b] {
        tokio::time::timeout(Duration::from_secs(10), task)
            .await
            .expect("stops")
            .expect("task");
    }
    assert_one_at_a_time(&log);
}
