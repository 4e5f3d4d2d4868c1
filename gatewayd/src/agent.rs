//! The agent: turns a conversation's history and a new message into a reply.
//!
//! It knows nothing of channels. A [`Provider`] produces one completion; [`Agent`] adds the
//! system prompt, the history window, and retries with exponential backoff for failures that may
//! pass (timeouts, refused connections, 5xx, 429). When the last attempt fails the caller gets
//! the error and decides what the user sees.

pub mod llm;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

use crate::store::{Role, TranscriptEntry};

/// One message of a chat-completion request.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ChatMessage {
    /// `system`, `user` or `assistant`.
    pub role: &'static str,
    /// The text.
    pub content: String,
}

/// Why a completion failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum LlmError {
    /// The request took longer than the configured timeout.
    #[error("the model did not answer within {0:?}")]
    Timeout(Duration),
    /// The server could not be reached.
    #[error("cannot reach the model server: {0}")]
    Connect(String),
    /// The server answered with an error status.
    #[error("the model server answered HTTP {status}: {detail}")]
    Status {
        /// HTTP status code.
        status: u16,
        /// The error message from the body, shortened.
        detail: String,
    },
    /// The server answered something that is not a completion.
    #[error("the model server sent an unexpected response: {0}")]
    BadResponse(String),
}

impl LlmError {
    /// Whether trying again may succeed.
    pub fn is_retryable(&self) -> bool {
        match self {
            Self::Timeout(_) | Self::Connect(_) => true,
            Self::Status { status, .. } => *status == 429 || *status >= 500,
            Self::BadResponse(_) => false,
        }
    }
}

/// Something that completes a chat.
#[async_trait]
pub trait Provider: Send + Sync {
    /// Short name for logs: `echo`, `openai`.
    fn name(&self) -> &'static str;
    /// One completion of `messages`; the last message is the user's new one.
    async fn complete(&self, messages: &[ChatMessage]) -> Result<String, LlmError>;
}

/// The offline, deterministic provider: the reply is the user's text.
pub struct Echo;

#[async_trait]
impl Provider for Echo {
    fn name(&self) -> &'static str {
        "echo"
    }

    async fn complete(&self, messages: &[ChatMessage]) -> Result<String, LlmError> {
        Ok(messages
            .last()
            .map(|m| m.content.clone())
            .unwrap_or_default())
    }
}

/// The agent every session shares.
pub struct Agent {
    provider: Arc<dyn Provider>,
    system_prompt: Option<String>,
    max_attempts: u32,
    backoff: Duration,
}

impl Agent {
    /// An agent over `provider`.
    pub fn new(
        provider: Arc<dyn Provider>,
        system_prompt: Option<String>,
        max_attempts: u32,
        backoff: Duration,
    ) -> Self {
        Self {
            provider,
            system_prompt,
            max_attempts: max_attempts.max(1),
            backoff,
        }
    }

    /// The provider's name.
    pub fn provider_name(&self) -> &'static str {
        self.provider.name()
    }

    /// Builds the request: system prompt, the history window (user and assistant turns only),
    /// then the new message.
    pub fn messages(&self, history: &[TranscriptEntry], input: &str) -> Vec<ChatMessage> {
        let mut out = Vec::with_capacity(history.len() + 2);
        if let Some(p) = &self.system_prompt {
            out.push(ChatMessage {
                role: "system",
                content: p.clone(),
            });
        }
        for e in history {
            let role = match e.role {
                Role::User => "user",
                Role::Assistant => "assistant",
                Role::Notice | Role::Reset => continue,
            };
            out.push(ChatMessage {
                role,
                content: e.text.clone(),
            });
        }
        out.push(ChatMessage {
            role: "user",
            content: input.to_owned(),
        });
        out
    }

    /// A reply to `input` given `history`, retrying transient failures.
    pub async fn respond(
        &self,
        history: &[TranscriptEntry],
        input: &str,
    ) -> Result<String, LlmError> {
        let messages = self.messages(history, input);
        let mut attempt = 1;
        loop {
            match self.provider.complete(&messages).await {
                Ok(reply) => return Ok(reply),
                Err(e) if e.is_retryable() && attempt < self.max_attempts => {
                    let delay = self.backoff.saturating_mul(1 << (attempt - 1).min(10));
                    tracing::warn!(
                        message = "Model request failed; retrying.",
                        provider = self.provider.name(),
                        attempt,
                        max_attempts = self.max_attempts,
                        retry_in_ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX),
                        error = %e
                    );
                    tokio::time::sleep(delay).await;
                    attempt += 1;
                }
                Err(e) => return Err(e),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn history_skips_notices_and_ends_with_the_input() {
        let agent = Agent::new(Arc::new(Echo), Some("be brief".into()), 1, Duration::ZERO);
        let entry = |role, text: &str| TranscriptEntry {
            role,
            text: text.to_owned(),
            at_ms: 0,
            channel: None,
        };
        let msgs = agent.messages(
            &[
                entry(Role::User, "a"),
                entry(Role::Notice, "error"),
                entry(Role::Assistant, "b"),
            ],
            "c",
        );
        let roles: Vec<_> = msgs.iter().map(|m| (m.role, m.content.as_str())).collect();
        assert_eq!(
            roles,
            [
                ("system", "be brief"),
                ("user", "a"),
                ("assistant", "b"),
                ("user", "c")
            ]
        );
    }
}
