//! Socket Mode: one [`Connection`] of `keep_connected` is `auth.test` (once, for the bot's
//! identity), `apps.connections.open` with the app-level token, the WebSocket to the `url` it
//! returns, and Slack's `hello` (then the channel is connected).
//!
//! Each `events_api` envelope is normalized and committed, and only then acknowledged with
//! `{"envelope_id": …}` on the socket it came from; a failed commit is not acknowledged, so Slack
//! delivers it again. Other envelopes are acknowledged and not answered.
//!
//! On `{"type":"disconnect"}` (a warning, or a refresh) the next connection is opened and its
//! `hello` awaited while the old socket is still read (and its envelopes acknowledged); only then
//! is the old one closed, so nothing crosses the switch unread. Liveness: a WebSocket Ping goes
//! out every `ping_interval`; a socket from which nothing at all (no frame, no pong) arrived for
//! `ping_interval` after a Ping is dead, and the attempt fails so `keep_connected` replaces it.
//! The bot token is checked with `auth.test` before each connection, and a switch to the next
//! socket leaves the channel's health as it is (a send refused for its credentials stays held).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde::Deserialize;
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use super::normalize::Callback;
use super::send::SlackSender;
use super::{BotIdentity, Intake, Refused};
use crate::channels::SendError;
use crate::channels::supervise::{Connection, Link, stopped};

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;
type Opening = Pin<Box<dyn Future<Output = Result<Ws, SendError>> + Send>>;

/// Longest wait for `hello` on a new socket.
const HELLO_TIMEOUT: Duration = Duration::from_secs(15);

/// One Socket Mode frame, with the fields the gateway reads.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct Frame {
    #[serde(rename = "type")]
    kind: String,
    envelope_id: Option<String>,
    payload: Option<Callback>,
    reason: Option<String>,
}

/// The Socket Mode connection.
pub(crate) struct Socket {
    sender: Arc<SlackSender>,
    app_authorization: String,
    identity: watch::Sender<Option<BotIdentity>>,
    intake: Arc<Intake>,
    ping_interval: Duration,
}

impl Socket {
    pub(crate) fn new(
        sender: Arc<SlackSender>,
        app_token: String,
        identity: watch::Sender<Option<BotIdentity>>,
        intake: Arc<Intake>,
        ping_interval: Duration,
    ) -> Self {
        Self {
            sender,
            app_authorization: format!("Bearer {app_token}"),
            identity,
            intake,
            ping_interval,
        }
    }

    /// `apps.connections.open`, the WebSocket, and its `hello`.
    fn open(&self) -> Opening {
        let sender = self.sender.clone();
        let authorization = self.app_authorization.clone();
        Box::pin(async move {
            let body = sender
                .call_app("apps.connections.open", &authorization)
                .await?;
            let url = body
                .get("url")
                .and_then(serde_json::Value::as_str)
                .ok_or_else(|| SendError::retryable("apps.connections.open answered without url"))?
                .to_owned();
            let (mut ws, _) = tokio::time::timeout(
                HELLO_TIMEOUT,
                tokio_tungstenite::connect_async(url.as_str()),
            )
            .await
            .map_err(|_| SendError::retryable("the Socket Mode WebSocket did not open in time"))?
            .map_err(|e| {
                SendError::retryable(format!("cannot open the Socket Mode WebSocket: {e}"))
            })?;
            let hello = tokio::time::timeout(HELLO_TIMEOUT, async {
                while let Some(frame) = ws.next().await {
                    if let Ok(Message::Text(t)) = frame
                        && serde_json::from_str::<Frame>(&t).is_ok_and(|f| f.kind == "hello")
                    {
                        return true;
                    }
                }
                false
            })
            .await;
            match hello {
                Ok(true) => Ok(ws),
                Ok(false) => Err(SendError::retryable(
                    "the Socket Mode WebSocket closed before hello",
                )),
                Err(_) => Err(SendError::retryable(
                    "no hello on the Socket Mode WebSocket in time",
                )),
            }
        })
    }

    /// Handles one text frame of `ws`: acknowledges an envelope after its commit; whether it
    /// asked for a new connection.
    async fn frame(&self, ws: &mut Ws, text: &str) -> Result<bool, SendError> {
        let Ok(frame) = serde_json::from_str::<Frame>(text) else {
            tracing::warn!(message = "Unreadable Socket Mode frame ignored.");
            return Ok(false);
        };
        if frame.kind == "disconnect" {
            tracing::info!(
                message = "Slack asked for a new Socket Mode connection.",
                reason = frame.reason.as_deref().unwrap_or_default()
            );
            return Ok(true);
        }
        let Some(envelope_id) = frame.envelope_id else {
            return Ok(false);
        };
        if frame.kind == "events_api"
            && let Some(callback) = &frame.payload
        {
            match self.intake.take(callback).await {
                Ok(()) => {}
                Err(Refused::NoIdentity) => return Ok(false),
                Err(Refused::Store(e)) => {
                    tracing::error!(message = "Cannot commit a Slack event; not acknowledged, Slack will deliver it again.", envelope_id, error = %e);
                    return Ok(false);
                }
            }
        }
        let ack = serde_json::json!({ "envelope_id": envelope_id }).to_string();
        ws.send(Message::text(ack))
            .await
            .map_err(|e| SendError::retryable(format!("cannot acknowledge an envelope: {e}")))?;
        Ok(false)
    }
}

impl Connection for Socket {
    fn failure_message(&self) -> &'static str {
        "Slack Socket Mode connection failed."
    }

    async fn connect(&mut self, link: &mut Link) -> Result<(), SendError> {
        // The bot token is checked before each connection, so a refused one ends as an auth
        // hold instead of a connected socket that cannot answer.
        let bot = self.sender.auth_test().await?;
        if self.identity.borrow().as_ref() != Some(&bot) {
            tracing::info!(message = "Slack bot identified.", user_id = %bot.user_id);
            self.identity.send_replace(Some(bot));
        }
        let mut ws = tokio::select! {
            r = self.open() => r?,
            () = stopped(&mut link.shutdown) => return Ok(()),
        };
        link.connected();
        let mut next: Option<Opening> = None;
        let mut ping =
            tokio::time::interval_at(Instant::now() + self.ping_interval, self.ping_interval);
        let mut awaiting_since: Option<Instant> = None;
        loop {
            let opening = async {
                match next.as_mut() {
                    Some(f) => f.await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                frame = ws.next() => {
                    awaiting_since = None;
                    match frame {
                        Some(Ok(Message::Text(t))) => {
                            if self.frame(&mut ws, &t).await? && next.is_none() {
                                next = Some(self.open());
                            }
                        }
                        Some(Ok(Message::Close(_))) | None => {
                            // The old socket closed before the new one said hello: wait for it.
                            let Some(f) = next.take() else {
                                return Err(SendError::retryable("the Socket Mode WebSocket closed"));
                            };
                            ws = tokio::select! {
                                r = f => r?,
                                () = stopped(&mut link.shutdown) => return Ok(()),
                            };
                        }
                        Some(Ok(_)) => {}
                        Some(Err(e)) => {
                            if let Some(f) = next.take() {
                                ws = f.await?;
                            } else {
                                return Err(SendError::retryable(format!("the Socket Mode WebSocket failed: {e}")));
                            }
                        }
                    }
                }
                opened = opening => {
                    next = None;
                    let fresh = opened?;
                    let mut old = std::mem::replace(&mut ws, fresh);
                    awaiting_since = None;
                    tokio::spawn(async move { let _ = old.close(None).await; });
                    tracing::info!(message = "Slack Socket Mode switched to its new connection.");
                }
                _ = ping.tick() => {
                    if let Some(since) = awaiting_since && since.elapsed() >= self.ping_interval {
                        return Err(SendError::retryable(format!(
                            "the Socket Mode WebSocket was silent for {} ms after a ping; replacing it",
                            self.ping_interval.as_millis()
                        )));
                    }
                    if awaiting_since.is_none() {
                        awaiting_since = Some(Instant::now());
                        ws.send(Message::Ping(Vec::new().into())).await
                            .map_err(|e| SendError::retryable(format!("cannot ping the Socket Mode WebSocket: {e}")))?;
                    }
                }
                () = stopped(&mut link.shutdown) => {
                    let _ = ws.close(None).await;
                    return Ok(());
                }
            }
        }
    }
}
