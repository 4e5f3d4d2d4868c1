//! The HTTP listener (axum): the WebChat page and socket, the HTTP channel's webhook,
//! `/healthz`, `/readyz` and `/metrics`.
//!
//! Handlers parse every body themselves, with their own size limits, so malformed, oversized
//! or non-UTF-8 input gets a JSON error naming what is wrong and never a panic. A declared
//! `Content-Length` above a route's limit is refused with 413 before any of the body is read, and
//! a body that does not arrive within `http.body_timeout` gets 408.
//!
//! [`serve`] is the accept loop (HTTP/1.1, with upgrades for the WebChat socket): every connection
//! holds one of `http.max_connections` slots for as long as it is open (a WebSocket keeps its slot
//! until it closes); a connection beyond that is answered 503 and closed at once. Request headers
//! must arrive within `http.header_timeout`, which also closes idle keep-alive connections.
//!
//! `/healthz` answers 200 `ok` whenever this listener serves: the process is alive. `/readyz`
//! answers 200 `ready` only when the gateway can take traffic: started and not stopping, the
//! store readable, and no part that cannot be restarted failed; otherwise 503 with a text body
//! that says why, naming each failed part.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{DefaultBodyLimit, Extension, Query, State, WebSocketUpgrade};
use axum::http::{HeaderMap, Request, StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use hyper_util::rt::{TokioIo, TokioTimer};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};
use tokio::task::JoinSet;

use crate::channels::{http as http_channel, webchat};
use crate::inbox::Inbox;
use crate::session::router::Router as SessionRouter;
use crate::store::SharedStore;

const PAGE: &str = include_str!("../assets/webchat.html");
/// Largest Telegram webhook body accepted.
pub const TELEGRAM_BODY_LIMIT: usize = 2 * 1024 * 1024;

/// What the handlers share.
#[derive(Clone)]
pub struct AppState {
    /// Where inbound messages go.
    pub inbox: Arc<Inbox>,
    /// The store, for readiness.
    pub store: SharedStore,
    /// The WebChat adapter, if enabled.
    pub webchat: Option<Arc<webchat::WebChat>>,
    /// The HTTP channel's text limit, if the channel is enabled.
    pub http_channel_max_bytes: Option<usize>,
    /// Set once channels are started; cleared at shutdown.
    pub ready: Arc<AtomicBool>,
    /// Which parts failed, for readiness.
    pub supervisor: Arc<crate::supervise::Supervisor>,
    /// Sessions, for the metrics gauges.
    pub router: Arc<SessionRouter>,
    /// The Telegram webhook, in webhook mode.
    pub telegram_webhook: Option<TelegramWebhook>,
    /// How long a client may take to send a request body (`http.body_timeout`).
    pub body_timeout: Duration,
}

/// Where Telegram POSTs updates, and the secret it must present.
#[derive(Clone)]
pub struct TelegramWebhook {
    /// The path on this listener.
    pub path: String,
    /// The expected `X-Telegram-Bot-Api-Secret-Token`.
    pub secret: String,
}

/// Builds the router.
pub fn router(state: AppState) -> Router {
    let mut router = Router::new();
    if let Some(hook) = &state.telegram_webhook {
        router = router.route(
            &hook.path,
            post(telegram_update).layer(DefaultBodyLimit::disable()),
        );
    }
    router
        .route("/", get(page))
        .route("/ws", get(ws))
        .route(
            "/channels/http/messages",
            post(http_message).layer(DefaultBodyLimit::disable()),
        )
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .fallback(|| async {
            error(
                StatusCode::NOT_FOUND,
                "no such path; the chat page is at /, messages at POST /channels/http/messages"
                    .to_owned(),
            )
        })
        .with_state(state)
}

fn error(status: StatusCode, message: String) -> Response {
    (status, Json(json!({"accepted": false, "error": message}))).into_response()
}

async fn page(State(state): State<AppState>) -> Response {
    if state.webchat.is_none() {
        return error(
            StatusCode::NOT_FOUND,
            "WebChat is disabled; set channels.webchat.enabled = true".to_owned(),
        );
    }
    ([(header::CACHE_CONTROL, "no-cache")], Html(PAGE)).into_response()
}

async fn ws(
    State(state): State<AppState>,
    Query(query): Query<HashMap<String, String>>,
    slot: Option<Extension<ConnectionSlot>>,
    upgrade: WebSocketUpgrade,
) -> Response {
    let Some(webchat) = state.webchat.clone() else {
        return error(
            StatusCode::NOT_FOUND,
            "WebChat is disabled; set channels.webchat.enabled = true".to_owned(),
        );
    };
    let Some(chat_id) = query.get("chat_id").cloned() else {
        return error(
            StatusCode::BAD_REQUEST,
            "query parameter `chat_id` is required: /ws?chat_id=<id>".to_owned(),
        );
    };
    if let Err(e) = webchat::valid_chat_id(&chat_id) {
        return error(StatusCode::BAD_REQUEST, e);
    }
    let inbox = state.inbox.clone();
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

async fn http_message(State(state): State<AppState>, headers: HeaderMap, body: Body) -> Response {
    let Some(max_text) = state.http_channel_max_bytes else {
        return error(
            StatusCode::NOT_FOUND,
            "the HTTP channel is disabled; set channels.http.enabled = true".to_owned(),
        );
    };
    // JSON escapes can make a text up to six times longer on the wire.
    let limit = max_text.saturating_mul(6).saturating_add(16 * 1024);
    let too_large = || {
        format!(
            "body is larger than {limit} bytes; texts are limited to {max_text} bytes (channels.http.max_message_bytes)"
        )
    };
    let bytes = match read_body(&headers, body, limit, state.body_timeout, too_large).await {
        Ok(b) => b,
        Err(response) => return response,
    };
    let msg = match http_channel::parse_inbound(&bytes, max_text) {
        Ok(m) => m,
        Err(e) => {
            let status = if e.contains("over the limit") {
                StatusCode::PAYLOAD_TOO_LARGE
            } else {
                StatusCode::BAD_REQUEST
            };
            return error(status, e);
        }
    };
    match state.inbox.accept(msg).await {
        Ok(duplicate) => (
            StatusCode::ACCEPTED,
            Json(json!({"accepted": true, "duplicate": duplicate})),
        )
            .into_response(),
        Err(e) => {
            tracing::error!(message = "Cannot commit an HTTP-channel message.", error = %e);
            error(
                StatusCode::SERVICE_UNAVAILABLE,
                "the gateway cannot store messages right now; retry later".to_owned(),
            )
        }
    }
}

async fn telegram_update(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    use subtle::ConstantTimeEq;
    let Some(hook) = &state.telegram_webhook else {
        return error(
            StatusCode::NOT_FOUND,
            "the Telegram webhook is not enabled".to_owned(),
        );
    };
    let given = headers
        .get("x-telegram-bot-api-secret-token")
        .map(|v| v.as_bytes())
        .unwrap_or_default();
    if !bool::from(given.ct_eq(hook.secret.as_bytes())) {
        return error(
            StatusCode::UNAUTHORIZED,
            "missing or wrong X-Telegram-Bot-Api-Secret-Token".to_owned(),
        );
    }
    let too_large = || format!("body is larger than {TELEGRAM_BODY_LIMIT} bytes");
    let body = match read_body(
        &headers,
        body,
        TELEGRAM_BODY_LIMIT,
        state.body_timeout,
        too_large,
    )
    .await
    {
        Ok(b) => b,
        Err(response) => return response,
    };
    let update: teloxide::types::Update = match serde_json::from_slice(&body) {
        Ok(u) => u,
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                format!("not a Telegram update: {e}"),
            );
        }
    };
    let Some(msg) = crate::channels::telegram::normalize(&update) else {
        return (StatusCode::OK, Json(json!({"ok": true}))).into_response();
    };
    match state.inbox.accept(msg).await {
        Ok(_) => (StatusCode::OK, Json(json!({"ok": true}))).into_response(),
        Err(e) => {
            tracing::error!(message = "Cannot commit a Telegram update; Telegram will redeliver it.", update_id = update.id.0, error = %e);
            error(
                StatusCode::SERVICE_UNAVAILABLE,
                "cannot store the update right now".to_owned(),
            )
        }
    }
}

async fn metrics(State(state): State<AppState>) -> Response {
    let ready = state.supervisor.ready().is_ok();
    metrics::gauge!("gateway_ready").set(if ready { 1.0 } else { 0.0 });
    match crate::metrics::render(&state.store, &state.router).await {
        Some(text) => ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response(),
        None => (StatusCode::SERVICE_UNAVAILABLE, "metrics are unavailable\n").into_response(),
    }
}

async fn readyz(State(state): State<AppState>) -> Response {
    if !state.ready.load(Ordering::Acquire) {
        return (StatusCode::SERVICE_UNAVAILABLE, "starting or stopping\n").into_response();
    }
    if let Err(failed) = state.supervisor.ready() {
        let mut body = String::from(
            "not ready: a part of the gateway failed and cannot be restarted; restart gatewayd\n",
        );
        for f in failed {
            body.push_str(&format!("failed: {}: {}\n", f.component, f.message));
        }
        return (StatusCode::SERVICE_UNAVAILABLE, body).into_response();
    }
    match state.store.counts().await {
        Ok(_) => (StatusCode::OK, "ready\n").into_response(),
        Err(e) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("store unavailable: {e}\n"),
        )
            .into_response(),
    }
}

/// Reads a request body of at most `limit` bytes within `timeout`. A declared `Content-Length`
/// over the limit is refused with 413 before any of the body is read; a body that grows over it
/// gets 413 too (`too_large` says why), and one that does not arrive in time gets 408. Both close
/// the connection, since the rest of the body is not read.
async fn read_body(
    headers: &HeaderMap,
    body: Body,
    limit: usize,
    timeout: Duration,
    too_large: impl Fn() -> String,
) -> Result<Bytes, Response> {
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    if declared.is_some_and(|n| n > u64::try_from(limit).unwrap_or(u64::MAX)) {
        drain(body, timeout);
        return Err(closing(error(StatusCode::PAYLOAD_TOO_LARGE, too_large())));
    }
    match tokio::time::timeout(timeout, axum::body::to_bytes(body, limit)).await {
        Ok(Ok(bytes)) => Ok(bytes),
        Ok(Err(_)) => Err(closing(error(StatusCode::PAYLOAD_TOO_LARGE, too_large()))),
        Err(_) => Err(closing(error(
            StatusCode::REQUEST_TIMEOUT,
            format!(
                "the request body did not arrive within {} ms (http.body_timeout)",
                timeout.as_millis()
            ),
        ))),
    }
}

/// Most bytes of a refused body read and thrown away so its sender sees the answer.
const DRAIN_MAX: usize = 16 * 1024 * 1024;
/// Longest a refused body is read and thrown away before the connection closes.
const DRAIN_FOR: Duration = Duration::from_secs(2);

/// Reads and discards the rest of a refused body in the background, for at most `timeout`
/// (and never longer than [`DRAIN_FOR`]) and [`DRAIN_MAX`] bytes, while the answer goes out. Closing a socket with unread data in it makes
/// the kernel reset the connection, and a client still sending its body would then see a reset
/// instead of the 413 (the lingering close of other HTTP servers).
fn drain(body: Body, timeout: Duration) {
    use futures_util::StreamExt;
    tokio::spawn(async move {
        let mut stream = body.into_data_stream();
        let mut left = DRAIN_MAX;
        let _ = tokio::time::timeout(timeout.min(DRAIN_FOR), async {
            while let Some(Ok(chunk)) = stream.next().await {
                left = left.saturating_sub(chunk.len());
                if left == 0 {
                    break;
                }
            }
        })
        .await;
    });
}

/// Marks a response as the connection's last.
fn closing(mut response: Response) -> Response {
    response.headers_mut().insert(
        header::CONNECTION,
        header::HeaderValue::from_static("close"),
    );
    response
}

/// One of the listener's `http.max_connections` slots, held while its connection is open. The
/// accept loop puts it in each request's extensions, so an upgraded WebSocket can keep it.
#[derive(Clone)]
pub struct ConnectionSlot {
    _permit: Arc<OwnedSemaphorePermit>,
}

/// The listener's limits on connections.
#[derive(Debug, Clone, Copy)]
pub struct ServeLimits {
    /// How long a connection may take to send a request's headers (and stay idle between
    /// requests).
    pub header_timeout: Duration,
    /// Connections open at once; more are answered 503 and closed.
    pub max_connections: usize,
}

/// What a connection beyond `http.max_connections` gets before it is closed.
const BUSY: &str =
    "{\"accepted\":false,\"error\":\"too many connections (http.max_connections); retry later\"}";

/// Serves `app` on `listener` until `stop` turns true, then lets open requests finish (each
/// connection is told to close after its current request) and returns once every connection
/// task has ended. Sets `TCP_NODELAY` on every accepted connection: a WebChat reply or a small
/// HTTP response must not wait for the peer's delayed ACK (Nagle; up to ~40 ms on Linux).
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: ServeLimits,
    mut stop: watch::Receiver<bool>,
) -> std::io::Result<()> {
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout);
    let mut connections = JoinSet::new();
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            Some(_) = connections.join_next(), if !connections.is_empty() => continue,
            _ = stop.wait_for(|s| *s) => break,
        };
        let (tcp, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                if !is_connection_error(&e) {
                    // Out of descriptors, most likely: pause instead of spinning.
                    tracing::error!(message = "Cannot accept an HTTP connection.", error = %e);
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_millis(100)) => {}
                        _ = stop.wait_for(|s| *s) => break,
                    }
                }
                continue;
            }
        };
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            tracing::warn!(message = "Too many HTTP connections; refusing one.", %peer, max_connections = limits.max_connections);
            tokio::spawn(refuse(tcp));
            continue;
        };
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(message = "Cannot set TCP_NODELAY.", error = %e);
        }
        let slot = ConnectionSlot {
            _permit: Arc::new(permit),
        };
        let app = app.clone();
        let builder = builder.clone();
        let mut stop = stop.clone();
        connections.spawn(async move {
            let service = hyper::service::service_fn(move |mut request: Request<hyper::body::Incoming>| {
                request.extensions_mut().insert(slot.clone());
                let mut app = app.clone();
                async move { tower_service::Service::call(&mut app, request.map(Body::new)).await }
            });
            let conn = builder
                .serve_connection(TokioIo::new(tcp), service)
                .with_upgrades();
            tokio::pin!(conn);
            let finished = tokio::select! {
                r = conn.as_mut() => Some(r),
                _ = stop.wait_for(|s| *s) => None,
            };
            let result = match finished {
                Some(r) => r,
                None => {
                    conn.as_mut().graceful_shutdown();
                    conn.await
                }
            };
            if let Err(e) = result {
                tracing::debug!(message = "HTTP connection ended with an error.", %peer, error = %e);
            }
        });
    }
    drop(listener);
    while connections.join_next().await.is_some() {}
    Ok(())
}

/// Errors of one connection that `accept` reports; the listener itself is fine.
fn is_connection_error(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::ConnectionRefused
            | std::io::ErrorKind::ConnectionAborted
            | std::io::ErrorKind::ConnectionReset
    )
}

/// Answers a connection beyond the limit with 503 and closes it, within a second.
async fn refuse(mut tcp: TcpStream) {
    let response = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\nconnection: close\r\ncontent-length: {}\r\n\r\n{BUSY}",
        BUSY.len()
    );
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        tcp.write_all(response.as_bytes()).await?;
        tcp.shutdown().await?;
        // Read what the client sent, so closing does not reset the connection before the
        // client has read the answer.
        let mut sink = [0u8; 1024];
        while tcp.read(&mut sink).await? > 0 {}
        Ok::<_, std::io::Error>(())
    })
    .await;
}
