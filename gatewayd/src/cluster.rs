//! Multi-instance mode: which instance owns which sessions, and the proof it still does.
//!
//! Sessions hash into `cluster.partitions` fixed partitions ([`partition_of`], FNV-1a 64 over
//! the session key's string form). Each partition is a lease named `part:<p>` in the shared
//! database, held by one instance at a time, with an epoch that grows on every change of owner.
//! The [`Cluster`] handle is what the rest of the gateway asks: [`Cluster::fence_for`] answers a
//! [`Fence`] only while this instance holds the partition's lease and its *local* deadline (the
//! moment the acquiring or renewing request was sent, plus `lease_ttl`, minus a margin of a
//! sixth of it) has not passed, so an instance that cannot renew stops acting before its lease
//! lapses on the server. Safety does not rest on that deadline: every turn commit checks the
//! fence in its own transaction (the store's `fence_check`), so a commit made by an instance
//! that lost its lease (paused, partitioned) is refused and nothing of it is kept or sent.
//!
//! The membership loop ([`Cluster::tick`], every `cluster.renew_interval`, supervised) heartbeats,
//! reads the members, computes the placement ([`placement`]: every instance computes the same map
//! from the same live set, each live instance getting `floor` or `ceil` of `partitions / live`),
//! renews what it holds, releases what it holds but no longer should (a member joined), and
//! acquires what it should hold and is free (a member left or died), plus any partition whose
//! lease has lapsed for more than one `lease_ttl` whoever should hold it (the desired owner is
//! stuck). Ownership changes are published on a watch channel ([`Cluster::subscribe`]): a
//! partition with a new epoch is a gain, and the inbox, the router, delivery and the workflow
//! engine each take up that partition's unfinished work. [`Cluster::leave`] (SIGTERM) stops
//! acquiring and releases every partition at once, so the survivors take over without waiting
//! for the leases to lapse.
//!
//! [`Claims`] remembers which pending inbox rows were handed to a session worker here, so the
//! owner's pickup poll never hands one row over twice.
//!
//! [`leader`] runs a named long-lived job (a channel's connection, the scheduler) on exactly one
//! instance at a time, under a lease with a fencing epoch. [`relay`] carries a WebChat reply
//! from the instance that sends it to the instance holding the chat's socket.
//!
//! The handle itself depends only on the store and the message types (the runtime builds its
//! [`Settings`] from `[cluster]`), so
//! every part that asks it (inbox, sessions, delivery, workflows) may do so without a cycle.

pub mod leader;
pub mod relay;

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use tokio::sync::watch;

use crate::message::SessionKey;
use crate::store::StoreError;
use crate::store::cluster::{ClusterStore, Fence, InstanceInfo, LeaseHeld, LeaseRow};

/// Instance rows whose heartbeat is older than this are deleted.
const FORGET_AFTER: Duration = Duration::from_secs(3600);

/// How often (in ticks) old instance rows are pruned.
const FORGET_EVERY_TICKS: u64 = 60;

/// How long [`Cluster::leave`] waits for the release of every lease.
const LEAVE_TIMEOUT: Duration = Duration::from_secs(1);

/// The lease name of partition `p`.
pub fn lease_name(p: u32) -> String {
    format!("part:{p}")
}

/// The partition a lease name stands for, if it is a partition's.
pub fn partition_of_lease(name: &str) -> Option<u32> {
    name.strip_prefix("part:")?.parse().ok()
}

/// FNV-1a, 64 bits: stable across builds, platforms and Rust versions (unlike std's hasher).
pub fn fnv1a64(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// The partition of a session key's string form among `partitions` (at least 1).
pub fn partition_of_str(key: &str, partitions: u32) -> u32 {
    let n = u64::from(partitions.max(1));
    // The remainder is below `partitions`, a u32.
    u32::try_from(fnv1a64(key.as_bytes()) % n).unwrap_or(0)
}

/// The partition of `key` among `partitions`.
pub fn partition_of(key: &SessionKey, partitions: u32) -> u32 {
    partition_of_str(&key.to_string(), partitions)
}

/// SplitMix64's finalizer: spreads FNV's low-entropy high bits for the rendezvous weights.
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The rendezvous weight of `instance` for partition `p`.
fn weight(instance: &str, p: u32) -> u64 {
    let mut bytes = Vec::with_capacity(instance.len() + 5);
    bytes.extend_from_slice(instance.as_bytes());
    bytes.push(0);
    bytes.extend_from_slice(&p.to_le_bytes());
    mix(fnv1a64(&bytes))
}

/// Which live instance should own each partition: a deterministic function of the live set,
/// so every instance computes the same map.
///
/// Rendezvous hashing with bounded loads: each partition ranks the instances by
/// `weight(instance, p)`; the instances, sorted by id, get a capacity of `ceil(P/N)` for the
/// first `P mod N` and `floor(P/N)` for the rest; then in rounds (first choices, then second
/// choices, …) each still unplaced partition goes to its choice of that round if it has room.
/// Most partitions stay with their first choice, so a join or a leave moves few besides those
/// that must move, and no instance holds more than one partition more than another.
pub fn placement(live: &[String], partitions: u32) -> Vec<Option<usize>> {
    let mut ids: Vec<&str> = live.iter().map(String::as_str).collect();
    ids.sort_unstable();
    ids.dedup();
    let p_count = partitions as usize;
    let mut out = vec![None; p_count];
    if ids.is_empty() {
        return out;
    }
    let n = ids.len();
    let base = p_count / n;
    let extra = p_count % n;
    let mut room: Vec<usize> = (0..n).map(|i| base + usize::from(i < extra)).collect();
    let ranks: Vec<Vec<usize>> = (0..partitions)
        .map(|p| {
            let mut order: Vec<usize> = (0..n).collect();
            order.sort_by(|a, b| {
                weight(ids[*b], p)
                    .cmp(&weight(ids[*a], p))
                    .then_with(|| ids[*a].cmp(ids[*b]))
            });
            order
        })
        .collect();
    for round in 0..n {
        for (p, order) in ranks.iter().enumerate() {
            if out[p].is_some() {
                continue;
            }
            let choice = order[round];
            if room[choice] > 0 {
                room[choice] -= 1;
                out[p] = Some(choice);
            }
        }
    }
    // Map the sorted index back to the caller's index.
    out.into_iter()
        .map(|o| o.and_then(|i| live.iter().position(|l| l == ids[i])))
        .collect()
}

/// The partitions `me` should own when `live` are the live instances.
pub fn desired_for(me: &str, live: &[String], partitions: u32) -> BTreeSet<u32> {
    let Some(me_at) = live.iter().position(|l| l == me) else {
        return BTreeSet::new();
    };
    placement(live, partitions)
        .into_iter()
        .zip(0u32..)
        .filter(|(owner, _)| *owner == Some(me_at))
        .map(|(_, p)| p)
        .collect()
}

/// What this instance owns: partition → the epoch it holds it at.
pub type Ownership = Arc<BTreeMap<u32, i64>>;

#[derive(Debug, Clone)]
struct Held {
    fence: Fence,
    /// Past this instant this instance no longer acts for the partition.
    deadline: Instant,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// What one membership tick changed, for logs and tests.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TickReport {
    /// Partitions acquired (a new epoch each).
    pub acquired: Vec<u32>,
    /// Partitions whose renewal failed (another instance has them, or they lapsed).
    pub lost: Vec<u32>,
    /// Partitions released to the instance that should have them.
    pub released: Vec<u32>,
    /// The live instances this tick saw, sorted.
    pub live: Vec<String>,
}

/// The handle every part of a clustered gateway shares.
pub struct Cluster {
    me: Arc<str>,
    info: Mutex<InstanceInfo>,
    partitions: u32,
    ttl: Duration,
    renew: Duration,
    margin: Duration,
    store: Arc<dyn ClusterStore>,
    held: Mutex<BTreeMap<u32, Held>>,
    owned_tx: watch::Sender<Ownership>,
    leaving: AtomicBool,
    ticks: AtomicU64,
    claims: Claims,
    /// Serializes ticks and the release on leave.
    tick_lock: tokio::sync::Mutex<()>,
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster")
            .field("instance_id", &self.me)
            .field("partitions", &self.partitions)
            .finish_non_exhaustive()
    }
}

/// What a [`Cluster`] handle is built from: the `[cluster]` keys it uses (the runtime reads
/// them from the configuration, so this module does not depend on `config`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// `cluster.instance_id` (or its default, the hostname plus the process id).
    pub instance_id: String,
    /// `cluster.partitions`.
    pub partitions: u32,
    /// `cluster.lease_ttl`.
    pub lease_ttl: Duration,
    /// `cluster.renew_interval`.
    pub renew_interval: Duration,
}

impl Cluster {
    /// A handle for this instance from `[cluster]`; `advertise_url` is where the other
    /// instances reach its HTTP listener. Holds nothing until the first [`Cluster::tick`].
    pub fn new(
        config: &Settings,
        store: Arc<dyn ClusterStore>,
        advertise_url: Option<String>,
    ) -> Arc<Self> {
        let me: Arc<str> = config.instance_id.as_str().into();
        let ttl = config.lease_ttl;
        let (owned_tx, _) = watch::channel(Arc::new(BTreeMap::new()));
        Arc::new(Self {
            info: Mutex::new(InstanceInfo {
                instance_id: me.to_string(),
                advertise_url,
                version: env!("CARGO_PKG_VERSION").to_owned(),
            }),
            me,
            partitions: config.partitions.max(1),
            ttl,
            renew: config.renew_interval,
            margin: ttl / 6,
            store,
            held: Mutex::new(BTreeMap::new()),
            owned_tx,
            leaving: AtomicBool::new(false),
            ticks: AtomicU64::new(0),
            claims: Claims::default(),
            tick_lock: tokio::sync::Mutex::new(()),
        })
    }

    /// This instance's id (`cluster.instance_id`).
    pub fn instance_id(&self) -> &str {
        &self.me
    }

    /// How many partitions sessions hash into.
    pub fn partitions(&self) -> u32 {
        self.partitions
    }

    /// The partition of `key`.
    pub fn partition_of(&self, key: &SessionKey) -> u32 {
        partition_of(key, self.partitions)
    }

    /// The lease name of partition `p` (`part:<p>`).
    pub fn lease_name(&self, p: u32) -> String {
        lease_name(p)
    }

    /// The fence to write partition `p`'s turns under: `Some` only while this instance holds
    /// `part:<p>` and its local deadline has not passed.
    pub fn fence_for(&self, p: u32) -> Option<Fence> {
        let held = lock(&self.held);
        let h = held.get(&p)?;
        (Instant::now() < h.deadline).then(|| h.fence.clone())
    }

    /// The fence of `key`'s partition, if this instance may act for it.
    pub fn fence_for_key(&self, key: &SessionKey) -> Option<Fence> {
        self.fence_for(self.partition_of(key))
    }

    /// The partitions this instance may act for now, ascending.
    pub fn owned(&self) -> Vec<u32> {
        let now = Instant::now();
        lock(&self.held)
            .iter()
            .filter(|(_, h)| now < h.deadline)
            .map(|(p, _)| *p)
            .collect()
    }

    /// Ownership changes: partition → epoch held. A partition that appears, or whose epoch
    /// changed, was gained; one that disappears was lost or released.
    pub fn subscribe(&self) -> watch::Receiver<Ownership> {
        self.owned_tx.subscribe()
    }

    /// The shared database's coordination.
    pub fn store(&self) -> Arc<dyn ClusterStore> {
        self.store.clone()
    }

    /// `cluster.lease_ttl`.
    pub fn lease_ttl(&self) -> Duration {
        self.ttl
    }

    /// `cluster.renew_interval`.
    pub fn renew_interval(&self) -> Duration {
        self.renew
    }

    /// How long before a lease's server expiry this instance stops acting for it.
    pub fn safety_margin(&self) -> Duration {
        self.margin
    }

    /// The local deadline of a lease granted by a request sent at `sent`.
    pub fn deadline_from(&self, sent: Instant) -> Instant {
        sent + self.ttl.saturating_sub(self.margin)
    }

    /// Whether [`Cluster::leave`] has begun.
    pub fn is_leaving(&self) -> bool {
        self.leaving.load(Ordering::Acquire)
    }

    /// The inbox rows handed to a worker here.
    pub fn claims(&self) -> &Claims {
        &self.claims
    }

    /// What this instance says of itself.
    pub fn info(&self) -> InstanceInfo {
        lock(&self.info).clone()
    }

    /// Where the other instances reach this one's HTTP listener, from the next heartbeat on
    /// (set once the listener is bound, when `cluster.advertise_url` is not given).
    pub fn set_advertise_url(&self, url: String) {
        lock(&self.info).advertise_url = Some(url);
    }

    fn publish(&self) {
        let map: BTreeMap<u32, i64> = lock(&self.held)
            .iter()
            .map(|(p, h)| (*p, h.fence.epoch))
            .collect();
        metrics::gauge!("gateway_cluster_partitions_owned").set(map.len() as f64);
        self.owned_tx.send_if_modified(|cur| {
            if **cur == map {
                false
            } else {
                *cur = Arc::new(map);
                true
            }
        });
    }

    fn fence(&self, p: u32, epoch: i64) -> Fence {
        Fence {
            lease: lease_name(p).into(),
            owner: self.me.clone(),
            epoch,
        }
    }

    /// One round of membership and placement; see the module docs. A store error ends the
    /// round early: what is held keeps its deadline, so it lapses locally if renewals keep
    /// failing.
    pub async fn tick(&self) -> Result<TickReport, StoreError> {
        let _serial = self.tick_lock.lock().await;
        let mut report = TickReport::default();
        if self.is_leaving() {
            return Ok(report);
        }
        let n = self.ticks.fetch_add(1, Ordering::AcqRel);
        let info = self.info();
        self.store.heartbeat(&info).await?;
        if n.is_multiple_of(FORGET_EVERY_TICKS) {
            self.store.forget_instances(FORGET_AFTER).await?;
        }
        let now = self.store.server_now_ms().await?;
        let ttl_ms = i64::try_from(self.ttl.as_millis()).unwrap_or(i64::MAX);
        let mut live: Vec<String> = self
            .store
            .instances()
            .await?
            .into_iter()
            .filter(|r| !r.leaving && now.saturating_sub(r.heartbeat_at_ms) < ttl_ms)
            .map(|r| r.instance_id)
            .collect();
        if !live.iter().any(|l| *l == *self.me) {
            live.push(self.me.to_string());
        }
        live.sort_unstable();
        let desired = desired_for(&self.me, &live, self.partitions);
        report.live = live;

        // Renew what is held.
        let held_now: Vec<u32> = lock(&self.held).keys().copied().collect();
        if !held_now.is_empty() {
            let names: Vec<String> = held_now.iter().map(|p| lease_name(*p)).collect();
            let sent = Instant::now();
            let renewed = self.store.lease_renew(&names, &self.me, self.ttl).await?;
            let renewed: HashMap<u32, i64> = renewed
                .iter()
                .filter_map(|l| partition_of_lease(&l.name).map(|p| (p, l.epoch)))
                .collect();
            let deadline = self.deadline_from(sent);
            let mut held = lock(&self.held);
            for p in &held_now {
                match renewed.get(p) {
                    Some(epoch) if held.get(p).is_some_and(|h| h.fence.epoch == *epoch) => {
                        if let Some(h) = held.get_mut(p) {
                            h.deadline = deadline;
                        }
                    }
                    _ => {
                        held.remove(p);
                        report.lost.push(*p);
                    }
                }
            }
        }

        // Release what another instance should hold now.
        let to_release: Vec<u32> = {
            let mut held = lock(&self.held);
            let gone: Vec<u32> = held
                .keys()
                .filter(|p| !desired.contains(p))
                .copied()
                .collect();
            for p in &gone {
                held.remove(p);
            }
            gone
        };
        if !to_release.is_empty() {
            // Stop acting first (the fence is gone above), then hand over.
            self.publish();
            let names: Vec<String> = to_release.iter().map(|p| lease_name(*p)).collect();
            self.store.lease_release(&names, &self.me).await?;
            report.released = to_release;
        }

        // Acquire what this instance should hold, and anything lapsed for a whole TTL.
        let held_set: BTreeSet<u32> = lock(&self.held).keys().copied().collect();
        let leases: Vec<LeaseRow> = self.store.leases().await?;
        let mut want: BTreeSet<u32> = desired.difference(&held_set).copied().collect();
        let mut known = HashSet::new();
        for l in &leases {
            let Some(p) = partition_of_lease(&l.name) else {
                continue;
            };
            if p >= self.partitions {
                continue;
            }
            known.insert(p);
            let free = l.owner.is_none() || l.expires_at_ms <= now;
            if !free {
                want.remove(&p);
            } else if l.owner.is_some()
                && l.expires_at_ms.saturating_add(ttl_ms) <= now
                && !held_set.contains(&p)
            {
                // Lapsed (not released) a whole TTL ago: the instance that should take it is
                // stuck. A released lease is left to the instance it was released for.
                want.insert(p);
            }
        }
        if !want.is_empty() {
            let names: Vec<String> = want.iter().map(|p| lease_name(*p)).collect();
            let sent = Instant::now();
            let got: Vec<LeaseHeld> = self.store.lease_acquire(&names, &self.me, self.ttl).await?;
            let deadline = self.deadline_from(sent);
            let mut held = lock(&self.held);
            for l in got {
                if let Some(p) = partition_of_lease(&l.name) {
                    held.insert(
                        p,
                        Held {
                            fence: self.fence(p, l.epoch),
                            deadline,
                        },
                    );
                    report.acquired.push(p);
                }
            }
        }
        self.publish();
        count_changes(&report);
        Ok(report)
    }

    /// Runs [`Cluster::tick`] every `renew_interval` until the handle is leaving.
    pub async fn run(self: Arc<Self>) {
        let mut tick = tokio::time::interval(self.renew.max(Duration::from_millis(10)));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            if self.is_leaving() {
                return;
            }
            if let Err(error) = self.tick().await {
                tracing::warn!(message = "Cluster membership round failed; partitions lapse unless the next one succeeds.", instance = %self.me, %error);
                self.publish();
            }
        }
    }

    /// SIGTERM: stop acquiring, release every held partition (at most about one second), and
    /// mark this instance leaving so the others stop counting it at once.
    pub async fn leave(&self) {
        self.leaving.store(true, Ordering::Release);
        let work = async {
            let _serial = self.tick_lock.lock().await;
            let held: Vec<u32> = {
                let mut held = lock(&self.held);
                let ps = held.keys().copied().collect();
                held.clear();
                ps
            };
            self.publish();
            let names: Vec<String> = held.iter().map(|p| lease_name(*p)).collect();
            if let Err(error) = self.store.leave(&self.me).await {
                tracing::warn!(message = "Cannot mark this instance as leaving.", %error);
            }
            match self.store.lease_release(&names, &self.me).await {
                Ok(()) => {
                    if !held.is_empty() {
                        metrics::counter!("gateway_cluster_lease_changes_total", "change" => "released")
                            .increment(held.len() as u64);
                        tracing::info!(message = "Released every partition for shutdown.", instance = %self.me, count = held.len());
                    }
                }
                Err(error) => {
                    tracing::warn!(message = "Cannot release the partitions; they lapse after lease_ttl.", %error);
                }
            }
        };
        if tokio::time::timeout(LEAVE_TIMEOUT, work).await.is_err() {
            tracing::warn!(
                message = "Releasing the partitions took too long; they lapse after lease_ttl."
            );
        }
    }
}

fn count_changes(report: &TickReport) {
    for (change, ps) in [
        ("acquired", &report.acquired),
        ("lost", &report.lost),
        ("released", &report.released),
    ] {
        if ps.is_empty() {
            continue;
        }
        metrics::counter!("gateway_cluster_lease_changes_total", "change" => change)
            .increment(ps.len() as u64);
        tracing::info!(message = "Partition leases changed.", change, count = ps.len(), partitions = ?ps);
    }
}

/// The inbox rows handed to a session worker on this instance and not yet settled for good.
///
/// A row is claimed when it is routed. The owner's pickup poll routes only unclaimed rows, and
/// forgets a claim only when a poll of its partition that started after the claim no longer
/// returns the row (it is done), so a row is never routed twice here. A worker that leaves a
/// row pending for another instance (the partition is not held, or its commit was fenced)
/// gives its claim back with [`Claims::release`], so the row is routed again if the partition
/// comes back; one that settled it marks it with [`Claims::settled`], so the claim is forgotten
/// even when its partition is no longer polled here.
#[derive(Debug, Default)]
pub struct Claims {
    inner: Mutex<ClaimsInner>,
}

#[derive(Debug, Clone, Copy)]
struct Claim {
    /// The poll sequence number current when it was claimed.
    seq: u64,
    partition: u32,
    settled: bool,
}

#[derive(Debug, Default)]
struct ClaimsInner {
    claimed: HashMap<i64, Claim>,
    seq: u64,
}

impl Claims {
    /// Claims `inbox_id` of `partition`; false if it is already claimed (do not route it
    /// again).
    pub fn claim(&self, inbox_id: i64, partition: u32) -> bool {
        let mut inner = lock(&self.inner);
        let seq = inner.seq;
        match inner.claimed.entry(inbox_id) {
            std::collections::hash_map::Entry::Occupied(_) => false,
            std::collections::hash_map::Entry::Vacant(v) => {
                v.insert(Claim {
                    seq,
                    partition,
                    settled: false,
                });
                true
            }
        }
    }

    /// Gives a claim back: the row stays pending for whoever owns its partition.
    pub fn release(&self, inbox_id: i64) {
        lock(&self.inner).claimed.remove(&inbox_id);
    }

    /// The worker finished with the row (a committed turn, a drop, or a row kept for pairing).
    pub fn settled(&self, inbox_id: i64) {
        let mut inner = lock(&self.inner);
        let seq = inner.seq;
        if let Some(c) = inner.claimed.get_mut(&inbox_id) {
            c.settled = true;
            // A poll must begin after the settlement to forget it.
            c.seq = seq;
        }
    }

    /// Whether `inbox_id` is claimed.
    pub fn is_claimed(&self, inbox_id: i64) -> bool {
        lock(&self.inner).claimed.contains_key(&inbox_id)
    }

    /// How many rows are claimed.
    pub fn len(&self) -> usize {
        lock(&self.inner).claimed.len()
    }

    /// Whether nothing is claimed.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Starts a poll: returns its sequence number, to pass to [`Claims::finish_poll`].
    pub fn begin_poll(&self) -> u64 {
        let mut inner = lock(&self.inner);
        inner.seq += 1;
        inner.seq
    }

    /// Ends the poll `seq` of `polled` partitions, which returned `pending`: forgets the claims
    /// made before the poll began of rows it no longer returned, and the settled claims of
    /// partitions it did not read. Returns how many it forgot.
    pub fn finish_poll(&self, seq: u64, polled: &BTreeSet<u32>, pending: &HashSet<i64>) -> usize {
        let mut inner = lock(&self.inner);
        let before = inner.claimed.len();
        inner.claimed.retain(|id, c| {
            if c.seq >= seq || pending.contains(id) {
                return true;
            }
            if polled.contains(&c.partition) {
                return false;
            }
            !c.settled
        });
        before - inner.claimed.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::ChannelKind;

    fn ids(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("gw-{i}")).collect()
    }

    fn counts(map: &[Option<usize>], n: usize) -> Vec<usize> {
        let mut c = vec![0; n];
        for o in map {
            c[o.expect("every partition is placed")] += 1;
        }
        c
    }

    #[test]
    fn placement_is_even_for_one_to_five_instances() {
        for n in 1..=5 {
            let live = ids(n);
            let map = placement(&live, 64);
            let c = counts(&map, n);
            let (min, max) = (
                c.iter().min().copied().unwrap_or(0),
                c.iter().max().copied().unwrap_or(0),
            );
            assert!(max - min <= 1, "{n} instances: {c:?}");
            assert_eq!(c.iter().sum::<usize>(), 64);
        }
        let c = counts(&placement(&ids(3), 64), 3);
        let mut sorted = c.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, vec![21, 21, 22]);
    }

    #[test]
    fn placement_is_the_same_whatever_the_order_of_the_live_set() {
        let live = ids(4);
        let mut shuffled = live.clone();
        shuffled.reverse();
        let a: Vec<Option<&String>> = placement(&live, 64)
            .into_iter()
            .map(|o| o.map(|i| &live[i]))
            .collect();
        let b: Vec<Option<&String>> = placement(&shuffled, 64)
            .into_iter()
            .map(|o| o.map(|i| &shuffled[i]))
            .collect();
        assert_eq!(a, b);
    }

    fn owners(live: &[String]) -> Vec<String> {
        placement(live, 64)
            .into_iter()
            .map(|o| live[o.expect("placed")].clone())
            .collect()
    }

    #[test]
    fn a_join_or_a_leave_moves_few_partitions() {
        for n in 1..=4 {
            let before = owners(&ids(n));
            let after = owners(&ids(n + 1));
            let moved = before.iter().zip(&after).filter(|(a, b)| a != b).count();
            // At least 64/(n+1) must move to the newcomer; allow a small cascade beyond it.
            let must = 64 / (n + 1);
            assert!(
                moved <= must + must / 2 + 2,
                "{n}→{} moved {moved}, at least {must} must",
                n + 1
            );
            // A leave: only the leaver's partitions must move.
            let live = ids(n + 1);
            let leaver = &live[0];
            let rest: Vec<String> = live[1..].to_vec();
            let before = owners(&live);
            let after = owners(&rest);
            let must = before.iter().filter(|o| *o == leaver).count();
            let moved = before.iter().zip(&after).filter(|(a, b)| a != b).count();
            assert!(
                moved <= must + must / 2 + 2,
                "leave of {leaver} from {}: moved {moved}, at least {must} must",
                n + 1
            );
        }
    }

    #[test]
    fn desired_for_partitions_the_whole_range_between_the_live() {
        let live = ids(3);
        let mut all = BTreeSet::new();
        for me in &live {
            let mine = desired_for(me, &live, 64);
            assert!(all.is_disjoint(&mine));
            all.extend(mine);
        }
        assert_eq!(all, (0..64).collect());
        assert!(desired_for("not-live", &live, 64).is_empty());
    }

    #[test]
    fn partition_of_is_stable() {
        assert_eq!(fnv1a64(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a64(b"a"), 0xaf63_dc4c_8601_ec8c);
        let check = |key: SessionKey, expected: u32| {
            assert_eq!(partition_of(&key, 64), expected, "{key}");
        };
        check(SessionKey::User(1), partition_of_str("user:1", 64));
        assert_eq!(partition_of_str("user:1", 64), 43);
        assert_eq!(partition_of_str("user:42", 64), 2);
        assert_eq!(partition_of_str("group:telegram:-100123", 64), 37);
        check(
            SessionKey::Group(ChannelKind::new("telegram"), "-100123".to_owned()),
            37,
        );
        assert_eq!(partition_of_str("anything", 1), 0);
    }

    #[test]
    fn lease_names_round_trip() {
        assert_eq!(lease_name(17), "part:17");
        assert_eq!(partition_of_lease("part:17"), Some(17));
        assert_eq!(partition_of_lease("conn:telegram"), None);
        assert_eq!(partition_of_lease("part:x"), None);
    }

    #[test]
    fn a_claim_is_forgotten_only_by_a_poll_that_began_after_it() {
        let claims = Claims::default();
        let polled = BTreeSet::from([0]);
        assert!(claims.claim(1, 0));
        assert!(!claims.claim(1, 0), "claimed twice");
        let seq = claims.begin_poll();
        // Claimed while the poll runs: not forgotten by it even though it did not return it.
        assert!(claims.claim(2, 0));
        assert_eq!(claims.finish_poll(seq, &polled, &HashSet::from([1])), 0);
        assert!(claims.is_claimed(1) && claims.is_claimed(2));
        // The next poll no longer sees either: both forgotten.
        let seq = claims.begin_poll();
        assert_eq!(claims.finish_poll(seq, &polled, &HashSet::new()), 2);
        assert!(claims.is_empty());
        // A row of a partition the poll did not read is kept until it is settled.
        assert!(claims.claim(3, 5));
        let seq = claims.begin_poll();
        assert_eq!(claims.finish_poll(seq, &polled, &HashSet::new()), 0);
        claims.settled(3);
        let seq = claims.begin_poll();
        assert_eq!(claims.finish_poll(seq, &polled, &HashSet::new()), 1);
        // A released claim can be claimed again.
        assert!(claims.claim(4, 0));
        claims.release(4);
        assert!(claims.claim(4, 0));
    }
}
