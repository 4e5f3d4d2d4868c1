//! The request handler: token and method checks, recording, faults, and the methods
//! (`getMe`, `sendMessage`, `sendDocument`, `sendPhoto`, webhook methods, …) answered as the Bot
//! API does.

use std::sync::Arc;
use std::time::Instant;

use axum::body::Bytes;
use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value, json};

use super::json::{
    api_error, bot_user_json, document_json, me_json, message_base, ok, ok_described, photo_sizes,
    retry_after, unix_now, without_reply,
};
use super::request::{
    Params, param_bool, param_i64, param_str, parse_path, read_params, reply_target, utf16_len,
};
use super::updates::get_updates;
use super::{
    ApiCall, MAX_CAPTION_UTF16, MAX_TEXT_UTF16, METHODS, Recorded, SEND_METHODS, SentMessage,
    Shared, TgFault, WebhookCall, WebhookState,
};
use crate::support::{ConnHandle, lock};

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

pub(super) async fn handle(
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
            "getUpdates" => match get_updates(&shared, &params.fields, conn.peer()).await {
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
