//! Dead letters: replies that could not be delivered, kept durably with their error history
//! until the operator retries or drops them.
//!
//! A dead letter is an outbox row with status `dead`. There is no count limit and nothing drops
//! one except the operator's [`Delivery::drop_dead`] (which keeps the row as `dropped`). Retrying
//! moves rows back to `pending` with their attempts reset and hands them to their lanes; a
//! channel that recovers retries its own automatically (see [`Delivery`]).

use crate::events::Event;
use crate::message::ChannelKind;
use crate::store::{AttemptError, DeadLetter, DeadSelector, StoreError};

use super::Delivery;

impl Delivery {
    /// Dead letters, oldest first, optionally of one channel, after the id cursor `after`.
    pub async fn list_dead(
        &self,
        channel: Option<ChannelKind>,
        after: Option<i64>,
        limit: usize,
    ) -> Result<Vec<DeadLetter>, StoreError> {
        self.inner.store.dead_letters(channel, after, limit).await
    }

    /// One dead letter with its error history.
    pub async fn show_dead(&self, id: i64) -> Result<(DeadLetter, Vec<AttemptError>), StoreError> {
        self.inner.store.dead_letter(id).await
    }

    /// Puts the selected dead letters back in their lanes; returns how many.
    pub async fn retry_dead(&self, selector: &DeadSelector) -> Result<u64, StoreError> {
        let rows = self.inner.store.retry_dead(selector).await?;
        let n = rows.len() as u64;
        if n > 0 {
            tracing::info!(message = "Dead letters retried.", count = n);
            self.inner.events.publish(Event::DeadLettersRetried {
                channel: match selector {
                    DeadSelector::Channel { channel, .. } => Some(*channel),
                    DeadSelector::Ids(_) => None,
                },
                count: n,
            });
            self.enqueue(rows);
        }
        Ok(n)
    }

    /// Drops the selected dead letters; returns how many.
    pub async fn drop_dead(&self, selector: &DeadSelector) -> Result<u64, StoreError> {
        let n = self.inner.store.drop_dead(selector).await?;
        if n > 0 {
            tracing::info!(message = "Dead letters dropped by the operator.", count = n);
        }
        Ok(n)
    }
}
