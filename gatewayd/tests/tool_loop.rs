//! The OpenAI tool-call loop in process: an [`Agent`] with the `openai` provider pointed at
//! `FakeOpenAi` scripted to call tools. The tools are offered, each result goes back under its
//! call's id, bad arguments come back to the model as the validation error (the tool never runs),
//! and a model that calls tools forever is stopped after the step bound with an honest reply.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use gateway_tests::fake_openai::ToolResultSeen;
use gateway_tests::{FakeOpenAi, Fault};
use gatewayd::agent::Agent;
use gatewayd::agent::llm::OpenAi;
use gatewayd::agent::tools::{
    CurrentTime, Tool, ToolCallContext, ToolError, ToolRegistry, ToolSpec,
};
use gatewayd::message::{ChannelKind, SessionKey};
use serde_json::{Value, json};

/// `add`: adds two integers, and counts its calls.
struct Add {
    spec: ToolSpec,
    calls: AtomicUsize,
}

impl Add {
    fn new() -> Arc<Self> {
        Arc::new(Self {
            spec: ToolSpec {
                name: "add".to_owned(),
                description: "Adds two integers.".to_owned(),
                parameters: json!({
                    "type": "object",
                    "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}},
                    "required": ["a", "b"],
                    "additionalProperties": false
                }),
            },
            calls: AtomicUsize::new(0),
        })
    }
}

#[async_trait]
impl Tool for Add {
    fn spec(&self) -> &ToolSpec {
        &self.spec
    }

    async fn call(&self, args: Value, _ctx: &ToolCallContext) -> Result<Value, ToolError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        let n = |k: &str| {
            args.get(k)
                .and_then(Value::as_i64)
                .ok_or_else(|| ToolError::InvalidArguments(format!("field `{k}`")))
        };
        Ok(json!({"sum": n("a")? + n("b")?}))
    }
}

fn agent(llm: &FakeOpenAi, add: Arc<Add>, max_steps: u32) -> Agent {
    agent_with_attempts(llm, add, max_steps, 1)
}

fn agent_with_attempts(llm: &FakeOpenAi, add: Arc<Add>, max_steps: u32, attempts: u32) -> Agent {
    let registry = ToolRegistry::new();
    registry
        .register(Arc::new(CurrentTime::new()), Duration::from_secs(1))
        .expect("register current_time");
    registry
        .register(add, Duration::from_secs(1))
        .expect("register add");
    let provider = OpenAi::new(
        &llm.base_url(),
        "test-model",
        None,
        Duration::from_secs(10),
        4,
    )
    .expect("provider");
    Agent::new(Arc::new(provider), None, attempts, Duration::ZERO).with_tools(registry, max_steps)
}

fn ctx() -> ToolCallContext {
    ToolCallContext {
        session: Some(SessionKey::User(1)),
        origin: Some((ChannelKind::new("webchat"), "chat-1".to_owned())),
        user: Some(1),
    }
}

#[tokio::test]
async fn the_model_calls_current_time_then_answers() {
    let llm = FakeOpenAi::start().await;
    let add = Add::new();
    let agent = agent(&llm, add.clone(), 5);
    llm.push_tool_call("current_time", "{}");

    let reply = agent
        .respond_with_tools(&[], "what time is it?", &ctx())
        .await
        .expect("reply");
    assert_eq!(reply, "llm: what time is it?");

    let requests = llm.requests();
    assert_eq!(requests.len(), 2, "the call, then the answer: {requests:?}");
    let offered = json!([
        {"type": "function", "function": {
            "name": "add",
            "description": "Adds two integers.",
            "parameters": add.spec.parameters,
        }},
        {"type": "function", "function": {
            "name": "current_time",
            "description": CurrentTime::new().spec().description,
            "parameters": {"type": "object", "properties": {}, "additionalProperties": false},
        }},
    ]);
    assert_eq!(
        llm.tools_offered(),
        [Some(offered.clone()), Some(offered)],
        "every request offers the registry"
    );

    let second = requests[1]["messages"]
        .as_array()
        .expect("messages")
        .clone();
    assert_eq!(second.len(), 3, "{second:?}");
    assert_eq!(
        second[0],
        json!({"role": "user", "content": "what time is it?"})
    );
    assert_eq!(
        second[1],
        json!({"role": "assistant", "content": null, "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "current_time", "arguments": "{}"}}
        ]})
    );
    assert_eq!(second[2]["role"], "tool");
    assert_eq!(second[2]["tool_call_id"], "call_1");
    let results = llm.tool_results();
    assert_eq!(results.len(), 1, "{results:?}");
    assert_eq!(
        (results[0].request, results[0].tool_call_id.as_str()),
        (1, "call_1")
    );
    let time: Value = serde_json::from_str(&results[0].content).expect("the result is JSON");
    assert!(
        time["utc"].as_str().is_some_and(|t| t.ends_with('Z')),
        "{time}"
    );
    assert!(time["unix_ms"].is_i64(), "{time}");
}

#[tokio::test]
async fn bad_calls_come_back_to_the_model_as_errors() {
    let llm = FakeOpenAi::start().await;
    let add = Add::new();
    let agent = agent(&llm, add.clone(), 5);
    llm.push_tool_calls(&[
        ("add", r#"{"a": "one", "b": 2}"#),
        ("add", "not json"),
        ("subtract", "{}"),
        ("add", r#"{"a": 1, "b": 2}"#),
    ]);
    llm.push_answer("done");

    let reply = agent
        .respond_with_tools(&[], "add things", &ctx())
        .await
        .expect("reply");
    assert_eq!(reply, "done");
    assert_eq!(
        add.calls.load(Ordering::SeqCst),
        1,
        "only the valid call ran"
    );

    let results = llm.tool_results();
    let content = |id: &str| -> Value {
        let seen: &ToolResultSeen = results
            .iter()
            .find(|r| r.tool_call_id == id)
            .unwrap_or_else(|| panic!("no result for {id}: {results:?}"));
        assert_eq!(seen.request, 1);
        serde_json::from_str(&seen.content).expect("JSON result")
    };
    assert_eq!(
        content("call_1"),
        json!({"error": "invalid arguments: field `a`: expected integer, got a string"})
    );
    let not_json = content("call_2");
    assert!(
        not_json["error"]
            .as_str()
            .is_some_and(|e| e.starts_with("invalid arguments: the arguments are not valid JSON")),
        "{not_json}"
    );
    assert_eq!(
        content("call_3"),
        json!({"error": "unknown tool `subtract`"})
    );
    assert_eq!(content("call_4"), json!({"sum": 3}));
    let ids: Vec<&str> = results.iter().map(|r| r.tool_call_id.as_str()).collect();
    assert_eq!(
        ids,
        ["call_1", "call_2", "call_3", "call_4"],
        "in call order"
    );
}

#[tokio::test]
async fn a_model_that_calls_tools_forever_is_stopped_at_the_step_bound() {
    let llm = FakeOpenAi::start().await;
    let add = Add::new();
    let agent = agent(&llm, add.clone(), 3);
    for _ in 0..20 {
        llm.push_tool_call("add", r#"{"a": 1, "b": 1}"#);
    }

    let reply = agent
        .respond_with_tools(&[], "loop", &ctx())
        .await
        .expect("reply");
    assert_eq!(reply, "I could not finish within 3 tool steps.");
    assert_eq!(
        llm.requests().len(),
        4,
        "3 rounds of calls, then the response that would be a 4th"
    );
    assert_eq!(
        add.calls.load(Ordering::SeqCst),
        3,
        "the 4th round is not run"
    );
    assert_eq!(llm.pending_scripted(), 16);
}

#[tokio::test]
async fn a_failed_model_request_is_retried_without_running_tools_again() {
    let llm = FakeOpenAi::start().await;
    let add = Add::new();
    let agent = agent_with_attempts(&llm, add.clone(), 5, 2);
    llm.push_fault(Fault::Status(500));
    llm.push_tool_call("add", r#"{"a": 2, "b": 3}"#);

    let reply = agent
        .respond_with_tools(&[], "sum", &ctx())
        .await
        .expect("reply");
    assert_eq!(reply, "llm: sum");
    assert_eq!(llm.requests().len(), 3, "500, retry with the call, answer");
    assert_eq!(add.calls.load(Ordering::SeqCst), 1);
    assert_eq!(
        llm.tool_results(),
        [ToolResultSeen {
            request: 2,
            tool_call_id: "call_1".to_owned(),
            content: r#"{"sum":5}"#.to_owned(),
        }]
    );
}

#[tokio::test]
async fn without_tools_the_request_is_plain_chat() {
    let llm = FakeOpenAi::start().await;
    let provider = OpenAi::new(
        &llm.base_url(),
        "test-model",
        None,
        Duration::from_secs(10),
        4,
    )
    .expect("provider");
    let plain = Agent::new(Arc::new(provider), None, 1, Duration::ZERO);
    assert_eq!(
        plain
            .respond_with_tools(&[], "hi", &ctx())
            .await
            .expect("reply"),
        "llm: hi"
    );
    let empty = Agent::new(
        Arc::new(
            OpenAi::new(
                &llm.base_url(),
                "test-model",
                None,
                Duration::from_secs(10),
                4,
            )
            .expect("provider"),
        ),
        None,
        1,
        Duration::ZERO,
    )
    .with_tools(ToolRegistry::new(), 5);
    assert_eq!(
        empty
            .respond_with_tools(&[], "hey", &ctx())
            .await
            .expect("reply"),
        "llm: hey"
    );
    assert_eq!(
        llm.tools_offered(),
        [None, None],
        "no `tools` key without tools"
    );
}
