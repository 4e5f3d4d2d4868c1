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

mod json;
mod methods;
mod request;
mod updates;

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use serde_json::{Value, json};
use tokio::sync::Notify;

pub use json::{bot_user_json, me_json, user_json};
use methods::handle;
use updates::update_kind;

use crate::support::{Server, ShutdownSignal, lock, shutdown_channel, wait_notified};

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

/// One `getUpdates` as the fake held it open: from its arrival to its answer (or to the moment
/// its connection was dropped), with the poller's address.
#[derive(Debug, Clone)]
pub struct PollInterval {
    /// The poller's address (its connection's peer).
    pub peer: Option<std::net::SocketAddr>,
    /// The `offset` it asked from.
    pub offset: Option<i64>,
    /// The long-poll `timeout` it asked for, in seconds.
    pub timeout_s: i64,
    /// When it arrived.
    pub start: Instant,
    /// When it was answered or dropped; `None` while it is open.
    pub end: Option<Instant>,
    /// The status it was answered with (`409` when a newer poll ended it); `None` if dropped
    /// or open.
    pub status: Option<u16>,
}

impl PollInterval {
    /// Whether `self` and `other` were open at the same moment.
    pub fn overlaps(&self, other: &PollInterval) -> bool {
        let now = Instant::now();
        self.start < other.end.unwrap_or(now) && other.start < self.end.unwrap_or(now)
    }
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
    polls: Vec<PollInterval>,
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
            polls: Vec::new(),
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

    /// Every `getUpdates` the fake held, from arrival to answer, in arrival order.
    pub fn polls(&self) -> Vec<PollInterval> {
        lock(&self.shared.state).polls.clone()
    }

    /// The most `getUpdates` that were open at one moment (two pollers of one bot make it 2;
    /// the newer poll ends the older with `409 Conflict` at once, but both were open).
    pub fn max_concurrent_polls(&self) -> usize {
        let polls = self.polls();
        let now = Instant::now();
        let mut edges: Vec<(Instant, i32)> = Vec::with_capacity(polls.len() * 2);
        for p in &polls {
            edges.push((p.start, 1));
            edges.push((p.end.unwrap_or(now), -1));
        }
        // At one instant an end comes before a start: touching intervals do not overlap.
        edges.sort_by(|a, b| a.0.cmp(&b.0).then(a.1.cmp(&b.1)));
        let (mut open, mut most) = (0i32, 0i32);
        for (_, delta) in edges {
            open += delta;
            most = most.max(open);
        }
        usize::try_from(most).unwrap_or(0)
    }

    /// Every pair of `getUpdates` that were open at the same moment (empty: never two
    /// pollers at once).
    pub fn poll_overlaps(&self) -> Vec<(PollInterval, PollInterval)> {
        let polls = self.polls();
        let mut out = Vec::new();
        for (i, a) in polls.iter().enumerate() {
            for b in &polls[i + 1..] {
                if a.overlaps(b) {
                    out.push((a.clone(), b.clone()));
                }
            }
        }
        out
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
