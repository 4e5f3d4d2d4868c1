//! LLM budgets through the real `gatewayd` binary, on the HTTP channel against `FakeOpenAi`: a
//! budget reached by tokens and one by turns, the one refusal reply that says when it resets
//! (later refused messages kept without a reply), the refused messages kept in the history and
//! never sent to the model, the reset (the sliding minute passing; an override raised with
//! `gatewayctl budgets set`), the budgets counted across a restart, and `gatewayctl usage`
//! against the usage the fake server reported, estimated for the echo agent.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use gateway_proto::admin as pb;
use gateway_tests::{
    Delivery, FakeCallback, FakeOpenAi, Gateway, GatewayOptions, TIMEOUT, inspect, poll_until,
    poll_until_async,
};
use serde_json::{Value, json};

static NEXT_ID: AtomicUsize = AtomicUsize::new(1);

fn next_id() -> String {
    format!("b-{}", NEXT_ID.fetch_add(1, Ordering::SeqCst))
}

/// A gateway on the HTTP channel; `agent` is its `[agent]` table, `budgets` its `[budgets]`.
async fn start(agent: &str, budgets: &str, callback: &FakeCallback) -> Gateway {
    Gateway::start(GatewayOptions::with_config(format!(
        "{agent}\n\n[budgets]\n{budgets}\n\n[channels.http]\nenabled = true\ncallback_url = \"{}\"\n",
        callback.url()
    )))
    .await
    .expect("gatewayd starts")
}

fn openai(fake: &FakeOpenAi) -> String {
    format!(
        "[agent]\nprovider = \"openai\"\nbase_url = \"{}\"\nmodel = \"m\"\nmax_attempts = 1\n",
        fake.base_url()
    )
}

/// Posts `text` from `sender` (chat id = sender); its message id.
async fn post(gw: &Gateway, sender: &str, text: &str) -> String {
    let id = next_id();
    let resp = gw
        .post_http_message(&json!({
            "message_id": id, "chat_id": sender, "sender_id": sender,
            "chat_type": "direct", "text": text,
        }))
        .await
        .expect("post");
    assert_eq!(resp.status, 202, "POST {text:?}: {}", resp.text);
    id
}

/// Posts `text` and returns the text of its one reply.
async fn ask(gw: &Gateway, callback: &FakeCallback, sender: &str, text: &str) -> String {
    let id = post(gw, sender, text).await;
    let delivered = callback
        .wait_delivered(|d| reply(d, &id).is_some(), TIMEOUT)
        .await
        .unwrap_or_else(|e| panic!("reply to {text:?}: {e}\n{}", gw.stderr_tail(40)));
    reply(&delivered, &id)
        .map(|d| d.text.clone())
        .unwrap_or_default()
}

fn reply<'a>(delivered: &'a [Delivery], id: &str) -> Option<&'a Delivery> {
    delivered.iter().find(|d| d.reply_to.as_deref() == Some(id))
}

/// Posts `text` and waits until its inbox row is done; asserts it got no reply.
async fn refused_quietly(gw: &Gateway, callback: &FakeCallback, sender: &str, text: &str) {
    let id = post(gw, sender, text).await;
    poll_until_async(
        TIMEOUT,
        "the refused message's inbox row is done",
        || async {
            inspect::inbox(gw, "http", sender).await.is_ok_and(|rows| {
                rows.iter()
                    .any(|r| r.channel_message_id == id && r.state == pb::InboxState::Done as i32)
            })
        },
    )
    .await
    .expect("handled");
    let outbox = inspect::outbox(gw, "http", sender).await.expect("outbox");
    assert!(
        !outbox.iter().any(|o| o.reply_to == id),
        "no reply to {text:?}: {outbox:?}"
    );
    assert!(reply(&callback.received(), &id).is_none());
}

/// The user texts of `sender`'s session, in order.
async fn user_texts(gw: &Gateway, sender_user: i64) -> Vec<String> {
    let key = format!("user:{sender_user}");
    inspect::transcripts(gw)
        .await
        .expect("transcripts")
        .into_iter()
        .find(|(k, _)| *k == key)
        .map(|(_, entries)| {
            entries
                .into_iter()
                .filter(|e| e.role == pb::Role::User as i32)
                .map(|e| e.text)
                .collect()
        })
        .unwrap_or_default()
}

fn usage_of(usage: &Value, user: i64) -> Value {
    usage
        .as_array()
        .expect("an array")
        .iter()
        .find(|u| u["user_id"] == json!(user))
        .cloned()
        .unwrap_or(Value::Null)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_budget_refuses_once_keeps_the_messages_and_counts_across_a_restart() {
    let fake = FakeOpenAi::start().await;
    fake.fix_usage(60, 10);
    let callback = FakeCallback::start().await;
    let mut gw = start(&openai(&fake), "user_tokens_per_day = 100", &callback).await;

    assert_eq!(ask(&gw, &callback, "alice", "one").await, "llm: one");
    // 70 of 100 used: the next turn still starts, and ends over the limit.
    assert_eq!(ask(&gw, &callback, "alice", "two").await, "llm: two");
    let refusal = ask(&gw, &callback, "alice", "three").await;
    assert!(
        refusal
            .starts_with("You have used today's 100 tokens; the budget resets at 00:00 UTC (in "),
        "{refusal}"
    );
    // Told once: the next refused message is kept without a reply.
    refused_quietly(&gw, &callback, "alice", "four").await;
    // Gateway commands come before the budget check: they still work.
    let help = ask(&gw, &callback, "alice", "/help").await;
    assert!(help.contains("/whoami"), "{help}");
    assert_eq!(fake.requests().len(), 2, "the model saw no refused message");
    let metrics = gw.get("/metrics").await.expect("metrics").text;
    for series in [
        "gateway_budget_refusals_total 2",
        "gateway_llm_tokens_total{kind=\"prompt\"} 120",
        "gateway_llm_tokens_total{kind=\"completion\"} 20",
    ] {
        assert!(
            metrics.lines().any(|l| l == series),
            "{series} in:\n{metrics}"
        );
    }

    // The usage table, against what the fake reported.
    let reported = fake.reported_usage();
    assert_eq!(reported, [(60, 10), (60, 10)]);
    let usage = gw.gatewayctl_json(&["usage"]).await;
    let rows = usage.as_array().expect("an array");
    assert_eq!(rows.len(), 1, "{usage}");
    let user = rows[0]["user_id"].as_i64().expect("user_id");
    assert_eq!(
        rows[0],
        json!({"user_id": user, "prompt_tokens": 120, "completion_tokens": 20, "turns": 2, "estimated": false})
    );
    assert_eq!(
        user_texts(&gw, user).await,
        ["one", "two", "three", "four"],
        "the refused messages stay in the history"
    );

    // Other users have budgets of their own.
    assert_eq!(ask(&gw, &callback, "bob", "hi").await, "llm: hi");

    // An override lifts alice's limit.
    let set = gw
        .gatewayctl_json(&[
            "budgets",
            "set",
            &user.to_string(),
            "--tokens-per-day",
            "1000",
        ])
        .await;
    assert_eq!(
        set,
        json!({"user_id": user, "tokens_per_day": 1000, "turns_per_minute": null})
    );
    assert_eq!(ask(&gw, &callback, "alice", "five").await, "llm: five");
    let sent = fake.requests();
    let last = gateway_tests::last_user_content(sent.last().expect("a request"));
    assert_eq!(last, "five");

    // Back to the configured limit; after a restart the day's 210 tokens still count.
    gw.gatewayctl_json(&["budgets", "clear", &user.to_string()])
        .await;
    gw.restart().await.expect("restart");
    let refusal = ask(&gw, &callback, "alice", "six").await;
    assert!(
        refusal.starts_with("You have used today's 100 tokens"),
        "{refusal}"
    );
    let usage = gw
        .gatewayctl_json(&["usage", "--user", &user.to_string(), "--since", "1d"])
        .await;
    assert_eq!(
        usage,
        json!([{"user_id": user, "prompt_tokens": 180, "completion_tokens": 30, "turns": 3, "estimated": false}])
    );
    let bob = usage_of(&gw.gatewayctl_json(&["usage"]).await, user + 1);
    assert_eq!(bob["turns"], json!(1), "{bob}");
    assert_eq!(fake.requests().len(), 4);
    assert_eq!(
        user_texts(&gw, user).await,
        ["one", "two", "three", "four", "five", "six"]
    );
    gw.stop().await.expect("stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_turn_budget_slides_over_sixty_seconds() {
    let fake = FakeOpenAi::start().await;
    let callback = FakeCallback::start().await;
    let gw = start(&openai(&fake), "user_turns_per_minute = 2", &callback).await;

    assert_eq!(ask(&gw, &callback, "carol", "a").await, "llm: a");
    let first_turn = std::time::Instant::now();
    assert_eq!(ask(&gw, &callback, "carol", "b").await, "llm: b");
    let refusal = ask(&gw, &callback, "carol", "c").await;
    assert!(
        refusal.starts_with("You have sent 2 messages to the assistant within the last minute"),
        "{refusal}"
    );
    assert!(refusal.contains(" UTC (in "), "says when: {refusal}");
    refused_quietly(&gw, &callback, "carol", "d").await;
    assert_eq!(fake.requests().len(), 2);

    // Once the first turn has left the window, one more turn is allowed.
    poll_until(
        Duration::from_secs(75),
        "the first turn is 60 s old",
        || first_turn.elapsed() >= Duration::from_secs(60),
    )
    .await
    .expect("the window passes");
    assert_eq!(ask(&gw, &callback, "carol", "e").await, "llm: e");
    assert_eq!(fake.requests().len(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn usage_without_a_reported_count_is_estimated() {
    // The echo agent reports no usage: ceil(chars / 4) of what was sent and received.
    let callback = FakeCallback::start().await;
    let gw = start("[agent]\nprovider = \"echo\"\n", "", &callback).await;
    assert_eq!(
        ask(&gw, &callback, "dave", "hello world").await,
        "hello world"
    );
    let usage = gw.gatewayctl_json(&["usage"]).await;
    let user = usage[0]["user_id"].as_i64().expect("user_id");
    assert_eq!(
        usage,
        json!([{"user_id": user, "prompt_tokens": 3, "completion_tokens": 3, "turns": 1, "estimated": true}])
    );
    let table = tokio::process::Command::new(gateway_tests::gatewayctl_bin())
        .args(["--addr", &gw.admin_url(), "usage"])
        .env_remove("GATEWAYCTL_ADDR")
        .env_remove("GATEWAYCTL_TOKEN")
        .kill_on_drop(true)
        .output();
    let table = tokio::time::timeout(TIMEOUT, table)
        .await
        .expect("gatewayctl usage finished in time")
        .expect("gatewayctl usage ran");
    let table = String::from_utf8_lossy(&table.stdout);
    let lines: Vec<&str> = table.lines().collect();
    assert!(lines[0].starts_with("USER"), "{table}");
    let row: Vec<&str> = lines[1].split_whitespace().collect();
    assert_eq!(
        row,
        [user.to_string().as_str(), "3", "3", "6", "1", "yes"],
        "{table}"
    );
    assert!(
        table.contains("today (UTC): 6 tokens of the global budget (no limit)"),
        "{table}"
    );
    drop(gw);

    // A server that sends no `usage` is estimated too.
    let fake = FakeOpenAi::start().await;
    fake.omit_usage(true);
    let gw = start(&openai(&fake), "", &callback).await;
    assert_eq!(
        ask(&gw, &callback, "erin", "12345678").await,
        "llm: 12345678"
    );
    assert!(fake.reported_usage().is_empty());
    let usage = gw.gatewayctl_json(&["usage"]).await;
    // Sent "12345678" (2 tokens), answered "llm: 12345678" (13 characters, 4 tokens).
    assert_eq!(usage[0]["prompt_tokens"], json!(2), "{usage}");
    assert_eq!(usage[0]["completion_tokens"], json!(4), "{usage}");
    assert_eq!(usage[0]["estimated"], json!(true), "{usage}");
}
