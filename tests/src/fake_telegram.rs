//! A fake Telegram Bot API server for end-to-end tests of the Telegram channel.
//! It speaks the real wire format as `teloxide` sends and parses it: requests
//! arrive as `{api_url}/bot<TOKEN>/<method>` with a JSON body (most methods),
//! a `multipart/form-data` body (`sendDocument`, `sendPhoto`, `setWebhook`,
//! which teloxide always sends as multipart, nested objects as JSON text
//! parts and uploads referenced as `attach://<part>`), a url-encoded body or
//! query parameters; answers are `{"ok":true,"result":..}` or
//! `{"ok":false,"error_code":N,"description":..,"parameters":{"retry_after":S}}`
//! with the matching HTTP status. Method names are case-insensitive, as in the
//! real API. A wrong token gets `401 Unauthorized`; an unknown method `404`.
//!
//! Updates are fed with the `push_*` helpers (which assign increasing update
//! ids and per-chat message ids) and handed out by a long-polling `getUpdates`
//! that honours `offset` (acknowledging every update below it), `limit`,
//! `timeout` and `allowed_updates`. A newer `getUpdates` ends a parked older
//! one with `409 Conflict: terminated by other getUpdates request`, and while a
//! webhook is set `getUpdates` answers `409` as the real API does. The
//! `make_update_*` builders that `push_*` uses are public, so webhook tests can
//! POST the same JSON to the gateway themselves.
//!
//! Faults are queued per method (FIFO, `"*"` for any method) or set as a
//! sticky per-method mode. Precedence for a call of method M: the sticky mode
//! of M, else the sticky mode of `"*"`, else the oldest fault queued for M,
//! else the oldest fault queued for `"*"`. Waiting is Notify-based: every
//! arrival, response and pushed update wakes the `wait_*` helpers and parked
//! long polls, which re-check their condition.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{ConnectInfo, FromRequest, Query, State};
use axum::http::{HeaderMap, Method, Request, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value, json};
use tokio::sync::Notify;

use crate::support::{ConnHandle, Server, ShutdownSignal, lock, shutdown_channel, wait_notified};

/// User id of the fake bot (`getMe`, `from` of every message it sends).
pub const BOT_ID: i64 = 777;
/// `first_name` of the fake bot.
pub const BOT_FIRST_NAME: &str = "GatewayBot";
/// `username` of the fake bot.
pub const BOT_USERNAME: &str = "gateway_bot";
/// Longest `text` accepted by `sendMessage`, in UTF-16 code units.
pub const MAX_TEXT_UTF16: usize = 4096;
/// Longest `caption` accepted by `sendDocument` / `sendPhoto`, in UTF-16 code units.
pub const MAX_CAPTION_UTF16: usize = 1024;
/// The first `update_id` handed out (deliberately not 0 or 1).
pub const FIRST_UPDATE_ID: i64 = 10_001;

const CONFLICT_WEBHOOK: &str = "Conflict: can't use getUpdates method while webhook is active; \
                                use deleteWebhook to delete the webhook first";
const CONFLICT_OTHER_POLL: &str = "Conflict: terminated by other getUpdates request; \
                                   make sure that only one bot instance is running";
const CONFLICT_SET_WEBHOOK: &str = "Conflict: terminated by setWebhook request";

/// Methods the fake implements, in their canonical spelling.
const METHODS: &[&str] = &[
    "getMe",
    "getUpdates",
    "sendMessage",
    "sendDocument",
    "sendPhoto",
    "sendChatAction",
    "setWebhook",
    "deleteWebhook",
    "getWebhookInfo",
];

/// Methods recorded as [`SentMessage`]s.
const SEND_METHODS: &[&str] = &["sendMessage", "sendDocument", "sendPhoto"];

/// How the fake answers one API call (see [`FakeTelegram::push_fault`] and
/// [`FakeTelegram::set_mode`]).
///
/// Note for tests through teloxide: on any 5xx answer teloxide sleeps 10 s
/// before returning the error, so prefer 4xx / [`TgFault::RetryAfter`] /
/// [`TgFault::Drop`] unless the test allows for that.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TgFault {
    /// Answer `{"ok":false,"error_code":code,"description":description}` with
    /// HTTP status `code`.
    Status {
        /// HTTP status and `error_code`.
        code: u16,
        /// `description` (teloxide maps known texts to `ApiError` variants).
        description: String,
    },
    /// `429` with `description` "Too Many Requests: retry after S" and
    /// `parameters.retry_after = S` (teloxide: `RequestError::RetryAfter`).
    RetryAfter(u64),
    /// Close the TCP connection without any response (teloxide:
    /// `RequestError::Network`).
    Drop,
    /// Wait this long, then handle the call normally.
    Delay(Duration),
    /// Never answer; the connection is closed when the fake is dropped.
    Hang,
    /// `401 Unauthorized` (teloxide: `ApiError::InvalidToken`).
    Unauthorized,
    /// `403 Forbidden: bot was blocked by the user` (teloxide:
    /// `ApiError::BotBlocked`).
    Blocked,
}

/// A chat updates come from. Group and supergroup ids are negative, as in the
/// real API (supergroups look like `-100xxxxxxxxxx`); a private chat's id is
/// the other user's id.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ChatSpec {
    /// A one-to-one chat with user `id`.
    Private {
        /// Chat id (= the user's id).
        id: i64,
    },
    /// A basic group.
    Group {
        /// Chat id (negative).
        id: i64,
        /// Group title.
        title: String,
    },
    /// A supergroup.
    Supergroup {
        /// Chat id (negative, usually `-100…`).
        id: i64,
        /// Supergroup title.
        title: String,
    },
}

impl ChatSpec {
    /// A private chat with user `id`.
    pub fn private(id: i64) -> ChatSpec {
        ChatSpec::Private { id }
    }

    /// A basic group.
    pub fn group(id: i64, title: &str) -> ChatSpec {
        ChatSpec::Group {
            id,
            title: title.to_owned(),
        }
    }

    /// A supergroup.
    pub fn supergroup(id: i64, title: &str) -> ChatSpec {
        ChatSpec::Supergroup {
            id,
            title: title.to_owned(),
        }
    }

    /// The chat id.
    pub fn id(&self) -> i64 {
        match self {
            ChatSpec::Private { id }
            | ChatSpec::Group { id, .. }
            | ChatSpec::Supergroup { id, .. } => *id,
        }
    }

    /// The Bot API `Chat` object.
    pub fn to_json(&self) -> Value {
        match self {
            ChatSpec::Private { id } => json!({
                "id": id,
                "type": "private",
                "first_name": format!("User{id}"),
                "username": format!("user{id}"),
            }),
            ChatSpec::Group { id, title } => json!({"id": id, "type": "group", "title": title}),
            ChatSpec::Supergroup { id, title } => {
                json!({"id": id, "type": "supergroup", "title": title})
            }
        }
    }

    /// What the fake assumes for a chat it has not seen: positive ids are
    /// private chats, `-100…` ids supergroups, other negative ids groups.
    fn inferred(id: i64) -> ChatSpec {
        if id > 0 {
            ChatSpec::private(id)
        } else if id <= -1_000_000_000_000 {
            ChatSpec::supergroup(id, &format!("Supergroup {id}"))
        } else {
            ChatSpec::group(id, &format!("Group {id}"))
        }
    }
}

impl From<&ChatSpec> for ChatSpec {
    fn from(chat: &ChatSpec) -> ChatSpec {
        chat.clone()
    }
}

/// The Bot API `User` object of a (human) user: `first_name` `User{id}`,
/// `username` `user{id}`.
pub fn user_json(user_id: i64) -> Value {
    json!({
        "id": user_id,
        "is_bot": false,
        "first_name": format!("User{user_id}"),
        "username": format!("user{user_id}"),
        "language_code": "en",
    })
}

/// The Bot API `User` object of the fake bot.
pub fn bot_user_json() -> Value {
    json!({
        "id": BOT_ID,
        "is_bot": true,
        "first_name": BOT_FIRST_NAME,
        "username": BOT_USERNAME,
    })
}

/// The `getMe` result (a `User` with the bot-only fields teloxide's `Me` requires).
pub fn me_json() -> Value {
    let mut me = bot_user_json();
    if let Value::Object(m) = &mut me {
        m.insert("can_join_groups".into(), json!(true));
        m.insert("can_read_all_group_messages".into(), json!(false));
        m.insert("supports_inline_queries".into(), json!(false));
        m.insert("can_connect_to_business".into(), json!(false));
        m.insert("has_main_web_app".into(), json!(false));
    }
    me
}

/// One file part of a `multipart/form-data` call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UploadedFile {
    /// The parameter it fills: `document` / `photo` when referenced as
    /// `attach://<part>` (teloxide's way), else the part name itself.
    pub field: String,
    /// The multipart part name (teloxide: a random id).
    pub part_name: String,
    /// The part's file name (may be empty).
    pub file_name: String,
    /// The part's `Content-Type`, if any.
    pub content_type: Option<String>,
    /// The uploaded bytes.
    pub data: Vec<u8>,
}

/// One `sendMessage` / `sendDocument` / `sendPhoto` call, recorded on arrival
/// (also when answered with a fault or a `400`).
#[derive(Debug, Clone)]
pub struct SentMessage {
    /// Canonical method name, e.g. `sendMessage`.
    pub method: String,
    /// `chat_id` as sent (numbers stringified; empty if missing).
    pub chat_id: String,
    /// `text` (`sendMessage`) or `caption` (media); empty if missing.
    pub text: String,
    /// `reply_parameters.message_id`, else the legacy `reply_to_message_id`.
    pub reply_to_message_id: Option<i64>,
    /// HTTP status answered; `0` while pending or if the connection was
    /// dropped / hung.
    pub status_returned: u16,
    /// When the call arrived.
    pub at: Instant,
    /// All parameters as a JSON object (multipart / form values are strings,
    /// except nested objects such as `reply_parameters`, which are parsed).
    pub raw: Value,
    /// `message_id` of the created message when the call succeeded.
    pub message_id: Option<i64>,
    /// Uploaded files (multipart only).
    pub files: Vec<UploadedFile>,
}

impl SentMessage {
    /// True if the fake answered with a 2xx status.
    pub fn is_success(&self) -> bool {
        (200..300).contains(&self.status_returned)
    }
}

/// One `setWebhook` / `deleteWebhook` call.
#[derive(Debug, Clone)]
pub struct WebhookCall {
    /// `setWebhook` or `deleteWebhook`.
    pub method: String,
    /// `url` (`setWebhook`).
    pub url: Option<String>,
    /// `secret_token` (`setWebhook`).
    pub secret_token: Option<String>,
    /// `drop_pending_updates`.
    pub drop_pending_updates: bool,
    /// HTTP status answered (`0` while pending / dropped).
    pub status_returned: u16,
    /// When the call arrived.
    pub at: Instant,
    /// All parameters.
    pub raw: Value,
}

/// Any API call that reached `/bot<token>/<method>`.
#[derive(Debug, Clone)]
pub struct ApiCall {
    /// Canonical method name if known, else as requested.
    pub method: String,
    /// Whether the token in the path matched.
    pub token_ok: bool,
    /// Parameters (`Null` if the body could not be parsed).
    pub params: Value,
    /// HTTP status answered (`0` while pending / dropped).
    pub status_returned: u16,
    /// When the call arrived.
    pub at: Instant,
}

/// The registered webhook (`setWebhook`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebhookState {
    /// Webhook URL.
    pub url: String,
    /// `secret_token`, sent by Telegram as `X-Telegram-Bot-Api-Secret-Token`.
    pub secret_token: Option<String>,
}

#[derive(Debug)]
struct ChatState {
    chat: Value,
    next_message_id: i64,
    messages: HashMap<i64, Value>,
}

#[derive(Debug)]
struct Recorded {
    calls: Vec<ApiCall>,
    sent: Vec<SentMessage>,
    webhook_calls: Vec<WebhookCall>,
    faults: HashMap<String, VecDeque<TgFault>>,
    modes: HashMap<String, TgFault>,
    queue: VecDeque<Value>,
    next_update_id: i64,
    chats: HashMap<i64, ChatState>,
    offsets_seen: Vec<i64>,
    acked_offset: i64,
    webhook: Option<WebhookState>,
    poll_generation: u64,
    allowed_updates: Option<Vec<String>>,
    next_file: u64,
}

impl Recorded {
    fn new() -> Recorded {
        Recorded {
            calls: Vec::new(),
            sent: Vec::new(),
            webhook_calls: Vec::new(),
            faults: HashMap::new(),
            modes: HashMap::new(),
            queue: VecDeque::new(),
            next_update_id: FIRST_UPDATE_ID,
            chats: HashMap::new(),
            offsets_seen: Vec::new(),
            acked_offset: 0,
            webhook: None,
            poll_generation: 0,
            allowed_updates: None,
            next_file: 1,
        }
    }

    /// The chat's state, created (or its JSON refreshed) from `spec`.
    fn chat(&mut self, spec: &ChatSpec) -> &mut ChatState {
        let chat = self.chats.entry(spec.id()).or_insert_with(|| ChatState {
            chat: spec.to_json(),
            next_message_id: 1,
            messages: HashMap::new(),
        });
        chat.chat = spec.to_json();
        chat
    }

    /// The chat's state, inferred from the id if unseen.
    fn chat_by_id(&mut self, id: i64) -> &mut ChatState {
        self.chats.entry(id).or_insert_with(|| ChatState {
            chat: ChatSpec::inferred(id).to_json(),
            next_message_id: 1,
            messages: HashMap::new(),
        })
    }

    fn alloc_update_id(&mut self) -> i64 {
        let id = self.next_update_id;
        self.next_update_id += 1;
        id
    }

    fn take_fault(&mut self, method: &str) -> Option<TgFault> {
        let key = method.to_ascii_lowercase();
        if let Some(mode) = self.modes.get(&key).or_else(|| self.modes.get("*")) {
            return Some(mode.clone());
        }
        if let Some(f) = self.faults.get_mut(&key).and_then(VecDeque::pop_front) {
            return Some(f);
        }
        self.faults.get_mut("*").and_then(VecDeque::pop_front)
    }

    fn is_allowed(&self, update: &Value) -> bool {
        let Some(kind) = update_kind(update) else {
            return true;
        };
        match &self.allowed_updates {
            Some(list) => list.iter().any(|a| a == kind),
            None => !matches!(
                kind,
                "chat_member" | "message_reaction" | "message_reaction_count"
            ),
        }
    }
}

#[derive(Debug)]
struct Shared {
    token: String,
    state: Mutex<Recorded>,
    changed: Notify,
    shutdown: ShutdownSignal,
}

/// The fake Telegram Bot API. Dropping it shuts the server down and closes
/// the connections of parked long polls and hanging calls.
pub struct FakeTelegram {
    shared: Arc<Shared>,
    server: Server,
}

impl std::fmt::Debug for FakeTelegram {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FakeTelegram")
            .field("addr", &self.server.addr)
            .finish_non_exhaustive()
    }
}

impl FakeTelegram {
    /// Starts the fake on `127.0.0.1:<ephemeral>`, accepting `token` only.
    pub async fn start(token: &str) -> FakeTelegram {
        let (shutdown_tx, shutdown) = shutdown_channel();
        let shared = Arc::new(Shared {
            token: token.to_owned(),
            state: Mutex::new(Recorded::new()),
            changed: Notify::new(),
            shutdown,
        });
        let router = Router::new()
            .fallback(handle)
            .with_state(Arc::clone(&shared));
        let server = Server::start(router, shutdown_tx)
            .await
            .expect("FakeTelegram: failed to bind 127.0.0.1:0");
        FakeTelegram { shared, server }
    }

    /// The value for teloxide's `Bot::set_api_url`: `http://127.0.0.1:PORT/`
    /// (teloxide appends the path segments `bot<TOKEN>` and `<method>`; a
    /// base with a non-root path must not end in `/`).
    pub fn api_url(&self) -> String {
        format!("http://{}/", self.server.addr)
    }

    /// The bound socket address.
    pub fn addr(&self) -> std::net::SocketAddr {
        self.server.addr
    }

    /// The token the fake accepts.
    pub fn token(&self) -> &str {
        &self.shared.token
    }

    // ---- feeding updates -------------------------------------------------

    /// Builds a `message` update with `text` from user `from_user_id` in
    /// `chat`, allocating its `update_id` and the chat's next `message_id`
    /// and remembering the message (for replies), without queueing it.
    pub fn make_update_text(
        &self,
        chat: impl Into<ChatSpec>,
        from_user_id: i64,
        text: &str,
    ) -> Value {
        self.make_message_update(chat.into(), from_user_id, |m| {
            m.insert("text".into(), json!(text));
        })
    }

    /// Builds a photo `message` update with `caption`; the largest size has
    /// file id `file_id`, a 90×90 thumbnail `{file_id}_s` comes first.
    pub fn make_update_caption_photo(
        &self,
        chat: impl Into<ChatSpec>,
        from_user_id: i64,
        caption: &str,
        file_id: &str,
    ) -> Value {
        self.make_message_update(chat.into(), from_user_id, |m| {
            m.insert("photo".into(), photo_sizes(file_id, 48_000));
            m.insert("caption".into(), json!(caption));
        })
    }

    /// Builds a document `message` update, with a caption if given.
    pub fn make_update_document(
        &self,
        chat: impl Into<ChatSpec>,
        from_user_id: i64,
        caption: Option<&str>,
        file_id: &str,
        file_name: &str,
    ) -> Value {
        self.make_message_update(chat.into(), from_user_id, |m| {
            m.insert(
                "document".into(),
                document_json(file_id, Some(file_name), None, 1234),
            );
            if let Some(c) = caption {
                m.insert("caption".into(), json!(c));
            }
        })
    }

    /// Builds a text `message` update replying to message
    /// `reply_to_message_id` of the same chat (embedded as
    /// `reply_to_message`; a minimal stand-in if the fake never saw it).
    pub fn make_update_reply(
        &self,
        chat: impl Into<ChatSpec>,
        from_user_id: i64,
        text: &str,
        reply_to_message_id: i64,
    ) -> Value {
        let chat = chat.into();
        let original = {
            let mut st = lock(&self.shared.state);
            let state = st.chat(&chat);
            match state.messages.get(&reply_to_message_id) {
                Some(m) => without_reply(m),
                None => json!({
                    "message_id": reply_to_message_id,
                    "date": unix_now(),
                    "chat": state.chat.clone(),
                    "text": "",
                }),
            }
        };
        self.make_message_update(chat, from_user_id, |m| {
            m.insert("text".into(), json!(text));
            m.insert("reply_to_message".into(), original);
        })
    }

    /// Builds an `edited_message` update changing the text (or the caption,
    /// for a media message) of `message_id` to `new_text`.
    pub fn make_update_edit(
        &self,
        chat: impl Into<ChatSpec>,
        from_user_id: i64,
        message_id: i64,
        new_text: &str,
    ) -> Value {
        let chat = chat.into();
        let mut st = lock(&self.shared.state);
        let update_id = st.alloc_update_id();
        let state = st.chat(&chat);
        let mut msg = match state.messages.get(&message_id) {
            Some(Value::Object(m)) => m.clone(),
            _ => message_base(
                &state.chat,
                &user_json(from_user_id),
                message_id,
                unix_now(),
            ),
        };
        if msg.contains_key("caption") {
            msg.insert("caption".into(), json!(new_text));
        } else {
            msg.insert("text".into(), json!(new_text));
        }
        msg.insert("edit_date".into(), json!(unix_now()));
        let msg = Value::Object(msg);
        state.messages.insert(message_id, msg.clone());
        json!({"update_id": update_id, "edited_message": msg})
    }

    fn make_message_update(
        &self,
        chat: ChatSpec,
        from_user_id: i64,
        fill: impl FnOnce(&mut Map<String, Value>),
    ) -> Value {
        let mut st = lock(&self.shared.state);
        let update_id = st.alloc_update_id();
        let state = st.chat(&chat);
        let message_id = state.next_message_id;
        state.next_message_id += 1;
        let mut msg = message_base(
            &state.chat,
            &user_json(from_user_id),
            message_id,
            unix_now(),
        );
        fill(&mut msg);
        let msg = Value::Object(msg);
        state.messages.insert(message_id, msg.clone());
        json!({"update_id": update_id, "message": msg})
    }

    /// Queues a text message; returns its `message_id`.
    pub fn push_text(&self, chat: impl Into<ChatSpec>, from_user_id: i64, text: &str) -> i64 {
        let update = self.make_update_text(chat, from_user_id, text);
        self.push_message_update(update)
    }

    /// Queues a photo with a caption; returns its `message_id`.
    pub fn push_caption_photo(
        &self,
        chat: impl Into<ChatSpec>,
        from_user_id: i64,
        caption: &str,
        file_id: &str,
    ) -> i64 {
        let update = self.make_update_caption_photo(chat, from_user_id, caption, file_id);
        self.push_message_update(update)
    }

    /// Queues a document; returns its `message_id`.
    pub fn push_document(
        &self,
        chat: impl Into<ChatSpec>,
        from_user_id: i64,
        caption: Option<&str>,
        file_id: &str,
        file_name: &str,
    ) -> i64 {
        let update = self.make_update_document(chat, from_user_id, caption, file_id, file_name);
        self.push_message_update(update)
    }

    /// Queues a reply to `reply_to_message_id`; returns its `message_id`.
    pub fn push_reply(
        &self,
        chat: impl Into<ChatSpec>,
        from_user_id: i64,
        text: &str,
        reply_to_message_id: i64,
    ) -> i64 {
        let update = self.make_update_reply(chat, from_user_id, text, reply_to_message_id);
        self.push_message_update(update)
    }

    /// Queues an `edited_message` update; returns its `update_id`.
    pub fn push_edit(
        &self,
        chat: impl Into<ChatSpec>,
        from_user_id: i64,
        message_id: i64,
        new_text: &str,
    ) -> i64 {
        let update = self.make_update_edit(chat, from_user_id, message_id, new_text);
        self.push_raw(update)
    }

    /// Queues any update JSON as is; an `update_id` is assigned if missing
    /// (later assigned ids continue above the highest seen). Returns the
    /// `update_id`.
    pub fn push_raw(&self, mut update: Value) -> i64 {
        let id = {
            let mut st = lock(&self.shared.state);
            let id = match update.get("update_id").and_then(Value::as_i64) {
                Some(id) => {
                    st.next_update_id = st.next_update_id.max(id.saturating_add(1));
                    id
                }
                None => {
                    let id = st.alloc_update_id();
                    if let Value::Object(m) = &mut update {
                        m.insert("update_id".into(), json!(id));
                    }
                    id
                }
            };
            st.queue.push_back(update);
            id
        };
        self.shared.changed.notify_waiters();
        id
    }

    fn push_message_update(&self, update: Value) -> i64 {
        let message_id = update
            .pointer("/message/message_id")
            .and_then(Value::as_i64)
            .unwrap_or_default();
        self.push_raw(update);
        message_id
    }

    /// Highest `offset` of a `getUpdates` call that was processed (not
    /// faulted); `0` if none. Every update below it is acknowledged.
    pub fn acked_offset(&self) -> i64 {
        lock(&self.shared.state).acked_offset
    }

    /// Every `offset` parameter seen by `getUpdates` (with a valid token),
    /// in arrival order, including calls answered with a fault.
    pub fn offsets_seen(&self) -> Vec<i64> {
        lock(&self.shared.state).offsets_seen.clone()
    }

    /// Updates queued and not yet acknowledged.
    pub fn pending_updates(&self) -> usize {
        lock(&self.shared.state).queue.len()
    }

    /// Waits until no update is pending (all acknowledged by an `offset`).
    pub async fn wait_all_acked(&self, timeout: Duration) -> anyhow::Result<()> {
        let got = wait_notified(&self.shared.changed, timeout, || {
            lock(&self.shared.state).queue.is_empty().then_some(())
        })
        .await;
        got.ok_or_else(|| {
            let st = lock(&self.shared.state);
            let ids: Vec<i64> = st.queue.iter().filter_map(update_id).collect();
            anyhow::anyhow!(
                "FakeTelegram: timed out after {timeout:?} waiting for all updates to be \
                 acknowledged; still pending: {ids:?}; offsets seen: {:?}",
                st.offsets_seen
            )
        })
    }

    /// Waits until a processed `getUpdates` carried an offset `>= offset`.
    pub async fn wait_acked_offset(&self, offset: i64, timeout: Duration) -> anyhow::Result<()> {
        let got = wait_notified(&self.shared.changed, timeout, || {
            (lock(&self.shared.state).acked_offset >= offset).then_some(())
        })
        .await;
        got.ok_or_else(|| {
            anyhow::anyhow!(
                "FakeTelegram: timed out after {timeout:?} waiting for offset >= {offset}; \
                 offsets seen: {:?}",
                self.offsets_seen()
            )
        })
    }

    // ---- recording -------------------------------------------------------

    /// Every `sendMessage` / `sendDocument` / `sendPhoto` call, in arrival
    /// order, whatever it was answered.
    pub fn sent(&self) -> Vec<SentMessage> {
        lock(&self.shared.state).sent.clone()
    }

    /// Only the send calls answered with a 2xx status.
    pub fn sent_ok(&self) -> Vec<SentMessage> {
        sent_ok_of(&lock(&self.shared.state))
    }

    /// Waits until `pred(&successful_sends)` holds (re-checked on every
    /// arrival and response) and returns the successful sends. On timeout the
    /// error lists every send call with the status returned.
    pub async fn wait_sent(
        &self,
        pred: impl Fn(&[SentMessage]) -> bool,
        timeout: Duration,
    ) -> anyhow::Result<Vec<SentMessage>> {
        let got = wait_notified(&self.shared.changed, timeout, || {
            let s = sent_ok_of(&lock(&self.shared.state));
            pred(&s).then_some(s)
        })
        .await;
        got.ok_or_else(|| {
            let all = self.sent();
            let lines: Vec<String> = all
                .iter()
                .map(|s| {
                    format!(
                        "  [{}] {} chat={:?} reply_to={:?} text={:?}",
                        s.status_returned, s.method, s.chat_id, s.reply_to_message_id, s.text
                    )
                })
                .collect();
            anyhow::anyhow!(
                "FakeTelegram: timed out after {timeout:?} waiting for the sent predicate; \
                 {} successful out of {} send calls:\n{}",
                all.iter().filter(|s| s.is_success()).count(),
                all.len(),
                lines.join("\n")
            )
        })
    }

    /// Every call that reached `/bot<token>/<method>`, in arrival order.
    pub fn api_calls(&self) -> Vec<ApiCall> {
        lock(&self.shared.state).calls.clone()
    }

    /// Number of calls of `method` (case-insensitive; `"*"` for all), any
    /// token, whatever they were answered.
    pub fn calls(&self, method: &str) -> usize {
        count_calls(&lock(&self.shared.state), method)
    }

    /// Waits until at least `n` calls of `method` arrived; returns the count.
    pub async fn wait_calls(
        &self,
        method: &str,
        n: usize,
        timeout: Duration,
    ) -> anyhow::Result<usize> {
        let got = wait_notified(&self.shared.changed, timeout, || {
            let c = count_calls(&lock(&self.shared.state), method);
            (c >= n).then_some(c)
        })
        .await;
        got.ok_or_else(|| {
            let calls: Vec<String> = self
                .api_calls()
                .iter()
                .map(|c| format!("{}[{}]", c.method, c.status_returned))
                .collect();
            anyhow::anyhow!(
                "FakeTelegram: timed out after {timeout:?} waiting for {n} {method} call(s); \
                 got {}; all calls: {calls:?}",
                self.calls(method)
            )
        })
    }

    /// Number of `getUpdates` calls so far.
    pub fn get_updates_calls(&self) -> usize {
        self.calls("getUpdates")
    }

    /// Waits until at least `n` `getUpdates` calls arrived (a parked long
    /// poll counts on arrival).
    pub async fn wait_get_updates_calls(
        &self,
        n: usize,
        timeout: Duration,
    ) -> anyhow::Result<usize> {
        self.wait_calls("getUpdates", n, timeout).await
    }

    /// Every `setWebhook` / `deleteWebhook` call, in arrival order.
    pub fn webhook_calls(&self) -> Vec<WebhookCall> {
        lock(&self.shared.state).webhook_calls.clone()
    }

    /// The webhook currently set, if any.
    pub fn webhook(&self) -> Option<WebhookState> {
        lock(&self.shared.state).webhook.clone()
    }

    /// Waits until `pred(current webhook)` holds (e.g. `Option::is_some` for
    /// "a webhook was registered"); returns the current webhook.
    pub async fn wait_webhook(
        &self,
        pred: impl Fn(Option<&WebhookState>) -> bool,
        timeout: Duration,
    ) -> anyhow::Result<Option<WebhookState>> {
        let got = wait_notified(&self.shared.changed, timeout, || {
            let w = lock(&self.shared.state).webhook.clone();
            pred(w.as_ref()).then_some(w)
        })
        .await;
        got.ok_or_else(|| {
            anyhow::anyhow!(
                "FakeTelegram: timed out after {timeout:?} waiting for the webhook predicate; \
                 current: {:?}; calls: {:?}",
                self.webhook(),
                self.webhook_calls()
                    .iter()
                    .map(|c| (c.method.clone(), c.url.clone(), c.status_returned))
                    .collect::<Vec<_>>()
            )
        })
    }

    /// The message the fake holds for `message_id` in chat `chat_id` (user
    /// messages pushed, bot messages sent), if any.
    pub fn message(&self, chat_id: i64, message_id: i64) -> Option<Value> {
        lock(&self.shared.state)
            .chats
            .get(&chat_id)
            .and_then(|c| c.messages.get(&message_id).cloned())
    }

    // ---- faults ----------------------------------------------------------

    /// Queues a fault for the next call of `method` (case-insensitive; `"*"`
    /// for the next call of any method). FIFO per key.
    pub fn push_fault(&self, method: &str, fault: TgFault) {
        lock(&self.shared.state)
            .faults
            .entry(method.to_ascii_lowercase())
            .or_default()
            .push_back(fault);
    }

    /// Makes every call of `method` (`"*"`: every method) get `mode` until
    /// cleared with `None`; queued faults are not consumed meanwhile.
    pub fn set_mode(&self, method: &str, mode: Option<TgFault>) {
        let key = method.to_ascii_lowercase();
        let mut st = lock(&self.shared.state);
        match mode {
            Some(m) => {
                st.modes.insert(key, m);
            }
            None => {
                st.modes.remove(&key);
            }
        }
    }

    /// Number of queued (unconsumed) faults over all methods.
    pub fn pending_faults(&self) -> usize {
        lock(&self.shared.state)
            .faults
            .values()
            .map(VecDeque::len)
            .sum()
    }
}

fn count_calls(st: &Recorded, method: &str) -> usize {
    st.calls
        .iter()
        .filter(|c| method == "*" || c.method.eq_ignore_ascii_case(method))
        .count()
}

fn sent_ok_of(st: &Recorded) -> Vec<SentMessage> {
    st.sent.iter().filter(|s| s.is_success()).cloned().collect()
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

fn update_id(update: &Value) -> Option<i64> {
    update.get("update_id").and_then(Value::as_i64)
}

/// The update's type: its first key other than `update_id`.
fn update_kind(update: &Value) -> Option<&str> {
    update
        .as_object()?
        .keys()
        .find(|k| k.as_str() != "update_id")
        .map(String::as_str)
}

fn message_base(chat: &Value, from: &Value, message_id: i64, date: i64) -> Map<String, Value> {
    let mut m = Map::new();
    m.insert("message_id".into(), json!(message_id));
    m.insert("from".into(), from.clone());
    m.insert("chat".into(), chat.clone());
    m.insert("date".into(), json!(date));
    m
}

/// A message as embedded in `reply_to_message` (which never nests further).
fn without_reply(msg: &Value) -> Value {
    let mut m = msg.clone();
    if let Value::Object(o) = &mut m {
        o.remove("reply_to_message");
    }
    m
}

fn photo_sizes(file_id: &str, size: usize) -> Value {
    json!([
        {"file_id": format!("{file_id}_s"), "file_unique_id": format!("u_{file_id}_s"),
         "width": 90, "height": 90, "file_size": 1024},
        {"file_id": file_id, "file_unique_id": format!("u_{file_id}"),
         "width": 800, "height": 600, "file_size": size},
    ])
}

fn document_json(
    file_id: &str,
    file_name: Option<&str>,
    mime_type: Option<&str>,
    size: usize,
) -> Value {
    let mut d = json!({
        "file_id": file_id,
        "file_unique_id": format!("u_{file_id}"),
        "file_size": size,
    });
    if let Value::Object(m) = &mut d {
        if let Some(name) = file_name.filter(|n| !n.is_empty()) {
            m.insert("file_name".into(), json!(name));
            let mime = mime_type
                .map(str::to_owned)
                .unwrap_or_else(|| guess_mime(name));
            m.insert("mime_type".into(), json!(mime));
        } else if let Some(mime) = mime_type {
            m.insert("mime_type".into(), json!(mime));
        }
    }
    d
}

fn guess_mime(file_name: &str) -> String {
    let ext = file_name
        .rsplit_once('.')
        .map(|(_, e)| e.to_ascii_lowercase())
        .unwrap_or_default();
    match ext.as_str() {
        "txt" | "log" => "text/plain",
        "md" => "text/markdown",
        "json" => "application/json",
        "pdf" => "application/pdf",
        "png" => "image/png",
        "jpg" | "jpeg" => "image/jpeg",
        _ => "application/octet-stream",
    }
    .to_owned()
}

// ---- request parsing ------------------------------------------------------

/// Parameters of one call.
#[derive(Debug, Default)]
struct Params {
    fields: Map<String, Value>,
    files: Vec<UploadedFile>,
}

/// Fields whose string values (multipart, form, query) hold JSON.
const JSON_FIELDS: &[&str] = &[
    "reply_parameters",
    "reply_markup",
    "entities",
    "caption_entities",
    "link_preview_options",
    "allowed_updates",
];

/// Splits `/bot<token>/<method>` into the percent-decoded token and method.
fn parse_path(path: &str) -> Option<(String, String)> {
    let rest = path.strip_prefix('/')?;
    let (first, method) = rest.split_once('/')?;
    let token = first.strip_prefix("bot")?;
    if method.is_empty() || method.contains('/') {
        return None;
    }
    Some((percent_decode(token), percent_decode(method)))
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && let Some(hex) = bytes.get(i + 1..i + 3)
            && let Ok(hex) = std::str::from_utf8(hex)
            && let Ok(b) = u8::from_str_radix(hex, 16)
        {
            out.push(b);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

async fn read_params(uri: &Uri, headers: &HeaderMap, body: Bytes) -> Result<Params, String> {
    let mut params = Params::default();
    if let Ok(Query(pairs)) = Query::<Vec<(String, String)>>::try_from_uri(uri) {
        for (k, v) in pairs {
            params.fields.insert(k, Value::String(v));
        }
    }
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let mime = content_type
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    if body.is_empty() {
        // No body: query parameters only.
    } else if mime == "multipart/form-data" {
        let boundary = multipart_boundary(&content_type)
            .ok_or("Bad Request: multipart body without a boundary")?;
        let parts = parse_multipart(&body, &boundary)
            .ok_or("Bad Request: malformed multipart/form-data body")?;
        for part in parts {
            match part.file_name {
                Some(file_name) => params.files.push(UploadedFile {
                    field: part.name.clone(),
                    part_name: part.name,
                    file_name,
                    content_type: part.content_type,
                    data: part.data,
                }),
                None => {
                    let v = String::from_utf8_lossy(&part.data).into_owned();
                    params.fields.insert(part.name, Value::String(v));
                }
            }
        }
    } else if mime == "application/x-www-form-urlencoded" {
        let req = Request::builder()
            .method(Method::POST)
            .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .body(Body::from(body))
            .map_err(|e| format!("Bad Request: {e}"))?;
        let axum::Form(pairs) = axum::Form::<Vec<(String, String)>>::from_request(req, &())
            .await
            .map_err(|_| "Bad Request: can't parse form parameters".to_owned())?;
        for (k, v) in pairs {
            params.fields.insert(k, Value::String(v));
        }
    } else {
        // JSON (teloxide sends `application/json`); anything else is tried as JSON too.
        match serde_json::from_slice::<Value>(&body) {
            Ok(Value::Object(m)) => params.fields.extend(m),
            Ok(_) => return Err("Bad Request: parameters must be a JSON object".into()),
            Err(_) => return Err("Bad Request: can't parse JSON object".into()),
        }
    }
    // `attach://<part>` references name the parameter an upload fills.
    for file in &mut params.files {
        let reference = format!("attach://{}", file.part_name);
        if let Some((name, _)) = params
            .fields
            .iter()
            .find(|(_, v)| v.as_str() == Some(reference.as_str()))
        {
            file.field = name.clone();
        }
    }
    for key in JSON_FIELDS {
        if let Some(Value::String(s)) = params.fields.get(*key)
            && let Ok(v) = serde_json::from_str::<Value>(s)
        {
            params.fields.insert((*key).to_owned(), v);
        }
    }
    Ok(params)
}

fn multipart_boundary(content_type: &str) -> Option<String> {
    split_header_params(content_type)
        .into_iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("boundary"))
        .map(|(_, v)| v)
        .filter(|b| !b.is_empty())
}

/// Splits `a; k=v; k2="v;2"` into `(key, value)` pairs (the first segment,
/// having no `=`, is returned with an empty value), honouring quotes.
fn split_header_params(s: &str) -> Vec<(String, String)> {
    let mut segments = Vec::new();
    let mut current = String::new();
    let mut in_quotes = false;
    let mut escaped = false;
    for c in s.chars() {
        if escaped {
            current.push(c);
            escaped = false;
        } else if in_quotes && c == '\\' {
            escaped = true;
        } else if c == '"' {
            in_quotes = !in_quotes;
        } else if c == ';' && !in_quotes {
            segments.push(std::mem::take(&mut current));
        } else {
            current.push(c);
        }
    }
    segments.push(current);
    segments
        .into_iter()
        .map(|seg| match seg.split_once('=') {
            Some((k, v)) => (k.trim().to_owned(), v.trim().to_owned()),
            None => (seg.trim().to_owned(), String::new()),
        })
        .collect()
}

#[derive(Debug)]
struct FormPart {
    name: String,
    file_name: Option<String>,
    content_type: Option<String>,
    data: Vec<u8>,
}

fn find(haystack: &[u8], needle: &[u8], from: usize) -> Option<usize> {
    haystack
        .get(from..)?
        .windows(needle.len())
        .position(|w| w == needle)
        .map(|i| i + from)
}

fn parse_multipart(body: &[u8], boundary: &str) -> Option<Vec<FormPart>> {
    let delim = format!("--{boundary}").into_bytes();
    let next_delim = format!("\r\n--{boundary}").into_bytes();
    let mut pos = find(body, &delim, 0)? + delim.len();
    let mut parts = Vec::new();
    loop {
        let rest = body.get(pos..)?;
        if rest.starts_with(b"--") {
            return Some(parts);
        }
        if !rest.starts_with(b"\r\n") {
            return None;
        }
        pos += 2;
        let (head, data_start) = if body.get(pos..)?.starts_with(b"\r\n") {
            ("", pos + 2)
        } else {
            let end = find(body, b"\r\n\r\n", pos)?;
            (std::str::from_utf8(body.get(pos..end)?).ok()?, end + 4)
        };
        let data_end = find(body, &next_delim, data_start)?;
        let mut part = FormPart {
            name: String::new(),
            file_name: None,
            content_type: None,
            data: body.get(data_start..data_end)?.to_vec(),
        };
        for line in head.split("\r\n") {
            let Some((name, value)) = line.split_once(':') else {
                continue;
            };
            if name.trim().eq_ignore_ascii_case("content-disposition") {
                for (k, v) in split_header_params(value) {
                    match k.to_ascii_lowercase().as_str() {
                        "name" => part.name = v,
                        "filename" => part.file_name = Some(v),
                        "filename*" => {
                            // RFC 5987: charset'language'percent-encoded
                            let encoded = v.splitn(3, '\'').nth(2).unwrap_or(&v);
                            part.file_name = Some(percent_decode(encoded));
                        }
                        _ => {}
                    }
                }
            } else if name.trim().eq_ignore_ascii_case("content-type") {
                part.content_type = Some(value.trim().to_owned());
            }
        }
        parts.push(part);
        pos = data_end + next_delim.len();
    }
}

fn param_str(p: &Map<String, Value>, key: &str) -> Option<String> {
    match p.get(key)? {
        Value::Null => None,
        Value::String(s) => Some(s.clone()),
        other => Some(other.to_string()),
    }
}

fn param_i64(p: &Map<String, Value>, key: &str) -> Option<i64> {
    as_i64(p.get(key)?)
}

fn as_i64(v: &Value) -> Option<i64> {
    match v {
        Value::Number(n) => n.as_i64(),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

fn param_bool(p: &Map<String, Value>, key: &str) -> bool {
    match p.get(key) {
        Some(Value::Bool(b)) => *b,
        Some(Value::String(s)) => s.eq_ignore_ascii_case("true") || s == "1",
        Some(Value::Number(n)) => n.as_i64() == Some(1),
        _ => false,
    }
}

/// `(message_id, allow_sending_without_reply)` of the reply target, from
/// `reply_parameters` or the legacy `reply_to_message_id`.
fn reply_target(p: &Map<String, Value>) -> Option<(i64, bool)> {
    if let Some(rp) = p.get("reply_parameters").and_then(Value::as_object) {
        let id = rp.get("message_id").and_then(as_i64)?;
        let allow = match rp.get("allow_sending_without_reply") {
            Some(Value::Bool(b)) => *b,
            _ => param_bool(p, "allow_sending_without_reply"),
        };
        return Some((id, allow));
    }
    let id = param_i64(p, "reply_to_message_id")?;
    Some((id, param_bool(p, "allow_sending_without_reply")))
}

fn utf16_len(s: &str) -> usize {
    s.encode_utf16().count()
}

// ---- responses --------------------------------------------------------------

fn reply_json(status: u16, body: Value) -> (u16, Response) {
    let code = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    (code.as_u16(), (code, axum::Json(body)).into_response())
}

fn ok(result: Value) -> (u16, Response) {
    reply_json(200, json!({"ok": true, "result": result}))
}

fn ok_described(result: Value, description: &str) -> (u16, Response) {
    reply_json(
        200,
        json!({"ok": true, "result": result, "description": description}),
    )
}

fn api_error(code: u16, description: &str) -> (u16, Response) {
    reply_json(
        code,
        json!({"ok": false, "error_code": code, "description": description}),
    )
}

fn retry_after(secs: u64) -> (u16, Response) {
    reply_json(
        429,
        json!({
            "ok": false,
            "error_code": 429,
            "description": format!("Too Many Requests: retry after {secs}"),
            "parameters": {"retry_after": secs},
        }),
    )
}

// ---- the handler ------------------------------------------------------------

/// Where one call was recorded, to fill in the status once answered.
#[derive(Debug, Default)]
struct Slots {
    call: usize,
    sent: Option<usize>,
    webhook: Option<usize>,
}

fn finish(shared: &Shared, slots: &Slots, status: u16) {
    {
        let mut st = lock(&shared.state);
        if let Some(c) = st.calls.get_mut(slots.call) {
            c.status_returned = status;
        }
        if let Some(s) = slots.sent.and_then(|i| st.sent.get_mut(i)) {
            s.status_returned = status;
        }
        if let Some(w) = slots.webhook.and_then(|i| st.webhook_calls.get_mut(i)) {
            w.status_returned = status;
        }
    }
    shared.changed.notify_waiters();
}

async fn handle(
    State(shared): State<Arc<Shared>>,
    ConnectInfo(conn): ConnectInfo<ConnHandle>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let Some((token, requested)) = parse_path(uri.path()) else {
        return api_error(404, "Not Found").1;
    };
    let method = METHODS
        .iter()
        .find(|m| m.eq_ignore_ascii_case(&requested))
        .map_or(requested, |m| (*m).to_owned());
    let token_ok = token == shared.token;
    let params = read_params(&uri, &headers, body).await;

    let (slots, fault) = {
        let mut st = lock(&shared.state);
        let fields = params.as_ref().ok().map(|p| &p.fields);
        let raw = fields.map_or(Value::Null, |f| Value::Object(f.clone()));
        let now = Instant::now();
        st.calls.push(ApiCall {
            method: method.clone(),
            token_ok,
            params: raw.clone(),
            status_returned: 0,
            at: now,
        });
        let mut slots = Slots {
            call: st.calls.len() - 1,
            ..Slots::default()
        };
        if let (true, Ok(p)) = (SEND_METHODS.contains(&method.as_str()), &params) {
            let text = param_str(&p.fields, "text")
                .or_else(|| param_str(&p.fields, "caption"))
                .unwrap_or_default();
            st.sent.push(SentMessage {
                method: method.clone(),
                chat_id: param_str(&p.fields, "chat_id").unwrap_or_default(),
                text,
                reply_to_message_id: reply_target(&p.fields).map(|(id, _)| id),
                status_returned: 0,
                at: now,
                raw: raw.clone(),
                message_id: None,
                files: p.files.clone(),
            });
            slots.sent = Some(st.sent.len() - 1);
        }
        if let (true, Ok(p)) = (method == "setWebhook" || method == "deleteWebhook", &params) {
            st.webhook_calls.push(WebhookCall {
                method: method.clone(),
                url: param_str(&p.fields, "url"),
                secret_token: param_str(&p.fields, "secret_token"),
                drop_pending_updates: param_bool(&p.fields, "drop_pending_updates"),
                status_returned: 0,
                at: now,
                raw,
            });
            slots.webhook = Some(st.webhook_calls.len() - 1);
        }
        let fault = if token_ok {
            if let (true, Some(offset)) = (
                method == "getUpdates",
                fields.and_then(|f| param_i64(f, "offset")),
            ) {
                st.offsets_seen.push(offset);
            }
            st.take_fault(&method)
        } else {
            None
        };
        (slots, fault)
    };
    shared.changed.notify_waiters();

    let (status, response) = 'answer: {
        if !token_ok {
            break 'answer api_error(401, "Unauthorized");
        }
        match fault {
            None => {}
            Some(TgFault::Status { code, description }) => {
                break 'answer api_error(code, &description);
            }
            Some(TgFault::RetryAfter(secs)) => break 'answer retry_after(secs),
            Some(TgFault::Unauthorized) => break 'answer api_error(401, "Unauthorized"),
            Some(TgFault::Blocked) => {
                break 'answer api_error(403, "Forbidden: bot was blocked by the user");
            }
            Some(TgFault::Delay(d)) => {
                tokio::select! {
                    () = tokio::time::sleep(d) => {}
                    () = shared.shutdown.wait() => {
                        conn.kill();
                        return StatusCode::SERVICE_UNAVAILABLE.into_response();
                    }
                }
            }
            Some(TgFault::Hang) => {
                shared.shutdown.wait().await;
                conn.kill();
                return StatusCode::SERVICE_UNAVAILABLE.into_response();
            }
            Some(TgFault::Drop) => {
                conn.kill();
                return StatusCode::SERVICE_UNAVAILABLE.into_response();
            }
        }
        let params = match params {
            Ok(p) => p,
            Err(description) => break 'answer api_error(400, &description),
        };
        match method.as_str() {
            "getUpdates" => match get_updates(&shared, &params.fields).await {
                Some(answer) => answer,
                None => {
                    conn.kill();
                    return StatusCode::SERVICE_UNAVAILABLE.into_response();
                }
            },
            _ => dispatch(&shared, &method, &params, &slots),
        }
    };
    finish(&shared, &slots, status);
    response
}

/// Every method but `getUpdates` (which may park).
fn dispatch(shared: &Shared, method: &str, params: &Params, slots: &Slots) -> (u16, Response) {
    let p = &params.fields;
    let mut st = lock(&shared.state);
    match method {
        "getMe" => ok(me_json()),
        "sendMessage" => send_message(&mut st, p, slots),
        "sendDocument" | "sendPhoto" => send_media(&mut st, method, params, slots),
        "sendChatAction" => {
            if param_str(p, "chat_id").is_none_or(|c| c.is_empty()) {
                api_error(400, "Bad Request: chat_id is empty")
            } else if param_str(p, "action").is_none_or(|a| a.is_empty()) {
                api_error(400, "Bad Request: action is empty")
            } else {
                ok(json!(true))
            }
        }
        "setWebhook" => {
            let url = param_str(p, "url").unwrap_or_default();
            let secret = param_str(p, "secret_token").filter(|s| !s.is_empty());
            if let Some(s) = &secret {
                let valid = s.len() <= 256
                    && s.chars()
                        .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
                if !valid {
                    return api_error(
                        400,
                        "Bad Request: secret token contains unallowed characters",
                    );
                }
            }
            if param_bool(p, "drop_pending_updates") {
                st.queue.clear();
            }
            let answer = if url.is_empty() {
                let was = st.webhook.take();
                ok_described(
                    json!(true),
                    if was.is_some() {
                        "Webhook was deleted"
                    } else {
                        "Webhook is already deleted"
                    },
                )
            } else {
                st.webhook = Some(WebhookState {
                    url,
                    secret_token: secret,
                });
                ok_described(json!(true), "Webhook was set")
            };
            drop(st);
            // Parked long polls re-check and end with 409.
            shared.changed.notify_waiters();
            answer
        }
        "deleteWebhook" => {
            if param_bool(p, "drop_pending_updates") {
                st.queue.clear();
            }
            let was = st.webhook.take();
            ok_described(
                json!(true),
                if was.is_some() {
                    "Webhook was deleted"
                } else {
                    "Webhook is already deleted"
                },
            )
        }
        "getWebhookInfo" => {
            let pending = st.queue.len();
            match &st.webhook {
                Some(w) => ok(json!({
                    "url": w.url,
                    "has_custom_certificate": false,
                    "pending_update_count": pending,
                    "max_connections": 40,
                })),
                None => ok(json!({
                    "url": "",
                    "has_custom_certificate": false,
                    "pending_update_count": pending,
                })),
            }
        }
        _ => api_error(404, "Not Found: method not found"),
    }
}

/// Resolves `chat_id` to a numeric id, or the `400` description.
fn chat_id_of(p: &Map<String, Value>) -> Result<i64, &'static str> {
    let Some(chat_id) = param_str(p, "chat_id").filter(|c| !c.is_empty()) else {
        return Err("Bad Request: chat_id is empty");
    };
    chat_id
        .trim()
        .parse::<i64>()
        .map_err(|_| "Bad Request: chat not found")
}

/// Creates a bot message in `chat_id` with the fields `fill` adds; checks the
/// reply target. Returns the message or an error answer.
fn new_bot_message(
    st: &mut Recorded,
    chat_id: i64,
    p: &Map<String, Value>,
    slots: &Slots,
    fill: impl FnOnce(&mut Map<String, Value>),
) -> (u16, Response) {
    let chat = st.chat_by_id(chat_id);
    let reply = match reply_target(p) {
        Some((id, allow)) => match chat.messages.get(&id) {
            Some(m) => Some(without_reply(m)),
            None if allow => None,
            None => return api_error(400, "Bad Request: message to be replied not found"),
        },
        None => None,
    };
    let message_id = chat.next_message_id;
    chat.next_message_id += 1;
    let mut msg = message_base(&chat.chat, &bot_user_json(), message_id, unix_now());
    fill(&mut msg);
    if let Some(r) = reply {
        msg.insert("reply_to_message".into(), r);
    }
    let msg = Value::Object(msg);
    chat.messages.insert(message_id, msg.clone());
    if let Some(s) = slots.sent.and_then(|i| st.sent.get_mut(i)) {
        s.message_id = Some(message_id);
    }
    ok(msg)
}

fn send_message(st: &mut Recorded, p: &Map<String, Value>, slots: &Slots) -> (u16, Response) {
    let chat_id = match chat_id_of(p) {
        Ok(id) => id,
        Err(description) => return api_error(400, description),
    };
    let text = param_str(p, "text").unwrap_or_default();
    if text.trim().is_empty() {
        return api_error(400, "Bad Request: message text is empty");
    }
    // With a parse mode the limit applies to the text after entity parsing,
    // which the fake does not do; it checks plain text only.
    if param_str(p, "parse_mode").is_none() && utf16_len(&text) > MAX_TEXT_UTF16 {
        return api_error(400, "Bad Request: message is too long");
    }
    new_bot_message(st, chat_id, p, slots, |m| {
        m.insert("text".into(), json!(text));
    })
}

fn send_media(st: &mut Recorded, method: &str, params: &Params, slots: &Slots) -> (u16, Response) {
    let p = &params.fields;
    let chat_id = match chat_id_of(p) {
        Ok(id) => id,
        Err(description) => return api_error(400, description),
    };
    let caption = param_str(p, "caption");
    if let Some(c) = &caption
        && param_str(p, "parse_mode").is_none()
        && utf16_len(c) > MAX_CAPTION_UTF16
    {
        return api_error(400, "Bad Request: message caption is too long");
    }
    let field = if method == "sendPhoto" {
        "photo"
    } else {
        "document"
    };
    let upload = params.files.iter().find(|f| f.field == field);
    let value = param_str(p, field).filter(|v| !v.is_empty());
    // (file id, file name, mime type, size)
    let file: (String, Option<String>, Option<String>, usize) = match (value, upload) {
        (Some(v), _) if v.starts_with("attach://") && upload.is_none() => {
            return api_error(400, "Bad Request: wrong file identifier/HTTP URL specified");
        }
        (_, Some(u)) => {
            let n = st.next_file;
            st.next_file += 1;
            (
                format!("fake-{field}-{n}"),
                Some(u.file_name.clone()),
                u.content_type.clone(),
                u.data.len(),
            )
        }
        (Some(v), None) if v.starts_with("http://") || v.starts_with("https://") => {
            let n = st.next_file;
            st.next_file += 1;
            let name = v.rsplit('/').next().map(str::to_owned);
            (format!("fake-{field}-{n}"), name, None, 2048)
        }
        (Some(v), None) => (v, None, None, 2048),
        (None, None) => {
            return api_error(
                400,
                &format!("Bad Request: there is no {field} in the request"),
            );
        }
    };
    new_bot_message(st, chat_id, p, slots, |m| {
        let (file_id, name, mime, size) = file;
        if field == "photo" {
            m.insert("photo".into(), photo_sizes(&file_id, size));
        } else {
            m.insert(
                "document".into(),
                document_json(&file_id, name.as_deref(), mime.as_deref(), size),
            );
        }
        if let Some(c) = caption {
            m.insert("caption".into(), json!(c));
        }
    })
}

/// What a parked `getUpdates` ends with.
enum PollOutcome {
    Updates(Vec<Value>),
    Conflict(&'static str),
}

/// Long-polling `getUpdates`. `None` if the fake shut down meanwhile.
async fn get_updates(shared: &Shared, p: &Map<String, Value>) -> Option<(u16, Response)> {
    let offset = param_i64(p, "offset");
    let limit = param_i64(p, "limit")
        .filter(|l| *l > 0)
        .map_or(100, |l| l.min(100));
    let limit = usize::try_from(limit).unwrap_or(100);
    let timeout = param_i64(p, "timeout").unwrap_or(0).max(0);
    let timeout = Duration::from_secs(u64::try_from(timeout).unwrap_or(0));
    let allowed: Option<Vec<String>> = p.get("allowed_updates").and_then(|v| {
        v.as_array().map(|a| {
            a.iter()
                .filter_map(|x| x.as_str().map(str::to_owned))
                .collect()
        })
    });

    let generation = {
        let mut st = lock(&shared.state);
        if st.webhook.is_some() {
            return Some(api_error(409, CONFLICT_WEBHOOK));
        }
        match offset {
            Some(o) if o > 0 => {
                st.queue.retain(|u| update_id(u).is_none_or(|id| id >= o));
                st.acked_offset = st.acked_offset.max(o);
            }
            Some(o) if o < 0 => {
                // The last -o updates are kept, all earlier ones forgotten.
                let keep = usize::try_from(o.unsigned_abs()).unwrap_or(usize::MAX);
                let drop_n = st.queue.len().saturating_sub(keep);
                st.queue.drain(..drop_n);
            }
            _ => {}
        }
        if let Some(list) = allowed {
            // Persistent, as in the real API; an empty list means the default.
            st.allowed_updates = (!list.is_empty()).then_some(list);
        }
        st.poll_generation += 1;
        st.poll_generation
    };
    // Wakes an older parked poll (superseded) and waiters on the ack.
    shared.changed.notify_waiters();

    let check = || {
        let mut st = lock(&shared.state);
        if st.poll_generation != generation {
            return Some(PollOutcome::Conflict(CONFLICT_OTHER_POLL));
        }
        if st.webhook.is_some() {
            return Some(PollOutcome::Conflict(CONFLICT_SET_WEBHOOK));
        }
        // Updates of types not allowed are never delivered: forget them.
        let queue = std::mem::take(&mut st.queue);
        let kept: VecDeque<Value> = queue.into_iter().filter(|u| st.is_allowed(u)).collect();
        st.queue = kept;
        let batch: Vec<Value> = st.queue.iter().take(limit).cloned().collect();
        (!batch.is_empty()).then_some(PollOutcome::Updates(batch))
    };
    let outcome = tokio::select! {
        o = wait_notified(&shared.changed, timeout, check) => o,
        () = shared.shutdown.wait() => return None,
    };
    Some(match outcome {
        Some(PollOutcome::Conflict(description)) => api_error(409, description),
        Some(PollOutcome::Updates(batch)) => ok(Value::Array(batch)),
        None => ok(json!([])),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const TOKEN: &str = "123456:TEST-token_abc";

    fn url(tg: &FakeTelegram, method: &str) -> String {
        format!("{}bot{}/{method}", tg.api_url(), TOKEN)
    }

    async fn call(tg: &FakeTelegram, method: &str, body: Value) -> (u16, Value) {
        let resp = reqwest::Client::new()
            .post(url(tg, method))
            .json(&body)
            .send()
            .await
            .expect("request reaches the fake");
        let status = resp.status().as_u16();
        let json = resp.json::<Value>().await.expect("JSON answer");
        (status, json)
    }

    #[tokio::test]
    async fn get_me_and_wrong_token() {
        let tg = FakeTelegram::start(TOKEN).await;
        let (status, body) = call(&tg, "getMe", json!({})).await;
        assert_eq!(status, 200);
        assert_eq!(body["ok"], json!(true));
        assert_eq!(body["result"]["id"], json!(BOT_ID));
        assert_eq!(body["result"]["is_bot"], json!(true));
        assert_eq!(body["result"]["username"], json!(BOT_USERNAME));

        // Method names are case-insensitive.
        let (status, _) = call(&tg, "GETME", json!({})).await;
        assert_eq!(status, 200);

        let resp = reqwest::Client::new()
            .post(format!("{}bot999:wrong/getMe", tg.api_url()))
            .json(&json!({}))
            .send()
            .await
            .expect("request reaches the fake");
        assert_eq!(resp.status().as_u16(), 401);
        let body = resp.json::<Value>().await.expect("JSON answer");
        assert_eq!(
            body,
            json!({"ok": false, "error_code": 401, "description": "Unauthorized"})
        );
        assert_eq!(tg.calls("getMe"), 3);

        let (status, body) = call(&tg, "frobnicate", json!({})).await;
        assert_eq!(status, 404);
        assert_eq!(body["description"], json!("Not Found: method not found"));
    }

    #[tokio::test]
    async fn long_poll_returns_pushed_update_and_offset_acks() {
        let tg = Arc::new(FakeTelegram::start(TOKEN).await);
        let poller = {
            let tg = Arc::clone(&tg);
            tokio::spawn(async move {
                let started = Instant::now();
                let answer = call(&tg, "getUpdates", json!({"offset": 0, "timeout": 10})).await;
                (answer, started.elapsed())
            })
        };
        tg.wait_get_updates_calls(1, Duration::from_secs(5))
            .await
            .expect("poll arrives");
        let chat = ChatSpec::supergroup(-1_001_234_567_890, "Ops");
        let message_id = tg.push_text(&chat, 42, "hello");
        assert_eq!(message_id, 1);
        let ((status, body), elapsed) = poller.await.expect("poller task");
        assert_eq!(status, 200);
        assert!(
            elapsed < Duration::from_secs(5),
            "answered on push, not at timeout"
        );
        let updates = body["result"].as_array().expect("result array");
        assert_eq!(updates.len(), 1);
        let update_id = updates[0]["update_id"].as_i64().expect("update_id");
        assert_eq!(update_id, FIRST_UPDATE_ID);
        assert_eq!(updates[0]["message"]["text"], json!("hello"));
        assert_eq!(updates[0]["message"]["chat"]["type"], json!("supergroup"));
        assert_eq!(updates[0]["message"]["from"]["id"], json!(42));
        assert_eq!(
            tg.pending_updates(),
            1,
            "not acknowledged until the next offset"
        );

        // Re-polling without moving the offset hands the same update out again.
        let (_, body) = call(&tg, "getUpdates", json!({"timeout": 0})).await;
        assert_eq!(body["result"].as_array().map(Vec::len), Some(1));

        let (status, body) = call(
            &tg,
            "getUpdates",
            json!({"offset": update_id + 1, "timeout": 0}),
        )
        .await;
        assert_eq!(status, 200);
        assert_eq!(body["result"], json!([]));
        assert_eq!(tg.acked_offset(), update_id + 1);
        assert_eq!(tg.pending_updates(), 0);
        assert_eq!(tg.offsets_seen(), vec![0, update_id + 1]);
        tg.wait_all_acked(Duration::from_secs(1))
            .await
            .expect("all acknowledged");

        // An empty long poll ends at its timeout with an empty list.
        let (status, body) = call(
            &tg,
            "getUpdates",
            json!({"offset": update_id + 1, "timeout": 1}),
        )
        .await;
        assert_eq!((status, body["result"].clone()), (200, json!([])));
    }

    #[tokio::test]
    async fn newer_poll_terminates_older_one() {
        let tg = Arc::new(FakeTelegram::start(TOKEN).await);
        let first = {
            let tg = Arc::clone(&tg);
            tokio::spawn(async move { call(&tg, "getUpdates", json!({"timeout": 10})).await })
        };
        tg.wait_get_updates_calls(1, Duration::from_secs(5))
            .await
            .expect("first poll arrives");
        let (status, _) = call(&tg, "getUpdates", json!({"timeout": 0})).await;
        assert_eq!(status, 200);
        let (status, body) = first.await.expect("first poll task");
        assert_eq!(status, 409);
        assert_eq!(body["description"], json!(CONFLICT_OTHER_POLL));
    }

    #[tokio::test]
    async fn send_message_is_recorded_and_answered_with_a_message() {
        let tg = FakeTelegram::start(TOKEN).await;
        let chat = ChatSpec::private(42);
        let user_msg = tg.push_text(&chat, 42, "question");
        let (status, body) = call(
            &tg,
            "sendMessage",
            json!({"chat_id": 42, "text": "answer",
                   "reply_parameters": {"message_id": user_msg}}),
        )
        .await;
        assert_eq!(status, 200, "{body}");
        let msg = &body["result"];
        assert_eq!(msg["message_id"], json!(user_msg + 1));
        assert_eq!(msg["from"]["id"], json!(BOT_ID));
        assert_eq!(msg["chat"]["id"], json!(42));
        assert_eq!(msg["chat"]["type"], json!("private"));
        assert_eq!(msg["text"], json!("answer"));
        assert_eq!(msg["reply_to_message"]["text"], json!("question"));

        let sent = tg
            .wait_sent(|s| s.len() == 1, Duration::from_secs(5))
            .await
            .expect("one message sent");
        assert_eq!(sent[0].method, "sendMessage");
        assert_eq!(sent[0].chat_id, "42");
        assert_eq!(sent[0].text, "answer");
        assert_eq!(sent[0].reply_to_message_id, Some(user_msg));
        assert_eq!(sent[0].status_returned, 200);
        assert_eq!(sent[0].message_id, Some(user_msg + 1));

        // Validation as in the real API.
        let (status, body) = call(
            &tg,
            "sendMessage",
            json!({"chat_id": 42, "text": "x".repeat(MAX_TEXT_UTF16 + 1)}),
        )
        .await;
        assert_eq!(status, 400);
        assert_eq!(
            body["description"],
            json!("Bad Request: message is too long")
        );
        let (status, _) = call(
            &tg,
            "sendMessage",
            json!({"chat_id": 42, "text": "hi", "reply_parameters": {"message_id": 999}}),
        )
        .await;
        assert_eq!(status, 400);
        let (status, _) = call(
            &tg,
            "sendMessage",
            json!({"chat_id": 42, "text": "hi", "reply_parameters":
                   {"message_id": 999, "allow_sending_without_reply": true}}),
        )
        .await;
        assert_eq!(status, 200);
        assert_eq!(tg.sent().len(), 4);
        assert_eq!(tg.sent_ok().len(), 2);

        let err = tg
            .wait_sent(|s| s.len() == 10, Duration::from_millis(50))
            .await
            .expect_err("only two succeeded");
        assert!(err.to_string().contains("[400] sendMessage"), "{err}");
    }

    #[tokio::test]
    async fn faults_apply_once_or_until_cleared() {
        let tg = FakeTelegram::start(TOKEN).await;
        tg.push_fault("sendMessage", TgFault::RetryAfter(3));
        let send = json!({"chat_id": -100, "text": "hi"});
        let (status, body) = call(&tg, "sendMessage", send.clone()).await;
        assert_eq!(status, 429);
        assert_eq!(body["error_code"], json!(429));
        assert_eq!(body["parameters"]["retry_after"], json!(3));
        let (status, body) = call(&tg, "sendMessage", send.clone()).await;
        assert_eq!(status, 200);
        assert_eq!(body["result"]["chat"]["type"], json!("group"));
        assert_eq!(tg.pending_faults(), 0);

        tg.set_mode("sendMessage", Some(TgFault::Blocked));
        for _ in 0..2 {
            let (status, body) = call(&tg, "sendMessage", send.clone()).await;
            assert_eq!(status, 403);
            assert_eq!(
                body["description"],
                json!("Forbidden: bot was blocked by the user")
            );
        }
        tg.set_mode("sendMessage", None);

        tg.set_mode("*", Some(TgFault::Unauthorized));
        let (status, _) = call(&tg, "getMe", json!({})).await;
        assert_eq!(status, 401);
        tg.set_mode("*", None);

        tg.push_fault(
            "getMe",
            TgFault::Status {
                code: 400,
                description: "Bad Request: boom".into(),
            },
        );
        let (status, body) = call(&tg, "getMe", json!({})).await;
        assert_eq!(
            (status, body["description"].clone()),
            (400, json!("Bad Request: boom"))
        );

        tg.push_fault("getMe", TgFault::Drop);
        let dropped = reqwest::Client::new()
            .post(url(&tg, "getMe"))
            .json(&json!({}))
            .send()
            .await;
        assert!(dropped.is_err(), "connection closed without a response");
        let (status, _) = call(&tg, "getMe", json!({})).await;
        assert_eq!(status, 200);

        let sent = tg.sent();
        let statuses: Vec<u16> = sent.iter().map(|s| s.status_returned).collect();
        assert_eq!(statuses, vec![429, 200, 403, 403]);
    }

    #[tokio::test]
    async fn get_updates_conflicts_while_a_webhook_is_set() {
        let tg = FakeTelegram::start(TOKEN).await;
        let (status, body) = call(
            &tg,
            "setWebhook",
            json!({"url": "https://example.test/hook", "secret_token": "s3cret_-X"}),
        )
        .await;
        assert_eq!((status, body["result"].clone()), (200, json!(true)));
        assert_eq!(
            tg.webhook(),
            Some(WebhookState {
                url: "https://example.test/hook".into(),
                secret_token: Some("s3cret_-X".into()),
            })
        );
        let (status, body) = call(&tg, "getUpdates", json!({"timeout": 5})).await;
        assert_eq!(status, 409);
        assert_eq!(body["error_code"], json!(409));
        assert_eq!(body["description"], json!(CONFLICT_WEBHOOK));

        let (status, _) = call(&tg, "deleteWebhook", json!({})).await;
        assert_eq!(status, 200);
        let (status, _) = call(&tg, "getUpdates", json!({"timeout": 0})).await;
        assert_eq!(status, 200);
        let calls: Vec<(String, u16)> = tg
            .webhook_calls()
            .into_iter()
            .map(|c| (c.method, c.status_returned))
            .collect();
        assert_eq!(
            calls,
            vec![("setWebhook".into(), 200), ("deleteWebhook".into(), 200)]
        );

        let (status, _) = call(
            &tg,
            "setWebhook",
            json!({"url": "https://example.test/hook", "secret_token": "no spaces"}),
        )
        .await;
        assert_eq!(status, 400);
    }

    #[tokio::test]
    async fn multipart_send_document_like_teloxide() {
        let tg = FakeTelegram::start(TOKEN).await;
        let boundary = "XyZ-boundary";
        let mut body = Vec::new();
        let mut text_part = |name: &str, value: &str| {
            body.extend_from_slice(
                format!(
                    "--{boundary}\r\nContent-Disposition: form-data; name=\"{name}\"\r\n\r\n{value}\r\n"
                )
                .as_bytes(),
            );
        };
        text_part("chat_id", "-1001234567890");
        text_part("document", "attach://abc123");
        text_part("caption", "the log");
        text_part(
            "reply_parameters",
            "{\"message_id\":5,\"allow_sending_without_reply\":true}",
        );
        body.extend_from_slice(
            format!(
                "--{boundary}\r\nContent-Disposition: form-data; name=\"abc123\"; \
                 filename=\"reply.txt\"\r\nContent-Type: text/plain\r\n\r\nline 1\r\nline 2\r\n--{boundary}--\r\n"
            )
            .as_bytes(),
        );
        let resp = reqwest::Client::new()
            .post(url(&tg, "sendDocument"))
            .header(
                "content-type",
                format!("multipart/form-data; boundary={boundary}"),
            )
            .body(body)
            .send()
            .await
            .expect("request reaches the fake");
        assert_eq!(resp.status().as_u16(), 200);
        let answer = resp.json::<Value>().await.expect("JSON answer");
        let doc = &answer["result"]["document"];
        assert_eq!(doc["file_name"], json!("reply.txt"));
        assert_eq!(doc["mime_type"], json!("text/plain"));
        assert_eq!(doc["file_size"], json!(14));
        assert_eq!(answer["result"]["caption"], json!("the log"));
        assert_eq!(answer["result"]["chat"]["type"], json!("supergroup"));

        let sent = tg.sent_ok();
        assert_eq!(sent.len(), 1);
        assert_eq!(sent[0].method, "sendDocument");
        assert_eq!(sent[0].chat_id, "-1001234567890");
        assert_eq!(sent[0].text, "the log");
        assert_eq!(sent[0].reply_to_message_id, Some(5));
        assert_eq!(sent[0].files.len(), 1);
        assert_eq!(sent[0].files[0].field, "document");
        assert_eq!(sent[0].files[0].data, b"line 1\r\nline 2");
    }

    #[tokio::test]
    async fn update_builders_have_the_bot_api_shape() {
        let tg = FakeTelegram::start(TOKEN).await;
        let group = ChatSpec::group(-4242, "Team");
        let photo = tg.make_update_caption_photo(&group, 7, "look", "PHOTO1");
        assert_eq!(photo["message"]["photo"][1]["file_id"], json!("PHOTO1"));
        assert_eq!(photo["message"]["caption"], json!("look"));
        assert_eq!(photo["message"]["chat"]["title"], json!("Team"));
        let first = photo["message"]["message_id"].as_i64().expect("message_id");

        let reply = tg.make_update_reply(&group, 8, "indeed", first);
        assert_eq!(reply["message"]["message_id"], json!(first + 1));
        assert_eq!(
            reply["message"]["reply_to_message"]["message_id"],
            json!(first)
        );
        assert!(reply["update_id"].as_i64() > photo["update_id"].as_i64());

        let doc = tg.make_update_document(&group, 7, None, "DOC1", "a.pdf");
        assert_eq!(
            doc["message"]["document"]["mime_type"],
            json!("application/pdf")
        );
        assert!(doc["message"].get("caption").is_none());

        let edit = tg.make_update_edit(&group, 7, first, "look again");
        assert_eq!(edit["edited_message"]["caption"], json!("look again"));
        assert!(edit["edited_message"]["edit_date"].is_i64());
        assert_eq!(tg.pending_updates(), 0, "builders do not queue");

        let id = tg.push_raw(json!({"message_reaction": {}}));
        assert!(id > edit["update_id"].as_i64().unwrap_or_default());
        let (_, body) = call(&tg, "getUpdates", json!({"timeout": 0})).await;
        assert_eq!(
            body["result"],
            json!([]),
            "reactions are not delivered by default"
        );
        assert_eq!(tg.pending_updates(), 0);
    }
}
