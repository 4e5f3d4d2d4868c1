//! Self-test of the fake servers in `gateway-tests` (no `gatewayd` involved):
//! request recording, fault injection, hold/release and shutdown behaviour of
//! `FakeOpenAi` and `FakeCallback`.

use std::time::Duration;

use gateway_tests::{CallbackFault, FakeCallback, FakeOpenAi, Fault, TIMEOUT};
use serde_json::{Value, json};

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .timeout(TIMEOUT)
        .build()
        .expect("build reqwest client")
}

fn chat_body(text: &str) -> Value {
    json!({
        "model": "test-model",
        "messages": [
            {"role": "system", "content": "be brief"},
            {"role": "user", "content": text}
        ]
    })
}

async fn complete(
    c: &reqwest::Client,
    llm: &FakeOpenAi,
    text: &str,
) -> reqwest::Result<reqwest::Response> {
    c.post(format!("{}/chat/completions", llm.base_url()))
        .bearer_auth("sk-test")
        .json(&chat_body(text))
        .send()
        .await
}

#[tokio::test]
async fn openai_answers_and_records() -> anyhow::Result<()> {
    let llm = FakeOpenAi::start().await;
    assert!(llm.base_url().starts_with("http://127.0.0.1:"));
    assert!(llm.base_url().ends_with("/v1"));
    let c = client();
    let resp = complete(&c, &llm, "hello").await?;
    assert_eq!(resp.status().as_u16(), 200);
    let body: Value = resp.json().await?;
    assert_eq!(body["object"], "chat.completion");
    assert_eq!(body["model"], "test-model");
    assert_eq!(body["choices"][0]["index"], 0);
    assert_eq!(body["choices"][0]["message"]["role"], "assistant");
    assert_eq!(body["choices"][0]["message"]["content"], "llm: hello");
    assert_eq!(body["choices"][0]["finish_reason"], "stop");
    assert!(body["usage"]["total_tokens"].is_u64());

    let reqs = llm.wait_for_requests(1, TIMEOUT).await?;
    assert_eq!(reqs.len(), 1);
    assert_eq!(reqs[0]["messages"][1]["content"], "hello");
    assert_eq!(llm.auth_headers(), vec![Some("Bearer sk-test".to_owned())]);

    // Waiting for more requests than arrive times out with a useful message.
    let err = llm
        .wait_for_requests(2, Duration::from_millis(50))
        .await
        .expect_err("only one request was sent");
    assert!(err.to_string().contains("\"hello\""), "{err}");
    Ok(())
}

#[tokio::test]
async fn openai_faults_are_fifo() -> anyhow::Result<()> {
    let llm = FakeOpenAi::start().await;
    let c = client();
    llm.push_fault(Fault::Status(503));
    llm.push_fault(Fault::Delay(Duration::from_millis(10)));
    llm.push_fault(Fault::Drop);

    let resp = complete(&c, &llm, "one").await?;
    assert_eq!(resp.status().as_u16(), 503);
    let body: Value = resp.json().await?;
    assert!(body["error"]["message"].is_string());
    assert_eq!(body["error"]["type"], "server_error");

    let resp = complete(&c, &llm, "two").await?;
    assert_eq!(resp.status().as_u16(), 200);
    let body: Value = resp.json().await?;
    assert_eq!(body["choices"][0]["message"]["content"], "llm: two");

    assert!(
        complete(&c, &llm, "three").await.is_err(),
        "dropped connection must surface as a client error"
    );

    // Hang: the client gives up on its own timeout.
    llm.push_fault(Fault::Hang);
    let hang = c
        .post(format!("{}/chat/completions", llm.base_url()))
        .timeout(Duration::from_millis(200))
        .json(&chat_body("four"))
        .send()
        .await;
    assert!(hang.is_err_and(|e| e.is_timeout()));

    // Queue drained: a normal answer again; faulted requests were recorded too.
    assert_eq!(complete(&c, &llm, "five").await?.status().as_u16(), 200);
    assert_eq!(llm.pending_faults(), 0);
    let reqs = llm.wait_for_requests(5, TIMEOUT).await?;
    let texts: Vec<String> = reqs.iter().map(gateway_tests::last_user_content).collect();
    assert_eq!(texts, ["one", "two", "three", "four", "five"]);
    Ok(())
}

#[tokio::test]
async fn openai_hold_and_release() -> anyhow::Result<()> {
    let llm = FakeOpenAi::start().await;
    let c = client();
    llm.hold("PARK");
    let url = format!("{}/chat/completions", llm.base_url());
    let mut parked = Vec::new();
    for i in 0..2 {
        let (c, url) = (c.clone(), url.clone());
        parked.push(tokio::spawn(async move {
            c.post(url)
                .json(&chat_body(&format!("PARK {i}")))
                .send()
                .await?
                .json::<Value>()
                .await
        }));
    }
    llm.wait_held("PARK", 2, TIMEOUT).await?;
    assert_eq!(llm.held_count("PARK"), 2);

    // Other requests are not held.
    let other: Value = complete(&c, &llm, "free").await?.json().await?;
    assert_eq!(other["choices"][0]["message"]["content"], "llm: free");
    assert!(parked.iter().all(|h| !h.is_finished()));

    llm.release("PARK");
    let mut contents = Vec::new();
    for h in parked {
        let body = tokio::time::timeout(TIMEOUT, h).await???;
        contents.push(body["choices"][0]["message"]["content"].clone());
    }
    contents.sort_by_key(Value::to_string);
    assert_eq!(contents, [json!("llm: PARK 0"), json!("llm: PARK 1")]);
    assert_eq!(llm.held_count("PARK"), 0);

    // After release the marker no longer holds.
    let again: Value = complete(&c, &llm, "PARK again").await?.json().await?;
    assert_eq!(again["choices"][0]["message"]["content"], "llm: PARK again");
    Ok(())
}

#[tokio::test]
async fn openai_drop_closes_hanging_requests() -> anyhow::Result<()> {
    let llm = FakeOpenAi::start().await;
    let c = client();
    llm.push_fault(Fault::Hang);
    llm.hold("H");
    let url = format!("{}/chat/completions", llm.base_url());
    let hang = tokio::spawn({
        let (c, url) = (c.clone(), url.clone());
        async move { c.post(url).json(&chat_body("x")).send().await }
    });
    let held = tokio::spawn(async move { c.post(url).json(&chat_body("H")).send().await });
    llm.wait_held("H", 1, TIMEOUT).await?;
    llm.wait_for_requests(2, TIMEOUT).await?;
    drop(llm);
    // Both must fail well before the client's own 20 s timeout.
    let r1 = tokio::time::timeout(Duration::from_secs(5), hang).await??;
    let r2 = tokio::time::timeout(Duration::from_secs(5), held).await??;
    assert!(r1.is_err() && r2.is_err());
    Ok(())
}

async fn deliver(
    c: &reqwest::Client,
    cb: &FakeCallback,
    chat: &str,
    id: &str,
    text: &str,
) -> reqwest::Result<reqwest::Response> {
    c.post(cb.url())
        .json(&json!({"message_id": id, "chat_id": chat, "text": text, "reply_to": "in-1"}))
        .send()
        .await
}

#[tokio::test]
async fn callback_records_deliveries() -> anyhow::Result<()> {
    let cb = FakeCallback::start().await;
    assert!(cb.url().starts_with("http://127.0.0.1:"));
    let c = client();
    let resp = deliver(&c, &cb, "chat-a", "m1", "hi").await?;
    assert_eq!(resp.status().as_u16(), 200);
    let got = cb.wait_delivered(|d| !d.is_empty(), TIMEOUT).await?;
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].message_id, "m1");
    assert_eq!(got[0].chat_id, "chat-a");
    assert_eq!(got[0].text, "hi");
    assert_eq!(got[0].reply_to.as_deref(), Some("in-1"));
    assert_eq!(got[0].status_returned, 200);
    assert_eq!(got[0].path, "/hook");

    let err = cb
        .wait_delivered(|d| d.len() >= 2, Duration::from_millis(50))
        .await
        .expect_err("only one delivery");
    assert!(err.to_string().contains("\"hi\""), "{err}");
    Ok(())
}

#[tokio::test]
async fn callback_faults() -> anyhow::Result<()> {
    let cb = FakeCallback::start().await;
    let c = client();
    cb.push_fault(CallbackFault::Status429 {
        retry_after: "7".to_owned(),
    });
    cb.push_fault_for_chat("b", CallbackFault::Status(500));
    cb.push_fault(CallbackFault::Drop);

    // Chat "b" consumes its own fault first; the global queue is untouched.
    let resp = deliver(&c, &cb, "b", "1", "x").await?;
    assert_eq!(resp.status().as_u16(), 500);
    let resp = deliver(&c, &cb, "a", "2", "y").await?;
    assert_eq!(resp.status().as_u16(), 429);
    assert_eq!(
        resp.headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok()),
        Some("7")
    );
    assert!(deliver(&c, &cb, "a", "3", "z").await.is_err());
    assert_eq!(
        deliver(&c, &cb, "a", "4", "w").await?.status().as_u16(),
        200
    );

    // Sticky mode: chat "slow" hangs every time until cleared.
    cb.set_chat_mode("slow", Some(CallbackFault::Hang));
    for id in ["5", "6"] {
        let r = c
            .post(cb.url())
            .timeout(Duration::from_millis(200))
            .json(&json!({"message_id": id, "chat_id": "slow", "text": "t"}))
            .send()
            .await;
        assert!(r.is_err_and(|e| e.is_timeout()));
    }
    cb.set_chat_mode("slow", None);
    assert_eq!(
        deliver(&c, &cb, "slow", "7", "t").await?.status().as_u16(),
        200
    );

    let all = cb.received();
    let statuses: Vec<(String, u16)> = all
        .iter()
        .map(|d| (d.message_id.clone(), d.status_returned))
        .collect();
    let expect: Vec<(String, u16)> = [
        ("1", 500),
        ("2", 429),
        ("3", 0),
        ("4", 200),
        ("5", 0),
        ("6", 0),
        ("7", 200),
    ]
    .iter()
    .map(|(id, s)| ((*id).to_owned(), *s))
    .collect();
    assert_eq!(statuses, expect);
    let delivered: Vec<String> = cb.delivered().into_iter().map(|d| d.message_id).collect();
    assert_eq!(delivered, ["4", "7"]);
    Ok(())
}

#[tokio::test]
async fn callback_delay_counts_once_answered() -> anyhow::Result<()> {
    let cb = FakeCallback::start().await;
    let c = client();
    cb.push_fault(CallbackFault::Delay(Duration::from_millis(100)));
    let pending = tokio::spawn({
        let c = c.clone();
        let url = cb.url();
        async move {
            c.post(url)
                .json(&json!({"message_id": "d", "chat_id": "c", "text": "late"}))
                .send()
                .await
        }
    });
    let recv = cb.wait_received(|d| d.len() == 1, TIMEOUT).await?;
    assert_eq!(recv[0].status_returned, 0, "not answered yet");
    let got = cb.wait_delivered(|d| d.len() == 1, TIMEOUT).await?;
    assert_eq!(got[0].text, "late");
    assert_eq!(pending.await??.status().as_u16(), 200);
    Ok(())
}

#[tokio::test]
async fn poll_until_works() -> anyhow::Result<()> {
    let mut n = 0;
    gateway_tests::poll_until(TIMEOUT, "counter reaches 3", || {
        n += 1;
        n >= 3
    })
    .await?;
    let err = gateway_tests::poll_until(Duration::from_millis(50), "never", || false)
        .await
        .expect_err("must time out");
    assert!(err.to_string().contains("never"));
    Ok(())
}
