//! The JSON shapes of the fake: users, the bot, messages, photo sizes and documents, and the
//! `{"ok":..}` envelopes of answers and errors.

use std::time::{SystemTime, UNIX_EPOCH};

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value, json};

use super::{BOT_FIRST_NAME, BOT_ID, BOT_USERNAME};

/// The Bot API `User` object of a (human) user: `first_name` `User{id}`,
/// `username` `user{id}`.
pub fn user_json(user_id: i64) -> Value {
    json!({
        "id": user_id,
        "is_bot": false,
        "first_name": format!("User{user_id}"),
        "username": format!("user{user_id}"),
        "language_code": "en",
    })
}

/// The Bot API `User` object of the fake bot.
pub fn bot_user_json() -> Value {
    json!({
        "id": BOT_ID,
        "is_bot": true,
        "first_name": BOT_FIRST_NAME,
        "username": BOT_USERNAME,
    })
}

/// The `getMe` result (a `User` with the bot-only fields teloxide's `Me` requires).
pub fn me_json() -> Value {
    let mut me = bot_user_json();
    if let Value::Object(m) = &mut me {
        m.insert("can_join_groups".into(), json!(true));
        m.insert("can_read_all_group_messages".into(), json!(false));
        m.insert("supports_inline_queries".into(), json!(false));
        m.insert("can_connect_to_business".into(), json!(false));
        m.insert("has_main_web_app".into(), json!(false));
    }
    me
}

pub(super) fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

pub(super) fn message_base(
    chat: &Value,
    from: &Value,
    message_id: i64,
    date: i64,
) -> Map<String, Value> {
    let mut m = Map::new();
    m.insert("message_id".into(), json!(message_id));
    m.insert("from".into(), from.clone());
    m.insert("chat".into(), chat.clone());
    m.insert("date".into(), json!(date));
    m
}

/// A message as embedded in `reply_to_message` (which never nests further).
pub(super) fn without_reply(msg: &Value) -> Value {
    let mut m = msg.clone();
    if let Value::Object(o) = &mut m {
        o.remove("reply_to_message");
    }
    m
}

pub(super) fn photo_sizes(file_id: &str, size: usize) -> Value {
    json!([
        {"file_id": format!("{file_id}_s"), "file_unique_id": format!("u_{file_id}_s"),
         "width": 90, "height": 90, "file_size": 1024},
        {"file_id": file_id, "file_unique_id": format!("u_{file_id}"),
         "width": 800, "height": 600, "file_size": size},
    ])
}

pub(super) fn document_json(
    file_id: &str,
    file_name: Option<&str>,
    mime_type: Option<&str>,
    size: usize,
) -> Value {
    let mut d = json!({
        "file_id": file_id,
        "file_unique_id": format!("u_{file_id}"),
        "file_size": size,
    });
    if let Value::Object(m) = &mut d {
        if let Some(name) = file_name.filter(|n| !n.is_empty()) {
            m.insert("file_name".into(), json!(name));
            let mime = mime_type
                .map(str::to_owned)
                .unwrap_or_else(|| guess_mime(name));
            m.insert("mime_type".into(), json!(mime));
        } else if let Some(mime) = mime_type {
            m.insert("mime_type".into(), json!(mime));
        }
    }
    d
}

fn guess_mime(file_name: &str) -> String {
    let ext = file_name
        .rsplit_once('.')
        .map(|(_, e)| e.to_ascii_lowercase())
        .unwrap_or_default();
    match ext.as_str() {
        "txt" | "log" => "text/plain",
        "md" => "text/markdown",
        "json" => "application/json",
        "pdf" => "application/pdf",
        "png" => "image/png",
        "jpg" | "jpeg" => "image/jpeg",
        _ => "application/octet-stream",
    }
    .to_owned()
}
fn reply_json(status: u16, body: Value) -> (u16, Response) {
    let code = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    (code.as_u16(), (code, axum::Json(body)).into_response())
}

pub(super) fn ok(result: Value) -> (u16, Response) {
    reply_json(200, json!({"ok": true, "result": result}))
}

pub(super) fn ok_described(result: Value, description: &str) -> (u16, Response) {
    reply_json(
        200,
        json!({"ok": true, "result": result, "description": description}),
    )
}

pub(super) fn api_error(code: u16, description: &str) -> (u16, Response) {
    reply_json(
        code,
        json!({"ok": false, "error_code": code, "description": description}),
    )
}

pub(super) fn retry_after(secs: u64) -> (u16, Response) {
    reply_json(
        429,
        json!({
            "ok": false,
            "error_code": 429,
            "description": format!("Too Many Requests: retry after {secs}"),
            "parameters": {"retry_after": secs},
        }),
    )
}
