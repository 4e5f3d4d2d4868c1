//! Tools through the real `gatewayd` binary with the `openai` provider against `FakeOpenAi`
//! scripted to call them: the built-ins are offered, `current_time` answers, `send_message` goes
//! through the outbox to a chat and to a user's direct chat, and `http_get` is refused by the
//! empty default allowlist with an error naming the config key — each error going back to the
//! model, never to the user as a failure.

use std::sync::atomic::{AtomicUsize, Ordering};

use gateway_tests::{Delivery, FakeCallback, FakeOpenAi, Gateway, GatewayOptions, TIMEOUT};
use serde_json::{Value, json};

static NEXT_ID: AtomicUsize = AtomicUsize::new(1);

fn options(llm: &FakeOpenAi, callback: &FakeCallback) -> GatewayOptions {
    GatewayOptions::with_config(format!(
        "[agent]\nprovider = \"openai\"\nbase_url = \"{}\"\nmodel = \"test-model\"\n\
         max_attempts = 1\ntimeout = \"5s\"\n\n\
         [channels.http]\nenabled = true\ncallback_url = \"{}\"\n",
        llm.base_url(),
        callback.url()
    ))
}

/// Posts a direct message from `sender` in chat `sender` and waits for its reply's text.
async fn ask(gw: &Gateway, callback: &FakeCallback, sender: &str, text: &str) -> String {
    let id = format!("t-{}", NEXT_ID.fetch_add(1, Ordering::SeqCst));
    let resp = gw
        .post_http_message(&json!({
            "message_id": id, "chat_id": sender, "sender_id": sender,
            "chat_type": "direct", "text": text,
        }))
        .await
        .expect("post message");
    assert_eq!(resp.status, 202, "POST {text:?}: {}", resp.text);
    let delivered = callback
        .wait_delivered(
            |d| d.iter().any(|d| d.reply_to.as_deref() == Some(id.as_str())),
            TIMEOUT,
        )
        .await
        .unwrap_or_else(|e| panic!("reply to {text:?}: {e}\n{}", gw.stderr_tail(40)));
    delivered
        .iter()
        .find(|d| d.reply_to.as_deref() == Some(id.as_str()))
        .map(|d| d.text.clone())
        .unwrap_or_default()
}

fn result_json(llm: &FakeOpenAi, call_id: &str) -> Value {
    let results = llm.tool_results();
    let seen = results
        .iter()
        .find(|r| r.tool_call_id == call_id)
        .unwrap_or_else(|| panic!("no result for {call_id}: {results:?}"));
    serde_json::from_str(&seen.content)
        .unwrap_or_else(|e| panic!("{call_id} result is not JSON ({e}): {}", seen.content))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_model_uses_the_built_in_tools() {
    let llm = FakeOpenAi::start().await;
    let callback = FakeCallback::start().await;
    let gw = Gateway::start(options(&llm, &callback))
        .await
        .expect("start gatewayd");

    // current_time, then the answer.
    llm.push_tool_call("current_time", "{}");
    assert_eq!(
        ask(&gw, &callback, "ann", "what time is it?").await,
        "llm: what time is it?"
    );
    let offered: Vec<String> = llm.tools_offered()[0]
        .as_ref()
        .and_then(Value::as_array)
        .expect("tools offered")
        .iter()
        .filter_map(|t| t.pointer("/function/name").and_then(Value::as_str))
        .map(str::to_owned)
        .collect();
    for name in ["current_time", "http_get", "run_workflow", "send_message"] {
        assert!(
            offered.iter().any(|n| n == name),
            "{name} offered: {offered:?}"
        );
    }
    let time = result_json(&llm, "call_1");
    assert!(
        time["utc"].as_str().is_some_and(|t| t.ends_with('Z')),
        "{time}"
    );

    // send_message to a chat goes out through the outbox, not as a reply.
    llm.push_tool_call(
        "send_message",
        r#"{"text": "ping from the agent", "channel": "http", "chat_id": "room-9"}"#,
    );
    assert_eq!(
        ask(&gw, &callback, "ann", "tell room 9").await,
        "llm: tell room 9"
    );
    let sent = result_json(&llm, "call_2");
    assert_eq!(sent["status"], "queued", "{sent}");
    assert!(sent["outbox_id"].is_i64(), "{sent}");
    let delivered = callback
        .wait_delivered(|d| d.iter().any(|d| d.chat_id == "room-9"), TIMEOUT)
        .await
        .expect("the message reaches room-9");
    let to_room: Vec<&Delivery> = delivered.iter().filter(|d| d.chat_id == "room-9").collect();
    assert_eq!(to_room.len(), 1, "{to_room:?}");
    assert_eq!(to_room[0].text, "ping from the agent");
    assert_eq!(to_room[0].reply_to, None);

    // send_message to a user reaches their direct chat.
    let whoami = ask(&gw, &callback, "bob", "/whoami").await;
    let user: i64 = gateway_tests::replies::whoami_user(&whoami)
        .try_into()
        .expect("user id fits");
    llm.push_tool_call(
        "send_message",
        &json!({"text": "hello bob", "user_id": user}).to_string(),
    );
    assert_eq!(
        ask(&gw, &callback, "ann", "greet bob").await,
        "llm: greet bob"
    );
    callback
        .wait_delivered(
            |d| {
                d.iter()
                    .any(|d| d.chat_id == "bob" && d.text == "hello bob")
            },
            TIMEOUT,
        )
        .await
        .expect("the message reaches bob's chat");

    // http_get is denied by the empty default allowlist; the error goes back to the model.
    llm.push_tool_call("http_get", r#"{"url": "http://127.0.0.1:9/"}"#);
    assert_eq!(ask(&gw, &callback, "ann", "fetch").await, "llm: fetch");
    let denied = result_json(&llm, "call_4");
    let error = denied["error"].as_str().unwrap_or_default();
    assert!(
        error.starts_with("not allowed:") && error.contains("[tools] http_allowlist"),
        "{denied}"
    );
}
