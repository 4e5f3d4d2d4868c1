//! Keeps the load generator working: runs the `loadgen` binary for a few seconds at a low rate
//! against a real `gatewayd` over WebChat, and against its in-process baseline echo server, and
//! checks its JSON summary (every message answered, no errors, ordered percentiles).

use std::time::Duration;

use gateway_tests::{Gateway, GatewayOptions};
use serde_json::Value;

/// The whole loadgen run (3 s of sending plus connecting and draining) must end within this.
const RUN_TIMEOUT: Duration = Duration::from_secs(60);

/// Runs `loadgen ARGS --json` and returns its last stdout line parsed as JSON.
async fn loadgen(args: &[&str]) -> Value {
    let bin = env!("CARGO_BIN_EXE_loadgen");
    let run = tokio::process::Command::new(bin)
        .args(args)
        .arg("--json")
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(RUN_TIMEOUT, run)
        .await
        .unwrap_or_else(|_| panic!("loadgen {args:?} did not finish within {RUN_TIMEOUT:?}"))
        .unwrap_or_else(|e| panic!("running {bin}: {e}"));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "loadgen {args:?} failed with {}\n--- stdout ---\n{stdout}\n--- stderr ---\n{stderr}",
        out.status
    );
    let last = stdout.lines().last().unwrap_or_default();
    serde_json::from_str(last).unwrap_or_else(|e| {
        panic!("last stdout line of loadgen is not JSON ({e}): {last:?}\n--- stdout ---\n{stdout}")
    })
}

/// Checks one run's summary: all sent answered, none refused, percentiles present and ordered.
fn check_summary(summary: &Value, target: &str) {
    assert_eq!(summary["target"], target, "{summary}");
    let sent = summary["sent"].as_u64().expect("sent");
    let received = summary["received"].as_u64().expect("received");
    // 50 msg/s for 3 s: 150 scheduled; allow for timer granularity at the window's edges.
    assert!((140..=160).contains(&sent), "sent {sent}: {summary}");
    assert_eq!(received, sent, "every message gets its reply: {summary}");
    assert_eq!(summary["errors"], 0, "{summary}");
    assert_eq!(summary["unanswered"], 0, "{summary}");
    let lat = &summary["latency_ms"];
    let p: Vec<f64> = ["p50", "p90", "p99", "p99_9", "max"]
        .iter()
        .map(|k| {
            lat[*k]
                .as_f64()
                .unwrap_or_else(|| panic!("latency_ms.{k} missing: {summary}"))
        })
        .collect();
    assert!(p[0] > 0.0, "p50 is positive: {summary}");
    assert!(
        p.windows(2).all(|w| w[0] <= w[1]),
        "p50 <= p90 <= p99 <= p99.9 <= max: {summary}"
    );
    let throughput = summary["throughput"].as_f64().expect("throughput");
    assert!(
        (35.0..=65.0).contains(&throughput),
        "about 50 msg/s: {summary}"
    );
}

const LOW_RATE: [&str; 6] = ["--chats", "10", "--rate", "50", "--duration", "3"];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loadgen_drives_webchat_at_a_low_rate() {
    // The default WebChat limit (10/s per chat) is above the 5/s per chat sent here; raised
    // anyway so the smoke test never measures the rate limiter.
    let gw = Gateway::start(GatewayOptions::with_config(
        "[rate_limits.webchat]\nper_chat_per_second = 1000\nper_chat_burst = 1000\n",
    ))
    .await
    .expect("start gatewayd");
    let addr = gw.addr().to_string();
    let mut args = vec!["--target", "webchat", "--addr", addr.as_str()];
    args.extend(LOW_RATE);
    let summary = loadgen(&args).await;
    check_summary(&summary, "webchat");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loadgen_drives_its_baseline_echo_server() {
    let mut args = vec!["--target", "baseline"];
    args.extend(LOW_RATE);
    let summary = loadgen(&args).await;
    check_summary(&summary, "baseline");
}
