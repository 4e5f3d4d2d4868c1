//! The `openai` provider: any OpenAI-compatible `POST {base_url}/chat/completions` (OpenAI,
//! Ollama, vLLM, llama.cpp server).
//!
//! All sessions share one pooled `reqwest` client and one semaphore that bounds the requests in
//! flight across the gateway (`agent.max_concurrent`). Each request has `agent.timeout`. The API
//! key, if any, is sent as a bearer token and never appears in logs or errors.

use std::time::Duration;

use async_trait::async_trait;
use serde::Deserialize;
use tokio::sync::Semaphore;

use super::{ChatMessage, LlmError, Provider};

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
            limit: Semaphore::new(max_concurrent.max(1)),
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

#[async_trait]
impl Provider for OpenAi {
    fn name(&self) -> &'static str {
        "openai"
    }

    async fn complete(&self, messages: &[ChatMessage]) -> Result<String, LlmError> {
        let _permit = self
            .limit
            .acquire()
            .await
            .map_err(|_| LlmError::Connect("the client is shutting down".to_owned()))?;
        let body = serde_json::json!({ "model": self.model, "messages": messages });
        let mut req = self.client.post(&self.url).json(&body);
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
        let completion: Completion =
            serde_json::from_str(&text).map_err(|e| LlmError::BadResponse(format!("{e}")))?;
        completion
            .choices
            .into_iter()
            .next()
            .and_then(|c| c.message.content)
            .ok_or_else(|| LlmError::BadResponse("no choices[0].message.content".to_owned()))
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
}
