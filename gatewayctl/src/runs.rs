//! `gatewayctl runs`: workflow runs — list them (newest first) and show one with its DAG drawn
//! as text, one line per node in the workflow's order, indented by depth, with each node's
//! state and timing. `workflows run --wait` prints a finished run the same way.

use std::collections::HashMap;

use clap::Subcommand;
use gateway_proto::admin as pb;
use serde::Serialize;
use serde_json::Value;

use crate::client::{Api, within};
use crate::model::{Edge, NodeState, RunState};
use crate::output::{Format, Out, Table, WIDTH, ago, duration, now_ms, text, time, truncate};

/// `runs …`.
#[derive(Debug, Subcommand)]
pub enum Cmd {
    /// List runs, newest first.
    List {
        /// Only runs of this workflow.
        #[arg(long, value_name = "W")]
        workflow: Option<String>,
        /// Most runs per page (server default 100).
        #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=1000))]
        limit: Option<u32>,
        /// Start after this cursor (the `next_cursor` of the previous page).
        #[arg(long, value_name = "C")]
        cursor: Option<String>,
    },
    /// Show one run node by node: state, timing, errors.
    Show {
        /// The run's id.
        id: i64,
    },
}

/// One node of a run in JSON.
#[derive(Debug, Serialize)]
pub struct RunNode {
    id: String,
    kind: Option<String>,
    state: NodeState,
    after: Vec<Edge>,
    attempts: u32,
    started_at_ms: Option<i64>,
    finished_at_ms: Option<i64>,
    error: Option<String>,
    output: Value,
}

impl RunNode {
    fn from_pb(n: &pb::RunNode) -> Self {
        Self {
            id: n.id.clone(),
            kind: text(&n.kind),
            state: NodeState::from_pb(n.state),
            after: n.after.iter().map(|e| Edge::from_pb(e)).collect(),
            attempts: n.attempts,
            started_at_ms: time(n.started_at_ms),
            finished_at_ms: time(n.finished_at_ms),
            error: text(&n.error),
            output: json_or_text(&n.output_json),
        }
    }
}

/// One run in JSON; `result` and `nodes` only when shown on its own. `result` is the output of
/// the last node (in the workflow's order) that produced one, once the run succeeded.
#[derive(Debug, Serialize)]
pub struct Run {
    id: i64,
    workflow: String,
    state: RunState,
    trigger: Option<String>,
    error: Option<String>,
    inputs: Value,
    created_at_ms: Option<i64>,
    finished_at_ms: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    result: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    nodes: Option<Vec<RunNode>>,
}

impl Run {
    /// From the proto; with `with_nodes`, its nodes and result too.
    fn from_pb(r: &pb::Run, with_nodes: bool) -> Self {
        let nodes: Option<Vec<RunNode>> =
            with_nodes.then(|| r.nodes.iter().map(RunNode::from_pb).collect());
        let state = RunState::from_pb(r.state);
        // What a chat run reports on success: the last output in the workflow's order.
        let result = nodes.as_ref().map(|nodes| {
            nodes
                .iter()
                .rev()
                .filter(|_| state == RunState::Succeeded)
                .find(|n| n.state == NodeState::Succeeded && !n.output.is_null())
                .map_or(Value::Null, |n| n.output.clone())
        });
        Self {
            id: r.id,
            workflow: r.workflow.clone(),
            state,
            trigger: text(&r.trigger),
            error: text(&r.error),
            inputs: json_or_text(&r.inputs_json),
            created_at_ms: time(r.created_at_ms),
            finished_at_ms: time(r.finished_at_ms),
            result,
            nodes,
        }
    }

    /// Its state.
    pub fn state(&self) -> RunState {
        self.state
    }

    /// Why it failed, if it did.
    pub fn error(&self) -> Option<&str> {
        self.error.as_deref()
    }

    /// How long it took (so far, while running).
    fn took(&self, now: i64) -> Option<i64> {
        let start = self.created_at_ms?;
        Some(self.finished_at_ms.unwrap_or(now) - start)
    }
}

/// `runs list` in JSON.
#[derive(Debug, Serialize)]
struct RunList {
    runs: Vec<Run>,
    next_cursor: Option<String>,
}

/// JSON text as a value; "" as null; anything that is not JSON as a string.
fn json_or_text(raw: &str) -> Value {
    if raw.is_empty() {
        return Value::Null;
    }
    serde_json::from_str(raw).unwrap_or_else(|_| Value::String(raw.to_owned()))
}

/// A value for a table cell or field: strings as they are, the rest as compact JSON.
fn plain(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// Milliseconds as "120ms", "1.2s", or "4m 5s" from a minute on.
fn took(ms: i64) -> String {
    let ms = ms.max(0);
    match ms {
        0..1000 => format!("{ms}ms"),
        1000..60_000 => format!("{:.1}s", ms as f64 / 1000.0),
        _ => duration(ms.unsigned_abs() / 1000),
    }
}

/// Runs `runs …`.
pub async fn run(mut api: Api, format: Format, cmd: Cmd) -> anyhow::Result<()> {
    match cmd {
        Cmd::List {
            workflow,
            limit,
            cursor,
        } => {
            let request = pb::ListRunsRequest {
                cursor: cursor.unwrap_or_default(),
                limit: limit.unwrap_or(0),
                workflow: workflow.unwrap_or_default(),
            };
            list(api, format, request).await
        }
        Cmd::Show { id } => {
            let run = get(&mut api, id).await?;
            print(&run, format)
        }
    }
}

async fn list(mut api: Api, format: Format, request: pb::ListRunsRequest) -> anyhow::Result<()> {
    let page = api
        .client
        .list_runs(request)
        .await
        .map_err(|s| api.error(s))?
        .into_inner();
    let list = RunList {
        runs: page.runs.iter().map(|r| Run::from_pb(r, false)).collect(),
        next_cursor: text(&page.next_cursor),
    };
    let out = Out;
    if format == Format::Json {
        return out.json(&list);
    }
    let now = now_ms();
    let mut t = Table::new(&[
        "ID", "WORKFLOW", "STATE", "TRIGGER", "STARTED", "TOOK", "ERROR",
    ]);
    for r in &list.runs {
        t.row(vec![
            r.id.to_string(),
            r.workflow.clone(),
            r.state.name().to_owned(),
            r.trigger.clone().unwrap_or_else(|| "-".to_owned()),
            ago(r.created_at_ms.unwrap_or(0), now),
            r.took(now).map_or_else(|| "-".to_owned(), took),
            r.error.clone().unwrap_or_default(),
        ]);
    }
    if t.is_empty() {
        out.line("no runs")?;
    } else {
        out.table(&t)?;
    }
    if let Some(next) = list.next_cursor {
        out.line(format!("more: --cursor {next}"))?;
    }
    Ok(())
}

/// One run with its nodes (GetRun).
pub async fn get(api: &mut Api, id: i64) -> anyhow::Result<Run> {
    let r = within(api.client.get_run(pb::GetRunRequest { id }))
        .await
        .map_err(|s| api.error(s))?
        .into_inner();
    r.run
        .as_ref()
        .map(|r| Run::from_pb(r, true))
        .ok_or_else(|| anyhow::anyhow!("gatewayd sent no run {id}"))
}

/// Prints a run with its nodes: the JSON document, or its fields and the DAG as text.
pub fn print(run: &Run, format: Format) -> anyhow::Result<()> {
    let out = Out;
    if format == Format::Json {
        return out.json(run);
    }
    let now = now_ms();
    out.field("run", run.id.to_string())?;
    out.field("workflow", &run.workflow)?;
    out.field("state", run.state.name())?;
    out.field("trigger", run.trigger.as_deref().unwrap_or("-"))?;
    out.field("inputs", plain(&run.inputs))?;
    out.field("started", ago(run.created_at_ms.unwrap_or(0), now))?;
    match (run.finished_at_ms, run.took(now)) {
        (Some(at), Some(ms)) => {
            out.field("finished", format!("{} (took {})", ago(at, now), took(ms)))?
        }
        (_, Some(ms)) => out.field("finished", format!("not yet (running for {})", took(ms)))?,
        _ => out.field("finished", "-")?,
    }
    if let Some(error) = &run.error {
        out.field("error", error)?;
    }
    if let Some(result) = run.result.as_ref().filter(|r| !r.is_null()) {
        out.field("result", plain(result))?;
    }
    out.line("")?;
    let nodes = run.nodes.as_deref().unwrap_or_default();
    if nodes.is_empty() {
        return out.line("no nodes");
    }
    for line in dag(nodes, now) {
        out.line(line)?;
    }
    Ok(())
}

/// The nodes as text: one line per node in the given (workflow) order, indented two spaces per
/// level of depth (the longest chain of `after` edges above it), each line within 80 columns:
/// `✓ classify  llm  120ms`, `  · reassure  message  after is_urgent when=false  skipped`.
fn dag(nodes: &[RunNode], now: i64) -> Vec<String> {
    let index: HashMap<&str, usize> = nodes
        .iter()
        .enumerate()
        .map(|(i, n)| (n.id.as_str(), i))
        .collect();
    let mut depths: Vec<Option<usize>> = vec![None; nodes.len()];
    (0..nodes.len())
        .map(|i| {
            let depth = depth(nodes, &index, &mut depths, i, 0);
            truncate(&node_line(&nodes[i], depth, now), WIDTH)
        })
        .collect()
}

/// The depth of node `i`: 0 for a node that runs after nothing (or only unknown nodes), else
/// one more than its deepest upstream. `level` bounds the recursion on a (malformed) cycle.
fn depth(
    nodes: &[RunNode],
    index: &HashMap<&str, usize>,
    memo: &mut Vec<Option<usize>>,
    i: usize,
    level: usize,
) -> usize {
    if let Some(d) = memo[i] {
        return d;
    }
    if level > nodes.len() {
        return 0;
    }
    let d = nodes[i]
        .after
        .iter()
        .filter_map(|e| index.get(e.node.as_str()))
        .map(|&up| depth(nodes, index, memo, up, level + 1) + 1)
        .max()
        .unwrap_or(0);
    memo[i] = Some(d);
    d
}

fn node_line(n: &RunNode, depth: usize, now: i64) -> String {
    let mark = match n.state {
        NodeState::Succeeded => "✓",
        NodeState::Failed => "✗",
        NodeState::Skipped => "·",
        NodeState::Running => "▸",
        NodeState::Pending | NodeState::Unspecified => "○",
    };
    let attempts = |what: &str| {
        if n.attempts > 1 {
            format!("{what} after {} attempts", n.attempts)
        } else {
            what.to_owned()
        }
    };
    let status = match n.state {
        NodeState::Succeeded => match (n.started_at_ms, n.finished_at_ms) {
            (Some(start), Some(end)) => attempts(&took(end - start)),
            _ => attempts("succeeded"),
        },
        NodeState::Failed => format!(
            "{}: {}",
            attempts("failed"),
            n.error.as_deref().unwrap_or("no error given")
        ),
        NodeState::Running => match n.started_at_ms {
            Some(start) => format!("running for {}", took(now - start)),
            None => "running".to_owned(),
        },
        NodeState::Skipped | NodeState::Pending | NodeState::Unspecified => {
            n.state.name().to_owned()
        }
    };
    let mut parts = vec![
        format!("{}{mark} {}", "  ".repeat(depth), n.id),
        n.kind.clone().unwrap_or_else(|| "-".to_owned()),
    ];
    if !n.after.is_empty() {
        let edges: Vec<String> = n.after.iter().map(ToString::to_string).collect();
        parts.push(format!("after {}", edges.join(", ")));
    }
    parts.push(crate::output::clean(&status));
    parts.join("  ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(id: &str, kind: &str, state: NodeState, after: &[&str]) -> RunNode {
        RunNode {
            id: id.to_owned(),
            kind: Some(kind.to_owned()),
            state,
            after: after.iter().map(|e| Edge::from_pb(e)).collect(),
            attempts: 1,
            started_at_ms: Some(1_000),
            finished_at_ms: Some(1_120),
            error: None,
            output: Value::Null,
        }
    }

    #[test]
    fn the_dag_is_drawn_in_order_indented_by_depth() {
        let mut failed = node("fetch", "tool", NodeState::Failed, &["summary"]);
        failed.attempts = 2;
        failed.error = Some("not allowed: host `x` is not on the allowlist".to_owned());
        let mut skipped = node(
            "reassure",
            "message",
            NodeState::Skipped,
            &["is_urgent=false", "summary"],
        );
        skipped.started_at_ms = None;
        let nodes = vec![
            node("classify", "llm", NodeState::Succeeded, &[]),
            node("summary", "code", NodeState::Succeeded, &[]),
            node(
                "is_urgent",
                "condition",
                NodeState::Succeeded,
                &["classify"],
            ),
            skipped,
            failed,
            node(
                "post",
                "message",
                NodeState::Pending,
                &["reassure", "fetch"],
            ),
        ];
        assert_eq!(
            dag(&nodes, 5_000),
            [
                "✓ classify  llm  120ms",
                "✓ summary  code  120ms",
                "  ✓ is_urgent  condition  after classify  120ms",
                "    · reassure  message  after is_urgent when=false, summary  skipped",
                "  ✗ fetch  tool  after summary  failed after 2 attempts: not allowed: host `x` …",
                "      ○ post  message  after reassure, fetch  pending",
            ]
        );
        for line in dag(&nodes, 5_000) {
            assert!(crate::output::text_width(&line) <= WIDTH, "{line}");
        }
    }

    #[test]
    fn a_cycle_does_not_loop_forever() {
        let nodes = vec![
            node("a", "code", NodeState::Pending, &["b"]),
            node("b", "code", NodeState::Pending, &["a"]),
        ];
        assert_eq!(dag(&nodes, 0).len(), 2);
    }

    #[test]
    fn durations_and_values_read_well() {
        assert_eq!(took(120), "120ms");
        assert_eq!(took(1_250), "1.2s");
        assert_eq!(took(125_000), "2m 5s");
        assert_eq!(took(-5), "0ms");
        assert_eq!(json_or_text(""), Value::Null);
        assert_eq!(json_or_text("{\"a\":1}"), serde_json::json!({"a": 1}));
        assert_eq!(json_or_text("oops"), Value::String("oops".to_owned()));
        assert_eq!(plain(&Value::String("hi".to_owned())), "hi");
        assert_eq!(plain(&serde_json::json!({"a": 1})), "{\"a\":1}");
    }

    #[test]
    fn the_result_is_the_last_output_in_workflow_order() {
        let run = pb::Run {
            id: 7,
            workflow: "w".to_owned(),
            state: pb::RunState::Succeeded as i32,
            inputs_json: "{\"n\":3}".to_owned(),
            nodes: vec![
                pb::RunNode {
                    id: "a".to_owned(),
                    state: pb::NodeState::Succeeded as i32,
                    output_json: "6".to_owned(),
                    ..pb::RunNode::default()
                },
                pb::RunNode {
                    id: "b".to_owned(),
                    state: pb::NodeState::Skipped as i32,
                    ..pb::RunNode::default()
                },
            ],
            trigger: "operator".to_owned(),
            ..pb::Run::default()
        };
        let shown = serde_json::to_value(Run::from_pb(&run, true)).expect("json");
        assert_eq!(shown["result"], 6);
        assert_eq!(shown["inputs"], serde_json::json!({"n": 3}));
        assert_eq!(shown["nodes"][1]["output"], Value::Null);
        assert_eq!(shown["nodes"][1]["state"], "skipped");
        assert_eq!(shown["error"], Value::Null);
        let listed = serde_json::to_value(Run::from_pb(&run, false)).expect("json");
        let failed = pb::Run {
            state: pb::RunState::Failed as i32,
            ..run.clone()
        };
        let failed = serde_json::to_value(Run::from_pb(&failed, true)).expect("json");
        assert_eq!(failed["result"], Value::Null, "no result for a failed run");
        assert!(listed.get("nodes").is_none() && listed.get("result").is_none());
    }
}
