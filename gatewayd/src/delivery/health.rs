//! Channel health: `Starting → Connected → Reconnecting{attempt, next_at} → ReauthNeeded | Down`.
//!
//! Send results and connection attempts drive the state. Consecutive retryable failures move a
//! channel to `Reconnecting` with the attempt count and the time of the next try, and after
//! [`DOWN_AFTER`] of them to `Down`; a `Down` channel is probed periodically and can be
//! reconnected by the operator, so it never gives up silently. Refused credentials move it to
//! `ReauthNeeded`, which holds every send on the channel until the operator reconnects it. Every
//! transition is published as an event, and the last error is kept for the operator.

use std::sync::Mutex;
use std::time::Duration;

use tokio::sync::watch;

use crate::events::{Event, EventBus};
use crate::message::{ChannelKind, now_ms};
use crate::send::ErrorClass;

/// Consecutive retryable failures after which a channel is `Down`.
pub const DOWN_AFTER: u32 = 5;

/// Where a channel stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HealthState {
    /// Not yet connected (or reconnect requested and not yet confirmed).
    Starting,
    /// Working.
    Connected,
    /// Failing; trying again.
    Reconnecting {
        /// Consecutive failures so far.
        attempt: u32,
        /// When the next try is due, ms since the epoch.
        next_at_ms: i64,
    },
    /// The platform refused the credentials; sends are held until the operator reconnects.
    ReauthNeeded,
    /// Failing for a while; probed periodically.
    Down,
}

impl HealthState {
    /// Stable lowercase name.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Starting => "starting",
            Self::Connected => "connected",
            Self::Reconnecting { .. } => "reconnecting",
            Self::ReauthNeeded => "reauth_needed",
            Self::Down => "down",
        }
    }
}

/// A channel's health as the operator sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthStatus {
    /// The channel.
    pub channel: ChannelKind,
    /// Its state.
    pub state: HealthState,
    /// The last error, if any.
    pub last_error: Option<String>,
    /// When the state last changed, ms since the epoch.
    pub since_ms: i64,
    /// Messages (chunks) sent.
    pub sent: u64,
    /// Send attempts that failed.
    pub failed: u64,
    /// Reconnects requested by the operator or a probe.
    pub reconnects: u64,
}

struct Inner {
    status: HealthStatus,
    consecutive: u32,
    /// Set on entering `Down` or `ReauthNeeded`, cleared by the next success: that success is a
    /// recovery. A few failures that a success interrupts (one bad chat among good ones) are
    /// not an outage, so they do not count.
    failing: bool,
}

/// One channel's health.
pub struct ChannelHealth {
    inner: Mutex<Inner>,
    watch: watch::Sender<HealthState>,
    events: EventBus,
}

impl ChannelHealth {
    /// A channel starting now.
    pub fn new(channel: ChannelKind, events: EventBus) -> Self {
        let (watch, _) = watch::channel(HealthState::Starting);
        Self {
            inner: Mutex::new(Inner {
                status: HealthStatus {
                    channel,
                    state: HealthState::Starting,
                    last_error: None,
                    since_ms: now_ms(),
                    sent: 0,
                    failed: 0,
                    reconnects: 0,
                },
                consecutive: 0,
                failing: false,
            }),
            watch,
            events,
        }
    }

    /// A snapshot.
    pub fn status(&self) -> Option<HealthStatus> {
        self.inner.lock().ok().map(|i| i.status.clone())
    }

    /// The current state.
    pub fn state(&self) -> HealthState {
        self.watch.borrow().clone()
    }

    /// Moves to `state`; returns the previous state if it changed.
    fn transition(
        &self,
        inner: &mut Inner,
        state: HealthState,
        error: Option<String>,
    ) -> Option<HealthState> {
        if let Some(e) = &error {
            inner.status.last_error = Some(e.clone());
        }
        if inner.status.state == state {
            return None;
        }
        let previous = std::mem::replace(&mut inner.status.state, state.clone());
        inner.status.since_ms = now_ms();
        let channel = inner.status.channel;
        tracing::info!(message = "Channel state changed.", channel = %channel, from = previous.name(), to = state.name(), error = error.as_deref().unwrap_or(""));
        self.watch.send_replace(state.clone());
        self.events.publish(Event::ChannelStateChanged {
            channel,
            state: state.name(),
            error,
        });
        Some(previous)
    }

    /// A send or connection succeeded. Returns true if this ends an outage (`Down` or
    /// `ReauthNeeded`), which is when the channel's dead letters are worth retrying.
    pub fn succeeded(&self) -> bool {
        let Ok(mut inner) = self.inner.lock() else {
            return false;
        };
        inner.consecutive = 0;
        self.transition(&mut inner, HealthState::Connected, None);
        std::mem::take(&mut inner.failing)
    }

    /// Counts one message (chunk) the platform accepted.
    pub fn sent(&self) {
        if let Ok(mut inner) = self.inner.lock() {
            inner.status.sent += 1;
        }
    }

    /// A send or connection failed with `class`; `retry_in` is when the next try is due.
    pub fn failed(&self, class: ErrorClass, error: &str, retry_in: Duration) {
        let Ok(mut inner) = self.inner.lock() else {
            return;
        };
        inner.status.failed += 1;
        let error = Some(error.to_owned());
        match class {
            ErrorClass::Auth => {
                inner.failing = true;
                self.transition(&mut inner, HealthState::ReauthNeeded, error);
            }
            ErrorClass::Retryable => {
                if inner.status.state == HealthState::ReauthNeeded {
                    inner.status.last_error = error;
                    return;
                }
                inner.consecutive += 1;
                let state = if inner.consecutive >= DOWN_AFTER {
                    inner.failing = true;
                    HealthState::Down
                } else {
                    HealthState::Reconnecting {
                        attempt: inner.consecutive,
                        next_at_ms: now_ms().saturating_add(
                            i64::try_from(retry_in.as_millis()).unwrap_or(i64::MAX),
                        ),
                    }
                };
                self.transition(&mut inner, state, error);
            }
            // The message was bad, not the channel.
            ErrorClass::Permanent => inner.status.last_error = error,
        }
    }

    /// The operator (or a probe) asks to reconnect: counts it, and lifts a credentials hold so
    /// held sends try again.
    pub fn reconnecting(&self) {
        let Ok(mut inner) = self.inner.lock() else {
            return;
        };
        inner.status.reconnects += 1;
        if inner.status.state == HealthState::ReauthNeeded {
            self.transition(&mut inner, HealthState::Starting, None);
        }
    }

    /// Waits while the channel is held for re-authentication, or until `stop` turns true.
    pub async fn wait_sendable(&self, stop: &mut watch::Receiver<bool>) {
        let mut rx = self.watch.subscribe();
        loop {
            if *rx.borrow_and_update() != HealthState::ReauthNeeded || *stop.borrow() {
                return;
            }
            tokio::select! {
                changed = rx.changed() => if changed.is_err() { return },
                _ = stop.changed() => return,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_walk_through_reconnecting_to_down_and_success_recovers() {
        let events = EventBus::new(64);
        let mut rx = events.subscribe();
        let h = ChannelHealth::new(ChannelKind::new("http"), events);
        assert_eq!(h.state(), HealthState::Starting);
        assert!(!h.succeeded(), "starting → connected is not a recovery");
        h.failed(ErrorClass::Retryable, "HTTP 500", Duration::from_secs(1));
        assert!(
            !h.succeeded(),
            "a failure a success interrupts is not an outage"
        );
        for attempt in 1..DOWN_AFTER {
            h.failed(ErrorClass::Retryable, "HTTP 500", Duration::from_secs(1));
            assert!(
                matches!(h.state(), HealthState::Reconnecting { attempt: a, .. } if a == attempt)
            );
        }
        h.failed(ErrorClass::Retryable, "HTTP 500", Duration::from_secs(1));
        assert_eq!(h.state(), HealthState::Down);
        assert!(h.succeeded(), "down → connected is a recovery");
        let mut states = Vec::new();
        while let Ok(Event::ChannelStateChanged { state, .. }) = rx.try_recv() {
            states.push(state);
        }
        // Each new attempt count is a new state, so each is published.
        assert_eq!(
            states,
            [
                "connected",
                "reconnecting",
                "connected",
                "reconnecting",
                "reconnecting",
                "reconnecting",
                "reconnecting",
                "down",
                "connected"
            ]
        );
    }

    #[tokio::test]
    async fn auth_failure_holds_sends_until_reconnect() {
        let h = std::sync::Arc::new(ChannelHealth::new(
            ChannelKind::new("http"),
            EventBus::new(8),
        ));
        h.failed(ErrorClass::Auth, "HTTP 401", Duration::ZERO);
        assert_eq!(h.state(), HealthState::ReauthNeeded);
        h.failed(ErrorClass::Retryable, "HTTP 500", Duration::ZERO);
        assert_eq!(
            h.state(),
            HealthState::ReauthNeeded,
            "only the operator lifts it"
        );
        let (_stop_tx, mut stop) = watch::channel(false);
        let waiter = {
            let h = h.clone();
            tokio::spawn(async move { h.wait_sendable(&mut stop).await })
        };
        h.reconnecting();
        waiter.await.expect("released");
        assert_eq!(h.state(), HealthState::Starting);
        assert!(h.succeeded(), "reauth → connected is a recovery");
    }
}
