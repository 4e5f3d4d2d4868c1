//! The events bus: every state change the operator may want to see, broadcast to whoever listens.
//!
//! Publishing never blocks and never fails: a bus with no listener drops the event, and a listener
//! that falls behind is told how many events it missed (tokio's `Lagged`) instead of slowing the
//! gateway. Events carry ids and counts, never message texts or secrets. The bus also counts
//! traffic as it publishes ([`Traffic`]) and feeds the Prometheus counters, so totals and rates
//! never depend on a listener keeping up.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use tokio::sync::broadcast;

use crate::message::{ChannelKind, SessionKey, UserId};
use crate::store::{NodeStatus, RunStatus};

/// Something that happened in the gateway.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// An inbound message was committed to the inbox.
    MessageIn {
        /// Inbox row id.
        inbox_id: i64,
        /// Channel it arrived on.
        channel: ChannelKind,
        /// Chat it arrived in.
        chat_id: String,
    },
    /// A reply was delivered to its channel.
    MessageOut {
        /// Outbox row id.
        outbox_id: i64,
        /// Channel it was sent on.
        channel: ChannelKind,
        /// Chat it was sent to.
        chat_id: String,
    },
    /// A session became resident.
    SessionCreated {
        /// The session.
        session: SessionKey,
    },
    /// A session was evicted from memory (its history stays stored).
    SessionEvicted {
        /// The session.
        session: SessionKey,
        /// `lru`, `idle`, or `reset`.
        reason: &'static str,
    },
    /// An agent turn finished and was committed.
    TurnCommitted {
        /// The session.
        session: SessionKey,
        /// Inbox row id of the message it answers.
        inbox_id: i64,
    },
    /// Two users were merged.
    IdentityLinked {
        /// The user that remains.
        user: UserId,
        /// The user merged into it.
        merged: UserId,
    },
    /// An address was split off into a new user.
    IdentityUnlinked {
        /// The user the address left.
        user: UserId,
        /// The new user that holds it.
        new_user: UserId,
    },
    /// A send attempt failed and will be retried.
    DeliveryFailed {
        /// Outbox row id.
        outbox_id: i64,
        /// Channel.
        channel: ChannelKind,
        /// Attempts so far.
        attempts: u32,
        /// The error, with secrets removed.
        error: String,
    },
    /// A channel's health changed.
    ChannelStateChanged {
        /// The channel.
        channel: ChannelKind,
        /// The new state's name (`connected`, `reconnecting`, `reauth_needed`, `down`, ...).
        state: &'static str,
        /// The error that caused it, if any.
        error: Option<String>,
    },
    /// A platform asked us to slow down (429); the chat or channel is paused.
    RateLimited {
        /// The channel.
        channel: ChannelKind,
        /// The chat paused, or `None` when the whole channel is.
        chat_id: Option<String>,
        /// For how long, in milliseconds.
        pause_ms: u64,
    },
    /// Dead letters were put back in the queue.
    DeadLettersRetried {
        /// The channel, when all of one channel's were retried.
        channel: Option<ChannelKind>,
        /// How many.
        count: u64,
    },
    /// A workflow run started or finished.
    RunChanged {
        /// The run id.
        run: i64,
        /// The workflow.
        workflow: String,
        /// Its new state.
        status: RunStatus,
        /// Why it failed.
        error: Option<String>,
    },
    /// A node of a workflow run changed state.
    NodeChanged {
        /// The run id.
        run: i64,
        /// The node id.
        node: String,
        /// Its new state.
        status: NodeStatus,
        /// Its error, if it failed.
        error: Option<String>,
    },
    /// A reply became a dead letter.
    DeadLettered {
        /// Outbox row id.
        outbox_id: i64,
        /// Channel.
        channel: ChannelKind,
        /// The last error.
        error: String,
    },
}

/// Seconds of history kept for rates.
const WINDOW: usize = 64;

/// A per-second counter over the last [`WINDOW`] seconds, lock-free.
#[derive(Debug)]
struct RateWindow {
    total: AtomicU64,
    /// Per slot: the second it counts (high 32 bits) and its count (low 32 bits).
    slots: [AtomicU64; WINDOW],
}

impl RateWindow {
    fn new() -> Self {
        Self {
            total: AtomicU64::new(0),
            slots: std::array::from_fn(|_| AtomicU64::new(0)),
        }
    }

    fn add(&self, second: u64) {
        self.total.fetch_add(1, Ordering::Relaxed);
        let slot = &self.slots[(second as usize) % WINDOW];
        let tag = (second & 0xffff_ffff) << 32;
        let mut current = slot.load(Ordering::Relaxed);
        loop {
            let next = if current & !0xffff_ffff == tag {
                current + 1
            } else {
                tag | 1
            };
            match slot.compare_exchange_weak(current, next, Ordering::Relaxed, Ordering::Relaxed) {
                Ok(_) => return,
                Err(seen) => current = seen,
            }
        }
    }

    /// Events per second over the `seconds` full seconds before `now_second`.
    fn rate(&self, now_second: u64, seconds: u64) -> f64 {
        let seconds = seconds.clamp(1, WINDOW as u64 - 1);
        let mut sum = 0;
        for back in 1..=seconds {
            let Some(second) = now_second.checked_sub(back) else {
                break;
            };
            let slot = self.slots[(second as usize) % WINDOW].load(Ordering::Relaxed);
            if slot >> 32 == second & 0xffff_ffff {
                sum += slot & 0xffff_ffff;
            }
        }
        sum as f64 / seconds as f64
    }
}

/// Traffic totals and rates, counted as events are published.
#[derive(Debug)]
pub struct Traffic {
    started: Instant,
    messages_in: RateWindow,
    messages_out: RateWindow,
}

impl Traffic {
    fn second(&self) -> u64 {
        self.started.elapsed().as_secs()
    }

    /// Inbound messages committed since start.
    pub fn messages_in(&self) -> u64 {
        self.messages_in.total.load(Ordering::Relaxed)
    }

    /// Replies delivered since start.
    pub fn messages_out(&self) -> u64 {
        self.messages_out.total.load(Ordering::Relaxed)
    }

    /// (in, out) per second over the last minute (or since start, if shorter).
    pub fn rates(&self) -> (f64, f64) {
        let now = self.second();
        let span = now.clamp(1, 60);
        (
            self.messages_in.rate(now, span),
            self.messages_out.rate(now, span),
        )
    }
}

/// The bus. Cloning shares it.
#[derive(Debug, Clone)]
pub struct EventBus {
    tx: broadcast::Sender<Event>,
    traffic: Arc<Traffic>,
}

impl EventBus {
    /// A bus that keeps `capacity` events for slow listeners.
    pub fn new(capacity: usize) -> Self {
        let (tx, _) = broadcast::channel(capacity.max(1));
        Self {
            tx,
            traffic: Arc::new(Traffic {
                started: Instant::now(),
                messages_in: RateWindow::new(),
                messages_out: RateWindow::new(),
            }),
        }
    }

    /// The traffic counters.
    pub fn traffic(&self) -> &Traffic {
        &self.traffic
    }

    /// Publishes an event; never blocks.
    pub fn publish(&self, event: Event) {
        match &event {
            Event::MessageIn { channel, .. } => {
                self.traffic.messages_in.add(self.traffic.second());
                metrics::counter!("gateway_messages_in_total", "channel" => channel.as_str())
                    .increment(1);
            }
            Event::MessageOut { channel, .. } => {
                self.traffic.messages_out.add(self.traffic.second());
                metrics::counter!("gateway_messages_out_total", "channel" => channel.as_str())
                    .increment(1);
            }
            Event::DeadLettered { channel, .. } => {
                metrics::counter!("gateway_dead_lettered_total", "channel" => channel.as_str())
                    .increment(1);
            }
            Event::DeliveryFailed { channel, .. } => {
                metrics::counter!("gateway_delivery_failures_total", "channel" => channel.as_str())
                    .increment(1);
            }
            _ => {}
        }
        let _ = self.tx.send(event);
    }

    /// A new listener that sees events from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.tx.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_count_the_seconds_before_now() {
        let w = RateWindow::new();
        for _ in 0..30 {
            w.add(10);
        }
        for _ in 0..10 {
            w.add(11);
        }
        w.add(12);
        assert_eq!(w.total.load(Ordering::Relaxed), 41);
        assert_eq!(w.rate(12, 2), 20.0, "seconds 10 and 11");
        assert_eq!(w.rate(12, 1), 10.0);
        // Slots are reused after the window: old counts do not leak into new seconds.
        w.add(10 + WINDOW as u64);
        assert_eq!(w.rate(11 + WINDOW as u64, 1), 1.0);
    }
}
