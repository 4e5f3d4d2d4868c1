//! Rows of the message path as the store hands them out: committed inbound messages,
//! transcript entries, the turn record committed atomically, replies, sessions and users.

use crate::message::{Address, ChannelKind, InboundMessage, SessionKey, UserId};

/// The result of committing an inbound message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InboxOutcome {
    /// Stored for the first time under this inbox id.
    New(i64),
    /// Seen before; carries the id of the first copy.
    Duplicate(i64),
}

/// An inbound message that was committed but has no finished turn yet.
#[derive(Debug, Clone)]
pub struct PendingInbound {
    /// Inbox row id.
    pub inbox_id: i64,
    /// The message.
    pub message: InboundMessage,
}

/// Who wrote a transcript entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// The person.
    User,
    /// The agent.
    Assistant,
    /// A gateway notice (an error reply); kept in the transcript, not sent to the agent.
    Notice,
    /// The start of a fresh session (`/reset`); entries before it are history, not context.
    Reset,
}

impl Role {
    /// Stable lowercase name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::User => "user",
            Self::Assistant => "assistant",
            Self::Notice => "notice",
            Self::Reset => "reset",
        }
    }

    /// Parses a stored role name.
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "user" => Self::User,
            "assistant" => Self::Assistant,
            "notice" => Self::Notice,
            "reset" => Self::Reset,
            _ => return None,
        })
    }
}

/// One stored line of a conversation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TranscriptEntry {
    /// Who wrote it.
    pub role: Role,
    /// What was said.
    pub text: String,
    /// When, milliseconds since the Unix epoch.
    pub at_ms: i64,
    /// The channel it was said on (the inbound channel for both sides of a turn).
    pub channel: Option<ChannelKind>,
}

/// A reply to commit with a turn.
#[derive(Debug, Clone)]
pub struct NewReply {
    /// Channel to send on.
    pub channel: ChannelKind,
    /// Chat to send to.
    pub chat_id: String,
    /// The text.
    pub text: String,
    /// The channel message id it answers.
    pub reply_to: Option<String>,
}

/// Everything one finished turn changes, committed atomically by [`Store::commit_turn`].
#[derive(Debug, Clone)]
pub struct TurnRecord {
    /// The inbox row this turn answers; marked done.
    pub inbox_id: i64,
    /// The conversation.
    pub session: SessionKey,
    /// Entries to append to the transcript, in order.
    pub entries: Vec<TranscriptEntry>,
    /// Replies to put in the outbox, in order.
    pub replies: Vec<NewReply>,
    /// In multi-instance mode, the lease of the session's partition the turn is committed
    /// under: the store refuses the turn ([`StoreError::Fenced`](super::StoreError::Fenced))
    /// unless it still holds, and files the replies under that partition. `None` otherwise.
    pub fence: Option<super::cluster::Fence>,
}

/// A stored user with their addresses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserRecord {
    /// The user id.
    pub id: UserId,
    /// Every address linked to the user, sorted.
    pub addresses: Vec<Address>,
}

/// A stored conversation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredSession {
    /// The key.
    pub key: SessionKey,
    /// When its first turn was committed, ms since the epoch.
    pub created_at_ms: i64,
    /// When its last turn was committed.
    pub last_active_ms: i64,
    /// Turns committed.
    pub turns: u64,
    /// The channel of the last message.
    pub last_channel: Option<ChannelKind>,
}

/// Which stored sessions to list.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SessionFilter {
    /// Only the direct session of this user.
    pub user: Option<UserId>,
    /// Only sessions whose last message came on this channel.
    pub channel: Option<ChannelKind>,
}
