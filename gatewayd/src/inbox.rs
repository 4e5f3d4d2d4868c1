//! The inbox: where every inbound message is committed before its channel is acknowledged.
//!
//! [`Inbox::commit`] makes the message durable and deduplicates it by
//! `(channel, channel_message_id)`; only after it returns may an adapter acknowledge (a webhook's
//! 2xx, a WebChat `ack`). [`Inbox::dispatch`] then hands a new message to the router. A message
//! that is committed but not finished — the daemon stopped, or routing failed — is replayed by
//! [`Inbox::replay`] at the next start, so an acknowledged message is never lost.
//!
//! While the disk is full the commit fails, so the adapter refuses the message (503, a WebChat
//! `unavailable` frame, a Telegram offset left where it was) and the sender tries again. A
//! message that was committed before the disk filled but whose routing or turn could not be
//! written is remembered as stranded; [`Inbox::recover_stranded`] routes it again as soon as
//! the store reports that writes succeed again, without a restart.

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
            self.store.note_stranded(committed.inbox_id);
            tracing::error!(message = "Message committed but not routed; it is routed again once the store recovers, or at next start.", inbox_id = committed.inbox_id, error = %e);
        }
    }

    /// Runs until the store closes: after each recovery from a full disk, routes again every
    /// pending message whose handling failed on a write. A turn that was committed meanwhile
    /// is not committed twice (the store refuses a second turn for one inbox row).
    pub async fn recover_stranded(self: Arc<Self>) {
        let mut recoveries = self.store.recoveries();
        while recoveries.changed().await.is_ok() {
            let stranded = match self.store.take_stranded().await {
                Ok(s) => s,
                Err(error) => {
                    tracing::warn!(message = "Cannot read the stranded messages; they are replayed at next start.", %error);
                    continue;
                }
            };
            if !stranded.is_empty() {
                tracing::info!(
                    message = "Routing stranded messages again.",
                    count = stranded.len()
                );
            }
            for p in stranded {
                if let Err(e) = self.router.route(p.inbox_id, p.message).await {
                    self.store.note_stranded(p.inbox_id);
                    tracing::error!(message = "Cannot route a stranded message.", inbox_id = p.inbox_id, error = %e);
                }
            }
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
