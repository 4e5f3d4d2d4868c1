//! Tools through the real `gatewayd` binary with the `openai` provider against `FakeOpenAi`
//! scripted to call them: the built-ins are offered, `current_time` answers, `send_message` goes
//! through the outbox to a chat and to a user's direct chat, and `http_get` is refused by the
//! empty default allowlist with an error naming the config key — each error going back to the
//! model, never to the user as a failure. `[tools.send_message] scope` keeps a turn's messages
//! to its user's own chats (`same_user`, the default) or to its chat (`same_chat`): a refused call
//! is a tool error the model reads, nothing is sent, and `gateway_tool_refusals_total` counts it.

use std::sync::atomic::{AtomicUsize, Ordering};

use gateway_tests::{Delivery, FakeCallback, FakeOpenAi, Gateway, GatewayOptions, TIMEOUT};
use serde_json::{Value, json};

static NEXT_ID: AtomicUsize = AtomicUsize::new(1);

fn options(llm: &FakeOpenAi, callback: &FakeCallback) -> GatewayOptions {
    scoped(llm, callback, "any")
}

/// The gateway with `[tools.send_message] scope = "<scope>"`.
fn scoped(llm: &FakeOpenAi, callback: &FakeCallback, scope: &str) -> GatewayOptions {
    GatewayOptions::with_config(format!(
        "[agent]\nprovider = \"openai\"\nbase_url = \"{}\"\nmodel = \"test-model\"\n\
         max_attempts = 1\ntimeout = \"5s\"\n\n\
         [channels.http]\nenabled = true\ncallback_url = \"{}\"\n\n\
         [tools.send_message]\nscope = \"{scope}\"\n",
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

/// The last call's `error`, which the model was handed as the tool's result.
fn refusal(llm: &FakeOpenAi) -> String {
    let results = llm.tool_results();
    let last = results.last().expect("a tool result");
    let got: Value = serde_json::from_str(&last.content).expect("result JSON");
    got["error"].as_str().unwrap_or_default().to_owned()
}

/// Polls `/metrics` until `series` is there.
async fn wait_metric(gw: &Gateway, series: &str) {
    let seen = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
    let last = seen.clone();
    gateway_tests::poll_until_async(TIMEOUT, series, || {
        let last = last.clone();
        let get = gw.get("/metrics");
        async move {
            let text = get.await.map(|r| r.text).unwrap_or_default();
            let done = text.contains(series);
            *last.lock().expect("lock") = text;
            done
        }
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", seen.lock().expect("lock")));
}

/// What the callback got for `chat`, in order.
fn texts_to(callback: &FakeCallback, chat: &str) -> Vec<String> {
    callback
        .delivered()
        .iter()
        .filter(|d| d.chat_id == chat)
        .map(|d| d.text.clone())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_message_to_another_users_chat_is_refused_under_same_user() {
    let llm = FakeOpenAi::start().await;
    let callback = FakeCallback::start().await;
    let gw = Gateway::start(scoped(&llm, &callback, "same_user"))
        .await
        .expect("start gatewayd");
    let bob_whoami = ask(&gw, &callback, "bob", "/whoami").await;
    let bob = gateway_tests::replies::whoami_user(&bob_whoami);
    // ann's second address, linked to her.
    let code = gateway_tests::replies::link_code(&ask(&gw, &callback, "ann", "/link").await);
    let linked = ask(&gw, &callback, "ann-2", &format!("/link {code}")).await;
    assert!(linked.starts_with("Linked."), "{linked}");

    let want = "not allowed: send_message may only send to this user's own chats \
                (tools.send_message.scope = \"same_user\")";
    llm.push_tool_call(
        "send_message",
        r#"{"text": "psst from ann's turn", "channel": "http", "chat_id": "bob"}"#,
    );
    assert_eq!(
        ask(&gw, &callback, "ann", "tell bob").await,
        "llm: tell bob"
    );
    assert_eq!(refusal(&llm), want);
    llm.push_tool_call(
        "send_message",
        &json!({"text": "psst by user id", "user_id": bob}).to_string(),
    );
    assert_eq!(
        ask(&gw, &callback, "ann", "greet bob").await,
        "llm: greet bob"
    );
    assert_eq!(refusal(&llm), want);
    wait_metric(&gw, "gateway_tool_refusals_total{tool=\"send_message\"} 2").await;

    // Her own linked chat is hers.
    llm.push_tool_call(
        "send_message",
        r#"{"text": "note to my other address", "channel": "http", "chat_id": "ann-2"}"#,
    );
    assert_eq!(ask(&gw, &callback, "ann", "note").await, "llm: note");
    callback
        .wait_delivered(
            |d| {
                d.iter()
                    .any(|d| d.chat_id == "ann-2" && d.text == "note to my other address")
            },
            TIMEOUT,
        )
        .await
        .expect("the note reaches ann's linked chat");

    // bob's chat got his own replies only: a later reply to him is behind anything queued
    // before it on his chat's lane.
    assert_eq!(
        ask(&gw, &callback, "bob", "still there?").await,
        "llm: still there?"
    );
    let to_bob = texts_to(&callback, "bob");
    assert_eq!(
        to_bob,
        [bob_whoami, "llm: still there?".to_owned()],
        "{to_bob:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn same_chat_refuses_the_users_other_linked_chat() {
    let llm = FakeOpenAi::start().await;
    let callback = FakeCallback::start().await;
    let gw = Gateway::start(scoped(&llm, &callback, "same_chat"))
        .await
        .expect("start gatewayd");
    let code = gateway_tests::replies::link_code(&ask(&gw, &callback, "cy", "/link").await);
    let linked = ask(&gw, &callback, "cy-2", &format!("/link {code}")).await;
    assert!(linked.starts_with("Linked."), "{linked}");

    llm.push_tool_call(
        "send_message",
        r#"{"text": "to my other chat", "channel": "http", "chat_id": "cy-2"}"#,
    );
    assert_eq!(ask(&gw, &callback, "cy", "copy").await, "llm: copy");
    assert_eq!(
        refusal(&llm),
        "not allowed: send_message may only send to the chat this turn came from \
         (tools.send_message.scope = \"same_chat\")"
    );
    wait_metric(&gw, "gateway_tool_refusals_total{tool=\"send_message\"} 1").await;
    llm.push_tool_call(
        "send_message",
        r#"{"text": "to this chat", "channel": "http", "chat_id": "cy"}"#,
    );
    assert_eq!(ask(&gw, &callback, "cy", "here").await, "llm: here");
    callback
        .wait_delivered(
            |d| {
                d.iter()
                    .any(|d| d.chat_id == "cy" && d.text == "to this chat")
            },
            TIMEOUT,
        )
        .await
        .expect("the message reaches the turn's own chat");
    assert_eq!(
        ask(&gw, &callback, "cy-2", "and here?").await,
        "llm: and here?"
    );
    let to_other = texts_to(&callback, "cy-2");
    assert!(
        !to_other.iter().any(|t| t == "to my other chat"),
        "{to_other:?}"
    );
}
