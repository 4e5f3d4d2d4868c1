//! The sending half of the Signal channel: JSON-RPC `send` on `POST {rpc_url}/api/v1/rpc`, to a
//! person (`recipient`, their UUID) or a group (`groupId`), quoting the message a reply answers
//! (`quoteTimestamp` + `quoteAuthor`) on its first chunk; the probe (`GET /api/v1/check`); and
//! the classification of what signal-cli answers ([`classify_response`]).
//!
//! signal-cli throws for a direct send only when no recipient got it, and never for a group
//! send, so the per-recipient `results[].type` decide: a send that reached anyone is sent (the
//! rest are logged: sending again would repeat it to those who have it); one that reached no one
//! is classed by its results. `RATE_LIMIT_FAILURE` and `NETWORK_FAILURE` are retryable, with
//! `retryAfterSeconds` honoured; `UNREGISTERED_FAILURE` and `IDENTITY_FAILURE` are dead
//! letters that say why; a captcha demand (error -6, or a `token` in a result) holds the channel
//! for the operator, with the steps that lift it. Error -5 (rate limited) and -3 (I/O) are
//! retryable; an unreadable or lost answer is retryable too.

use std::time::Duration;

use async_trait::async_trait;
use serde::Deserialize;
use serde_json::{Value, json};

use super::payload::{Recipient, Reference};
use super::{KIND, LIMIT};
use crate::message::ChannelKind;
use crate::send::{
    ChannelSender, Limit, OutgoingChunk, SendError, Sent, classify_status, platform_delay_secs,
};

/// A JSON-RPC answer.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct RpcResponse {
    pub result: Option<SendResult>,
    pub error: Option<RpcError>,
}

/// A JSON-RPC error; `data.response` is the send's result when there is one.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct RpcError {
    pub code: i64,
    pub message: String,
    pub data: Option<ErrorData>,
}

/// The `data` of a send's error.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct ErrorData {
    pub response: Option<SendResult>,
}

/// What a send returns: its timestamp and one result per recipient.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct SendResult {
    pub timestamp: i64,
    pub results: Vec<RecipientResult>,
}

/// One recipient's result.
#[derive(Debug, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct RecipientResult {
    pub recipient_address: Option<Address>,
    #[serde(rename = "type")]
    pub kind: String,
    pub token: Option<String>,
    pub retry_after_seconds: Option<f64>,
}

/// A recipient's address.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct Address {
    pub uuid: Option<String>,
    pub number: Option<String>,
}

impl RecipientResult {
    fn who(&self) -> String {
        self.recipient_address
            .as_ref()
            .and_then(|a| a.uuid.clone().or_else(|| a.number.clone()))
            .unwrap_or_else(|| "a recipient".to_owned())
    }
}

/// What the operator does about a captcha demand (the reason shown with `reauth_needed`).
pub fn captcha_reason(account: &str, detail: &str) -> String {
    format!(
        "Signal asks for a captcha before it takes more messages from {account} ({detail}): solve \
         one at https://signalcaptchas.org/challenge/generate, run `signal-cli -a {account} \
         submitRateLimitChallenge --challenge TOKEN --captcha CAPTCHA` with the token from the \
         log, then `gatewayctl channels reconnect signal`"
    )
}

/// The outcome of a send's answer: the sent message's timestamp, or how it failed.
pub fn classify_response(response: &RpcResponse, account: &str) -> Result<i64, SendError> {
    if let Some(e) = &response.error {
        let results = e
            .data
            .as_ref()
            .and_then(|d| d.response.as_ref())
            .map(|r| r.results.as_slice())
            .unwrap_or_default();
        if let Some(captcha) = results.iter().find(|r| r.token.is_some()) {
            return Err(SendError::Auth(captcha_reason(
                account,
                &format!(
                    "error {}: {}, token {}",
                    e.code,
                    e.message,
                    captcha.token.as_deref().unwrap_or_default()
                ),
            )));
        }
        let text = format!("signal-cli error {}: {}", e.code, e.message);
        return match e.code {
            -6 => Err(SendError::Auth(captcha_reason(account, &text))),
            -5 | -3 | -32603 => Err(SendError::Retryable {
                message: text,
                retry_after: longest_retry_after(results),
                global: e.code == -5,
            }),
            _ if !results.is_empty() => classify_results(results, account).map(|()| 0),
            -32602 => Err(SendError::Permanent(format!(
                "{text}; check channels.signal.account against the number the daemon serves"
            ))),
            _ => Err(SendError::Permanent(text)),
        };
    }
    let Some(result) = &response.result else {
        return Err(SendError::retryable(
            "signal-cli answered neither a result nor an error",
        ));
    };
    classify_results(&result.results, account).map(|()| result.timestamp)
}

/// The longest `retryAfterSeconds` of `results`.
fn longest_retry_after(results: &[RecipientResult]) -> Option<Duration> {
    results
        .iter()
        .filter_map(|r| r.retry_after_seconds.and_then(platform_delay_secs))
        .max()
}

/// Whether a send with these per-recipient results reached anyone; if not, how it failed.
fn classify_results(results: &[RecipientResult], account: &str) -> Result<(), SendError> {
    if let Some(captcha) = results.iter().find(|r| r.token.is_some()) {
        return Err(SendError::Auth(captcha_reason(
            account,
            &format!(
                "{} for {}, token {}",
                captcha.kind,
                captcha.who(),
                captcha.token.as_deref().unwrap_or_default()
            ),
        )));
    }
    if results.is_empty() || results.iter().any(|r| r.kind == "SUCCESS") {
        for r in results.iter().filter(|r| r.kind != "SUCCESS") {
            tracing::warn!(message = "Signal did not deliver to one recipient of a send that reached others; it is not sent again.", channel = %KIND, recipient = %r.who(), result = %r.kind);
        }
        return Ok(());
    }
    let describe = |r: &RecipientResult| format!("{} for {}", r.kind, r.who());
    if let Some(r) = results
        .iter()
        .find(|r| matches!(r.kind.as_str(), "RATE_LIMIT_FAILURE" | "NETWORK_FAILURE"))
    {
        return Err(SendError::Retryable {
            message: format!("Signal: {}", describe(r)),
            retry_after: longest_retry_after(results),
            global: r.kind == "RATE_LIMIT_FAILURE",
        });
    }
    if let Some(r) = results.iter().find(|r| r.kind == "UNREGISTERED_FAILURE") {
        return Err(SendError::Permanent(format!(
            "Signal: {}: the recipient is not registered with Signal (any more)",
            describe(r)
        )));
    }
    if let Some(r) = results.iter().find(|r| r.kind == "IDENTITY_FAILURE") {
        return Err(SendError::Permanent(format!(
            "Signal: {}: the recipient's safety number changed; trust it with `signal-cli trust`, then retry the dead letter",
            describe(r)
        )));
    }
    let r = &results[0];
    Err(SendError::retryable(format!("Signal: {}", describe(r))))
}

/// Longest answer read from signal-cli.
const BODY_LIMIT: usize = 1024 * 1024;

/// The sending half: its own pooled client against one signal-cli daemon.
pub struct SignalSender {
    client: reqwest::Client,
    rpc: String,
    check: String,
    account: String,
    next_id: std::sync::atomic::AtomicU64,
}

impl SignalSender {
    /// A sender for `account` through the daemon at `rpc_url`.
    pub fn new(rpc_url: &str, account: &str, timeout: Duration) -> Result<Self, String> {
        let client = reqwest::Client::builder()
            .timeout(timeout)
            .build()
            .map_err(|e| format!("cannot build the Signal HTTP client: {e}"))?;
        let base = rpc_url.trim_end_matches('/');
        Ok(Self {
            client,
            rpc: format!("{base}/api/v1/rpc"),
            check: format!("{base}/api/v1/check"),
            account: account.to_owned(),
            next_id: std::sync::atomic::AtomicU64::new(1),
        })
    }

    /// The `send` request's params for `chunk`.
    pub fn params(&self, chunk: &OutgoingChunk<'_>) -> Value {
        let mut params = json!({"account": self.account, "message": chunk.text});
        match Recipient::of_chat(&chunk.message.chat_id) {
            Recipient::Person(p) => params["recipient"] = json!([p]),
            Recipient::Group(g) => params["groupId"] = json!(g),
        }
        if chunk.index == 0
            && let Some(r) = chunk.message.reply_to.as_deref().and_then(Reference::parse)
        {
            params["quoteTimestamp"] = json!(r.timestamp);
            params["quoteAuthor"] = json!(r.author);
        }
        params
    }
}

#[async_trait]
impl ChannelSender for SignalSender {
    fn kind(&self) -> ChannelKind {
        KIND
    }

    fn split_limit(&self) -> Option<Limit> {
        Some(LIMIT)
    }

    async fn send(&self, chunk: &OutgoingChunk<'_>) -> Result<Sent, SendError> {
        let id = self
            .next_id
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let request =
            json!({"jsonrpc": "2.0", "method": "send", "params": self.params(chunk), "id": id});
        let resp = self
            .client
            .post(&self.rpc)
            .json(&request)
            .send()
            .await
            .map_err(|e| {
                SendError::retryable(format!("signal-cli unreachable: {}", e.without_url()))
            })?;
        let status = resp.status().as_u16();
        let body = resp.bytes().await.map_err(|e| {
            SendError::retryable(format!(
                "signal-cli answered HTTP {status} but the body was lost: {}",
                e.without_url()
            ))
        })?;
        let head = &body[..body.len().min(BODY_LIMIT)];
        if status == 201 {
            // A notification's answer: nothing to read (never the answer to a request with an id).
            return Ok(Sent::default());
        }
        if status != 200 {
            let detail = String::from_utf8_lossy(&head[..head.len().min(300)]).into_owned();
            return Err(match status {
                404 | 405 | 415 | 421 => SendError::Permanent(format!(
                    "HTTP {status} from {}: {detail}; check channels.signal.rpc_url (signal-cli daemon --http)",
                    self.rpc
                )),
                _ => classify_status(status, None, &detail),
            });
        }
        let response: RpcResponse = serde_json::from_slice(head).map_err(|e| {
            SendError::retryable(format!(
                "signal-cli answered something that is not JSON-RPC: {e}"
            ))
        })?;
        let timestamp = classify_response(&response, &self.account)?;
        Ok(if timestamp > 0 {
            Sent::with_id(timestamp.to_string())
        } else {
            Sent::default()
        })
    }

    async fn probe(&self) -> Result<(), SendError> {
        let resp = self.client.get(&self.check).send().await.map_err(|e| {
            SendError::retryable(format!("signal-cli unreachable: {}", e.without_url()))
        })?;
        let status = resp.status().as_u16();
        if status == 200 {
            Ok(())
        } else {
            Err(classify_status(status, None, "GET /api/v1/check"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ME: &str = "+15550001111";

    fn classify(json: &str) -> Result<i64, SendError> {
        classify_response(&serde_json::from_str(json).expect("valid"), ME)
    }

    #[test]
    fn success_and_partial_success_are_sent() {
        assert_eq!(
            classify(r#"{"jsonrpc":"2.0","result":{"timestamp":99,"results":[{"recipientAddress":{"uuid":"u"},"type":"SUCCESS"}]},"id":1}"#).ok(),
            Some(99)
        );
        assert_eq!(
            classify(r#"{"result":{"timestamp":7,"results":[{"type":"SUCCESS"},{"type":"NETWORK_FAILURE"}]}}"#).ok(),
            Some(7)
        );
    }

    #[test]
    fn each_result_type_has_its_class() {
        let of = |t: &str| {
            classify(&format!(
                r#"{{"result":{{"timestamp":1,"results":[{{"type":"{t}","retryAfterSeconds":3}}]}}}}"#
            ))
            .expect_err("failed")
        };
        let rl = of("RATE_LIMIT_FAILURE");
        assert!(matches!(
            rl,
            SendError::Retryable { retry_after: Some(d), .. } if d == Duration::from_secs(3)
        ));
        assert_eq!(
            of("NETWORK_FAILURE").class(),
            crate::send::ErrorClass::Retryable
        );
        assert_eq!(
            of("UNREGISTERED_FAILURE").class(),
            crate::send::ErrorClass::Permanent
        );
        assert_eq!(
            of("IDENTITY_FAILURE").class(),
            crate::send::ErrorClass::Permanent
        );
    }

    #[test]
    fn error_codes_have_their_class_and_a_captcha_holds() {
        let e = classify(r#"{"error":{"code":-5,"message":"Failed to send message due to rate limiting","data":null}}"#)
            .expect_err("failed");
        assert_eq!(e.class(), crate::send::ErrorClass::Retryable);
        let e =
            classify(r#"{"error":{"code":-6,"message":"Captcha rejected"}}"#).expect_err("failed");
        assert_eq!(e.class(), crate::send::ErrorClass::Auth);
        assert!(e.to_string().contains("submitRateLimitChallenge"), "{e}");
        let e = classify(r#"{"error":{"code":-1,"message":"Failed to send message","data":{"response":{"timestamp":1,"results":[{"type":"NETWORK_FAILURE","token":"abc-123","retryAfterSeconds":86400}]}}}}"#)
            .expect_err("failed");
        assert_eq!(e.class(), crate::send::ErrorClass::Auth);
        assert!(e.to_string().contains("abc-123"), "{e}");
        let e = classify(r#"{"error":{"code":-1,"message":"Failed to send message","data":{"response":{"timestamp":1,"results":[{"type":"UNREGISTERED_FAILURE"}]}}}}"#)
            .expect_err("failed");
        assert_eq!(e.class(), crate::send::ErrorClass::Permanent);
        let e = classify(
            r#"{"error":{"code":-32602,"message":"Method requires valid account parameter"}}"#,
        )
        .expect_err("failed");
        assert!(e.to_string().contains("channels.signal.account"), "{e}");
    }
}
