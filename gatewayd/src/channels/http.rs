//! The generic HTTP channel, for integrations: messages come in as JSON on
//! `POST /channels/http/messages`, replies go out as JSON POSTs to `channels.http.callback_url`.
//!
//! Inbound body: `{"message_id","chat_id","sender_id","text","chat_type":"direct"|"group"}`
//! (`chat_type` defaults to `direct`). The handler answers 202 `{"accepted":true,"duplicate":b}`
//! only after the inbox commit; anything malformed gets 400 with a message naming the field.
//! Outbound body: `{"message_id","chat_id","text","reply_to"}`; any 2xx means delivered.

use std::time::Duration;

use async_trait::async_trait;
use serde_json::Value;

use super::{ChannelSender, OutgoingChunk, SendError, classify_status, parse_retry_after};
use crate::delivery::split::{Limit, Unit};
use crate::message::{ChannelKind, ChatType, InboundMessage, now_ms};

/// Longest accepted id (message, chat or sender), in bytes.
pub const MAX_ID_BYTES: usize = 256;

/// Parses and checks an inbound body; the error names the offending field.
pub fn parse_inbound(body: &[u8], max_text_bytes: usize) -> Result<InboundMessage, String> {
    let text = std::str::from_utf8(body).map_err(|e| format!("body is not valid UTF-8: {e}"))?;
    let value: Value =
        serde_json::from_str(text).map_err(|e| format!("body is not valid JSON: {e}"))?;
    let obj = value
        .as_object()
        .ok_or("body must be a JSON object with message_id, chat_id, sender_id and text")?;
    let id_field = |name: &str| -> Result<String, String> {
        match obj.get(name) {
            None | Some(Value::Null) => Err(format!("field `{name}` is required")),
            Some(Value::String(s)) if s.trim().is_empty() => {
                Err(format!("field `{name}` must not be empty"))
            }
            Some(Value::String(s)) if s.len() > MAX_ID_BYTES => Err(format!(
                "field `{name}` is longer than {MAX_ID_BYTES} bytes"
            )),
            Some(Value::String(s)) if s.chars().any(char::is_control) => Err(format!(
                "field `{name}` must not contain control characters"
            )),
            Some(Value::String(s)) => Ok(s.clone()),
            Some(Value::Number(n)) => Ok(n.to_string()),
            Some(other) => Err(format!(
                "field `{name}` must be a string, not {}",
                json_type(other)
            )),
        }
    };
    let message_id = id_field("message_id")?;
    let chat_id = id_field("chat_id")?;
    let sender_id = id_field("sender_id")?;
    let text = match obj.get("text") {
        None | Some(Value::Null) => return Err("field `text` is required".to_owned()),
        Some(Value::String(s)) => s.clone(),
        Some(other) => {
            return Err(format!(
                "field `text` must be a string, not {}",
                json_type(other)
            ));
        }
    };
    if text.trim().is_empty() {
        return Err("field `text` must not be empty".to_owned());
    }
    if text.len() > max_text_bytes {
        return Err(format!(
            "field `text` is {} bytes, over the limit of {max_text_bytes} (channels.http.max_message_bytes)",
            text.len()
        ));
    }
    let chat_type = match obj.get("chat_type") {
        None | Some(Value::Null) => ChatType::Direct,
        Some(Value::String(s)) => s.parse().map_err(|_| {
            format!("field `chat_type` must be \"direct\" or \"group\", not \"{s}\"")
        })?,
        Some(other) => {
            return Err(format!(
                "field `chat_type` must be \"direct\" or \"group\", not {}",
                json_type(other)
            ));
        }
    };
    Ok(InboundMessage {
        channel: ChannelKind::Http,
        channel_message_id: message_id,
        chat_id,
        chat_type,
        sender_id,
        text,
        reply_to: None,
        attachments: Vec::new(),
        received_at_ms: now_ms(),
    })
}

fn json_type(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// Sends replies to the callback URL.
pub struct HttpSender {
    client: reqwest::Client,
    callback_url: String,
    max_reply_chars: Option<usize>,
}

impl HttpSender {
    /// A sender posting to `callback_url` with a per-request `timeout`, splitting replies longer
    /// than `max_reply_chars` characters.
    pub fn new(
        callback_url: String,
        timeout: Duration,
        max_reply_chars: Option<usize>,
    ) -> Result<Self, String> {
        let client = reqwest::Client::builder()
            .timeout(timeout)
            .build()
            .map_err(|e| format!("cannot build the HTTP client: {e}"))?;
        Ok(Self {
            client,
            callback_url,
            max_reply_chars,
        })
    }
}

fn transport_error(e: reqwest::Error) -> SendError {
    let what = if e.is_timeout() {
        "callback timed out"
    } else {
        "callback unreachable"
    };
    SendError::retryable(format!("{what}: {}", e.without_url()))
}

#[async_trait]
impl ChannelSender for HttpSender {
    fn kind(&self) -> ChannelKind {
        ChannelKind::Http
    }

    fn split_limit(&self) -> Option<Limit> {
        self.max_reply_chars.map(|max| Limit {
            max,
            unit: Unit::Chars,
        })
    }

    async fn send(&self, chunk: &OutgoingChunk<'_>) -> Result<(), SendError> {
        let msg = chunk.message;
        let mut body = serde_json::json!({
            "message_id": chunk.id(),
            "chat_id": msg.chat_id,
            "text": chunk.text,
            "reply_to": msg.reply_to,
        });
        if chunk.count > 1 {
            body["part"] = serde_json::json!({"index": chunk.index + 1, "count": chunk.count});
        }
        let resp = self
            .client
            .post(&self.callback_url)
            .json(&body)
            .send()
            .await
            .map_err(transport_error)?;
        let status = resp.status();
        if status.is_success() {
            return Ok(());
        }
        let retry_after = resp
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(parse_retry_after);
        let detail: String = resp
            .text()
            .await
            .unwrap_or_default()
            .chars()
            .take(200)
            .collect();
        Err(classify_status(status.as_u16(), retry_after, &detail))
    }

    /// A `HEAD` of the callback URL: any answer below 500 other than 401/403 means reachable.
    async fn probe(&self) -> Result<(), SendError> {
        let resp = self
            .client
            .head(&self.callback_url)
            .send()
            .await
            .map_err(transport_error)?;
        match resp.status().as_u16() {
            s @ (401 | 403) => Err(classify_status(s, None, "probe refused")),
            s if s >= 500 => Err(classify_status(s, None, "probe failed")),
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(body: &str, expected: Result<(&str, ChatType), &str>) {
        let got = parse_inbound(body.as_bytes(), 16);
        match (got, expected) {
            (Ok(m), Ok((text, chat_type))) => {
                assert_eq!((m.text.as_str(), m.chat_type), (text, chat_type), "{body}");
            }
            (Err(e), Err(needle)) => assert!(e.contains(needle), "{body}: `{e}` lacks `{needle}`"),
            (got, expected) => panic!("{body}: got {got:?}, expected {expected:?}"),
        }
    }

    #[test]
    fn inbound_bodies() {
        let ok = r#"{"message_id":"1","chat_id":"c","sender_id":"s","text":"hi"}"#;
        check(ok, Ok(("hi", ChatType::Direct)));
        check(
            r#"{"message_id":2,"chat_id":"c","sender_id":"s","text":"hi","chat_type":"group"}"#,
            Ok(("hi", ChatType::Group)),
        );
        check("", Err("not valid JSON"));
        check("[1,2]", Err("JSON object"));
        check(
            r#"{"chat_id":"c","sender_id":"s","text":"hi"}"#,
            Err("`message_id` is required"),
        );
        check(
            r#"{"message_id":"1","chat_id":"","sender_id":"s","text":"hi"}"#,
            Err("`chat_id` must not be empty"),
        );
        check(
            r#"{"message_id":"1","chat_id":"c","sender_id":["s"],"text":"hi"}"#,
            Err("`sender_id` must be a string, not an array"),
        );
        check(
            r#"{"message_id":"1","chat_id":"c","sender_id":"s","text":5}"#,
            Err("`text` must be a string, not a number"),
        );
        check(
            r#"{"message_id":"1","chat_id":"c","sender_id":"s","text":"  "}"#,
            Err("`text` must not be empty"),
        );
        check(
            r#"{"message_id":"1","chat_id":"c","sender_id":"s","text":"01234567890123456"}"#,
            Err("over the limit of 16"),
        );
        check(
            r#"{"message_id":"1","chat_id":"c","sender_id":"s","text":"hi","chat_type":"channel"}"#,
            Err("`chat_type` must be"),
        );
        assert!(
            parse_inbound(b"{\"text\":\"\xff\"}", 16)
                .expect_err("utf8")
                .contains("UTF-8")
        );
    }
}
