//! A lane's work: its loop over the queue of one chat (restarted in place after a panic), and
//! each reply's delivery, chunk by chunk, with the reply window, retries and dead letters.

use super::*;

impl Delivery {
    /// Runs a lane until it is idle, shut down or closed. A panic restarts its loop with the
    /// same queue and the row in hand; see the module docs.
    pub(super) async fn run_lane(
        &self,
        key: LaneKey,
        mut rx: mpsc::UnboundedReceiver<Box<OutboundMessage>>,
        wake: Arc<Notify>,
    ) {
        let mut in_hand: Option<(Box<OutboundMessage>, u32)> = None;
        loop {
            let served = AssertUnwindSafe(self.lane_loop(&key, &mut rx, &wake, &mut in_hand))
                .catch_unwind()
                .await;
            let panic = match served {
                Ok(()) => return,
                Err(p) => panic_message(&*p),
            };
            self.inner.supervisor.restarted(DELIVERY_LANE, &panic);
            let Some((row, panics)) = in_hand.take() else {
                continue;
            };
            let panics = panics + 1;
            if panics < MAX_SEND_PANICS {
                tracing::warn!(message = "Sending the reply again after a panic.", channel = %row.channel, outbox_id = row.id, panics);
                in_hand = Some((row, panics));
                continue;
            }
            let error = format!("internal error: sending this reply panicked {panics} times");
            let dead = AssertUnwindSafe(self.dead(&row, ErrorClass::Permanent, &error))
                .catch_unwind()
                .await;
            if let Err(p) = dead {
                tracing::error!(message = "Cannot dead-letter a reply that panics; it stays pending until restart.", outbox_id = row.id, panic = %panic_message(&*p));
            }
        }
    }

    pub(super) async fn lane_loop(
        &self,
        key: &LaneKey,
        rx: &mut mpsc::UnboundedReceiver<Box<OutboundMessage>>,
        wake: &Notify,
        in_hand: &mut Option<(Box<OutboundMessage>, u32)>,
    ) {
        let mut shutdown = self.inner.shutdown.clone();
        loop {
            if *shutdown.borrow() {
                return;
            }
            if in_hand.is_none() {
                let next = tokio::select! {
                    row = rx.recv() => row,
                    _ = tokio::time::sleep(LANE_IDLE) => {
                        let mut lanes = lock(&self.inner.lanes);
                        if rx.is_empty() {
                            lanes.remove(key);
                            return;
                        }
                        continue;
                    }
                    _ = shutdown.changed() => return,
                };
                let Some(row) = next else { return };
                *in_hand = Some((row, 0));
            }
            if let Some((row, _)) = in_hand.as_mut() {
                // Boxed so that an idle lane's task holds only this loop's state.
                Box::pin(self.deliver(row, wake, &mut shutdown)).await;
                self.settled(row.id);
            }
            *in_hand = None;
        }
    }

    pub(super) async fn deliver(
        &self,
        row: &mut OutboundMessage,
        wake: &Notify,
        shutdown: &mut watch::Receiver<bool>,
    ) {
        let inner = &self.inner;
        inner.supervisor.injector().send(&row.text);
        let Some(c) = inner.channels.get(&row.channel) else {
            let error = format!("channel {} is not enabled", row.channel);
            self.dead(row, ErrorClass::Permanent, &error).await;
            return;
        };
        let chunks = match c.sender.split_limit() {
            Some(limit) => split::split(&row.text, limit),
            None => vec![row.text.clone()],
        };
        let count = u32::try_from(chunks.len()).unwrap_or(u32::MAX);
        if row.chunks_sent == 0
            && let Some(window) = c.sender.reply_window()
            && let Some(why) = self.outside_window(row, window).await
        {
            self.dead(row, ErrorClass::Permanent, &why).await;
            return;
        }
        while row.chunks_sent < count {
            c.health.wait_sendable(shutdown).await;
            if *shutdown.borrow() {
                return;
            }
            tokio::select! {
                () = c.limits.acquire(&row.chat_id) => {}
                _ = shutdown.changed() => return,
            }
            if !self.may_send(row.id) {
                tracing::debug!(
                    message = "Not sending a reply of a partition this instance no longer owns; its owner sends it.",
                    outbox_id = row.id
                );
                return;
            }
            let index = row.chunks_sent;
            let Some(text) = chunks.get(index as usize) else {
                break;
            };
            let chunk = OutgoingChunk {
                message: row,
                text,
                index,
                count,
            };
            let error = match c.sender.send(&chunk).await {
                Ok(sent) => {
                    c.health.sent();
                    if let Some(platform_id) = sent.platform_id
                        && let Err(e) = inner
                            .store
                            .outbox_platform_id(row.id, index, row.channel, &platform_id)
                            .await
                    {
                        tracing::warn!(message = "Cannot record the platform's id of a sent chunk; its receipts will not show on the reply.", outbox_id = row.id, error = %e);
                    }
                    self.succeeded(row.channel, c);
                    row.chunks_sent += 1;
                    if row.chunks_sent < count
                        && let Err(e) = inner.store.outbox_progress(row.id, row.chunks_sent).await
                    {
                        tracing::warn!(message = "Cannot record chunk progress; a restart may resend chunks.", outbox_id = row.id, error = %e);
                    }
                    continue;
                }
                Err(e) => e,
            };
            let text = error.to_string();
            let class = error.class();
            row.attempts += 1;
            match &error {
                SendError::Permanent(_) => {
                    c.health.failed(class, &text, Duration::ZERO);
                    self.dead(row, class, &text).await;
                    return;
                }
                SendError::Auth(_) => {
                    // Held, not dead-lettered: the lane waits in `wait_sendable` until reconnect.
                    c.health.failed(class, &text, Duration::ZERO);
                    self.record_failure(row, class, &text).await;
                }
                SendError::Retryable {
                    retry_after,
                    global,
                    ..
                } => {
                    let delay = retry_after.unwrap_or_else(|| inner.policy.backoff(row.attempts));
                    // A chat's own 429 is that chat's business; anything else counts against
                    // the channel's health.
                    if retry_after.is_none() || *global {
                        c.health.failed(class, &text, delay);
                    }
                    if row.attempts >= inner.policy.max_attempts {
                        self.dead(row, class, &text).await;
                        return;
                    }
                    self.record_failure(row, class, &text).await;
                    if let Some(pause) = retry_after {
                        // The platform said exactly how long: pause that chat (or the channel),
                        // and `acquire` waits it out before the next attempt.
                        let chat = (!*global).then(|| row.chat_id.clone());
                        c.limits.pause_for(chat.as_deref(), *pause).await;
                        inner.events.publish(Event::RateLimited {
                            channel: row.channel,
                            chat_id: chat,
                            pause_ms: u64::try_from(pause.as_millis()).unwrap_or(u64::MAX),
                        });
                    } else {
                        tokio::select! {
                            _ = tokio::time::sleep(delay) => {}
                            _ = wake.notified() => {}
                            _ = shutdown.changed() => return,
                        }
                    }
                }
            }
        }
        if let Err(e) = inner.store.outbox_delivered(row.id).await {
            tracing::error!(message = "Reply sent but not marked delivered; it may be sent again after a restart.", outbox_id = row.id, error = %e);
        }
        inner.events.publish(Event::MessageOut {
            outbox_id: row.id,
            channel: row.channel,
            chat_id: row.chat_id.clone(),
        });
    }

    /// Why `row` is too late for its chat's reply window, or `None` when it may be sent. A
    /// store that cannot answer lets it go: the platform refuses it itself if it is too late.
    pub(super) async fn outside_window(
        &self,
        row: &OutboundMessage,
        window: Duration,
    ) -> Option<String> {
        let last = match self
            .inner
            .store
            .last_inbound_at(row.channel, &row.chat_id)
            .await
        {
            Ok(last) => last,
            Err(e) => {
                tracing::warn!(message = "Cannot read the chat's last inbound message; sending without checking the reply window.", channel = %row.channel, outbox_id = row.id, error = %e);
                return None;
            }
        };
        let hours = window.as_secs_f64() / 3600.0;
        let window_ms = i64::try_from(window.as_millis()).unwrap_or(i64::MAX);
        let kept_ms = self
            .inner
            .inbound_kept_ms
            .load(std::sync::atomic::Ordering::Relaxed);
        if last.is_none() && kept_ms < window_ms {
            return None;
        }
        let Some(last) = last else {
            return Some(format!(
                "outside {}'s {hours}-hour reply window: no message from chat {} is on record, and {} accepts a free-form reply only within {hours} hours of the person's last message; send an approved template, or wait for them to write",
                row.channel, row.chat_id, row.channel
            ));
        };
        let age_ms = crate::message::now_ms().saturating_sub(last);
        if age_ms <= window_ms {
            return None;
        }
        Some(format!(
            "outside {}'s {hours}-hour reply window: the person last wrote {:.1} hours ago (at {}), and {} accepts a free-form reply only within {hours} hours of it; send an approved template, or wait for them to write again",
            row.channel,
            age_ms as f64 / 3_600_000.0,
            crate::message::rfc3339_ms(last),
            row.channel
        ))
    }

    pub(super) async fn record_failure(
        &self,
        row: &OutboundMessage,
        class: ErrorClass,
        error: &str,
    ) {
        tracing::warn!(message = "Send failed; will retry.", channel = %row.channel, outbox_id = row.id, attempts = row.attempts, class = class.as_str(), error = %error);
        if let Err(e) = self
            .inner
            .store
            .outbox_attempt_failed(row.id, row.attempts, class, error)
            .await
        {
            tracing::error!(message = "Cannot record a failed attempt.", outbox_id = row.id, error = %e);
        }
        self.inner.events.publish(Event::DeliveryFailed {
            outbox_id: row.id,
            channel: row.channel,
            attempts: row.attempts,
            error: error.to_owned(),
        });
    }

    pub(super) async fn dead(&self, row: &OutboundMessage, class: ErrorClass, error: &str) {
        tracing::error!(message = "Reply moved to dead letters.", channel = %row.channel, outbox_id = row.id, attempts = row.attempts, class = class.as_str(), error = %error);
        if let Err(e) = self
            .inner
            .store
            .outbox_dead(row.id, row.attempts, class, error)
            .await
        {
            tracing::error!(message = "Cannot record a dead letter; the row stays pending.", outbox_id = row.id, error = %e);
        }
        self.inner.events.publish(Event::DeadLettered {
            outbox_id: row.id,
            channel: row.channel,
            error: error.to_owned(),
        });
    }
}
