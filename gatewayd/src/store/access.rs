//! The records of access control: pending pairing requests with the messages they keep, and
//! what [`Store::pairing_keep`](super::Store::pairing_keep) did with a message.

use crate::message::{ChannelKind, UserId};

use super::BudgetOverride;

/// What the session worker reads of a user before each message, in one read: the access
/// flags and the user's own budget limits.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct UserFlags {
    /// Approved by pairing (or by `gatewayctl pairing approve`).
    pub approved: bool,
    /// Blocked by the operator.
    pub blocked: bool,
    /// The user's budget override (empty when none is set).
    pub budget: BudgetOverride,
}

/// A pending pairing request: an unknown sender waiting for the operator's approval.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PairingRequest {
    /// The code the operator approves or denies.
    pub code: String,
    /// The channel of the sender.
    pub channel: ChannelKind,
    /// The platform's id of the sender.
    pub sender_id: String,
    /// The sender's user.
    pub user_id: UserId,
    /// The name the platform shows for the sender, if any.
    pub display_name: Option<String>,
    /// When the first message came, ms since the epoch.
    pub first_seen_ms: i64,
    /// When the request expires, ms since the epoch.
    pub expires_at_ms: i64,
    /// The inbox ids of the kept messages, oldest first.
    pub kept: Vec<i64>,
}

/// A message of a sender who is not approved, to keep under a pairing request.
#[derive(Debug, Clone)]
pub struct PairingMessage {
    /// Its inbox row.
    pub inbox_id: i64,
    /// The channel.
    pub channel: ChannelKind,
    /// The sender.
    pub sender_id: String,
    /// The sender's user.
    pub user_id: UserId,
    /// The name the platform shows for the sender.
    pub display_name: Option<String>,
    /// Now, ms since the epoch.
    pub now_ms: i64,
    /// When a new request expires.
    pub expires_at_ms: i64,
    /// The code of a new request (used only if one is made; unique among pending codes).
    pub new_code: String,
    /// Messages kept per request; older ones are marked done.
    pub keep_max: usize,
    /// Pending requests allowed per channel.
    pub max_pending: usize,
    /// Minimum time between two pairing replies to one sender, ms.
    pub reply_interval_ms: i64,
}

/// What [`Store::pairing_keep`](super::Store::pairing_keep) did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kept {
    /// The message is kept under the request `code`; `reply` says whether to tell the sender
    /// the code now (a new request, or the last reply is older than the reply interval).
    Kept {
        /// The request's code.
        code: String,
        /// Whether to reply with the code.
        reply: bool,
        /// The request is new.
        new: bool,
    },
    /// The message's row is already done (its request expired or was denied while it was
    /// replayed): nothing to do.
    Settled,
    /// The channel has as many pending requests as allowed: nothing is stored (the message is
    /// marked done); `reply` says whether to tell the sender to try later.
    Full,
}
