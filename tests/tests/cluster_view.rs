//! The cluster view as an operator reads it: `gatewayctl cluster` (table and `--json`) and
//! `gatewayctl status` against a real `gatewayd` in multi-instance mode on PostgreSQL (the test
//! cluster of `GATEWAY_TEST_PG_URL`, which `tests/run.sh` starts), with other members written
//! into the shared tables as their rows would be: one that stopped heartbeating, one that is
//! leaving and still holds a lease. Without `[cluster]` the view says so, never an error.

use std::process::Stdio;

use gateway_tests::pg::StoreChoice;
use gateway_tests::{Gateway, GatewayOptions, TIMEOUT, gatewayctl_bin, poll_until_async};
use serde_json::Value;
use tokio::process::Command;

/// Runs `gatewayctl --addr <gw> ARGS…`, expects success and returns stdout.
async fn ctl(gw: &Gateway, args: &[&str]) -> String {
    let addr = gw.admin_url();
    let out = tokio::time::timeout(
        TIMEOUT,
        Command::new(gatewayctl_bin())
            .arg("--addr")
            .arg(&addr)
            .args(args)
            .env_remove("GATEWAYCTL_ADDR")
            .env_remove("GATEWAYCTL_TOKEN")
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("gatewayctl finished in time")
    .expect("gatewayctl ran");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        out.status.success() && stderr.is_empty(),
        "gatewayctl {args:?}: {:?}\n{stdout}\n{stderr}",
        out.status
    );
    stdout
}

async fn ctl_json(gw: &Gateway, args: &[&str]) -> Value {
    let out = ctl(gw, args).await;
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("not JSON ({e}): {out}"))
}

fn member<'a>(view: &'a Value, id: &str) -> Option<&'a Value> {
    view["instances"]
        .as_array()?
        .iter()
        .find(|i| i["instance_id"] == id)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gatewayctl_cluster_lists_every_member_with_its_state_partitions_and_leases() {
    let gw = Gateway::start(GatewayOptions {
        extra_config: "[cluster]\nenabled = true\n\
             instance_id = \"view-a\"\npartitions = 8\nlease_ttl = \"3s\"\n\
             renew_interval = \"500ms\"\nsecret_env = \"GW_TEST_CLUSTER_SECRET\"\n"
            .to_owned(),
        env: vec![(
            "GW_TEST_CLUSTER_SECRET".to_owned(),
            "a-test-secret-of-enough-length".to_owned(),
        )],
        store: StoreChoice::Postgres { via: None },
        ..GatewayOptions::default()
    })
    .await
    .expect("start gatewayd in cluster mode");

    // Alone in its cluster, the instance takes every partition.
    poll_until_async(
        TIMEOUT,
        "view-a live and holding all 8 partitions",
        || async {
            let v = ctl_json(&gw, &["cluster", "--json"]).await;
            member(&v, "view-a").is_some_and(|m| {
                m["live"] == true && m["partitions"].as_array().is_some_and(|p| p.len() == 8)
            }) && v["unowned_partitions"] == 0
        },
    )
    .await
    .expect("the lone instance takes every partition");

    // Two more members, as their own processes would have written them: one that stopped
    // heartbeating a minute ago, one that announced it is stopping and still holds a lease.
    gw.execute_sql(
        "INSERT INTO cluster_instances (instance_id, started_at, heartbeat_at, version, leaving)
         VALUES ('view-dead', gw_now_ms() - 600000, gw_now_ms() - 60000, '0.0.9', FALSE),
                ('view-leaving', gw_now_ms() - 120000, gw_now_ms() - 100, '0.0.9', TRUE);
         INSERT INTO leases (name, owner, epoch, expires_at, acquired_at)
         VALUES ('singleton:view-test', 'view-leaving', 4, gw_now_ms() + 600000, gw_now_ms()),
                ('conn:view-expired', 'view-dead', 2, gw_now_ms() - 1000, gw_now_ms() - 70000);",
    )
    .await
    .expect("insert members");

    let v = ctl_json(&gw, &["cluster", "--json"]).await;
    assert_eq!(v["enabled"], true, "{v}");
    assert_eq!(v["instance_id"], "view-a", "{v}");
    assert_eq!(v["partitions"], 8, "{v}");
    assert_eq!(v["unowned_partitions"], 0, "{v}");
    let a = member(&v, "view-a").expect("view-a");
    assert_eq!(
        a["partitions"],
        serde_json::json!([0, 1, 2, 3, 4, 5, 6, 7]),
        "{v}"
    );
    assert!(
        a["heartbeat_age_ms"].as_u64().is_some_and(|ms| ms < 3000),
        "{v}"
    );
    let dead = member(&v, "view-dead").expect("view-dead");
    assert_eq!(dead["live"], false, "{v}");
    assert_eq!(dead["leaving"], false, "{v}");
    assert!(
        dead["heartbeat_age_ms"]
            .as_u64()
            .is_some_and(|ms| ms >= 60_000),
        "{v}"
    );
    assert!(
        dead["age_ms"].as_u64().is_some_and(|ms| ms >= 600_000),
        "{v}"
    );
    assert_eq!(
        dead["leases"],
        serde_json::json!([]),
        "an expired lease is not held: {v}"
    );
    let leaving = member(&v, "view-leaving").expect("view-leaving");
    assert_eq!(leaving["live"], false, "{v}");
    assert_eq!(leaving["leaving"], true, "{v}");
    assert_eq!(
        leaving["leases"],
        serde_json::json!(["singleton:view-test"]),
        "{v}"
    );
    // `--output json` is the same document.
    let same = ctl_json(&gw, &["--output", "json", "cluster"]).await;
    assert_eq!(
        same["instances"].as_array().map(Vec::len),
        Some(3),
        "{same}"
    );

    let table = ctl(&gw, &["cluster"]).await;
    assert!(table.contains("this instance view-a"), "{table}");
    for header in [
        "INSTANCE",
        "AGE",
        "LAST HEARTBEAT",
        "STATE",
        "PARTITIONS",
        "LEASES",
    ] {
        assert!(table.contains(header), "{header} missing:\n{table}");
    }
    let line = |id: &str| {
        table
            .lines()
            .find(|l| l.starts_with(id))
            .unwrap_or_else(|| panic!("no row for {id}:\n{table}"))
            .to_owned()
    };
    let a_row = line("view-a *");
    assert!(
        a_row.contains("live") && a_row.contains("8 (0-7)"),
        "{table}"
    );
    assert!(line("view-dead").contains("dead"), "{table}");
    let leaving_row = line("view-leaving");
    assert!(
        leaving_row.contains("leaving") && leaving_row.contains("singleton:view-test"),
        "{table}"
    );

    // `status` names the instance and the cluster.
    let status = ctl(&gw, &["status"]).await;
    assert!(
        status.contains("cluster    this instance view-a; 1 live of 3 instance(s)"),
        "{status}"
    );
    let status = ctl_json(&gw, &["status", "--output", "json"]).await;
    assert_eq!(status["cluster_enabled"], true, "{status}");
    assert_eq!(status["instance_id"], "view-a", "{status}");
    assert_eq!(status["cluster_live_instances"], 1, "{status}");
    assert_eq!(status["unowned_partitions"], 0, "{status}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_cluster_the_view_says_so() {
    let gw = Gateway::start(GatewayOptions::default())
        .await
        .expect("start gatewayd");
    let v = ctl_json(&gw, &["cluster", "--json"]).await;
    assert_eq!(v["enabled"], false, "{v}");
    assert_eq!(v["instance_id"], Value::Null, "{v}");
    assert_eq!(v["instances"], serde_json::json!([]), "{v}");
    let table = ctl(&gw, &["cluster"]).await;
    assert_eq!(
        table.trim(),
        "not in a cluster ([cluster] enabled = false)",
        "{table}"
    );
    let status = ctl_json(&gw, &["status", "--output", "json"]).await;
    assert_eq!(status["cluster_enabled"], false, "{status}");
    assert_eq!(status["instance_id"], Value::Null, "{status}");
    let status = ctl(&gw, &["status"]).await;
    assert!(!status.contains("cluster "), "{status}");
}
