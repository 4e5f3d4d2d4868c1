//! What several instances on one shared database coordinate through: membership rows, leases
//! with fencing epochs, and the shared rate-limit buckets.
//!
//! Only the shared backend implements [`ClusterStore`] ([`Store::cluster_store`] is `None` for
//! the embedded one). Every time here is in milliseconds of the **database server's** clock
//! (`gw_now_ms()`, from `clock_timestamp()`), never an instance's own clock, so instances whose
//! clocks disagree still agree on who holds a lease.
//!
//! A lease is one row per name (`part:<n>`, `conn:<channel>`, `singleton:<job>`): an owner, an
//! expiry and an epoch that grows by one every time the lease changes hands. Whoever holds a
//! lease writes under a [`Fence`] (the name, the owner and the epoch it acquired); the store
//! refuses a fenced write whose lease has since expired or moved, in the same transaction as the
//! write, with [`StoreError::Fenced`](super::StoreError::Fenced).

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

use super::{InboxOutcome, NewReply, PendingInbound, RunRecord, StoreError};
use crate::message::{InboundMessage, OutboundMessage};

/// The proof a writer holds a lease: checked by the store inside the write's transaction.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Fence {
    /// The lease's name, e.g. `part:17`.
    pub lease: Arc<str>,
    /// The instance holding it.
    pub owner: Arc<str>,
    /// The epoch it was acquired at.
    pub epoch: i64,
}

/// What a store without the partitioned message path answers to it.
fn unpartitioned() -> StoreError {
    StoreError::Database("this store does not keep partitioned work".to_owned())
}

impl Fence {
    /// The partition this fence is for, when its lease is a partition's (`part:<n>`).
    pub fn partition(&self) -> Option<u32> {
        self.lease.strip_prefix("part:")?.parse().ok()
    }
}

/// What an instance says of itself in its heartbeat.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstanceInfo {
    /// `cluster.instance_id`.
    pub instance_id: String,
    /// Where other instances reach this one's HTTP listener (`cluster.advertise_url`).
    pub advertise_url: Option<String>,
    /// The gatewayd version.
    pub version: String,
}

/// One row of `cluster_instances`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstanceRow {
    /// The instance's id.
    pub instance_id: String,
    /// When it first joined (server ms).
    pub started_at_ms: i64,
    /// Its last heartbeat (server ms).
    pub heartbeat_at_ms: i64,
    /// Where its HTTP listener is reached, if it said.
    pub advertise_url: Option<String>,
    /// Its gatewayd version.
    pub version: String,
    /// It announced it is stopping (SIGTERM).
    pub leaving: bool,
}

/// One row of `leases`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseRow {
    /// The lease's name.
    pub name: String,
    /// Its holder; `None` once released.
    pub owner: Option<String>,
    /// Grows by one on every change of holder.
    pub epoch: i64,
    /// When it lapses unless renewed (server ms).
    pub expires_at_ms: i64,
    /// When the holder acquired it (server ms).
    pub acquired_at_ms: Option<i64>,
}

/// A lease this instance holds after an acquire or a renewal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseHeld {
    /// The lease's name.
    pub name: String,
    /// The epoch it is held at.
    pub epoch: i64,
    /// When it lapses unless renewed (server ms).
    pub expires_at_ms: i64,
}

/// An instance holding an open WebChat socket of a chat, and where it is reached.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SocketHolder {
    /// The instance's id.
    pub instance_id: String,
    /// Its `advertise_url`.
    pub advertise_url: String,
}

/// One bucket of a rate-limit take ([`ClusterStore::rate_take`]): a GCRA in whole
/// milliseconds of the server's clock.
///
/// A take at server time `now` passes a bucket when `now >= tat - tolerance_ms` and no pause is
/// in force (`now >= paused_until`), and then moves its `tat` to `max(tat, now) +
/// interval_ms`. With `tolerance_ms = interval_ms * (burst - 1)` that is a token bucket of
/// `burst` tokens refilled one per `interval_ms`: at most `burst + floor(w / interval_ms)` takes
/// pass in any window of `w` ms. A bucket with `interval_ms == 0` is a pause check only: it is
/// read, never locked or moved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RateBucket {
    /// The row's key: `<channel>` for a channel, `<channel>:<chat>` for one chat.
    pub key: String,
    /// The emission interval `T` in ms (0: no limit, pauses only).
    pub interval_ms: i64,
    /// How far ahead of `now` the `tat` may run, `T * (burst - 1)`, in ms.
    pub tolerance_ms: i64,
}

/// The answer to a take.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RateTake {
    /// Every bucket passed and moved, at this server time (ms).
    Granted {
        /// The server's clock when the take passed.
        at_ms: i64,
        /// The new `tat` of each limited bucket, by key.
        tats: Vec<(String, i64)>,
    },
    /// At least one bucket refused (or is paused); nothing moved. Try again after `ms`.
    Wait {
        /// How long until the refusing buckets would pass, at least 1 ms.
        ms: i64,
        /// The bucket that holds the take longest.
        key: String,
        /// A pause (not the bucket's rate) is what holds it.
        paused: bool,
    },
}

/// One row of `rate_buckets`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RateBucketRow {
    /// The key.
    pub key: String,
    /// Its theoretical arrival time (server ms).
    pub tat_ms: i64,
    /// Until when a platform's 429 pauses it (server ms; in the past when none).
    pub paused_until_ms: i64,
}

/// Coordination of several instances on one shared database.
#[async_trait]
pub trait ClusterStore: Send + Sync + 'static {
    /// The database server's clock, in ms since the epoch.
    async fn server_now_ms(&self) -> Result<i64, StoreError>;

    /// Records (or refreshes) `me`'s heartbeat at the server's clock; clears `leaving`.
    async fn heartbeat(&self, me: &InstanceInfo) -> Result<(), StoreError>;

    /// Marks `instance_id` as leaving (it stops heartbeating right after).
    async fn leave(&self, instance_id: &str) -> Result<(), StoreError>;

    /// Every instance row, newest heartbeat first (live or not; the caller judges by age).
    async fn instances(&self) -> Result<Vec<InstanceRow>, StoreError>;

    /// Deletes instance rows whose last heartbeat is older than `older_than`; returns how many.
    async fn forget_instances(&self, older_than: Duration) -> Result<u64, StoreError>;

    /// Acquires each of `names` that is free, released or expired, for `me`, for `ttl`; the
    /// epoch of each acquired lease grows by one. Returns the ones acquired (a name held by a
    /// live lease of anyone, `me` included, is not in the answer).
    async fn lease_acquire(
        &self,
        names: &[String],
        me: &str,
        ttl: Duration,
    ) -> Result<Vec<LeaseHeld>, StoreError>;

    /// Extends each of `names` that `me` still holds unexpired by `ttl` from now; returns those
    /// (a lease missing from the answer is lost).
    async fn lease_renew(
        &self,
        names: &[String],
        me: &str,
        ttl: Duration,
    ) -> Result<Vec<LeaseHeld>, StoreError>;

    /// Releases each of `names` that `me` holds (owner cleared, expiry in the past), so another
    /// instance may take it at once.
    async fn lease_release(&self, names: &[String], me: &str) -> Result<(), StoreError>;

    /// Every lease row, by name.
    async fn leases(&self) -> Result<Vec<LeaseRow>, StoreError>;

    /// Whether `fence` still holds (owner and epoch match and it has not expired).
    async fn fence_holds(&self, fence: &Fence) -> Result<bool, StoreError>;

    /// The lease's stored metadata (e.g. a poller's offset), whoever holds it.
    async fn lease_meta(&self, name: &str) -> Result<Option<String>, StoreError>;

    /// Stores `meta` on the fence's lease, only while the fence holds (else `Fenced`).
    async fn set_lease_meta(&self, fence: &Fence, meta: &str) -> Result<(), StoreError>;

    // The partitioned message path below has defaults that refuse, so a store that only
    // coordinates leases (a test double, a wrapper) need not implement it; the shared backend
    // implements every one.

    /// Commits an inbound message into `partition` (deduplicated as `Store::inbox_commit`
    /// does) and, for a new row, wakes the partition's owner (`NOTIFY gateway_inbox`, payload
    /// the partition) in the same transaction.
    async fn inbox_commit_in(
        &self,
        _msg: &InboundMessage,
        _partition: u32,
    ) -> Result<InboxOutcome, StoreError> {
        Err(unpartitioned())
    }

    /// Pending inbox rows of `partitions` (and of no partition when `unassigned`) that are not
    /// kept for pairing, oldest first (at most 1000), each with its partition.
    async fn inbox_pending_in(
        &self,
        _partitions: &[u32],
        _unassigned: bool,
    ) -> Result<Vec<(PendingInbound, Option<u32>)>, StoreError> {
        Err(unpartitioned())
    }

    /// Files a pending inbox row under `partition` (its session moved) and wakes its owner.
    async fn inbox_move(&self, _inbox_id: i64, _partition: u32) -> Result<(), StoreError> {
        Err(unpartitioned())
    }

    /// `Store::outbox_put` into `partition`.
    async fn outbox_put_in(
        &self,
        _reply: NewReply,
        _partition: u32,
    ) -> Result<OutboundMessage, StoreError> {
        Err(unpartitioned())
    }

    /// Pending outbox rows of `partitions` (and of no partition when `unassigned`), by id,
    /// each with its partition.
    async fn outbox_pending_in(
        &self,
        _partitions: &[u32],
        _unassigned: bool,
    ) -> Result<Vec<(OutboundMessage, Option<u32>)>, StoreError> {
        Err(unpartitioned())
    }

    /// Files a workflow run under `partition`.
    async fn run_set_partition(&self, _run: i64, _partition: u32) -> Result<(), StoreError> {
        Err(unpartitioned())
    }

    /// Unfinished workflow runs of `partitions` (and of no partition when `unassigned`).
    async fn runs_unfinished_in(
        &self,
        _partitions: &[u32],
        _unassigned: bool,
    ) -> Result<Vec<RunRecord>, StoreError> {
        Err(unpartitioned())
    }

    /// A dedicated connection listening for inbox wake-ups: each item is the partition a new
    /// row was filed under. The receiver ends when that connection is lost.
    async fn listen_inbox(&self) -> Result<tokio::sync::mpsc::Receiver<Option<u32>>, StoreError> {
        Err(unpartitioned())
    }

    /// Records that `me` holds an open WebChat socket of `chat_id`.
    async fn webchat_socket_opened(&self, chat_id: &str, me: &str) -> Result<(), StoreError>;

    /// Records that `me` holds no open WebChat socket of `chat_id` any more.
    async fn webchat_socket_closed(&self, chat_id: &str, me: &str) -> Result<(), StoreError>;

    /// Forgets every WebChat socket recorded for `me` (at start: a killed run left them).
    async fn webchat_sockets_clear(&self, me: &str) -> Result<u64, StoreError>;

    /// The instances other than `except` that hold an open WebChat socket of `chat_id`, among
    /// those whose heartbeat is younger than `alive_within` and that advertise a URL.
    async fn webchat_socket_holders(
        &self,
        chat_id: &str,
        except: &str,
        alive_within: Duration,
    ) -> Result<Vec<SocketHolder>, StoreError>;

    /// Turns this instance's periodic pruning on or off (on by default): in a cluster only the
    /// holder of the scheduler's lease prunes.
    fn set_pruning(&self, on: bool);

    /// Takes one token from every bucket of `buckets` at the server's clock, all or none: the
    /// limited rows are locked in key order (so concurrent takes never deadlock), checked, and
    /// moved together in one transaction.
    async fn rate_take(&self, buckets: &[RateBucket]) -> Result<RateTake, StoreError>;

    /// Pauses bucket `key` for `pause_ms` from the server's now (a pause never shortens one
    /// already in force); returns when it ends (server ms).
    async fn rate_pause(&self, key: &str, pause_ms: i64) -> Result<i64, StoreError>;

    /// The rows of `keys` that exist, by key.
    async fn rate_buckets(&self, keys: &[String]) -> Result<Vec<RateBucketRow>, StoreError>;
}
