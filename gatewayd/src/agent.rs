//! The agent: turns a conversation's history and a new message into a reply.
//!
//! It knows nothing of channels. A [`Provider`] produces one completion; [`Agent`] adds the
//! system prompt, the history window, and retries with exponential backoff for failures that may
//! pass (timeouts, refused connections, 5xx, 429). When the last attempt fails the caller gets
//! the error and decides what the user sees.
//!
//! With a [`tools::ToolRegistry`] attached ([`Agent::with_tools`]) and a provider that supports
//! tools, [`Agent::respond_with_tools`] runs the tool-call loop: the registry's tools are offered
//! to the model, each call it asks for goes through the registry (a bad call's error goes back to
//! the model as the call's result, never to the user as a failure), and the model is asked again
//! with the results. The loop runs at most `max_tool_steps` rounds of calls; a model still
//! calling tools after that gets no more, and the user gets an honest "could not finish" reply.
//!
//! [`Agent::respond_counted`] also returns the turn's [`Usage`]: the provider's `usage` counts
//! summed over every request of the turn, each request without them estimated
//! ([`estimate_tokens`], a token per four characters) and the sum then marked `estimated`.

pub mod llm;
pub mod tools;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use serde_json::Value;

use crate::store::{Role, TranscriptEntry};
use tools::{ToolCallContext, ToolError, ToolRegistry, ToolSpec};

/// Rounds of tool calls in one turn unless configured otherwise.
pub const DEFAULT_MAX_TOOL_STEPS: u32 = 5;

/// Tool calls run from one model response; the rest are answered with an error.
pub const MAX_CALLS_PER_STEP: usize = 16;

/// One message of a chat-completion request.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ChatMessage {
    /// `system`, `user` or `assistant`.
    pub role: &'static str,
    /// The text.
    pub content: String,
}

/// A call of a tool the model asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ToolCall {
    /// The id the model gave the call; the result carries it back.
    pub id: String,
    /// The tool's name.
    pub name: String,
    /// The arguments, as the JSON text the model wrote.
    pub arguments: String,
}

/// One message of a tool-using exchange.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    /// A system, user or assistant text message.
    Chat(ChatMessage),
    /// The assistant asking for tool calls (with any text it wrote alongside).
    ToolCalls {
        /// Text the model wrote with the calls, if any.
        content: Option<String>,
        /// The calls, in order.
        calls: Vec<ToolCall>,
    },
    /// The result of one call, as text for the model.
    ToolResult {
        /// The call's id.
        call_id: String,
        /// The result (JSON), or `{"error": ...}`.
        content: String,
    },
}

/// What the model did with one request of a tool-using exchange.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// It answered.
    Answer(String),
    /// It asked for tool calls.
    ToolCalls {
        /// Text the model wrote with the calls, if any.
        content: Option<String>,
        /// The calls, in order.
        calls: Vec<ToolCall>,
    },
}

/// The tokens one turn (or one model request) spent.
///
/// From the provider's `usage` object when it sends one; otherwise estimated with
/// [`estimate_tokens`] from the text sent and received, and marked `estimated`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    /// Tokens of the request(s).
    pub prompt_tokens: u64,
    /// Tokens of the answer(s).
    pub completion_tokens: u64,
    /// Whether any part of the count is an estimate rather than the provider's.
    pub estimated: bool,
}

impl Usage {
    /// The estimate for a request of `sent_chars` characters answered with `received_chars`.
    pub fn estimate(sent_chars: usize, received_chars: usize) -> Self {
        Self {
            prompt_tokens: estimate_tokens(sent_chars),
            completion_tokens: estimate_tokens(received_chars),
            estimated: true,
        }
    }

    /// Both counts summed; estimated if either part is.
    pub fn plus(self, other: Usage) -> Self {
        Self {
            prompt_tokens: self.prompt_tokens.saturating_add(other.prompt_tokens),
            completion_tokens: self
                .completion_tokens
                .saturating_add(other.completion_tokens),
            estimated: self.estimated || other.estimated,
        }
    }

    /// Prompt and completion tokens together.
    pub fn total(&self) -> u64 {
        self.prompt_tokens.saturating_add(self.completion_tokens)
    }
}

/// The token estimate of `chars` characters of text: one token per four characters, rounded up.
pub fn estimate_tokens(chars: usize) -> u64 {
    u64::try_from(chars.div_ceil(4)).unwrap_or(u64::MAX)
}

/// Characters of the text in `messages` (contents, tool names, arguments and results).
fn message_chars(messages: &[Message]) -> usize {
    messages
        .iter()
        .map(|m| match m {
            Message::Chat(c) => c.content.chars().count(),
            Message::ToolCalls { content, calls } => {
                content.as_deref().map_or(0, |c| c.chars().count()) + calls_chars(calls)
            }
            Message::ToolResult { content, .. } => content.chars().count(),
        })
        .sum()
}

fn calls_chars(calls: &[ToolCall]) -> usize {
    calls
        .iter()
        .map(|c| c.name.chars().count() + c.arguments.chars().count())
        .sum()
}

/// Characters of what the model answered in `step`.
fn step_chars(step: &Step) -> usize {
    match step {
        Step::Answer(text) => text.chars().count(),
        Step::ToolCalls { content, calls } => {
            content.as_deref().map_or(0, |c| c.chars().count()) + calls_chars(calls)
        }
    }
}

/// Why a completion failed.
///
/// Nothing the model server sent is kept here: its error bodies and malformed responses are
/// logged once, bounded and redacted, where they arrive (`agent::llm`), so these errors (and
/// what is built from them: replies, transcripts, workflow runs, events) never carry them.
#[derive(Debug, Clone, thiserror::Error)]
pub enum LlmError {
    /// The request took longer than the configured timeout.
    #[error("the model did not answer within {0:?}")]
    Timeout(Duration),
    /// The server could not be reached (the transport's own error, without the URL).
    #[error("cannot reach the model server: {0}")]
    Connect(String),
    /// The server answered with an error status.
    #[error("the model server answered HTTP {status}")]
    Status {
        /// HTTP status code.
        status: u16,
    },
    /// The server answered something that is not a completion; the reason is the gateway's
    /// own words, never the server's.
    #[error("the model server sent an unexpected response: {0}")]
    BadResponse(&'static str),
}

impl LlmError {
    /// Whether trying again may succeed.
    pub fn is_retryable(&self) -> bool {
        match self {
            Self::Timeout(_) | Self::Connect(_) => true,
            Self::Status { status } => *status == 429 || *status >= 500,
            Self::BadResponse(_) => false,
        }
    }

    /// What a chat user is told: the class of the failure only, no detail from the server.
    pub fn user_reason(&self) -> &'static str {
        match self {
            Self::Timeout(_) => "the model did not answer in time",
            Self::Connect(_) => "cannot reach the model server",
            Self::Status { status: 429 } => "the model server is busy",
            Self::Status { status } if *status >= 500 => "the model server had an internal error",
            Self::Status { .. } => "the model server refused the request",
            Self::BadResponse(_) => "the model server sent an unexpected response",
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

    /// Whether [`step`](Self::step) offers tools to the model.
    fn supports_tools(&self) -> bool {
        false
    }

    /// One request of a tool-using exchange, offering `tools`. The default ignores the tools and
    /// completes the text messages.
    async fn step(&self, messages: &[Message], _tools: &[ToolSpec]) -> Result<Step, LlmError> {
        let chat: Vec<ChatMessage> = messages
            .iter()
            .filter_map(|m| match m {
                Message::Chat(c) => Some(c.clone()),
                Message::ToolCalls { .. } | Message::ToolResult { .. } => None,
            })
            .collect();
        self.complete(&chat).await.map(Step::Answer)
    }

    /// [`step`](Self::step), with the `usage` the server reported for it, if any. The default
    /// reports none (the caller estimates).
    async fn step_counted(
        &self,
        messages: &[Message],
        tools: &[ToolSpec],
    ) -> Result<(Step, Option<Usage>), LlmError> {
        self.step(messages, tools).await.map(|s| (s, None))
    }

    /// [`complete`](Self::complete), with the `usage` the server reported for it, if any. The
    /// default reports none (the caller estimates).
    async fn complete_counted(
        &self,
        messages: &[ChatMessage],
    ) -> Result<(String, Option<Usage>), LlmError> {
        self.complete(messages).await.map(|t| (t, None))
    }
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
    tools: Option<ToolRegistry>,
    max_tool_steps: u32,
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
            tools: None,
            max_tool_steps: DEFAULT_MAX_TOOL_STEPS,
        }
    }

    /// Offers the tools of `registry` to the model, allowing at most `max_steps` rounds of tool
    /// calls per turn (at least 1).
    pub fn with_tools(mut self, registry: ToolRegistry, max_steps: u32) -> Self {
        self.tools = Some(registry);
        self.max_tool_steps = max_steps.max(1);
        self
    }

    /// The registry offered to the model, if any.
    pub fn tools(&self) -> Option<&ToolRegistry> {
        self.tools.as_ref()
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

    /// One completion of `prompt` with the `system` prompt (the agent's own when `None`), no
    /// history and no tools, retrying transient failures. For workflow `llm` nodes.
    pub async fn complete(&self, system: Option<&str>, prompt: &str) -> Result<String, LlmError> {
        let mut messages = Vec::with_capacity(2);
        if let Some(p) = system.or(self.system_prompt.as_deref()) {
            messages.push(ChatMessage {
                role: "system",
                content: p.to_owned(),
            });
        }
        messages.push(ChatMessage {
            role: "user",
            content: prompt.to_owned(),
        });
        self.retrying(|| self.provider.complete(&messages)).await
    }

    /// A reply to `input` given `history`, retrying transient failures. Never offers tools.
    pub async fn respond(
        &self,
        history: &[TranscriptEntry],
        input: &str,
    ) -> Result<String, LlmError> {
        let messages = self.messages(history, input);
        self.retrying(|| self.provider.complete(&messages)).await
    }

    /// A reply to `input` given `history`, running the tool-call loop when a registry with tools
    /// is attached and the provider supports tools (otherwise the same as [`respond`](Self::respond)).
    /// Tools run for `ctx`. Each model request is retried like in `respond`.
    pub async fn respond_with_tools(
        &self,
        history: &[TranscriptEntry],
        input: &str,
        ctx: &ToolCallContext,
    ) -> Result<String, LlmError> {
        self.respond_counted(history, input, ctx)
            .await
            .map(|(text, _)| text)
    }

    /// [`respond_with_tools`](Self::respond_with_tools), with the tokens the turn spent: the
    /// sum over every model request of the turn (each round of the tool-call loop), from the
    /// provider's `usage` where it reports one and estimated where it does not.
    pub async fn respond_counted(
        &self,
        history: &[TranscriptEntry],
        input: &str,
        ctx: &ToolCallContext,
    ) -> Result<(String, Usage), LlmError> {
        let registry = match &self.tools {
            Some(r) if self.provider.supports_tools() && !r.is_empty() => r,
            _ => {
                let messages = self.messages(history, input);
                let (text, usage) = self
                    .retrying(|| self.provider.complete_counted(&messages))
                    .await?;
                let usage = usage.unwrap_or_else(|| {
                    Usage::estimate(
                        messages.iter().map(|m| m.content.chars().count()).sum(),
                        text.chars().count(),
                    )
                });
                return Ok((text, usage));
            }
        };
        let specs = registry.specs();
        let mut messages: Vec<Message> = self
            .messages(history, input)
            .into_iter()
            .map(Message::Chat)
            .collect();
        let mut rounds = 0;
        let mut spent = Usage::default();
        loop {
            let (step, usage) = self
                .retrying(|| self.provider.step_counted(&messages, &specs))
                .await?;
            spent =
                spent.plus(usage.unwrap_or_else(|| {
                    Usage::estimate(message_chars(&messages), step_chars(&step))
                }));
            let (content, calls) = match step {
                Step::Answer(text) => return Ok((text, spent)),
                Step::ToolCalls { content, calls } => (content, calls),
            };
            if rounds == self.max_tool_steps {
                tracing::warn!(
                    message =
                        "The model still calls tools after the last allowed round; the turn ends.",
                    provider = self.provider.name(),
                    max_tool_steps = self.max_tool_steps
                );
                return Ok((
                    format!(
                        "I could not finish within {} tool steps.",
                        self.max_tool_steps
                    ),
                    spent,
                ));
            }
            rounds += 1;
            let mut results = Vec::with_capacity(calls.len());
            for (i, call) in calls.iter().enumerate() {
                let content = if i < MAX_CALLS_PER_STEP {
                    run_call(registry, call, ctx).await
                } else {
                    error_result(&format!(
                        "not run: at most {MAX_CALLS_PER_STEP} tool calls are run per step"
                    ))
                };
                results.push(Message::ToolResult {
                    call_id: call.id.clone(),
                    content,
                });
            }
            messages.push(Message::ToolCalls { content, calls });
            messages.extend(results);
        }
    }

    /// Runs `request` until it succeeds, fails for good, or `max_attempts` is reached, waiting
    /// with exponential backoff between attempts.
    async fn retrying<T, F, Fut>(&self, mut request: F) -> Result<T, LlmError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, LlmError>>,
    {
        let mut attempt = 1;
        loop {
            match request().await {
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

/// The result text of one tool call for the model: the tool's JSON output, or an error object
/// saying why the call failed (arguments that are not JSON included).
async fn run_call(registry: &ToolRegistry, call: &ToolCall, ctx: &ToolCallContext) -> String {
    let args = if call.arguments.trim().is_empty() {
        Ok(Value::Object(serde_json::Map::new()))
    } else {
        serde_json::from_str::<Value>(&call.arguments).map_err(|e| {
            ToolError::InvalidArguments(format!("the arguments are not valid JSON ({e})"))
        })
    };
    let result = match args {
        Ok(args) => registry.call(&call.name, args, ctx).await,
        Err(e) => Err(e),
    };
    match result {
        Ok(Value::String(text)) => text,
        Ok(value) => value.to_string(),
        Err(e) => error_result(&e.to_string()),
    }
}

fn error_result(message: &str) -> String {
    serde_json::json!({ "error": message }).to_string()
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

    /// Records the messages of each completion and answers `ok`.
    #[derive(Default)]
    struct Recorder(std::sync::Mutex<Vec<Vec<ChatMessage>>>);

    #[async_trait]
    impl Provider for Recorder {
        fn name(&self) -> &'static str {
            "recorder"
        }
        async fn complete(&self, messages: &[ChatMessage]) -> Result<String, LlmError> {
            if let Ok(mut seen) = self.0.lock() {
                seen.push(messages.to_vec());
            }
            Ok("ok".to_owned())
        }
    }

    #[tokio::test]
    async fn complete_uses_the_given_system_prompt_or_the_agents() {
        let recorder = Arc::new(Recorder::default());
        let agent = Agent::new(recorder.clone(), Some("be brief".into()), 1, Duration::ZERO);
        assert_eq!(agent.complete(None, "p1").await.expect("complete"), "ok");
        assert_eq!(
            agent
                .complete(Some("be long"), "p2")
                .await
                .expect("complete"),
            "ok"
        );
        let msg = |role, content: &str| ChatMessage {
            role,
            content: content.to_owned(),
        };
        let seen = recorder.0.lock().expect("lock").clone();
        assert_eq!(
            seen,
            [
                vec![msg("system", "be brief"), msg("user", "p1")],
                vec![msg("system", "be long"), msg("user", "p2")],
            ]
        );
    }

    #[tokio::test]
    async fn the_echo_provider_ignores_tools() {
        let registry = ToolRegistry::new();
        registry
            .register(Arc::new(tools::CurrentTime::new()), Duration::from_secs(1))
            .expect("register");
        let agent = Agent::new(Arc::new(Echo), None, 1, Duration::ZERO).with_tools(registry, 3);
        assert!(agent.tools().is_some());
        let reply = agent
            .respond_with_tools(&[], "what time is it?", &ToolCallContext::default())
            .await
            .expect("reply");
        assert_eq!(reply, "what time is it?");
    }

    #[tokio::test]
    async fn the_default_step_completes_only_the_text_messages() {
        let messages = [
            Message::Chat(ChatMessage {
                role: "user",
                content: "hi".to_owned(),
            }),
            Message::ToolCalls {
                content: None,
                calls: vec![ToolCall {
                    id: "c1".to_owned(),
                    name: "t".to_owned(),
                    arguments: "{}".to_owned(),
                }],
            },
            Message::ToolResult {
                call_id: "c1".to_owned(),
                content: "{}".to_owned(),
            },
        ];
        assert_eq!(
            Echo.step(&messages, &[]).await.expect("step"),
            Step::Answer("hi".to_owned())
        );
    }

    #[test]
    fn the_estimate_is_a_token_per_four_characters_rounded_up() {
        assert_eq!(estimate_tokens(0), 0);
        assert_eq!(estimate_tokens(1), 1);
        assert_eq!(estimate_tokens(4), 1);
        assert_eq!(estimate_tokens(5), 2);
        assert_eq!(
            Usage::estimate(9, 8),
            Usage {
                prompt_tokens: 3,
                completion_tokens: 2,
                estimated: true
            }
        );
        let reported = Usage {
            prompt_tokens: 10,
            completion_tokens: 1,
            estimated: false,
        };
        assert_eq!(
            reported.plus(Usage::estimate(4, 4)),
            Usage {
                prompt_tokens: 11,
                completion_tokens: 2,
                estimated: true
            }
        );
        assert_eq!(reported.plus(reported).total(), 22);
        assert!(!reported.plus(reported).estimated);
    }

    #[tokio::test]
    async fn the_echo_agent_estimates_its_usage() {
        let agent = Agent::new(Arc::new(Echo), Some("sys!".into()), 1, Duration::ZERO);
        let (reply, usage) = agent
            .respond_counted(&[], "hello", &ToolCallContext::default())
            .await
            .expect("reply");
        assert_eq!(reply, "hello");
        // "sys!" + "hello" = 9 characters sent, 5 received.
        assert_eq!(usage, Usage::estimate(9, 5));
    }

    /// Calls `current_time` once (reporting usage), then answers without usage.
    struct TwoRounds(std::sync::atomic::AtomicU32);

    #[async_trait]
    impl Provider for TwoRounds {
        fn name(&self) -> &'static str {
            "two-rounds"
        }
        async fn complete(&self, _: &[ChatMessage]) -> Result<String, LlmError> {
            Ok(String::new())
        }
        fn supports_tools(&self) -> bool {
            true
        }
        async fn step_counted(
            &self,
            _: &[Message],
            _: &[ToolSpec],
        ) -> Result<(Step, Option<Usage>), LlmError> {
            let round = self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            if round == 0 {
                let calls = vec![ToolCall {
                    id: "c1".to_owned(),
                    name: "current_time".to_owned(),
                    arguments: "{}".to_owned(),
                }];
                let usage = Usage {
                    prompt_tokens: 100,
                    completion_tokens: 7,
                    estimated: false,
                };
                return Ok((
                    Step::ToolCalls {
                        content: None,
                        calls,
                    },
                    Some(usage),
                ));
            }
            Ok((Step::Answer("done!!!!".to_owned()), None))
        }
    }

    #[tokio::test]
    async fn usage_is_summed_over_the_rounds_of_a_turn() {
        let registry = ToolRegistry::new();
        registry
            .register(Arc::new(tools::CurrentTime::new()), Duration::from_secs(1))
            .expect("register");
        let agent = Agent::new(
            Arc::new(TwoRounds(Default::default())),
            None,
            1,
            Duration::ZERO,
        )
        .with_tools(registry, 3);
        let (reply, usage) = agent
            .respond_counted(&[], "time?", &ToolCallContext::default())
            .await
            .expect("reply");
        assert_eq!(reply, "done!!!!");
        assert!(usage.estimated, "the second round had no usage: {usage:?}");
        assert!(usage.prompt_tokens > 100, "{usage:?}");
        // 7 reported + "done!!!!" (8 characters) estimated as 2.
        assert_eq!(usage.completion_tokens, 9);
    }
}
