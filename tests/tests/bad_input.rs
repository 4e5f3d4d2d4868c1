//! Malformed input on the HTTP channel (`POST /channels/http/messages`) through the real
//! `gatewayd` binary: every kind of bad body gets a JSON error naming the field or the problem,
//! with the right status, and none of them produces an agent turn or hurts the daemon.

use gateway_tests::{FakeCallback, Gateway, GatewayOptions, TIMEOUT, inspect};
use serde_json::{Value, json};

/// Text limit configured for the HTTP channel in this file.
const MAX_TEXT: usize = 2048;
/// Every row posts into this chat as this sender, so a wrongly accepted row would be answered
/// before the final valid message of the same conversation.
const CHAT: &str = "bad-input-chat";
const SENDER: &str = "alice";

fn options(callback: &FakeCallback) -> GatewayOptions {
    GatewayOptions::with_config(format!(
        "[channels.http]\nenabled = true\ncallback_url = \"{}\"\nmax_message_bytes = {MAX_TEXT}\n",
        callback.url()
    ))
}

/// A complete valid body with `id`; rows then break one thing.
fn valid(id: &str) -> serde_json::Map<String, Value> {
    let v = json!({
        "message_id": id,
        "chat_id": CHAT,
        "sender_id": SENDER,
        "text": "hello",
        "chat_type": "direct",
    });
    match v {
        Value::Object(m) => m,
        _ => unreachable!("literal object"),
    }
}

/// A valid body with field `name` removed.
fn without(id: &str, name: &str) -> Vec<u8> {
    let mut m = valid(id);
    m.remove(name);
    Value::Object(m).to_string().into_bytes()
}

/// A valid body with field `name` set to `value`.
fn with(id: &str, name: &str, value: Value) -> Vec<u8> {
    let mut m = valid(id);
    m.insert(name.to_owned(), value);
    Value::Object(m).to_string().into_bytes()
}

/// One table row: what is sent and what must come back.
struct Row {
    name: &'static str,
    body: Vec<u8>,
    status: u16,
    /// Substrings the `error` message must contain (naming the field / the problem).
    needles: Vec<String>,
}

fn row(name: &'static str, body: Vec<u8>, status: u16, needles: &[&str]) -> Row {
    Row {
        name,
        body,
        status,
        needles: needles.iter().map(|s| (*s).to_owned()).collect(),
    }
}

/// Posts one row and returns what is wrong with the answer (empty if it is right).
async fn check(gw: &Gateway, row: &Row) -> Vec<String> {
    let mut problems = Vec::new();
    let resp = gw
        .client()
        .post(format!("{}/channels/http/messages", gw.http_base()))
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .body(row.body.clone())
        .send()
        .await;
    let resp = match resp {
        Ok(r) => r,
        Err(e) => return vec![format!("request failed: {e:#}")],
    };
    let status = resp.status().as_u16();
    let content_type = resp
        .headers()
        .get(reqwest::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let text = resp.text().await.unwrap_or_default();
    if status != row.status {
        problems.push(format!("status {status}, expected {}", row.status));
    }
    if !content_type.starts_with("application/json") {
        problems.push(format!(
            "Content-Type {content_type:?}, expected application/json"
        ));
    }
    let json: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
    if json.get("accepted") != Some(&Value::Bool(false)) {
        problems.push("`accepted` is not false".to_owned());
    }
    match json.get("error").and_then(Value::as_str) {
        None => problems.push("no `error` string".to_owned()),
        Some(error) => {
            for needle in &row.needles {
                if !error.contains(needle.as_str()) {
                    problems.push(format!("error lacks {needle:?}"));
                }
            }
        }
    }
    if !problems.is_empty() {
        problems.push(format!("body was: {text}"));
    }
    problems
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_bad_body_is_refused_with_a_message_naming_the_problem() {
    let callback = FakeCallback::start().await;
    let gw = Gateway::start(options(&callback)).await.expect("start");

    let long_id = "i".repeat(257);
    let body_limit = MAX_TEXT * 6 + 16 * 1024;
    let body_limit_text = body_limit.to_string();
    let text_limit_text = format!("over the limit of {MAX_TEXT}");
    // A valid JSON shape whose text holds bytes that are not UTF-8.
    let mut invalid_utf8 =
        format!(r#"{{"message_id":"r-utf8","chat_id":"{CHAT}","sender_id":"{SENDER}","text":"caf"#)
            .into_bytes();
    invalid_utf8.extend_from_slice(&[0xff, 0xfe, 0xc3]);
    invalid_utf8.extend_from_slice(br#""}"#);
    let mut huge = valid("r-huge");
    huge.insert("text".to_owned(), json!("h".repeat(1024 * 1024)));
    let huge = Value::Object(huge).to_string().into_bytes();

    let rows = vec![
        row(
            "malformed JSON",
            br#"{"message_id": "r-malformed", "chat_id": "#.to_vec(),
            400,
            &["not valid JSON"],
        ),
        row("empty body", Vec::new(), 400, &["not valid JSON"]),
        row(
            "JSON array",
            br#"[{"message_id":"r-array"}]"#.to_vec(),
            400,
            &["JSON object"],
        ),
        row(
            "JSON string",
            br#""just a string""#.to_vec(),
            400,
            &["JSON object"],
        ),
        row(
            "missing message_id",
            without("unused", "message_id"),
            400,
            &["`message_id` is required"],
        ),
        row(
            "missing chat_id",
            without("r-no-chat", "chat_id"),
            400,
            &["`chat_id` is required"],
        ),
        row(
            "missing sender_id",
            without("r-no-sender", "sender_id"),
            400,
            &["`sender_id` is required"],
        ),
        row(
            "missing text",
            without("r-no-text", "text"),
            400,
            &["`text` is required"],
        ),
        row(
            "null text",
            with("r-null-text", "text", Value::Null),
            400,
            &["`text` is required"],
        ),
        row(
            "number text",
            with("r-num-text", "text", json!(42)),
            400,
            &["`text` must be a string, not a number"],
        ),
        row(
            "array sender_id",
            with("r-arr-sender", "sender_id", json!(["alice"])),
            400,
            &["`sender_id` must be a string, not an array"],
        ),
        row(
            "object chat_id",
            with("r-obj-chat", "chat_id", json!({"id": CHAT})),
            400,
            &["`chat_id` must be a string, not an object"],
        ),
        row(
            "bool chat_type",
            with("r-bool-type", "chat_type", json!(true)),
            400,
            &["`chat_type` must be \"direct\" or \"group\"", "boolean"],
        ),
        row(
            "unknown chat_type",
            with("r-chan-type", "chat_type", json!("channel")),
            400,
            &["`chat_type` must be \"direct\" or \"group\"", "channel"],
        ),
        row(
            "empty text",
            with("r-empty", "text", json!("")),
            400,
            &["`text` must not be empty"],
        ),
        row(
            "whitespace text",
            with("r-blank", "text", json!(" \n\t  ")),
            400,
            &["`text` must not be empty"],
        ),
        row(
            "overlong message_id",
            with("unused", "message_id", json!(long_id)),
            400,
            &["`message_id`", "256"],
        ),
        row(
            "overlong chat_id",
            with("r-long-chat", "chat_id", json!(long_id)),
            400,
            &["`chat_id`", "256"],
        ),
        row(
            "overlong sender_id",
            with("r-long-sender", "sender_id", json!(long_id)),
            400,
            &["`sender_id`", "256"],
        ),
        row("invalid UTF-8", invalid_utf8, 400, &["not valid UTF-8"]),
        row(
            "text just over max_message_bytes",
            with("r-over", "text", json!("o".repeat(MAX_TEXT + 1))),
            413,
            &[
                "`text`",
                text_limit_text.as_str(),
                "channels.http.max_message_bytes",
            ],
        ),
        row(
            "1 MB body",
            huge,
            413,
            &[
                "body is larger than",
                body_limit_text.as_str(),
                "channels.http.max_message_bytes",
            ],
        ),
    ];

    let mut failures = Vec::new();
    for r in &rows {
        let problems = check(&gw, r).await;
        if !problems.is_empty() {
            failures.push(format!("{}:\n    {}", r.name, problems.join("\n    ")));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} rows answered wrongly:\n{}\n--- stderr tail ---\n{}",
        failures.len(),
        rows.len(),
        failures.join("\n"),
        gw.stderr_tail(30)
    );

    // The daemon is alive and a valid message still goes all the way through.
    let health = gw.get("/healthz").await.expect("GET /healthz");
    assert_eq!(health.status, 200, "{}", health.text);
    assert_eq!(health.text.trim(), "ok");

    // A text of exactly the limit is accepted.
    let mut good = valid("r-good");
    good.insert("text".to_owned(), json!("g".repeat(MAX_TEXT)));
    let accepted = gw
        .post_http_message(&Value::Object(good))
        .await
        .expect("post valid");
    assert_eq!(accepted.status, 202, "{}", accepted.text);
    assert_eq!(accepted.json, json!({"accepted": true, "duplicate": false}));

    let delivered = callback
        .wait_delivered(
            |d| d.iter().any(|x| x.reply_to.as_deref() == Some("r-good")),
            TIMEOUT,
        )
        .await
        .unwrap_or_else(|e| panic!("reply to the valid message: {e:#}\n{}", gw.stderr_tail(30)));
    assert_eq!(
        delivered.len(),
        1,
        "exactly one reply: no refused row produced an agent turn: {delivered:?}"
    );
    assert_eq!(callback.received().len(), 1, "{:?}", callback.received());
    assert_eq!(delivered[0].chat_id, CHAT);
    assert_eq!(delivered[0].text, "g".repeat(MAX_TEXT));

    // And only the valid message was committed to the inbox.
    let ids: Vec<String> = inspect::inbox(&gw, "", "")
        .await
        .expect("ListInbox")
        .into_iter()
        .map(|r| r.channel_message_id)
        .collect();
    assert_eq!(ids, vec!["r-good".to_owned()], "inbox rows");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_path_and_disabled_channel_answer_json_404() {
    // WebChat only: the HTTP channel is off by default.
    let gw = Gateway::start(GatewayOptions::default())
        .await
        .expect("start");
    for (what, path) in [
        ("disabled HTTP channel", "/channels/http/messages"),
        ("unknown path", "/no/such/path"),
    ] {
        let resp = gw
            .client()
            .post(format!("{}{path}", gw.http_base()))
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(Value::Object(valid("x")).to_string())
            .send()
            .await
            .expect("post");
        assert_eq!(resp.status().as_u16(), 404, "{what}");
        let content_type = resp
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        assert!(
            content_type.starts_with("application/json"),
            "{what}: {content_type:?}"
        );
        let body: Value = resp.json().await.expect("JSON body");
        assert_eq!(body["accepted"], false, "{what}: {body}");
        assert!(body["error"].is_string(), "{what}: {body}");
    }
}
