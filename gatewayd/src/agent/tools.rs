//! The shared tool registry: every tool the agent and workflows can call, registered once for the
//! whole gateway, each with a name, a description and a JSON Schema for its arguments.
//!
//! [`ToolRegistry::call`] is the only way a tool runs. It finds the tool, checks the arguments
//! against the tool's schema before the tool sees them (a tool never gets arguments its schema
//! refuses), and runs the tool under the timeout it was registered with. Schemas use a small
//! subset of JSON Schema (see [`validate`]); [`ToolRegistry::register`] refuses a schema that uses
//! a keyword outside it, so nothing a schema says goes silently unenforced. The built-ins are
//! [`CurrentTime`], [`HttpGet`] (only to allowlisted hosts, denying everything when the list is
//! empty, with a capped body and no redirect to another host), [`SendMessage`] (only through the
//! outbox, via an [`OutboxSink`], and only where its [`SendScope`] allows) and [`RunWorkflow`]
//! (via a [`WorkflowRunner`]).

mod current_time;
mod http_get;
mod run_workflow;
mod schema;
mod send_message;

use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use serde_json::Value;

use crate::message::{ChannelKind, SessionKey, UserId};

/// What the model is told about a tool.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct ToolSpec {
    /// Unique name: 1 to 64 ASCII letters, digits, `_` or `-`.
    pub name: String,
    /// What the tool does and when to use it, for the model.
    pub description: String,
    /// JSON Schema of the arguments object (the subset [`validate`] understands).
    pub parameters: Value,
}

/// Who a tool is called for. Every field is optional: a workflow started by an operator has no
/// session, chat or user.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ToolCallContext {
    /// The conversation whose agent turn made the call.
    pub session: Option<SessionKey>,
    /// The channel and chat the turn's message came from.
    pub origin: Option<(ChannelKind, String)>,
    /// The user who wrote that message.
    pub user: Option<UserId>,
}

/// Why a tool call failed. The agent hands the text back to the model as the tool's result.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ToolError {
    /// No tool has this name.
    #[error("unknown tool `{0}`")]
    UnknownTool(String),
    /// The arguments do not match the tool's schema; the text names the field.
    #[error("invalid arguments: {0}")]
    InvalidArguments(String),
    /// The tool did not finish within its timeout.
    #[error("the tool did not finish within {0:?}")]
    Timeout(Duration),
    /// The tool ran and failed.
    #[error("the tool failed: {0}")]
    Failed(String),
    /// The call was refused by policy (e.g. a host not on the allowlist).
    #[error("not allowed: {0}")]
    NotAllowed(String),
}

impl ToolError {
    /// Stable lowercase name, for metrics and logs.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::UnknownTool(_) => "unknown_tool",
            Self::InvalidArguments(_) => "invalid_arguments",
            Self::Timeout(_) => "timeout",
            Self::Failed(_) => "failed",
            Self::NotAllowed(_) => "not_allowed",
        }
    }
}

/// Why a tool could not be registered.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RegisterError {
    /// A tool with this name is already registered.
    #[error("tool `{0}` is already registered")]
    Duplicate(String),
    /// The name is not one the OpenAI API accepts.
    #[error("tool name `{0}` is not valid: use 1 to 64 ASCII letters, digits, `_` or `-`")]
    BadName(String),
    /// The schema is not an object schema, or uses something the validator does not support.
    #[error("tool `{tool}` has an unsupported argument schema: {}", errors.join("; "))]
    BadSchema {
        /// The tool.
        tool: String,
        /// Every problem, each with its path in the schema.
        errors: Vec<String>,
    },
}

/// A tool the agent can call.
#[async_trait]
pub trait Tool: Send + Sync {
    /// Name, description and argument schema.
    fn spec(&self) -> &ToolSpec;
    /// Runs the tool. `args` has already been validated against [`spec`](Self::spec)`().parameters`.
    async fn call(&self, args: Value, ctx: &ToolCallContext) -> Result<Value, ToolError>;
}

#[derive(Clone)]
struct Entry {
    tool: Arc<dyn Tool>,
    timeout: Duration,
}

/// The tools of the whole gateway. Cloning shares the same registry.
#[derive(Clone, Default)]
pub struct ToolRegistry {
    tools: Arc<RwLock<BTreeMap<String, Entry>>>,
}

impl std::fmt::Debug for ToolRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let tools = self.tools.read().unwrap_or_else(PoisonError::into_inner);
        f.debug_struct("ToolRegistry")
            .field("tools", &tools.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl ToolRegistry {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds `tool`, run with `timeout` on every call. Refuses a second tool of the same name, a
    /// name the model API would refuse, and a schema outside the supported subset.
    pub fn register(&self, tool: Arc<dyn Tool>, timeout: Duration) -> Result<(), RegisterError> {
        let spec = tool.spec();
        let name = spec.name.clone();
        if !valid_name(&name) {
            return Err(RegisterError::BadName(name));
        }
        let errors = check_schema(&spec.parameters);
        if !errors.is_empty() {
            return Err(RegisterError::BadSchema { tool: name, errors });
        }
        let mut tools = self.tools.write().unwrap_or_else(PoisonError::into_inner);
        if tools.contains_key(&name) {
            return Err(RegisterError::Duplicate(name));
        }
        tools.insert(name, Entry { tool, timeout });
        Ok(())
    }

    /// Every tool's spec, ordered by name.
    pub fn specs(&self) -> Vec<ToolSpec> {
        let tools = self.tools.read().unwrap_or_else(PoisonError::into_inner);
        tools.values().map(|e| e.tool.spec().clone()).collect()
    }

    /// Every tool's name.
    pub fn names(&self) -> HashSet<String> {
        let tools = self.tools.read().unwrap_or_else(PoisonError::into_inner);
        tools.keys().cloned().collect()
    }

    /// Whether no tool is registered.
    pub fn is_empty(&self) -> bool {
        self.tools
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .is_empty()
    }

    /// Calls tool `name`: validates `args` against its schema, then runs it under its timeout.
    pub async fn call(
        &self,
        name: &str,
        args: Value,
        ctx: &ToolCallContext,
    ) -> Result<Value, ToolError> {
        let entry = self
            .tools
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(name)
            .cloned();
        let Some(entry) = entry else {
            tracing::info!(message = "Call of an unknown tool refused.", tool = name);
            return Err(ToolError::UnknownTool(name.to_owned()));
        };
        let started = Instant::now();
        let result = match validate(&entry.tool.spec().parameters, &args) {
            Err(e) => Err(ToolError::InvalidArguments(e)),
            Ok(()) => tokio::time::timeout(entry.timeout, entry.tool.call(args, ctx))
                .await
                .unwrap_or(Err(ToolError::Timeout(entry.timeout))),
        };
        let elapsed_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
        let outcome = result.as_ref().map_or_else(ToolError::kind, |_| "ok");
        metrics::counter!("gateway_tool_calls_total", "tool" => name.to_owned(), "outcome" => outcome)
            .increment(1);
        match &result {
            Ok(_) => tracing::debug!(message = "Tool call done.", tool = name, elapsed_ms),
            Err(e) => {
                tracing::info!(message = "Tool call failed.", tool = name, outcome, elapsed_ms, error = %e)
            }
        }
        result
    }
}

/// Whether `name` is a function name the OpenAI API accepts.
fn valid_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

pub use crate::message::rfc3339_ms;
pub use current_time::CurrentTime;
pub use http_get::{DEFAULT_HTTP_MAX_BYTES, HttpGet};
pub use run_workflow::{RunWorkflow, WorkflowRunner};
pub use schema::{check_schema, validate};
pub use send_message::{MessageTarget, OutboxSink, SendMessage, SendScope, check_scope};

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use serde_json::json;

    use super::*;

    /// Counts calls; sleeps `delay` when called.
    struct Probe {
        spec: ToolSpec,
        calls: AtomicUsize,
        delay: Duration,
    }

    impl Probe {
        fn new(name: &str, delay: Duration) -> Arc<Self> {
            Arc::new(Self {
                spec: ToolSpec {
                    name: name.to_owned(),
                    description: "test".to_owned(),
                    parameters: json!({
                        "type": "object",
                        "properties": {"n": {"type": "integer"}},
                        "required": ["n"],
                        "additionalProperties": false
                    }),
                },
                calls: AtomicUsize::new(0),
                delay,
            })
        }
    }

    #[async_trait]
    impl Tool for Probe {
        fn spec(&self) -> &ToolSpec {
            &self.spec
        }
        async fn call(&self, args: Value, _ctx: &ToolCallContext) -> Result<Value, ToolError> {
            self.calls.fetch_add(1, Ordering::SeqCst);
            tokio::time::sleep(self.delay).await;
            Ok(json!({"got": args["n"]}))
        }
    }

    #[tokio::test]
    async fn registry_validates_first_then_runs_under_the_timeout() {
        let reg = ToolRegistry::new();
        let fast = Probe::new("fast", Duration::ZERO);
        let slow = Probe::new("slow", Duration::from_secs(60));
        reg.register(fast.clone(), Duration::from_secs(5))
            .expect("register fast");
        reg.register(slow.clone(), Duration::from_millis(20))
            .expect("register slow");
        assert_eq!(
            reg.register(Probe::new("fast", Duration::ZERO), Duration::from_secs(1)),
            Err(RegisterError::Duplicate("fast".to_owned()))
        );
        assert_eq!(
            reg.register(
                Probe::new("no spaces", Duration::ZERO),
                Duration::from_secs(1)
            ),
            Err(RegisterError::BadName("no spaces".to_owned()))
        );
        let names: Vec<String> = reg.specs().into_iter().map(|s| s.name).collect();
        assert_eq!(names, ["fast", "slow"]);
        assert_eq!(
            reg.names(),
            HashSet::from(["fast".to_owned(), "slow".to_owned()])
        );

        let ctx = ToolCallContext::default();
        assert_eq!(
            reg.call("fast", json!({"n": 7}), &ctx).await,
            Ok(json!({"got": 7}))
        );
        assert_eq!(
            reg.call("fast", json!({"n": "7"}), &ctx).await,
            Err(ToolError::InvalidArguments(
                "field `n`: expected integer, got a string".to_owned()
            ))
        );
        assert_eq!(
            fast.calls.load(Ordering::SeqCst),
            1,
            "invalid call never ran"
        );
        assert_eq!(
            reg.call("missing", json!({}), &ctx).await,
            Err(ToolError::UnknownTool("missing".to_owned()))
        );
        assert_eq!(
            reg.call("slow", json!({"n": 1}), &ctx).await,
            Err(ToolError::Timeout(Duration::from_millis(20)))
        );
        assert_eq!(slow.calls.load(Ordering::SeqCst), 1);
    }
}
