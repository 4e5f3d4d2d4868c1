//! The BlueBubbles server's REST API as the channel uses it ([`BlueBubbles`]): the sending half
//! (`POST /api/v1/message/text`), the probe (`GET /api/v1/ping`) and the catch-up's
//! `POST /api/v1/message/query`, every request authenticated by `?password=`.
//!
//! Invariants: the password goes only into the query string of a request, never into an error,
//! a log line (reqwest's errors are stripped of their URL) or a URL that is shown. Each chunk is
//! sent with a `tempGuid` stable across its retries (`gatewayd-<chunk id>`), so a retry of a send
//! the server still has queued is answered 400 "already queued" and counted as sent, not sent
//! twice. A send that does not answer within `request_timeout` (private-api sends can hang) is
//! retryable. Errors are classed by status ([`classify`]): 500 `iMessage Error` retries, 401
//! holds the channel for re-authentication, any other 400 is a dead letter with the server's
//! message.

use std::time::Duration;

use async_trait::async_trait;
use serde_json::{Value, json};

use super::payload::Envelope;
use super::{KIND, LIMIT, SendMethod};
use crate::message::ChannelKind;
use crate::send::{
    ChannelSender, Limit, OutgoingChunk, SendError, Sent, classify_status, parse_retry_after,
};

/// Longest answer body read from the server (a page of 100 messages fits easily).
const BODY_LIMIT: usize = 16 * 1024 * 1024;

/// What BlueBubbles answers a `tempGuid` it already has queued.
const ALREADY_QUEUED: &str = "already queued";

/// One answer: the status and the envelope (empty when the body was not one).
#[derive(Debug)]
pub struct Answer {
    /// The HTTP status.
    pub status: u16,
    /// The parsed body.
    pub envelope: Envelope,
    retry_after: Option<Duration>,
}

/// Classifies a refused request by its status and the envelope's error.
pub fn classify(status: u16, retry_after: Option<Duration>, envelope: &Envelope) -> SendError {
    let detail = format!("BlueBubbles {}", envelope.describe());
    match status {
        400 => SendError::Permanent(format!("HTTP 400: {detail}")),
        401 => SendError::Auth(format!(
            "HTTP 401: {detail} (check channels.imessage.password_env or password_file)"
        )),
        500 => SendError::Retryable {
            message: format!("HTTP 500: {detail}"),
            retry_after,
            global: false,
        },
        _ => classify_status(status, retry_after, &detail),
    }
}

/// Whether a refused send is a retry of one the server already has queued.
pub fn is_already_queued(status: u16, envelope: &Envelope) -> bool {
    status == 400
        && (envelope
            .message
            .to_ascii_lowercase()
            .contains(ALREADY_QUEUED)
            || envelope
                .error
                .as_ref()
                .is_some_and(|e| e.message.to_ascii_lowercase().contains(ALREADY_QUEUED)))
}

/// The request body of one text chunk.
pub fn message_body(chunk: &OutgoingChunk<'_>, method: SendMethod) -> Value {
    let msg = chunk.message;
    let mut body = json!({
        "chatGuid": msg.chat_id,
        "message": chunk.text,
        "tempGuid": temp_guid(chunk),
        "method": method.as_str(),
    });
    if method == SendMethod::PrivateApi
        && chunk.index == 0
        && let Some(reply_to) = msg.reply_to.as_deref().filter(|r| !r.is_empty())
    {
        body["selectedMessageGuid"] = json!(reply_to);
    }
    body
}

/// The `tempGuid` of a chunk: unique per chunk, the same on every retry.
pub fn temp_guid(chunk: &OutgoingChunk<'_>) -> String {
    format!("gatewayd-{}", chunk.id())
}

/// A BlueBubbles server: its URL, its password, and a client with the request timeout.
pub struct BlueBubbles {
    client: reqwest::Client,
    base: String,
    password: String,
    timeout: Duration,
    method: SendMethod,
}

impl BlueBubbles {
    /// The server at `server_url`, authenticated by `password`; every request is cut after
    /// `timeout`; texts are sent with `method`.
    pub fn new(
        server_url: &str,
        password: &str,
        timeout: Duration,
        method: SendMethod,
    ) -> Result<Self, String> {
        let client = reqwest::Client::builder()
            .timeout(timeout)
            .build()
            .map_err(|e| format!("cannot build the BlueBubbles HTTP client: {e}"))?;
        Ok(Self {
            client,
            base: format!("{}/api/v1", server_url.trim_end_matches('/')),
            password: password.to_owned(),
            timeout,
            method,
        })
    }

    /// The method texts are sent with.
    pub fn method(&self) -> SendMethod {
        self.method
    }

    /// Sends `request` to `path` (under `/api/v1`) with the password; any status is an answer,
    /// a lost or late one is retryable.
    async fn request(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Answer, SendError> {
        let mut request = self
            .client
            .request(method, format!("{}{path}", self.base))
            .query(&[("password", self.password.as_str())]);
        if let Some(body) = body {
            request = request.json(body);
        }
        let lost = |e: reqwest::Error, what: &str| {
            if e.is_timeout() {
                SendError::retryable(format!(
                    "BlueBubbles did not answer {path} within {} ms (channels.imessage.request_timeout){what}",
                    self.timeout.as_millis()
                ))
            } else {
                SendError::retryable(format!(
                    "BlueBubbles unreachable at {path}{what}: {}",
                    e.without_url()
                ))
            }
        };
        let resp = request.send().await.map_err(|e| lost(e, ""))?;
        let status = resp.status().as_u16();
        let retry_after = resp
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(parse_retry_after);
        let bytes = resp
            .bytes()
            .await
            .map_err(|e| lost(e, " (the answer's body was lost)"))?;
        let envelope = serde_json::from_slice::<Envelope>(&bytes[..bytes.len().min(BODY_LIMIT)])
            .unwrap_or_default();
        Ok(Answer {
            status,
            envelope,
            retry_after,
        })
    }

    /// `GET /api/v1/ping`: `Ok` on 200, [`SendError::Auth`] on 401, else retryable.
    pub async fn ping(&self) -> Result<(), SendError> {
        let answer = self.request(reqwest::Method::GET, "/ping", None).await?;
        match answer.status {
            200 => Ok(()),
            401 => Err(classify(401, None, &answer.envelope)),
            s => Err(SendError::Retryable {
                message: format!("ping: HTTP {s}: BlueBubbles {}", answer.envelope.describe()),
                retry_after: answer.retry_after,
                global: false,
            }),
        }
    }

    /// `POST /api/v1/message/query` with `body`: the page of messages and the total, if given.
    pub async fn query(&self, body: &Value) -> Result<(Vec<Value>, Option<u64>), SendError> {
        let answer = self
            .request(reqwest::Method::POST, "/message/query", Some(body))
            .await?;
        match answer.status {
            200 => {
                let total = answer.envelope.metadata.as_ref().and_then(|m| m.total);
                match answer.envelope.data {
                    Value::Array(messages) => Ok((messages, total)),
                    Value::Null => Ok((Vec::new(), total)),
                    _ => Err(SendError::retryable(
                        "message/query: the answer's data is not a list of messages",
                    )),
                }
            }
            401 => Err(classify(401, None, &answer.envelope)),
            400 => Err(SendError::retryable(format!(
                "message/query: HTTP 400: BlueBubbles {}",
                answer.envelope.describe()
            ))),
            s => Err(classify(s, answer.retry_after, &answer.envelope)),
        }
    }
}

#[async_trait]
impl ChannelSender for BlueBubbles {
    fn kind(&self) -> ChannelKind {
        KIND
    }

    fn split_limit(&self) -> Option<Limit> {
        Some(LIMIT)
    }

    async fn send(&self, chunk: &OutgoingChunk<'_>) -> Result<Sent, SendError> {
        let to = &chunk.message.chat_id;
        if !to.contains(";-;") && !to.contains(";+;") {
            return Err(SendError::Permanent(format!(
                "`{to}` is not an iMessage chat guid (`iMessage;-;+15551234567` or `iMessage;+;chat…`)"
            )));
        }
        let body = message_body(chunk, self.method);
        let answer = self
            .request(reqwest::Method::POST, "/message/text", Some(&body))
            .await?;
        if (200..300).contains(&answer.status) {
            let guid = answer.envelope.data["guid"]
                .as_str()
                .filter(|g| !g.is_empty());
            return Ok(guid.map(Sent::with_id).unwrap_or_default());
        }
        if is_already_queued(answer.status, &answer.envelope) {
            tracing::info!(
                message = "BlueBubbles already has this chunk queued (a retry); counted as sent.",
                channel = %KIND,
                outbox_id = %chunk.id(),
                temp_guid = %temp_guid(chunk)
            );
            return Ok(Sent::default());
        }
        Err(classify(
            answer.status,
            answer.retry_after,
            &answer.envelope,
        ))
    }

    async fn probe(&self) -> Result<(), SendError> {
        self.ping().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::OutboundMessage;
    use crate::send::ErrorClass;

    fn envelope(v: Value) -> Envelope {
        serde_json::from_value(v).expect("an envelope")
    }

    #[test]
    fn statuses_fall_into_their_classes() {
        let imessage = envelope(json!({"status": 500, "message": "Message Send Error",
            "error": {"type": "iMessage Error", "message": "timeout"}}));
        assert_eq!(
            classify(500, None, &imessage).class(),
            ErrorClass::Retryable
        );
        let auth = envelope(
            json!({"status": 401, "message": "You are not authorized to access this resource",
            "error": {"type": "Authentication Error", "message": "Missing server password!"}}),
        );
        let e = classify(401, None, &auth);
        assert_eq!(e.class(), ErrorClass::Auth);
        assert!(e.to_string().contains("Missing server password!"), "{e}");
        let bad = envelope(json!({"status": 400, "message": "Chat does not exist",
            "error": {"type": "Validation Error", "message": "Chat not found"}}));
        let e = classify(400, None, &bad);
        assert_eq!(e.class(), ErrorClass::Permanent);
        assert!(e.to_string().contains("Chat not found"), "{e}");
        assert_eq!(
            classify(504, None, &Envelope::default()).class(),
            ErrorClass::Retryable
        );
        assert_eq!(
            classify(404, None, &Envelope::default()).class(),
            ErrorClass::Permanent
        );
        assert_eq!(
            classify(403, None, &Envelope::default()).class(),
            ErrorClass::Auth
        );
    }

    #[test]
    fn an_already_queued_400_is_recognised() {
        let queued =
            envelope(json!({"status": 400, "message": "Message is already queued to be sent!"}));
        assert!(is_already_queued(400, &queued));
        let queued = envelope(json!({"status": 400, "message": "Bad Request",
            "error": {"type": "Validation Error", "message": "Message is already queued to be sent!"}}));
        assert!(is_already_queued(400, &queued));
        assert!(!is_already_queued(500, &queued));
        let other = envelope(json!({"status": 400, "message": "A 'tempGuid' is required"}));
        assert!(!is_already_queued(400, &other));
    }

    fn reply() -> OutboundMessage {
        OutboundMessage {
            id: 42,
            channel: KIND,
            chat_id: "iMessage;-;+15551234567".into(),
            text: "hello".into(),
            reply_to: Some("p:0/INBOUND".into()),
            attempts: 0,
            chunks_sent: 0,
        }
    }

    #[test]
    fn only_the_first_private_api_chunk_selects_the_message_it_answers() {
        let msg = reply();
        let first = OutgoingChunk {
            message: &msg,
            text: "hel",
            index: 0,
            count: 2,
        };
        let body = message_body(&first, SendMethod::PrivateApi);
        assert_eq!(body["chatGuid"], "iMessage;-;+15551234567");
        assert_eq!(body["message"], "hel");
        assert_eq!(body["tempGuid"], "gatewayd-42-1");
        assert_eq!(body["method"], "private-api");
        assert_eq!(body["selectedMessageGuid"], "p:0/INBOUND");
        let second = OutgoingChunk {
            index: 1,
            text: "lo",
            ..first
        };
        let body = message_body(&second, SendMethod::PrivateApi);
        assert_eq!(body["tempGuid"], "gatewayd-42-2");
        assert!(body.get("selectedMessageGuid").is_none());
        let body = message_body(&first, SendMethod::AppleScript);
        assert_eq!(body["method"], "apple-script");
        assert!(
            body.get("selectedMessageGuid").is_none(),
            "AppleScript cannot reply to a message"
        );
        let whole = OutgoingChunk {
            index: 0,
            count: 1,
            ..first
        };
        assert_eq!(temp_guid(&whole), "gatewayd-42");
    }

    #[test]
    fn the_sender_declares_the_4000_character_limit() {
        let bb = BlueBubbles::new(
            "http://127.0.0.1:9/",
            "pw",
            Duration::from_secs(1),
            SendMethod::AppleScript,
        )
        .expect("a client");
        assert_eq!(bb.base, "http://127.0.0.1:9/api/v1");
        assert_eq!(
            bb.split_limit(),
            Some(Limit {
                max: 4000,
                unit: crate::send::Unit::Chars
            })
        );
        assert_eq!(bb.reply_window(), None);
    }

    #[tokio::test]
    async fn an_unreachable_server_is_retryable_and_never_shows_the_password() {
        let bb = BlueBubbles::new(
            "http://127.0.0.1:9",
            "s3cr3t-pass",
            Duration::from_secs(2),
            SendMethod::AppleScript,
        )
        .expect("a client");
        let e = bb.ping().await.expect_err("nothing listens on port 9");
        assert_eq!(e.class(), ErrorClass::Retryable, "{e}");
        assert!(!e.to_string().contains("s3cr3t-pass"), "{e}");
    }
}
