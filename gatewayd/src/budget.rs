//! LLM budgets: what each user, and the gateway as a whole, may spend, checked just before an
//! agent turn (after gateway commands) and counted from the store's `usage` rows, so they hold
//! across restarts.
//!
//! The limits are `[budgets]` (`user_tokens_per_day`, `user_turns_per_minute`,
//! `global_tokens_per_day`; an absent key is no limit), with a user's own override from the
//! store (`gatewayctl budgets set`) in place of the user limits. Tokens per day count prompt and
//! completion tokens over the UTC calendar day and reset at 00:00 UTC; turns per minute count
//! agent turns over a sliding 60 seconds. A turn that starts under a limit runs to its end, so
//! a day's tokens can end a little above the limit.
//!
//! A sender over a limit gets one reply saying which limit and when it resets; further
//! messages refused within the same window (until that reset) are kept in the history without
//! a reply. Which refusals were answered is remembered by this process only: after a restart a
//! sender still over a limit is told once more. Every refusal counts in
//! `gateway_budget_refusals_total`; every recorded turn adds to
//! `gateway_llm_tokens_total{kind="prompt|completion"}`.

pub mod window;

use std::collections::HashMap;
use std::sync::Mutex;

use crate::agent::Usage;
use crate::config::BudgetsConfig;
use crate::message::UserId;
use crate::store::{BudgetOverride, SharedStore, StoreError};

/// Remembered refusals beyond which the expired ones are dropped.
const REMEMBERED_REFUSALS: usize = 10_000;

/// Which limit a sender reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limit {
    /// The user's tokens for the UTC day.
    UserTokensPerDay(u64),
    /// The user's turns in the sliding minute.
    UserTurnsPerMinute(u64),
    /// The gateway's tokens for the UTC day.
    GlobalTokensPerDay(u64),
}

impl Limit {
    /// The configuration key of the limit.
    pub fn key(&self) -> &'static str {
        match self {
            Self::UserTokensPerDay(_) => "user_tokens_per_day",
            Self::UserTurnsPerMinute(_) => "user_turns_per_minute",
            Self::GlobalTokensPerDay(_) => "global_tokens_per_day",
        }
    }
}

/// A turn refused for its budget.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// The limit reached.
    pub limit: Limit,
    /// When it resets, ms since the epoch.
    pub resets_at_ms: i64,
    /// What the sender is told, or `None` when they were already told in this window.
    pub reply: Option<String>,
}

/// The text that tells a sender why they get no answer and when that changes.
pub fn refusal_text(limit: Limit, now_ms: i64, resets_at_ms: i64) -> String {
    let wait = window::until(now_ms, resets_at_ms);
    match limit {
        Limit::UserTokensPerDay(n) => format!(
            "You have used today's {n} tokens; the budget resets at 00:00 UTC (in {wait}). Your message is saved but will not be answered."
        ),
        Limit::GlobalTokensPerDay(n) => format!(
            "The assistant has used all of today's {n} tokens for everyone; the budget resets at 00:00 UTC (in {wait}). Your message is saved but will not be answered."
        ),
        Limit::UserTurnsPerMinute(n) => format!(
            "You have sent {n} messages to the assistant within the last minute, the most allowed; you can send another at {} UTC (in {wait}). Your message is saved but will not be answered.",
            window::clock(resets_at_ms)
        ),
    }
}

/// The budgets of one gateway.
pub struct Budgets {
    config: BudgetsConfig,
    store: SharedStore,
    /// Per user, the reset time of the last refusal they were told about.
    told: Mutex<HashMap<UserId, i64>>,
}

impl Budgets {
    /// Budgets with the limits of `config`, counted from `store`.
    pub fn new(config: BudgetsConfig, store: SharedStore) -> Self {
        Self {
            config,
            store,
            told: Mutex::new(HashMap::new()),
        }
    }

    /// Whether `user` may have an agent turn at `now_ms`; `Some` with the refusal if not. A store
    /// that cannot be read lets the turn through (logged): a budget is not worth losing an
    /// answer over a failed read.
    pub async fn check(&self, user: UserId, now_ms: i64) -> Option<Refusal> {
        match self.store.budget_override(user).await {
            Ok(own) => self.check_with(user, now_ms, own).await,
            Err(e) => {
                tracing::error!(message = "Cannot read the user's budget override to check the budget; the turn goes ahead unchecked.", user, error = %e);
                None
            }
        }
    }

    /// [`Budgets::check`] with the user's override `own` already read (the worker reads it
    /// with the access flags, in one read). With no limit configured and none of the user's
    /// own, nothing more is read.
    pub async fn check_with(
        &self,
        user: UserId,
        now_ms: i64,
        own: BudgetOverride,
    ) -> Option<Refusal> {
        match self.over(user, now_ms, own).await {
            Ok(None) => None,
            Ok(Some((limit, resets_at_ms))) => {
                metrics::counter!("gateway_budget_refusals_total").increment(1);
                let tell = self.first_in_window(user, now_ms, resets_at_ms);
                tracing::info!(
                    message = "Turn refused: over budget.",
                    user,
                    limit = limit.key(),
                    resets_at_ms,
                    replied = tell
                );
                Some(Refusal {
                    limit,
                    resets_at_ms,
                    reply: tell.then(|| refusal_text(limit, now_ms, resets_at_ms)),
                })
            }
            Err(e) => {
                tracing::error!(message = "Cannot read the usage to check the budget; the turn goes ahead unchecked.", user, error = %e);
                None
            }
        }
    }

    /// The first limit `user` is over at `now_ms`, and when it resets.
    async fn over(
        &self,
        user: UserId,
        now_ms: i64,
        own: BudgetOverride,
    ) -> Result<Option<(Limit, i64)>, StoreError> {
        let c = self.config;
        let tokens = own.tokens_per_day.or(c.user_tokens_per_day);
        let turns = own.turns_per_minute.or(c.user_turns_per_minute);
        if let Some(limit) = turns {
            let times = self
                .store
                .turn_times(user, window::minute_start(now_ms))
                .await?;
            if let Some(at) = window::turns_reset_at(&times, limit, now_ms) {
                return Ok(Some((Limit::UserTurnsPerMinute(limit), at)));
            }
        }
        let midnight = window::next_midnight(now_ms);
        if let Some(limit) = tokens {
            let used: u64 = self
                .store
                .usage_totals(Some(user), window::day_start(now_ms))
                .await?
                .iter()
                .map(|t| t.tokens())
                .sum();
            if used >= limit {
                return Ok(Some((Limit::UserTokensPerDay(limit), midnight)));
            }
        }
        if let Some(limit) = c.global_tokens_per_day {
            let used = self.global_today(now_ms).await?;
            if used >= limit {
                return Ok(Some((Limit::GlobalTokensPerDay(limit), midnight)));
            }
        }
        Ok(None)
    }

    /// Tokens the whole gateway spent in the UTC day of `now_ms`.
    pub async fn global_today(&self, now_ms: i64) -> Result<u64, StoreError> {
        Ok(self
            .store
            .usage_totals(None, window::day_start(now_ms))
            .await?
            .iter()
            .fold(0u64, |sum, t| sum.saturating_add(t.tokens())))
    }

    /// The configured limits.
    pub fn config(&self) -> BudgetsConfig {
        self.config
    }

    /// Whether this refusal is the first `user` gets for the window ending at `resets_at_ms`
    /// (and, if so, remembers it).
    fn first_in_window(&self, user: UserId, now_ms: i64, resets_at_ms: i64) -> bool {
        let Ok(mut told) = self.told.lock() else {
            return true;
        };
        if told.get(&user).is_some_and(|until| now_ms < *until) {
            return false;
        }
        if told.len() >= REMEMBERED_REFUSALS {
            told.retain(|_, until| now_ms < *until);
        }
        told.insert(user, resets_at_ms);
        true
    }
}

/// Counts a committed turn's tokens in `gateway_llm_tokens_total`.
pub fn record_metrics(usage: &Usage) {
    metrics::counter!("gateway_llm_tokens_total", "kind" => "prompt")
        .increment(usage.prompt_tokens);
    metrics::counter!("gateway_llm_tokens_total", "kind" => "completion")
        .increment(usage.completion_tokens);
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::message::{ChannelKind, ChatType, InboundMessage, SessionKey, now_ms};
    use crate::store::sqlite::SqliteStore;
    use crate::store::{BudgetOverride, InboxOutcome, TurnRecord, UsageRecord};

    async fn spend(store: &SharedStore, id: &str, user: UserId, at_ms: i64, tokens: u64) {
        let msg = InboundMessage {
            channel: ChannelKind::new("http"),
            channel_message_id: id.to_owned(),
            chat_id: "c".to_owned(),
            chat_type: ChatType::Direct,
            sender_id: format!("s{user}"),
            text: "hi".to_owned(),
            reply_to: None,
            attachments: Vec::new(),
            sender_name: None,
            mentioned: false,
            received_at_ms: now_ms(),
        };
        let InboxOutcome::New(inbox_id) = store.inbox_commit(&msg).await.expect("inbox") else {
            panic!("duplicate {id}");
        };
        let turn = TurnRecord {
            inbox_id,
            session: SessionKey::User(user),
            entries: Vec::new(),
            replies: Vec::new(),
            fence: None,
        };
        let usage = UsageRecord {
            user,
            session: SessionKey::User(user),
            inbox_id,
            at_ms,
            prompt_tokens: tokens,
            completion_tokens: 0,
            estimated: false,
        };
        store
            .commit_turn_with_usage(turn, Some(usage))
            .await
            .expect("turn");
    }

    #[tokio::test]
    async fn limits_are_checked_from_the_store_and_told_once_per_window() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store: SharedStore =
            Arc::new(SqliteStore::open(&dir.path().join("g.db")).expect("open"));
        let budgets = Budgets::new(
            BudgetsConfig {
                user_tokens_per_day: Some(100),
                user_turns_per_minute: Some(2),
                global_tokens_per_day: Some(1000),
            },
            store.clone(),
        );
        // Noon UTC of today, so no step below crosses a midnight.
        let now = window::day_start(now_ms()) + window::DAY_MS / 2;
        assert_eq!(budgets.check(1, now).await, None);
        // Yesterday's tokens do not count today.
        spend(&store, "y", 1, window::day_start(now) - 1, 500).await;
        assert_eq!(budgets.check(1, now).await, None);
        spend(&store, "a", 1, now - 2_000, 60).await;
        spend(&store, "b", 1, now - 1_000, 60).await;
        // Two turns in the minute: the turn limit comes first, resetting as the older leaves.
        let refusal = budgets.check(1, now).await.expect("refused");
        assert_eq!(refusal.limit, Limit::UserTurnsPerMinute(2));
        assert_eq!(refusal.resets_at_ms, now - 2_000 + 60_000);
        let text = refusal.reply.expect("told the first time");
        assert!(text.contains("within the last minute"), "{text}");
        assert!(text.contains("(in 58 s)"), "{text}");
        // Told once per window.
        assert_eq!(
            budgets.check(1, now + 10).await.expect("refused").reply,
            None
        );
        // After the window the tokens limit (120 of 100 today) is what holds; a new window,
        // so the sender is told again.
        let later = now + 60_000;
        let refusal = budgets.check(1, later).await.expect("refused");
        assert_eq!(refusal.limit, Limit::UserTokensPerDay(100));
        assert_eq!(refusal.resets_at_ms, window::next_midnight(later));
        let text = refusal.reply.expect("a new window is told");
        assert!(
            text.contains("today's 100 tokens") && text.contains("00:00 UTC"),
            "{text}"
        );
        // An override raises the user's limits.
        store
            .set_budget_override(
                1,
                BudgetOverride {
                    tokens_per_day: Some(1_000_000),
                    turns_per_minute: None,
                },
            )
            .await
            .expect("override");
        assert_eq!(budgets.check(1, later).await, None);
        // Another user is not limited by user 1's use, until the gateway's day is spent.
        assert_eq!(budgets.check(2, later).await, None);
        spend(&store, "c", 2, later - 1, 90).await;
        spend(&store, "d", 3, later - 1, 800).await;
        let refusal = budgets.check(2, later).await.expect("refused");
        assert_eq!(refusal.limit, Limit::GlobalTokensPerDay(1000));
        assert_eq!(budgets.global_today(later).await.expect("global"), 1010);
    }
}
