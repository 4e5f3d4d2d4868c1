//! The daemon on PostgreSQL while its database goes away and comes back, through a TCP proxy
//! in front of the test cluster (`GATEWAY_TEST_PG_URL`; `tests/run.sh` starts one), so the
//! shared cluster itself keeps running: `/readyz` turns 503 naming the store and why, and 200
//! again; `gatewayctl status` shows the backend and its health in both outputs; a webhook that
//! cannot be committed is refused with 503 and a WebChat message gets the `unavailable` frame,
//! nothing is acknowledged, and after the database is back a retry of the same message is
//! answered once.

use gateway_tests::pg::{StoreChoice, cluster_addr};
use gateway_tests::tcp_proxy::TcpProxy;
use gateway_tests::{
    FakeCallback, Gateway, GatewayOptions, TIMEOUT, WebChatClient, gatewayctl_bin, poll_until_async,
};
use serde_json::{Value, json};

/// A gateway with the HTTP channel (and WebChat) on a fresh PostgreSQL database, reached
/// through a proxy the test can cut.
async fn start(callback: &FakeCallback) -> (Gateway, TcpProxy) {
    let proxy = TcpProxy::start(cluster_addr().expect("the test cluster"))
        .await
        .expect("proxy");
    let gw = Gateway::start(GatewayOptions {
        extra_config: format!(
            "[channels.http]\nenabled = true\ncallback_url = \"{}\"\n",
            callback.url()
        ),
        store: StoreChoice::Postgres {
            via: Some(proxy.addr()),
        },
        ..GatewayOptions::default()
    })
    .await
    .expect("start gatewayd on PostgreSQL");
    assert_eq!(gw.store_backend(), "postgres");
    (gw, proxy)
}

async fn wait_ready(gw: &Gateway, status: u16) {
    poll_until_async(TIMEOUT, &format!("/readyz answers {status}"), || async {
        gw.get("/readyz").await.is_ok_and(|r| r.status == status)
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", gw.stderr_tail(40)));
}

/// `gatewayctl status` as a table.
async fn status_table(gw: &Gateway) -> String {
    let out = tokio::process::Command::new(gatewayctl_bin())
        .args(["--addr", &gw.admin_url(), "status"])
        .env_remove("GATEWAYCTL_ADDR")
        .env_remove("GATEWAYCTL_TOKEN")
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(TIMEOUT, out)
        .await
        .expect("gatewayctl finished in time")
        .expect("gatewayctl ran");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    text
}

fn message(id: &str) -> Value {
    json!({"message_id": id, "chat_id": "c1", "sender_id": "s1", "text": format!("hello {id}")})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_and_status_follow_the_database_away_and_back() {
    let callback = FakeCallback::start().await;
    let (gw, proxy) = start(&callback).await;
    wait_ready(&gw, 200).await;
    let s = gw.gatewayctl_json(&["status"]).await;
    assert_eq!(s["store_backend"], "postgres", "{s}");
    assert_eq!(s["store_ok"], true, "{s}");
    assert_eq!(s["store_error"], Value::Null, "{s}");
    assert_eq!(s["ready"], true, "{s}");
    assert!(s["inbox_pending"].is_u64(), "{s}");
    let table = status_table(&gw).await;
    assert!(
        table.lines().any(|l| l == "store      postgres, ok"),
        "{table}"
    );

    proxy.cut();
    wait_ready(&gw, 503).await;
    let body = gw.get("/readyz").await.expect("readyz").text;
    assert!(
        body.contains("the postgres store is unavailable") && body.contains("[store] url_env"),
        "the body names the store, why, and where to look: {body}"
    );
    let s = gw.gatewayctl_json(&["status"]).await;
    assert_eq!(s["store_backend"], "postgres", "{s}");
    assert_eq!(s["store_ok"], false, "{s}");
    assert_eq!(s["ready"], false, "{s}");
    let error = s["store_error"].as_str().unwrap_or_default();
    assert!(error.contains("[store] url_env"), "{s}");
    assert_eq!(s["inbox_pending"], Value::Null, "unknown, not zero: {s}");
    let table = status_table(&gw).await;
    assert!(
        table
            .lines()
            .any(|l| l.starts_with("store      postgres, UNAVAILABLE: ")),
        "{table}"
    );
    assert!(
        table
            .lines()
            .any(|l| l == "health     NOT READY: the store does not answer"),
        "{table}"
    );
    assert!(
        table
            .lines()
            .any(|l| l == "queues     unknown while the store does not answer"),
        "{table}"
    );

    proxy.restore();
    wait_ready(&gw, 200).await;
    let s = gw.gatewayctl_json(&["status"]).await;
    assert_eq!(s["store_ok"], true, "{s}");
    assert_eq!(s["ready"], true, "{s}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_are_refused_while_the_database_is_away_and_answered_once_after() {
    let callback = FakeCallback::start().await;
    let (gw, proxy) = start(&callback).await;
    wait_ready(&gw, 200).await;
    let mut ws = WebChatClient::connect(&gw.ws_url("w1"))
        .await
        .expect("webchat connects");

    proxy.cut();
    wait_ready(&gw, 503).await;
    let refused = gw.post_http_message(&message("m1")).await.expect("post");
    assert_eq!(refused.status, 503, "{}", refused.text);
    assert_eq!(refused.json["accepted"], false, "{}", refused.text);
    ws.send_message("w-1", "hello while away")
        .await
        .expect("send");
    let frame = ws.recv(TIMEOUT).await.expect("a frame");
    assert_eq!(frame["type"], "error", "{frame}");
    assert_eq!(frame["code"], "unavailable", "{frame}");
    assert_eq!(frame["id"], "w-1", "{frame}");

    proxy.restore();
    wait_ready(&gw, 200).await;
    assert!(
        callback.received().is_empty(),
        "nothing was answered while the database was away: {:?}",
        callback.received()
    );
    // The retries are new to the store: nothing of the refused tries was kept.
    let accepted = gw.post_http_message(&message("m1")).await.expect("post");
    assert_eq!(accepted.status, 202, "{}", accepted.text);
    assert_eq!(accepted.json["duplicate"], false, "{}", accepted.text);
    ws.send_message("w-1", "hello while away")
        .await
        .expect("send");
    let frames = ws
        .recv_until(
            |f| f["type"] == "message" && f["reply_to"] == "w-1",
            TIMEOUT,
        )
        .await
        .expect("the WebChat retry is answered");
    let ack = frames
        .iter()
        .find(|f| f["type"] == "ack")
        .unwrap_or_else(|| panic!("acked before answered: {frames:?}"));
    assert_eq!(ack["duplicate"], false, "{frames:?}");
    callback
        .wait_delivered(
            |d| d.iter().any(|d| d.reply_to.as_deref() == Some("m1")),
            TIMEOUT,
        )
        .await
        .expect("the HTTP retry is answered");

    // A second retry is a duplicate, and the message keeps its one reply.
    let again = gw.post_http_message(&message("m1")).await.expect("post");
    assert_eq!(again.status, 202, "{}", again.text);
    assert_eq!(again.json["duplicate"], true, "{}", again.text);
    let outbox = gw
        .gatewayctl_json(&["outbox", "list", "--channel", "http"])
        .await;
    let rows = outbox["entries"]
        .as_array()
        .unwrap_or_else(|| panic!("outbox rows: {outbox}"));
    assert_eq!(rows.len(), 1, "one reply: {outbox}");
    let answered: Vec<_> = callback
        .received()
        .into_iter()
        .filter(|d| d.reply_to.as_deref() == Some("m1"))
        .collect();
    assert_eq!(answered.len(), 1, "{answered:?}");
}
