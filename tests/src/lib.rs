//! Test-support library for the `gatewayd` end-to-end tests: fake upstream
//! servers (an OpenAI-compatible LLM and an HTTP-channel webhook receiver), a
//! harness that runs the real `gatewayd` binary in a temporary directory, and
//! a web-chat WebSocket client. Everything binds to or talks to 127.0.0.1
//! only, and every wait is notification-based with a timeout except
//! [`poll_until`], which exists for state that has no change notification.

pub mod cluster;
pub mod fake_bluebubbles;
pub mod fake_callback;
pub mod fake_discord;
pub mod fake_openai;
pub mod fake_signal;
pub mod fake_slack;
pub mod fake_telegram;
pub mod fake_whatsapp;
pub mod gateway;
pub mod inspect;
pub mod pg;
pub mod replies;
mod support;
pub mod tcp_proxy;
pub mod webchat;

use std::future::Future;
use std::time::Duration;

pub use fake_bluebubbles::FakeBlueBubbles;
pub use fake_callback::{CallbackFault, Delivery, FakeCallback};
pub use fake_openai::{FakeOpenAi, Fault, last_user_content};
pub use fake_slack::FakeSlack;
pub use fake_whatsapp::FakeWhatsApp;
pub use gateway::{
    Gateway, GatewayOptions, HttpReply, gatewayctl_bin, gatewayd_bin, run_cli, strip_ansi,
};
pub use webchat::WebChatClient;

/// Default timeout for waits in end-to-end tests.
pub const TIMEOUT: Duration = Duration::from_secs(20);

/// Interval between checks in [`poll_until`] / [`poll_until_async`].
pub const POLL_INTERVAL: Duration = Duration::from_millis(20);

/// Polls `check` every 20 ms (via `tokio::time::interval`) until it returns
/// true, or errors after `timeout` naming `what`.
///
/// This *polls*: use it only for state that has no change notification
/// (files on disk, another process's state). Prefer the Notify-based
/// `wait_*` methods of the fakes and the gateway harness where they exist.
pub async fn poll_until<F: FnMut() -> bool>(
    timeout: Duration,
    what: &str,
    mut check: F,
) -> anyhow::Result<()> {
    let polled = tokio::time::timeout(timeout, async {
        let mut tick = tokio::time::interval(POLL_INTERVAL);
        loop {
            tick.tick().await;
            if check() {
                return;
            }
        }
    })
    .await;
    polled.map_err(|_| anyhow::anyhow!("timed out after {timeout:?} waiting until {what}"))
}

/// Async variant of [`poll_until`] (e.g. polling `/readyz` over HTTP); polls
/// every 20 ms for state that has no change notification.
pub async fn poll_until_async<F, Fut>(
    timeout: Duration,
    what: &str,
    mut check: F,
) -> anyhow::Result<()>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let polled = tokio::time::timeout(timeout, async {
        let mut tick = tokio::time::interval(POLL_INTERVAL);
        loop {
            tick.tick().await;
            if check().await {
                return;
            }
        }
    })
    .await;
    polled.map_err(|_| anyhow::anyhow!("timed out after {timeout:?} waiting until {what}"))
}
