//! A fake BlueBubbles server for end-to-end tests of the iMessage channel, on `127.0.0.1:0`.
//! Every `/api/v1/*` route checks `?password=` (401 with BlueBubbles' own body otherwise). It
//! serves `GET /api/v1/ping` (`data: "pong"`), `POST /api/v1/message/text` (recorded on arrival
//! with what it was answered; a `tempGuid` already taken is refused with 400 "Message is already
//! queued to be sent!"; a success answers the sent message, and the message is also stored as
//! the Mac's own, `isFromMe: true`, as BlueBubbles reports it) and `POST /api/v1/message/query`
//! (the stored messages filtered by `after`, inclusive, sorted by `sort`, paged by `limit` and
//! `offset`, with `chats` and `handle` only when `with` asks for them; every query recorded).
//!
//! It plays the Mac's side too: a person's message is built in the `new-message` shape
//! ([`FakeBlueBubbles::incoming`]), stored (what `message/query` returns) and delivered as a
//! webhook with `?password=`; a stored message can be delivered again (BlueBubbles' replays after
//! its restart), one can be stored without a webhook (it arrived while the gateway was down:
//! BlueBubbles never retries a webhook), and one can be delivered without being stored.
//!
//! Faults for `message/text` are queued (FIFO) or set as a sticky mode (which wins): a 500
//! `iMessage Error`, a 401, a 400 `Validation Error`, a 429 with `Retry-After`, a hang (the
//! message is taken and queued, then no answer for a while), and a connection dropped before the
//! message is taken. [`PingMode`] makes the ping fail or drop its connection, which makes the
//! gateway's listener reconnect. Waits are Notify-based.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{ConnectInfo, Query, State};
use axum::http::{Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use tokio::sync::Notify;

use crate::support::{ConnHandle, Server, ShutdownSignal, lock, shutdown_channel, wait_notified};

/// Longest `message` the fake takes, in characters (the gateway splits at this).
pub const MAX_TEXT_CHARS: usize = 4000;

/// What BlueBubbles answers a `tempGuid` it already has.
pub const ALREADY_QUEUED: &str = "Message is already queued to be sent!";

/// How the fake answers one `message/text` (see [`FakeBlueBubbles::push_fault`] and
/// [`FakeBlueBubbles::set_mode`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BbFault {
    /// 500 `Message Send Error` with `error.type` `iMessage Error`.
    ServerError,
    /// 401 `Authentication Error`.
    Unauthorized,
    /// 400 `Validation Error` (`Chat does not exist`).
    BadRequest,
    /// 429 with `Retry-After: secs`.
    RateLimited {
        /// The `Retry-After` seconds.
        secs: u64,
    },
    /// The message is taken (its `tempGuid` queued, the message stored), then no answer for this
    /// long (a private-api send that hangs).
    Hang(Duration),
    /// The connection is dropped before the message is taken.
    Drop,
}

/// How the fake answers `GET /api/v1/ping`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PingMode {
    /// 200 `pong`.
    #[default]
    Ok,
    /// 500 `Server Error`.
    Fail,
    /// The connection is dropped without an answer.
    Drop,
}

/// One `message/text`, recorded on arrival.
#[derive(Debug, Clone)]
pub struct SentText {
    /// `chatGuid`.
    pub chat_guid: String,
    /// `message`.
    pub message: String,
    /// `tempGuid`.
    pub temp_guid: String,
    /// `method`.
    pub method: String,
    /// `selectedMessageGuid`.
    pub selected_message_guid: Option<String>,
    /// The HTTP status answered; `0` while pending or when no answer was given.
    pub status_returned: u16,
    /// The answer was the 400 "already queued".
    pub already_queued: bool,
    /// The guid of the sent message, when the fake took it.
    pub guid: Option<String>,
    /// Whether `?password=` matched.
    pub password_ok: bool,
    /// When it arrived.
    pub at: Instant,
    /// The request body.
    pub raw: Value,
}

impl SentText {
    /// The fake answered 200 (`Message sent!`).
    pub fn is_success(&self) -> bool {
        self.status_returned == 200
    }
}

#[derive(Debug, Default)]
struct Recorded {
    sent: Vec<SentText>,
    /// Every message the Mac has, in arrival order (a person's and its own).
    messages: Vec<Value>,
    temp_guids: HashSet<String>,
    queries: Vec<Value>,
    /// Every ping: the status answered (`0` for a dropped one).
    pings: Vec<u16>,
    faults: VecDeque<BbFault>,
    mode: Option<BbFault>,
    ping_mode: PingMode,
    next_out: u64,
}

#[derive(Debug)]
struct Shared {
    password: String,
    state: Mutex<Recorded>,
    changed: Notify,
    shutdown: ShutdownSignal,
}

/// The fake BlueBubbles server. Dropping it stops the server.
pub struct FakeBlueBubbles {
    shared: Arc<Shared>,
    server: Server,
    client: reqwest::Client,
    next_message: AtomicU64,
}

/// Milliseconds since the epoch, now.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// The chat guid of a direct chat with `address` (`iMessage;-;+15551234567`).
pub fn direct_chat(address: &str) -> String {
    format!("iMessage;-;{address}")
}

/// The chat guid of group chat `n` (`iMessage;+;chat…`).
pub fn group_chat(n: u64) -> String {
    format!(
        "iMessage;+;chat{:018}",
        493_787_366_418_410_785_u64.wrapping_add(n)
    )
}

impl FakeBlueBubbles {
    /// Starts the fake with the server password `password`.
    pub async fn start(password: &str) -> FakeBlueBubbles {
        let (shutdown_tx, shutdown) = shutdown_channel();
        let shared = Arc::new(Shared {
            password: password.to_owned(),
            state: Mutex::new(Recorded::default()),
            changed: Notify::new(),
            shutdown,
        });
        let router = Router::new()
            .fallback(handle)
            .with_state(Arc::clone(&shared));
        let server = Server::start(router, shutdown_tx)
            .await
            .expect("FakeBlueBubbles: failed to bind 127.0.0.1:0");
        FakeBlueBubbles {
            shared,
            server,
            client: reqwest::Client::new(),
            next_message: AtomicU64::new(1),
        }
    }

    /// `channels.imessage.server_url`: `http://127.0.0.1:PORT`.
    pub fn server_url(&self) -> String {
        format!("http://{}", self.server.addr)
    }

    /// The server password.
    pub fn password(&self) -> &str {
        &self.shared.password
    }

    // ---- faults -----------------------------------------------------------

    /// Answers the next `message/text` with `fault` (FIFO).
    pub fn push_fault(&self, fault: BbFault) {
        lock(&self.shared.state).faults.push_back(fault);
    }

    /// Answers every `message/text` with `fault` until set to `None`.
    pub fn set_mode(&self, fault: Option<BbFault>) {
        lock(&self.shared.state).mode = fault;
    }

    /// How pings are answered from now on.
    pub fn set_ping_mode(&self, mode: PingMode) {
        lock(&self.shared.state).ping_mode = mode;
    }

    // ---- recording --------------------------------------------------------

    /// Every `message/text`, in arrival order, whatever it was answered.
    pub fn sent(&self) -> Vec<SentText> {
        lock(&self.shared.state).sent.clone()
    }

    /// The `message/text` answered 200.
    pub fn sent_ok(&self) -> Vec<SentText> {
        self.sent()
            .into_iter()
            .filter(SentText::is_success)
            .collect()
    }

    /// Every message stored, a person's and the Mac's own, in arrival order.
    pub fn messages(&self) -> Vec<Value> {
        lock(&self.shared.state).messages.clone()
    }

    /// Every `message/query` body, in arrival order.
    pub fn queries(&self) -> Vec<Value> {
        lock(&self.shared.state).queries.clone()
    }

    /// Every ping's status (`0` for a dropped one).
    pub fn pings(&self) -> Vec<u16> {
        lock(&self.shared.state).pings.clone()
    }

    /// Waits until `pred(every message/text)` holds; returns them. The error lists them.
    pub async fn wait_sent(
        &self,
        pred: impl Fn(&[SentText]) -> bool,
        timeout: Duration,
    ) -> anyhow::Result<Vec<SentText>> {
        let got = wait_notified(&self.shared.changed, timeout, || {
            let s = lock(&self.shared.state).sent.clone();
            pred(&s).then_some(s)
        })
        .await;
        got.ok_or_else(|| {
            let lines: Vec<String> = self
                .sent()
                .iter()
                .map(|s| {
                    format!(
                        "  [{}] chat={} temp={} selected={:?} text={:?}",
                        s.status_returned,
                        s.chat_guid,
                        s.temp_guid,
                        s.selected_message_guid,
                        s.message.chars().take(80).collect::<String>()
                    )
                })
                .collect();
            anyhow::anyhow!(
                "FakeBlueBubbles: timed out after {timeout:?} waiting for the sent predicate; sends:\n{}",
                lines.join("\n")
            )
        })
    }

    /// Waits until `pred(every ping status)` holds.
    pub async fn wait_pings(
        &self,
        pred: impl Fn(&[u16]) -> bool,
        timeout: Duration,
    ) -> anyhow::Result<Vec<u16>> {
        wait_notified(&self.shared.changed, timeout, || {
            let p = lock(&self.shared.state).pings.clone();
            pred(&p).then_some(p)
        })
        .await
        .ok_or_else(|| {
            anyhow::anyhow!(
                "FakeBlueBubbles: timed out after {timeout:?} waiting for pings; pings: {:?}",
                self.pings()
            )
        })
    }

    /// Waits until `pred(every query body)` holds.
    pub async fn wait_queries(
        &self,
        pred: impl Fn(&[Value]) -> bool,
        timeout: Duration,
    ) -> anyhow::Result<Vec<Value>> {
        wait_notified(&self.shared.changed, timeout, || {
            let q = lock(&self.shared.state).queries.clone();
            pred(&q).then_some(q)
        })
        .await
        .ok_or_else(|| {
            anyhow::anyhow!(
                "FakeBlueBubbles: timed out after {timeout:?} waiting for queries; queries: {:?}",
                self.queries()
            )
        })
    }

    // ---- a person's messages ------------------------------------------------

    /// A fresh inbound message guid (`p:0/<uuid-like>`).
    pub fn next_guid(&self) -> String {
        let n = self.next_message.fetch_add(1, Ordering::Relaxed);
        format!("p:0/5C0B7A1E-1F0A-4C0E-9C7B-{n:012X}")
    }

    /// A person's message from `address` in `chat_guid`, created `age` ago, in the `new-message`
    /// shape (not stored).
    pub fn incoming_aged(
        &self,
        address: &str,
        chat_guid: &str,
        text: &str,
        age: Duration,
    ) -> Value {
        let n = self.next_message.load(Ordering::Relaxed);
        let created = now_ms().saturating_sub(i64::try_from(age.as_millis()).unwrap_or(i64::MAX));
        let style = if chat_guid.contains(";+;") { 43 } else { 45 };
        json!({
            "originalROWID": n, "guid": self.next_guid(), "text": text, "attributedBody": null,
            "handle": {"originalROWID": 3, "address": address, "service": "iMessage",
                       "country": "us", "uncanonicalizedId": null},
            "handleId": 3, "otherHandle": 0, "attachments": [], "subject": null, "error": 0,
            "dateCreated": created, "dateRead": null, "dateDelivered": null,
            "isDelivered": true, "isFromMe": false, "hasDdResults": false, "isArchived": false,
            "itemType": 0, "groupTitle": null, "groupActionType": 0, "balloonBundleId": null,
            "associatedMessageGuid": null, "associatedMessageType": null,
            "expressiveSendStyleId": null, "threadOriginatorGuid": null,
            "threadOriginatorPart": null, "hasPayloadData": false,
            "chats": [{"originalROWID": 7, "guid": chat_guid, "style": style,
                       "chatIdentifier": chat_guid.rsplit(';').next().unwrap_or_default(),
                       "isArchived": false, "displayName": if style == 43 { "Test group" } else { "" }}],
        })
    }

    /// A person's message from `address` in `chat_guid`, created now (not stored).
    pub fn incoming(&self, address: &str, chat_guid: &str, text: &str) -> Value {
        self.incoming_aged(address, chat_guid, text, Duration::ZERO)
    }

    /// Stores `message` as received by the Mac, without a webhook (the gateway was down, and
    /// BlueBubbles never retries a webhook); returns its guid.
    pub fn store(&self, message: Value) -> String {
        let guid = message["guid"].as_str().unwrap_or_default().to_owned();
        lock(&self.shared.state).messages.push(message);
        self.shared.changed.notify_waiters();
        guid
    }

    /// The stored message `guid`.
    pub fn stored(&self, guid: &str) -> Option<Value> {
        lock(&self.shared.state)
            .messages
            .iter()
            .find(|m| m["guid"] == guid)
            .cloned()
    }

    /// POSTs `event` to the webhook `url` with `?password=password` (none when `None`); returns
    /// the status.
    pub async fn deliver_event(&self, url: &str, event: &Value, password: Option<&str>) -> u16 {
        let mut req = self.client.post(url).json(event);
        if let Some(p) = password {
            req = req.query(&[("password", p)]);
        }
        req.send()
            .await
            .expect("FakeBlueBubbles: POST the webhook")
            .status()
            .as_u16()
    }

    /// POSTs exactly `body` to the webhook `url` with the right password; returns the status.
    pub async fn deliver_raw(&self, url: &str, body: &[u8]) -> u16 {
        self.client
            .post(url)
            .query(&[("password", self.shared.password.as_str())])
            .header("content-type", "application/json")
            .body(body.to_vec())
            .send()
            .await
            .expect("FakeBlueBubbles: POST the webhook")
            .status()
            .as_u16()
    }

    /// Delivers `message` as a `new-message` webhook with the right password, without storing it.
    pub async fn deliver(&self, url: &str, message: &Value) -> u16 {
        let event = json!({"type": "new-message", "data": message});
        self.deliver_event(url, &event, Some(&self.shared.password))
            .await
    }

    /// Stores `message` and delivers it as a webhook, as BlueBubbles does; `(guid, status)`.
    pub async fn receive(&self, url: &str, message: Value) -> (String, u16) {
        let guid = self.store(message.clone());
        let status = self.deliver(url, &message).await;
        (guid, status)
    }

    /// Delivers the stored message `guid` again, exactly as stored (its old `dateCreated`): a
    /// replay after BlueBubbles' restart.
    pub async fn replay(&self, url: &str, guid: &str) -> u16 {
        let message = self
            .stored(guid)
            .unwrap_or_else(|| panic!("FakeBlueBubbles: no stored message {guid}"));
        self.deliver(url, &message).await
    }
}

/// BlueBubbles' error answer.
fn bb_error(status: u16, message: &str, kind: &str, error: &str) -> Response {
    let code = StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_REQUEST);
    (
        code,
        axum::Json(json!({
            "status": status, "message": message,
            "error": {"type": kind, "message": error},
        })),
    )
        .into_response()
}

fn unauthorized(missing: bool) -> Response {
    bb_error(
        401,
        "You are not authorized to access this resource",
        "Authentication Error",
        if missing {
            "Missing server password!"
        } else {
            "Invalid password!"
        },
    )
}

async fn handle(
    State(shared): State<Arc<Shared>>,
    ConnectInfo(conn): ConnectInfo<ConnHandle>,
    method: Method,
    uri: Uri,
    Query(query): Query<HashMap<String, String>>,
    body: Bytes,
) -> Response {
    let path = uri.path().trim_end_matches('/');
    if !path.starts_with("/api/v1/") {
        return bb_error(404, "Not Found", "Not Found", "Route not found");
    }
    let given = query
        .get("guid")
        .or_else(|| query.get("password"))
        .or_else(|| query.get("token"))
        .map(|p| p.trim().to_owned());
    let password_ok = given.as_deref() == Some(shared.password.trim());
    match (method, path) {
        (Method::GET, "/api/v1/ping") => ping(&shared, &conn, given.is_none(), password_ok),
        (Method::POST, "/api/v1/message/text") => {
            text(&shared, &conn, given.is_none(), password_ok, &body).await
        }
        (Method::POST, "/api/v1/message/query") => {
            if !password_ok {
                return unauthorized(given.is_none());
            }
            query_messages(&shared, &body)
        }
        _ => bb_error(404, "Not Found", "Not Found", "Route not found"),
    }
}

fn ping(shared: &Shared, conn: &ConnHandle, missing: bool, password_ok: bool) -> Response {
    let mode = lock(&shared.state).ping_mode;
    let status = match (password_ok, mode) {
        (false, _) => 401,
        (true, PingMode::Ok) => 200,
        (true, PingMode::Fail) => 500,
        (true, PingMode::Drop) => 0,
    };
    lock(&shared.state).pings.push(status);
    shared.changed.notify_waiters();
    match status {
        200 => axum::Json(json!({"status": 200, "message": "Ping received!", "data": "pong"}))
            .into_response(),
        401 => unauthorized(missing),
        500 => bb_error(
            500,
            "Server Error",
            "Server Error",
            "The server is restarting",
        ),
        _ => {
            conn.kill();
            StatusCode::SERVICE_UNAVAILABLE.into_response()
        }
    }
}

fn query_messages(shared: &Shared, body: &[u8]) -> Response {
    let q: Value = serde_json::from_slice(body).unwrap_or_else(|_| json!({}));
    let limit = q["limit"].as_u64().unwrap_or(100).clamp(1, 1000);
    let offset = q["offset"].as_u64().unwrap_or(0);
    let after = q["after"].as_i64();
    let before = q["before"].as_i64();
    let asc = q["sort"]
        .as_str()
        .is_some_and(|s| s.eq_ignore_ascii_case("ASC"));
    let with: Vec<String> = q["with"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|w| w.as_str().map(str::to_ascii_lowercase))
        .collect();
    let chat_guid = q["chatGuid"].as_str().map(str::to_owned);
    let mut st = lock(&shared.state);
    st.queries.push(q.clone());
    let mut matching: Vec<Value> = st
        .messages
        .iter()
        .filter(|m| {
            let created = m["dateCreated"].as_i64().unwrap_or(0);
            after.is_none_or(|a| created >= a)
                && before.is_none_or(|b| created < b)
                && chat_guid
                    .as_deref()
                    .is_none_or(|c| m["chats"][0]["guid"] == c)
        })
        .cloned()
        .collect();
    drop(st);
    shared.changed.notify_waiters();
    matching.sort_by_key(|m| m["dateCreated"].as_i64().unwrap_or(0));
    if !asc {
        matching.reverse();
    }
    let total = matching.len();
    let page: Vec<Value> = matching
        .into_iter()
        .skip(usize::try_from(offset).unwrap_or(usize::MAX))
        .take(usize::try_from(limit).unwrap_or(usize::MAX))
        .map(|mut m| {
            if let Some(o) = m.as_object_mut() {
                if !with.iter().any(|w| w == "chat" || w == "chats") {
                    o.remove("chats");
                }
                if !with.iter().any(|w| w == "handle") {
                    o.insert("handle".to_owned(), Value::Null);
                }
            }
            m
        })
        .collect();
    axum::Json(json!({
        "status": 200, "message": "Success", "data": page,
        "metadata": {"total": total, "offset": offset, "limit": limit},
    }))
    .into_response()
}

async fn text(
    shared: &Shared,
    conn: &ConnHandle,
    missing: bool,
    password_ok: bool,
    body: &[u8],
) -> Response {
    let raw: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    let field = |k: &str| raw[k].as_str().unwrap_or_default().to_owned();
    let index = {
        let mut st = lock(&shared.state);
        st.sent.push(SentText {
            chat_guid: field("chatGuid"),
            message: field("message"),
            temp_guid: field("tempGuid"),
            method: field("method"),
            selected_message_guid: raw["selectedMessageGuid"].as_str().map(str::to_owned),
            status_returned: 0,
            already_queued: false,
            guid: None,
            password_ok,
            at: Instant::now(),
            raw: raw.clone(),
        });
        st.sent.len() - 1
    };
    shared.changed.notify_waiters();
    let finish = |status: u16, guid: Option<String>, already_queued: bool| {
        let mut st = lock(&shared.state);
        if let Some(s) = st.sent.get_mut(index) {
            s.status_returned = status;
            s.guid = guid;
            s.already_queued = already_queued;
        }
        drop(st);
        shared.changed.notify_waiters();
    };
    if !password_ok {
        finish(401, None, false);
        return unauthorized(missing);
    }
    let fault = {
        let mut st = lock(&shared.state);
        match st.mode.clone() {
            Some(m) => Some(m),
            None => st.faults.pop_front(),
        }
    };
    let mut hang = None;
    match fault {
        Some(BbFault::ServerError) => {
            finish(500, None, false);
            return bb_error(
                500,
                "Message Send Error",
                "iMessage Error",
                "Failed to send message! See attached error, error code, or error message.",
            );
        }
        Some(BbFault::Unauthorized) => {
            finish(401, None, false);
            return unauthorized(false);
        }
        Some(BbFault::BadRequest) => {
            finish(400, None, false);
            return bb_error(
                400,
                "Bad Request",
                "Validation Error",
                "Chat does not exist",
            );
        }
        Some(BbFault::RateLimited { secs }) => {
            finish(429, None, false);
            let mut r = bb_error(429, "Too Many Requests", "Server Error", "Slow down");
            if let Ok(v) = secs.to_string().parse() {
                r.headers_mut().insert("retry-after", v);
            }
            return r;
        }
        Some(BbFault::Drop) => {
            finish(0, None, false);
            conn.kill();
            return StatusCode::SERVICE_UNAVAILABLE.into_response();
        }
        Some(BbFault::Hang(d)) => hang = Some(d),
        None => {}
    }
    let chat_guid = field("chatGuid");
    let temp_guid = field("tempGuid");
    let message = field("message");
    let method = raw["method"].as_str().unwrap_or("apple-script");
    if chat_guid.is_empty() {
        finish(400, None, false);
        return bb_error(
            400,
            "Bad Request",
            "Validation Error",
            "A 'chatGuid' is required",
        );
    }
    if temp_guid.is_empty() && method == "apple-script" {
        finish(400, None, false);
        return bb_error(
            400,
            "Bad Request",
            "Validation Error",
            "A 'tempGuid' is required when sending via AppleScript",
        );
    }
    let n = message.chars().count();
    if n == 0 || n > MAX_TEXT_CHARS {
        finish(400, None, false);
        return bb_error(
            400,
            "Bad Request",
            "Validation Error",
            "The 'message' is empty or longer than the fake's 4000 characters",
        );
    }
    let guid = {
        let mut st = lock(&shared.state);
        if !temp_guid.is_empty() && !st.temp_guids.insert(temp_guid.clone()) {
            drop(st);
            finish(400, None, true);
            return (
                StatusCode::BAD_REQUEST,
                axum::Json(json!({"status": 400, "message": ALREADY_QUEUED})),
            )
                .into_response();
        }
        st.next_out += 1;
        let guid = format!("7A1E5C0B-GATEWAY-OUT-{:012}", st.next_out);
        let sent = json!({
            "originalROWID": 10_000 + st.next_out, "guid": guid, "tempGuid": temp_guid,
            "text": message, "handle": null, "handleId": 0, "attachments": [],
            "subject": null, "error": 0, "dateCreated": now_ms(), "isFromMe": true,
            "itemType": 0, "associatedMessageGuid": null, "associatedMessageType": null,
            "threadOriginatorGuid": raw["selectedMessageGuid"].clone(),
            "chats": [{"guid": chat_guid, "style": if chat_guid.contains(";+;") { 43 } else { 45 },
                       "chatIdentifier": chat_guid.rsplit(';').next().unwrap_or_default()}],
        });
        st.messages.push(sent);
        guid
    };
    if let Some(d) = hang {
        tokio::select! {
            () = tokio::time::sleep(d) => {}
            () = shared.shutdown.wait() => {
                conn.kill();
                return StatusCode::SERVICE_UNAVAILABLE.into_response();
            }
        }
    }
    finish(200, Some(guid.clone()), false);
    let data = lock(&shared.state)
        .messages
        .iter()
        .find(|m| m["guid"] == guid.as_str())
        .cloned()
        .unwrap_or(Value::Null);
    axum::Json(json!({"status": 200, "message": "Message sent!", "data": data})).into_response()
}
