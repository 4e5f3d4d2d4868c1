//! The database's size and rows per table in `gatewayctl status`, against a real `gatewayd`
//! whose pruner runs every second: the rows are counted at start and again after each prune
//! pass, in table and JSON output.

use gateway_tests::{
    FakeCallback, Gateway, GatewayOptions, TIMEOUT, gatewayctl_bin, poll_until_async,
};
use serde_json::{Value, json};

fn rows(status: &Value, table: &str) -> Option<u64> {
    status["table_rows"]
        .as_array()?
        .iter()
        .find(|t| t["table"] == table)?["rows"]
        .as_u64()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_shows_the_database_size_and_rows_per_table() {
    let callback = FakeCallback::start().await;
    let gw = Gateway::start(GatewayOptions::with_config(format!(
        "[channels.http]\nenabled = true\ncallback_url = \"{}\"\n[store]\nprune_interval = \"1s\"\n",
        callback.url()
    )))
    .await
    .expect("start");
    for i in 0..3 {
        let reply = gw
            .post_http_message(
                &json!({"message_id": format!("m{i}"), "chat_id": "c", "sender_id": "s", "text": "hi"}),
            )
            .await
            .expect("post");
        assert_eq!(reply.status, 202, "{}", reply.text);
    }
    callback
        .wait_delivered(|d| d.len() == 3, TIMEOUT)
        .await
        .expect("answered");
    // The next prune pass (nothing is old enough to go) counts the new rows.
    poll_until_async(TIMEOUT, "status counts 3 inbox rows", || async {
        rows(&gw.gatewayctl_json(&["status"]).await, "inbox") == Some(3)
    })
    .await
    .expect("rows counted");
    let s = gw.gatewayctl_json(&["status"]).await;
    assert_eq!(rows(&s, "transcript"), Some(6), "{s}");
    assert_eq!(rows(&s, "outbox"), Some(3), "{s}");
    assert_eq!(rows(&s, "sessions"), Some(1), "{s}");
    let bytes = s["database_bytes"].as_u64().expect("database_bytes");
    if gw.store_backend() == "sqlite" {
        let on_disk = std::fs::metadata(gw.data_dir().join("gateway.db"))
            .map(|m| m.len())
            .unwrap_or(0);
        assert!(
            bytes >= on_disk && on_disk > 0,
            "{bytes} reported, {on_disk} on disk"
        );
    } else {
        // PostgreSQL's size of the database (pg_database_size): at least its catalog's pages.
        assert!(bytes > 1 << 20, "{bytes} reported");
    }
    let out = tokio::process::Command::new(gatewayctl_bin())
        .args(["--addr", &gw.admin_url(), "status"])
        .env_remove("GATEWAYCTL_ADDR")
        .env_remove("GATEWAYCTL_TOKEN")
        .output()
        .await
        .expect("gatewayctl ran");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    let database = text
        .lines()
        .position(|l| l.starts_with("database   ") && l.contains("on disk"))
        .unwrap_or_else(|| panic!("no database line: {text}"));
    let listed: String = text.lines().skip(database + 1).take(3).collect();
    assert!(
        listed.contains("inbox 3") && listed.contains("transcript 6"),
        "{text}"
    );
    let store = format!("store      {}, ok", gw.store_backend());
    assert!(text.lines().any(|l| l == store), "{text}");
    assert_eq!(s["store_backend"], gw.store_backend(), "{s}");
    assert_eq!(s["store_ok"], true, "{s}");
    assert!(text.lines().all(|l| l.chars().count() <= 80), "{text}");
}
