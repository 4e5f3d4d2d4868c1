//! Dead letters: replies that could not be delivered, each with its history of failed
//! attempts, and the selectors operators retry or drop them by.

use crate::message::{ChannelKind, OutboundMessage};
use crate::send::ErrorClass;

/// A reply that could not be delivered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetter {
    /// The outbox row.
    pub message: OutboundMessage,
    /// The last error.
    pub last_error: String,
    /// The class of the last error.
    pub class: ErrorClass,
    /// When the reply was committed, ms since the epoch.
    pub created_at_ms: i64,
    /// When it became a dead letter, ms since the epoch.
    pub dead_at_ms: i64,
}

/// One failed attempt in a reply's history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttemptError {
    /// When, ms since the epoch.
    pub at_ms: i64,
    /// Attempt number (1-based).
    pub attempt: u32,
    /// Its class.
    pub class: ErrorClass,
    /// What happened.
    pub error: String,
}

/// Which dead letters an operation applies to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeadSelector {
    /// These ids (ids that are not dead letters are ignored).
    Ids(Vec<i64>),
    /// Every dead letter of a channel, optionally only those whose last error had one of
    /// `classes` (recovery retries only the ones a recovery can help).
    Channel {
        /// The channel.
        channel: ChannelKind,
        /// Only these classes, or all.
        classes: Option<Vec<ErrorClass>>,
    },
}
