//! The whole message path through the real `gatewayd` binary: HTTP channel in, inbox commit and
//! dedupe, session worker, echo agent, outbox, delivery to the callback, and the WebChat path to
//! the same agent. Also: many conversations at once, each one's replies in order.

use std::collections::HashMap;

use gateway_tests::{FakeCallback, Gateway, GatewayOptions, TIMEOUT, WebChatClient};
use serde_json::json;

fn http_channel(callback: &FakeCallback) -> GatewayOptions {
    GatewayOptions::with_config(format!(
        "[channels.http]\nenabled = true\ncallback_url = \"{}\"\n",
        callback.url()
    ))
}

fn msg(id: &str, chat: &str, sender: &str, text: &str) -> serde_json::Value {
    json!({"message_id": id, "chat_id": chat, "sender_id": sender, "text": text, "chat_type": "direct"})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_message_is_answered_once_at_the_callback_even_when_redelivered() {
    let callback = FakeCallback::start().await;
    let gw = Gateway::start(http_channel(&callback))
        .await
        .expect("start");

    let first = gw
        .post_http_message(&msg("m-1", "chat-1", "alice", "hello there"))
        .await
        .expect("post");
    assert_eq!(first.status, 202, "{}", first.text);
    assert_eq!(first.json, json!({"accepted": true, "duplicate": false}));

    // The platform redelivers the same message: acknowledged again, but flagged and not re-run.
    let again = gw
        .post_http_message(&msg("m-1", "chat-1", "alice", "hello there"))
        .await
        .expect("post");
    assert_eq!(again.status, 202);
    assert_eq!(again.json, json!({"accepted": true, "duplicate": true}));

    // A later message is answered after the first; by then a second answer to m-1 would have
    // been delivered too, since one session handles its messages in order.
    gw.post_http_message(&msg("m-2", "chat-1", "alice", "second"))
        .await
        .expect("post");
    let delivered = callback
        .wait_delivered(
            |d| d.iter().any(|x| x.reply_to.as_deref() == Some("m-2")),
            TIMEOUT,
        )
        .await
        .expect("reply to m-2");
    let to_first: Vec<_> = delivered
        .iter()
        .filter(|d| d.reply_to.as_deref() == Some("m-1"))
        .collect();
    assert_eq!(
        to_first.len(),
        1,
        "one agent turn per message: {delivered:?}"
    );
    assert_eq!(
        to_first[0].text, "hello there",
        "the echo agent repeats the text"
    );
    assert_eq!(
        to_first[0].chat_id, "chat-1",
        "the reply goes back to its chat"
    );
    assert!(
        delivered[0].message_id != delivered[1].message_id,
        "each reply has its own id"
    );
    let order: Vec<_> = delivered.iter().map(|d| d.reply_to.clone()).collect();
    assert_eq!(order, [Some("m-1".to_owned()), Some("m-2".to_owned())]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_conversations_run_at_once_and_each_stays_in_order() {
    const CHATS: usize = 20;
    const PER_CHAT: usize = 15;
    let callback = FakeCallback::start().await;
    let gw = Gateway::start(http_channel(&callback))
        .await
        .expect("start");

    // Every chat posts concurrently; within a chat, messages are posted in order.
    let mut tasks = Vec::new();
    for c in 0..CHATS {
        let client = gw.client().clone();
        let url = format!("{}/channels/http/messages", gw.http_base());
        tasks.push(tokio::spawn(async move {
            for i in 0..PER_CHAT {
                let body = msg(
                    &format!("c{c}-m{i}"),
                    &format!("chat-{c}"),
                    &format!("user-{c}"),
                    &format!("{c}:{i}"),
                );
                let resp = client.post(&url).json(&body).send().await.expect("post");
                assert_eq!(resp.status().as_u16(), 202);
            }
        }));
    }
    for t in tasks {
        t.await.expect("poster");
    }
    let delivered = callback
        .wait_delivered(|d| d.len() >= CHATS * PER_CHAT, TIMEOUT)
        .await
        .expect("all replies");
    assert_eq!(delivered.len(), CHATS * PER_CHAT, "no reply twice");

    let mut per_chat: HashMap<String, Vec<String>> = HashMap::new();
    for d in &delivered {
        per_chat
            .entry(d.chat_id.clone())
            .or_default()
            .push(d.text.clone());
    }
    assert_eq!(per_chat.len(), CHATS);
    for c in 0..CHATS {
        let expected: Vec<String> = (0..PER_CHAT).map(|i| format!("{c}:{i}")).collect();
        assert_eq!(
            per_chat[&format!("chat-{c}")],
            expected,
            "chat {c} in order"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webchat_and_http_share_the_same_path() {
    let callback = FakeCallback::start().await;
    let gw = Gateway::start(http_channel(&callback))
        .await
        .expect("start");
    let mut web = WebChatClient::connect(&gw.ws_url("browser-1"))
        .await
        .expect("connect");
    web.send_message("c-1", "from the browser")
        .await
        .expect("send");
    let frames = web
        .recv_until(|f| f["type"] == "message", TIMEOUT)
        .await
        .expect("reply");
    assert_eq!(
        frames[0]["type"], "ack",
        "ack comes before the reply: {frames:?}"
    );
    let reply = frames.last().expect("reply frame");
    assert_eq!(reply["text"], "from the browser");
    assert_eq!(reply["reply_to"], "c-1");

    gw.post_http_message(&msg("h-1", "chat-h", "bob", "from http"))
        .await
        .expect("post");
    let delivered = callback
        .wait_delivered(|d| !d.is_empty(), TIMEOUT)
        .await
        .expect("http reply");
    assert_eq!(delivered[0].text, "from http");
    assert!(
        delivered.iter().all(|d| d.text != "from the browser"),
        "a WebChat reply never goes to the HTTP callback"
    );
}
