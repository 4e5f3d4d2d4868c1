//! The HTTP listener and the HTTP and WebChat channels against hostile or careless clients,
//! through the real `gatewayd` binary: idle and slowloris connections are closed by the server
//! (`http.header_timeout`, `http.body_timeout`) while real traffic is answered; a declared
//! `Content-Length` over the limit gets 413 before any body is sent; connections beyond
//! `http.max_connections` get 503 at once; HTTP-channel ids given as big JSON integers stay exact;
//! WebChat messages over the text limit get `too_large` and those over the transport limit a 1009
//! close; and an HTTP channel whose callback answers only POST recovers from `down`.
//!
//! Every wait is on a condition with a timeout (a read until EOF, a frame, the fake's Notify);
//! the dribbling clients write on an interval because slowness is what is under test.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use gateway_tests::{
    CallbackFault, FakeCallback, Gateway, GatewayOptions, TIMEOUT, WebChatClient, poll_until_async,
};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Reads until the server closes the connection (EOF or reset); returns what arrived. Errors if
/// the connection is still open after `timeout`.
async fn read_until_closed(tcp: &mut TcpStream, timeout: Duration) -> anyhow::Result<Vec<u8>> {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let read = tokio::time::timeout(timeout, async {
        loop {
            match tcp.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    read.map_err(|_| anyhow::anyhow!("the connection is still open after {timeout:?}"))?;
    Ok(got)
}

/// Writes `prefix`, then one byte of `drip` every 50 ms until the server closes the connection;
/// returns what the server sent. Errors if it is still open after `timeout`.
async fn dribble(
    addr: SocketAddr,
    prefix: &[u8],
    drip: u8,
    timeout: Duration,
) -> anyhow::Result<Vec<u8>> {
    let mut tcp = TcpStream::connect(addr).await?;
    tcp.write_all(prefix).await?;
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let mut tick = tokio::time::interval(Duration::from_millis(50));
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        tokio::select! {
            _ = tick.tick() => {
                if tcp.write_all(&[drip]).await.is_err() {
                    // Closed for writing: collect what the server said before closing.
                    got.extend(read_until_closed(&mut tcp, timeout).await?);
                    return Ok(got);
                }
            }
            r = tcp.read(&mut buf) => match r {
                Ok(0) | Err(_) => return Ok(got),
                Ok(n) => got.extend_from_slice(&buf[..n]),
            },
            _ = tokio::time::sleep_until(deadline) => {
                anyhow::bail!("the dribbling connection is still open after {timeout:?}")
            }
        }
    }
}

fn status_line(response: &[u8]) -> String {
    String::from_utf8_lossy(response)
        .lines()
        .next()
        .unwrap_or_default()
        .to_owned()
}

async fn post_ok(gw: &Gateway, id: &str) {
    let reply = gw
        .post_http_message(&json!({
            "message_id": id, "chat_id": "real", "sender_id": "alice", "text": "hello"
        }))
        .await
        .expect("post");
    assert_eq!(reply.status, 202, "{id}: {}", reply.text);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_and_idle_connections_are_closed_while_real_traffic_is_answered() {
    let callback = FakeCallback::start().await;
    let gw = Gateway::start(GatewayOptions {
        http_extra: "header_timeout = \"500ms\"\nbody_timeout = \"700ms\"\nmax_connections = 200"
            .to_owned(),
        ..GatewayOptions::with_config(format!(
            "[agent]\nprovider = \"echo\"\n\n[channels.http]\nenabled = true\ncallback_url = \"{}\"\n",
            callback.url()
        ))
    })
    .await
    .expect("start");
    let addr = gw.addr();
    let started = Instant::now();

    // 40 idle sockets that never send a byte.
    let mut idle = Vec::new();
    for _ in 0..40 {
        idle.push(TcpStream::connect(addr).await.expect("connect"));
    }
    // 10 slowloris clients dribbling headers, 10 dribbling a declared body.
    let mut slow = tokio::task::JoinSet::new();
    for i in 0..10 {
        slow.spawn(async move {
            let got = dribble(
                addr,
                b"GET /healthz HTTP/1.1\r\nhost: x\r\nx-slow: ",
                b'a',
                TIMEOUT,
            )
            .await;
            (format!("header dribbler {i}"), got)
        });
        slow.spawn(async move {
            let got = dribble(
                addr,
                b"POST /channels/http/messages HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: 100000\r\n\r\n{",
                b' ',
                TIMEOUT,
            )
            .await;
            (format!("body dribbler {i}"), got)
        });
    }

    // Real traffic meanwhile.
    for i in 0..5 {
        post_ok(&gw, &format!("real-{i}")).await;
    }
    callback
        .wait_delivered(|d| d.len() >= 5, TIMEOUT)
        .await
        .expect("the real messages are answered while the slow clients hang on");

    for (i, tcp) in idle.iter_mut().enumerate() {
        let got = read_until_closed(tcp, TIMEOUT)
            .await
            .unwrap_or_else(|e| panic!("idle socket {i}: {e}"));
        assert!(
            got.is_empty() || status_line(&got).contains("408"),
            "idle socket {i} got {:?}",
            String::from_utf8_lossy(&got)
        );
    }
    while let Some(done) = slow.join_next().await {
        let (who, got) = done.expect("task");
        let got = got.unwrap_or_else(|e| panic!("{who}: {e}"));
        if who.starts_with("body") {
            assert!(
                status_line(&got).contains("408"),
                "{who}: expected 408, got {:?}",
                String::from_utf8_lossy(&got)
            );
            assert!(
                String::from_utf8_lossy(&got).contains("http.body_timeout"),
                "{who}: {:?}",
                String::from_utf8_lossy(&got)
            );
        }
    }
    // Closed by the timeouts, long before the test's own limit.
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "closing the slow connections took {:?}",
        started.elapsed()
    );
    // The listener still serves.
    post_ok(&gw, "after").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_declared_body_over_the_limit_is_refused_before_it_is_sent() {
    let callback = FakeCallback::start().await;
    let gw = Gateway::start(GatewayOptions {
        // Long timeouts: the answer must come from the declared length, not a timeout.
        http_extra: "header_timeout = \"60s\"\nbody_timeout = \"60s\"".to_owned(),
        ..GatewayOptions::with_config(format!(
            "[channels.http]\nenabled = true\ncallback_url = \"{}\"\nmax_message_bytes = 1024\n",
            callback.url()
        ))
    })
    .await
    .expect("start");
    let mut tcp = TcpStream::connect(gw.addr()).await.expect("connect");
    tcp.write_all(
        b"POST /channels/http/messages HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: 1000000000\r\n\r\n",
    )
    .await
    .expect("write headers");
    let got = read_until_closed(&mut tcp, Duration::from_secs(5))
        .await
        .expect("answered and closed without the body");
    let text = String::from_utf8_lossy(&got);
    assert!(status_line(&got).contains("413"), "{text}");
    assert!(text.contains("channels.http.max_message_bytes"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_beyond_max_connections_get_503_at_once() {
    let gw = Gateway::start(GatewayOptions {
        http_extra: "header_timeout = \"60s\"\nmax_connections = 4".to_owned(),
        ..GatewayOptions::default()
    })
    .await
    .expect("start");
    let addr = gw.addr();
    let mut held = Vec::new();
    for _ in 0..4 {
        held.push(TcpStream::connect(addr).await.expect("connect"));
    }
    let mut extra = TcpStream::connect(addr).await.expect("connect");
    extra
        .write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .expect("write");
    let got = read_until_closed(&mut extra, Duration::from_secs(5))
        .await
        .expect("the extra connection is answered and closed at once");
    let text = String::from_utf8_lossy(&got);
    assert!(status_line(&got).contains("503"), "{text}");
    assert!(text.contains("http.max_connections"), "{text}");

    // Slots come back when connections close.
    drop(held);
    poll_until_async(TIMEOUT, "a new connection is served again", || async {
        let Ok(mut tcp) = TcpStream::connect(addr).await else {
            return false;
        };
        if tcp
            .write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
            .await
            .is_err()
        {
            return false;
        }
        read_until_closed(&mut tcp, Duration::from_secs(5))
            .await
            .is_ok_and(|got| status_line(&got).contains("200"))
    })
    .await
    .expect("served after the held connections closed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn big_integer_ids_are_kept_exactly() {
    let callback = FakeCallback::start().await;
    let gw = Gateway::start(GatewayOptions::with_config(format!(
        "[agent]\nprovider = \"echo\"\n\n[channels.http]\nenabled = true\ncallback_url = \"{}\"\n",
        callback.url()
    )))
    .await
    .expect("start");
    let ids = [
        "123456789012345678901234567890",
        "123456789012345678901234567891",
    ];
    for id in ids {
        let body = format!(
            r#"{{"message_id":{id},"chat_id":98765432109876543210987654321,"sender_id":18446744073709551616,"text":"hi {id}"}}"#
        );
        let reply = gw
            .post_raw("/channels/http/messages", Some("application/json"), body)
            .await
            .expect("post");
        assert_eq!(reply.status, 202, "{id}: {}", reply.text);
        let json: Value = serde_json::from_str(&reply.text).expect("json");
        assert_eq!(
            json["duplicate"], false,
            "{id} is not a duplicate of the other"
        );
    }
    let delivered = callback
        .wait_delivered(|d| d.len() >= 2, TIMEOUT)
        .await
        .expect("both answered");
    let mut reply_to: Vec<String> = delivered
        .iter()
        .map(|d| d.reply_to.clone().unwrap_or_default())
        .collect();
    reply_to.sort();
    assert_eq!(reply_to, ids);
    assert!(
        delivered
            .iter()
            .all(|d| d.chat_id == "98765432109876543210987654321"),
        "{delivered:?}"
    );
    for bad in ["1.5", "1e3"] {
        let body = format!(r#"{{"message_id":"m","chat_id":"c","sender_id":{bad},"text":"hi"}}"#);
        let reply = gw
            .post_raw("/channels/http/messages", Some("application/json"), body)
            .await
            .expect("post");
        assert_eq!(reply.status, 400, "{bad}: {}", reply.text);
        assert!(reply.text.contains("`sender_id`"), "{bad}: {}", reply.text);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webchat_messages_over_the_limits_get_too_large_or_a_1009_close() {
    let gw = Gateway::start(GatewayOptions::with_config(
        "[agent]\nprovider = \"echo\"\n\n[channels.webchat]\nenabled = true\nmax_message_bytes = 1024\n",
    ))
    .await
    .expect("start");
    let mut ws = WebChatClient::connect(&gw.ws_url("big"))
        .await
        .expect("connect");
    // Over the text limit, under the transport limit: an error frame, and the socket stays open.
    ws.send_json(&json!({"type": "message", "id": "m1", "text": "x".repeat(200 * 1024)}))
        .await
        .expect("send");
    let frames = ws
        .recv_until(|f| f["type"] == "error", TIMEOUT)
        .await
        .expect("an error frame");
    let error = frames.last().cloned().unwrap_or_default();
    assert_eq!(error["code"], "too_large", "{error}");
    assert_eq!(error["id"], "m1", "{error}");
    ws.send_message("m2", "still here").await.expect("send");
    ws.recv_until(|f| f["type"] == "ack" && f["id"] == "m2", TIMEOUT)
        .await
        .expect("the socket stayed open");

    // Over the transport limit (1 MiB + 64 KiB here): a close frame 1009 with a reason.
    let transport = (1 << 20) + 64 * 1024;
    ws.send_json(&json!({"type": "message", "id": "m3", "text": "y".repeat(transport + 1024)}))
        .await
        .expect("send");
    let closed = ws.wait_closed(TIMEOUT).await.expect("closed");
    let (code, reason) = closed.expect("a close frame");
    assert_eq!(code, 1009, "{reason}");
    assert!(reason.contains("too_large"), "{reason}");
}

async fn channel_state(gw: &Gateway, args: &[&str]) -> Value {
    gw.gatewayctl_json(args).await
}

fn http_state(list: &Value) -> String {
    list["channels"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["channel"] == "http"))
        .map(|c| c["state"].as_str().unwrap_or_default().to_owned())
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_post_only_callback_recovers_from_down_and_its_dead_letters_are_retried() {
    let callback = FakeCallback::start().await;
    callback.set_post_only(true);
    let gw = Gateway::start(GatewayOptions::with_config(format!(
        "[agent]\nprovider = \"echo\"\n\n[channels.http]\nenabled = true\ncallback_url = \"{}\"\n\n\
         [delivery]\nretry_backoff = \"20ms\"\nmax_backoff = \"50ms\"\nmax_attempts = 5\nprobe_interval = \"200ms\"\n",
        callback.url()
    )))
    .await
    .expect("start");
    for _ in 0..5 {
        callback.push_fault(CallbackFault::Status(503));
    }
    post_ok(&gw, "doomed").await;
    // Five 503s make the channel `down` and the reply a dead letter; the probe (a HEAD, which
    // this server answers 501) proves the endpoint reachable, so the channel recovers and the
    // dead letter is retried by itself.
    let delivered = callback
        .wait_delivered(|d| !d.is_empty(), TIMEOUT)
        .await
        .expect("the dead letter is retried after the probe");
    assert_eq!(delivered[0].reply_to.as_deref(), Some("doomed"));
    assert!(callback.probes() >= 1, "the recovery came from a probe");
    let info = channel_state(&gw, &["channels", "reconnect", "http"]).await;
    assert_eq!(info["state"], "connected", "{info}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconnect_reports_down_while_the_callback_is_unreachable() {
    // A port with nothing listening.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let url = format!("http://{}/hook", closed.local_addr().expect("addr"));
    drop(closed);
    let gw = Gateway::start(GatewayOptions::with_config(format!(
        "[agent]\nprovider = \"echo\"\n\n[channels.http]\nenabled = true\ncallback_url = \"{url}\"\n\n\
         [delivery]\nretry_backoff = \"20ms\"\nmax_backoff = \"50ms\"\nmax_attempts = 5\n",
    )))
    .await
    .expect("start");
    post_ok(&gw, "lost").await;
    poll_until_async(TIMEOUT, "the channel is down", || async {
        http_state(&channel_state(&gw, &["channels", "list"]).await) == "down"
    })
    .await
    .expect("down after five refused connections");
    let info = channel_state(&gw, &["channels", "reconnect", "http"]).await;
    assert_eq!(info["state"], "down", "{info}");
}
