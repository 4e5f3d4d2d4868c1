//! The `openai` provider: any OpenAI-compatible `POST {base_url}/chat/completions` (OpenAI,
//! Ollama, vLLM, llama.cpp server).
//!
//! All sessions share one pooled `reqwest` client and one semaphore that bounds the requests in
//! flight across the gateway (`agent.max_concurrent`). Each request has `agent.timeout`. The API
//! key, if any, is sent as a bearer token and never appears in logs or errors.
//!
//! It supports tools: [`Provider::step`] sends the registry's specs as `tools` (`type:
//! "function"`), the assistant's earlier calls as `tool_calls` and their results as `role:
//! "tool"` messages, and reads `choices[0].message.tool_calls` back. A request without tools has
//! no `tools` key, so plain chat is byte-for-byte what it was.

use std::time::Duration;

use async_trait::async_trait;
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::sync::Semaphore;

use super::tools::ToolSpec;
use super::{ChatMessage, LlmError, Message, Provider, Step, ToolCall};

/// An OpenAI-compatible chat-completions client.
pub struct OpenAi {
    client: reqwest::Client,
    url: String,
    model: String,
    api_key: Option<String>,
    timeout: Duration,
    limit: Semaphore,
}

#[derive(Deserialize)]
struct Completion {
    choices: Vec<Choice>,
}

#[derive(Deserialize)]
struct Choice {
    message: AssistantMessage,
}

#[derive(Deserialize)]
struct AssistantMessage {
    content: Option<String>,
    #[serde(default)]
    tool_calls: Option<Vec<WireToolCall>>,
}

#[derive(Deserialize)]
struct WireToolCall {
    #[serde(default)]
    id: Option<String>,
    function: WireFunction,
}

#[derive(Deserialize)]
struct WireFunction {
    name: String,
    /// A JSON string per the API; some servers send the object itself.
    #[serde(default)]
    arguments: Value,
}

impl OpenAi {
    /// A client for `base_url` (up to and including `/v1`).
    pub fn new(
        base_url: &str,
        model: &str,
        api_key: Option<String>,
        timeout: Duration,
        max_concurrent: usize,
    ) -> Result<Self, String> {
        let client = reqwest::Client::builder()
            .timeout(timeout)
            .pool_max_idle_per_host(max_concurrent)
            .build()
            .map_err(|e| format!("cannot build the HTTP client: {e}"))?;
        Ok(Self {
            client,
            url: format!("{}/chat/completions", base_url.trim_end_matches('/')),
            model: model.to_owned(),
            api_key,
            timeout,
            limit: Semaphore::new(max_concurrent.clamp(1, Semaphore::MAX_PERMITS)),
        })
    }
}

/// The `error.message` of an OpenAI error body, or the start of the body.
fn error_detail(body: &str) -> String {
    let from_json = serde_json::from_str::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v.pointer("/error/message")?.as_str().map(str::to_owned));
    let detail = from_json.unwrap_or_else(|| body.to_owned());
    detail.chars().take(200).collect()
}

impl OpenAi {
    /// Posts one request body and returns the parsed completion.
    async fn post(&self, body: &Value) -> Result<Completion, LlmError> {
        let _permit = self
            .limit
            .acquire()
            .await
            .map_err(|_| LlmError::Connect("the client is shutting down".to_owned()))?;
        let mut req = self.client.post(&self.url).json(body);
        if let Some(key) = &self.api_key {
            req = req.bearer_auth(key);
        }
        let resp = req.send().await.map_err(|e| {
            if e.is_timeout() {
                LlmError::Timeout(self.timeout)
            } else {
                LlmError::Connect(e.without_url().to_string())
            }
        })?;
        let status = resp.status();
        let text = resp.text().await.map_err(|e| {
            if e.is_timeout() {
                LlmError::Timeout(self.timeout)
            } else {
                LlmError::Connect(e.without_url().to_string())
            }
        })?;
        if !status.is_success() {
            return Err(LlmError::Status {
                status: status.as_u16(),
                detail: error_detail(&text),
            });
        }
        serde_json::from_str(&text).map_err(|e| LlmError::BadResponse(format!("{e}")))
    }
}

/// A message in the wire format.
fn wire_message(m: &Message) -> Value {
    match m {
        Message::Chat(c) => json!({"role": c.role, "content": c.content}),
        Message::ToolCalls { content, calls } => json!({
            "role": "assistant",
            "content": content,
            "tool_calls": calls.iter().map(|c| json!({
                "id": c.id,
                "type": "function",
                "function": {"name": c.name, "arguments": c.arguments},
            })).collect::<Vec<_>>(),
        }),
        Message::ToolResult { call_id, content } => {
            json!({"role": "tool", "tool_call_id": call_id, "content": content})
        }
    }
}

/// A tool spec in the wire format.
fn wire_tool(spec: &ToolSpec) -> Value {
    json!({
        "type": "function",
        "function": {
            "name": spec.name,
            "description": spec.description,
            "parameters": spec.parameters,
        }
    })
}

/// What the first choice of `completion` asks for: tool calls if it has any, else its text.
fn step_of(completion: Completion) -> Result<Step, LlmError> {
    let message = completion
        .choices
        .into_iter()
        .next()
        .map(|c| c.message)
        .ok_or_else(|| LlmError::BadResponse("no choices[0]".to_owned()))?;
    let calls: Vec<ToolCall> = message
        .tool_calls
        .unwrap_or_default()
        .into_iter()
        .enumerate()
        .map(|(i, c)| ToolCall {
            id: c.id.unwrap_or_else(|| format!("call_{i}")),
            name: c.function.name,
            arguments: match c.function.arguments {
                Value::String(s) => s,
                Value::Null => String::new(),
                other => other.to_string(),
            },
        })
        .collect();
    if !calls.is_empty() {
        return Ok(Step::ToolCalls {
            content: message.content.filter(|c| !c.is_empty()),
            calls,
        });
    }
    message.content.map(Step::Answer).ok_or_else(|| {
        LlmError::BadResponse("no choices[0].message.content or tool_calls".to_owned())
    })
}

#[async_trait]
impl Provider for OpenAi {
    fn name(&self) -> &'static str {
        "openai"
    }

    async fn complete(&self, messages: &[ChatMessage]) -> Result<String, LlmError> {
        let body = json!({ "model": self.model, "messages": messages });
        self.post(&body)
            .await?
            .choices
            .into_iter()
            .next()
            .and_then(|c| c.message.content)
            .ok_or_else(|| LlmError::BadResponse("no choices[0].message.content".to_owned()))
    }

    fn supports_tools(&self) -> bool {
        true
    }

    async fn step(&self, messages: &[Message], tools: &[ToolSpec]) -> Result<Step, LlmError> {
        let mut body = json!({
            "model": self.model,
            "messages": messages.iter().map(wire_message).collect::<Vec<_>>(),
        });
        if !tools.is_empty() {
            body["tools"] = tools.iter().map(wire_tool).collect();
        }
        step_of(self.post(&body).await?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_detail_prefers_the_openai_message() {
        assert_eq!(
            error_detail(r#"{"error":{"message":"model overloaded","type":"server_error"}}"#),
            "model overloaded"
        );
        assert_eq!(error_detail("Bad Gateway"), "Bad Gateway");
    }

    fn step(body: Value) -> Result<Step, LlmError> {
        step_of(serde_json::from_value(body).map_err(|e| LlmError::BadResponse(e.to_string()))?)
    }

    #[test]
    fn tool_calls_are_read_from_the_first_choice() {
        let calls = step(
            json!({"choices": [{"message": {"role": "assistant", "content": null,
            "tool_calls": [
                {"id": "a", "type": "function", "function": {"name": "t", "arguments": "{\"x\":1}"}},
                {"type": "function", "function": {"name": "u", "arguments": {"y": 2}}},
                {"id": "c", "type": "function", "function": {"name": "v"}}
            ]}}]}),
        );
        let call = |id: &str, name: &str, arguments: &str| ToolCall {
            id: id.to_owned(),
            name: name.to_owned(),
            arguments: arguments.to_owned(),
        };
        assert_eq!(
            calls.expect("tool calls"),
            Step::ToolCalls {
                content: None,
                calls: vec![
                    call("a", "t", r#"{"x":1}"#),
                    call("call_1", "u", r#"{"y":2}"#),
                    call("c", "v", ""),
                ]
            }
        );
        assert_eq!(
            step(json!({"choices": [{"message": {"content": "hi", "tool_calls": []}}]}))
                .expect("answer"),
            Step::Answer("hi".to_owned())
        );
        assert!(matches!(
            step(json!({"choices": [{"message": {"content": null}}]})),
            Err(LlmError::BadResponse(_))
        ));
        assert!(matches!(
            step(json!({"choices": []})),
            Err(LlmError::BadResponse(_))
        ));
    }

    #[test]
    fn messages_and_tools_have_the_openai_wire_shape() {
        let calls = Message::ToolCalls {
            content: None,
            calls: vec![ToolCall {
                id: "call_1".to_owned(),
                name: "current_time".to_owned(),
                arguments: "{}".to_owned(),
            }],
        };
        assert_eq!(
            wire_message(&calls),
            json!({"role": "assistant", "content": null, "tool_calls": [
                {"id": "call_1", "type": "function", "function": {"name": "current_time", "arguments": "{}"}}
            ]})
        );
        assert_eq!(
            wire_message(&Message::ToolResult {
                call_id: "call_1".to_owned(),
                content: "{}".to_owned()
            }),
            json!({"role": "tool", "tool_call_id": "call_1", "content": "{}"})
        );
        let spec = ToolSpec {
            name: "t".to_owned(),
            description: "d".to_owned(),
            parameters: json!({"type": "object"}),
        };
        assert_eq!(
            wire_tool(&spec),
            json!({"type": "function", "function": {"name": "t", "description": "d", "parameters": {"type": "object"}}})
        );
    }
}
