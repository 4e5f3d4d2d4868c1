//! Benchmark: validating and running large workflows. Parses and validates a chain of `NODES`
//! code nodes (each reading the one before it) and a wide, deep DAG of as many tool nodes (100
//! layers; each node runs after four of the layer above and reads a node two layers up), then
//! runs a chain and a fan of `RUN_NODES` no-op nodes once each through the real engine and the
//! SQLite store, so the scheduler's cost per node shows at size. Run with
//! `cargo bench -p gatewayd --bench workflow_validate`; `NODES=n` (default 10000, the most a
//! file may have) and `RUN_NODES=n` (default 10000) set the sizes, `REPEAT=n` (default 5) the
//! validations per case, of which the median is printed.

use std::collections::HashSet;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use gatewayd::agent::tools::MessageTarget;
use gatewayd::events::{Event, EventBus};
use gatewayd::message::ChannelKind;
use gatewayd::store::sqlite::SqliteStore;
use gatewayd::store::{RunOrigin, RunStatus, SharedStore};
use gatewayd::workflow::model::Workflow;
use gatewayd::workflow::run::{Engine, NodeServices};
use gatewayd::workflow::validate::{self, Known};
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

fn env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// `n` code nodes in a line, each reading the one before.
fn chain(n: usize) -> String {
    let mut toml =
        String::from("name = \"chain\"\n[[nodes]]\nid = \"n0\"\nkind = \"code\"\nscript = \"1\"\n");
    for i in 1..n {
        let up = i - 1;
        toml.push_str(&format!(
            "[[nodes]]\nid = \"n{i}\"\nkind = \"code\"\nafter = [\"n{up}\"]\nscript = \"nodes.n{up}.output + 1\"\n"
        ));
    }
    toml
}

/// `n` tool nodes in layers of `width`: each after four nodes of the layer above, with a
/// template reading a node two layers up.
fn dag(n: usize, width: usize) -> String {
    let mut toml = String::from("name = \"dag\"\ntools = [\"noop\"]\n");
    for i in 0..n {
        let (layer, pos) = (i / width, i % width);
        toml.push_str(&format!(
            "[[nodes]]\nid = \"d{i}\"\nkind = \"tool\"\ntool = \"noop\"\n"
        ));
        if layer > 0 {
            let above: Vec<String> = (0..4)
                .map(|k| format!("\"d{}\"", (layer - 1) * width + (pos + k * 7) % width))
                .collect();
            toml.push_str(&format!("after = [{}]\n", above.join(", ")));
        }
        if layer > 1 {
            toml.push_str(&format!(
                "args = {{ x = \"{{{{d{}.output}}}}\" }}\n",
                (layer - 2) * width + pos
            ));
        }
    }
    toml
}

/// A fan: one root, `n - 2` nodes after it, one join after all of them.
fn fan(n: usize) -> String {
    let mut toml = String::from(
        "name = \"fan\"\ntools = [\"noop\"]\n[[nodes]]\nid = \"f0\"\nkind = \"tool\"\ntool = \"noop\"\n",
    );
    for i in 1..n - 1 {
        toml.push_str(&format!(
            "[[nodes]]\nid = \"f{i}\"\nkind = \"tool\"\ntool = \"noop\"\nafter = [\"f0\"]\n"
        ));
    }
    let all: Vec<String> = (1..n - 1).map(|i| format!("\"f{i}\"")).collect();
    toml.push_str(&format!(
        "[[nodes]]\nid = \"f{}\"\nkind = \"tool\"\ntool = \"noop\"\nafter = [{}]\n",
        n - 1,
        all.join(", ")
    ));
    toml
}

/// A chain of no-op tool nodes (the scheduler's case: one node ready at a time).
fn tool_chain(n: usize) -> String {
    let mut toml = String::from(
        "name = \"line\"\ntools = [\"noop\"]\n[[nodes]]\nid = \"l0\"\nkind = \"tool\"\ntool = \"noop\"\n",
    );
    for i in 1..n {
        toml.push_str(&format!(
            "[[nodes]]\nid = \"l{i}\"\nkind = \"tool\"\ntool = \"noop\"\nafter = [\"l{}\"]\n",
            i - 1
        ));
    }
    toml
}

fn median(mut xs: Vec<Duration>) -> Duration {
    xs.sort_unstable();
    xs[xs.len() / 2]
}

/// Median parse and validate times of `text` over `repeat` rounds.
fn validate_case(text: &str, repeat: usize, known: &Known) -> (Duration, Duration) {
    let mut parse = Vec::new();
    let mut check = Vec::new();
    for _ in 0..repeat {
        let started = Instant::now();
        let workflow = Workflow::from_toml(text, "bench.toml").expect("parses");
        parse.push(started.elapsed());
        let started = Instant::now();
        let errors = validate::validate(&workflow, known);
        check.push(started.elapsed());
        assert!(errors.is_empty(), "{:?}", &errors[..errors.len().min(5)]);
    }
    (median(parse), median(check))
}

/// Runs the one workflow in `dir` once; the time from start to its end.
async fn run_once(dir: &Path, name: &str, nodes: usize) -> Duration {
    let store: SharedStore =
        Arc::new(SqliteStore::open(&dir.join(format!("{name}.db"))).expect("store"));
    let events = EventBus::new(2 * nodes + 1024);
    let mut rx = events.subscribe();
    let engine = Engine::load(dir.join(name), store, events, Arc::new(NoOp));
    assert!(engine.errors().is_empty(), "{:?}", engine.errors());
    let started = Instant::now();
    engine.start(name, Value::Null, None).await.expect("start");
    loop {
        match tokio::time::timeout(Duration::from_secs(600), rx.recv()).await {
            Ok(Ok(Event::RunChanged { status, .. })) if status != RunStatus::Running => {
                assert_eq!(status, RunStatus::Succeeded);
                return started.elapsed();
            }
            Ok(Ok(_)) => {}
            Ok(Err(broadcast::error::RecvError::Lagged(n))) => panic!("lagged by {n}"),
            Ok(Err(broadcast::error::RecvError::Closed)) | Err(_) => {
                panic!("the run did not finish")
            }
        }
    }
}

fn main() {
    let nodes = env("NODES", validate::MAX_NODES);
    let run_nodes = env("RUN_NODES", 10_000);
    let repeat = env("REPEAT", 5).max(1);
    let known = Known {
        tools: HashSet::from(["noop".to_owned()]),
        channels: Some([ChannelKind::new("webchat")].into()),
        all_channels: Vec::new(),
    };
    let ms = |d: Duration| d.as_secs_f64() * 1e3;

    let (chain_parse, chain_check) = validate_case(&chain(nodes), repeat, &known);
    println!(
        "workflow_validate: chain nodes={nodes} parse={:.1}ms validate={:.1}ms",
        ms(chain_parse),
        ms(chain_check)
    );
    let (dag_parse, dag_check) = validate_case(&dag(nodes, 100), repeat, &known);
    println!(
        "workflow_validate: dag nodes={nodes} width=100 parse={:.1}ms validate={:.1}ms",
        ms(dag_parse),
        ms(dag_check)
    );

    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let (line, wide) = runtime.block_on(async {
        let dir = tempfile::tempdir().expect("tempdir");
        for (name, text) in [("line", tool_chain(run_nodes)), ("fan", fan(run_nodes))] {
            std::fs::create_dir_all(dir.path().join(name)).expect("dir");
            std::fs::write(dir.path().join(name).join(format!("{name}.toml")), text)
                .expect("write");
        }
        let line = run_once(dir.path(), "line", run_nodes).await;
        let wide = run_once(dir.path(), "fan", run_nodes).await;
        (line, wide)
    });
    let per_node = |d: Duration| d.as_secs_f64() * 1e6 / run_nodes as f64;
    println!(
        "workflow_validate: run chain nodes={run_nodes} total={:.2}s per_node_us={:.1}; run fan nodes={run_nodes} total={:.2}s per_node_us={:.1}",
        line.as_secs_f64(),
        per_node(line),
        wide.as_secs_f64(),
        per_node(wide)
    );
    println!(
        "{{\"bench\":\"workflow_validate\",\"nodes\":{nodes},\"chain_parse_ms\":{:.2},\"chain_validate_ms\":{:.2},\"dag_parse_ms\":{:.2},\"dag_validate_ms\":{:.2},\"run_nodes\":{run_nodes},\"run_chain_per_node_us\":{:.2},\"run_fan_per_node_us\":{:.2}}}",
        ms(chain_parse),
        ms(chain_check),
        ms(dag_parse),
        ms(dag_check),
        per_node(line),
        per_node(wide)
    );
}
