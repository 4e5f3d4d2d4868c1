//! A fake OpenAI-compatible LLM server (`POST /v1/chat/completions`) for
//! end-to-end tests. It speaks the real wire format, answers
//! `llm: {last user message}` by default, records every request body and
//! `Authorization` header, and can inject faults (error statuses, delays,
//! hangs, dropped connections) or park requests on a marker until released.
//!
//! Tool calls are scripted: [`FakeOpenAi::push_tool_call`] makes the next
//! answered request a tool call (`finish_reason: "tool_calls"`, ids
//! `call_1`, `call_2`, … across the server's life), and
//! [`FakeOpenAi::push_answer`] a given text. Scripted responses are consumed
//! FIFO by requests that get past faults and holds; with none queued the
//! answer is `llm: {last user message}`. The `tools` array of each request and
//! every `role: "tool"` message (once per `tool_call_id`) are recorded.
//!
//! Every completion reports a `usage` object: by default `prompt_tokens` is the number of
//! whitespace-separated words of the request's message contents and `completion_tokens` that
//! of the answer; [`FakeOpenAi::fix_usage`] makes it fixed numbers and
//! [`FakeOpenAi::omit_usage`] leaves it out (a server that reports none). What each answered
//! request reported is kept, in order, for [`FakeOpenAi::reported_usage`].
//!
//! Waiting is Notify-based: every recorded request or parked/unparked request
//! wakes the `wait_*` helpers, which then re-check their condition.

use std::collections::{HashSet, VecDeque};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::{Value, json};
use tokio::sync::{Notify, watch};

use crate::support::{ConnHandle, Server, ShutdownSignal, lock, shutdown_channel, wait_notified};

/// A fault applied to one request (queued with [`FakeOpenAi::push_fault`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fault {
    /// Answer with this HTTP status and an OpenAI-style error body
    /// `{"error":{"message":..,"type":..,"code":null}}`.
    Status(u16),
    /// Wait this long, then answer normally (a slow upstream).
    Delay(Duration),
    /// Never answer; the request stays open until the client gives up or the
    /// `FakeOpenAi` is dropped (then the connection is closed unanswered).
    Hang,
    /// Close the TCP connection without sending any response.
    Drop,
    /// A hostile or careless server that echoes the request's headers (`Authorization`
    /// included) back, with a terminal escape and a newline around them: with a status other
    /// than 200, as an OpenAI-style error (`error.message` quotes them, `error.headers` lists
    /// them); with 200, as a body that is not a completion (`{"choices": "<headers>"}`).
    EchoHeaders(u16),
}

/// A scripted response (queued with [`FakeOpenAi::push_tool_call`],
/// [`FakeOpenAi::push_tool_calls`] or [`FakeOpenAi::push_answer`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scripted {
    /// Call these tools: `(name, arguments JSON text)` each, in one response.
    ToolCalls(Vec<(String, String)>),
    /// Answer with this text.
    Answer(String),
}

/// A `role: "tool"` message as the fake first received it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ToolResultSeen {
    /// Index (into [`FakeOpenAi::requests`]) of the first request carrying it.
    pub request: usize,
    /// Its `tool_call_id`.
    pub tool_call_id: String,
    /// Its `content` (a string; anything else as JSON text).
    pub content: String,
}

/// One marker registered with [`FakeOpenAi::hold`].
#[derive(Debug)]
struct Hold {
    marker: String,
    released: watch::Sender<bool>,
    parked: AtomicUsize,
}

#[derive(Debug, Default)]
struct Recorded {
    requests: Vec<Value>,
    auth: Vec<Option<String>>,
    faults: VecDeque<Fault>,
    holds: Vec<Arc<Hold>>,
    script: VecDeque<Scripted>,
    tool_results: Vec<ToolResultSeen>,
    seen_tool_call_ids: HashSet<String>,
    usage: UsageMode,
    reported: Vec<(u64, u64)>,
    latency: Duration,
}

/// What the `usage` object of a completion says.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
enum UsageMode {
    /// Word counts of the request and the answer.
    #[default]
    Counted,
    /// These `(prompt_tokens, completion_tokens)`.
    Fixed(u64, u64),
    /// No `usage` key.
    Omitted,
}

#[derive(Debug)]
struct Shared {
    state: Mutex<Recorded>,
    changed: Notify,
    shutdown: ShutdownSignal,
    next_id: AtomicU64,
    next_call_id: AtomicU64,
}

/// The fake OpenAI server. Dropping it shuts the server down and closes any
/// hanging or held requests' connections.
pub struct FakeOpenAi {
    shared: Arc<Shared>,
    server: Server,
}

impl std::fmt::Debug for FakeOpenAi {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FakeOpenAi")
            .field("addr", &self.server.addr)
            .finish_non_exhaustive()
    }
}

impl FakeOpenAi {
    /// Starts the server on `127.0.0.1:<ephemeral>`.
    pub async fn start() -> FakeOpenAi {
        let (shutdown_tx, shutdown) = shutdown_channel();
        let shared = Arc::new(Shared {
            state: Mutex::new(Recorded::default()),
            changed: Notify::new(),
            shutdown,
            next_id: AtomicU64::new(1),
            next_call_id: AtomicU64::new(1),
        });
        let router = Router::new()
            .route("/v1/chat/completions", post(chat_completions))
            .route("/v1/models", get(models))
            .with_state(Arc::clone(&shared));
        let server = Server::start(router, shutdown_tx)
            .await
            .expect("FakeOpenAi: failed to bind 127.0.0.1:0");
        FakeOpenAi { shared, server }
    }

    /// Base URL including the `/v1` prefix: `http://127.0.0.1:PORT/v1`.
    pub fn base_url(&self) -> String {
        format!("http://{}/v1", self.server.addr)
    }

    /// The bound socket address.
    pub fn addr(&self) -> std::net::SocketAddr {
        self.server.addr
    }

    /// Every request body received, in arrival order (including ones answered
    /// with faults). A body that is not valid JSON is recorded as a JSON
    /// string holding the raw (lossy UTF-8) text.
    pub fn requests(&self) -> Vec<Value> {
        lock(&self.shared.state).requests.clone()
    }

    /// The `Authorization` header of every request, parallel to
    /// [`requests`](Self::requests).
    pub fn auth_headers(&self) -> Vec<Option<String>> {
        lock(&self.shared.state).auth.clone()
    }

    /// Waits until at least `n` requests have been received and returns all
    /// of them; errors on timeout with the count seen so far.
    pub async fn wait_for_requests(
        &self,
        n: usize,
        timeout: Duration,
    ) -> anyhow::Result<Vec<Value>> {
        let got = wait_notified(&self.shared.changed, timeout, || {
            let st = lock(&self.shared.state);
            (st.requests.len() >= n).then(|| st.requests.clone())
        })
        .await;
        got.ok_or_else(|| {
            let seen = self.requests();
            anyhow::anyhow!(
                "FakeOpenAi: timed out after {timeout:?} waiting for {n} request(s); got {}: {}",
                seen.len(),
                summarize(&seen)
            )
        })
    }

    /// Queues a fault; each request consumes the oldest queued fault (FIFO)
    /// on arrival, before any [`hold`](Self::hold) is considered.
    pub fn push_fault(&self, fault: Fault) {
        lock(&self.shared.state).faults.push_back(fault);
    }

    /// Delays every answer by `latency` from now on (a model that takes its time; zero: none),
    /// before any queued fault or hold applies.
    pub fn set_latency(&self, latency: Duration) {
        lock(&self.shared.state).latency = latency;
    }

    /// Number of queued faults not yet consumed.
    pub fn pending_faults(&self) -> usize {
        lock(&self.shared.state).faults.len()
    }

    /// Parks every request whose last user message contains `marker` until
    /// [`release`](Self::release)`(marker)` is called; then they are answered
    /// normally. Holding an already-held marker is a no-op.
    pub fn hold(&self, marker: &str) {
        let mut st = lock(&self.shared.state);
        if st.holds.iter().any(|h| h.marker == marker) {
            return;
        }
        let (released, _) = watch::channel(false);
        st.holds.push(Arc::new(Hold {
            marker: marker.to_owned(),
            released,
            parked: AtomicUsize::new(0),
        }));
    }

    /// Releases every request parked on `marker` and stops holding new ones.
    pub fn release(&self, marker: &str) {
        let mut st = lock(&self.shared.state);
        st.holds.retain(|h| {
            if h.marker == marker {
                h.released.send_replace(true);
                false
            } else {
                true
            }
        });
    }

    /// Makes the next answered request (after any already scripted) a call
    /// of tool `name` with `arguments_json` (sent as is, so it may be
    /// invalid JSON on purpose).
    pub fn push_tool_call(&self, name: &str, arguments_json: &str) {
        self.push_tool_calls(&[(name, arguments_json)]);
    }

    /// Like [`push_tool_call`](Self::push_tool_call) with several calls in
    /// one response.
    pub fn push_tool_calls(&self, calls: &[(&str, &str)]) {
        let calls = calls
            .iter()
            .map(|(n, a)| ((*n).to_owned(), (*a).to_owned()))
            .collect();
        lock(&self.shared.state)
            .script
            .push_back(Scripted::ToolCalls(calls));
    }

    /// Makes the next answered request (after any already scripted) answer
    /// `text`.
    pub fn push_answer(&self, text: &str) {
        lock(&self.shared.state)
            .script
            .push_back(Scripted::Answer(text.to_owned()));
    }

    /// Makes every later completion report `prompt` and `completion` tokens.
    pub fn fix_usage(&self, prompt: u64, completion: u64) {
        lock(&self.shared.state).usage = UsageMode::Fixed(prompt, completion);
    }

    /// Makes every later completion carry no `usage` object (`false`: back to word counts).
    pub fn omit_usage(&self, omit: bool) {
        lock(&self.shared.state).usage = if omit {
            UsageMode::Omitted
        } else {
            UsageMode::Counted
        };
    }

    /// The `(prompt_tokens, completion_tokens)` each answered completion reported, in the order
    /// they were answered (none for a completion without `usage`, a fault, or a stream).
    pub fn reported_usage(&self) -> Vec<(u64, u64)> {
        lock(&self.shared.state).reported.clone()
    }

    /// Number of scripted responses not yet used.
    pub fn pending_scripted(&self) -> usize {
        lock(&self.shared.state).script.len()
    }

    /// The `tools` array of every request (`None` if it had none), parallel
    /// to [`requests`](Self::requests).
    pub fn tools_offered(&self) -> Vec<Option<Value>> {
        lock(&self.shared.state)
            .requests
            .iter()
            .map(|r| r.get("tools").cloned())
            .collect()
    }

    /// Every `role: "tool"` message received, once per `tool_call_id`, in the
    /// order they first arrived.
    pub fn tool_results(&self) -> Vec<ToolResultSeen> {
        lock(&self.shared.state).tool_results.clone()
    }

    /// Number of requests currently parked on `marker` (0 once released).
    pub fn held_count(&self, marker: &str) -> usize {
        held_count(&lock(&self.shared.state), marker)
    }

    /// Waits until at least `n` requests are parked on `marker`.
    pub async fn wait_held(&self, marker: &str, n: usize, timeout: Duration) -> anyhow::Result<()> {
        let got = wait_notified(&self.shared.changed, timeout, || {
            (held_count(&lock(&self.shared.state), marker) >= n).then_some(())
        })
        .await;
        got.ok_or_else(|| {
            anyhow::anyhow!(
                "FakeOpenAi: timed out after {timeout:?} waiting for {n} request(s) held on {marker:?}; \
                 currently held: {}; requests so far: {}",
                self.held_count(marker),
                summarize(&self.requests())
            )
        })
    }
}

fn held_count(st: &Recorded, marker: &str) -> usize {
    st.holds
        .iter()
        .filter(|h| h.marker == marker)
        .map(|h| h.parked.load(Ordering::SeqCst))
        .sum()
}

/// Short human-readable list of the last user messages of `requests`.
fn summarize(requests: &[Value]) -> String {
    let items: Vec<String> = requests
        .iter()
        .map(|r| format!("{:?}", last_user_content(r)))
        .collect();
    format!("[{}]", items.join(", "))
}

/// Text of the last `role == "user"` message; content may be a string or an
/// array of `{"type":"text","text":..}` parts. Empty if there is none.
pub fn last_user_content(request: &Value) -> String {
    let Some(messages) = request.get("messages").and_then(Value::as_array) else {
        return String::new();
    };
    let Some(msg) = messages
        .iter()
        .rev()
        .find(|m| m.get("role").and_then(Value::as_str) == Some("user"))
    else {
        return String::new();
    };
    match msg.get("content") {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Array(parts)) => parts
            .iter()
            .filter_map(|p| p.get("text").and_then(Value::as_str))
            .collect::<Vec<_>>()
            .join(""),
        _ => String::new(),
    }
}

/// Records the `role: "tool"` messages of request `index` not seen before.
fn record_tool_results(st: &mut Recorded, index: usize, request: Option<&Value>) {
    let Some(messages) = request
        .and_then(|r| r.get("messages"))
        .and_then(Value::as_array)
    else {
        return;
    };
    for m in messages {
        if m.get("role").and_then(Value::as_str) != Some("tool") {
            continue;
        }
        let id = m
            .get("tool_call_id")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned();
        if !st.seen_tool_call_ids.insert(id.clone()) {
            continue;
        }
        let content = match m.get("content") {
            Some(Value::String(s)) => s.clone(),
            Some(other) => other.to_string(),
            None => String::new(),
        };
        st.tool_results.push(ToolResultSeen {
            request: index,
            tool_call_id: id,
            content,
        });
    }
}

/// Decrements a hold's parked count (and wakes waiters) even if the handler
/// future is dropped because the client went away.
struct ParkGuard<'a> {
    hold: Arc<Hold>,
    changed: &'a Notify,
}

impl Drop for ParkGuard<'_> {
    fn drop(&mut self) {
        self.hold.parked.fetch_sub(1, Ordering::SeqCst);
        self.changed.notify_waiters();
    }
}

fn error_response(status: u16, message: &str) -> Response {
    let code = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let kind = match code.as_u16() {
        400 | 404 | 422 => "invalid_request_error",
        401 | 403 => "authentication_error",
        429 => "rate_limit_exceeded",
        _ => "server_error",
    };
    let body = json!({"error": {"message": message, "type": kind, "param": null, "code": null}});
    (code, axum::Json(body)).into_response()
}

/// The response of [`Fault::EchoHeaders`].
fn echo_headers(status: u16, headers: &HeaderMap) -> Response {
    let all: Vec<String> = headers
        .iter()
        .map(|(k, v)| format!("{k}: {}", String::from_utf8_lossy(v.as_bytes())))
        .collect();
    let text = format!("\u{1b}[31mrequest was:\n{}", all.join("\r\n"));
    if status == 200 {
        return (StatusCode::OK, axum::Json(json!({"choices": text}))).into_response();
    }
    let map: serde_json::Map<String, Value> = headers
        .iter()
        .map(|(k, v)| {
            (
                k.to_string(),
                Value::String(String::from_utf8_lossy(v.as_bytes()).into_owned()),
            )
        })
        .collect();
    let code = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let body = json!({"error": {"message": text, "type": "server_error", "headers": map}});
    (code, axum::Json(body)).into_response()
}

async fn models() -> Response {
    axum::Json(json!({
        "object": "list",
        "data": [{"id": "fake-model", "object": "model", "created": 0, "owned_by": "fake"}]
    }))
    .into_response()
}

async fn chat_completions(
    State(shared): State<Arc<Shared>>,
    ConnectInfo(conn): ConnectInfo<ConnHandle>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let parsed: Option<Value> = serde_json::from_slice(&body).ok();
    let recorded = parsed
        .clone()
        .unwrap_or_else(|| Value::String(String::from_utf8_lossy(&body).into_owned()));
    let auth = headers
        .get(header::AUTHORIZATION)
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
    let fault = {
        let mut st = lock(&shared.state);
        let index = st.requests.len();
        record_tool_results(&mut st, index, parsed.as_ref());
        st.requests.push(recorded);
        st.auth.push(auth);
        (st.faults.pop_front(), st.latency)
    };
    let (fault, latency) = fault;
    shared.changed.notify_waiters();
    if !latency.is_zero() {
        tokio::time::sleep(latency).await;
    }

    match fault {
        None => {}
        Some(Fault::Status(code)) => {
            return error_response(code, &format!("fake fault: status {code}"));
        }
        Some(Fault::Delay(d)) => tokio::time::sleep(d).await,
        Some(Fault::Hang) => {
            shared.shutdown.wait().await;
            conn.kill();
            return StatusCode::SERVICE_UNAVAILABLE.into_response();
        }
        Some(Fault::Drop) => {
            conn.kill();
            return StatusCode::SERVICE_UNAVAILABLE.into_response();
        }
        Some(Fault::EchoHeaders(code)) => return echo_headers(code, &headers),
    }

    let Some(request) = parsed else {
        return error_response(400, "fake openai: request body is not valid JSON");
    };
    let user = last_user_content(&request);

    let hold = lock(&shared.state)
        .holds
        .iter()
        .find(|h| user.contains(h.marker.as_str()))
        .cloned();
    if let Some(hold) = hold {
        let mut released = hold.released.subscribe();
        hold.parked.fetch_add(1, Ordering::SeqCst);
        let guard = ParkGuard {
            hold,
            changed: &shared.changed,
        };
        shared.changed.notify_waiters();
        tokio::select! {
            _ = released.wait_for(|r| *r) => {}
            () = shared.shutdown.wait() => {
                drop(guard);
                conn.kill();
                return StatusCode::SERVICE_UNAVAILABLE.into_response();
            }
        }
        drop(guard);
    }

    let model = request
        .get("model")
        .and_then(Value::as_str)
        .unwrap_or("fake-model")
        .to_owned();
    let scripted = lock(&shared.state).script.pop_front();
    let (content, tool_calls) = match scripted {
        None => (Some(format!("llm: {user}")), Vec::new()),
        Some(Scripted::Answer(text)) => (Some(text), Vec::new()),
        Some(Scripted::ToolCalls(calls)) => {
            let calls = calls
                .into_iter()
                .map(|(name, arguments)| {
                    let n = shared.next_call_id.fetch_add(1, Ordering::SeqCst);
                    json!({
                        "id": format!("call_{n}"),
                        "type": "function",
                        "function": {"name": name, "arguments": arguments},
                    })
                })
                .collect::<Vec<_>>();
            (None, calls)
        }
    };
    let finish = if tool_calls.is_empty() {
        "stop"
    } else {
        "tool_calls"
    };
    let id = format!(
        "chatcmpl-fake-{}",
        shared.next_id.fetch_add(1, Ordering::SeqCst)
    );
    let created = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let prompt_tokens = request
        .get("messages")
        .and_then(Value::as_array)
        .map(|ms| {
            ms.iter()
                .filter_map(|m| m.get("content").and_then(Value::as_str))
                .map(|c| c.split_whitespace().count())
                .sum::<usize>()
        })
        .unwrap_or(0);
    let completion_tokens = content
        .as_deref()
        .map_or(0, |c| c.split_whitespace().count());
    let mode = lock(&shared.state).usage;
    let (prompt_tokens, completion_tokens) = match mode {
        UsageMode::Fixed(p, c) => (p, c),
        UsageMode::Counted | UsageMode::Omitted => (prompt_tokens as u64, completion_tokens as u64),
    };
    let usage = json!({
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    });

    if request.get("stream").and_then(Value::as_bool) == Some(true) {
        let chunk = |delta: Value, finish: Value| {
            json!({
                "id": id, "object": "chat.completion.chunk", "created": created, "model": model,
                "choices": [{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish}]
            })
        };
        let first = if tool_calls.is_empty() {
            json!({"role": "assistant", "content": content})
        } else {
            let indexed: Vec<Value> = tool_calls
                .iter()
                .enumerate()
                .map(|(i, c)| {
                    let mut c = c.clone();
                    c["index"] = json!(i);
                    c
                })
                .collect();
            json!({"role": "assistant", "content": null, "tool_calls": indexed})
        };
        let events = [chunk(first, Value::Null), chunk(json!({}), json!(finish))];
        let mut sse = String::new();
        for ev in events {
            sse.push_str(&format!("data: {ev}\n\n"));
        }
        sse.push_str("data: [DONE]\n\n");
        return ([(header::CONTENT_TYPE, "text/event-stream")], sse).into_response();
    }

    let message = if tool_calls.is_empty() {
        json!({"role": "assistant", "content": content})
    } else {
        json!({"role": "assistant", "content": null, "tool_calls": tool_calls})
    };
    let mut body = json!({
        "id": id,
        "object": "chat.completion",
        "created": created,
        "model": model,
        "choices": [{
            "index": 0,
            "message": message,
            "logprobs": null,
            "finish_reason": finish
        }],
        "usage": usage,
    });
    if mode == UsageMode::Omitted {
        if let Some(o) = body.as_object_mut() {
            o.remove("usage");
        }
    } else {
        lock(&shared.state)
            .reported
            .push((prompt_tokens, completion_tokens));
    }
    axum::Json(body).into_response()
}
