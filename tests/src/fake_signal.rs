//! A fake signal-cli HTTP daemon (`signal-cli -a NUMBER daemon --http`) for end-to-end tests of
//! the Signal channel, on `127.0.0.1:0`. It serves the three endpoints of the real one:
//! - `GET /api/v1/events?account=…`: server-sent events (`event:receive`, `data:` the
//!   `{account, envelope}` object), with a `:` keepalive every [`FakeSignal::set_keepalive`]
//!   (15 s by default, as signal-cli); an unknown account gets 400, as signal-cli answers;
//! - `POST /api/v1/rpc`: JSON-RPC 2.0 (`Content-Type: application/json` required, else 415);
//!   `send` is recorded on arrival and answered with one result per recipient (each member of a
//!   group), or with the injected fault; any other method gets -32601;
//! - `GET /api/v1/check`: 200.
//!
//! Like a daemon run with `--receive-mode on-connection`, a message written while no live
//! stream is open waits in the fake (the Signal servers keep it queued) and goes to the next
//! stream that opens; while streams are open every event goes to each of them, as signal-cli
//! broadcasts. The mode of each new stream can be queued ([`StreamMode`]): a live one, a zombie
//! that sends keepalives but no events, or a silent one that sends nothing after its headers.
//! Faults for `send` are queued (FIFO) or set as a sticky mode (which wins). Waits are
//! Notify-based.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{ConnectInfo, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::{Value, json};
use tokio::sync::{Notify, mpsc};

use crate::support::{ConnHandle, Server, ShutdownSignal, lock, shutdown_channel, wait_notified};

/// signal-cli's limit on a message body, in bytes of UTF-8.
pub const MAX_TEXT_BYTES: usize = 2000;

/// How a new event stream behaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamMode {
    /// Events and keepalives.
    Live,
    /// Keepalives only: "connected" but deaf.
    Zombie,
    /// Headers, then not a byte.
    Silent,
}

/// How the fake answers one `send`.
#[derive(Debug, Clone, PartialEq)]
pub enum SignalFault {
    /// Every recipient's result is `kind` (`RATE_LIMIT_FAILURE`, …), with `retryAfterSeconds`.
    Result {
        /// The result `type`.
        kind: &'static str,
        /// `retryAfterSeconds`, if any.
        retry_after: Option<u64>,
    },
    /// A captcha demand: error -1 whose response's results carry a `token`.
    CaptchaToken,
    /// JSON-RPC error `code` with `message` and no data.
    Code {
        /// The error code (-5 rate limited, -6 captcha rejected, …).
        code: i64,
        /// The message.
        message: &'static str,
    },
    /// An HTTP status with a plain body.
    Http(u16),
    /// The connection is dropped before the message is taken.
    Drop,
}

/// One `send` as the fake received it.
#[derive(Debug, Clone)]
pub struct SignalSend {
    /// `recipient[0]`, for a direct send.
    pub recipient: Option<String>,
    /// `groupId`, for a group send.
    pub group_id: Option<String>,
    /// `message`.
    pub message: String,
    /// `quoteTimestamp`.
    pub quote_timestamp: Option<i64>,
    /// `quoteAuthor`.
    pub quote_author: Option<String>,
    /// `account`, when given.
    pub account: Option<String>,
    /// When it arrived.
    pub at: Instant,
    /// Whether it was sent (a result with a `SUCCESS`).
    pub ok: bool,
    /// What it was answered: `SUCCESS`, a result type, `error <code>`, `HTTP <status>` or
    /// `dropped`.
    pub answered: String,
}

impl SignalSend {
    /// The chat it went to: the recipient or the group.
    pub fn chat(&self) -> &str {
        self.recipient
            .as_deref()
            .or(self.group_id.as_deref())
            .unwrap_or_default()
    }
}

/// One event stream the gateway opened.
#[derive(Debug, Clone)]
pub struct StreamRecord {
    /// Its mode.
    pub mode: StreamMode,
    /// When it opened.
    pub opened: Instant,
    /// When the fake saw it closed (its body dropped), if it has.
    pub closed: Option<Instant>,
    /// Events written to it.
    pub events: usize,
}

#[derive(Debug)]
struct Slot {
    index: usize,
    mode: StreamMode,
    tx: mpsc::UnboundedSender<Bytes>,
    conn: ConnHandle,
}

#[derive(Debug, Default)]
struct Recorded {
    streams: Vec<StreamRecord>,
    slots: Vec<Slot>,
    next_modes: VecDeque<StreamMode>,
    pending: VecDeque<String>,
    sends: Vec<SignalSend>,
    checks: usize,
    faults: VecDeque<SignalFault>,
    mode: Option<SignalFault>,
    next_ts: i64,
}

#[derive(Debug)]
struct Shared {
    account: String,
    members: Vec<String>,
    keepalive: Mutex<Duration>,
    state: Mutex<Recorded>,
    changed: Notify,
    shutdown: ShutdownSignal,
}

/// The fake daemon. Dropping it stops the server.
pub struct FakeSignal {
    shared: Arc<Shared>,
    server: Server,
}

/// The UUID of test person `n`.
pub fn uuid(n: u32) -> String {
    format!("{n:08x}-0000-4000-8000-{n:012x}")
}

/// The base64 id of test group `n` (32 bytes, as Signal's group ids).
pub fn group_id(n: u32) -> String {
    format!("R3JvdXAtaWQtZm9yLXRoZS10ZXN0cy0t{n:08}AAA=")
}

impl FakeSignal {
    /// Starts the fake daemon for `account`; every group has two members besides the account.
    pub async fn start(account: &str) -> FakeSignal {
        let (shutdown_tx, shutdown) = shutdown_channel();
        let shared = Arc::new(Shared {
            account: account.to_owned(),
            members: vec![uuid(9001), uuid(9002)],
            keepalive: Mutex::new(Duration::from_secs(15)),
            state: Mutex::new(Recorded {
                next_ts: 1_700_000_000_000,
                ..Recorded::default()
            }),
            changed: Notify::new(),
            shutdown,
        });
        let router = Router::new()
            .route("/api/v1/events", get(events))
            .route("/api/v1/rpc", post(rpc))
            .route("/api/v1/check", get(check))
            .with_state(Arc::clone(&shared));
        let server = Server::start(router, shutdown_tx)
            .await
            .expect("FakeSignal: failed to bind 127.0.0.1:0");
        FakeSignal { shared, server }
    }

    /// `channels.signal.rpc_url`.
    pub fn rpc_url(&self) -> String {
        format!("http://{}", self.server.addr)
    }

    /// The account served.
    pub fn account(&self) -> &str {
        &self.shared.account
    }

    /// The keepalive interval of streams opened from now on.
    pub fn set_keepalive(&self, every: Duration) {
        *lock(&self.shared.keepalive) = every;
    }

    /// The modes of the next streams to open, in order (then live ones again).
    pub fn queue_streams(&self, modes: &[StreamMode]) {
        lock(&self.shared.state).next_modes.extend(modes);
    }

    /// Closes every open stream's connection, as a daemon restart does.
    pub fn close_streams(&self) {
        for slot in lock(&self.shared.state).slots.drain(..) {
            slot.conn.kill();
        }
    }

    // ---- faults -----------------------------------------------------------

    /// Answers the next send with `fault` (FIFO).
    pub fn push_fault(&self, fault: SignalFault) {
        lock(&self.shared.state).faults.push_back(fault);
    }

    /// Answers every send with `fault` until set to `None`.
    pub fn set_mode(&self, fault: Option<SignalFault>) {
        lock(&self.shared.state).mode = fault;
    }

    // ---- messages in --------------------------------------------------------

    /// A fresh message timestamp (ms), always later than the previous one.
    pub fn next_timestamp(&self) -> i64 {
        let mut s = lock(&self.shared.state);
        s.next_ts += 1;
        s.next_ts
    }

    /// `from` (UUID, shown as `name`) writes `text` in a direct chat, or in `group`, quoting
    /// `quote` (author UUID and timestamp); returns the message's id as the gateway keys it,
    /// `<uuid>:<timestamp>`.
    pub fn write(
        &self,
        from: &str,
        name: &str,
        group: Option<&str>,
        text: &str,
        quote: Option<(&str, i64)>,
    ) -> String {
        let ts = self.next_timestamp();
        let mut data =
            json!({"timestamp": ts, "message": text, "expiresInSeconds": 0, "viewOnce": false});
        if let Some(g) = group {
            data["groupInfo"] =
                json!({"groupId": g, "groupName": "Test group", "revision": 1, "type": "DELIVER"});
        }
        if let Some((author, id)) = quote {
            data["quote"] = json!({"id": id, "author": author, "authorNumber": null, "authorUuid": author, "text": "…", "attachments": []});
        }
        self.envelope(json!({
            "source": from, "sourceNumber": null, "sourceUuid": from, "sourceName": name,
            "sourceDevice": 1, "timestamp": ts, "serverReceivedTimestamp": ts + 3,
            "serverDeliveredTimestamp": ts + 5, "dataMessage": data
        }));
        format!("{from}:{ts}")
    }

    /// Sends an envelope of any content (a sync message, a receipt, …).
    pub fn envelope(&self, envelope: Value) {
        let data = json!({"account": self.shared.account, "envelope": envelope}).to_string();
        self.event(&data);
    }

    /// Sends one `receive` event whose data is `data` exactly (malformed input included).
    pub fn event(&self, data: &str) {
        let mut s = lock(&self.shared.state);
        if !deliver(&mut s, data) {
            s.pending.push_back(data.to_owned());
        }
        drop(s);
        self.shared.changed.notify_waiters();
    }

    /// Messages waiting for a live stream.
    pub fn pending(&self) -> usize {
        lock(&self.shared.state).pending.len()
    }

    // ---- recording --------------------------------------------------------

    /// Every stream the gateway opened.
    pub fn streams(&self) -> Vec<StreamRecord> {
        lock(&self.shared.state).streams.clone()
    }

    /// Every `send`, in arrival order.
    pub fn sends(&self) -> Vec<SignalSend> {
        lock(&self.shared.state).sends.clone()
    }

    /// How many health checks were made.
    pub fn checks(&self) -> usize {
        lock(&self.shared.state).checks
    }

    /// Waits until `pred(every stream)` holds; returns them.
    pub async fn wait_streams(
        &self,
        pred: impl Fn(&[StreamRecord]) -> bool,
        timeout: Duration,
    ) -> anyhow::Result<Vec<StreamRecord>> {
        wait_notified(&self.shared.changed, timeout, || {
            let s = self.streams();
            pred(&s).then_some(s)
        })
        .await
        .ok_or_else(|| {
            anyhow::anyhow!(
                "FakeSignal: timed out after {timeout:?} waiting for the streams; streams: {:#?}",
                self.streams()
            )
        })
    }

    /// Waits until `pred(every send)` holds; returns every send. The error lists them.
    pub async fn wait_sends(
        &self,
        pred: impl Fn(&[SignalSend]) -> bool,
        timeout: Duration,
    ) -> anyhow::Result<Vec<SignalSend>> {
        wait_notified(&self.shared.changed, timeout, || {
            let s = self.sends();
            pred(&s).then_some(s)
        })
        .await
        .ok_or_else(|| {
            let lines: Vec<String> = self
                .sends()
                .iter()
                .map(|s| {
                    format!(
                        "  [{}] to={} quote={:?}/{:?} text={:?}",
                        s.answered,
                        s.chat(),
                        s.quote_author,
                        s.quote_timestamp,
                        s.message
                    )
                })
                .collect();
            anyhow::anyhow!(
                "FakeSignal: timed out after {timeout:?} waiting for the sends; sends:\n{}",
                lines.join("\n")
            )
        })
    }
}

/// Writes `data` to every live stream; whether any took it. Closed streams are forgotten.
fn deliver(s: &mut Recorded, data: &str) -> bool {
    let frame = Bytes::from(format!("event:receive\ndata:{data}\n\n"));
    let mut delivered = false;
    let mut closed = Vec::new();
    for slot in &s.slots {
        if slot.mode != StreamMode::Live {
            continue;
        }
        if slot.tx.send(frame.clone()).is_ok() {
            delivered = true;
            closed.push((slot.index, false));
        } else {
            closed.push((slot.index, true));
        }
    }
    for (index, gone) in closed {
        if gone {
            s.slots.retain(|sl| sl.index != index);
        } else if let Some(r) = s.streams.get_mut(index) {
            r.events += 1;
        }
    }
    delivered
}

/// Marks a stream closed when its body is dropped.
struct OnClose {
    shared: Arc<Shared>,
    index: usize,
}

impl Drop for OnClose {
    fn drop(&mut self) {
        let mut s = lock(&self.shared.state);
        if let Some(r) = s.streams.get_mut(self.index) {
            r.closed = Some(Instant::now());
        }
        let index = self.index;
        s.slots.retain(|sl| sl.index != index);
        drop(s);
        self.shared.changed.notify_waiters();
    }
}

async fn events(
    State(shared): State<Arc<Shared>>,
    ConnectInfo(conn): ConnectInfo<ConnHandle>,
    Query(query): Query<std::collections::HashMap<String, String>>,
) -> Response {
    if query.get("account") != Some(&shared.account) {
        return (
            StatusCode::BAD_REQUEST,
            format!("Unknown account: {:?}", query.get("account")),
        )
            .into_response();
    }
    let (tx, rx) = mpsc::unbounded_channel::<Bytes>();
    let keepalive = *lock(&shared.keepalive);
    let (index, mode) = {
        let mut s = lock(&shared.state);
        let mode = s.next_modes.pop_front().unwrap_or(StreamMode::Live);
        let index = s.streams.len();
        s.streams.push(StreamRecord {
            mode,
            opened: Instant::now(),
            closed: None,
            events: 0,
        });
        if mode == StreamMode::Live {
            while let Some(data) = s.pending.pop_front() {
                let _ = tx.send(Bytes::from(format!("event:receive\ndata:{data}\n\n")));
                s.streams[index].events += 1;
            }
        }
        s.slots.push(Slot {
            index,
            mode,
            tx: tx.clone(),
            conn,
        });
        (index, mode)
    };
    shared.changed.notify_waiters();
    if mode != StreamMode::Silent {
        let ka = tx.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(keepalive);
            tick.tick().await;
            loop {
                tick.tick().await;
                if ka.send(Bytes::from_static(b":\n")).is_err() {
                    return;
                }
            }
        });
    }
    drop(tx);
    let guard = OnClose {
        shared: Arc::clone(&shared),
        index,
    };
    let shutdown = shared.shutdown.clone();
    let body = futures_util::stream::unfold(
        (rx, guard, shutdown),
        |(mut rx, guard, shutdown)| async move {
            tokio::select! {
                next = rx.recv() => next.map(|b| (Ok::<_, std::io::Error>(b), (rx, guard, shutdown))),
                () = shutdown.wait() => None,
            }
        },
    );
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "text/event-stream")],
        Body::from_stream(body),
    )
        .into_response()
}

async fn check(State(shared): State<Arc<Shared>>) -> StatusCode {
    lock(&shared.state).checks += 1;
    shared.changed.notify_waiters();
    StatusCode::OK
}

async fn rpc(
    State(shared): State<Arc<Shared>>,
    ConnectInfo(conn): ConnectInfo<ConnHandle>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let json_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if !json_type {
        return StatusCode::UNSUPPORTED_MEDIA_TYPE.into_response();
    }
    let Ok(request) = serde_json::from_slice::<Value>(&body) else {
        return rpc_answer(
            json!({"jsonrpc":"2.0","error":{"code":-32700,"message":"Parse error"},"id":null}),
        );
    };
    let id = request["id"].clone();
    if request["method"] != "send" {
        return rpc_answer(
            json!({"jsonrpc":"2.0","error":{"code":-32601,"message":"Method not implemented"},"id":id}),
        );
    }
    let p = &request["params"];
    let account = p["account"].as_str().map(str::to_owned);
    if account.as_deref().is_some_and(|a| a != shared.account) {
        return rpc_answer(
            json!({"jsonrpc":"2.0","error":{"code":-32602,"message":"Method requires valid account parameter"},"id":id}),
        );
    }
    let recipient = p["recipient"]
        .as_array()
        .and_then(|r| r.first())
        .and_then(Value::as_str)
        .map(str::to_owned);
    let group_id = p["groupId"].as_str().map(str::to_owned);
    let mut send = SignalSend {
        recipient: recipient.clone(),
        group_id: group_id.clone(),
        message: p["message"].as_str().unwrap_or_default().to_owned(),
        quote_timestamp: p["quoteTimestamp"].as_i64(),
        quote_author: p["quoteAuthor"].as_str().map(str::to_owned),
        account,
        at: Instant::now(),
        ok: false,
        answered: String::new(),
    };
    let (fault, ts) = {
        let mut s = lock(&shared.state);
        let fault = s.mode.clone().or_else(|| s.faults.pop_front());
        s.next_ts += 1;
        (fault, s.next_ts)
    };
    let targets: Vec<String> = match (&recipient, &group_id) {
        (Some(r), _) => vec![r.clone()],
        (None, Some(_)) => shared.members.clone(),
        (None, None) => Vec::new(),
    };
    let results = |kind: &str, extra: Value| -> Vec<Value> {
        targets
            .iter()
            .map(|t| {
                let mut r = json!({"recipientAddress": {"uuid": t, "number": null, "username": null}, "type": kind});
                if let (Some(obj), Some(more)) = (r.as_object_mut(), extra.as_object()) {
                    obj.extend(more.clone());
                }
                if let Some(g) = &group_id {
                    r["groupId"] = json!(g);
                }
                r
            })
            .collect()
    };
    let too_long = send.message.len() > MAX_TEXT_BYTES;
    let response = match fault {
        _ if targets.is_empty() => {
            send.answered = "error -32602".into();
            rpc_answer(
                json!({"jsonrpc":"2.0","error":{"code":-32602,"message":"No recipients given"},"id":id}),
            )
        }
        Some(SignalFault::Drop) => {
            send.answered = "dropped".into();
            conn.kill();
            StatusCode::INTERNAL_SERVER_ERROR.into_response()
        }
        Some(SignalFault::Http(status)) => {
            send.answered = format!("HTTP {status}");
            (
                StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
                "fault",
            )
                .into_response()
        }
        Some(SignalFault::Code { code, message }) => {
            send.answered = format!("error {code}");
            rpc_answer(
                json!({"jsonrpc":"2.0","error":{"code":code,"message":message,"data":null},"id":id}),
            )
        }
        Some(SignalFault::CaptchaToken) => {
            send.answered = "error -1 (captcha token)".into();
            let rs = results(
                "NETWORK_FAILURE",
                json!({"token": "6e1b2c4d-captcha-token", "retryAfterSeconds": 86400}),
            );
            rpc_answer(
                json!({"jsonrpc":"2.0","error":{"code":-1,"message":"Failed to send message","data":{"response":{"timestamp":ts,"results":rs}}},"id":id}),
            )
        }
        Some(SignalFault::Result { kind, retry_after }) => {
            send.answered = kind.to_owned();
            let extra = retry_after.map_or(json!({}), |s| json!({"retryAfterSeconds": s}));
            let rs = results(kind, extra);
            if group_id.is_some() {
                // A group send never throws.
                rpc_answer(json!({"jsonrpc":"2.0","result":{"timestamp":ts,"results":rs},"id":id}))
            } else {
                rpc_answer(
                    json!({"jsonrpc":"2.0","error":{"code":-1,"message":"Failed to send message","data":{"response":{"timestamp":ts,"results":rs}}},"id":id}),
                )
            }
        }
        None => {
            send.ok = true;
            send.answered = if too_long {
                "SUCCESS (trimmed: over 2000 bytes)".into()
            } else {
                "SUCCESS".into()
            };
            rpc_answer(
                json!({"jsonrpc":"2.0","result":{"timestamp":ts,"results":results("SUCCESS", json!({}))},"id":id}),
            )
        }
    };
    lock(&shared.state).sends.push(send);
    shared.changed.notify_waiters();
    response
}

fn rpc_answer(body: Value) -> Response {
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}
