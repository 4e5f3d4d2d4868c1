//! The inbox: where every inbound message is committed before its channel is acknowledged.
//!
//! [`Inbox::commit`] makes the message durable and deduplicates it by
//! `(channel, channel_message_id)`; only after it returns may an adapter acknowledge (a webhook's
//! 2xx, a WebChat `ack`). [`Inbox::dispatch`] then hands a new message to the router. A message
//! that is committed but not finished — the daemon stopped, or routing failed — is replayed by
//! [`Inbox::replay`] at the next start, so an acknowledged message is never lost.

use std::sync::Arc;

use crate::events::{Event, EventBus};
use crate::message::InboundMessage;
use crate::session::router::Router;
use crate::store::{InboxOutcome, SharedStore, StoreError};

/// A committed inbound message, ready to dispatch.
#[derive(Debug)]
pub struct Committed {
    /// Inbox row id (of the first copy, for a duplicate).
    pub inbox_id: i64,
    /// Whether this was a repeat of a message already committed.
    pub duplicate: bool,
    message: Option<InboundMessage>,
}

/// The inbox.
pub struct Inbox {
    store: SharedStore,
    router: Arc<Router>,
    events: EventBus,
}

impl Inbox {
    /// An inbox over `store` that dispatches to `router`.
    pub fn new(store: SharedStore, router: Arc<Router>, events: EventBus) -> Self {
        Self {
            store,
            router,
            events,
        }
    }

    /// Commits `msg` durably; a repeat is reported, not stored again.
    pub async fn commit(&self, msg: InboundMessage) -> Result<Committed, StoreError> {
        Ok(match self.store.inbox_commit(&msg).await? {
            InboxOutcome::New(inbox_id) => {
                self.events.publish(Event::MessageIn {
                    inbox_id,
                    channel: msg.channel,
                    chat_id: msg.chat_id.clone(),
                });
                Committed {
                    inbox_id,
                    duplicate: false,
                    message: Some(msg),
                }
            }
            InboxOutcome::Duplicate(inbox_id) => {
                tracing::debug!(message = "Duplicate inbound message ignored.", channel = %msg.channel, inbox_id);
                Committed {
                    inbox_id,
                    duplicate: true,
                    message: None,
                }
            }
        })
    }

    /// Hands a newly committed message to its session. A failure is logged; the message stays
    /// pending and is replayed at the next start.
    pub async fn dispatch(&self, committed: Committed) {
        let Some(msg) = committed.message else { return };
        if let Err(e) = self.router.route(committed.inbox_id, msg).await {
            tracing::error!(message = "Message committed but not routed; it is replayed at next start.", inbox_id = committed.inbox_id, error = %e);
        }
    }

    /// Commits then dispatches; returns whether it was a duplicate.
    pub async fn accept(&self, msg: InboundMessage) -> Result<bool, StoreError> {
        let committed = self.commit(msg).await?;
        let duplicate = committed.duplicate;
        self.dispatch(committed).await;
        Ok(duplicate)
    }

    /// Routes every committed message that has no finished turn, oldest first.
    pub async fn replay(&self) -> Result<usize, StoreError> {
        let pending = self.store.inbox_pending().await?;
        let n = pending.len();
        for p in pending {
            if let Err(e) = self.router.route(p.inbox_id, p.message).await {
                tracing::error!(message = "Cannot replay a pending message.", inbox_id = p.inbox_id, error = %e);
            }
        }
        Ok(n)
    }
}
