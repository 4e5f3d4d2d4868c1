//! A fake webhook receiver for the gateway's HTTP-channel replies. It accepts
//! a JSON `{"message_id","chat_id","text","reply_to"}` request on any path and
//! method, records every request (including ones answered with faults) as a
//! [`Delivery`], and can inject faults globally, per chat (FIFO), or as a
//! sticky per-chat mode ("this chat hangs forever"). `HEAD` requests are the
//! gateway's health probes: counted and answered (200, or the status set with
//! `set_probe_status`; with `set_probe_drop(true)` the connection is closed unanswered), never
//! recorded as deliveries. With `set_post_only(true)` it behaves like
//! a minimal server that implements only POST (Python's `http.server` with `do_POST`): every
//! other method, `HEAD` included, gets `501 Not Implemented`.
//!
//! Fault precedence for a request of chat C: the sticky mode of C, else the
//! oldest fault queued for C, else the oldest global fault, else `200 OK`.
//! Waiting is Notify-based: every arrival and every response re-wakes the
//! `wait_*` helpers, which re-check their predicate.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderValue, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use tokio::sync::Notify;

use crate::support::{ConnHandle, Server, ShutdownSignal, lock, shutdown_channel, wait_notified};

/// How the fake answers one callback request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CallbackFault {
    /// Answer with this status (body `{"ok":false,"error":..}`).
    Status(u16),
    /// Answer `429 Too Many Requests` with this `Retry-After` header value.
    Status429 {
        /// Raw `Retry-After` header value (seconds or an HTTP date).
        retry_after: String,
    },
    /// Never respond; the request stays open until the client times out or
    /// the `FakeCallback` is dropped (then the connection is closed).
    Hang,
    /// Wait this long, then answer `200 OK`.
    Delay(Duration),
    /// Close the TCP connection without sending any response (the socket is
    /// shut down from the server side; the client sees a closed connection).
    Drop,
}

/// One request received by the fake.
#[derive(Debug, Clone)]
pub struct Delivery {
    /// `message_id` field (empty if missing; numbers are stringified).
    pub message_id: String,
    /// `chat_id` field (empty if missing).
    pub chat_id: String,
    /// `text` field (empty if missing).
    pub text: String,
    /// `reply_to` field (`None` if missing or null).
    pub reply_to: Option<String>,
    /// When the request arrived.
    pub at: Instant,
    /// Status the fake answered with; `0` while no response has been sent
    /// (pending delay, hang, dropped connection, or client gave up first).
    pub status_returned: u16,
    /// Request path (e.g. `/hook`).
    pub path: String,
    /// The full request body as JSON (a JSON string with the raw text if the
    /// body was not valid JSON).
    pub body: Value,
}

impl Delivery {
    /// True if the fake answered with a 2xx status.
    pub fn is_delivered(&self) -> bool {
        (200..300).contains(&self.status_returned)
    }
}

#[derive(Debug, Default)]
struct Recorded {
    deliveries: Vec<Delivery>,
    faults: VecDeque<CallbackFault>,
    chat_faults: HashMap<String, VecDeque<CallbackFault>>,
    chat_modes: HashMap<String, CallbackFault>,
    /// `HEAD` requests (the gateway's health probe): answered, counted, never deliveries.
    probes: usize,
    /// Status answered to probes; 200 unless set.
    probe_status: Option<u16>,
    /// Answer every method but POST with 501.
    post_only: bool,
    /// Close probe connections without an answer (an unreachable endpoint, as the probe sees it).
    probe_drop: bool,
}

#[derive(Debug)]
struct Shared {
    state: Mutex<Recorded>,
    changed: Notify,
    shutdown: ShutdownSignal,
}

/// The fake callback receiver. Dropping it shuts the server down and closes
/// any hanging requests' connections.
pub struct FakeCallback {
    shared: Arc<Shared>,
    server: Server,
}

impl std::fmt::Debug for FakeCallback {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FakeCallback")
            .field("addr", &self.server.addr)
            .finish_non_exhaustive()
    }
}

impl FakeCallback {
    /// Starts the receiver on `127.0.0.1:<ephemeral>`.
    pub async fn start() -> FakeCallback {
        let (shutdown_tx, shutdown) = shutdown_channel();
        let shared = Arc::new(Shared {
            state: Mutex::new(Recorded::default()),
            changed: Notify::new(),
            shutdown,
        });
        let router = Router::new()
            .fallback(receive)
            .with_state(Arc::clone(&shared));
        let server = Server::start(router, shutdown_tx)
            .await
            .expect("FakeCallback: failed to bind 127.0.0.1:0");
        FakeCallback { shared, server }
    }

    /// Callback URL to configure in the gateway: `http://127.0.0.1:PORT/hook`.
    pub fn url(&self) -> String {
        format!("http://{}/hook", self.server.addr)
    }

    /// The bound socket address.
    pub fn addr(&self) -> std::net::SocketAddr {
        self.server.addr
    }

    /// Every request received, in arrival order, whatever it was answered.
    pub fn received(&self) -> Vec<Delivery> {
        lock(&self.shared.state).deliveries.clone()
    }

    /// Only the requests answered with a 2xx status, in arrival order.
    pub fn delivered(&self) -> Vec<Delivery> {
        delivered_of(&lock(&self.shared.state))
    }

    /// Waits until `pred(&delivered)` holds (re-checked on every arrival and
    /// response) and returns the delivered list. On timeout the error lists
    /// everything received so far with the statuses returned.
    pub async fn wait_delivered(
        &self,
        pred: impl Fn(&[Delivery]) -> bool,
        timeout: Duration,
    ) -> anyhow::Result<Vec<Delivery>> {
        let got = wait_notified(&self.shared.changed, timeout, || {
            let d = delivered_of(&lock(&self.shared.state));
            pred(&d).then_some(d)
        })
        .await;
        got.ok_or_else(|| self.timeout_error("delivered", timeout))
    }

    /// Like [`wait_delivered`](Self::wait_delivered) but the predicate sees
    /// every received request, including faulted ones.
    pub async fn wait_received(
        &self,
        pred: impl Fn(&[Delivery]) -> bool,
        timeout: Duration,
    ) -> anyhow::Result<Vec<Delivery>> {
        let got = wait_notified(&self.shared.changed, timeout, || {
            let d = lock(&self.shared.state).deliveries.clone();
            pred(&d).then_some(d)
        })
        .await;
        got.ok_or_else(|| self.timeout_error("received", timeout))
    }

    fn timeout_error(&self, what: &str, timeout: Duration) -> anyhow::Error {
        let all = self.received();
        let lines: Vec<String> = all
            .iter()
            .map(|d| {
                format!(
                    "  [{}] chat={:?} id={:?} reply_to={:?} text={:?}",
                    d.status_returned, d.chat_id, d.message_id, d.reply_to, d.text
                )
            })
            .collect();
        anyhow::anyhow!(
            "FakeCallback: timed out after {timeout:?} waiting for the {what} predicate; \
             {} delivered (2xx) out of {} received:\n{}",
            all.iter().filter(|d| d.is_delivered()).count(),
            all.len(),
            lines.join("\n")
        )
    }

    /// Queues a fault for the next request of any chat (FIFO).
    pub fn push_fault(&self, fault: CallbackFault) {
        lock(&self.shared.state).faults.push_back(fault);
    }

    /// Queues a fault for the next request of `chat_id` (FIFO per chat);
    /// takes precedence over the global queue.
    pub fn push_fault_for_chat(&self, chat_id: &str, fault: CallbackFault) {
        lock(&self.shared.state)
            .chat_faults
            .entry(chat_id.to_owned())
            .or_default()
            .push_back(fault);
    }

    /// Makes every request of `chat_id` get `mode` until cleared with `None`
    /// (queued faults for that chat are not consumed meanwhile).
    pub fn set_chat_mode(&self, chat_id: &str, mode: Option<CallbackFault>) {
        let mut st = lock(&self.shared.state);
        match mode {
            Some(m) => {
                st.chat_modes.insert(chat_id.to_owned(), m);
            }
            None => {
                st.chat_modes.remove(chat_id);
            }
        }
    }

    /// Sets the status answered to `HEAD` probes (`None`: 200).
    pub fn set_probe_status(&self, status: Option<u16>) {
        lock(&self.shared.state).probe_status = status;
    }

    /// Answers every method but POST (`HEAD` included) with `501 Not Implemented`.
    pub fn set_post_only(&self, on: bool) {
        lock(&self.shared.state).post_only = on;
    }

    /// Closes every `HEAD` probe's connection without an answer while `on`, so the probe sees an
    /// unreachable endpoint (any HTTP answer would prove it reachable).
    pub fn set_probe_drop(&self, on: bool) {
        lock(&self.shared.state).probe_drop = on;
    }

    /// How many `HEAD` probes arrived.
    pub fn probes(&self) -> usize {
        lock(&self.shared.state).probes
    }
}

fn delivered_of(st: &Recorded) -> Vec<Delivery> {
    st.deliveries
        .iter()
        .filter(|d| d.is_delivered())
        .cloned()
        .collect()
}

fn field(body: &Value, name: &str) -> Option<String> {
    match body.get(name)? {
        Value::String(s) => Some(s.clone()),
        Value::Null => None,
        other => Some(other.to_string()),
    }
}

fn set_status(shared: &Shared, index: usize, status: u16) {
    if let Some(d) = lock(&shared.state).deliveries.get_mut(index) {
        d.status_returned = status;
    }
    shared.changed.notify_waiters();
}

fn status_response(status: u16) -> (u16, Response) {
    let code = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let body = json!({"ok": false, "error": format!("fake fault: status {}", code.as_u16())});
    (code.as_u16(), (code, axum::Json(body)).into_response())
}

fn ok_response() -> (u16, Response) {
    (200, axum::Json(json!({"ok": true})).into_response())
}

async fn receive(
    State(shared): State<Arc<Shared>>,
    ConnectInfo(conn): ConnectInfo<ConnHandle>,
    method: Method,
    uri: Uri,
    body: Bytes,
) -> Response {
    if method == Method::HEAD {
        let (status, drop) = {
            let mut st = lock(&shared.state);
            st.probes += 1;
            let drop = st.probe_drop;
            let status = if st.post_only {
                501
            } else {
                st.probe_status.unwrap_or(200)
            };
            (status, drop)
        };
        shared.changed.notify_waiters();
        if drop {
            conn.kill();
            return StatusCode::SERVICE_UNAVAILABLE.into_response();
        }
        return StatusCode::from_u16(status)
            .unwrap_or(StatusCode::OK)
            .into_response();
    }
    if method != Method::POST && lock(&shared.state).post_only {
        return StatusCode::NOT_IMPLEMENTED.into_response();
    }
    let parsed: Option<Value> = serde_json::from_slice(&body).ok();
    let json_body = parsed
        .clone()
        .unwrap_or_else(|| Value::String(String::from_utf8_lossy(&body).into_owned()));
    let delivery = Delivery {
        message_id: field(&json_body, "message_id").unwrap_or_default(),
        chat_id: field(&json_body, "chat_id").unwrap_or_default(),
        text: field(&json_body, "text").unwrap_or_default(),
        reply_to: field(&json_body, "reply_to"),
        at: Instant::now(),
        status_returned: 0,
        path: uri.path().to_owned(),
        body: json_body,
    };
    let (index, fault) = {
        let mut st = lock(&shared.state);
        let chat = delivery.chat_id.clone();
        let fault = match st.chat_modes.get(&chat) {
            Some(mode) => Some(mode.clone()),
            None => st
                .chat_faults
                .get_mut(&chat)
                .and_then(VecDeque::pop_front)
                .or_else(|| st.faults.pop_front()),
        };
        st.deliveries.push(delivery);
        (st.deliveries.len() - 1, fault)
    };
    shared.changed.notify_waiters();

    let (status, response) = match fault {
        Some(CallbackFault::Status(s)) => status_response(s),
        Some(CallbackFault::Status429 { retry_after }) => {
            let (s, mut resp) = status_response(429);
            let value = HeaderValue::from_str(&retry_after)
                .expect("FakeCallback: Status429 retry_after is not a valid header value");
            resp.headers_mut().insert(header::RETRY_AFTER, value);
            (s, resp)
        }
        Some(CallbackFault::Hang) => {
            shared.shutdown.wait().await;
            conn.kill();
            return StatusCode::SERVICE_UNAVAILABLE.into_response();
        }
        Some(CallbackFault::Drop) => {
            conn.kill();
            return StatusCode::SERVICE_UNAVAILABLE.into_response();
        }
        Some(CallbackFault::Delay(d)) => {
            tokio::time::sleep(d).await;
            if parsed.is_some() {
                ok_response()
            } else {
                status_response(400)
            }
        }
        None if parsed.is_none() => status_response(400),
        None => ok_response(),
    };
    set_status(&shared, index, status);
    response
}
