//! The sending half: `chat.postMessage` (Bearer bot token, JSON body, the chunk's id in the
//! message `metadata`), `auth.test` for the probe and the bot's identity, and the error table
//! ([`classify_code`]).
//!
//! Status first: 429 is retryable after exactly its `Retry-After`; other non-2xx statuses are
//! classed by `send::classify_status`; then the body's `ok:false` code by [`classify_code`]; an
//! unreadable body is retryable.
//!
//! **A post whose response was lost is never blindly posted again.** When a post fails after the
//! request may have reached Slack (a timeout, a connection closed before the answer, an
//! unreadable answer), the chunk id is remembered as *uncertain*, with when it was posted. Before
//! the next post of an uncertain chunk, and of any chunk of a reply with earlier attempts that
//! this process has not seen fail definitively (a restart forgets the uncertain set), the sender
//! reads the conversation (`conversations.history`, or `conversations.replies` for a thread) from
//! a little before the first post, with `include_all_metadata`, and looks for a message whose
//! `metadata.event_payload.id` is the chunk id: found, the chunk counts as sent and nothing is
//! posted; not found, it is posted; the check failing is retryable and posts nothing.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use reqwest::header::{AUTHORIZATION, CONTENT_TYPE, RETRY_AFTER};
use serde_json::{Value, json};

use super::normalize::reply_thread;
use super::{BotIdentity, KIND, LIMIT};
use crate::channels::{
    ChannelSender, OutgoingChunk, SendError, classify_status, parse_retry_after,
};
use crate::message::ChannelKind;
use crate::send::{Limit, Sent};

/// How far before the first post the duplicate check reads.
pub const CHECK_MARGIN: Duration = Duration::from_secs(60);
/// How far back the check reads for a chunk with earlier attempts in another process.
pub const CHECK_WINDOW: Duration = Duration::from_secs(24 * 3600);
/// Pages of history the check reads at most.
const CHECK_PAGES: usize = 5;
/// Chunk ids remembered in each set at most.
const REMEMBERED: usize = 10_000;

/// Classifies a Web API `ok:false` error code.
pub fn classify_code(code: &str) -> SendError {
    let message = format!("Slack refused the request: {code}");
    match code {
        "invalid_auth" | "not_authed" | "token_revoked" | "account_inactive" | "token_expired" => {
            SendError::Auth(message)
        }
        "ratelimited"
        | "rate_limited"
        | "request_timeout"
        | "fatal_error"
        | "internal_error"
        | "service_unavailable" => SendError::retryable(message),
        // channel_not_found, not_in_channel, is_archived, msg_too_long, invalid_arguments,
        // no_text, missing_scope, …
        _ => SendError::Permanent(message),
    }
}

/// What one Web API call came to.
enum Answer {
    /// `ok:true`, with the body.
    Ok(Value),
    /// A definite refusal: Slack answered and said no.
    Refused(SendError),
    /// The request may have reached Slack, but its answer was lost.
    Lost(String),
}

/// The sending half.
pub struct SlackSender {
    client: reqwest::Client,
    api: String,
    authorization: String,
    /// Chunk ids whose post may have reached Slack, with when they were first posted.
    uncertain: Mutex<HashMap<String, SystemTime>>,
    /// Chunk ids this process saw refused definitively (so not posted).
    refused: Mutex<HashMap<String, SystemTime>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

fn remember(map: &Mutex<HashMap<String, SystemTime>>, id: String, at: SystemTime) {
    let mut map = lock(map);
    if map.len() >= REMEMBERED {
        let horizon = before(SystemTime::now(), CHECK_WINDOW);
        map.retain(|_, t| *t > horizon);
        if map.len() >= REMEMBERED {
            // Forgetting only costs a check (a chunk with attempts is checked anyway).
            map.clear();
        }
    }
    map.entry(id).or_insert(at);
}

fn before(t: SystemTime, d: Duration) -> SystemTime {
    t.checked_sub(d).unwrap_or(UNIX_EPOCH)
}

fn slack_ts(t: SystemTime) -> String {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    format!("{}.{:06}", d.as_secs(), d.subsec_micros())
}

impl SlackSender {
    /// A sender for the bot `token` against `api_url`, each request within `timeout`.
    pub fn new(token: &str, api_url: &str, timeout: Duration) -> Result<Self, String> {
        let client = reqwest::Client::builder()
            .timeout(timeout)
            .build()
            .map_err(|e| format!("cannot build the Slack HTTP client: {e}"))?;
        Ok(Self {
            client,
            api: api_url.trim_end_matches('/').to_owned(),
            authorization: format!("Bearer {token}"),
            uncertain: Mutex::default(),
            refused: Mutex::default(),
        })
    }

    /// Calls `method` with `authorization`: a JSON body, or a GET with `query`.
    async fn call(
        &self,
        method: &str,
        authorization: &str,
        body: Option<&Value>,
        query: &[(&str, String)],
    ) -> Answer {
        let url = format!("{}/{method}", self.api);
        let request = match body {
            Some(body) => self
                .client
                .post(url)
                .header(CONTENT_TYPE, "application/json; charset=utf-8")
                .body(body.to_string()),
            None => self.client.get(url).query(query),
        };
        let resp = match request.header(AUTHORIZATION, authorization).send().await {
            Ok(r) => r,
            Err(e) if e.is_connect() || e.is_builder() => {
                return Answer::Refused(SendError::retryable(format!(
                    "Slack unreachable ({method}): {}",
                    e.without_url()
                )));
            }
            Err(e) => return Answer::Lost(format!("{method}: {}", e.without_url())),
        };
        let status = resp.status().as_u16();
        if status == 429 {
            let retry_after = resp
                .headers()
                .get(RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(parse_retry_after);
            return Answer::Refused(SendError::Retryable {
                message: format!("HTTP 429: Slack rate-limits {method}"),
                retry_after,
                global: false,
            });
        }
        if !resp.status().is_success() {
            return Answer::Refused(classify_status(status, None, method));
        }
        let bytes = match resp.bytes().await {
            Ok(b) => b,
            Err(e) => return Answer::Lost(format!("{method}: {}", e.without_url())),
        };
        let Ok(body) = serde_json::from_slice::<Value>(&bytes) else {
            return Answer::Lost(format!("{method}: the answer is not JSON"));
        };
        match body.get("ok").and_then(Value::as_bool) {
            Some(true) => Answer::Ok(body),
            Some(false) => {
                let code = body
                    .get("error")
                    .and_then(Value::as_str)
                    .unwrap_or("unknown_error");
                Answer::Refused(classify_code(code))
            }
            None => Answer::Lost(format!("{method}: the answer has no `ok`")),
        }
    }

    /// `auth.test` with the bot token: the bot's identity.
    pub async fn auth_test(&self) -> Result<BotIdentity, SendError> {
        match self
            .call("auth.test", &self.authorization, Some(&json!({})), &[])
            .await
        {
            Answer::Ok(body) => {
                let user_id = body
                    .get("user_id")
                    .and_then(Value::as_str)
                    .filter(|s| !s.is_empty())
                    .ok_or_else(|| SendError::retryable("auth.test answered without user_id"))?;
                Ok(BotIdentity {
                    user_id: user_id.to_owned(),
                    bot_id: body
                        .get("bot_id")
                        .and_then(Value::as_str)
                        .map(str::to_owned),
                })
            }
            Answer::Refused(e) => Err(e),
            Answer::Lost(e) => Err(SendError::retryable(format!("Slack unreachable: {e}"))),
        }
    }

    /// Calls `method` with the app-level token `authorization` (Socket Mode).
    pub(crate) async fn call_app(
        &self,
        method: &str,
        authorization: &str,
    ) -> Result<Value, SendError> {
        match self
            .call(method, authorization, Some(&json!({})), &[])
            .await
        {
            Answer::Ok(body) => Ok(body),
            Answer::Refused(e) => Err(e),
            Answer::Lost(e) => Err(SendError::retryable(format!("Slack unreachable: {e}"))),
        }
    }

    /// Looks in the conversation for a message carrying `id` posted since `since`; its `ts` if
    /// found.
    async fn find_posted(
        &self,
        channel: &str,
        thread: Option<&str>,
        id: &str,
        since: SystemTime,
    ) -> Result<Option<String>, SendError> {
        let mut query = vec![
            ("channel", channel.to_owned()),
            ("oldest", slack_ts(since)),
            ("inclusive", "true".to_owned()),
            ("include_all_metadata", "true".to_owned()),
            ("limit", "200".to_owned()),
        ];
        let method = match thread {
            Some(t) => {
                query.push(("ts", t.to_owned()));
                "conversations.replies"
            }
            None => "conversations.history",
        };
        for _ in 0..CHECK_PAGES {
            let body = match self.call(method, &self.authorization, None, &query).await {
                Answer::Ok(body) => body,
                Answer::Refused(e) => {
                    return Err(SendError::retryable(format!(
                        "cannot check whether an earlier post arrived ({method}): {e}; nothing was posted"
                    )));
                }
                Answer::Lost(e) => {
                    return Err(SendError::retryable(format!(
                        "cannot check whether an earlier post arrived ({e}); nothing was posted"
                    )));
                }
            };
            let messages = body.get("messages").and_then(Value::as_array);
            let found = messages.into_iter().flatten().find(|m| {
                m.pointer("/metadata/event_payload/id")
                    .and_then(Value::as_str)
                    == Some(id)
            });
            if let Some(m) = found {
                return Ok(Some(
                    m.get("ts")
                        .and_then(Value::as_str)
                        .unwrap_or_default()
                        .to_owned(),
                ));
            }
            let cursor = body
                .pointer("/response_metadata/next_cursor")
                .and_then(Value::as_str)
                .filter(|c| !c.is_empty());
            match cursor {
                Some(c) => {
                    query.retain(|(k, _)| *k != "cursor");
                    query.push(("cursor", c.to_owned()));
                }
                None => return Ok(None),
            }
        }
        Ok(None)
    }

    /// Sends one chunk, unless an earlier post of it already arrived; the message's `ts`.
    async fn deliver(&self, chunk: &OutgoingChunk<'_>) -> Result<Option<String>, SendError> {
        let msg = chunk.message;
        let id = chunk.id();
        if msg.chat_id.is_empty() || msg.chat_id.contains(':') {
            return Err(SendError::Permanent(format!(
                "`{}` is not a Slack channel id",
                msg.chat_id
            )));
        }
        let thread = reply_thread(msg.reply_to.as_deref());
        let uncertain = lock(&self.uncertain).get(&id).copied();
        let since = match uncertain {
            Some(at) => Some(before(at, CHECK_MARGIN)),
            None if msg.attempts > 0 && !lock(&self.refused).contains_key(&id) => {
                Some(before(SystemTime::now(), CHECK_WINDOW))
            }
            None => None,
        };
        if let Some(since) = since
            && let Some(ts) = self.find_posted(&msg.chat_id, thread, &id, since).await?
        {
            tracing::info!(message = "An earlier Slack post of this chunk arrived; not posted again.", channel = %KIND, chunk = %id);
            lock(&self.uncertain).remove(&id);
            return Ok(Some(ts));
        }
        let mut body = json!({
            "channel": msg.chat_id,
            "text": chunk.text,
            "metadata": {"event_type": "gateway_reply", "event_payload": {"id": id}},
        });
        if let Some(t) = thread {
            body["thread_ts"] = json!(t);
        }
        let posted_at = SystemTime::now();
        match self
            .call("chat.postMessage", &self.authorization, Some(&body), &[])
            .await
        {
            Answer::Ok(body) => {
                lock(&self.uncertain).remove(&id);
                lock(&self.refused).remove(&id);
                Ok(body.get("ts").and_then(Value::as_str).map(str::to_owned))
            }
            Answer::Refused(e) => {
                if uncertain.is_none() {
                    remember(&self.refused, id, posted_at);
                }
                Err(e)
            }
            Answer::Lost(e) => {
                lock(&self.refused).remove(&id);
                remember(&self.uncertain, id, posted_at);
                Err(SendError::retryable(format!(
                    "the response of chat.postMessage was lost ({e}); the next attempt checks the conversation before posting again"
                )))
            }
        }
    }
}

#[async_trait]
impl ChannelSender for SlackSender {
    fn kind(&self) -> ChannelKind {
        KIND
    }

    fn split_limit(&self) -> Option<Limit> {
        Some(LIMIT)
    }

    async fn send(&self, chunk: &OutgoingChunk<'_>) -> Result<Sent, SendError> {
        // The one success path. Slack sends no receipts, so its `ts` is not recorded.
        self.deliver(chunk).await.map(|_ts| Sent::default())
    }

    async fn probe(&self) -> Result<(), SendError> {
        self.auth_test().await.map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::send::ErrorClass;

    #[test]
    fn error_codes_fall_into_their_classes() {
        for (code, class) in [
            ("invalid_auth", ErrorClass::Auth),
            ("not_authed", ErrorClass::Auth),
            ("token_revoked", ErrorClass::Auth),
            ("account_inactive", ErrorClass::Auth),
            ("channel_not_found", ErrorClass::Permanent),
            ("not_in_channel", ErrorClass::Permanent),
            ("is_archived", ErrorClass::Permanent),
            ("msg_too_long", ErrorClass::Permanent),
            ("invalid_arguments", ErrorClass::Permanent),
            ("no_text", ErrorClass::Permanent),
            ("missing_scope", ErrorClass::Permanent),
            ("ratelimited", ErrorClass::Retryable),
            ("rate_limited", ErrorClass::Retryable),
            ("request_timeout", ErrorClass::Retryable),
            ("fatal_error", ErrorClass::Retryable),
            ("internal_error", ErrorClass::Retryable),
            ("service_unavailable", ErrorClass::Retryable),
        ] {
            let e = classify_code(code);
            assert_eq!(e.class(), class, "{code}");
            assert!(e.to_string().contains(code), "{e}");
        }
    }

    #[test]
    fn slack_timestamps_have_microseconds() {
        let t = UNIX_EPOCH + Duration::from_micros(1_700_000_000_000_123);
        assert_eq!(slack_ts(t), "1700000000.000123");
    }
}
