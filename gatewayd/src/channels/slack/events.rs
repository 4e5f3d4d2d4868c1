//! The Events API webhook: request signing ([`verify`], [`sign`]) and the handler of
//! `events_path`. The signature (`X-Slack-Signature: v0=<hex HMAC-SHA256>` over
//! `v0:{X-Slack-Request-Timestamp}:{raw body}`) is checked over the raw bytes before anything is
//! parsed, in constant time, and a timestamp more than five minutes off is refused; every
//! failure is a 401 naming what was wrong (never the secret) and nothing is stored. A
//! `url_verification` answers its challenge; an `event_callback` is answered 200 only after its
//! commit (a repeat too), 503 when it cannot be committed or the bot is not identified yet.

use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use hmac::{Hmac, Mac};
use serde_json::json;
use sha2::Sha256;

use super::normalize::Callback;
use super::{BODY_LIMIT, Intake, Refused};
use crate::channels::webhook::{error, read_body};

/// How far a request's timestamp may be from now.
pub const MAX_SKEW_SECS: i64 = 300;

/// Why a request's signature was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    /// No `X-Slack-Request-Timestamp`.
    #[error("missing X-Slack-Request-Timestamp")]
    MissingTimestamp,
    /// A timestamp that is not whole seconds.
    #[error("X-Slack-Request-Timestamp is not a number of seconds")]
    BadTimestamp,
    /// A timestamp more than five minutes from now.
    #[error("X-Slack-Request-Timestamp is more than 5 minutes off the gateway's clock")]
    Stale,
    /// No `X-Slack-Signature`.
    #[error("missing X-Slack-Signature")]
    MissingSignature,
    /// A signature that is not `v0=` and 64 hex digits.
    #[error("X-Slack-Signature is not `v0=` followed by a hex HMAC-SHA256")]
    BadFormat,
    /// A well-formed signature that does not match.
    #[error("X-Slack-Signature does not match the request (check channels.slack.signing_secret)")]
    Mismatch,
}

fn mac(secret: &[u8], timestamp: &str, body: &[u8]) -> Hmac<Sha256> {
    // HMAC takes a key of any length.
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(secret)
        .unwrap_or_else(|_| unreachable!("HMAC accepts every key length"));
    mac.update(b"v0:");
    mac.update(timestamp.as_bytes());
    mac.update(b":");
    mac.update(body);
    mac
}

/// The `X-Slack-Signature` value of `body` sent at `timestamp`: `v0=` and the hex HMAC.
pub fn sign(secret: &[u8], timestamp: &str, body: &[u8]) -> String {
    format!(
        "v0={}",
        hex::encode(mac(secret, timestamp, body).finalize().into_bytes())
    )
}

/// Checks a request's `timestamp` and `signature` headers over its raw `body` at `now_secs`.
pub fn verify(
    secret: &[u8],
    timestamp: Option<&str>,
    signature: Option<&str>,
    body: &[u8],
    now_secs: i64,
) -> Result<(), SignatureError> {
    let timestamp = timestamp.ok_or(SignatureError::MissingTimestamp)?.trim();
    let secs: i64 = timestamp
        .parse()
        .map_err(|_| SignatureError::BadTimestamp)?;
    if now_secs.abs_diff(secs) > MAX_SKEW_SECS.unsigned_abs() {
        return Err(SignatureError::Stale);
    }
    let signature = signature.ok_or(SignatureError::MissingSignature)?.trim();
    let digest = signature
        .strip_prefix("v0=")
        .and_then(|h| hex::decode(h).ok())
        .filter(|d| d.len() == 32)
        .ok_or(SignatureError::BadFormat)?;
    mac(secret, timestamp, body)
        .verify_slice(&digest)
        .map_err(|_| SignatureError::Mismatch)
}

/// What the handler needs.
#[derive(Clone)]
pub(crate) struct Hook {
    pub(crate) intake: Arc<Intake>,
    pub(crate) secret: Arc<[u8]>,
    pub(crate) body_timeout: Duration,
}

fn now_secs() -> i64 {
    crate::message::now_ms().div_euclid(1000)
}

fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

pub(crate) async fn slack_event(
    State(hook): State<Hook>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let too_large = || format!("body is larger than {BODY_LIMIT} bytes");
    let body = match read_body(&headers, body, BODY_LIMIT, hook.body_timeout, too_large).await {
        Ok(b) => b,
        Err(response) => return response,
    };
    if let Err(e) = verify(
        &hook.secret,
        header(&headers, "x-slack-request-timestamp"),
        header(&headers, "x-slack-signature"),
        &body,
        now_secs(),
    ) {
        tracing::warn!(message = "Slack event refused: bad signature.", error = %e);
        return error(StatusCode::UNAUTHORIZED, e.to_string());
    }
    let callback: Callback = match serde_json::from_slice(&body) {
        Ok(c) => c,
        Err(e) => {
            return error(StatusCode::BAD_REQUEST, format!("not a Slack event: {e}"));
        }
    };
    if callback.kind == "url_verification" {
        let challenge = callback.challenge.unwrap_or_default();
        return (StatusCode::OK, Json(json!({"challenge": challenge}))).into_response();
    }
    let retry = header(&headers, "x-slack-retry-num").unwrap_or("0");
    match hook.intake.take(&callback).await {
        Ok(()) => (StatusCode::OK, Json(json!({"ok": true}))).into_response(),
        Err(Refused::NoIdentity) => {
            tracing::warn!(
                message = "Slack event before the bot is identified (auth.test); Slack will deliver it again.",
                event_id = callback.event_id.as_deref().unwrap_or_default()
            );
            error(
                StatusCode::SERVICE_UNAVAILABLE,
                "the bot's identity (auth.test) is not known yet".to_owned(),
            )
        }
        Err(Refused::Store(e)) => {
            tracing::error!(message = "Cannot commit a Slack event; Slack will deliver it again.", event_id = callback.event_id.as_deref().unwrap_or_default(), retry, error = %e);
            error(
                StatusCode::SERVICE_UNAVAILABLE,
                "cannot store the event right now".to_owned(),
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &[u8] = b"8f742231b10e8888abcd99yyyzzz85a5";
    const TS: &str = "1531420618";
    const BODY: &str = "token=xyzz0WbapA4vBCDEFasx0q6G&team_id=T1DC2JH3J&team_domain=testteamnow&channel_id=G8PSS9T3V&channel_name=foobar&user_id=U2CERLKJA&user_name=roadrunner&command=%2Fwebhook-collect&text=&response_url=https%3A%2F%2Fhooks.slack.com%2Fcommands%2FT1DC2JH3J%2F397700885554%2F96rGlfmibIGlgcZRskXaIFfN&trigger_id=398738663015.47445629121.803a0bc887a14d10d2c447fce8b6703c";
    const SIGNATURE: &str = "v0=a2114d57b48eac39b9ad189dd8316235a7b4a8d21a10bd27519666489c69b503";
    const NOW: i64 = 1_531_420_618;

    fn check(
        secret: &[u8],
        ts: Option<&str>,
        sig: Option<&str>,
        now: i64,
    ) -> Result<(), SignatureError> {
        verify(secret, ts, sig, BODY.as_bytes(), now)
    }

    #[test]
    fn the_official_vector_signs_and_verifies() {
        assert_eq!(sign(SECRET, TS, BODY.as_bytes()), SIGNATURE);
        assert_eq!(check(SECRET, Some(TS), Some(SIGNATURE), NOW), Ok(()));
        assert_eq!(
            check(SECRET, Some(TS), Some(SIGNATURE), NOW + 299),
            Ok(()),
            "within five minutes"
        );
    }

    #[test]
    fn every_signature_failure_is_named() {
        for (secret, ts, sig, now, want) in [
            (
                &b"wrong-secret"[..],
                Some(TS),
                Some(SIGNATURE),
                NOW,
                SignatureError::Mismatch,
            ),
            (
                SECRET,
                Some(TS),
                Some(SIGNATURE),
                NOW + 301,
                SignatureError::Stale,
            ),
            (
                SECRET,
                Some(TS),
                Some(SIGNATURE),
                NOW - 301,
                SignatureError::Stale,
            ),
            (
                SECRET,
                Some(TS),
                Some("v0=zz14d57b"),
                NOW,
                SignatureError::BadFormat,
            ),
            (
                SECRET,
                Some(TS),
                Some(&SIGNATURE[3..]),
                NOW,
                SignatureError::BadFormat,
            ),
            (
                SECRET,
                Some(TS),
                Some("v0=a2114d57"),
                NOW,
                SignatureError::BadFormat,
            ),
            (
                SECRET,
                None,
                Some(SIGNATURE),
                NOW,
                SignatureError::MissingTimestamp,
            ),
            (
                SECRET,
                Some("soon"),
                Some(SIGNATURE),
                NOW,
                SignatureError::BadTimestamp,
            ),
            (
                SECRET,
                Some(TS),
                None,
                NOW,
                SignatureError::MissingSignature,
            ),
            (
                SECRET,
                Some("1531420619"),
                Some(SIGNATURE),
                NOW,
                SignatureError::Mismatch,
            ),
        ] {
            assert_eq!(check(secret, ts, sig, now), Err(want.clone()), "{want:?}");
            assert!(
                !want.to_string().contains("8f742231"),
                "the message never holds the secret"
            );
        }
        let tampered = BODY.replace("roadrunner", "coyote");
        assert_eq!(
            verify(SECRET, Some(TS), Some(SIGNATURE), tampered.as_bytes(), NOW),
            Err(SignatureError::Mismatch)
        );
    }
}
