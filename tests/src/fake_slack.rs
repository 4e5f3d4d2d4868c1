//! A fake Slack for end-to-end tests of the Slack channel: the Web API methods the gateway calls
//! (`auth.test`, `chat.postMessage`, `apps.connections.open`, `conversations.history`,
//! `conversations.replies`) under `{base}/api/`, a Socket Mode WebSocket (`socket` module), and
//! Events API delivery to the gateway's `events_path`, signed as Slack signs (`v0=` + hex
//! HMAC-SHA256 over `v0:{ts}:{body}`), with the retry headers on redelivery and helpers for a
//! wrong secret, a stale timestamp and bad hex.
//!
//! Every Web API method checks its Bearer token (the bot token; the app-level token for
//! `apps.connections.open`): a missing one is HTTP 200 `{"ok":false,"error":"not_authed"}`, a
//! wrong one `invalid_auth`. `chat.postMessage` records every call ([`Post`]) and stores accepted
//! posts in the fake's conversations, with their `metadata`, which the two history methods
//! answer from (a post whose response was dropped is stored too, as on the real Slack).
//!
//! Faults are queued per method (FIFO) or set sticky per method ([`SlackFault`]): 429 with
//! `Retry-After`, a 5xx, any `ok:false` code, a lost response (the post is recorded and stored,
//! then the connection is dropped without an answer) and a delay. A sticky fault wins over a
//! queued one. Waits are Notify-based: every call, post and socket event wakes the `wait_*`
//! helpers, which re-check their condition.

mod socket;

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::extract::{ConnectInfo, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get};
use hmac::{Hmac, Mac};
use serde_json::{Value, json};
use sha2::Sha256;
use tokio::sync::Notify;

pub use socket::{Connection, SocketCmd};

use crate::support::{ConnHandle, Server, ShutdownSignal, lock, shutdown_channel, wait_notified};

/// The fake bot's user id (`auth.test`).
pub const BOT_USER_ID: &str = "UBOTGATEWAY";
/// The fake bot's bot id (`auth.test`, `bot_id` of its posts).
pub const BOT_ID: &str = "BGATEWAY";
/// Slack's recommended limit on one message, which the fake enforces with `msg_too_long`.
pub const MAX_TEXT_CHARS: usize = 4000;

/// How the fake answers one Web API call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SlackFault {
    /// HTTP 429 `{"ok":false,"error":"ratelimited"}` with `Retry-After: secs`.
    RateLimited(u64),
    /// This HTTP status (a 5xx) with `{"ok":false,"error":"internal_error"}`.
    Status(u16),
    /// HTTP 200 `{"ok":false,"error":code}`.
    Error(String),
    /// Handle the call (a post is recorded and stored), then drop the connection unanswered.
    LoseResponse,
    /// Wait this long, then handle the call normally.
    Delay(Duration),
}

/// One `chat.postMessage` call, as the fake saw it.
#[derive(Debug, Clone)]
pub struct Post {
    /// `channel`.
    pub channel: String,
    /// `text`.
    pub text: String,
    /// `thread_ts`, if set.
    pub thread_ts: Option<String>,
    /// `metadata.event_payload.id`, if set.
    pub metadata_id: Option<String>,
    /// When it arrived.
    pub at: Instant,
    /// The HTTP status answered; 0 for a dropped response.
    pub status: u16,
    /// The `ok:false` code answered, if any.
    pub error: Option<String>,
    /// The `ts` of the stored message, if it was stored.
    pub ts: Option<String>,
}

impl Post {
    /// Whether the post was answered `ok:true`.
    pub fn is_success(&self) -> bool {
        self.status == 200 && self.error.is_none()
    }

    /// Whether the message is in the conversation (answered or with its response lost).
    pub fn is_stored(&self) -> bool {
        self.ts.is_some()
    }
}

/// One Web API call.
#[derive(Debug, Clone)]
pub struct ApiCall {
    /// The method, e.g. `auth.test`.
    pub method: String,
    /// When it arrived.
    pub at: Instant,
    /// The HTTP status answered (0 for dropped).
    pub status: u16,
    /// The `ok:false` code answered, if any.
    pub error: Option<String>,
}

/// How an Events API request is signed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signing {
    /// Correctly, with the fake's signing secret and the current time.
    Correct,
    /// With another secret.
    WrongSecret,
    /// Correctly, but with a timestamp ten minutes old.
    StaleTimestamp,
    /// `v0=` followed by text that is not hex.
    BadHex,
    /// Without the signature headers.
    Unsigned,
}

#[derive(Default)]
pub(crate) struct State_ {
    posts: Vec<Post>,
    calls: Vec<ApiCall>,
    queued: VecDeque<(String, SlackFault)>,
    sticky: HashMap<String, SlackFault>,
    last_ts_micros: u64,
    next_event: u64,
    pub(crate) socket: socket::SocketState,
}

pub(crate) struct Shared {
    bot_token: String,
    app_token: String,
    signing_secret: String,
    pub(crate) state: Mutex<State_>,
    pub(crate) notify: Notify,
    pub(crate) shutdown: ShutdownSignal,
    addr: std::sync::OnceLock<SocketAddr>,
}

impl Shared {
    /// A fresh message `ts` from the wall clock, increasing.
    fn next_ts(&self) -> String {
        let now = u64::try_from(
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap_or_default()
                .as_micros(),
        )
        .unwrap_or(u64::MAX);
        let mut st = lock(&self.state);
        let micros = now.max(st.last_ts_micros + 1);
        st.last_ts_micros = micros;
        format!("{}.{:06}", micros / 1_000_000, micros % 1_000_000)
    }

    pub(crate) fn wake(&self) {
        self.notify.notify_waiters();
    }
}

/// The fake Slack.
pub struct FakeSlack {
    shared: Arc<Shared>,
    server: Server,
}

fn ok(body: Value) -> Response {
    let mut body = body;
    body["ok"] = json!(true);
    (StatusCode::OK, axum::Json(body)).into_response()
}

fn slack_error(status: StatusCode, code: &str) -> Response {
    (status, axum::Json(json!({"ok": false, "error": code}))).into_response()
}

fn ts_secs(ts: &str) -> f64 {
    ts.parse().unwrap_or(0.0)
}

impl FakeSlack {
    /// Starts the fake on `127.0.0.1:0` with these credentials.
    pub async fn start(bot_token: &str, app_token: &str, signing_secret: &str) -> FakeSlack {
        let (tx, signal) = shutdown_channel();
        let shared = Arc::new(Shared {
            bot_token: bot_token.to_owned(),
            app_token: app_token.to_owned(),
            signing_secret: signing_secret.to_owned(),
            state: Mutex::default(),
            notify: Notify::new(),
            shutdown: signal,
            addr: std::sync::OnceLock::new(),
        });
        let router = Router::new()
            .route("/api/{method}", any(api))
            .route("/link/", get(socket::upgrade))
            .with_state(shared.clone());
        let server = Server::start(router, tx)
            .await
            .expect("bind the fake Slack on 127.0.0.1");
        let _ = shared.addr.set(server.addr);
        FakeSlack { shared, server }
    }

    /// The Web API root for `channels.slack.api_url`.
    pub fn api_url(&self) -> String {
        format!("http://{}/api", self.server.addr)
    }

    /// Queues `fault` for the next call of `method`.
    pub fn push_fault(&self, method: &str, fault: SlackFault) {
        lock(&self.shared.state)
            .queued
            .push_back((method.to_owned(), fault));
    }

    /// Sets (or with `None` lifts) a fault for every call of `method`.
    pub fn set_mode(&self, method: &str, fault: Option<SlackFault>) {
        let mut st = lock(&self.shared.state);
        match fault {
            Some(f) => st.sticky.insert(method.to_owned(), f),
            None => st.sticky.remove(method),
        };
    }

    /// Every `chat.postMessage` call, in order.
    pub fn posts(&self) -> Vec<Post> {
        lock(&self.shared.state).posts.clone()
    }

    /// Every Web API call, in order.
    pub fn calls(&self) -> Vec<ApiCall> {
        lock(&self.shared.state).calls.clone()
    }

    /// How many calls of `method` arrived.
    pub fn calls_of(&self, method: &str) -> usize {
        lock(&self.shared.state)
            .calls
            .iter()
            .filter(|c| c.method == method)
            .count()
    }

    /// Waits until the posts satisfy `pred`; returns them.
    pub async fn wait_posts(
        &self,
        pred: impl Fn(&[Post]) -> bool,
        timeout: Duration,
    ) -> anyhow::Result<Vec<Post>> {
        wait_notified(&self.shared.notify, timeout, || {
            let posts = self.posts();
            pred(&posts).then_some(posts)
        })
        .await
        .ok_or_else(|| {
            anyhow::anyhow!(
                "timed out after {timeout:?} waiting for posts; have {:#?}",
                self.posts()
            )
        })
    }

    /// Waits until `method` was called `n` times.
    pub async fn wait_calls(
        &self,
        method: &str,
        n: usize,
        timeout: Duration,
    ) -> anyhow::Result<()> {
        wait_notified(&self.shared.notify, timeout, || {
            (self.calls_of(method) >= n).then_some(())
        })
        .await
        .ok_or_else(|| anyhow::anyhow!("timed out waiting for {n} calls of {method}"))
    }

    /// A fresh message `ts`.
    pub fn next_ts(&self) -> String {
        self.shared.next_ts()
    }

    /// An `event_callback` with a `message` event from `user` in `channel` (`channel_type`
    /// `im`, `channel`, `group` or `mpim`), in `thread_ts` if given; returns it and its `ts`.
    pub fn message_event(
        &self,
        channel: &str,
        channel_type: &str,
        user: &str,
        text: &str,
        thread_ts: Option<&str>,
    ) -> (Value, String) {
        let ts = self.next_ts();
        let mut event = json!({
            "type": "message", "channel": channel, "channel_type": channel_type, "user": user,
            "text": text, "ts": ts, "event_ts": ts, "client_msg_id": format!("client-{ts}"),
        });
        if let Some(t) = thread_ts {
            event["thread_ts"] = json!(t);
        }
        (self.callback(event), ts)
    }

    /// Wraps `event` in an `event_callback` envelope with a fresh `event_id`.
    pub fn callback(&self, event: Value) -> Value {
        let n = {
            let mut st = lock(&self.shared.state);
            st.next_event += 1;
            st.next_event
        };
        json!({
            "token": "verification-token", "team_id": "T0FAKE", "api_app_id": "A0FAKE",
            "type": "event_callback", "event_id": format!("Ev{n:08}"),
            "event_time": SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_secs(),
            "authorizations": [{"team_id": "T0FAKE", "user_id": BOT_USER_ID, "is_bot": true}],
            "event": event,
        })
    }

    /// POSTs `body` to `url` as the Events API does, signed per `signing`; `retry` adds
    /// `X-Slack-Retry-Num` and `X-Slack-Retry-Reason`. Returns the status and body.
    pub async fn deliver(
        &self,
        url: &str,
        body: &Value,
        signing: Signing,
        retry: Option<u32>,
    ) -> anyhow::Result<(u16, String)> {
        let raw = body.to_string();
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs();
        let ts = match signing {
            Signing::StaleTimestamp => now - 600,
            _ => now,
        }
        .to_string();
        let secret = match signing {
            Signing::WrongSecret => "not-the-signing-secret".to_owned(),
            _ => self.shared.signing_secret.clone(),
        };
        let signature = match signing {
            Signing::BadHex => "v0=not-hex-at-all-zzzz".to_owned(),
            _ => sign(secret.as_bytes(), &ts, raw.as_bytes()),
        };
        let mut request = reqwest::Client::new()
            .post(url)
            .header("content-type", "application/json")
            .body(raw);
        if signing != Signing::Unsigned {
            request = request
                .header("X-Slack-Request-Timestamp", &ts)
                .header("X-Slack-Signature", signature);
        }
        if let Some(n) = retry {
            request = request
                .header("X-Slack-Retry-Num", n.to_string())
                .header("X-Slack-Retry-Reason", "http_timeout");
        }
        let resp = request.send().await?;
        let status = resp.status().as_u16();
        Ok((status, resp.text().await.unwrap_or_default()))
    }

    /// Sends `callback` over the newest open Socket Mode connection as an `events_api`
    /// envelope; its `envelope_id`.
    pub fn push_envelope(&self, callback: &Value) -> anyhow::Result<String> {
        socket::push_envelope(&self.shared, callback, None)
    }

    /// Sends `callback` as an `events_api` envelope over connection `id` (1-based), open or
    /// closing; its `envelope_id`.
    pub fn push_envelope_on(&self, id: usize, callback: &Value) -> anyhow::Result<String> {
        socket::push_envelope(&self.shared, callback, Some(id))
    }

    /// Sends a command to the newest open Socket Mode connection.
    pub fn socket_cmd(&self, cmd: SocketCmd) -> anyhow::Result<()> {
        socket::command(&self.shared, cmd)
    }

    /// Every Socket Mode connection so far, oldest first.
    pub fn connections(&self) -> Vec<Connection> {
        lock(&self.shared.state).socket.connections()
    }

    /// Every acknowledged envelope id with the connection it came on, in order.
    pub fn acks(&self) -> Vec<(String, usize)> {
        lock(&self.shared.state).socket.acks.clone()
    }

    /// Waits until the connections satisfy `pred`; returns them.
    pub async fn wait_connections(
        &self,
        pred: impl Fn(&[Connection]) -> bool,
        timeout: Duration,
    ) -> anyhow::Result<Vec<Connection>> {
        wait_notified(&self.shared.notify, timeout, || {
            let c = self.connections();
            pred(&c).then_some(c)
        })
        .await
        .ok_or_else(|| {
            anyhow::anyhow!(
                "timed out waiting on connections: {:#?}",
                self.connections()
            )
        })
    }

    /// Waits until `envelope_id` is acknowledged; the connection it came on.
    pub async fn wait_ack(&self, envelope_id: &str, timeout: Duration) -> anyhow::Result<usize> {
        wait_notified(&self.shared.notify, timeout, || {
            self.acks()
                .into_iter()
                .find(|(e, _)| e == envelope_id)
                .map(|(_, c)| c)
        })
        .await
        .ok_or_else(|| anyhow::anyhow!("envelope {envelope_id} was not acknowledged"))
    }
}

/// `v0=` + hex HMAC-SHA256 of `v0:{timestamp}:{body}` under `secret`.
pub fn sign(secret: &[u8], timestamp: &str, body: &[u8]) -> String {
    let mut mac =
        <Hmac<Sha256> as Mac>::new_from_slice(secret).expect("HMAC takes a key of any length");
    mac.update(format!("v0:{timestamp}:").as_bytes());
    mac.update(body);
    format!("v0={}", hex::encode(mac.finalize().into_bytes()))
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
}

fn record(shared: &Shared, method: &str, status: u16, error: Option<&str>) {
    lock(&shared.state).calls.push(ApiCall {
        method: method.to_owned(),
        at: Instant::now(),
        status,
        error: error.map(str::to_owned),
    });
    shared.wake();
}

async fn api(
    State(shared): State<Arc<Shared>>,
    axum::extract::Path(method): axum::extract::Path<String>,
    ConnectInfo(conn): ConnectInfo<ConnHandle>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let at = Instant::now();
    let fault = {
        let mut st = lock(&shared.state);
        match st.sticky.get(&method).cloned() {
            Some(f) => Some(f),
            None => st
                .queued
                .iter()
                .position(|(m, _)| *m == method)
                .and_then(|i| st.queued.remove(i))
                .map(|(_, f)| f),
        }
    };
    if let Some(SlackFault::Delay(d)) = &fault {
        tokio::time::sleep(*d).await;
    }
    let want = if method == "apps.connections.open" {
        &shared.app_token
    } else {
        &shared.bot_token
    };
    let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let (status, response, stored_post) = match (&fault, bearer(&headers)) {
        (Some(SlackFault::RateLimited(secs)), _) => {
            let mut r = slack_error(StatusCode::TOO_MANY_REQUESTS, "ratelimited");
            r.headers_mut().insert(
                "retry-after",
                secs.to_string().parse().expect("a header value"),
            );
            (429, r, None)
        }
        (Some(SlackFault::Status(code)), _) => {
            let status = StatusCode::from_u16(*code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            (*code, slack_error(status, "internal_error"), None)
        }
        (Some(SlackFault::Error(code)), _) => (200, slack_error(StatusCode::OK, code), None),
        (_, None) => (200, slack_error(StatusCode::OK, "not_authed"), None),
        (_, Some(t)) if t != want => (200, slack_error(StatusCode::OK, "invalid_auth"), None),
        _ => handle(&shared, &method, &body, &query),
    };
    let lost = fault == Some(SlackFault::LoseResponse);
    let code = code_of(&fault, bearer(&headers), want)
        .or_else(|| response.extensions().get::<Refusal>().map(|r| r.0.clone()));
    if method == "chat.postMessage" {
        lock(&shared.state).posts.push(Post {
            channel: str_of(&body, "channel"),
            text: str_of(&body, "text"),
            thread_ts: body
                .get("thread_ts")
                .and_then(Value::as_str)
                .map(str::to_owned),
            metadata_id: body
                .pointer("/metadata/event_payload/id")
                .and_then(Value::as_str)
                .map(str::to_owned),
            at,
            status: if lost { 0 } else { status },
            error: code.clone(),
            ts: stored_post,
        });
    }
    record(
        &shared,
        &method,
        if lost { 0 } else { status },
        code.as_deref(),
    );
    if lost {
        conn.kill();
        shared.shutdown.wait().await;
    }
    response
}

fn str_of(body: &Value, key: &str) -> String {
    body.get(key)
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned()
}

/// The `ok:false` code a call was answered with.
fn code_of(fault: &Option<SlackFault>, token: Option<&str>, want: &str) -> Option<String> {
    match (fault, token) {
        (Some(SlackFault::RateLimited(_)), _) => Some("ratelimited".to_owned()),
        (Some(SlackFault::Status(_)), _) => Some("internal_error".to_owned()),
        (Some(SlackFault::Error(c)), _) => Some(c.clone()),
        (_, None) => Some("not_authed".to_owned()),
        (_, Some(t)) if t != want => Some("invalid_auth".to_owned()),
        _ => None,
    }
}

/// A call with good credentials and no refusing fault: `(status, answer, ts of a stored post)`.
fn handle(
    shared: &Shared,
    method: &str,
    body: &Value,
    query: &HashMap<String, String>,
) -> (u16, Response, Option<String>) {
    match method {
        "auth.test" => (
            200,
            ok(
                json!({"url": "https://fake.slack.test/", "team": "Fake", "user": "gateway",
                      "team_id": "T0FAKE", "user_id": BOT_USER_ID, "bot_id": BOT_ID}),
            ),
            None,
        ),
        "chat.postMessage" => {
            let channel = str_of(body, "channel");
            let text = str_of(body, "text");
            if channel.is_empty() {
                return refuse("channel_not_found");
            }
            if text.is_empty() {
                return refuse("no_text");
            }
            if text.chars().count() > MAX_TEXT_CHARS {
                return refuse("msg_too_long");
            }
            let ts = shared.next_ts();
            let message = json!({"type": "message", "user": BOT_USER_ID, "bot_id": BOT_ID,
                                 "text": text, "ts": ts});
            (
                200,
                ok(json!({"channel": channel, "ts": ts, "message": message})),
                Some(ts),
            )
        }
        "apps.connections.open" => {
            let ticket = socket::new_ticket(shared);
            let addr = shared.addr.get().copied();
            let url = match addr {
                Some(a) => format!("ws://{a}/link/?ticket={ticket}"),
                None => String::new(),
            };
            (200, ok(json!({"url": url})), None)
        }
        "conversations.history" | "conversations.replies" => {
            let channel = query.get("channel").cloned().unwrap_or_default();
            let oldest = query.get("oldest").map_or(0.0, |o| ts_secs(o));
            let thread = query.get("ts").cloned();
            if method == "conversations.replies" && thread.is_none() {
                return refuse("thread_not_found");
            }
            let with_metadata = query
                .get("include_all_metadata")
                .is_some_and(|v| v == "true");
            let st = lock(&shared.state);
            let messages: Vec<Value> = st
                .posts
                .iter()
                .rev()
                .filter(|p| p.channel == channel)
                .filter(|p| thread.is_none() || p.thread_ts == thread)
                .filter_map(|p| p.ts.as_ref().map(|ts| (p, ts)))
                .filter(|(_, ts)| ts_secs(ts) >= oldest)
                .map(|(p, ts)| {
                    let mut m = json!({"type": "message", "user": BOT_USER_ID,
                                       "bot_id": BOT_ID, "text": p.text, "ts": ts});
                    if let (true, Some(id)) = (with_metadata, &p.metadata_id) {
                        m["metadata"] =
                            json!({"event_type": "gateway_reply", "event_payload": {"id": id}});
                    }
                    m
                })
                .collect();
            (
                200,
                ok(json!({"messages": messages, "has_more": false,
                          "response_metadata": {"next_cursor": ""}})),
                None,
            )
        }
        _ => refuse("unknown_method"),
    }
}

fn refuse(code: &str) -> (u16, Response, Option<String>) {
    let mut r = slack_error(StatusCode::OK, code);
    r.extensions_mut().insert(Refusal(code.to_owned()));
    (200, r, None)
}

/// The `ok:false` code of an answer `handle` refused with.
#[derive(Clone)]
struct Refusal(String);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_signature_helper_matches_the_official_vector() {
        let body = "token=xyzz0WbapA4vBCDEFasx0q6G&team_id=T1DC2JH3J&team_domain=testteamnow&channel_id=G8PSS9T3V&channel_name=foobar&user_id=U2CERLKJA&user_name=roadrunner&command=%2Fwebhook-collect&text=&response_url=https%3A%2F%2Fhooks.slack.com%2Fcommands%2FT1DC2JH3J%2F397700885554%2F96rGlfmibIGlgcZRskXaIFfN&trigger_id=398738663015.47445629121.803a0bc887a14d10d2c447fce8b6703c";
        assert_eq!(
            sign(
                b"8f742231b10e8888abcd99yyyzzz85a5",
                "1531420618",
                body.as_bytes()
            ),
            "v0=a2114d57b48eac39b9ad189dd8316235a7b4a8d21a10bd27519666489c69b503"
        );
        assert_ne!(
            sign(
                b"8f742231b10e8888abcd99yyyzzz85a6",
                "1531420618",
                body.as_bytes()
            ),
            "v0=a2114d57b48eac39b9ad189dd8316235a7b4a8d21a10bd27519666489c69b503",
            "another secret signs differently"
        );
    }

    #[tokio::test]
    async fn posts_are_recorded_stored_and_found_in_the_history() {
        let fake = FakeSlack::start("xoxb-t", "xapp-t", "s").await;
        let client = reqwest::Client::new();
        let post = |token: &str, text: &str| {
            client
                .post(format!("{}/chat.postMessage", fake.api_url()))
                .bearer_auth(token)
                .json(&json!({"channel": "C1", "text": text,
                              "metadata": {"event_type": "gateway_reply", "event_payload": {"id": "7"}}}))
                .send()
        };
        let wrong: Value = post("xoxb-other", "x")
            .await
            .expect("post")
            .json()
            .await
            .expect("json");
        assert_eq!(wrong["error"], "invalid_auth");
        fake.push_fault("chat.postMessage", SlackFault::LoseResponse);
        assert!(
            post("xoxb-t", "lost").await.is_err(),
            "the response is dropped"
        );
        let posts = fake.posts();
        assert_eq!(posts.len(), 2);
        assert!(posts[1].is_stored() && !posts[1].is_success());
        let history: Value = client
            .get(format!("{}/conversations.history", fake.api_url()))
            .bearer_auth("xoxb-t")
            .query(&[
                ("channel", "C1"),
                ("include_all_metadata", "true"),
                ("oldest", "0"),
            ])
            .send()
            .await
            .expect("history")
            .json()
            .await
            .expect("json");
        assert_eq!(
            history["messages"][0]["metadata"]["event_payload"]["id"], "7",
            "{history}"
        );
        assert_eq!(history["messages"].as_array().map(Vec::len), Some(1));
    }
}
