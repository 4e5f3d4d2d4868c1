//! The workflow engine in process, with scripted node services: independent branches run
//! concurrently, untaken branches are skipped all the way down, a missing variable fails its node
//! with a clear error, exhausted retries fail the run, and an interrupted run resumes without
//! running finished nodes again.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use gatewayd::agent::tools::MessageTarget;
use gatewayd::events::{Event, EventBus};
use gatewayd::store::sqlite::SqliteStore;
use gatewayd::store::{NodeStatus, RunOrigin, RunRecord, RunStatus, SharedStore};
use gatewayd::workflow::run::{Engine, NodeServices};
use serde_json::{Value, json};
use tokio::sync::{Notify, broadcast};

/// Node services whose tools are scripted per test and count their calls.
#[derive(Default)]
struct Scripted {
    calls: Mutex<HashMap<String, usize>>,
    in_flight: AtomicUsize,
    max_in_flight: AtomicUsize,
    hold: Option<Arc<Notify>>,
    sent: Mutex<Vec<String>>,
}

impl Scripted {
    fn calls(&self, tool: &str) -> usize {
        self.calls
            .lock()
            .expect("lock")
            .get(tool)
            .copied()
            .unwrap_or(0)
    }
}

#[async_trait]
impl NodeServices for Scripted {
    async fn complete(&self, _system: Option<&str>, prompt: &str) -> Result<String, String> {
        Ok(format!("llm: {prompt}"))
    }

    async fn call_tool(
        &self,
        name: &str,
        args: Value,
        _origin: Option<&RunOrigin>,
    ) -> Result<Value, String> {
        *self
            .calls
            .lock()
            .expect("lock")
            .entry(name.to_owned())
            .or_default() += 1;
        match name {
            "slow" => {
                let now = self.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
                self.max_in_flight.fetch_max(now, Ordering::SeqCst);
                // The work itself takes 200 ms; this is the node's workload, not a wait.
                tokio::time::sleep(Duration::from_millis(200)).await;
                self.in_flight.fetch_sub(1, Ordering::SeqCst);
                Ok(json!({"done": args}))
            }
            "fail" => Err("the tool always fails".to_owned()),
            "hold" => match &self.hold {
                Some(n) => {
                    n.notified().await;
                    Ok(json!("released"))
                }
                None => Ok(json!("not held")),
            },
            _ => Ok(json!({"tool": name, "args": args})),
        }
    }

    async fn send_message(&self, _target: MessageTarget, text: &str) -> Result<i64, String> {
        let mut sent = self.sent.lock().expect("lock");
        sent.push(text.to_owned());
        Ok(sent.len() as i64)
    }

    fn tool_names(&self) -> HashSet<String> {
        ["slow", "fail", "hold", "count"]
            .into_iter()
            .map(str::to_owned)
            .collect()
    }
}

fn write(dir: &Path, name: &str, toml: &str) {
    std::fs::write(dir.join(format!("{name}.toml")), toml).expect("write workflow");
}

async fn load(
    dir: &Path,
    store: SharedStore,
    services: Arc<Scripted>,
) -> (Arc<Engine>, broadcast::Receiver<Event>) {
    let events = EventBus::new(1024);
    let rx = events.subscribe();
    let engine = Engine::load(dir.to_path_buf(), store, events, services);
    assert!(engine.errors().is_empty(), "{:?}", engine.errors());
    (engine, rx)
}

/// Waits for the run's end on the events bus and returns the stored run.
async fn finished(engine: &Engine, events: &mut broadcast::Receiver<Event>, run: i64) -> RunRecord {
    let done = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            match events.recv().await {
                Ok(Event::RunChanged { run: r, status, .. })
                    if r == run && status != RunStatus::Running =>
                {
                    return;
                }
                Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {}
                Err(broadcast::error::RecvError::Closed) => panic!("bus closed"),
            }
        }
    })
    .await;
    assert!(done.is_ok(), "run {run} did not finish");
    engine.run(run).await.expect("run")
}

fn status(run: &RunRecord, node: &str) -> NodeStatus {
    run.nodes
        .iter()
        .find(|n| n.node == node)
        .map_or(NodeStatus::Pending, |n| n.status)
}

fn store(dir: &Path) -> SharedStore {
    Arc::new(SqliteStore::open(&dir.join("g.db")).expect("store"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn independent_branches_run_at_the_same_time() {
    let dir = tempfile::tempdir().expect("tempdir");
    write(
        dir.path(),
        "fan",
        r#"
name = "fan"
tools = ["slow"]
[[nodes]]
id = "a"
kind = "tool"
tool = "slow"
[[nodes]]
id = "b"
kind = "tool"
tool = "slow"
[[nodes]]
id = "join"
kind = "code"
after = ["a", "b"]
script = "\"joined\""
"#,
    );
    let services = Arc::new(Scripted::default());
    let (engine, mut events) = load(dir.path(), store(dir.path()), services.clone()).await;
    let started = Instant::now();
    let run = engine.start("fan", Value::Null, None).await.expect("start");
    let run = finished(&engine, &mut events, run).await;
    let elapsed = started.elapsed();
    assert_eq!(run.status, RunStatus::Succeeded, "{run:?}");
    assert_eq!(
        services.max_in_flight.load(Ordering::SeqCst),
        2,
        "both 200 ms branches were in flight together"
    );
    eprintln!("two 200 ms branches took {elapsed:?} in all");
    assert!(
        elapsed < Duration::from_millis(400),
        "{elapsed:?}: two 200 ms branches in sequence would take 400 ms"
    );
    assert_eq!(status(&run, "join"), NodeStatus::Succeeded);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_untaken_branch_is_skipped_all_the_way_down() {
    let dir = tempfile::tempdir().expect("tempdir");
    write(
        dir.path(),
        "branch",
        r#"
name = "branch"
tools = ["count"]
[inputs.level]
type = "number"
[[nodes]]
id = "high"
kind = "condition"
expr = "inputs.level > 5"
[[nodes]]
id = "alert"
kind = "message"
after = [{ node = "high", when = true }]
text = "level {{inputs.level}} is high"
channel = "http"
chat_id = "ops"
[[nodes]]
id = "alert_log"
kind = "tool"
tool = "count"
after = ["alert"]
[[nodes]]
id = "calm"
kind = "message"
after = [{ node = "high", when = false }]
text = "all calm"
channel = "http"
chat_id = "ops"
[[nodes]]
id = "calm_log"
kind = "tool"
tool = "count"
after = ["calm"]
"#,
    );
    let services = Arc::new(Scripted::default());
    let (engine, mut events) = load(dir.path(), store(dir.path()), services.clone()).await;
    let run = engine
        .start("branch", json!({"level": 9}), None)
        .await
        .expect("start");
    let run = finished(&engine, &mut events, run).await;
    assert_eq!(run.status, RunStatus::Succeeded, "{run:?}");
    assert_eq!(status(&run, "high"), NodeStatus::Succeeded);
    assert_eq!(status(&run, "alert"), NodeStatus::Succeeded);
    assert_eq!(status(&run, "alert_log"), NodeStatus::Succeeded);
    assert_eq!(status(&run, "calm"), NodeStatus::Skipped);
    assert_eq!(
        status(&run, "calm_log"),
        NodeStatus::Skipped,
        "skipped all the way down"
    );
    assert_eq!(
        *services.sent.lock().expect("lock"),
        vec!["level 9 is high".to_owned()]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_variable_fails_its_node_and_is_never_left_in_the_text() {
    let dir = tempfile::tempdir().expect("tempdir");
    write(
        dir.path(),
        "missing",
        r#"
name = "missing"
tools = ["count"]
[[nodes]]
id = "fetch"
kind = "tool"
tool = "count"
[[nodes]]
id = "say"
kind = "message"
after = ["fetch"]
text = "the title is {{fetch.output.title}}"
channel = "http"
chat_id = "c"
"#,
    );
    let services = Arc::new(Scripted::default());
    let (engine, mut events) = load(dir.path(), store(dir.path()), services.clone()).await;
    let run = engine
        .start("missing", Value::Null, None)
        .await
        .expect("start");
    let run = finished(&engine, &mut events, run).await;
    assert_eq!(run.status, RunStatus::Failed);
    let say = run.nodes.iter().find(|n| n.node == "say").expect("say");
    assert_eq!(say.status, NodeStatus::Failed);
    let error = say.error.as_deref().unwrap_or_default();
    assert!(
        error.contains("fetch.output.title"),
        "the error names the variable: {error}"
    );
    assert!(
        services.sent.lock().expect("lock").is_empty(),
        "nothing half-rendered was sent"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_exhausts_its_retries_fails_the_run_and_the_operator_hears_of_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    write(
        dir.path(),
        "flaky",
        r#"
name = "flaky"
tools = ["fail", "count"]
[[nodes]]
id = "try"
kind = "tool"
tool = "fail"
retries = 2
[[nodes]]
id = "after_try"
kind = "tool"
tool = "count"
after = ["try"]
"#,
    );
    let services = Arc::new(Scripted::default());
    let (engine, mut events) = load(dir.path(), store(dir.path()), services.clone()).await;
    let run = engine
        .start("flaky", Value::Null, None)
        .await
        .expect("start");
    let mut failed_event = None;
    let done = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            if let Ok(Event::RunChanged {
                run: r,
                status: RunStatus::Failed,
                error,
                ..
            }) = events.recv().await
                && r == run
            {
                failed_event = error;
                return;
            }
        }
    })
    .await;
    assert!(done.is_ok(), "the failure is published");
    assert!(
        failed_event.as_deref().is_some_and(|e| e.contains("try")),
        "{failed_event:?}"
    );
    let run = engine.run(run).await.expect("run");
    assert_eq!(run.status, RunStatus::Failed);
    let node = run.nodes.iter().find(|n| n.node == "try").expect("try");
    assert_eq!(node.attempts, 3, "one try and two retries");
    assert_eq!(services.calls("fail"), 3);
    assert_eq!(
        services.calls("count"),
        0,
        "nothing after a failed node runs"
    );
    let after = run
        .nodes
        .iter()
        .find(|n| n.node == "after_try")
        .expect("after_try");
    assert_eq!(
        after.status,
        NodeStatus::Skipped,
        "a finished run has no pending node"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_interrupted_run_resumes_without_running_finished_nodes_again() {
    let dir = tempfile::tempdir().expect("tempdir");
    write(
        dir.path(),
        "long",
        r#"
name = "long"
tools = ["count", "hold"]
[[nodes]]
id = "first"
kind = "tool"
tool = "count"
[[nodes]]
id = "second"
kind = "tool"
tool = "hold"
after = ["first"]
[[nodes]]
id = "third"
kind = "code"
after = ["second"]
script = "nodes.second.output"
"#,
    );
    let db = store(dir.path());
    let hold = Arc::new(Notify::new());
    let held = Arc::new(Scripted {
        hold: Some(hold.clone()),
        ..Scripted::default()
    });
    let (engine, mut events) = load(dir.path(), db.clone(), held.clone()).await;
    let run = engine
        .start("long", Value::Null, None)
        .await
        .expect("start");
    // Wait until `second` is running (its state is stored before it starts).
    let running = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            if let Ok(Event::NodeChanged {
                node,
                status: NodeStatus::Running,
                ..
            }) = events.recv().await
                && node == "second"
            {
                return;
            }
        }
    })
    .await;
    assert!(running.is_ok());
    // The process "dies": this engine is abandoned with `second` in flight.
    drop(engine);

    let fresh = Arc::new(Scripted::default());
    let (engine, mut events) = load(dir.path(), db, fresh.clone()).await;
    assert_eq!(engine.resume_unfinished().await.expect("resume"), 1);
    let run = finished(&engine, &mut events, run).await;
    hold.notify_waiters();
    assert_eq!(run.status, RunStatus::Succeeded, "{run:?}");
    assert_eq!(
        held.calls("count") + fresh.calls("count"),
        1,
        "`first` ran once in all"
    );
    assert_eq!(
        fresh.calls("count"),
        0,
        "the resumed run did not run `first` again"
    );
    assert_eq!(
        fresh.calls("hold"),
        1,
        "`second` was running, so it runs again"
    );
    let third = run.nodes.iter().find(|n| n.node == "third").expect("third");
    assert_eq!(third.output, Some(json!("not held")));
}
