//! Delivery: takes committed outbox rows to their channel, in order per chat, within the
//! channel's limits, retrying what may pass and dead-lettering what cannot.
//!
//! Each `(channel, chat)` has a lane: a task with its own queue that sends one reply at a time,
//! so replies in one chat keep their order while chats proceed in parallel, and one slow chat
//! never blocks another. A lane that has been idle for [`LANE_IDLE`] removes itself under the
//! same lock that [`Delivery::enqueue`] takes, so no row is ever handed to a lane that is gone.
//!
//! For each reply a lane splits it to the channel's limit ([`split`]), and for each chunk waits
//! for the channel to be sendable ([`health`]: a credentials problem holds the whole channel) and
//! for its rate-limit tokens ([`rate_limit`]), then sends. Errors by class: retryable → backoff
//! with full jitter, or exactly the platform's `Retry-After` (pausing that chat, or the channel
//! for a global limit), up to `max_attempts`, then a dead letter; auth → the channel goes
//! `ReauthNeeded` and the reply waits, not dead-lettered; permanent → a dead letter at once.
//! Dead letters ([`dead_letter`]) are rows with status `dead`: never dropped by a limit, retried
//! by the operator or automatically when their channel recovers. Every row handed here is already
//! committed, and ends `delivered` or `dead`; a row still pending at shutdown stays pending and is
//! sent again at the next start.
//!
//! A panic while sending restarts the lane in place: its queue lives outside the restart, so
//! no row is lost, and the row in hand is sent again (its progress so far is kept). A row that
//! panics [`MAX_SEND_PANICS`] times becomes a dead letter with an internal-error reason, so it
//! never holds its chat forever; the operator can retry it.
//!
//! In multi-instance mode each row handed over with its partition ([`Delivery::enqueue_in`],
//! [`Delivery::enqueue_parted`]) is queued at most once, and is sent only while this instance
//! owns that partition: checked before each chunk, a row whose partition moved is dropped from
//! its lane and stays pending for the new owner, which queues it when it gains the partition.

pub mod dead_letter;
pub mod health;
mod lane;
pub mod rate_limit;
pub mod split;

use std::collections::HashMap;
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use futures_util::FutureExt as _;
use rand::Rng;
use tokio::sync::{Notify, mpsc, watch};

use crate::events::{Event, EventBus};
use crate::message::{ChannelKind, OutboundMessage};
use crate::send::{ChannelSender, ErrorClass, OutgoingChunk, SendError};
use crate::store::{DeadSelector, SharedStore};
use crate::supervise::{DELIVERY_LANE, Supervisor, panic_message};
use health::{ChannelHealth, HealthState, HealthStatus};
use rate_limit::{BucketState, ChannelLimits, RateSettings};

/// How long an empty lane waits for more work before it stops.
pub const LANE_IDLE: Duration = Duration::from_secs(30);

/// Panics while sending one row after which it becomes a dead letter.
pub const MAX_SEND_PANICS: u32 = 3;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Retry settings.
#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    /// Attempts before a reply becomes a dead letter.
    pub max_attempts: u32,
    /// Base delay of the exponential backoff.
    pub base: Duration,
    /// Longest delay.
    pub max: Duration,
}

impl RetryPolicy {
    /// Full-jitter backoff before attempt `attempts + 1`: uniform in `[0, min(max, base·2^n))`.
    pub fn backoff(&self, attempts: u32) -> Duration {
        let cap = self
            .base
            .saturating_mul(1u32 << attempts.saturating_sub(1).min(20))
            .min(self.max);
        let cap_ms = u64::try_from(cap.as_millis()).unwrap_or(u64::MAX).max(1);
        Duration::from_millis(rand::rng().random_range(0..cap_ms))
    }
}

/// One channel as delivery drives it.
pub struct ChannelRuntime {
    sender: Arc<dyn ChannelSender>,
    health: ChannelHealth,
    limits: ChannelLimits,
}

/// A channel's buckets as the operator sees them.
#[derive(Debug, Clone, PartialEq)]
pub struct ChannelBuckets {
    /// The channel.
    pub channel: ChannelKind,
    /// The settings in force.
    pub settings: RateSettings,
    /// The channel-wide bucket, if the channel has a limit or a pause.
    pub channel_bucket: Option<BucketState>,
    /// The busiest per-chat buckets.
    pub chats: Vec<BucketState>,
    /// Times any send on the channel had to wait.
    pub throttled_total: u64,
}

type LaneKey = (ChannelKind, String);

/// How many rows finished here a clustered instance remembers (see `Delivery::settled`).
const FINISHED_KEPT: usize = 4096;

struct Lane {
    /// Rows are boxed: the channel allocates its slots in blocks of 32 up front, so a lane
    /// costs 32 pointers rather than 32 whole rows until it is busy.
    tx: mpsc::UnboundedSender<Box<OutboundMessage>>,
    wake: Arc<Notify>,
}

struct Inner {
    store: SharedStore,
    events: EventBus,
    channels: HashMap<ChannelKind, ChannelRuntime>,
    /// The channels in the order they were given (the registry's display order).
    order: Vec<ChannelKind>,
    policy: RetryPolicy,
    lanes: Mutex<HashMap<LaneKey, Lane>>,
    shutdown: watch::Receiver<bool>,
    lanes_done: Mutex<Option<mpsc::Sender<()>>>,
    supervisor: Arc<Supervisor>,
    /// How long the store keeps inbound messages (`store.dedupe_window`), in ms: a reply window
    /// longer than this cannot be judged from the store when no message is on record.
    inbound_kept_ms: std::sync::atomic::AtomicI64,
    /// Multi-instance mode ([`Delivery::set_cluster`]).
    cluster: std::sync::OnceLock<Arc<crate::cluster::Cluster>>,
    /// Multi-instance mode: the rows queued here (by id), each with its partition and whether
    /// the lane left it pending for another instance.
    queued: Mutex<HashMap<i64, (Option<u32>, bool)>>,
    /// Multi-instance mode: the last [`FINISHED_KEPT`] rows sent or dead-lettered here.
    finished: Mutex<(
        std::collections::VecDeque<i64>,
        std::collections::HashSet<i64>,
    )>,
}

/// The delivery service. Cloning shares it.
#[derive(Clone)]
pub struct Delivery {
    inner: Arc<Inner>,
    shutdown_tx: Arc<watch::Sender<bool>>,
    lanes_done_rx: Arc<tokio::sync::Mutex<mpsc::Receiver<()>>>,
}

impl Delivery {
    /// Delivery over the given channel senders, each with its rate settings.
    pub fn new(
        store: SharedStore,
        events: EventBus,
        senders: Vec<(Arc<dyn ChannelSender>, RateSettings)>,
        policy: RetryPolicy,
    ) -> Self {
        Self::supervised(store, events, senders, policy, Supervisor::new())
    }

    /// [`Delivery::new`], reporting lane panics to `supervisor`.
    pub fn supervised(
        store: SharedStore,
        events: EventBus,
        senders: Vec<(Arc<dyn ChannelSender>, RateSettings)>,
        policy: RetryPolicy,
        supervisor: Arc<Supervisor>,
    ) -> Self {
        let (shutdown_tx, shutdown) = watch::channel(false);
        let (done_tx, done_rx) = mpsc::channel(1);
        let order: Vec<ChannelKind> = senders.iter().map(|(s, _)| s.kind()).collect();
        let channels = senders
            .into_iter()
            .map(|(sender, rates)| {
                let kind = sender.kind();
                let runtime = ChannelRuntime {
                    health: ChannelHealth::new(kind, events.clone()),
                    limits: ChannelLimits::new(kind, rates),
                    sender,
                };
                (kind, runtime)
            })
            .collect();
        Self {
            inner: Arc::new(Inner {
                store,
                events,
                channels,
                order,
                policy,
                lanes: Mutex::new(HashMap::new()),
                shutdown,
                lanes_done: Mutex::new(Some(done_tx)),
                supervisor,
                inbound_kept_ms: std::sync::atomic::AtomicI64::new(i64::MAX),
                cluster: std::sync::OnceLock::new(),
                queued: Mutex::new(HashMap::new()),
                finished: Mutex::new(Default::default()),
            }),
            shutdown_tx: Arc::new(shutdown_tx),
            lanes_done_rx: Arc::new(tokio::sync::Mutex::new(done_rx)),
        }
    }

    /// Says how long the store keeps inbound messages (`store.dedupe_window`; unbounded by
    /// default). When it is shorter than a channel's reply window, a reply to a chat with no
    /// message on record is sent and left to the platform to judge, since the message that
    /// opened the window may have been pruned.
    pub fn set_inbound_kept(&self, kept: Duration) {
        self.inner.inbound_kept_ms.store(
            i64::try_from(kept.as_millis()).unwrap_or(i64::MAX),
            std::sync::atomic::Ordering::Relaxed,
        );
    }

    /// Multi-instance mode: rows filed under a partition are sent only while this instance
    /// owns it, and a row already queued here is not queued twice.
    pub fn set_cluster(&self, cluster: Arc<crate::cluster::Cluster>) {
        let _ = self.inner.cluster.set(cluster);
    }

    /// [`Delivery::enqueue`] for rows filed under `partition` (`None`: under none, sent by
    /// whoever has them).
    pub fn enqueue_in(&self, rows: Vec<OutboundMessage>, partition: Option<u32>) {
        self.enqueue_parted(rows.into_iter().map(|r| (r, partition)).collect());
    }

    /// [`Delivery::enqueue`] for rows each with its partition.
    pub fn enqueue_parted(&self, rows: Vec<(OutboundMessage, Option<u32>)>) {
        if self.inner.cluster.get().is_none() {
            return self.enqueue(rows.into_iter().map(|(r, _)| r).collect());
        }
        let fresh: Vec<OutboundMessage> = {
            let mut queued = lock(&self.inner.queued);
            let finished = lock(&self.inner.finished);
            rows.into_iter()
                // Sent or dead-lettered here since the caller read it as pending.
                .filter(|(r, _)| !finished.1.contains(&r.id))
                .filter_map(|(r, p)| match queued.entry(r.id) {
                    std::collections::hash_map::Entry::Occupied(_) => None,
                    std::collections::hash_map::Entry::Vacant(v) => {
                        v.insert((p, false));
                        Some(r)
                    }
                })
                .collect()
        };
        self.enqueue(fresh);
    }

    /// Multi-instance mode: whether the row may be sent by this instance now (its partition,
    /// if it has one, is owned here).
    fn may_send(&self, id: i64) -> bool {
        let Some(cluster) = self.inner.cluster.get() else {
            return true;
        };
        let mut queued = lock(&self.inner.queued);
        let Some(entry) = queued.get_mut(&id) else {
            return true;
        };
        let Some(p) = entry.0 else {
            return true;
        };
        let owned = cluster.fence_for(p).is_some();
        // Left pending for the new owner, so a later gain of the partition queues it again.
        entry.1 = !owned;
        owned
    }

    /// The lane is done with row `id`: sent, dead, or left pending for another instance. A
    /// row it finished (not one it left pending) is remembered for a while, so a read of the
    /// pending rows that raced with its send does not queue it again.
    fn settled(&self, id: i64) {
        if self.inner.cluster.get().is_none() {
            return;
        }
        let left = lock(&self.inner.queued).remove(&id).is_some_and(|e| e.1);
        if !left {
            let mut finished = lock(&self.inner.finished);
            if finished.1.insert(id) {
                finished.0.push_back(id);
            }
            while finished.0.len() > FINISHED_KEPT {
                if let Some(old) = finished.0.pop_front() {
                    finished.1.remove(&old);
                }
            }
        }
    }

    /// Hands committed outbox rows to their lanes, in order.
    pub fn enqueue(&self, rows: Vec<OutboundMessage>) {
        let mut lanes = lock(&self.inner.lanes);
        for row in rows {
            let key = (row.channel, row.chat_id.clone());
            let lane = lanes
                .entry(key.clone())
                .or_insert_with(|| self.spawn_lane(key.clone()));
            let Err(mpsc::error::SendError(row)) = lane.tx.send(Box::new(row)) else {
                continue;
            };
            if *self.inner.shutdown.borrow() {
                tracing::debug!(
                    message = "Shutting down; the row stays pending for the next start.",
                    outbox_id = row.id
                );
                continue;
            }
            // The lane is gone without removing itself: a new one takes the row.
            tracing::error!(message = "A delivery lane was gone; a new one takes its rows.", channel = %key.0, outbox_id = row.id);
            let lane = self.spawn_lane(key.clone());
            if let Err(e) = lane.tx.send(row) {
                tracing::error!(
                    message = "Delivery lane closed; row stays pending until restart.",
                    outbox_id = e.0.id
                );
            }
            lanes.insert(key, lane);
        }
    }

    /// Cuts short any backoff wait in the lane of `(channel, chat_id)`, e.g. when a WebChat
    /// client reconnects.
    pub fn nudge(&self, channel: ChannelKind, chat_id: &str) {
        if let Some(lane) = lock(&self.inner.lanes).get(&(channel, chat_id.to_owned())) {
            lane.wake.notify_one();
        }
    }

    fn nudge_channel(&self, channel: ChannelKind) {
        for ((c, _), lane) in lock(&self.inner.lanes).iter() {
            if *c == channel {
                lane.wake.notify_one();
            }
        }
    }

    fn spawn_lane(&self, key: LaneKey) -> Lane {
        let (tx, rx) = mpsc::unbounded_channel();
        let wake = Arc::new(Notify::new());
        let done = lock(&self.inner.lanes_done).clone();
        let this = self.clone();
        let lane_wake = wake.clone();
        tokio::spawn(async move {
            this.run_lane(key, rx, lane_wake).await;
            drop(done);
        });
        Lane { tx, wake }
    }

    /// Every channel's health.
    pub fn channels(&self) -> Vec<HealthStatus> {
        let mut out: Vec<HealthStatus> = self
            .inner
            .channels
            .values()
            .filter_map(|c| c.health.status())
            .collect();
        out.sort_by_key(|s| self.position(s.channel));
        out
    }

    /// Every channel's buckets, with the `hottest` per-chat buckets each.
    pub fn rate_limits(&self, hottest: usize) -> Vec<ChannelBuckets> {
        let mut out: Vec<ChannelBuckets> = self
            .inner
            .channels
            .iter()
            .map(|(kind, c)| {
                let (channel_bucket, chats) = c.limits.buckets(hottest);
                ChannelBuckets {
                    channel: *kind,
                    settings: c.limits.settings(),
                    channel_bucket,
                    chats,
                    throttled_total: c.limits.throttled_total(),
                }
            })
            .collect();
        out.sort_by_key(|b| self.position(b.channel));
        out
    }

    /// Where `kind` comes in the display order.
    fn position(&self, kind: ChannelKind) -> usize {
        self.inner
            .order
            .iter()
            .position(|k| *k == kind)
            .unwrap_or(usize::MAX)
    }

    /// Keeps every channel's rate-limit buckets and pauses in the cluster's shared store, so
    /// that all instances together stay within them (see [`rate_limit`]).
    pub fn share_rate_limits(&self, store: &Arc<dyn crate::store::cluster::ClusterStore>) {
        for c in self.inner.channels.values() {
            c.limits.share(store.clone());
        }
    }

    /// Forgets idle per-chat buckets; called periodically.
    pub fn retain_recent(&self) {
        for c in self.inner.channels.values() {
            c.limits.retain_recent();
        }
    }

    /// Reconnects a channel: lifts a credentials hold, probes it, and on success marks it
    /// connected (which retries its dead letters). Returns the resulting state.
    pub async fn reconnect(&self, channel: ChannelKind) -> Result<HealthState, String> {
        let c = self
            .inner
            .channels
            .get(&channel)
            .ok_or_else(|| format!("channel {channel} is not enabled"))?;
        c.health.reconnecting();
        match c.sender.probe().await {
            Ok(()) => self.succeeded(channel, c),
            Err(e) => c
                .health
                .failed(e.class(), &e.to_string(), self.inner.policy.max),
        }
        self.nudge_channel(channel);
        Ok(c.health.state())
    }

    /// A channel's listener connected (or polled) successfully. On a recovery from an outage
    /// the channel's dead letters are retried.
    pub fn channel_succeeded(&self, kind: ChannelKind) {
        if let Some(c) = self.inner.channels.get(&kind) {
            self.succeeded(kind, c);
        }
    }

    /// A channel's listener failed; `retry_in` is when it tries again.
    pub fn channel_failed(
        &self,
        kind: ChannelKind,
        class: ErrorClass,
        error: &str,
        retry_in: Duration,
    ) {
        if let Some(c) = self.inner.channels.get(&kind) {
            c.health.failed(class, error, retry_in);
        }
    }

    /// Waits while the channel is held for re-authentication (its listener pauses too), or until
    /// `stop` turns true.
    pub async fn wait_sendable(&self, kind: ChannelKind, stop: &mut watch::Receiver<bool>) {
        if let Some(c) = self.inner.channels.get(&kind) {
            c.health.wait_sendable(stop).await;
        }
    }

    /// The state of one channel.
    pub fn state(&self, kind: ChannelKind) -> Option<HealthState> {
        self.inner.channels.get(&kind).map(|c| c.health.state())
    }

    /// Probes every channel that is `Down`; called periodically.
    pub async fn probe_down(&self) {
        for (kind, c) in &self.inner.channels {
            if c.health.state() != HealthState::Down {
                continue;
            }
            match c.sender.probe().await {
                Ok(()) => {
                    tracing::info!(message = "Probe succeeded; channel is back.", channel = %kind);
                    self.succeeded(*kind, c);
                    self.nudge_channel(*kind);
                }
                Err(e) => {
                    tracing::warn!(message = "Probe failed; channel stays down.", channel = %kind, error = %e);
                    c.health
                        .failed(e.class(), &e.to_string(), self.inner.policy.max);
                }
            }
        }
    }

    /// Marks a success; on a recovery, retries the channel's dead letters that a recovery can
    /// help (those that died of retryable or auth errors).
    fn succeeded(&self, kind: ChannelKind, c: &ChannelRuntime) {
        if !c.health.succeeded() {
            return;
        }
        let this = self.clone();
        tokio::spawn(async move {
            let selector = DeadSelector::Channel {
                channel: kind,
                classes: Some(vec![ErrorClass::Retryable, ErrorClass::Auth]),
            };
            match this.retry_dead(&selector).await {
                Ok(0) => {}
                Ok(n) => {
                    tracing::info!(message = "Channel recovered; its dead letters are retried.", channel = %kind, count = n)
                }
                Err(e) => {
                    tracing::error!(message = "Cannot retry dead letters after recovery.", channel = %kind, error = %e)
                }
            }
        });
    }

    /// Stops all lanes: in-flight sends finish, waiting rows stay pending for the next start.
    pub async fn shutdown(&self, grace: Duration) {
        let _ = self.shutdown_tx.send(true);
        lock(&self.inner.lanes_done).take();
        let mut rx = self.lanes_done_rx.lock().await;
        if tokio::time::timeout(grace, rx.recv()).await.is_err() {
            tracing::warn!(
                message = "Delivery lanes did not stop in time; their rows stay pending."
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::send::Sent;

    /// A sender with WhatsApp's 24-hour window that counts its sends and names each one.
    struct WindowSender {
        sent: Mutex<Vec<String>>,
    }

    #[async_trait::async_trait]
    impl ChannelSender for WindowSender {
        fn kind(&self) -> ChannelKind {
            ChannelKind::new("whatsapp")
        }

        fn split_limit(&self) -> Option<crate::send::Limit> {
            None
        }

        async fn send(&self, chunk: &OutgoingChunk<'_>) -> Result<Sent, SendError> {
            lock(&self.sent).push(chunk.message.chat_id.clone());
            Ok(Sent::with_id(format!("p-{}", chunk.message.id)))
        }

        fn reply_window(&self) -> Option<Duration> {
            Some(Duration::from_secs(24 * 3600))
        }
    }

    #[tokio::test]
    async fn a_reply_outside_the_reply_window_is_a_dead_letter_saying_why_and_is_never_sent() {
        use crate::message::{ChatType, InboundMessage, now_ms};
        use crate::store::{NewReply, ReceiptStatus};
        let dir = tempfile::tempdir().expect("tempdir");
        let store: SharedStore = Arc::new(
            crate::store::sqlite::SqliteStore::open(&dir.path().join("gateway.db"))
                .expect("open the store"),
        );
        let kind = ChannelKind::new("whatsapp");
        let hour = 3_600_000;
        for (chat, age) in [("stale", 25 * hour), ("fresh", hour)] {
            let msg = InboundMessage {
                channel: kind,
                channel_message_id: format!("in-{chat}"),
                chat_id: chat.to_owned(),
                chat_type: ChatType::Direct,
                sender_id: chat.to_owned(),
                text: "hi".to_owned(),
                reply_to: None,
                attachments: Vec::new(),
                sender_name: None,
                received_at_ms: now_ms() - age,
                mentioned: false,
            };
            store.inbox_commit(&msg).await.expect("commit");
        }
        let events = EventBus::new(64);
        let mut rx = events.subscribe();
        let sender = Arc::new(WindowSender {
            sent: Mutex::new(Vec::new()),
        });
        let delivery = Delivery::new(
            store.clone(),
            events,
            vec![(sender.clone(), RateSettings::default())],
            RetryPolicy {
                max_attempts: 3,
                base: Duration::from_millis(10),
                max: Duration::from_millis(50),
            },
        );
        let mut rows = Vec::new();
        for chat in ["never", "stale", "fresh"] {
            let row = store
                .outbox_put(NewReply {
                    channel: kind,
                    chat_id: chat.to_owned(),
                    text: format!("to {chat}"),
                    reply_to: None,
                })
                .await
                .expect("outbox_put");
            rows.push(row);
        }
        let ids: Vec<i64> = rows.iter().map(|r| r.id).collect();
        delivery.enqueue(rows);
        let mut dead = HashMap::new();
        let mut delivered = Vec::new();
        tokio::time::timeout(Duration::from_secs(10), async {
            while dead.len() + delivered.len() < 3 {
                match rx.recv().await.expect("events") {
                    Event::DeadLettered {
                        outbox_id, error, ..
                    } => {
                        dead.insert(outbox_id, error);
                    }
                    Event::MessageOut { outbox_id, .. } => delivered.push(outbox_id),
                    _ => {}
                }
            }
        })
        .await
        .expect("every reply ends delivered or dead");
        assert_eq!(
            delivered,
            vec![ids[2]],
            "only the fresh chat's reply goes out"
        );
        assert_eq!(
            *lock(&sender.sent),
            vec!["fresh".to_owned()],
            "nothing else is sent"
        );
        let never = &dead[&ids[0]];
        assert!(
            never.contains("24-hour reply window") && never.contains("no message from chat never"),
            "{never}"
        );
        let stale = &dead[&ids[1]];
        assert!(
            stale.contains("last wrote 25.0 hours ago") && stale.contains("template"),
            "{stale}"
        );
        let letter = store.dead_letter(ids[1]).await.expect("dead letter").0;
        assert_eq!(letter.class, ErrorClass::Permanent, "not retried");
        // The fresh reply's platform id was recorded, so the platform's receipt lands on it.
        let known = store
            .record_receipt(
                kind,
                &format!("p-{}", ids[2]),
                ReceiptStatus::Failed,
                Some("x"),
            )
            .await
            .expect("receipt");
        assert_eq!(known, Some(ids[2]));
        delivery.shutdown(Duration::from_secs(1)).await;

        // A store that keeps inbound messages for less than the window cannot tell "never wrote"
        // from "pruned": such a reply is sent, and the platform judges it.
        let events = EventBus::new(64);
        let mut rx = events.subscribe();
        let delivery = Delivery::new(
            store.clone(),
            events,
            vec![(sender.clone(), RateSettings::default())],
            RetryPolicy {
                max_attempts: 3,
                base: Duration::from_millis(10),
                max: Duration::from_millis(50),
            },
        );
        delivery.set_inbound_kept(Duration::from_secs(3600));
        let row = store
            .outbox_put(NewReply {
                channel: kind,
                chat_id: "pruned".to_owned(),
                text: "to pruned".to_owned(),
                reply_to: None,
            })
            .await
            .expect("outbox_put");
        let id = row.id;
        delivery.enqueue(vec![row]);
        tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                match rx.recv().await.expect("events") {
                    Event::MessageOut { outbox_id, .. } if outbox_id == id => return,
                    Event::DeadLettered { error, .. } => panic!("dead-lettered: {error}"),
                    _ => {}
                }
            }
        })
        .await
        .expect("sent");
        assert_eq!(
            lock(&sender.sent).last().map(String::as_str),
            Some("pruned")
        );
        delivery.shutdown(Duration::from_secs(1)).await;
        store.close().await;
    }

    #[test]
    fn backoff_is_capped_and_jittered() {
        let p = RetryPolicy {
            max_attempts: 5,
            base: Duration::from_millis(100),
            max: Duration::from_secs(1),
        };
        for attempts in 1..30 {
            let d = p.backoff(attempts);
            let cap = Duration::from_millis(100 * (1u64 << (attempts - 1).min(20))).min(p.max);
            assert!(d < cap, "attempt {attempts}: {d:?} >= {cap:?}");
        }
    }
}
