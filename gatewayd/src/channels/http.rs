//! The generic HTTP channel, for integrations: messages come in as JSON on
//! `POST /channels/http/messages`, replies go out as JSON POSTs to `channels.http.callback_url`.
//!
//! Inbound body: `{"message_id","chat_id","sender_id","text","chat_type":"direct"|"group"}`
//! (`chat_type` defaults to `direct`). The handler answers 202 `{"accepted":true,"duplicate":b}`
//! only after the inbox commit; anything malformed gets 400 with a message naming the field.
//! Outbound body: `{"message_id","chat_id","text","reply_to"}`; any 2xx means delivered.

use std::time::Duration;

use std::collections::HashMap;

use async_trait::async_trait;
use serde_json::Value;
use serde_json::value::RawValue;

use std::sync::Arc;

use axum::Json;
use axum::body::Body;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use serde::Deserialize;
use serde_json::json;

use super::adapter::{BuildEnv, ChannelAdapter, Route, WebhookCtx};
use super::webhook::{error, read_body};
use super::{ChannelSender, OutgoingChunk, SendError, classify_status, parse_retry_after};
use crate::config::{
    ConfigError, HumanDuration, MIB, MIN, Number, NumericKey, channel_key, check_url, ints, millis,
};
use crate::delivery::rate_limit::RateSettings;
use crate::inbox::Inbox;
use crate::message::{ChannelKind, ChatType, InboundMessage, now_ms};
use crate::send::{Limit, Sent, Unit};

/// The HTTP channel.
pub const KIND: ChannelKind = ChannelKind::new("http");
/// Where messages are POSTed.
pub const PATH: &str = "/channels/http/messages";

/// Longest accepted id (message, chat or sender), in bytes.
pub const MAX_ID_BYTES: usize = 256;

/// One field of an inbound body: a number stays the exact text it was sent as.
enum Field {
    Absent,
    Number(String),
    Other(Value),
}

/// Parses and checks an inbound body; the error names the offending field.
///
/// Ids may be strings or JSON integers; an integer is kept as its exact decimal text (however
/// many digits), never converted to a float. A fraction or an exponent (`1.5`, `1e3`) is refused.
pub fn parse_inbound(body: &[u8], max_text_bytes: usize) -> Result<InboundMessage, String> {
    let text = std::str::from_utf8(body).map_err(|e| format!("body is not valid UTF-8: {e}"))?;
    // Each field stays raw JSON text until it is read, so numbers keep their exact digits.
    let raw: HashMap<String, Box<RawValue>> = match serde_json::from_str(text) {
        Ok(m) => m,
        Err(e) => {
            return Err(match serde_json::from_str::<serde::de::IgnoredAny>(text) {
                Err(_) => format!("body is not valid JSON: {e}"),
                Ok(_) => "body must be a JSON object with message_id, chat_id, sender_id and text"
                    .to_owned(),
            });
        }
    };
    let field = |name: &str| -> Result<Field, String> {
        let Some(r) = raw.get(name) else {
            return Ok(Field::Absent);
        };
        let r = r.get().trim();
        if r.starts_with(|c: char| c == '-' || c.is_ascii_digit()) {
            return Ok(Field::Number(r.to_owned()));
        }
        serde_json::from_str::<Value>(r)
            .map(|v| match v {
                Value::Null => Field::Absent,
                v => Field::Other(v),
            })
            .map_err(|e| format!("field `{name}` is not valid JSON: {e}"))
    };
    let id_field = |name: &str| -> Result<String, String> {
        let id = match field(name)? {
            Field::Absent => return Err(format!("field `{name}` is required")),
            Field::Other(Value::String(s)) => s,
            Field::Number(digits) if is_json_integer(&digits) => digits,
            Field::Number(digits) => {
                return Err(format!(
                    "field `{name}` must be a string or a whole number without fraction or exponent, not `{}`",
                    digits.chars().take(40).collect::<String>()
                ));
            }
            Field::Other(other) => {
                return Err(format!(
                    "field `{name}` must be a string, not {}",
                    json_type(&other)
                ));
            }
        };
        if id.trim().is_empty() {
            return Err(format!("field `{name}` must not be empty"));
        }
        if id.len() > MAX_ID_BYTES {
            return Err(format!(
                "field `{name}` is longer than {MAX_ID_BYTES} bytes"
            ));
        }
        if id.chars().any(char::is_control) {
            return Err(format!(
                "field `{name}` must not contain control characters"
            ));
        }
        Ok(id)
    };
    let message_id = id_field("message_id")?;
    let chat_id = id_field("chat_id")?;
    let sender_id = id_field("sender_id")?;
    let text = match field("text")? {
        Field::Absent => return Err("field `text` is required".to_owned()),
        Field::Other(Value::String(s)) => s,
        Field::Number(_) => return Err("field `text` must be a string, not a number".to_owned()),
        Field::Other(other) => {
            return Err(format!(
                "field `text` must be a string, not {}",
                json_type(&other)
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
    let chat_type = match field("chat_type")? {
        Field::Absent => ChatType::Direct,
        Field::Other(Value::String(s)) => s.parse().map_err(|_| {
            format!("field `chat_type` must be \"direct\" or \"group\", not \"{s}\"")
        })?,
        Field::Number(_) => {
            return Err(
                "field `chat_type` must be \"direct\" or \"group\", not a number".to_owned(),
            );
        }
        Field::Other(other) => {
            return Err(format!(
                "field `chat_type` must be \"direct\" or \"group\", not {}",
                json_type(&other)
            ));
        }
    };
    Ok(InboundMessage {
        channel: KIND,
        channel_message_id: message_id,
        chat_id,
        chat_type,
        sender_id,
        text,
        reply_to: None,
        attachments: Vec::new(),
        sender_name: None,
        received_at_ms: now_ms(),
        mentioned: false,
    })
}

/// Whether `s` is a JSON integer literal: an optional `-`, then `0` or digits not starting with `0`.
fn is_json_integer(s: &str) -> bool {
    let digits = s.strip_prefix('-').unwrap_or(s);
    !digits.is_empty()
        && digits.bytes().all(|b| b.is_ascii_digit())
        && (digits == "0" || !digits.starts_with('0'))
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
        KIND
    }

    fn split_limit(&self) -> Option<Limit> {
        self.max_reply_chars.map(|max| Limit {
            max,
            unit: Unit::Chars,
        })
    }

    async fn send(&self, chunk: &OutgoingChunk<'_>) -> Result<Sent, SendError> {
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
            return Ok(Sent::default());
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

    /// A `HEAD` of the callback URL. Any HTTP answer proves the endpoint reachable (a server
    /// that answers only POST says 405 or 501, and that is fine); only 401/403 count, as refused
    /// credentials. No answer (refused, reset, timed out) is a retryable failure.
    async fn probe(&self) -> Result<(), SendError> {
        let resp = self
            .client
            .head(&self.callback_url)
            .send()
            .await
            .map_err(transport_error)?;
        probe_verdict(resp.status().as_u16())
    }
}

/// What a probe's answer says about the callback endpoint.
fn probe_verdict(status: u16) -> Result<(), SendError> {
    match status {
        401 | 403 => Err(classify_status(status, None, "probe refused")),
        _ => Ok(()),
    }
}

/// `[channels.http]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpChannelConfig {
    /// Accept messages at `POST /channels/http/messages`.
    pub enabled: bool,
    /// Where replies are POSTed as JSON.
    pub callback_url: Option<String>,
    /// Largest accepted message text, in bytes.
    pub max_message_bytes: usize,
    /// Timeout of one callback request.
    pub timeout: HumanDuration,
    /// Replies longer than this many characters are split into several callbacks.
    pub max_reply_chars: Option<usize>,
}

impl Default for HttpChannelConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            callback_url: None,
            max_message_bytes: 64 * 1024,
            timeout: HumanDuration(Duration::from_secs(10)),
            max_reply_chars: None,
        }
    }
}

/// The HTTP channel's adapter: the webhook route and the callback sender.
pub struct HttpAdapter {
    sender: Arc<HttpSender>,
    max_text: usize,
}

/// What the webhook handler needs.
#[derive(Clone)]
struct Hook {
    inbox: Arc<Inbox>,
    max_text: usize,
    body_timeout: Duration,
}

impl ChannelAdapter for HttpAdapter {
    const KIND: ChannelKind = KIND;
    type Config = HttpChannelConfig;
    const NUMERIC_KEYS: &'static [NumericKey] = &[
        channel_key(
            "channels.http.max_message_bytes",
            ints(1, 16 * MIB),
            Some(Number::Int(64 * 1024)),
        ),
        channel_key(
            "channels.http.timeout",
            millis(100, 10 * MIN),
            Some(Number::Duration(Duration::from_secs(10))),
        ),
        channel_key("channels.http.max_reply_chars", ints(64, 1_000_000), None),
    ];

    fn enabled(config: &HttpChannelConfig) -> bool {
        config.enabled
    }

    fn validate(config: &HttpChannelConfig) -> Vec<ConfigError> {
        match &config.callback_url {
            None if !config.enabled => Vec::new(),
            None => vec![ConfigError {
                path: "channels.http.callback_url".to_owned(),
                line: None,
                message: "required when channels.http.enabled = true; replies are POSTed there"
                    .to_owned(),
            }],
            Some(url) => check_url("channels.http.callback_url", url)
                .err()
                .into_iter()
                .collect(),
        }
    }

    fn default_rates() -> RateSettings {
        // The integration's own endpoint: no limit unless configured.
        RateSettings::default()
    }

    fn build(config: &HttpChannelConfig, _: &BuildEnv) -> anyhow::Result<Self> {
        let url = config
            .callback_url
            .clone()
            .ok_or_else(|| anyhow::anyhow!("channels.http.callback_url is required"))?;
        let sender = HttpSender::new(url, config.timeout.get(), config.max_reply_chars)
            .map_err(|e| anyhow::anyhow!(e))?;
        Ok(Self {
            sender: Arc::new(sender),
            max_text: config.max_message_bytes,
        })
    }

    fn sender(&self) -> Arc<dyn ChannelSender> {
        self.sender.clone()
    }

    fn routes(&self, ctx: &WebhookCtx) -> Vec<Route> {
        let hook = Hook {
            inbox: ctx.inbox.clone(),
            max_text: self.max_text,
            body_timeout: ctx.body_timeout,
        };
        vec![Route {
            path: PATH.to_owned(),
            handler: post(http_message)
                .layer(DefaultBodyLimit::disable())
                .with_state(hook),
        }]
    }

    fn disabled_routes() -> Vec<Route> {
        vec![Route {
            path: PATH.to_owned(),
            handler: post(|| async {
                error(
                    StatusCode::NOT_FOUND,
                    "the HTTP channel is disabled; set channels.http.enabled = true".to_owned(),
                )
            }),
        }]
    }

    fn announce(&self, http: std::net::SocketAddr) -> Vec<String> {
        vec![format!("HTTP channel: POST http://{http}{PATH}")]
    }
}

async fn http_message(State(hook): State<Hook>, headers: HeaderMap, body: Body) -> Response {
    let max_text = hook.max_text;
    // JSON escapes can make a text up to six times longer on the wire.
    let limit = max_text.saturating_mul(6).saturating_add(16 * 1024);
    let too_large = || {
        format!(
            "body is larger than {limit} bytes; texts are limited to {max_text} bytes (channels.http.max_message_bytes)"
        )
    };
    let bytes = match read_body(&headers, body, limit, hook.body_timeout, too_large).await {
        Ok(b) => b,
        Err(response) => return response,
    };
    let msg = match parse_inbound(&bytes, max_text) {
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
    match hook.inbox.accept(msg).await {
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

#[cfg(test)]
mod props {
    //! Generated bodies: the parser never panics, names the field it refuses, and keeps every
    //! accepted field exactly. Cases: `PROPTEST_CASES` (default 256).
    use proptest::prelude::*;

    use super::*;

    const FIELDS: [&str; 4] = ["message_id", "chat_id", "sender_id", "text"];

    /// A valid id as JSON text and the id it must become: a string, or an integer of any length.
    fn id() -> impl Strategy<Value = (String, String)> {
        prop_oneof![
            "[a-zA-Z0-9 _:./é-]{0,40}[a-zA-Z0-9]"
                .prop_map(|s| (serde_json::to_string(&s).unwrap_or_default(), s)),
            "-?[1-9][0-9]{0,80}".prop_map(|d| (d.clone(), d)),
            Just(("0".to_owned(), "0".to_owned())),
        ]
    }

    /// A JSON value no id field accepts, as text.
    fn bad_value() -> impl Strategy<Value = String> {
        prop_oneof![
            "-?[1-9][0-9]{0,29}\\.[0-9]{1,10}",
            "-?[1-9][0-9]{0,5}[eE][+-]?[0-9]{1,4}",
            Just("true".to_owned()),
            Just("[]".to_owned()),
            Just("{}".to_owned()),
            Just("\"\"".to_owned()),
            Just("\"  \"".to_owned()),
            Just("\"a\\u0000b\"".to_owned()),
        ]
    }

    proptest! {
        #[test]
        fn prop_http_body_never_panics(body in proptest::collection::vec(any::<u8>(), 0..300)) {
            if let Err(e) = parse_inbound(&body, 64) {
                prop_assert!(!e.is_empty());
            }
        }

        #[test]
        fn prop_http_json_like_body_never_panics(body in "[{}\\[\\]\",:0-9a-z_ .eE+-]{0,120}") {
            if let Err(e) = parse_inbound(body.as_bytes(), 64) {
                prop_assert!(!e.is_empty());
            }
        }

        #[test]
        fn prop_http_valid_body_is_kept_exactly(
            (mid_json, mid) in id(),
            (chat_json, chat) in id(),
            (sender_json, sender) in id(),
            text in "[^\u{0}]{0,30}[a-z]",
            group in any::<bool>(),
        ) {
            let body = format!(
                r#"{{"message_id":{mid_json},"chat_id":{chat_json},"sender_id":{sender_json},"text":{},"chat_type":"{}"}}"#,
                serde_json::to_string(&text).unwrap_or_default(),
                if group { "group" } else { "direct" }
            );
            let m = parse_inbound(body.as_bytes(), 4096).map_err(|e| TestCaseError::fail(format!("{body}: {e}")))?;
            prop_assert_eq!(&m.channel_message_id, &mid);
            prop_assert_eq!(&m.chat_id, &chat);
            prop_assert_eq!(&m.sender_id, &sender);
            prop_assert_eq!(&m.text, &text);
            prop_assert_eq!(m.chat_type, if group { ChatType::Group } else { ChatType::Direct });
        }

        #[test]
        fn prop_http_bad_field_is_named(which in 0..4usize, bad in bad_value()) {
            let mut parts = [
                ("message_id", "\"m\"".to_owned()),
                ("chat_id", "\"c\"".to_owned()),
                ("sender_id", "\"s\"".to_owned()),
                ("text", "\"hi\"".to_owned()),
            ];
            // A text may hold control characters; ids may not.
            prop_assume!(!(which == 3 && bad.contains("\\u0000")));
            parts[which].1 = bad.clone();
            let body = format!(
                "{{{}}}",
                parts.iter().map(|(k, v)| format!("\"{k}\":{v}")).collect::<Vec<_>>().join(",")
            );
            let field = FIELDS[which];
            match parse_inbound(body.as_bytes(), 64) {
                Ok(m) => prop_assert!(false, "{body} accepted as {m:?}"),
                Err(e) => prop_assert!(e.contains(&format!("`{field}`")), "{body}: `{e}` does not name `{field}`"),
            }
        }
    }

    #[test]
    fn big_integer_ids_stay_exact_and_distinct() {
        let body =
            |id: &str| format!(r#"{{"message_id":{id},"chat_id":{id},"sender_id":1,"text":"hi"}}"#);
        let a = parse_inbound(body("123456789012345678901234567890").as_bytes(), 64);
        let b = parse_inbound(body("123456789012345678901234567891").as_bytes(), 64);
        let (a, b) = (a.expect("a"), b.expect("b"));
        assert_eq!(a.channel_message_id, "123456789012345678901234567890");
        assert_eq!(b.channel_message_id, "123456789012345678901234567891");
        assert_eq!(a.chat_id, "123456789012345678901234567890");
        for bad in ["1.5", "1e3", "-2E-1", "18446744073709551616.0"] {
            let e = parse_inbound(body(bad).as_bytes(), 64).expect_err(bad);
            assert!(e.contains("`message_id`"), "{bad}: {e}");
        }
    }

    #[test]
    fn any_probe_answer_but_401_403_is_reachable() {
        for status in [200, 204, 404, 405, 500, 501, 503] {
            assert!(probe_verdict(status).is_ok(), "{status}");
        }
        for status in [401, 403] {
            assert_eq!(
                probe_verdict(status).map_err(|e| e.class()),
                Err(super::super::ErrorClass::Auth)
            );
        }
    }
}
