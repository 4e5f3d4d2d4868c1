//! Benchmark: many concurrent runs of a 10-node no-op workflow (one root, eight parallel nodes,
//! one join) through the real engine and the SQLite store, measuring the total time and the
//! scheduling overhead per node. Run with `cargo bench -p gatewayd --bench workflow_runs`;
//! `RUNS=n` sets the number of runs (default 10000).

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use gatewayd::agent::tools::MessageTarget;
use gatewayd::events::{Event, EventBus};
use gatewayd::store::sqlite::SqliteStore;
use gatewayd::store::{RunOrigin, RunStatus, SharedStore};
use gatewayd::workflow::run::{Engine, NodeServices};
use serde_json::Value;
use tokio::sync::broadcast;

struct NoOp;

#[async_trait]
impl NodeServices for NoOp {
    async fn complete(&self, _: Option<&str>, _: &str) -> Result<String, String> {
        Ok(String::new())
    }
    async fn call_tool(&self, _: &str, _: Value, _: Option<&RunOrigin>) -> Result<Value, String> {
        Ok(Value::Null)
    }
    async fn send_message(&self, _: MessageTarget, _: &str) -> Result<i64, String> {
        Ok(0)
    }
    fn tool_names(&self) -> HashSet<String> {
        HashSet::from(["noop".to_owned()])
    }
}

const NODES: usize = 10;

fn workflow() -> String {
    let mut toml = String::from(
        "name = \"fan\"\ntools = [\"noop\"]\n[[nodes]]\nid = \"n0\"\nkind = \"tool\"\ntool = \"noop\"\n",
    );
    for i in 1..NODES - 1 {
        toml.push_str(&format!(
            "[[nodes]]\nid = \"n{i}\"\nkind = \"tool\"\ntool = \"noop\"\nafter = [\"n0\"]\n"
        ));
    }
    let middle: Vec<String> = (1..NODES - 1).map(|i| format!("\"n{i}\"")).collect();
    toml.push_str(&format!(
        "[[nodes]]\nid = \"n{}\"\nkind = \"tool\"\ntool = \"noop\"\nafter = [{}]\n",
        NODES - 1,
        middle.join(", ")
    ));
    toml
}

fn main() {
    let runs: usize = std::env::var("RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000);
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    runtime.block_on(async move {
        let dir = tempfile::tempdir().expect("tempdir");
        let flows = dir.path().join("workflows");
        std::fs::create_dir_all(&flows).expect("dir");
        std::fs::write(flows.join("fan.toml"), workflow()).expect("workflow");
        let store: SharedStore = Arc::new(SqliteStore::open(&dir.path().join("g.db")).expect("store"));
        let events = EventBus::new(runs * (2 * NODES + 2) + 1024);
        let mut rx = events.subscribe();
        let engine = Engine::load(flows, store, events, Arc::new(NoOp));
        assert!(engine.errors().is_empty(), "{:?}", engine.errors());

        let started = Instant::now();
        for _ in 0..runs {
            engine.start("fan", Value::Null, None).await.expect("start");
        }
        let submitted = started.elapsed();
        let mut done = 0;
        let mut failed = 0;
        while done < runs {
            match tokio::time::timeout(Duration::from_secs(600), rx.recv()).await {
                Ok(Ok(Event::RunChanged { status, .. })) if status != RunStatus::Running => {
                    done += 1;
                    if status == RunStatus::Failed {
                        failed += 1;
                    }
                }
                Ok(Ok(_)) => {}
                Ok(Err(broadcast::error::RecvError::Lagged(n))) => panic!("lagged by {n}; enlarge the bus"),
                Ok(Err(broadcast::error::RecvError::Closed)) | Err(_) => panic!("runs did not finish"),
            }
        }
        let total = started.elapsed();
        let nodes = (runs * NODES) as f64;
        println!(
            "workflow_runs: runs={runs} nodes_per_run={NODES} failed={failed} submit={:.2}s total={:.2}s runs_per_s={:.0} per_node_us={:.1}",
            submitted.as_secs_f64(),
            total.as_secs_f64(),
            runs as f64 / total.as_secs_f64(),
            total.as_secs_f64() * 1e6 / nodes,
        );
        println!(
            "{{\"bench\":\"workflow_runs\",\"runs\":{runs},\"nodes_per_run\":{NODES},\"failed\":{failed},\"total_s\":{:.3},\"per_node_us\":{:.2}}}",
            total.as_secs_f64(),
            total.as_secs_f64() * 1e6 / nodes
        );
    });
}
