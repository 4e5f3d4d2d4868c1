//! The WebChat channel: a chat page served by gatewayd itself at `/` and a WebSocket at
//! `/ws?chat_id=<id>`.
//!
//! Client frames: `{"type":"message","id":"<client id>","text":"..."}`. The server answers
//! `{"type":"ack","id":..}` only after the inbox commit, then later
//! `{"type":"message","id":"<reply id>","text":..,"reply_to":"<client id>"}`. Problems are
//! `{"type":"error","code":..,"message":..}` and the connection stays open; only a message over
//! the transport limit ([`WebChat::max_frame_bytes`]) closes it, with code 1009 and a reason. The chat id is the
//! person's address on this channel; a message's dedupe key is `<chat_id>/<client id>`, so a
//! client that re-sends after a reconnect gets one agent turn.
//!
//! In a cluster, a chat's reply may be sent by another instance than the one holding its socket.
//! The adapter knows nothing of the cluster but the relay's trait: it is given a [`SocketRelay`], tells it when its
//! first socket of a chat opens and its last one closes, and hands it a reply frame that no
//! socket here took; frames relayed from elsewhere arrive through [`LocalSockets::push`].

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use async_trait::async_trait;
use axum::extract::ws::{CloseFrame, Message, WebSocket, close_code};
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::sync::{mpsc, watch};

use axum::extract::{Extension, Query, State, WebSocketUpgrade};
use axum::http::{StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use serde::Deserialize;

use super::adapter::{BuildEnv, ChannelAdapter, HealthReporter, ListenerCtx, Route, WebhookCtx};
use super::webhook::{ConnectionSlot, error};
use super::{ChannelSender, OutgoingChunk, SendError};
use crate::cluster::relay::{LocalSockets, SocketRelay};
use crate::config::{ConfigError, MIB, Number, NumericKey, channel_key, ints};
use crate::delivery::rate_limit::RateSettings;
use crate::inbox::Inbox;
use crate::message::{ChannelKind, ChatType, InboundMessage, now_ms};
use crate::send::{Limit, Sent};

/// The WebChat channel.
pub const KIND: ChannelKind = ChannelKind::new("webchat");

const PAGE: &str = include_str!("../../assets/webchat.html");

/// Longest chat id or client message id, in bytes.
pub const MAX_ID_BYTES: usize = 128;
/// Frames queued for one socket before it counts as not reading.
const SOCKET_QUEUE: usize = 256;

/// Checks a chat id from the query string.
pub fn valid_chat_id(id: &str) -> Result<(), String> {
    if id.is_empty() || id.len() > MAX_ID_BYTES {
        return Err(format!("chat_id must be 1 to {MAX_ID_BYTES} characters"));
    }
    if !id
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':'))
    {
        return Err("chat_id may contain only letters, digits, '-', '_', '.' and ':'".to_owned());
    }
    Ok(())
}

/// The open sockets of one chat: (socket id, its outgoing frame queue).
type ChatSockets = Vec<(u64, mpsc::Sender<String>)>;

/// The WebChat adapter: open sockets by chat, and the sender for replies.
pub struct WebChat {
    sockets: Mutex<HashMap<String, ChatSockets>>,
    next_socket: AtomicU64,
    max_message_bytes: usize,
    health: OnceLock<HealthReporter>,
    closing: watch::Receiver<bool>,
    relay: Option<Arc<dyn SocketRelay>>,
}

fn error_frame(code: &str, message: &str, id: Option<&str>) -> String {
    json!({"type": "error", "code": code, "message": message, "id": id}).to_string()
}

/// What one client frame asks for.
#[derive(Debug, PartialEq, Eq)]
enum Frame {
    Message { id: String, text: String },
}

fn parse_frame(
    raw: &str,
    max_bytes: usize,
) -> Result<Frame, (&'static str, String, Option<String>)> {
    let value: Value = serde_json::from_str(raw).map_err(|e| {
        (
            "invalid_json",
            format!("frame is not valid JSON: {e}"),
            None,
        )
    })?;
    let id = value.get("id").and_then(Value::as_str).map(str::to_owned);
    match value.get("type").and_then(Value::as_str) {
        Some("message") => {}
        Some(other) => {
            return Err((
                "unknown_type",
                format!("unknown frame type `{other}`; send type \"message\""),
                id,
            ));
        }
        None => {
            return Err((
                "unknown_type",
                "frame needs a string field `type`".to_owned(),
                id,
            ));
        }
    }
    let Some(id) = id else {
        return Err((
            "invalid_id",
            "field `id` must be a non-empty string".to_owned(),
            None,
        ));
    };
    if id.is_empty() || id.len() > MAX_ID_BYTES || id.chars().any(char::is_control) {
        return Err((
            "invalid_id",
            format!("field `id` must be 1 to {MAX_ID_BYTES} bytes without control characters"),
            None,
        ));
    }
    let text = match value.get("text") {
        Some(Value::String(t)) => t.clone(),
        Some(_) => {
            return Err((
                "invalid_text",
                "field `text` must be a string".to_owned(),
                Some(id),
            ));
        }
        None => {
            return Err((
                "invalid_text",
                "field `text` is required".to_owned(),
                Some(id),
            ));
        }
    };
    if text.trim().is_empty() {
        return Err((
            "empty_text",
            "field `text` must not be empty".to_owned(),
            Some(id),
        ));
    }
    if text.len() > max_bytes {
        return Err((
            "too_large",
            format!(
                "text is {} bytes, over the limit of {max_bytes} (channels.webchat.max_message_bytes)",
                text.len()
            ),
            Some(id),
        ));
    }
    Ok(Frame::Message { id, text })
}

impl WebChat {
    /// A WebChat adapter accepting texts up to `max_message_bytes`; sockets close when
    /// `closing` turns true. With a `relay`, its sockets are recorded there and a reply for a
    /// chat with no socket here is handed to it.
    pub fn new(
        max_message_bytes: usize,
        closing: watch::Receiver<bool>,
        relay: Option<Arc<dyn SocketRelay>>,
    ) -> Arc<Self> {
        let chat = Arc::new(Self {
            sockets: Mutex::new(HashMap::new()),
            next_socket: AtomicU64::new(1),
            max_message_bytes,
            health: OnceLock::new(),
            closing,
            relay,
        });
        if let Some(relay) = &chat.relay {
            let local: Arc<dyn LocalSockets> = chat.clone();
            relay.attach(Arc::downgrade(&local));
        }
        chat
    }

    /// The frame queues of `chat_id`'s open sockets here.
    fn queues(&self, chat_id: &str) -> Vec<mpsc::Sender<String>> {
        self.sockets
            .lock()
            .ok()
            .and_then(|s| {
                s.get(chat_id)
                    .map(|l| l.iter().map(|(_, tx)| tx.clone()).collect())
            })
            .unwrap_or_default()
    }

    /// Whether a socket of `chat_id` is open here.
    fn has_socket(&self, chat_id: &str) -> bool {
        self.sockets
            .lock()
            .is_ok_and(|s| s.get(chat_id).is_some_and(|l| !l.is_empty()))
    }

    /// Lets the adapter wake a chat's delivery lane when its client (re)connects.
    pub fn attach_health(&self, health: HealthReporter) {
        let _ = self.health.set(health);
    }

    /// Largest WebSocket message (and frame) read: room for a text at the limit even if every
    /// character is a six-byte JSON escape, and at least 1 MiB. A message below it but over the
    /// text limit gets a `too_large` error frame and the connection stays open; a larger one
    /// closes the connection with code 1009 and a reason.
    pub fn max_frame_bytes(&self) -> usize {
        self.max_message_bytes
            .saturating_mul(6)
            .max(1 << 20)
            .saturating_add(64 * 1024)
    }

    /// The close frame for a message over [`Self::max_frame_bytes`] (1009: message too big).
    fn too_large_close(&self) -> CloseFrame {
        CloseFrame {
            code: close_code::SIZE,
            reason: format!(
                "too_large: frame over {} bytes; texts are limited to {} bytes",
                self.max_frame_bytes(),
                self.max_message_bytes
            )
            .into(),
        }
    }

    /// Serves one WebSocket for `chat_id` until either side closes it.
    pub async fn serve(self: Arc<Self>, inbox: Arc<Inbox>, chat_id: String, socket: WebSocket) {
        let socket_id = self.next_socket.fetch_add(1, Ordering::Relaxed);
        let (tx, mut rx) = mpsc::channel::<String>(SOCKET_QUEUE);
        let first = match self.sockets.lock() {
            Ok(mut sockets) => {
                let list = sockets.entry(chat_id.clone()).or_default();
                list.push((socket_id, tx));
                list.len() == 1
            }
            Err(_) => false,
        };
        if first && let Some(relay) = &self.relay {
            relay.opened(&chat_id).await;
        }
        if let Some(h) = self.health.get() {
            h.nudge(&chat_id);
        }
        tracing::debug!(message = "WebChat connected.", chat_id = %chat_id, socket_id);
        let (mut sink, mut stream) = socket.split();
        let mut closing = self.closing.clone();
        loop {
            tokio::select! {
                Some(frame) = rx.recv() => {
                    if sink.send(Message::Text(frame.into())).await.is_err() {
                        break;
                    }
                }
                incoming = stream.next() => {
                    let text = match incoming {
                        Some(Ok(Message::Text(t))) => t,
                        Some(Ok(Message::Binary(_))) => {
                            let f = error_frame("unsupported_frame", "send JSON text frames, not binary", None);
                            if sink.send(Message::Text(f.into())).await.is_err() { break; }
                            continue;
                        }
                        Some(Ok(Message::Close(_))) | None => break,
                        Some(Ok(_)) => continue,
                        Some(Err(e)) => {
                            let error = e.to_string();
                            if error.contains("Space limit exceeded") {
                                // Over the transport limit: the frame was not read, so the
                                // socket cannot go on; say why in the close frame.
                                tracing::debug!(message = "WebChat frame over the transport limit; closing with 1009.", chat_id = %chat_id, %error);
                                let _ = sink.send(Message::Close(Some(self.too_large_close()))).await;
                            } else {
                                tracing::debug!(message = "WebChat socket error.", chat_id = %chat_id, %error);
                            }
                            break;
                        }
                    };
                    let reply = self.handle_frame(&inbox, &chat_id, text.as_str()).await;
                    if sink.send(Message::Text(reply.0.into())).await.is_err() {
                        break;
                    }
                    if let Some(committed) = reply.1 {
                        inbox.dispatch(committed).await;
                    }
                }
                _ = closing.changed() => {
                    let _ = sink.send(Message::Close(None)).await;
                    break;
                }
            }
        }
        let last = match self.sockets.lock() {
            Ok(mut sockets) => match sockets.get_mut(&chat_id) {
                Some(list) => {
                    list.retain(|(id, _)| *id != socket_id);
                    let empty = list.is_empty();
                    if empty {
                        sockets.remove(&chat_id);
                    }
                    empty
                }
                None => false,
            },
            Err(_) => false,
        };
        if last && let Some(relay) = &self.relay {
            relay.closed(&chat_id).await;
            // A socket of the chat that opened while the record was being removed recorded
            // itself before or after the removal; record it again so the removal cannot win.
            if self.has_socket(&chat_id) {
                relay.opened(&chat_id).await;
            }
        }
        tracing::debug!(message = "WebChat disconnected.", chat_id = %chat_id, socket_id);
    }

    /// Answers one client frame: the frame to send back, and the message to dispatch once the
    /// acknowledgement is on its way.
    async fn handle_frame(
        &self,
        inbox: &Inbox,
        chat_id: &str,
        raw: &str,
    ) -> (String, Option<crate::inbox::Committed>) {
        let (id, text) = match parse_frame(raw, self.max_message_bytes) {
            Ok(Frame::Message { id, text }) => (id, text),
            Err((code, message, id)) => return (error_frame(code, &message, id.as_deref()), None),
        };
        let msg = InboundMessage {
            channel: KIND,
            channel_message_id: format!("{chat_id}/{id}"),
            chat_id: chat_id.to_owned(),
            chat_type: ChatType::Direct,
            sender_id: chat_id.to_owned(),
            text,
            reply_to: None,
            attachments: Vec::new(),
            sender_name: None,
            received_at_ms: now_ms(),
            mentioned: false,
        };
        match inbox.commit(msg).await {
            Ok(c) => (
                json!({"type": "ack", "id": id, "duplicate": c.duplicate}).to_string(),
                Some(c),
            ),
            Err(e) => {
                tracing::error!(message = "Cannot commit a WebChat message.", chat_id = %chat_id, error = %e);
                (
                    error_frame(
                        "unavailable",
                        "the gateway cannot store messages right now; send it again",
                        Some(&id),
                    ),
                    None,
                )
            }
        }
    }
}

#[async_trait]
impl ChannelSender for WebChat {
    fn kind(&self) -> ChannelKind {
        KIND
    }

    fn split_limit(&self) -> Option<Limit> {
        None
    }

    async fn send(&self, chunk: &OutgoingChunk<'_>) -> Result<Sent, SendError> {
        let msg = chunk.message;
        let reply_to = msg
            .reply_to
            .as_deref()
            .map(|r| r.strip_prefix(&format!("{}/", msg.chat_id)).unwrap_or(r));
        let frame =
            json!({"type": "message", "id": chunk.id(), "text": chunk.text, "reply_to": reply_to})
                .to_string();
        if self.push(&msg.chat_id, &frame) > 0 {
            return Ok(Sent::default());
        }
        let relayed = match &self.relay {
            Some(relay) => relay.forward(&msg.chat_id, &frame).await,
            None => Ok(false),
        };
        match relayed {
            Ok(true) => Ok(Sent::default()),
            Ok(false) => Err(SendError::retryable(format!(
                "no open WebChat connection for chat {}; the reply waits for the client to reconnect",
                msg.chat_id
            ))),
            Err(why) => Err(SendError::retryable(format!(
                "no open WebChat connection for chat {} here, and the instances holding one could not be reached ({why}); the reply waits",
                msg.chat_id
            ))),
        }
    }
}

impl LocalSockets for WebChat {
    fn push(&self, chat_id: &str, frame: &str) -> usize {
        self.queues(chat_id)
            .into_iter()
            .filter(|tx| tx.try_send(frame.to_owned()).is_ok())
            .count()
    }
}

/// `[channels.webchat]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WebChatConfig {
    /// Serve the chat page at `/` and the WebSocket at `/ws`.
    pub enabled: bool,
    /// Largest accepted message text, in bytes.
    pub max_message_bytes: usize,
}

impl Default for WebChatConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            max_message_bytes: 64 * 1024,
        }
    }
}

/// The WebChat adapter: the page, the socket, and the open sockets as its sender.
pub struct WebChatAdapter {
    chat: Arc<WebChat>,
}

impl ChannelAdapter for WebChatAdapter {
    const KIND: ChannelKind = KIND;
    type Config = WebChatConfig;
    const NUMERIC_KEYS: &'static [NumericKey] = &[channel_key(
        "channels.webchat.max_message_bytes",
        ints(1, 16 * MIB),
        Some(Number::Int(64 * 1024)),
    )];

    fn enabled(config: &WebChatConfig) -> bool {
        config.enabled
    }

    fn validate(_: &WebChatConfig) -> Vec<ConfigError> {
        Vec::new()
    }

    fn default_rates() -> RateSettings {
        // Each browser is its own connection: limit per chat only.
        RateSettings {
            per_second: None,
            burst: None,
            per_chat_per_second: Some(10.0),
            per_chat_burst: Some(10),
        }
    }

    fn build(config: &WebChatConfig, env: &BuildEnv) -> anyhow::Result<Self> {
        Ok(Self {
            chat: WebChat::new(
                config.max_message_bytes,
                env.closing.clone(),
                env.socket_relay.clone(),
            ),
        })
    }

    fn sender(&self) -> Arc<dyn ChannelSender> {
        self.chat.clone()
    }

    fn routes(&self, ctx: &WebhookCtx) -> Vec<Route> {
        vec![
            Route {
                path: "/".to_owned(),
                handler: get(page),
            },
            Route {
                path: "/ws".to_owned(),
                handler: get(ws).with_state((self.chat.clone(), ctx.inbox.clone())),
            },
        ]
    }

    fn disabled_routes() -> Vec<Route> {
        let disabled = || async {
            error(
                StatusCode::NOT_FOUND,
                "WebChat is disabled; set channels.webchat.enabled = true".to_owned(),
            )
        };
        vec![
            Route {
                path: "/".to_owned(),
                handler: get(disabled),
            },
            Route {
                path: "/ws".to_owned(),
                handler: get(disabled),
            },
        ]
    }

    fn announce(&self, http: std::net::SocketAddr) -> Vec<String> {
        vec![format!("WebChat: open http://{http}/")]
    }

    async fn run(self: Arc<Self>, ctx: ListenerCtx) {
        self.chat.attach_health(ctx.health);
    }
}

async fn page() -> Response {
    ([(header::CACHE_CONTROL, "no-cache")], Html(PAGE)).into_response()
}

async fn ws(
    State((webchat, inbox)): State<(Arc<WebChat>, Arc<Inbox>)>,
    Query(query): Query<HashMap<String, String>>,
    slot: Option<Extension<ConnectionSlot>>,
    upgrade: WebSocketUpgrade,
) -> Response {
    let Some(chat_id) = query.get("chat_id").cloned() else {
        return error(
            StatusCode::BAD_REQUEST,
            "query parameter `chat_id` is required: /ws?chat_id=<id>".to_owned(),
        );
    };
    if let Err(e) = valid_chat_id(&chat_id) {
        return error(StatusCode::BAD_REQUEST, e);
    }
    let max = webchat.max_frame_bytes();
    // Small buffers: a chat message is small, and thousands of idle browsers must stay cheap
    // (the 128 KiB defaults cost a quarter of a megabyte per socket).
    upgrade
        .read_buffer_size(8 * 1024)
        .write_buffer_size(8 * 1024)
        .max_message_size(max)
        .max_frame_size(max)
        .on_upgrade(move |socket| async move {
            // The socket keeps its connection slot until it closes.
            let _slot = slot;
            webchat.serve(inbox, chat_id, socket).await;
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(raw: &str, expected: Result<(&str, &str), &str>) {
        match (parse_frame(raw, 8), expected) {
            (Ok(Frame::Message { id, text }), Ok((eid, etext))) => {
                assert_eq!((id.as_str(), text.as_str()), (eid, etext), "{raw}");
            }
            (Err((code, _, _)), Err(ecode)) => assert_eq!(code, ecode, "{raw}"),
            (got, expected) => panic!("{raw}: got {got:?}, expected {expected:?}"),
        }
    }

    #[test]
    fn client_frames() {
        check(
            r#"{"type":"message","id":"a","text":"hi"}"#,
            Ok(("a", "hi")),
        );
        check("not json", Err("invalid_json"));
        check(r#"{"type":"typing","id":"a"}"#, Err("unknown_type"));
        check(r#"{"id":"a","text":"hi"}"#, Err("unknown_type"));
        check(r#"{"type":"message","text":"hi"}"#, Err("invalid_id"));
        check(
            r#"{"type":"message","id":"","text":"hi"}"#,
            Err("invalid_id"),
        );
        check(
            r#"{"type":"message","id":"a","text":7}"#,
            Err("invalid_text"),
        );
        check(
            r#"{"type":"message","id":"a","text":" "}"#,
            Err("empty_text"),
        );
        check(
            r#"{"type":"message","id":"a","text":"123456789"}"#,
            Err("too_large"),
        );
    }

    #[test]
    fn chat_ids() {
        assert!(valid_chat_id("0b3f-aa_1.x:y").is_ok());
        assert!(valid_chat_id("").is_err());
        assert!(valid_chat_id("a b").is_err());
        assert!(valid_chat_id(&"x".repeat(129)).is_err());
    }
}

#[cfg(test)]
mod props {
    //! Generated frames: the parser never panics, answers the documented code for each kind of
    //! bad frame, and keeps an accepted id and text exactly. Cases: `PROPTEST_CASES`.
    use proptest::prelude::*;

    use super::*;

    const LIMIT: usize = 64;

    proptest! {
        #[test]
        fn prop_webchat_frame_never_panics(raw in any::<String>()) {
            if let Err((code, message, _)) = parse_frame(&raw, LIMIT) {
                prop_assert!(!code.is_empty() && !message.is_empty());
            }
        }

        #[test]
        fn prop_webchat_json_like_frame_never_panics(raw in "[{}\\[\\]\",:0-9a-z_ .-]{0,120}") {
            if let Err((code, _, _)) = parse_frame(&raw, LIMIT) {
                prop_assert!(["invalid_json", "unknown_type", "invalid_id", "invalid_text", "empty_text", "too_large"].contains(&code));
            }
        }

        #[test]
        fn prop_webchat_valid_frame_is_kept_exactly(
            id in "[a-zA-Z0-9 _.:é-]{0,40}[a-z]",
            text in "[^\u{0}]{0,20}[a-z]",
        ) {
            let raw = json!({"type": "message", "id": id, "text": text}).to_string();
            match parse_frame(&raw, 4096) {
                Ok(Frame::Message { id: got_id, text: got_text }) => {
                    prop_assert_eq!(got_id, id);
                    prop_assert_eq!(got_text, text);
                }
                Err(e) => prop_assert!(false, "{raw}: {e:?}"),
            }
        }

        #[test]
        fn prop_webchat_bad_frame_gets_its_code(kind in 0..6usize, filler in "[a-z]{1,10}") {
            let (raw, code) = match kind {
                0 => (format!("{{\"type\":\"message\",\"id\":\"{filler}\""), "invalid_json"),
                1 => (json!({"type": filler, "id": "a", "text": "hi"}).to_string(), "unknown_type"),
                2 => (json!({"type": "message", "id": filler.len(), "text": "hi"}).to_string(), "invalid_id"),
                3 => (json!({"type": "message", "id": "a", "text": [filler]}).to_string(), "invalid_text"),
                4 => (json!({"type": "message", "id": "a", "text": " \n\t "}).to_string(), "empty_text"),
                _ => (json!({"type": "message", "id": "a", "text": filler.repeat(LIMIT) + "x"}).to_string(), "too_large"),
            };
            // `message` itself is a known type.
            prop_assume!(!(kind == 1 && filler == "message"));
            match parse_frame(&raw, LIMIT) {
                Err((got, _, _)) => prop_assert_eq!(got, code, "{}", raw),
                Ok(f) => prop_assert!(false, "{raw} accepted as {f:?}"),
            }
        }
    }
}
