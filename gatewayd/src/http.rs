//! The HTTP listener (axum): the WebChat page and socket, the HTTP channel's webhook,
//! `/healthz`, `/readyz` and `/metrics`.
//!
//! Handlers parse every body themselves, with their own size limits, so malformed, oversized
//! or non-UTF-8 input gets a JSON error naming what is wrong and never a panic.
//!
//! `/healthz` answers 200 `ok` whenever this listener serves: the process is alive. `/readyz`
//! answers 200 `ready` only when the gateway can take traffic: started and not stopping, the
//! store readable, and no part that cannot be restarted failed; otherwise 503 with a text body
//! that says why, naming each failed part.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::body::Body;
use axum::extract::{DefaultBodyLimit, Query, State, WebSocketUpgrade};
use axum::http::{StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::json;

use crate::channels::{http as http_channel, webchat};
use crate::inbox::Inbox;
use crate::session::router::Router as SessionRouter;
use crate::store::SharedStore;

const PAGE: &str = include_str!("../assets/webchat.html");

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
        router = router.route(&hook.path, post(telegram_update));
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
        .on_upgrade(move |socket| webchat.serve(inbox, chat_id, socket))
}

async fn http_message(State(state): State<AppState>, body: Body) -> Response {
    let Some(max_text) = state.http_channel_max_bytes else {
        return error(
            StatusCode::NOT_FOUND,
            "the HTTP channel is disabled; set channels.http.enabled = true".to_owned(),
        );
    };
    // JSON escapes can make a text up to six times longer on the wire.
    let limit = max_text.saturating_mul(6).saturating_add(16 * 1024);
    let bytes = match axum::body::to_bytes(body, limit).await {
        Ok(b) => b,
        Err(_) => {
            return error(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!(
                    "body is larger than {limit} bytes; texts are limited to {max_text} bytes (channels.http.max_message_bytes)"
                ),
            );
        }
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
    headers: axum::http::HeaderMap,
    body: axum::body::Bytes,
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
