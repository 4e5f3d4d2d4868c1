//! Sessions through the real `gatewayd` binary: LRU and idle eviction lose nothing, history
//! survives a graceful restart and the conversation continues, `/reset` starts afresh, and a
//! SIGKILL after replies were delivered does not deliver them again.

use std::sync::atomic::{AtomicUsize, Ordering};

use gateway_tests::{
    CallbackFault, FakeCallback, FakeOpenAi, Gateway, GatewayOptions, TIMEOUT, poll_until,
    strip_ansi,
};
use serde_json::{Value, json};

/// Unique message ids across this test binary, so `reply_to` identifies one message.
static NEXT_ID: AtomicUsize = AtomicUsize::new(1);

fn next_id() -> String {
    format!("s-{}", NEXT_ID.fetch_add(1, Ordering::SeqCst))
}

fn http_channel(callback: &FakeCallback) -> String {
    format!(
        "[channels.http]\nenabled = true\ncallback_url = \"{}\"\n",
        callback.url()
    )
}

/// Posts a direct message from `sender` (chat id = sender id) and returns its message id.
async fn post(gw: &Gateway, sender: &str, text: &str) -> String {
    let id = next_id();
    let resp = gw
        .post_http_message(&json!({
            "message_id": id,
            "chat_id": sender,
            "sender_id": sender,
            "chat_type": "direct",
            "text": text,
        }))
        .await
        .expect("post message");
    assert_eq!(resp.status, 202, "POST {text:?}: {}", resp.text);
    assert_eq!(resp.json, json!({"accepted": true, "duplicate": false}));
    id
}

/// Posts `text` from `sender` and returns the text of its (single) reply at the callback.
async fn ask(gw: &Gateway, callback: &FakeCallback, sender: &str, text: &str) -> String {
    let id = post(gw, sender, text).await;
    let delivered = callback
        .wait_delivered(
            |d| d.iter().any(|x| x.reply_to.as_deref() == Some(id.as_str())),
            TIMEOUT,
        )
        .await
        .unwrap_or_else(|e| {
            panic!(
                "reply to {text:?} from {sender}: {e}\n--- stderr ---\n{}",
                gw.stderr_tail(40)
            )
        });
    let replies: Vec<_> = delivered
        .iter()
        .filter(|x| x.reply_to.as_deref() == Some(id.as_str()))
        .collect();
    assert_eq!(replies.len(), 1, "one reply to {text:?}: {replies:?}");
    assert_eq!(replies[0].chat_id, sender);
    replies[0].text.clone()
}

fn history(lines: &[&str]) -> String {
    format!("History (oldest first):\n{}", lines.join("\n"))
}

/// The `Session evicted.` lines of the daemon's stderr with the given reason.
fn evictions(gw: &Gateway, reason: &str) -> Vec<String> {
    let want = format!("reason=\"{reason}\"");
    strip_ansi(&gw.stderr_log())
        .lines()
        .filter(|l| l.contains("Session evicted.") && l.contains(&want))
        .map(str::to_owned)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lru_eviction_loses_nothing() {
    let callback = FakeCallback::start().await;
    let gw = Gateway::start(GatewayOptions {
        extra_config: http_channel(&callback),
        gateway_extra: "max_sessions = 2".to_owned(),
        log_level: Some("gatewayd=debug,info".to_owned()),
        ..GatewayOptions::default()
    })
    .await
    .expect("start gatewayd");

    for round in 1..=2 {
        for user in ["alice", "bob", "carol"] {
            let text = format!("{user} says {round}");
            assert_eq!(ask(&gw, &callback, user, &text).await, text);
        }
    }

    assert_eq!(
        ask(&gw, &callback, "alice", "/history").await,
        history(&[
            "[http] you: alice says 1",
            "[http] agent: alice says 1",
            "[http] you: alice says 2",
            "[http] agent: alice says 2",
        ]),
        "alice's session was evicted and came back with its whole history"
    );
    for user in ["bob", "carol"] {
        assert_eq!(
            ask(&gw, &callback, user, "/history").await,
            history(&[
                &format!("[http] you: {user} says 1"),
                &format!("[http] agent: {user} says 1"),
                &format!("[http] you: {user} says 2"),
                &format!("[http] agent: {user} says 2"),
            ])
        );
    }

    // Three users with room for two: alice's session, the least recently used when carol
    // arrived, was evicted (and so her history above came back from the store).
    let whoami = ask(&gw, &callback, "alice", "/whoami").await;
    let alice: u64 = gateway_tests::replies::whoami_user(&whoami);
    let lru = evictions(&gw, "lru");
    assert!(
        lru.iter()
            .any(|l| l.contains(&format!("session=user:{alice} "))),
        "expected a debug `Session evicted.` line for user:{alice} with reason=\"lru\"\n--- stderr ---\n{}",
        gw.stderr_log()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_sessions_are_swept_and_history_survives() {
    let callback = FakeCallback::start().await;
    let gw = Gateway::start(GatewayOptions {
        extra_config: http_channel(&callback),
        gateway_extra: "idle_timeout = \"200ms\"".to_owned(),
        log_level: Some("gatewayd=debug,info".to_owned()),
        ..GatewayOptions::default()
    })
    .await
    .expect("start gatewayd");

    assert_eq!(
        ask(&gw, &callback, "dana", "remember me").await,
        "remember me"
    );
    // The sweep has no notification the test can wait on other than its log line.
    poll_until(TIMEOUT, "an idle `Session evicted.` line in stderr", || {
        !evictions(&gw, "idle").is_empty()
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n--- stderr ---\n{}", gw.stderr_log()));

    assert_eq!(
        ask(&gw, &callback, "dana", "/history").await,
        history(&["[http] you: remember me", "[http] agent: remember me"]),
        "an idle-evicted session comes back with its history"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_survives_a_restart_and_the_conversation_continues() {
    let callback = FakeCallback::start().await;
    let llm = FakeOpenAi::start().await;
    let mut gw = Gateway::start(GatewayOptions::with_config(format!(
        "[agent]\nprovider = \"openai\"\nbase_url = \"{}\"\nmodel = \"test-model\"\nretry_backoff = \"20ms\"\n\n{}",
        llm.base_url(),
        http_channel(&callback)
    )))
    .await
    .expect("start gatewayd");

    assert_eq!(ask(&gw, &callback, "erin", "first").await, "llm: first");
    assert_eq!(ask(&gw, &callback, "erin", "second").await, "llm: second");
    let who_before = ask(&gw, &callback, "erin", "/whoami").await;

    let status = gw.stop().await.expect("SIGTERM stop");
    assert!(status.success(), "graceful exit: {status}");
    gw.restart().await.expect("restart");

    let earlier = [
        "[http] you: first",
        "[http] agent: llm: first",
        "[http] you: second",
        "[http] agent: llm: second",
    ];
    assert_eq!(
        ask(&gw, &callback, "erin", "/history").await,
        history(&earlier),
        "history intact after restart"
    );
    assert_eq!(
        ask(&gw, &callback, "erin", "/whoami").await,
        who_before,
        "the same user after restart"
    );

    // The next turn continues the same conversation: the model sees the earlier turns.
    assert_eq!(ask(&gw, &callback, "erin", "third").await, "llm: third");
    let requests = llm.requests();
    let last = requests.last().expect("a model request");
    assert_eq!(
        last["messages"],
        json!([
            {"role": "user", "content": "first"},
            {"role": "assistant", "content": "llm: first"},
            {"role": "user", "content": "second"},
            {"role": "assistant", "content": "llm: second"},
            {"role": "user", "content": "third"},
        ]),
        "request after restart: {last}"
    );
    let mut all = earlier.to_vec();
    all.extend(["[http] you: third", "[http] agent: llm: third"]);
    assert_eq!(ask(&gw, &callback, "erin", "/history").await, history(&all));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reset_starts_a_fresh_conversation() {
    let callback = FakeCallback::start().await;
    let gw = Gateway::start(GatewayOptions::with_config(http_channel(&callback)))
        .await
        .expect("start gatewayd");

    assert_eq!(ask(&gw, &callback, "fay", "old one").await, "old one");
    assert_eq!(ask(&gw, &callback, "fay", "old two").await, "old two");
    let reset = ask(&gw, &callback, "fay", "/reset").await;
    assert!(
        reset.starts_with("Started a fresh conversation."),
        "{reset:?}"
    );
    assert_eq!(
        ask(&gw, &callback, "fay", "/history").await,
        "No history in this conversation yet."
    );
    assert_eq!(ask(&gw, &callback, "fay", "new one").await, "new one");
    assert_eq!(
        ask(&gw, &callback, "fay", "/history").await,
        history(&["[http] you: new one", "[http] agent: new one"])
    );
}

/// Deliveries (2xx) per `reply_to`.
fn delivered_to(callback: &FakeCallback, reply_to: &str) -> usize {
    callback
        .delivered()
        .iter()
        .filter(|d| d.reply_to.as_deref() == Some(reply_to))
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_after_delivery_does_not_deliver_answered_replies_again() {
    let callback = FakeCallback::start().await;
    let mut gw = Gateway::start(GatewayOptions::with_config(http_channel(&callback)))
        .await
        .expect("start gatewayd");

    let mut answered = Vec::new();
    for text in ["one", "two", "three"] {
        let id = post(&gw, "gus", text).await;
        callback
            .wait_delivered(
                |d| d.iter().any(|x| x.reply_to.as_deref() == Some(id.as_str())),
                TIMEOUT,
            )
            .await
            .expect("reply delivered");
        answered.push(id);
    }

    // Replies in one chat are sent one at a time, each marked delivered before the next is
    // sent. So once a later reply in the same chat reaches the callback, the three above are
    // recorded as delivered in the daemon. That later reply is refused (503) so it is still
    // pending at the kill, and must be sent after the restart.
    callback.set_chat_mode("gus", Some(CallbackFault::Status(503)));
    let barrier = post(&gw, "gus", "barrier").await;
    callback
        .wait_received(
            |d| {
                d.iter()
                    .any(|x| x.reply_to.as_deref() == Some(barrier.as_str()))
            },
            TIMEOUT,
        )
        .await
        .expect("barrier reply attempted");
    gw.kill().await;
    callback.set_chat_mode("gus", None);
    gw.restart().await.expect("restart after SIGKILL");

    let fresh = post(&gw, "gus", "after the crash").await;
    let delivered = callback
        .wait_delivered(
            |d| {
                d.iter()
                    .any(|x| x.reply_to.as_deref() == Some(fresh.as_str()))
            },
            TIMEOUT,
        )
        .await
        .unwrap_or_else(|e| panic!("reply after restart: {e}\n{}", gw.stderr_tail(40)));
    let summary: Vec<(Option<String>, String)> = delivered
        .iter()
        .map(|d| (d.reply_to.clone(), d.text.clone()))
        .collect();
    for id in &answered {
        assert_eq!(
            delivered_to(&callback, id),
            1,
            "the reply to {id} was delivered before the kill and must not be delivered again: {summary:?}"
        );
    }
    assert_eq!(
        delivered_to(&callback, &barrier),
        1,
        "the reply still pending at the kill is delivered once after the restart: {summary:?}"
    );
    assert_eq!(delivered_to(&callback, &fresh), 1, "{summary:?}");
    let texts: Vec<Value> = delivered.iter().map(|d| json!(d.text)).collect();
    assert_eq!(
        texts,
        [
            json!("one"),
            json!("two"),
            json!("three"),
            json!("barrier"),
            json!("after the crash")
        ],
        "each reply delivered once, in order"
    );
}
