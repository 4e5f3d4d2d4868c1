//! LLM usage as stored: the tokens each agent turn spent, per user, and the per-user budget
//! overrides the operator set. Budgets are counted from these rows, so they hold across
//! restarts.

use crate::message::{SessionKey, UserId};

/// The tokens one agent turn spent, committed with the turn ([`super::Store::commit_turn_with_usage`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsageRecord {
    /// The user who sent the message.
    pub user: UserId,
    /// The conversation.
    pub session: SessionKey,
    /// The inbox row the turn answers.
    pub inbox_id: i64,
    /// When the turn was made, ms since the epoch.
    pub at_ms: i64,
    /// Tokens of the turn's requests.
    pub prompt_tokens: u64,
    /// Tokens of the turn's answers.
    pub completion_tokens: u64,
    /// Whether the counts are (partly) estimated rather than the provider's.
    pub estimated: bool,
}

/// One user's usage summed over a period.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UsageTotal {
    /// The user.
    pub user: UserId,
    /// Prompt tokens.
    pub prompt_tokens: u64,
    /// Completion tokens.
    pub completion_tokens: u64,
    /// Agent turns.
    pub turns: u64,
    /// Whether any of the turns' counts is estimated.
    pub estimated: bool,
}

impl UsageTotal {
    /// Prompt and completion tokens together.
    pub fn tokens(&self) -> u64 {
        self.prompt_tokens.saturating_add(self.completion_tokens)
    }
}

/// A user's own limits in place of `[budgets]`; `None` keeps the configured one.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BudgetOverride {
    /// Tokens per UTC day.
    pub tokens_per_day: Option<u64>,
    /// Agent turns per sliding 60 seconds.
    pub turns_per_minute: Option<u64>,
}

impl BudgetOverride {
    /// Whether it overrides nothing.
    pub fn is_empty(&self) -> bool {
        self.tokens_per_day.is_none() && self.turns_per_minute.is_none()
    }
}
