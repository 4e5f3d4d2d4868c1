//! The send side of a channel, shared by delivery and the adapters: what a sender is
//! ([`ChannelSender`]), what it is handed ([`OutgoingChunk`]), how long one message may be
//! ([`Limit`]), and how a failed send is classified ([`SendError`], [`ErrorClass`]): retry with
//! backoff, hold the channel for re-authentication, or move the reply to the dead letters.
//!
//! This is a leaf module: it depends only on [`crate::message`], so the store, delivery and the
//! adapters can all use it without depending on each other.

use std::time::Duration;

use async_trait::async_trait;

use crate::message::{ChannelKind, OutboundMessage};

/// How a channel measures its limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unit {
    /// Unicode scalar values (Discord, Slack, WhatsApp).
    Chars,
    /// UTF-16 code units (Telegram).
    Utf16,
    /// Bytes of UTF-8 (Signal).
    Utf8Bytes,
}

impl Unit {
    /// The length of `s` in this unit.
    pub fn len(self, s: &str) -> usize {
        match self {
            Self::Chars => s.chars().count(),
            Self::Utf16 => s.encode_utf16().count(),
            Self::Utf8Bytes => s.len(),
        }
    }
}

/// A channel's limit on one message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limit {
    /// Largest message, in `unit`s.
    pub max: usize,
    /// How it is measured.
    pub unit: Unit,
}

/// What delivery should do about a failed send.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorClass {
    /// It may pass: network error, timeout, 5xx, 429.
    Retryable,
    /// The credentials were refused: 401/403, revoked token.
    Auth,
    /// Sending again cannot help: bad request, unknown chat, bot blocked.
    Permanent,
}

impl ErrorClass {
    /// Stable lowercase name, as stored.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Retryable => "retryable",
            Self::Auth => "auth",
            Self::Permanent => "permanent",
        }
    }

    /// Parses a stored name.
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "retryable" => Self::Retryable,
            "auth" => Self::Auth,
            "permanent" => Self::Permanent,
            _ => return None,
        })
    }
}

/// A failed send.
#[derive(Debug, Clone, thiserror::Error)]
pub enum SendError {
    /// It may pass; `retry_after` is the platform's own request to wait.
    #[error("{message}")]
    Retryable {
        /// What happened.
        message: String,
        /// How long the platform asked us to wait, if it did.
        retry_after: Option<Duration>,
        /// Whether the platform's limit covers the whole channel rather than one chat.
        global: bool,
    },
    /// The credentials were refused.
    #[error("authentication refused: {0}")]
    Auth(String),
    /// Sending again cannot help.
    #[error("{0}")]
    Permanent(String),
}

impl SendError {
    /// The class that decides between retrying, holding and dead-lettering.
    pub fn class(&self) -> ErrorClass {
        match self {
            Self::Retryable { .. } => ErrorClass::Retryable,
            Self::Auth(_) => ErrorClass::Auth,
            Self::Permanent(_) => ErrorClass::Permanent,
        }
    }

    /// A retryable error without a platform-requested delay.
    pub fn retryable(message: impl Into<String>) -> Self {
        Self::Retryable {
            message: message.into(),
            retry_after: None,
            global: false,
        }
    }
}

/// One chunk of a reply, as handed to a sender.
#[derive(Debug, Clone, Copy)]
pub struct OutgoingChunk<'a> {
    /// The reply (its `text` is the whole reply; send `text` below).
    pub message: &'a OutboundMessage,
    /// This chunk's text.
    pub text: &'a str,
    /// 0-based index of this chunk.
    pub index: u32,
    /// How many chunks the reply has.
    pub count: u32,
}

impl OutgoingChunk<'_> {
    /// A stable id for this chunk: the outbox id, with `-<n>` for chunks of a split reply.
    pub fn id(&self) -> String {
        if self.count > 1 {
            format!("{}-{}", self.message.id, self.index + 1)
        } else {
            self.message.id.to_string()
        }
    }
}

/// What a platform said about a chunk it accepted.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Sent {
    /// The platform's id of the sent message, for channels that later report on it by that id
    /// (WhatsApp's delivery receipts); `None` when nothing will.
    pub platform_id: Option<String>,
}

impl Sent {
    /// Accepted under the platform's id `id`.
    pub fn with_id(id: impl Into<String>) -> Self {
        Self {
            platform_id: Some(id.into()),
        }
    }
}

/// The sending half of a channel adapter.
#[async_trait]
pub trait ChannelSender: Send + Sync {
    /// Which channel this is.
    fn kind(&self) -> ChannelKind;

    /// The channel's limit on one message; `None` sends every reply whole.
    fn split_limit(&self) -> Option<Limit>;

    /// Sends one chunk. `Ok` means the platform accepted it.
    async fn send(&self, chunk: &OutgoingChunk<'_>) -> Result<Sent, SendError>;

    /// How long after a chat's last inbound message the platform still accepts a free-form
    /// reply in it (WhatsApp: 24 hours); `None`, the default, for no such window. Delivery
    /// checks a reply against it before its first chunk and dead-letters one that is too late,
    /// saying why, instead of sending it to be refused.
    fn reply_window(&self) -> Option<Duration> {
        None
    }

    /// Checks that the channel can be reached, for the health probe and the operator's
    /// reconnect. Channels without a connection of their own answer `Ok`.
    async fn probe(&self) -> Result<(), SendError> {
        Ok(())
    }
}

/// Classifies an HTTP status the way most platform APIs use them.
pub fn classify_status(status: u16, retry_after: Option<Duration>, detail: &str) -> SendError {
    let message = format!("HTTP {status}: {detail}");
    match status {
        429 => SendError::Retryable {
            message,
            retry_after,
            global: false,
        },
        401 | 403 => SendError::Auth(message),
        s if s >= 500 => SendError::Retryable {
            message,
            retry_after,
            global: false,
        },
        _ => SendError::Permanent(message),
    }
}

/// The longest wait a platform can impose through `retry_after` or `Retry-After`: a longer
/// request is cut to this, so a hostile or broken answer cannot park a chat or a channel for days
/// (or overflow a clock). The send is tried again then, and a platform still limiting says so again.
pub const MAX_PLATFORM_DELAY: Duration = Duration::from_secs(3600);

/// A platform-supplied wait in seconds as a [`Duration`], capped at [`MAX_PLATFORM_DELAY`].
/// `None` for a negative, NaN or infinite number: the caller then uses its own backoff.
pub fn platform_delay_secs(secs: f64) -> Option<Duration> {
    if !secs.is_finite() || secs < 0.0 {
        return None;
    }
    if secs == 0.0 {
        return Some(Duration::ZERO);
    }
    let capped = secs.min(MAX_PLATFORM_DELAY.as_secs_f64());
    Some(
        Duration::try_from_secs_f64(capped)
            .map_or(MAX_PLATFORM_DELAY, |d| d.min(MAX_PLATFORM_DELAY)),
    )
}

/// Parses a `Retry-After` header: delay-seconds (a decimal fraction is accepted too) or an HTTP
/// date; capped at [`MAX_PLATFORM_DELAY`], and `None` for anything else.
pub fn parse_retry_after(value: &str) -> Option<Duration> {
    let value = value.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs).min(MAX_PLATFORM_DELAY));
    }
    if value.starts_with(|c: char| c.is_ascii_digit()) {
        return value.parse::<f64>().ok().and_then(platform_delay_secs);
    }
    let when = httpdate::parse_http_date(value).ok()?;
    Some(
        when.duration_since(std::time::SystemTime::now())
            .unwrap_or(Duration::ZERO)
            .min(MAX_PLATFORM_DELAY),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_fall_into_their_classes() {
        for (status, class) in [
            (429, ErrorClass::Retryable),
            (500, ErrorClass::Retryable),
            (503, ErrorClass::Retryable),
            (401, ErrorClass::Auth),
            (403, ErrorClass::Auth),
            (400, ErrorClass::Permanent),
            (404, ErrorClass::Permanent),
        ] {
            assert_eq!(
                classify_status(status, None, "x").class(),
                class,
                "{status}"
            );
        }
    }

    #[test]
    fn retry_after_reads_seconds_and_dates() {
        assert_eq!(parse_retry_after("7"), Some(Duration::from_secs(7)));
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT"),
            Some(Duration::ZERO)
        );
        assert_eq!(parse_retry_after("soon"), None);
    }
}
