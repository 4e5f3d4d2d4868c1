//! The `openai` provider: any OpenAI-compatible `POST {base_url}/chat/completions` (OpenAI,
//! Ollama, vLLM, llama.cpp server).
//!
//! All sessions share one pooled `reqwest` client and one semaphore that bounds the requests in
//! flight across the gateway (`agent.max_concurrent`). Each request has `agent.timeout`. The API
//! key, if any, is sent as a bearer token and never appears in logs or errors.
//!
//! What the server sends back is untrusted: a server may echo the request's `Authorization`
//! header in an error body. An error body (read up to [`MAX_ERROR_BODY`]) or a response that is
//! not a completion (read up to [`MAX_BODY`]) is logged once here as an excerpt of at most
//! [`EXCERPT_BYTES`] bytes, with the API key, bearer tokens, `Authorization` values and
//! key-like tokens replaced by `[redacted]` and control characters escaped ([`log_excerpt`]).
//! The [`LlmError`] returned carries only the status or the gateway's own reason, so nothing of
//! the body reaches a reply, a transcript, a workflow run or an event.
//!
//! It supports tools: [`Provider::step`] sends the registry's specs as `tools` (`type:
//! "function"`), the assistant's earlier calls as `tool_calls` and their results as `role:
//! "tool"` messages, and reads `choices[0].message.tool_calls` back. A request without tools has
//! no `tools` key, so plain chat is byte-for-byte what it was.
//!
//! Each completion's `usage` object (`prompt_tokens`, `completion_tokens`) is read and handed
//! back with it ([`Provider::step_counted`], [`Provider::complete_counted`]); a response
//! without one (or with counts that are not whole numbers) reports none, and the agent
//! estimates.

use std::time::Duration;

use async_trait::async_trait;
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::sync::Semaphore;

use super::tools::ToolSpec;
use super::{ChatMessage, LlmError, Message, Provider, Step, ToolCall, Usage};

/// The most of a successful response body read; a longer one is refused.
pub const MAX_BODY: usize = 8 * 1024 * 1024;
/// The most of an error body read (only its excerpt is logged).
pub const MAX_ERROR_BODY: usize = 64 * 1024;
/// The most bytes of server text that reach the log in one excerpt.
pub const EXCERPT_BYTES: usize = 512;
const REDACTED: &str = "[redacted]";

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
    /// Read leniently: a malformed `usage` is as good as none, never a failed turn.
    #[serde(default)]
    usage: Option<Value>,
}

impl Completion {
    /// The token counts the server reported, if it reported both as whole numbers.
    fn usage(&self) -> Option<Usage> {
        let usage = self.usage.as_ref()?;
        Some(Usage {
            prompt_tokens: usage.get("prompt_tokens")?.as_u64()?,
            completion_tokens: usage.get("completion_tokens")?.as_u64()?,
            estimated: false,
        })
    }
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

/// Server text made fit for the log: every occurrence of `secrets`, the token after any
/// `Bearer `, the value after any `Authorization`, and any long key-like token (40 or more letters, digits, `-`,
/// `_`, `.`, `+`, `/`, `=`; or `sk-` and 8 more) replaced by `[redacted]`; control characters
/// escaped; at most [`EXCERPT_BYTES`] bytes of the result kept (cut at a character boundary,
/// `…` marking the cut). Redaction runs on the whole text before it is cut, so a secret is never
/// half shown at the edge.
pub fn log_excerpt(text: &str, secrets: &[&str]) -> String {
    let mut t = text.to_owned();
    for secret in secrets.iter().filter(|s| !s.is_empty()) {
        t = t.replace(secret, REDACTED);
    }
    let t = redact_after(&t, "bearer", char::is_whitespace, |c| {
        token_char(c) || c == '[' || c == ']'
    });
    // An `Authorization` value runs to the end of its header line or quoted string, so that
    // `Basic dXNlcjpwYXNz` and `Bearer x` go whole.
    let t = redact_after(
        &t,
        "authorization",
        |c| c.is_whitespace() || matches!(c, ':' | '=' | '"' | '\'' | '\\'),
        |c| !matches!(c, '"' | '\'' | ',' | ';' | '\\' | '{' | '}' | '<' | '&') && !c.is_control(),
    );
    let t = redact_key_like(&t);
    let mut out = String::with_capacity(t.len().min(EXCERPT_BYTES + 8));
    for c in t.chars() {
        let piece: String = if c.is_control() {
            c.escape_default().collect()
        } else {
            c.to_string()
        };
        if out.len() + piece.len() > EXCERPT_BYTES - '…'.len_utf8() {
            out.push('…');
            return out;
        }
        out.push_str(&piece);
    }
    out
}

/// Whether `c` can be part of a token (a key, a bearer value).
fn token_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '+' | '/' | '=' | '~')
}

/// Replaces the value that follows each (ASCII case-insensitive) `word` and the separators
/// `sep` after it; the value is the run of characters `value` accepts.
fn redact_after(
    text: &str,
    word: &str,
    sep: impl Fn(char) -> bool,
    value: impl Fn(char) -> bool,
) -> String {
    let lower = text.to_ascii_lowercase();
    let mut out = String::with_capacity(text.len());
    let mut at = 0;
    while let Some(found) = lower[at..].find(word) {
        let word_end = at + found + word.len();
        out.push_str(&text[at..word_end]);
        let rest = &text[word_end..];
        let sep_len: usize = rest
            .chars()
            .take_while(|c| sep(*c))
            .map(char::len_utf8)
            .sum();
        out.push_str(&rest[..sep_len]);
        let value_len: usize = rest[sep_len..]
            .chars()
            .take_while(|c| value(*c))
            .map(char::len_utf8)
            .sum();
        if value_len > 0 {
            out.push_str(REDACTED);
        }
        at = word_end + sep_len + value_len;
    }
    out.push_str(&text[at..]);
    out
}

/// Replaces tokens that look like API keys: `sk-` followed by 8 or more token characters, or
/// any run of 40 or more.
fn redact_key_like(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut token = String::new();
    let flush = |token: &mut String, out: &mut String| {
        let key_like = token.len() >= 40 || (token.starts_with("sk-") && token.len() >= 11);
        out.push_str(if key_like { REDACTED } else { token });
        token.clear();
    };
    for c in text.chars() {
        if token_char(c) {
            token.push(c);
        } else {
            flush(&mut token, &mut out);
            out.push(c);
        }
    }
    flush(&mut token, &mut out);
    out
}

/// The transport error of `e`, without the URL, for the log and [`LlmError::Connect`].
fn transport(e: reqwest::Error, timeout: Duration) -> LlmError {
    if e.is_timeout() {
        LlmError::Timeout(timeout)
    } else {
        LlmError::Connect(log_excerpt(&e.without_url().to_string(), &[]))
    }
}

/// Reads at most `limit` bytes of `resp`'s body, and whether it was longer (then cut there).
async fn read_bounded(
    mut resp: reqwest::Response,
    limit: usize,
    timeout: Duration,
) -> Result<(Vec<u8>, bool), LlmError> {
    let mut body = Vec::new();
    while let Some(chunk) = resp.chunk().await.map_err(|e| transport(e, timeout))? {
        let room = limit - body.len();
        if chunk.len() > room {
            body.extend_from_slice(&chunk[..room]);
            return Ok((body, true));
        }
        body.extend_from_slice(&chunk);
    }
    Ok((body, false))
}

impl OpenAi {
    /// The secrets a server's text is scrubbed of.
    fn secrets(&self) -> Vec<&str> {
        self.api_key.iter().map(String::as_str).collect()
    }

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
        let resp = req.send().await.map_err(|e| transport(e, self.timeout))?;
        let status = resp.status();
        if !status.is_success() {
            let (text, cut) = read_bounded(resp, MAX_ERROR_BODY, self.timeout).await?;
            tracing::warn!(
                message = "The model server answered an error.",
                provider = "openai",
                status = status.as_u16(),
                body_bytes = text.len(),
                body_cut = cut,
                excerpt = %log_excerpt(&String::from_utf8_lossy(&text), &self.secrets()),
            );
            return Err(LlmError::Status {
                status: status.as_u16(),
            });
        }
        let (text, cut) = read_bounded(resp, MAX_BODY, self.timeout).await?;
        if cut {
            tracing::warn!(
                message = "The model server's response is too long; refused.",
                provider = "openai",
                max_bytes = MAX_BODY,
            );
            return Err(LlmError::BadResponse("the response is too long"));
        }
        serde_json::from_slice(&text).map_err(|e| {
            // serde's message may quote the body (`invalid type: string "…"`): it is server text.
            tracing::warn!(
                message = "The model server's response is not a completion.",
                provider = "openai",
                error = %log_excerpt(&e.to_string(), &self.secrets()),
                excerpt = %log_excerpt(&String::from_utf8_lossy(&text), &self.secrets()),
            );
            LlmError::BadResponse("not a chat completion")
        })
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
        .ok_or(LlmError::BadResponse("no choices[0]"))?;
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
    message
        .content
        .map(Step::Answer)
        .ok_or(LlmError::BadResponse(
            "no choices[0].message.content or tool_calls",
        ))
}

#[async_trait]
impl Provider for OpenAi {
    fn name(&self) -> &'static str {
        "openai"
    }

    async fn complete(&self, messages: &[ChatMessage]) -> Result<String, LlmError> {
        self.complete_counted(messages).await.map(|(text, _)| text)
    }

    async fn complete_counted(
        &self,
        messages: &[ChatMessage],
    ) -> Result<(String, Option<Usage>), LlmError> {
        let body = json!({ "model": self.model, "messages": messages });
        let completion = self.post(&body).await?;
        let usage = completion.usage();
        completion
            .choices
            .into_iter()
            .next()
            .and_then(|c| c.message.content)
            .map(|text| (text, usage))
            .ok_or(LlmError::BadResponse("no choices[0].message.content"))
    }

    fn supports_tools(&self) -> bool {
        true
    }

    async fn step(&self, messages: &[Message], tools: &[ToolSpec]) -> Result<Step, LlmError> {
        self.step_counted(messages, tools).await.map(|(s, _)| s)
    }

    async fn step_counted(
        &self,
        messages: &[Message],
        tools: &[ToolSpec],
    ) -> Result<(Step, Option<Usage>), LlmError> {
        let mut body = json!({
            "model": self.model,
            "messages": messages.iter().map(wire_message).collect::<Vec<_>>(),
        });
        if !tools.is_empty() {
            body["tools"] = tools.iter().map(wire_tool).collect();
        }
        let completion = self.post(&body).await?;
        let usage = completion.usage();
        Ok((step_of(completion)?, usage))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "sk-live-0123456789abcdefXYZ";

    #[test]
    fn the_key_bearer_tokens_and_authorization_values_are_redacted() {
        let body = format!(
            "{{\"error\":{{\"message\":\"bad auth\",\"headers\":{{\"authorization\":\"Bearer {KEY}\",\
             \"x-api-key\":\"{KEY}\"}}}},\"echo\":\"Authorization: Bearer other-token-1\\r\\nAuthorization=basic:xyz\"}}"
        );
        let out = log_excerpt(&body, &[KEY]);
        assert!(!out.contains(KEY), "{out}");
        assert!(!out.contains("sk-live"), "{out}");
        assert!(!out.contains("other-token-1"), "{out}");
        assert!(!out.contains("basic:xyz") && !out.contains("xyz"), "{out}");
        assert!(out.contains("bad auth"), "the rest stays readable: {out}");
        assert!(out.contains("[redacted]"), "{out}");
        // A key-like token is redacted even when it is not the configured key.
        let out = log_excerpt(
            "token sk-abcdefgh123 and AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA!",
            &[],
        );
        assert_eq!(out, "token [redacted] and [redacted]!");
        let out = log_excerpt("Authorization: Basic dXNlcjpwYXNz\nnext", &[]);
        assert_eq!(out, "Authorization: [redacted]\\nnext");
        // Plain words and short ids stay.
        assert_eq!(
            log_excerpt("model overloaded (id req-42)", &[]),
            "model overloaded (id req-42)"
        );
    }

    #[test]
    fn control_characters_are_escaped_and_the_excerpt_is_bounded() {
        let out = log_excerpt("line1\nline2\r\u{1b}[31mred\u{0}", &[]);
        assert_eq!(out, "line1\\nline2\\r\\u{1b}[31mred\\u{0}");
        assert!(!out.chars().any(char::is_control), "{out:?}");
        let long = "é".repeat(10_000);
        let out = log_excerpt(&long, &[]);
        assert!(out.len() <= EXCERPT_BYTES, "{} bytes", out.len());
        assert!(out.ends_with('…'), "the cut is marked");
        // A key that straddles the cut is still redacted: redaction runs first.
        let text = format!("{}{KEY}", "x ".repeat(250));
        let out = log_excerpt(&text, &[KEY]);
        assert!(!out.contains("sk-live-0123"), "{out}");
        assert!(out.len() <= EXCERPT_BYTES);
    }

    proptest::proptest! {
        #[test]
        fn prop_log_excerpt_never_shows_the_key(
            before in "[ -~\\n\\t]{0,600}",
            after in "[ -~\\n\\t]{0,600}",
            key in "sk-[A-Za-z0-9_]{16,40}",
        ) {
            let text = format!("{before}{key}{after}");
            let out = log_excerpt(&text, &[key.as_str()]);
            proptest::prop_assert!(!out.contains(key.as_str()), "{}", out);
            proptest::prop_assert!(out.len() <= EXCERPT_BYTES);
            proptest::prop_assert!(!out.chars().any(char::is_control));
        }
    }

    fn step(body: Value) -> Result<Step, LlmError> {
        step_of(serde_json::from_value(body).map_err(|_| LlmError::BadResponse("test body"))?)
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

    #[test]
    fn usage_is_read_when_both_counts_are_whole_numbers() {
        let completion =
            |body: Value| -> Completion { serde_json::from_value(body).expect("a completion") };
        let choices = json!([{"message": {"content": "hi"}}]);
        assert_eq!(
            completion(json!({"choices": choices, "usage": {"prompt_tokens": 12, "completion_tokens": 3, "total_tokens": 15}})).usage(),
            Some(Usage { prompt_tokens: 12, completion_tokens: 3, estimated: false })
        );
        assert_eq!(completion(json!({"choices": choices})).usage(), None);
        assert_eq!(
            completion(json!({"choices": choices, "usage": null})).usage(),
            None
        );
        assert_eq!(
            completion(json!({"choices": choices, "usage": {"prompt_tokens": "12", "completion_tokens": 3}})).usage(),
            None
        );
        assert_eq!(
            completion(
                json!({"choices": choices, "usage": {"prompt_tokens": -1, "completion_tokens": 3}})
            )
            .usage(),
            None
        );
    }
}
