//! The outbox's front door for messages that answer no inbound message: a tool's
//! `send_message`, a workflow's `message` node, a run's report to its chat.
//!
//! Like every reply, such a message is committed to the outbox before delivery sees it, so it
//! is sent at least once and ends `delivered` or `dead`. A message to a user goes to the direct
//! chat they wrote from last.
//!
//! In multi-instance mode such a row is filed under the partition of its chat's group key
//! (`group:<channel>:<chat>`, whatever kind of chat it is), so it is sent by that partition's
//! owner, and re-sent by the next owner if this one dies first.

use async_trait::async_trait;

use crate::agent::tools::{MessageTarget, OutboxSink};
use crate::delivery::Delivery;
use crate::message::{ChannelKind, UserId};
use crate::store::{NewReply, SharedStore};

/// Commits and hands over messages that are not replies.
pub struct Outbox {
    store: SharedStore,
    delivery: Delivery,
    cluster: Option<std::sync::Arc<crate::cluster::Cluster>>,
}

impl Outbox {
    /// An outbox over `store` that hands rows to `delivery`.
    pub fn new(store: SharedStore, delivery: Delivery) -> Self {
        Self {
            store,
            delivery,
            cluster: None,
        }
    }

    /// Multi-instance mode: rows are filed under their chat's partition.
    #[must_use]
    pub fn with_cluster(mut self, cluster: std::sync::Arc<crate::cluster::Cluster>) -> Self {
        self.cluster = Some(cluster);
        self
    }
}

#[async_trait]
impl OutboxSink for Outbox {
    async fn send(&self, target: MessageTarget, text: String) -> Result<i64, String> {
        if text.trim().is_empty() {
            return Err("the message is empty".to_owned());
        }
        let (channel, chat_id) = match target {
            MessageTarget::Chat { channel, chat_id } => (channel, chat_id),
            MessageTarget::User(user) => self
                .store
                .last_direct_chat(user)
                .await
                .map_err(|e| e.to_string())?
                .ok_or_else(|| format!("user {user} has no direct chat with the gateway yet"))?,
        };
        let reply = NewReply {
            channel,
            chat_id,
            text,
            reply_to: None,
        };
        if let Some(cluster) = &self.cluster {
            let p = cluster.partition_of(&crate::message::SessionKey::Group(
                reply.channel,
                reply.chat_id.clone(),
            ));
            let row = cluster
                .store()
                .outbox_put_in(reply, p)
                .await
                .map_err(|e| e.to_string())?;
            let id = row.id;
            self.delivery.enqueue_in(vec![row], Some(p));
            return Ok(id);
        }
        let row = self
            .store
            .outbox_put(reply)
            .await
            .map_err(|e| e.to_string())?;
        let id = row.id;
        self.delivery.enqueue(vec![row]);
        Ok(id)
    }

    async fn direct_chat_of_user(
        &self,
        user: UserId,
    ) -> Result<Option<(ChannelKind, String)>, String> {
        self.store
            .last_direct_chat(user)
            .await
            .map_err(|e| e.to_string())
    }

    async fn is_direct_chat_of(
        &self,
        user: UserId,
        channel: ChannelKind,
        chat_id: &str,
    ) -> Result<bool, String> {
        self.store
            .is_direct_chat_of(user, channel, chat_id)
            .await
            .map_err(|e| e.to_string())
    }
}
