//! Delivery: takes committed outbox rows to their channel, in order per chat, retrying what may
//! pass and dead-lettering what cannot.
//!
//! Each `(channel, chat)` has a lane: a task with its own queue that sends one reply at a time,
//! so replies in one chat keep their order while chats proceed in parallel, and one slow chat
//! never blocks another. A lane that has been idle for [`LANE_IDLE`] removes itself under the
//! same lock that [`Delivery::enqueue`] takes, so no row is ever handed to a lane that is gone.
//! Every row handed here is already committed; it ends `delivered` or `dead` in the store. A row
//! still pending at shutdown stays pending and is sent again at the next start.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::Rng;
use tokio::sync::{Notify, mpsc, watch};

use crate::channels::{ChannelSender, ErrorClass, SendError};
use crate::events::{Event, EventBus};
use crate::message::{ChannelKind, OutboundMessage};
use crate::store::SharedStore;

/// How long an empty lane waits for more work before it stops.
pub const LANE_IDLE: Duration = Duration::from_secs(30);

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

type LaneKey = (ChannelKind, String);

struct Lane {
    tx: mpsc::UnboundedSender<OutboundMessage>,
    wake: Arc<Notify>,
}

struct Inner {
    store: SharedStore,
    events: EventBus,
    senders: HashMap<ChannelKind, Arc<dyn ChannelSender>>,
    policy: RetryPolicy,
    lanes: Mutex<HashMap<LaneKey, Lane>>,
    shutdown: watch::Receiver<bool>,
    lanes_done: Mutex<Option<mpsc::Sender<()>>>,
}

/// The delivery service. Cloning shares it.
#[derive(Clone)]
pub struct Delivery {
    inner: Arc<Inner>,
    shutdown_tx: Arc<watch::Sender<bool>>,
    lanes_done_rx: Arc<tokio::sync::Mutex<mpsc::Receiver<()>>>,
}

impl Delivery {
    /// Delivery over the given channel senders.
    pub fn new(
        store: SharedStore,
        events: EventBus,
        senders: Vec<Arc<dyn ChannelSender>>,
        policy: RetryPolicy,
    ) -> Self {
        let (shutdown_tx, shutdown) = watch::channel(false);
        let (done_tx, done_rx) = mpsc::channel(1);
        Self {
            inner: Arc::new(Inner {
                store,
                events,
                senders: senders.into_iter().map(|s| (s.kind(), s)).collect(),
                policy,
                lanes: Mutex::new(HashMap::new()),
                shutdown,
                lanes_done: Mutex::new(Some(done_tx)),
            }),
            shutdown_tx: Arc::new(shutdown_tx),
            lanes_done_rx: Arc::new(tokio::sync::Mutex::new(done_rx)),
        }
    }

    /// Hands committed outbox rows to their lanes, in order.
    pub fn enqueue(&self, rows: Vec<OutboundMessage>) {
        let Ok(mut lanes) = self.inner.lanes.lock() else {
            tracing::error!(
                message = "Delivery lanes lock poisoned; rows stay pending until restart."
            );
            return;
        };
        for row in rows {
            let key = (row.channel, row.chat_id.clone());
            let lane = lanes
                .entry(key.clone())
                .or_insert_with(|| self.spawn_lane(key));
            if let Err(e) = lane.tx.send(row) {
                tracing::error!(
                    message = "Delivery lane closed; row stays pending until restart.",
                    outbox_id = e.0.id
                );
            }
        }
    }

    /// Cuts short any backoff wait in the lane of `(channel, chat_id)`, e.g. when a WebChat
    /// client reconnects.
    pub fn nudge(&self, channel: ChannelKind, chat_id: &str) {
        if let Ok(lanes) = self.inner.lanes.lock() {
            if let Some(lane) = lanes.get(&(channel, chat_id.to_owned())) {
                lane.wake.notify_one();
            }
        }
    }

    fn spawn_lane(&self, key: LaneKey) -> Lane {
        let (tx, rx) = mpsc::unbounded_channel();
        let wake = Arc::new(Notify::new());
        let done = self.inner.lanes_done.lock().ok().and_then(|d| d.clone());
        let inner = self.inner.clone();
        let lane_wake = wake.clone();
        tokio::spawn(async move {
            run_lane(inner, key, rx, lane_wake).await;
            drop(done);
        });
        Lane { tx, wake }
    }

    /// Stops all lanes: in-flight sends finish, waiting rows stay pending for the next start.
    pub async fn shutdown(&self, grace: Duration) {
        let _ = self.shutdown_tx.send(true);
        if let Ok(mut d) = self.inner.lanes_done.lock() {
            d.take();
        }
        let mut rx = self.lanes_done_rx.lock().await;
        if tokio::time::timeout(grace, rx.recv()).await.is_err() {
            tracing::warn!(
                message = "Delivery lanes did not stop in time; their rows stay pending."
            );
        }
    }
}

async fn run_lane(
    inner: Arc<Inner>,
    key: LaneKey,
    mut rx: mpsc::UnboundedReceiver<OutboundMessage>,
    wake: Arc<Notify>,
) {
    let mut shutdown = inner.shutdown.clone();
    loop {
        if *shutdown.borrow() {
            return;
        }
        let next = tokio::select! {
            row = rx.recv() => row,
            _ = tokio::time::sleep(LANE_IDLE) => {
                let Ok(mut lanes) = inner.lanes.lock() else { return };
                if rx.is_empty() {
                    lanes.remove(&key);
                    return;
                }
                continue;
            }
            _ = shutdown.changed() => return,
        };
        let Some(row) = next else { return };
        deliver(&inner, row, &wake, &mut shutdown).await;
    }
}

async fn deliver(
    inner: &Inner,
    mut row: OutboundMessage,
    wake: &Notify,
    shutdown: &mut watch::Receiver<bool>,
) {
    let Some(sender) = inner.senders.get(&row.channel) else {
        let error = format!("channel {} is not enabled", row.channel);
        dead(inner, &row, &error).await;
        return;
    };
    loop {
        if *shutdown.borrow() {
            return;
        }
        let error = match sender.send(&row).await {
            Ok(()) => {
                if let Err(e) = inner.store.outbox_delivered(row.id).await {
                    tracing::error!(message = "Reply sent but not marked delivered; it may be sent again after a restart.", outbox_id = row.id, error = %e);
                }
                inner.events.publish(Event::MessageOut {
                    outbox_id: row.id,
                    channel: row.channel,
                    chat_id: row.chat_id.clone(),
                });
                return;
            }
            Err(e) => e,
        };
        row.attempts += 1;
        let text = error.to_string();
        let class = error.class();
        if class == ErrorClass::Permanent || row.attempts >= inner.policy.max_attempts {
            dead(inner, &row, &text).await;
            return;
        }
        tracing::warn!(message = "Send failed; will retry.", channel = %row.channel, outbox_id = row.id, attempts = row.attempts, class = ?class, error = %text);
        if let Err(e) = inner
            .store
            .outbox_attempt_failed(row.id, row.attempts, &text)
            .await
        {
            tracing::error!(message = "Cannot record a failed attempt.", outbox_id = row.id, error = %e);
        }
        inner.events.publish(Event::DeliveryFailed {
            outbox_id: row.id,
            channel: row.channel,
            attempts: row.attempts,
            error: text,
        });
        let delay = match &error {
            SendError::Retryable {
                retry_after: Some(d),
                ..
            } => *d,
            _ => inner.policy.backoff(row.attempts),
        };
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = wake.notified() => {}
            _ = shutdown.changed() => return,
        }
    }
}

async fn dead(inner: &Inner, row: &OutboundMessage, error: &str) {
    tracing::error!(message = "Reply moved to dead letters.", channel = %row.channel, outbox_id = row.id, attempts = row.attempts, error = %error);
    if let Err(e) = inner.store.outbox_dead(row.id, row.attempts, error).await {
        tracing::error!(message = "Cannot record a dead letter; the row stays pending.", outbox_id = row.id, error = %e);
    }
    inner.events.publish(Event::DeadLettered {
        outbox_id: row.id,
        channel: row.channel,
        error: error.to_owned(),
    });
}

#[cfg(test)]
mod tests {
    use super::*;

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
