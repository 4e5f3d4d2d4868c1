//! A fake WhatsApp Cloud API (Meta Graph) for end-to-end tests of the WhatsApp channel, on
//! `127.0.0.1:0`. It serves `POST /{version}/{phone_number_id}/messages` (Bearer token checked:
//! a wrong one gets 401 with code 190; a success answers a fresh `wamid.…` in the real shape)
//! and `GET /{version}/{phone_number_id}` (the probe), and records every send on arrival with
//! what it was answered.
//!
//! It plays Meta's side of the webhook too: it builds the real envelope (`object`,
//! `entry[].changes[].value` with `messaging_product`, `metadata`, `contacts`, `messages` or
//! `statuses`), serializes it as ASCII-escaped JSON ([`json::ascii_json`]) and signs those bytes
//! (`X-Hub-Signature-256`); [`Signing`] picks a wrong secret, bad hex or no header instead, and
//! [`FakeWhatsApp::deliver_raw`] redelivers the very same bytes. [`FakeWhatsApp::verify`] runs
//! the GET handshake.
//!
//! Faults for the send endpoint are queued (FIFO) or set as a sticky mode (which wins): a 429
//! with `Retry-After` and code 130429, a 5xx, any `error.code` with its HTTP status and the Graph
//! error body, a 401 (code 190), a lost response (the message is recorded and "sent", then the
//! connection is dropped before any answer), a connection dropped before the message is taken,
//! and a delay. Waits are Notify-based.

pub mod json;

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use tokio::sync::Notify;

use crate::support::{ConnHandle, Server, ShutdownSignal, lock, shutdown_channel, wait_notified};

/// Longest `text.body` the fake accepts, in characters.
pub const MAX_TEXT_CHARS: usize = 4096;

/// How the fake answers one send (see [`FakeWhatsApp::push_fault`] and
/// [`FakeWhatsApp::set_mode`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WaFault {
    /// HTTP 429 with `Retry-After: secs` and code 130429 (throughput limit).
    RateLimited {
        /// The `Retry-After` seconds.
        secs: u64,
    },
    /// HTTP 500 with code 131000 ("Something went wrong").
    ServerError,
    /// `error.code` with the HTTP status given, in the Graph error body.
    Code {
        /// HTTP status.
        http: u16,
        /// `error.code`.
        code: i64,
        /// `error.message` (and the title).
        message: String,
        /// `error.error_data.details`.
        details: String,
    },
    /// HTTP 401 with code 190 (access token expired).
    Unauthorized,
    /// The message is taken (recorded, given a wamid) and the connection dropped before the
    /// answer.
    LoseResponse,
    /// The connection is dropped before the message is taken (nothing sent).
    Drop,
    /// Wait this long, then answer normally.
    Delay(Duration),
}

impl WaFault {
    /// `code` with the HTTP status the Cloud API uses for it.
    pub fn code(code: i64) -> WaFault {
        let (http, message, details) = match code {
            130429 => (
                400,
                "(#130429) Rate limit hit",
                "Cloud API message throughput has been reached.",
            ),
            131056 => (
                400,
                "(#131056) (Business Account, Consumer Account) pair rate limit hit",
                "Too many messages sent from the sender phone number to the same recipient phone number in a short period of time.",
            ),
            131047 => (
                400,
                "(#131047) Re-engagement message",
                "Message failed to send because more than 24 hours have passed since the customer last replied to this number.",
            ),
            131026 => (
                400,
                "(#131026) Message Undeliverable",
                "Unable to deliver message. The recipient may not be on WhatsApp or may be using an old version.",
            ),
            4 | 80007 => (
                429,
                "(#4) Application request limit reached",
                "The app has reached its API call rate limit.",
            ),
            190 => (
                401,
                "Error validating access token: Session has expired",
                "The access token has expired.",
            ),
            10 | 200..=299 => (
                403,
                "(#10) Application does not have permission for this action",
                "The token lacks whatsapp_business_messaging.",
            ),
            _ => (400, "(#100) Invalid parameter", "A parameter is not valid."),
        };
        WaFault::Code {
            http,
            code,
            message: message.to_owned(),
            details: details.to_owned(),
        }
    }
}

/// How a webhook POST is signed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signing {
    /// With the app secret, as Meta does.
    Good,
    /// With another secret.
    WrongSecret,
    /// `sha256=` followed by something that is not hex.
    BadHex,
    /// No `X-Hub-Signature-256` header.
    Missing,
}

/// One send to `/messages`, recorded on arrival.
#[derive(Debug, Clone)]
pub struct SentMessage {
    /// `to`.
    pub to: String,
    /// `text.body`.
    pub text: String,
    /// `context.message_id`.
    pub context_message_id: Option<String>,
    /// The HTTP status answered; `0` while pending or when the response was lost.
    pub status_returned: u16,
    /// The wamid given, when the message was taken (also for a lost response).
    pub wamid: Option<String>,
    /// Whether the Bearer token matched.
    pub token_ok: bool,
    /// When it arrived.
    pub at: Instant,
    /// The request body.
    pub raw: Value,
}

impl SentMessage {
    /// The fake answered 2xx.
    pub fn is_success(&self) -> bool {
        (200..300).contains(&self.status_returned)
    }
}

#[derive(Debug, Default)]
struct Recorded {
    sent: Vec<SentMessage>,
    probes: Vec<(bool, u16)>,
    faults: VecDeque<WaFault>,
    mode: Option<WaFault>,
    next_id: u64,
}

#[derive(Debug)]
struct Shared {
    token: String,
    phone_number_id: String,
    state: Mutex<Recorded>,
    changed: Notify,
    shutdown: ShutdownSignal,
}

/// The fake Cloud API. Dropping it stops the server.
pub struct FakeWhatsApp {
    shared: Arc<Shared>,
    server: Server,
    app_secret: String,
    client: reqwest::Client,
    next_message: std::sync::atomic::AtomicU64,
}

impl FakeWhatsApp {
    /// Starts the fake for `phone_number_id`, accepting `token`; webhooks are signed with
    /// `app_secret`.
    pub async fn start(token: &str, phone_number_id: &str, app_secret: &str) -> FakeWhatsApp {
        let (shutdown_tx, shutdown) = shutdown_channel();
        let shared = Arc::new(Shared {
            token: token.to_owned(),
            phone_number_id: phone_number_id.to_owned(),
            state: Mutex::new(Recorded::default()),
            changed: Notify::new(),
            shutdown,
        });
        let router = Router::new()
            .fallback(handle)
            .with_state(Arc::clone(&shared));
        let server = Server::start(router, shutdown_tx)
            .await
            .expect("FakeWhatsApp: failed to bind 127.0.0.1:0");
        FakeWhatsApp {
            shared,
            server,
            app_secret: app_secret.to_owned(),
            client: reqwest::Client::new(),
            next_message: std::sync::atomic::AtomicU64::new(1),
        }
    }

    /// `channels.whatsapp.api_url`: `http://127.0.0.1:PORT/v21.0`.
    pub fn api_url(&self) -> String {
        format!("http://{}/v21.0", self.server.addr)
    }

    /// The phone number id served.
    pub fn phone_number_id(&self) -> &str {
        &self.shared.phone_number_id
    }

    // ---- faults -----------------------------------------------------------

    /// Answers the next send with `fault` (FIFO).
    pub fn push_fault(&self, fault: WaFault) {
        lock(&self.shared.state).faults.push_back(fault);
    }

    /// Answers every send with `fault` until set to `None`.
    pub fn set_mode(&self, fault: Option<WaFault>) {
        lock(&self.shared.state).mode = fault;
    }

    // ---- recording --------------------------------------------------------

    /// Every send, in arrival order, whatever it was answered.
    pub fn sent(&self) -> Vec<SentMessage> {
        lock(&self.shared.state).sent.clone()
    }

    /// The sends answered 2xx.
    pub fn sent_ok(&self) -> Vec<SentMessage> {
        self.sent()
            .into_iter()
            .filter(SentMessage::is_success)
            .collect()
    }

    /// Probes seen: (token matched, status answered).
    pub fn probes(&self) -> Vec<(bool, u16)> {
        lock(&self.shared.state).probes.clone()
    }

    /// Waits until `pred(every send)` holds; returns every send. The error lists them.
    pub async fn wait_sent(
        &self,
        pred: impl Fn(&[SentMessage]) -> bool,
        timeout: Duration,
    ) -> anyhow::Result<Vec<SentMessage>> {
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
                        "  [{}] to={} context={:?} text={:?}",
                        s.status_returned, s.to, s.context_message_id, s.text
                    )
                })
                .collect();
            anyhow::anyhow!(
                "FakeWhatsApp: timed out after {timeout:?} waiting for the sent predicate; sends:\n{}",
                lines.join("\n")
            )
        })
    }

    // ---- webhooks ---------------------------------------------------------

    /// A fresh inbound message id.
    pub fn next_wamid(&self) -> String {
        let n = self
            .next_message
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        format!("wamid.HBgLMTU1NTEyMzQ1NjcVAgASGBQz{n:06}IN")
    }

    /// A text message from `from` (with its contact card named `name`), optionally replying
    /// to `context`: `(wamid, envelope)`.
    pub fn text_message(
        &self,
        from: &str,
        name: &str,
        text: &str,
        context: Option<&str>,
    ) -> (String, Value) {
        let id = self.next_wamid();
        let mut message = json!({
            "from": from, "id": id, "timestamp": unix_secs().to_string(),
            "type": "text", "text": {"body": text},
        });
        if let Some(c) = context {
            message["context"] = json!({"from": "15550783881", "id": c});
        }
        (id, self.messages_envelope(from, name, vec![message]))
    }

    /// The envelope of `messages` from `from` (any types, already built).
    pub fn messages_envelope(&self, from: &str, name: &str, messages: Vec<Value>) -> Value {
        json::envelope(
            &self.shared.phone_number_id,
            json!({
                "contacts": [{"profile": {"name": name}, "wa_id": from}],
                "messages": messages,
            }),
        )
    }

    /// The envelope of one status of the sent message `wamid`; `error` for `failed`:
    /// `(code, title, details)`.
    pub fn status_envelope(
        &self,
        wamid: &str,
        recipient: &str,
        status: &str,
        error: Option<(i64, &str, &str)>,
    ) -> Value {
        let mut s = json!({
            "id": wamid, "status": status, "timestamp": unix_secs().to_string(),
            "recipient_id": recipient,
            "conversation": {"id": "CONVERSATION_ID", "origin": {"type": "service"}},
            "pricing": {"billable": true, "pricing_model": "CBP", "category": "service"},
        });
        if let Some((code, title, details)) = error {
            s["errors"] = json!([{
                "code": code, "title": title, "message": title,
                "error_data": {"details": details},
            }]);
        }
        json::envelope(&self.shared.phone_number_id, json!({"statuses": [s]}))
    }

    /// The bytes Meta would POST for `envelope`.
    pub fn body_of(envelope: &Value) -> Vec<u8> {
        json::ascii_json(envelope).into_bytes()
    }

    /// POSTs `envelope` to `url` as Meta does (ASCII-escaped, signed per `signing`); returns the
    /// status.
    pub async fn deliver(&self, url: &str, envelope: &Value, signing: Signing) -> u16 {
        self.deliver_raw(url, &Self::body_of(envelope), signing)
            .await
    }

    /// POSTs exactly `body` to `url`, signed per `signing` (a redelivery sends the same bytes).
    pub async fn deliver_raw(&self, url: &str, body: &[u8], signing: Signing) -> u16 {
        let mut req = self
            .client
            .post(url)
            .header("content-type", "application/json")
            .header("user-agent", "facebookexternalua")
            .body(body.to_vec());
        match signing {
            Signing::Good => {
                req = req.header(
                    "x-hub-signature-256",
                    json::signature(&self.app_secret, body),
                );
            }
            Signing::WrongSecret => {
                let secret = format!("{}-wrong", self.app_secret);
                req = req.header("x-hub-signature-256", json::signature(&secret, body));
            }
            Signing::BadHex => {
                req = req.header("x-hub-signature-256", format!("sha256={}", "zz".repeat(32)));
            }
            Signing::Missing => {}
        }
        req.send()
            .await
            .expect("FakeWhatsApp: POST the webhook")
            .status()
            .as_u16()
    }

    /// The GET verification handshake: `(status, body)`.
    pub async fn verify(
        &self,
        url: &str,
        mode: &str,
        token: &str,
        challenge: &str,
    ) -> (u16, String) {
        let resp = self
            .client
            .get(url)
            .query(&[
                ("hub.mode", mode),
                ("hub.verify_token", token),
                ("hub.challenge", challenge),
            ])
            .send()
            .await
            .expect("FakeWhatsApp: GET the webhook");
        let status = resp.status().as_u16();
        (status, resp.text().await.unwrap_or_default())
    }
}

fn unix_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// A Graph API error answer.
fn graph_error(http: u16, code: i64, message: &str, details: &str) -> Response {
    let status = StatusCode::from_u16(http).unwrap_or(StatusCode::BAD_REQUEST);
    (
        status,
        axum::Json(json!({"error": {
            "message": message, "type": "OAuthException", "code": code,
            "error_data": {"messaging_product": "whatsapp", "details": details},
            "fbtrace_id": "AbCdEfGhIjK",
        }})),
    )
        .into_response()
}

async fn handle(
    State(shared): State<Arc<Shared>>,
    ConnectInfo(conn): ConnectInfo<ConnHandle>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let token_ok = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        == Some(shared.token.as_str());
    let segments: Vec<&str> = uri.path().trim_matches('/').split('/').collect();
    let number_ok = segments.get(1) == Some(&shared.phone_number_id.as_str());
    match (method, segments.as_slice()) {
        (Method::GET, [_version, _number]) => {
            let status = if !token_ok {
                401
            } else if number_ok {
                200
            } else {
                400
            };
            lock(&shared.state).probes.push((token_ok, status));
            shared.changed.notify_waiters();
            match status {
                200 => axum::Json(json!({
                    "verified_name": "Gateway Test", "display_phone_number": "+1 555-078-3881",
                    "id": shared.phone_number_id, "quality_rating": "GREEN",
                }))
                .into_response(),
                401 => graph_error(401, 190, "Invalid OAuth access token.", ""),
                _ => graph_error(400, 100, "Unsupported get request.", ""),
            }
        }
        (Method::POST, [_version, _number, "messages"]) => {
            send(&shared, &conn, token_ok, number_ok, &body).await
        }
        _ => graph_error(400, 100, "Unknown path components", ""),
    }
}

async fn send(
    shared: &Shared,
    conn: &ConnHandle,
    token_ok: bool,
    number_ok: bool,
    body: &[u8],
) -> Response {
    let raw: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    let index = {
        let mut st = lock(&shared.state);
        st.sent.push(SentMessage {
            to: raw["to"].as_str().unwrap_or_default().to_owned(),
            text: raw["text"]["body"].as_str().unwrap_or_default().to_owned(),
            context_message_id: raw["context"]["message_id"].as_str().map(str::to_owned),
            status_returned: 0,
            wamid: None,
            token_ok,
            at: Instant::now(),
            raw: raw.clone(),
        });
        st.sent.len() - 1
    };
    shared.changed.notify_waiters();
    let finish = |status: u16, wamid: Option<String>| {
        let mut st = lock(&shared.state);
        if let Some(s) = st.sent.get_mut(index) {
            s.status_returned = status;
            s.wamid = wamid;
        }
        drop(st);
        shared.changed.notify_waiters();
    };
    let fault = {
        let mut st = lock(&shared.state);
        match st.mode.clone() {
            Some(m) => Some(m),
            None => st.faults.pop_front(),
        }
    };
    let mut lose = false;
    match fault {
        Some(WaFault::Delay(d)) => {
            tokio::select! {
                () = tokio::time::sleep(d) => {}
                () = shared.shutdown.wait() => {
                    conn.kill();
                    return StatusCode::SERVICE_UNAVAILABLE.into_response();
                }
            }
        }
        Some(WaFault::LoseResponse) => lose = true,
        Some(WaFault::Drop) => {
            finish(0, None);
            conn.kill();
            return StatusCode::SERVICE_UNAVAILABLE.into_response();
        }
        Some(WaFault::RateLimited { secs }) => {
            finish(429, None);
            let mut r = graph_error(
                429,
                130429,
                "(#130429) Rate limit hit",
                "Cloud API message throughput has been reached.",
            );
            if let Ok(v) = secs.to_string().parse() {
                r.headers_mut().insert("retry-after", v);
            }
            return r;
        }
        Some(WaFault::ServerError) => {
            finish(500, None);
            return graph_error(
                500,
                131000,
                "Something went wrong",
                "An unknown error occurred.",
            );
        }
        Some(WaFault::Unauthorized) => {
            finish(401, None);
            return graph_error(
                401,
                190,
                "Error validating access token: Session has expired.",
                "The access token has expired.",
            );
        }
        Some(WaFault::Code {
            http,
            code,
            message,
            details,
        }) => {
            finish(http, None);
            return graph_error(http, code, &message, &details);
        }
        None => {}
    }
    if !token_ok {
        finish(401, None);
        return graph_error(
            401,
            190,
            "Invalid OAuth access token - Cannot parse access token",
            "",
        );
    }
    if !number_ok {
        finish(400, None);
        return graph_error(400, 100, "Invalid parameter", "Unknown phone number id.");
    }
    let text_len = raw["text"]["body"].as_str().map(|t| t.chars().count());
    let valid = raw["messaging_product"] == "whatsapp"
        && raw["type"] == "text"
        && raw["to"].as_str().is_some_and(|t| !t.is_empty());
    match text_len {
        Some(n) if valid && n > 0 && n <= MAX_TEXT_CHARS => {}
        _ => {
            finish(400, None);
            return graph_error(
                400,
                100,
                "(#100) Invalid parameter",
                "text.body is missing, empty or longer than 4096 characters, or the message is not a WhatsApp text message.",
            );
        }
    }
    let wamid = {
        let mut st = lock(&shared.state);
        st.next_id += 1;
        format!("wamid.OUT{:08}", st.next_id)
    };
    if lose {
        // Taken, then the connection drops: the sender cannot tell it was sent.
        finish(0, Some(wamid));
        conn.kill();
        return StatusCode::SERVICE_UNAVAILABLE.into_response();
    }
    finish(200, Some(wamid.clone()));
    axum::Json(json!({
        "messaging_product": "whatsapp",
        "contacts": [{"input": raw["to"], "wa_id": raw["to"]}],
        "messages": [{"id": wamid}],
    }))
    .into_response()
}
