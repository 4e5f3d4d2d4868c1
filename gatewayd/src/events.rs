//! The events bus: every state change the operator may want to see, broadcast to whoever listens.
//!
//! Publishing never blocks and never fails: a bus with no listener drops the event, and a listener
//! that falls behind is told how many events it missed (tokio's `Lagged`) instead of slowing the
//! gateway. Events carry ids and counts, never message secrets.

use tokio::sync::broadcast;

use crate::message::{ChannelKind, SessionKey, UserId};

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

/// The bus. Cloning shares it.
#[derive(Debug, Clone)]
pub struct EventBus {
    tx: broadcast::Sender<Event>,
}

impl EventBus {
    /// A bus that keeps `capacity` events for slow listeners.
    pub fn new(capacity: usize) -> Self {
        let (tx, _) = broadcast::channel(capacity.max(1));
        Self { tx }
    }

    /// Publishes an event; never blocks.
    pub fn publish(&self, event: Event) {
        let _ = self.tx.send(event);
    }

    /// A new listener that sees events from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.tx.subscribe()
    }
}
