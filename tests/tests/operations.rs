//! Operating `gatewayd` through the real binary: health and readiness endpoints, JSON 404s,
//! SIGTERM exits cleanly, the daily log file and the database live under the data dir, and
//! neither a graceful stop nor a SIGKILL loses a message that was accepted but not yet answered.

use std::path::{Path, PathBuf};

use gateway_tests::{FakeCallback, FakeOpenAi, Gateway, GatewayOptions, TIMEOUT, poll_until};
use serde_json::json;

/// The daily log files `gatewayd.log.YYYY-MM-DD` in `dir`.
fn daily_logs(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| n.strip_prefix("gatewayd.log."))
                .is_some_and(|date| {
                    date.len() == 10
                        && date.char_indices().all(|(i, c)| {
                            if i == 4 || i == 7 {
                                c == '-'
                            } else {
                                c.is_ascii_digit()
                            }
                        })
                })
        })
        .collect()
}

fn logs_contain(dir: &Path, needle: &str) -> bool {
    daily_logs(dir).iter().any(|p| {
        std::fs::read_to_string(p).is_ok_and(|text| text.lines().any(|l| l.contains(needle)))
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_readiness_and_unknown_paths() {
    let mut gw = Gateway::start(GatewayOptions::default())
        .await
        .expect("start");

    let health = gw.get("/healthz").await.expect("GET /healthz");
    assert_eq!(health.status, 200, "{}", health.text);
    assert_eq!(health.text.trim(), "ok");

    let ready = gw.get("/readyz").await.expect("GET /readyz");
    assert_eq!(ready.status, 200, "{}", ready.text);
    assert_eq!(ready.text.trim(), "ready");

    let resp = gw
        .client()
        .get(format!("{}/definitely/not/here", gw.http_base()))
        .send()
        .await
        .expect("GET unknown path");
    assert_eq!(resp.status().as_u16(), 404);
    let content_type = resp
        .headers()
        .get(reqwest::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    assert!(
        content_type.starts_with("application/json"),
        "404 is JSON: {content_type:?}"
    );
    let body: serde_json::Value = resp.json().await.expect("JSON 404 body");
    assert_eq!(body["accepted"], false, "{body}");
    assert!(
        body["error"].as_str().is_some_and(|e| !e.is_empty()),
        "{body}"
    );

    let status = gw.stop().await.expect("SIGTERM stop");
    assert!(status.success(), "SIGTERM exits with success: {status}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_exits_cleanly_and_logs_and_database_are_in_the_data_dir() {
    let mut gw = Gateway::start(GatewayOptions::default())
        .await
        .expect("start");
    let data = gw.data_dir();
    let logs = data.join("logs");
    // SQLite's file is in the data directory; PostgreSQL's database is not a file there.
    let sqlite = gw.store_backend() == "sqlite";

    assert_eq!(
        data.join("gateway.db").is_file(),
        sqlite,
        "database file {}",
        data.join("gateway.db").display()
    );
    poll_until(
        TIMEOUT,
        "the daily log file says `gatewayd started`",
        || logs_contain(&logs, "gatewayd started"),
    )
    .await
    .unwrap_or_else(|e| {
        panic!(
            "{e}; files in {}: {:?}",
            logs.display(),
            std::fs::read_dir(&logs)
                .map(|d| d
                    .filter_map(Result::ok)
                    .map(|e| e.file_name())
                    .collect::<Vec<_>>())
                .unwrap_or_default()
        )
    });
    assert_eq!(daily_logs(&logs).len(), 1, "one daily file");
    // The same line goes to stderr too.
    assert!(
        gw.stderr_log().contains("gatewayd started"),
        "{}",
        gw.stderr_tail(20)
    );

    let status = gw.stop().await.expect("SIGTERM stop");
    assert!(
        status.success(),
        "SIGTERM exits with success: {status}\n{}",
        gw.stderr_tail(30)
    );
    assert_eq!(
        data.join("gateway.db").is_file(),
        sqlite,
        "the database stays"
    );
}

/// Options with the openai provider at `llm`, the HTTP channel at `callback`, and a short
/// shutdown grace.
fn openai_options(llm: &FakeOpenAi, callback: &FakeCallback) -> GatewayOptions {
    GatewayOptions {
        extra_config: format!(
            "[agent]\nprovider = \"openai\"\nbase_url = \"{}\"\nmodel = \"test\"\n\n\
             [channels.http]\nenabled = true\ncallback_url = \"{}\"\n",
            llm.base_url(),
            callback.url()
        ),
        gateway_extra: "shutdown_grace = \"300ms\"\n".to_owned(),
        ..GatewayOptions::default()
    }
}

fn msg(id: &str, text: &str) -> serde_json::Value {
    json!({"message_id": id, "chat_id": "ops-chat", "sender_id": "olga", "text": text})
}

#[derive(Clone, Copy, Debug)]
enum Stop {
    Sigterm,
    Sigkill,
}

/// Accept a message, stop the daemon while the LLM holds its turn, restart, and expect the
/// reply exactly once.
async fn accepted_message_survives(how: Stop) {
    let llm = FakeOpenAi::start().await;
    let callback = FakeCallback::start().await;
    let mut gw = Gateway::start(openai_options(&llm, &callback))
        .await
        .expect("start");

    llm.hold("slow");
    let accepted = gw
        .post_http_message(&msg("m-slow", "please be slow"))
        .await
        .expect("post");
    assert_eq!(accepted.status, 202, "{}", accepted.text);
    assert_eq!(accepted.json, json!({"accepted": true, "duplicate": false}));
    llm.wait_held("slow", 1, TIMEOUT)
        .await
        .expect("the turn reaches the LLM");

    match how {
        Stop::Sigterm => {
            let status = gw.stop().await.expect("SIGTERM stop");
            assert!(
                status.success(),
                "SIGTERM exits with success even with a turn in flight: {status}\n{}",
                gw.stderr_tail(30)
            );
        }
        Stop::Sigkill => gw.kill().await,
    }
    assert!(
        callback.received().is_empty(),
        "nothing was answered before the stop: {:?}",
        callback.received()
    );

    llm.release("slow");
    gw.restart().await.expect("restart");

    let delivered = callback
        .wait_delivered(
            |d| d.iter().any(|x| x.reply_to.as_deref() == Some("m-slow")),
            TIMEOUT,
        )
        .await
        .unwrap_or_else(|e| {
            panic!(
                "{how:?}: reply to the accepted message after restart: {e:#}\n{}",
                gw.stderr_tail(40)
            )
        });
    let reply = delivered
        .iter()
        .find(|d| d.reply_to.as_deref() == Some("m-slow"))
        .expect("found above");
    assert_eq!(reply.text, "llm: please be slow", "{reply:?}");
    assert_eq!(reply.chat_id, "ops-chat");

    // A later message of the same conversation is answered after any second answer to m-slow
    // would have been (the session and its delivery lane are ordered).
    let later = gw
        .post_http_message(&msg("m-later", "after the restart"))
        .await
        .expect("post");
    assert_eq!(later.status, 202, "{}", later.text);
    let delivered = callback
        .wait_delivered(
            |d| d.iter().any(|x| x.reply_to.as_deref() == Some("m-later")),
            TIMEOUT,
        )
        .await
        .unwrap_or_else(|e| panic!("{how:?}: reply to m-later: {e:#}\n{}", gw.stderr_tail(40)));
    let to_slow = delivered
        .iter()
        .filter(|d| d.reply_to.as_deref() == Some("m-slow"))
        .count();
    assert_eq!(
        to_slow, 1,
        "{how:?}: the accepted message is answered exactly once: {delivered:?}"
    );
    assert_eq!(delivered.len(), 2, "{how:?}: {delivered:?}");

    let status = gw.stop().await.expect("final stop");
    assert!(status.success(), "{status}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_with_a_turn_in_flight_loses_nothing() {
    accepted_message_survives(Stop::Sigterm).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_after_accepting_loses_nothing() {
    accepted_message_survives(Stop::Sigkill).await;
}
