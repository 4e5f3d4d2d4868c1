//! The sending half of the WhatsApp channel: `POST {api_url}/{phone_number_id}/messages` with a
//! text body (the first chunk of a reply carries `context.message_id`), the probe
//! (`GET {api_url}/{phone_number_id}`), and the classification of the Cloud API's errors by
//! `error.code` ([`classify`]).
//!
//! Invariants: the access token goes only into the `Authorization` header, never into an error,
//! a log line or a URL; an unreadable or lost answer is retryable (the send may have happened,
//! and the Cloud API offers no idempotency key); a code the table does not name falls back to the
//! HTTP status ([`classify_status`]).

use std::time::Duration;

use async_trait::async_trait;
use serde::Deserialize;

use super::payload::ApiError;
use super::{KIND, LIMIT};
use crate::message::ChannelKind;
use crate::send::{
    ChannelSender, Limit, OutgoingChunk, SendError, Sent, classify_status, parse_retry_after,
};

/// The customer-service window: free-form replies reach a person only this long after their
/// last message.
pub const REPLY_WINDOW: Duration = Duration::from_secs(24 * 60 * 60);

/// Why a 131047 cannot be sent, in the dead letter.
pub const WINDOW_CLOSED: &str = "outside the 24-hour customer-service window: the person has \
     not written in the last 24 hours, and WhatsApp lets only approved template messages reach \
     them until they write again";

/// How a code of the Cloud API is handled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CodeClass {
    /// A number-wide (or app-wide) rate limit: retry later, the whole channel waits.
    RateLimitedChannel,
    /// The per-recipient pair rate limit: retry later, that chat waits.
    RateLimitedChat,
    /// The token or its permissions were refused.
    Auth,
    /// Outside the 24-hour window.
    WindowClosed,
    /// The message cannot be delivered.
    Undeliverable,
    /// Not in the table: the HTTP status decides.
    Other,
}

/// The class of an `error.code`.
pub fn code_class(code: i64) -> CodeClass {
    match code {
        130429 | 4 | 80007 => CodeClass::RateLimitedChannel,
        131056 => CodeClass::RateLimitedChat,
        190 | 0 | 10 | 200..=299 => CodeClass::Auth,
        131047 => CodeClass::WindowClosed,
        131026 => CodeClass::Undeliverable,
        _ => CodeClass::Other,
    }
}

/// Classifies a refused send: by `error.code` when the body has one, else by the HTTP status.
/// `retry_after` is the `Retry-After` header.
pub fn classify(status: u16, retry_after: Option<Duration>, error: Option<&ApiError>) -> SendError {
    let Some(error) = error else {
        return classify_status(status, retry_after, "no error body");
    };
    let text = format!("HTTP {status}: WhatsApp error {}", error.describe());
    match code_class(error.code) {
        CodeClass::RateLimitedChannel => SendError::Retryable {
            message: text,
            retry_after,
            global: true,
        },
        CodeClass::RateLimitedChat => SendError::Retryable {
            message: text,
            retry_after,
            global: false,
        },
        CodeClass::Auth => SendError::Auth(text),
        CodeClass::WindowClosed => SendError::Permanent(format!("{text}; {WINDOW_CLOSED}")),
        CodeClass::Undeliverable => SendError::Permanent(format!(
            "{text}; the message cannot be delivered to this number (not on WhatsApp, \
             an old app version, or the person blocked the business)"
        )),
        CodeClass::Other => classify_status(
            status,
            retry_after,
            &format!("WhatsApp error {}", error.describe()),
        ),
    }
}

/// The body of a refused request.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct ErrorBody {
    error: Option<GraphError>,
}

/// A Graph API error: `{code, message, type, error_data{details}, fbtrace_id}`.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct GraphError {
    code: i64,
    message: String,
    #[serde(rename = "type")]
    kind: String,
    error_user_title: String,
    error_data: Option<super::payload::ErrorData>,
}

impl From<GraphError> for ApiError {
    fn from(e: GraphError) -> Self {
        Self {
            code: e.code,
            title: if e.error_user_title.is_empty() {
                e.kind
            } else {
                e.error_user_title
            },
            message: e.message,
            error_data: e.error_data,
        }
    }
}

/// The answer to a send: `messages[0].id` is the sent message's id.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct SendAnswer {
    messages: Vec<SentId>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct SentId {
    id: String,
}

/// Longest error body read from the Cloud API.
const ERROR_BODY_LIMIT: usize = 64 * 1024;

/// The sending half: its own pooled client against one business number.
pub struct WhatsAppSender {
    client: reqwest::Client,
    number_url: String,
    authorization: String,
}

impl WhatsAppSender {
    /// A sender for `phone_number_id` at `api_url` with `access_token`.
    pub fn new(
        api_url: &str,
        phone_number_id: &str,
        access_token: &str,
        timeout: Duration,
    ) -> Result<Self, String> {
        let client = reqwest::Client::builder()
            .timeout(timeout)
            .build()
            .map_err(|e| format!("cannot build the WhatsApp HTTP client: {e}"))?;
        Ok(Self {
            client,
            number_url: format!("{}/{phone_number_id}", api_url.trim_end_matches('/')),
            authorization: format!("Bearer {access_token}"),
        })
    }

    /// Sends `request` with the token; the answer's body on success.
    async fn request(
        &self,
        request: reqwest::RequestBuilder,
    ) -> Result<axum::body::Bytes, SendError> {
        let resp = request
            .header(reqwest::header::AUTHORIZATION, &self.authorization)
            .send()
            .await
            .map_err(|e| {
                SendError::retryable(format!("WhatsApp unreachable: {}", e.without_url()))
            })?;
        let status = resp.status().as_u16();
        let retry_after = resp
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(parse_retry_after);
        let ok = resp.status().is_success();
        let body = resp.bytes().await.map_err(|e| {
            SendError::retryable(format!(
                "WhatsApp answered HTTP {status} but the body was lost: {}",
                e.without_url()
            ))
        })?;
        if ok {
            return Ok(body);
        }
        let error = serde_json::from_slice::<ErrorBody>(&body[..body.len().min(ERROR_BODY_LIMIT)])
            .ok()
            .and_then(|b| b.error)
            .map(ApiError::from);
        Err(classify(status, retry_after, error.as_ref()))
    }
}

/// The request body of one text chunk.
pub fn message_body(chunk: &OutgoingChunk<'_>) -> serde_json::Value {
    let msg = chunk.message;
    let mut body = serde_json::json!({
        "messaging_product": "whatsapp",
        "recipient_type": "individual",
        "to": msg.chat_id,
        "type": "text",
        "text": {"body": chunk.text, "preview_url": false},
    });
    if chunk.index == 0
        && let Some(reply_to) = msg.reply_to.as_deref().filter(|r| !r.is_empty())
    {
        body["context"] = serde_json::json!({"message_id": reply_to});
    }
    body
}

#[async_trait]
impl ChannelSender for WhatsAppSender {
    fn kind(&self) -> ChannelKind {
        KIND
    }

    fn split_limit(&self) -> Option<Limit> {
        Some(LIMIT)
    }

    async fn send(&self, chunk: &OutgoingChunk<'_>) -> Result<Sent, SendError> {
        let to = &chunk.message.chat_id;
        if to.is_empty() || !to.bytes().all(|b| b.is_ascii_digit()) {
            return Err(SendError::Permanent(format!(
                "`{to}` is not a WhatsApp id (digits of the phone number, without `+`)"
            )));
        }
        let url = format!("{}/messages", self.number_url);
        let body = self
            .request(self.client.post(url).json(&message_body(chunk)))
            .await?;
        let id = serde_json::from_slice::<SendAnswer>(&body)
            .ok()
            .and_then(|a| a.messages.into_iter().next())
            .map(|m| m.id)
            .filter(|id| !id.is_empty());
        if id.is_none() {
            tracing::warn!(
                message = "WhatsApp accepted a message without giving its id; its statuses cannot be matched to it.",
                channel = %KIND,
                outbox_id = %chunk.id()
            );
        }
        Ok(Sent { platform_id: id })
    }

    fn reply_window(&self) -> Option<Duration> {
        Some(REPLY_WINDOW)
    }

    async fn probe(&self) -> Result<(), SendError> {
        self.request(self.client.get(&self.number_url))
            .await
            .map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::send::ErrorClass;

    fn error(code: i64) -> ApiError {
        ApiError {
            code,
            title: "OAuthException".into(),
            message: format!("(#{code}) something"),
            error_data: Some(super::super::payload::ErrorData {
                details: "the details".into(),
            }),
        }
    }

    fn check(code: i64, status: u16, expected: ErrorClass) {
        let e = classify(status, None, Some(&error(code)));
        assert_eq!(e.class(), expected, "code {code} (HTTP {status}): {e}");
        let text = e.to_string();
        assert!(
            text.contains(&code.to_string()) && text.contains("the details"),
            "the code and details are shown: {text}"
        );
    }

    #[test]
    fn error_codes_fall_into_their_classes() {
        check(130429, 400, ErrorClass::Retryable);
        check(130429, 429, ErrorClass::Retryable);
        check(131056, 400, ErrorClass::Retryable);
        check(4, 429, ErrorClass::Retryable);
        check(4, 400, ErrorClass::Retryable);
        check(80007, 400, ErrorClass::Retryable);
        check(190, 401, ErrorClass::Auth);
        check(0, 401, ErrorClass::Auth);
        check(10, 403, ErrorClass::Auth);
        check(200, 403, ErrorClass::Auth);
        check(299, 403, ErrorClass::Auth);
        check(131047, 400, ErrorClass::Permanent);
        check(131026, 400, ErrorClass::Permanent);
        // Codes outside the table: the HTTP status decides.
        check(100, 400, ErrorClass::Permanent);
        check(131000, 500, ErrorClass::Retryable);
        check(300, 401, ErrorClass::Auth);
        check(368, 400, ErrorClass::Permanent);
    }

    #[test]
    fn rate_limits_keep_retry_after_and_say_whether_the_number_waits() {
        let wait = Some(Duration::from_secs(3));
        match classify(400, wait, Some(&error(130429))) {
            SendError::Retryable {
                retry_after,
                global,
                ..
            } => assert_eq!((retry_after, global), (wait, true)),
            other => panic!("{other:?}"),
        }
        match classify(400, None, Some(&error(131056))) {
            SendError::Retryable { global, .. } => assert!(!global, "the pair limit is per chat"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn the_window_and_undeliverable_errors_say_why() {
        let e = classify(400, None, Some(&error(131047)));
        assert!(e.to_string().contains("24-hour"), "{e}");
        let e = classify(400, None, Some(&error(131026)));
        assert!(e.to_string().contains("cannot be delivered"), "{e}");
    }

    #[test]
    fn answers_without_an_error_body_are_classed_by_status() {
        assert_eq!(classify(503, None, None).class(), ErrorClass::Retryable);
        assert_eq!(classify(401, None, None).class(), ErrorClass::Auth);
        assert_eq!(classify(404, None, None).class(), ErrorClass::Permanent);
    }

    #[test]
    fn graph_error_bodies_parse() {
        let body = br#"{"error":{"message":"(#131047) Re-engagement message","type":"OAuthException","code":131047,
            "error_data":{"messaging_product":"whatsapp","details":"Message failed to send because more than 24 hours have passed"},
            "fbtrace_id":"Az8or"}}"#;
        let e: ErrorBody = serde_json::from_slice(body).expect("an error body");
        let api = ApiError::from(e.error.expect("error"));
        assert_eq!(api.code, 131047);
        assert_eq!(
            api.describe(),
            "131047 OAuthException: (#131047) Re-engagement message (Message failed to send because more than 24 hours have passed)"
        );
    }

    #[test]
    fn the_sender_declares_the_24_hour_window_and_the_4096_character_limit() {
        let sender = WhatsAppSender::new(
            "http://127.0.0.1:9/v21.0",
            "106540352242922",
            "token",
            Duration::from_secs(1),
        )
        .expect("a client");
        assert_eq!(sender.reply_window(), Some(Duration::from_secs(86_400)));
        assert_eq!(
            sender.split_limit(),
            Some(Limit {
                max: 4096,
                unit: crate::send::Unit::Chars
            })
        );
    }

    #[test]
    fn the_first_chunk_of_a_reply_carries_the_context() {
        use crate::message::OutboundMessage;
        let msg = OutboundMessage {
            id: 7,
            channel: KIND,
            chat_id: "15551234567".into(),
            text: "hello".into(),
            reply_to: Some("wamid.Q".into()),
            attempts: 0,
            chunks_sent: 0,
        };
        let first = OutgoingChunk {
            message: &msg,
            text: "hel",
            index: 0,
            count: 2,
        };
        let body = message_body(&first);
        assert_eq!(body["messaging_product"], "whatsapp");
        assert_eq!(body["to"], "15551234567");
        assert_eq!(body["text"]["body"], "hel");
        assert_eq!(body["text"]["preview_url"], false);
        assert_eq!(body["context"]["message_id"], "wamid.Q");
        let second = OutgoingChunk {
            index: 1,
            text: "lo",
            ..first
        };
        assert!(message_body(&second).get("context").is_none());
    }
}
