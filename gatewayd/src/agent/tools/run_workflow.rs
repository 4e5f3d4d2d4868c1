//! `run_workflow`: starts a workflow run by name (via a [`WorkflowRunner`]) and returns its run id
//! without waiting for it to finish.

use std::sync::Arc;

use async_trait::async_trait;
use serde_json::{Map, Value, json};

use super::{Tool, ToolCallContext, ToolError, ToolSpec};

/// Starts workflow runs for `run_workflow`.
#[async_trait]
pub trait WorkflowRunner: Send + Sync {
    /// Starts workflow `name` with `inputs` for `ctx` and returns the run id without waiting for
    /// it to finish. An unknown workflow or bad inputs are an error the model can read.
    async fn start(
        &self,
        name: &str,
        inputs: Value,
        ctx: &ToolCallContext,
    ) -> Result<String, String>;
}

/// `run_workflow`: starts a workflow run.
pub struct RunWorkflow {
    spec: ToolSpec,
    runner: Arc<dyn WorkflowRunner>,
}

impl RunWorkflow {
    /// The tool, starting runs through `runner`.
    pub fn new(runner: Arc<dyn WorkflowRunner>) -> Self {
        Self {
            spec: ToolSpec {
                name: "run_workflow".to_owned(),
                description: "Starts a workflow by name with input values and returns its run id; \
                              the workflow runs in the background."
                    .to_owned(),
                parameters: json!({
                    "type": "object",
                    "properties": {
                        "name": {"type": "string", "description": "The workflow's name.", "minLength": 1, "maxLength": 128},
                        "inputs": {"type": "object", "description": "The workflow's inputs, by name."}
                    },
                    "required": ["name"],
                    "additionalProperties": false
                }),
            },
            runner,
        }
    }
}

#[async_trait]
impl Tool for RunWorkflow {
    fn spec(&self) -> &ToolSpec {
        &self.spec
    }

    async fn call(&self, args: Value, ctx: &ToolCallContext) -> Result<Value, ToolError> {
        let name = args
            .get("name")
            .and_then(Value::as_str)
            .ok_or_else(|| ToolError::InvalidArguments("field `name` is required".to_owned()))?;
        let inputs = args
            .get("inputs")
            .cloned()
            .unwrap_or_else(|| Value::Object(Map::new()));
        let run_id = self
            .runner
            .start(name, inputs, ctx)
            .await
            .map_err(ToolError::Failed)?;
        Ok(json!({"run_id": run_id, "status": "started"}))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;
    use std::time::Duration;

    use super::super::ToolRegistry;
    use crate::message::{ChannelKind, SessionKey};

    use super::*;

    #[derive(Default)]
    struct Runner(Mutex<Vec<(String, Value, ToolCallContext)>>);

    #[async_trait]
    impl WorkflowRunner for Runner {
        async fn start(
            &self,
            name: &str,
            inputs: Value,
            ctx: &ToolCallContext,
        ) -> Result<String, String> {
            if name != "digest" {
                return Err(format!("unknown workflow `{name}`"));
            }
            let mut runs = self.0.lock().map_err(|e| e.to_string())?;
            runs.push((name.to_owned(), inputs, ctx.clone()));
            Ok(format!("run-{}", runs.len()))
        }
    }

    #[tokio::test]
    async fn run_workflow_starts_a_run_with_inputs_and_context() {
        let runner = Arc::new(Runner::default());
        let reg = ToolRegistry::new();
        reg.register(
            Arc::new(RunWorkflow::new(runner.clone())),
            Duration::from_secs(1),
        )
        .expect("register");
        let ctx = ToolCallContext {
            session: Some(SessionKey::User(9)),
            origin: Some((ChannelKind::new("webchat"), "c1".to_owned())),
            user: Some(9),
        };
        assert_eq!(
            reg.call(
                "run_workflow",
                json!({"name": "digest", "inputs": {"topic": "rust"}}),
                &ctx
            )
            .await,
            Ok(json!({"run_id": "run-1", "status": "started"}))
        );
        assert_eq!(
            reg.call("run_workflow", json!({"name": "digest"}), &ctx)
                .await,
            Ok(json!({"run_id": "run-2", "status": "started"}))
        );
        assert_eq!(
            reg.call("run_workflow", json!({"name": "nope"}), &ctx)
                .await,
            Err(ToolError::Failed("unknown workflow `nope`".to_owned()))
        );
        assert!(matches!(
            reg.call("run_workflow", json!({"name": "digest", "inputs": [1]}), &ctx).await,
            Err(ToolError::InvalidArguments(m)) if m == "field `inputs`: expected object, got an array"
        ));
        let runs = runner.0.lock().expect("lock").clone();
        assert_eq!(
            runs,
            [
                ("digest".to_owned(), json!({"topic": "rust"}), ctx.clone()),
                ("digest".to_owned(), json!({}), ctx.clone()),
            ]
        );
    }
}
