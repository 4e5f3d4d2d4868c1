//! The REST API under `/api/v10`: `users/@me`, `gateway`, `POST channels/{id}/messages` (recorded,
//! validated, answered as Discord would), queued and sticky faults, and Discord's rate-limit
//! headers.

use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use axum::body::Bytes;
use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use super::feed::{enqueue, next_snowflake};
use super::json::{
    MessageParts, bot_author_json, bot_user_json, gateway_message, iso8601, message_core,
};
use super::{
    BOT_USER_ID, CONTENT_LIMIT, DcFault, PendingEvent, RATE_LIMIT, Recorded, RestCall, SentMessage,
    Shared, StoredMessage,
};
use crate::support::{ConnHandle, lock};

enum RestRoute {
    Gateway,
    GatewayBot,
    UsersMe,
    Messages(u64),
    Typing(u64),
    NotFound,
}

fn route(method: &Method, path: &str) -> RestRoute {
    let Some(api) = path.strip_prefix("/api/v10/") else {
        return RestRoute::NotFound;
    };
    let segments: Vec<&str> = api.split('/').collect();
    let snowflake = |s: &str| s.parse::<u64>().ok().filter(|n| *n != 0);
    match (method, segments.as_slice()) {
        (&Method::GET, ["gateway"]) => RestRoute::Gateway,
        (&Method::GET, ["gateway", "bot"]) => RestRoute::GatewayBot,
        (&Method::GET, ["users", "@me"]) => RestRoute::UsersMe,
        (&Method::POST, ["channels", id, "messages"]) => {
            snowflake(id).map_or(RestRoute::NotFound, RestRoute::Messages)
        }
        (&Method::POST, ["channels", id, "typing"]) => {
            snowflake(id).map_or(RestRoute::NotFound, RestRoute::Typing)
        }
        _ => RestRoute::NotFound,
    }
}

pub(super) async fn rest(
    State(shared): State<Arc<Shared>>,
    ConnectInfo(conn): ConnectInfo<ConnHandle>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let authorization = headers
        .get(header::AUTHORIZATION)
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
    let path = uri.path().to_owned();
    let index = {
        let mut st = lock(&shared.state);
        st.rest.push(RestCall {
            method: method.to_string(),
            path: path.clone(),
            authorization: authorization.clone(),
            status: 0,
            at: Instant::now(),
        });
        st.rest.len() - 1
    };
    shared.changed.notify_waiters();
    let (status, response) = handle_rest(
        &shared,
        &conn,
        &method,
        &path,
        authorization.as_deref(),
        &body,
    )
    .await;
    if let Some(status) = status {
        if let Some(call) = lock(&shared.state).rest.get_mut(index) {
            call.status = status;
        }
        shared.changed.notify_waiters();
    }
    response
}

/// Answers one REST request; the status is `None` when the connection was
/// dropped instead.
async fn handle_rest(
    shared: &Shared,
    conn: &ConnHandle,
    method: &Method,
    path: &str,
    authorization: Option<&str>,
    body: &[u8],
) -> (Option<u16>, Response) {
    let route = route(method, path);
    if matches!(route, RestRoute::NotFound) {
        return answer(discord_error(404, "404: Not Found", 0));
    }
    // `GET /gateway` needs no authentication on real Discord either.
    if !matches!(route, RestRoute::Gateway) {
        let st = lock(&shared.state);
        let ok = !st.reject_token && authorization == Some(format!("Bot {}", st.token).as_str());
        drop(st);
        if !ok {
            return answer(discord_error(401, "401: Unauthorized", 0));
        }
    }
    match route {
        RestRoute::Gateway => answer(ok_json(
            StatusCode::OK,
            &json!({"url": shared.ws_url()}),
            "gateway",
        )),
        RestRoute::GatewayBot => answer(ok_json(
            StatusCode::OK,
            &json!({
                "url": shared.ws_url(),
                "shards": 1,
                "session_start_limit": {
                    "total": 1000,
                    "remaining": 999,
                    "reset_after": 14_400_000,
                    "max_concurrency": 1,
                },
            }),
            "gateway/bot",
        )),
        RestRoute::UsersMe => answer(ok_json(StatusCode::OK, &bot_user_json(), "users/@me")),
        RestRoute::Typing(channel_id) => {
            let mut resp = StatusCode::NO_CONTENT.into_response();
            rate_limit_headers(resp.headers_mut(), &format!("typing/{channel_id}"));
            answer(resp)
        }
        RestRoute::Messages(channel_id) => post_message(shared, conn, channel_id, body).await,
        RestRoute::NotFound => answer(discord_error(404, "404: Not Found", 0)),
    }
}

fn answer(resp: Response) -> (Option<u16>, Response) {
    (Some(resp.status().as_u16()), resp)
}

fn snowflake_value(v: &Value) -> Option<u64> {
    match v {
        Value::String(s) => s.parse().ok(),
        Value::Number(n) => n.as_u64(),
        _ => None,
    }
}

async fn post_message(
    shared: &Shared,
    conn: &ConnHandle,
    channel_id: u64,
    body: &[u8],
) -> (Option<u16>, Response) {
    let parsed: Option<Value> = serde_json::from_slice(body).ok();
    let raw = parsed
        .clone()
        .unwrap_or_else(|| Value::String(String::from_utf8_lossy(body).into_owned()));
    let (index, fault) = {
        let mut st = lock(&shared.state);
        let fault = match &st.mode {
            Some(mode) => Some(mode.clone()),
            None => st.faults.pop_front(),
        };
        st.sent.push(SentMessage {
            channel_id,
            content: raw
                .get("content")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned(),
            reference_message_id: raw
                .get("message_reference")
                .and_then(|r| r.get("message_id"))
                .and_then(snowflake_value),
            status_returned: 0,
            at: Instant::now(),
            message_id: None,
            raw,
        });
        (st.sent.len() - 1, fault)
    };
    shared.changed.notify_waiters();

    let response = match fault {
        Some(DcFault::Status(code)) => Err(status_error(code)),
        Some(DcFault::RateLimited {
            retry_after,
            global,
        }) => Err(rate_limited(
            retry_after,
            global,
            &format!("messages/{channel_id}"),
        )),
        Some(DcFault::Unauthorized) => Err(discord_error(401, "401: Unauthorized", 0)),
        Some(DcFault::Drop) => {
            conn.kill();
            return (None, StatusCode::SERVICE_UNAVAILABLE.into_response());
        }
        Some(DcFault::Delay(d)) => {
            tokio::time::sleep(d).await;
            Ok(())
        }
        None => Ok(()),
    };
    let response = match (response, parsed) {
        (Err(resp), _) => resp,
        (Ok(()), None) => discord_error(400, "The request body contains invalid JSON.", 50109),
        (Ok(()), Some(body)) => {
            let mut st = lock(&shared.state);
            match create_message(&mut st, channel_id, &body) {
                Ok((message, id)) => {
                    if let Some(sent) = st.sent.get_mut(index) {
                        sent.message_id = Some(id);
                    }
                    ok_json(StatusCode::OK, &message, &format!("messages/{channel_id}"))
                }
                Err(resp) => *resp,
            }
        }
    };
    let status = response.status().as_u16();
    if let Some(sent) = lock(&shared.state).sent.get_mut(index) {
        sent.status_returned = status;
    }
    shared.wake();
    (Some(status), response)
}

/// Validates and stores a message the bot posts; returns the REST message
/// object and its id (and echoes it as a dispatch if enabled).
fn create_message(
    st: &mut Recorded,
    channel_id: u64,
    body: &Value,
) -> Result<(Value, u64), Box<Response>> {
    let content = body
        .get("content")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let non_empty = |k: &str| {
        body.get(k)
            .and_then(Value::as_array)
            .is_some_and(|a| !a.is_empty())
    };
    if content.is_empty()
        && !non_empty("embeds")
        && !non_empty("sticker_ids")
        && !non_empty("attachments")
        && body.get("poll").is_none_or(Value::is_null)
    {
        return Err(Box::new(discord_error(
            400,
            "Cannot send an empty message",
            50006,
        )));
    }
    if content.chars().count() > CONTENT_LIMIT {
        return Err(Box::new(form_error(
            "content",
            "BASE_TYPE_MAX_LENGTH",
            "Must be 2000 or fewer in length.",
        )));
    }
    let reference = body.get("message_reference").filter(|r| !r.is_null());
    let mut reply_to = reference
        .and_then(|r| r.get("message_id"))
        .and_then(snowflake_value);
    if let Some(r) = reply_to
        && st.strict_references
        && !st.messages.contains_key(&r)
    {
        let fail = reference
            .and_then(|r| r.get("fail_if_not_exists"))
            .and_then(Value::as_bool)
            .unwrap_or(true);
        if fail {
            return Err(Box::new(form_error(
                "message_reference",
                "REPLIES_UNKNOWN_MESSAGE",
                "Unknown message",
            )));
        }
        reply_to = None;
    }
    let referenced = reply_to.and_then(|r| st.messages.get(&r));
    // A reply pings the replied-to author unless allowed_mentions says not to.
    let ping = match body.get("allowed_mentions").filter(|a| !a.is_null()) {
        None => true,
        Some(a) => a.get("replied_user").and_then(Value::as_bool) == Some(true),
    };
    let mut mentions = Vec::new();
    if let Some(r) = referenced
        && ping
        && r.author_id != BOT_USER_ID
    {
        mentions.push(r.author.clone());
    }
    let referenced = referenced.map(|r| r.core.clone());
    let guild_id = st.channel_guilds.get(&channel_id).copied().flatten();
    let id = next_snowflake(st);
    let timestamp = iso8601(SystemTime::now());
    let core = message_core(&MessageParts {
        id,
        channel_id,
        guild_id,
        author: bot_author_json(),
        content: content.to_owned(),
        timestamp: timestamp.clone(),
        mentions: &mentions,
        attachments: Vec::new(),
        reply_to,
    });
    let mut rest_message = core.clone();
    if let (Some(_), Some(obj)) = (reply_to, rest_message.as_object_mut()) {
        obj.insert(
            "referenced_message".into(),
            referenced.clone().unwrap_or(Value::Null),
        );
    }
    if st.echo_sent {
        let d = gateway_message(
            &core,
            guild_id,
            &mentions,
            &timestamp,
            reply_to.map(|_| referenced),
        );
        enqueue(
            st,
            PendingEvent {
                t: "MESSAGE_CREATE",
                d,
                message_id: Some(id),
                guild: guild_id.is_some(),
                content_exempt: true,
            },
        );
    }
    st.messages.insert(
        id,
        StoredMessage {
            core,
            author_id: BOT_USER_ID,
            author: bot_author_json(),
        },
    );
    Ok((rest_message, id))
}

/// A 400 "Invalid Form Body" (code 50035) naming one field.
fn form_error(field: &str, code: &str, message: &str) -> Response {
    let body = json!({
        "message": "Invalid Form Body",
        "code": 50035,
        "errors": {field: {"_errors": [{"code": code, "message": message}]}},
    });
    (StatusCode::BAD_REQUEST, axum::Json(body)).into_response()
}

fn discord_error(status: u16, message: &str, code: u64) -> Response {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let body = json!({"message": message, "code": code});
    (status, axum::Json(body)).into_response()
}

/// The error body real Discord sends for `status`.
fn status_error(status: u16) -> Response {
    let code = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    match code.as_u16() {
        403 => discord_error(403, "Missing Permissions", 50013),
        404 => discord_error(404, "Unknown Channel", 10003),
        429 => discord_error(429, "You are being rate limited.", 0),
        n => {
            let reason = code.canonical_reason().unwrap_or("Error");
            discord_error(n, &format!("{n}: {reason}"), 0)
        }
    }
}

fn ok_json(status: StatusCode, body: &Value, bucket_key: &str) -> Response {
    let mut resp = (status, axum::Json(body)).into_response();
    rate_limit_headers(resp.headers_mut(), bucket_key);
    resp
}

fn insert_header(headers: &mut HeaderMap, name: &'static str, value: &str) {
    if let Ok(v) = HeaderValue::from_str(value) {
        headers.insert(HeaderName::from_static(name), v);
    }
}

fn epoch_secs() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// A stable, Discord-looking bucket hash for a route.
fn bucket_hash(key: &str) -> String {
    // FNV-1a, twice with different seeds for 32 hex digits.
    let fnv = |seed: u64| {
        key.bytes().fold(seed, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
        })
    };
    format!(
        "{:016x}{:016x}",
        fnv(0xcbf2_9ce4_8422_2325),
        fnv(0x8422_2325_cbf2_9ce4)
    )
}

/// Per-route headers of a successful response: a limit so generous that
/// `remaining` never reaches 0 (serenity's rate limiter, if used, only
/// sleeps at 0). serenity parses limit/remaining as i64 and
/// reset/reset-after as f64; an unparsable value fails the request.
fn rate_limit_headers(headers: &mut HeaderMap, bucket_key: &str) {
    insert_header(headers, "x-ratelimit-limit", &RATE_LIMIT.to_string());
    insert_header(
        headers,
        "x-ratelimit-remaining",
        &(RATE_LIMIT - 1).to_string(),
    );
    insert_header(
        headers,
        "x-ratelimit-reset",
        &format!("{:.3}", epoch_secs() + 1.0),
    );
    insert_header(headers, "x-ratelimit-reset-after", "1.000");
    insert_header(headers, "x-ratelimit-bucket", &bucket_hash(bucket_key));
}

/// A 429 as real Discord sends it.
fn rate_limited(retry_after: f64, global: bool, bucket_key: &str) -> Response {
    let body = json!({
        "message": "You are being rate limited.",
        "retry_after": retry_after,
        "global": global,
    });
    let mut resp = (StatusCode::TOO_MANY_REQUESTS, axum::Json(body)).into_response();
    let headers = resp.headers_mut();
    // Whole seconds, rounded up, like Discord's header.
    let whole = format!("{:.0}", retry_after.max(0.0).ceil());
    insert_header(headers, "retry-after", &whole);
    if global {
        insert_header(headers, "x-ratelimit-global", "true");
        insert_header(headers, "x-ratelimit-scope", "global");
    } else {
        insert_header(headers, "x-ratelimit-limit", "5");
        insert_header(headers, "x-ratelimit-remaining", "0");
        insert_header(
            headers,
            "x-ratelimit-reset",
            &format!("{:.3}", epoch_secs() + retry_after),
        );
        insert_header(
            headers,
            "x-ratelimit-reset-after",
            &format!("{retry_after:.3}"),
        );
        insert_header(headers, "x-ratelimit-bucket", &bucket_hash(bucket_key));
        insert_header(headers, "x-ratelimit-scope", "user");
    }
    resp
}
