//! The one loop that keeps a channel's long-lived connection up: [`keep_connected`]. Every
//! listener with a connection of its own (Telegram's long poll, Discord's gateway, and the
//! channels after them) runs under it, so they all back off, report health, hold for
//! re-authentication and stop the same way.
//!
//! One attempt is one connection ([`Connection::connect`]): it runs until it fails or the gateway
//! stops, and reports `connected` through its [`Link`] whenever it gets through. Between
//! attempts the loop reports the failure, waits for the platform's own `retry_after` or an
//! exponential backoff with jitter (reset once an attempt got through), and holds while the
//! channel's credentials are refused, until the operator reconnects it. It returns when the
//! gateway stops. In multi-instance mode the loop runs only while this instance holds the
//! channel's leader lease (`conn:<channel>`, [`crate::cluster::leader`]), so exactly one
//! instance keeps the connection, and a new holder connects only after the old one stopped.

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use rand::Rng;
use tokio::sync::watch;

use super::adapter::{HealthReporter, ListenerCtx};
use crate::cluster::leader::{LeaseGuard, conn_lease};
use crate::send::{ErrorClass, SendError};

/// The first backoff after a failure; it doubles with each failure in a row.
pub const BASE_BACKOFF: Duration = Duration::from_millis(250);
/// The longest backoff.
pub const MAX_BACKOFF: Duration = Duration::from_secs(32);

/// One connection of a listener.
pub trait Connection: Send {
    /// Connects and runs until the connection fails (the error says how) or `link.shutdown`
    /// fires (then `Ok`). Calls [`Link::connected`] whenever it gets through.
    fn connect(&mut self, link: &mut Link) -> impl Future<Output = Result<(), SendError>> + Send;

    /// What the log says when an attempt fails (the channel, the class, the attempt and the wait
    /// come with it as fields).
    fn failure_message(&self) -> &'static str {
        "Channel connection failed."
    }
}

/// What one attempt is given.
pub struct Link {
    /// Becomes `true` when the gateway stops.
    pub shutdown: watch::Receiver<bool>,
    health: HealthReporter,
    got_through: AtomicBool,
    lease: Option<LeaseGuard>,
}

impl Link {
    /// The connection got through (or its last request succeeded): the channel is connected and
    /// the next failure starts the backoff from the beginning.
    pub fn connected(&self) {
        self.got_through.store(true, Ordering::Relaxed);
        self.health.connected();
    }

    /// Whether the gateway is stopping, or (in multi-instance mode) the lease is lost or past
    /// its deadline.
    pub fn stopping(&self) -> bool {
        *self.shutdown.borrow() || self.lease.as_ref().is_some_and(LeaseGuard::is_lost)
    }

    /// The channel's health, for adapters that report more than connected/failed.
    pub fn health(&self) -> &HealthReporter {
        &self.health
    }

    /// The channel's lease, in multi-instance mode: its fence, its local deadline (by which the
    /// connection must have stopped talking to the platform) and its stored metadata.
    pub fn lease(&self) -> Option<&LeaseGuard> {
        self.lease.as_ref()
    }
}

/// Resolves once `shutdown` is `true` (at once if it already is, or if its sender is gone).
pub async fn stopped(shutdown: &mut watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|s| *s).await;
}

/// The wait after `failures` failures in a row: the platform's `retry_after` if it gave one,
/// else an exponential backoff from [`BASE_BACKOFF`] to [`MAX_BACKOFF`] with jitter (between half
/// and all of it), so many gateways that lost one platform do not reconnect in step.
pub fn backoff(failures: u32, error: &SendError) -> Duration {
    if let SendError::Retryable {
        retry_after: Some(d),
        ..
    } = error
    {
        return *d;
    }
    let cap = BASE_BACKOFF
        .saturating_mul(1u32 << failures.saturating_sub(1).min(16))
        .min(MAX_BACKOFF);
    let cap_ms = u64::try_from(cap.as_millis()).unwrap_or(u64::MAX).max(2);
    Duration::from_millis(rand::rng().random_range(cap_ms / 2..=cap_ms))
}

/// Runs `connection` until the gateway stops: see the module documentation. `name` names the
/// channel in logs. In multi-instance mode (`ctx.leadership` set) it connects only while this
/// instance holds the channel's lease `conn:<name>`: each attempt's [`Link`] then carries the
/// [`LeaseGuard`], its `shutdown` also fires when the lease is lost, and the next holder starts
/// only after this connection has ended.
pub async fn keep_connected(name: &str, connection: impl Connection, ctx: &ListenerCtx) {
    let Some(leadership) = &ctx.leadership else {
        let mut connection = connection;
        connect_loop(name, &mut connection, ctx, ctx.shutdown.clone(), None).await;
        return;
    };
    let connection = tokio::sync::Mutex::new(connection);
    let lease = conn_lease(name);
    leadership
        .run(&lease, ctx.shutdown.clone(), |guard| {
            let connection = &connection;
            async move {
                let mut connection = connection.lock().await;
                let shutdown = guard.stop_signal();
                connect_loop(name, &mut *connection, ctx, shutdown, Some(guard)).await;
            }
        })
        .await;
}

/// The attempts of one listener until `shutdown`: connect, report, back off.
async fn connect_loop(
    name: &str,
    connection: &mut impl Connection,
    ctx: &ListenerCtx,
    shutdown: watch::Receiver<bool>,
    lease: Option<LeaseGuard>,
) {
    let health = ctx.health.clone();
    let mut link = Link {
        shutdown,
        health: health.clone(),
        got_through: AtomicBool::new(false),
        lease,
    };
    let mut failures: u32 = 0;
    loop {
        health.wait_sendable(&mut link.shutdown).await;
        if link.stopping() {
            return;
        }
        let result = connection.connect(&mut link).await;
        if link.stopping() {
            return;
        }
        if link.got_through.swap(false, Ordering::Relaxed) {
            failures = 0;
        }
        let error = match result {
            Ok(()) => SendError::retryable("the connection ended"),
            Err(e) => e,
        };
        failures = failures.saturating_add(1);
        let delay = backoff(failures, &error);
        tracing::warn!(message = connection.failure_message(), channel = name, class = error.class().as_str(), attempt = failures, retry_in_ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX), error = %error);
        health.failed(error.class(), &error.to_string(), delay);
        if error.class() == ErrorClass::Auth {
            // Held: the next turn of the loop waits for the operator's reconnect.
            continue;
        }
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            () = stopped(&mut link.shutdown) => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_with_jitter_and_is_capped() {
        let e = SendError::retryable("x");
        for failures in 1..40u32 {
            let cap = BASE_BACKOFF
                .saturating_mul(1u32 << (failures - 1).min(16))
                .min(MAX_BACKOFF);
            let d = backoff(failures, &e);
            assert!(d <= cap && d >= cap / 2, "{failures}: {d:?} vs {cap:?}");
        }
    }

    #[test]
    fn a_platform_retry_after_wins() {
        let e = SendError::Retryable {
            message: "429".into(),
            retry_after: Some(Duration::from_secs(7)),
            global: false,
        };
        assert_eq!(backoff(3, &e), Duration::from_secs(7));
    }
}
