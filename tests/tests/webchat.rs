//! The WebChat channel through the real `gatewayd` binary (WebChat is enabled by default): the
//! self-contained chat page, ack-before-reply, dedupe of a re-sent client id (also across a
//! reconnect), error frames that keep the connection open, and handshake rejections.

use gateway_tests::{Gateway, GatewayOptions, TIMEOUT, WebChatClient};
use serde_json::{Value, json};

fn is_reply_to(frame: &Value, id: &str) -> bool {
    frame["type"] == "message" && frame["reply_to"] == id
}

/// Sends `{"type":"message"}` and checks that the very next frame is its ack.
async fn send_and_ack(ws: &mut WebChatClient, id: &str, text: &str) -> Value {
    ws.send_message(id, text).await.expect("send message");
    let ack = ws.recv(TIMEOUT).await.expect("ack frame");
    assert_eq!(
        ack["type"], "ack",
        "the first frame after a message is its ack: {ack}"
    );
    assert_eq!(ack["id"], id, "the ack echoes the client id: {ack}");
    ack
}

/// Waits for the reply to `id`, returning every frame received up to and including it.
async fn frames_until_reply(ws: &mut WebChatClient, id: &str) -> Vec<Value> {
    ws.recv_until(|f| is_reply_to(f, id), TIMEOUT)
        .await
        .unwrap_or_else(|e| panic!("reply to {id}: {e:#}"))
}

/// Sends a frame expected to be refused and returns the error frame it gets.
async fn expect_error(ws: &mut WebChatClient, what: &str, code: &str) -> Value {
    let frame = ws
        .recv(TIMEOUT)
        .await
        .unwrap_or_else(|e| panic!("{what}: no answer, connection should stay open: {e:#}"));
    assert_eq!(frame["type"], "error", "{what}: {frame}");
    assert_eq!(frame["code"], code, "{what}: {frame}");
    let message = frame["message"].as_str().unwrap_or_default();
    assert!(
        !message.trim().is_empty(),
        "{what}: error frames carry a message: {frame}"
    );
    frame
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chat_page_is_self_contained_html_pointing_at_the_websocket() {
    let gw = Gateway::start(GatewayOptions::default())
        .await
        .expect("start");
    let resp = gw
        .client()
        .get(format!("{}/", gw.http_base()))
        .send()
        .await
        .expect("GET /");
    assert_eq!(resp.status().as_u16(), 200);
    let content_type = resp
        .headers()
        .get(reqwest::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    assert!(
        content_type.starts_with("text/html"),
        "content type: {content_type:?}"
    );
    let page = resp.text().await.expect("page body");
    assert!(
        page.to_ascii_lowercase().contains("<html"),
        "an HTML page: {page}"
    );
    assert!(page.contains("/ws"), "the page opens the /ws socket");
    for external in ["http://", "https://"] {
        assert!(
            !page.contains(external),
            "the page references an external host ({external}); it must not load external assets"
        );
    }
    let lower = page.to_ascii_lowercase();
    for attr in ["src=\"//", "href=\"//", "src='//", "href='//", "url(//"] {
        assert!(
            !lower.contains(attr),
            "protocol-relative external reference {attr:?} in the page"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn message_is_acked_before_it_is_answered() {
    let gw = Gateway::start(GatewayOptions::default())
        .await
        .expect("start");
    let mut ws = WebChatClient::connect(&gw.ws_url("order-chat"))
        .await
        .expect("connect");

    ws.send_message("client-1", "hello from the browser")
        .await
        .expect("send");
    let first = ws.recv(TIMEOUT).await.expect("first frame");
    assert_eq!(
        first,
        json!({"type": "ack", "id": "client-1", "duplicate": false}),
        "the ack comes first"
    );
    let second = ws.recv(TIMEOUT).await.expect("second frame");
    assert_eq!(second["type"], "message", "then the reply: {second}");
    assert_eq!(
        second["text"], "hello from the browser",
        "the echo agent repeats the text: {second}"
    );
    assert_eq!(second["reply_to"], "client-1", "{second}");
    let reply_id = second["id"].as_str().unwrap_or_default();
    assert!(
        !reply_id.is_empty() && reply_id != "client-1",
        "the reply has its own id: {second}"
    );
    ws.close().await.expect("close");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resent_client_id_gives_one_agent_turn_also_after_reconnecting() {
    let gw = Gateway::start(GatewayOptions::default())
        .await
        .expect("start");
    let url = gw.ws_url("dedupe-chat");

    // First socket: the message, its reply, then the same client id again.
    let mut ws = WebChatClient::connect(&url).await.expect("connect");
    let ack = send_and_ack(&mut ws, "c-1", "only once please").await;
    assert_eq!(ack["duplicate"], false, "{ack}");
    let frames = frames_until_reply(&mut ws, "c-1").await;
    assert_eq!(frames.len(), 1, "just the reply: {frames:?}");
    assert_eq!(frames[0]["text"], "only once please");

    let ack = send_and_ack(&mut ws, "c-1", "only once please").await;
    assert_eq!(ack["duplicate"], true, "same socket re-send: {ack}");

    // A later distinct message is answered after any turn of the re-send would have been: one
    // session handles its messages in order and the reply lane is ordered.
    let ack = send_and_ack(&mut ws, "c-2", "second message").await;
    assert_eq!(ack["duplicate"], false, "{ack}");
    let frames = frames_until_reply(&mut ws, "c-2").await;
    assert!(
        !frames.iter().any(|f| is_reply_to(f, "c-1")),
        "no second reply to c-1 after the duplicate: {frames:?}"
    );
    assert_eq!(frames.last().expect("reply")["text"], "second message");
    ws.close().await.expect("close");

    // A new socket on the same chat_id re-sends c-1 (e.g. a browser reload).
    let mut ws = WebChatClient::connect(&url).await.expect("reconnect");
    let ack = send_and_ack(&mut ws, "c-1", "only once please").await;
    assert_eq!(ack["duplicate"], true, "re-send after reconnect: {ack}");
    let ack = send_and_ack(&mut ws, "c-3", "third message").await;
    assert_eq!(ack["duplicate"], false, "{ack}");
    let frames = frames_until_reply(&mut ws, "c-3").await;
    assert!(
        !frames.iter().any(|f| is_reply_to(f, "c-1")),
        "no second reply to c-1 after the reconnect re-send: {frames:?}"
    );
    let other: Vec<_> = frames.iter().filter(|f| !is_reply_to(f, "c-3")).collect();
    assert!(
        other.is_empty(),
        "nothing but the reply to c-3 arrives: {frames:?}"
    );
    ws.close().await.expect("close");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_frames_get_error_codes_and_the_connection_stays_open() {
    let gw = Gateway::start(GatewayOptions::with_config(
        "[channels.webchat]\nmax_message_bytes = 1024\n",
    ))
    .await
    .expect("start");
    let mut ws = WebChatClient::connect(&gw.ws_url("errors-chat"))
        .await
        .expect("connect");

    ws.send_raw("{this is not json").await.expect("send");
    expect_error(&mut ws, "invalid JSON", "invalid_json").await;

    ws.send_json(&json!({"type": "typing", "id": "e-type", "text": "hi"}))
        .await
        .expect("send");
    expect_error(&mut ws, "unknown type", "unknown_type").await;

    ws.send_json(&json!({"type": "message", "text": "no id here"}))
        .await
        .expect("send");
    expect_error(&mut ws, "missing id", "invalid_id").await;

    ws.send_json(&json!({"type": "message", "id": "e-empty", "text": ""}))
        .await
        .expect("send");
    let frame = expect_error(&mut ws, "empty text", "empty_text").await;
    assert_eq!(
        frame["id"], "e-empty",
        "the error names the message: {frame}"
    );

    ws.send_json(&json!({"type": "message", "id": "e-blank", "text": "  \n\t "}))
        .await
        .expect("send");
    expect_error(&mut ws, "whitespace-only text", "empty_text").await;

    ws.send_message("e-big", &"x".repeat(1025))
        .await
        .expect("send");
    let frame = expect_error(&mut ws, "text over the limit", "too_large").await;
    assert_eq!(frame["id"], "e-big", "{frame}");
    assert!(
        frame["message"]
            .as_str()
            .unwrap_or_default()
            .contains("1024"),
        "the error names the limit: {frame}"
    );

    ws.send_binary(b"\x00\x01binary".to_vec())
        .await
        .expect("send");
    expect_error(&mut ws, "binary frame", "unsupported_frame").await;

    // Still open and working: a good message gets its ack and reply, and so does a text of
    // exactly the limit.
    let ack = send_and_ack(&mut ws, "good-1", "still here").await;
    assert_eq!(ack["duplicate"], false, "{ack}");
    let frames = frames_until_reply(&mut ws, "good-1").await;
    assert_eq!(frames.len(), 1, "only the reply: {frames:?}");
    assert_eq!(frames[0]["text"], "still here");

    let at_limit = "y".repeat(1024);
    send_and_ack(&mut ws, "good-2", &at_limit).await;
    let frames = frames_until_reply(&mut ws, "good-2").await;
    assert_eq!(frames.len(), 1, "only the reply: {frames:?}");
    assert_eq!(frames[0]["text"], at_limit.as_str());
    ws.close().await.expect("close");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_without_a_valid_chat_id_is_rejected_before_upgrade() {
    let gw = Gateway::start(GatewayOptions::default())
        .await
        .expect("start");
    let base = format!("ws://{}/ws", gw.addr());
    let too_long = "x".repeat(129);
    let cases = [
        ("no chat_id", base.clone()),
        ("no query value", format!("{base}?chat_id=")),
        ("other parameter only", format!("{base}?chat=abc")),
        ("space in chat_id", gw.ws_url("has space")),
        ("slash in chat_id", gw.ws_url("a/b")),
        ("129-char chat_id", gw.ws_url(&too_long)),
    ];
    for (what, url) in cases {
        let status = WebChatClient::connect_expect_rejection(&url)
            .await
            .unwrap_or_else(|e| panic!("{what} ({url}): {e:#}"));
        assert_eq!(status, 400, "{what} ({url})");
    }

    // A valid chat id (all allowed characters, the maximum length) still connects.
    let ok_id = format!("Aa0-_.:{}", "z".repeat(121));
    assert_eq!(ok_id.len(), 128);
    let mut ws = WebChatClient::connect(&gw.ws_url(&ok_id))
        .await
        .expect("a valid chat id connects");
    send_and_ack(&mut ws, "v-1", "valid").await;
    frames_until_reply(&mut ws, "v-1").await;
    ws.close().await.expect("close");
}
