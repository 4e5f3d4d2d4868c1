//! What the operator's inspection reads: inbox and outbox rows with their filters, platform
//! receipts of sent messages, and transcript entries traced to the turn that wrote them.

use super::{AttemptError, TranscriptEntry};
use crate::send::ErrorClass;

/// A transcript entry with the inbox row whose turn wrote it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TracedEntry {
    /// The entry.
    pub entry: TranscriptEntry,
    /// The inbox id of its turn; `None` for entries no inbound message caused.
    pub inbox_id: Option<i64>,
}

/// Which inbox rows [`Store::list_inbox`] returns; `None` matches any.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct InboxFilter {
    /// Only this channel (its stored name).
    pub channel: Option<String>,
    /// Only this chat.
    pub chat_id: Option<String>,
    /// Only rows whose turn is committed (`true`) or not yet (`false`).
    pub done: Option<bool>,
}

/// One inbox row as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InboxRecord {
    /// The inbox id.
    pub id: i64,
    /// The channel's stored name.
    pub channel: String,
    /// The channel's id for the message (the deduplication key).
    pub channel_message_id: String,
    /// The chat.
    pub chat_id: String,
    /// `direct` or `group`.
    pub chat_type: String,
    /// The sender on that channel.
    pub sender_id: String,
    /// The platform's display name of the sender, if it gave one.
    pub sender_name: Option<String>,
    /// The text.
    pub text: String,
    /// The channel message id it replies to.
    pub reply_to: Option<String>,
    /// When it was committed, ms since the epoch.
    pub received_at_ms: i64,
    /// Whether its agent turn is committed.
    pub done: bool,
    /// Whether it was dropped because its sender is blocked.
    pub blocked: bool,
}

/// An outbox row's status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutboxStatus {
    /// Still to send.
    Pending,
    /// Sent.
    Delivered,
    /// A dead letter.
    Dead,
    /// A dead letter that was dropped.
    Dropped,
}

impl OutboxStatus {
    /// Stable lowercase name, as stored.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Delivered => "delivered",
            Self::Dead => "dead",
            Self::Dropped => "dropped",
        }
    }

    /// Parses a stored name.
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "pending" => Self::Pending,
            "delivered" => Self::Delivered,
            "dead" => Self::Dead,
            "dropped" => Self::Dropped,
            _ => return None,
        })
    }
}

/// What a platform reported about a message it accepted (WhatsApp's `statuses[]`), in the
/// order it can only move forward: `sent → delivered → read`, and `failed` from any of them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum ReceiptStatus {
    /// The platform sent it on.
    Sent,
    /// It reached the person's device.
    Delivered,
    /// The person read it.
    Read,
    /// The platform could not deliver it after accepting it.
    Failed,
}

impl ReceiptStatus {
    /// Stable lowercase name, as stored and shown.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Sent => "sent",
            Self::Delivered => "delivered",
            Self::Read => "read",
            Self::Failed => "failed",
        }
    }

    /// Parses a stored (or platform) name.
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "sent" => Self::Sent,
            "delivered" => Self::Delivered,
            "read" => Self::Read,
            "failed" => Self::Failed,
            _ => return None,
        })
    }
}

/// Which outbox rows [`Store::list_outbox`] returns; `None` matches any.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OutboxFilter {
    /// Only this channel (its stored name).
    pub channel: Option<String>,
    /// Only this chat.
    pub chat_id: Option<String>,
    /// Only this status.
    pub status: Option<OutboxStatus>,
}

/// One outbox row as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxRecord {
    /// The outbox id.
    pub id: i64,
    /// The inbox row it answers, if any.
    pub inbox_id: Option<i64>,
    /// The channel's stored name.
    pub channel: String,
    /// The chat.
    pub chat_id: String,
    /// The text.
    pub text: String,
    /// The channel message id it answers.
    pub reply_to: Option<String>,
    /// Its status.
    pub status: OutboxStatus,
    /// Attempts made.
    pub attempts: u32,
    /// Chunks of a split reply already delivered.
    pub chunks_sent: u32,
    /// The last error.
    pub last_error: Option<String>,
    /// The class of the last error.
    pub class: Option<ErrorClass>,
    /// When it was committed, ms since the epoch.
    pub created_at_ms: i64,
    /// When it last changed.
    pub updated_at_ms: i64,
    /// Its failed attempts, oldest first (filled only when asked for).
    pub errors: Vec<AttemptError>,
    /// What the platform last reported about it after accepting it (the least advanced of its
    /// chunks, `failed` first); `None` when the platform reports nothing.
    pub receipt: Option<ReceiptStatus>,
    /// The platform's error with a `failed` receipt.
    pub receipt_error: Option<String>,
}
