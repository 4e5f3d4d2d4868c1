//! A minimal WebSocket client for the gateway's web-chat channel
//! (`/ws?chat_id=..`): sends `{"type":"message","id":..,"text":..}` frames
//! and raw/binary frames, and receives JSON text frames with timeouts.
//! Ping/pong frames are handled transparently and never surface.

use std::time::Duration;

use anyhow::Context as _;
use futures_util::{SinkExt as _, StreamExt as _};
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// A connected web-chat client.
pub struct WebChatClient {
    ws: Ws,
}

impl std::fmt::Debug for WebChatClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebChatClient").finish_non_exhaustive()
    }
}

/// What [`WebChatClient::next_event`] saw.
enum Event {
    Json(Value),
    Closed(Option<(u16, String)>),
}

impl WebChatClient {
    /// Connects to `ws_url` (e.g. from `Gateway::ws_url`); fails if the
    /// handshake is rejected.
    pub async fn connect(ws_url: &str) -> anyhow::Result<WebChatClient> {
        let (ws, _resp) = tokio_tungstenite::connect_async(ws_url)
            .await
            .with_context(|| format!("websocket connect to {ws_url}"))?;
        Ok(WebChatClient { ws })
    }

    /// Attempts a connection that is expected to be rejected during the
    /// handshake and returns the HTTP status of the rejection. Errors if the
    /// handshake succeeds or fails without an HTTP response.
    pub async fn connect_expect_rejection(ws_url: &str) -> anyhow::Result<u16> {
        match tokio_tungstenite::connect_async(ws_url).await {
            Ok(_) => anyhow::bail!("websocket connect to {ws_url} unexpectedly succeeded"),
            Err(tungstenite::Error::Http(resp)) => Ok(resp.status().as_u16()),
            Err(e) => Err(anyhow::anyhow!(e).context(format!(
                "websocket connect to {ws_url} failed without an HTTP response"
            ))),
        }
    }

    /// Sends `{"type":"message","id":id,"text":text}`.
    pub async fn send_message(&mut self, id: &str, text: &str) -> anyhow::Result<()> {
        self.send_json(&json!({"type": "message", "id": id, "text": text}))
            .await
    }

    /// Sends `value` serialized as one text frame.
    pub async fn send_json(&mut self, value: &Value) -> anyhow::Result<()> {
        self.send_raw(&value.to_string()).await
    }

    /// Sends `text` verbatim as one text frame.
    pub async fn send_raw(&mut self, text: &str) -> anyhow::Result<()> {
        self.ws
            .send(Message::text(text))
            .await
            .context("sending websocket text frame")
    }

    /// Sends one binary frame.
    pub async fn send_binary(&mut self, bytes: impl Into<Vec<u8>>) -> anyhow::Result<()> {
        self.ws
            .send(Message::binary(bytes.into()))
            .await
            .context("sending websocket binary frame")
    }

    async fn next_event(&mut self, deadline: tokio::time::Instant) -> anyhow::Result<Event> {
        loop {
            let next = tokio::time::timeout_at(deadline, self.ws.next())
                .await
                .map_err(|_| anyhow::anyhow!("timed out waiting for a websocket frame"))?;
            match next {
                None => return Ok(Event::Closed(None)),
                Some(Err(e)) => {
                    return match e {
                        tungstenite::Error::ConnectionClosed
                        | tungstenite::Error::AlreadyClosed => Ok(Event::Closed(None)),
                        other => Err(anyhow::anyhow!(other).context("reading websocket frame")),
                    };
                }
                Some(Ok(Message::Text(t))) => {
                    let value = serde_json::from_str(t.as_str()).with_context(|| {
                        format!("websocket text frame is not JSON: {:?}", t.as_str())
                    })?;
                    return Ok(Event::Json(value));
                }
                Some(Ok(Message::Binary(b))) => {
                    anyhow::bail!("unexpected binary websocket frame ({} bytes)", b.len())
                }
                Some(Ok(Message::Close(frame))) => {
                    return Ok(Event::Closed(
                        frame.map(|f| (u16::from(f.code), f.reason.as_str().to_owned())),
                    ));
                }
                Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => {}
            }
        }
    }

    /// Next JSON text frame; errors on timeout, close, a binary frame or a
    /// non-JSON text frame.
    pub async fn recv(&mut self, timeout: Duration) -> anyhow::Result<Value> {
        let deadline = tokio::time::Instant::now() + timeout;
        match self
            .next_event(deadline)
            .await
            .with_context(|| format!("recv (timeout {timeout:?})"))?
        {
            Event::Json(v) => Ok(v),
            Event::Closed(frame) => anyhow::bail!("websocket closed by server: {frame:?}"),
        }
    }

    /// Collects JSON frames until one satisfies `pred`; returns all collected
    /// frames (the matching one last). The error on timeout/close lists the
    /// frames collected so far.
    pub async fn recv_until(
        &mut self,
        pred: impl Fn(&Value) -> bool,
        timeout: Duration,
    ) -> anyhow::Result<Vec<Value>> {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut got = Vec::new();
        loop {
            match self.next_event(deadline).await {
                Ok(Event::Json(v)) => {
                    let done = pred(&v);
                    got.push(v);
                    if done {
                        return Ok(got);
                    }
                }
                Ok(Event::Closed(frame)) => {
                    anyhow::bail!(
                        "websocket closed by server ({frame:?}) before a matching frame; got: {got:?}"
                    )
                }
                Err(e) => {
                    return Err(e.context(format!(
                        "recv_until (timeout {timeout:?}) without a matching frame; got: {got:?}"
                    )));
                }
            }
        }
    }

    /// Waits for the server to close the connection, skipping (discarding)
    /// any JSON frames received first. Returns the close code and reason, or
    /// `None` if the stream ended without a close frame.
    pub async fn wait_closed(
        &mut self,
        timeout: Duration,
    ) -> anyhow::Result<Option<(u16, String)>> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            match self.next_event(deadline).await {
                Ok(Event::Json(_)) => {}
                Ok(Event::Closed(frame)) => return Ok(frame),
                Err(e) => return Err(e.context(format!("wait_closed (timeout {timeout:?})"))),
            }
        }
    }

    /// Sends a close frame and waits briefly (5 s) for the close handshake.
    pub async fn close(mut self) -> anyhow::Result<()> {
        self.ws
            .close(None)
            .await
            .context("sending websocket close")?;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while let Ok(Some(msg)) = tokio::time::timeout_at(deadline, self.ws.next()).await {
            if msg.is_err() {
                break;
            }
        }
        Ok(())
    }
}
