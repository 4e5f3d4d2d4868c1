//! Running workflows: a ready-set scheduler over the DAG, with per-node timeouts and retries,
//! durable state, and resumption after a restart.
//!
//! A node becomes ready when every node it runs after has finished. It is **skipped** when any
//! of those was skipped or when an edge's `when` does not match its condition's result, so an
//! untaken branch is skipped all the way down. Ready nodes run concurrently. Every state change
//! of a run and of each node is written to the store before the scheduler acts on it, so after a
//! crash [`Engine::resume_unfinished`] continues each unfinished run: finished nodes keep their
//! stored outputs and are not run again; nodes that were running are run again. A node that
//! exhausts its retries fails the run; the error is stored, logged, published as an event and,
//! for runs started from a chat, sent back there.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap, HashMap, HashSet};
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::Duration;

mod node;

use async_trait::async_trait;
use serde_json::{Map, Value};
use tokio::task::JoinSet;

use super::model::{Graph, NodeKind, Step, Target, Workflow};
use super::script::{Limits, Sandbox};
use super::template::{self, Vars};
use super::validate::{self, Known, WorkflowError};
use crate::agent::tools::MessageTarget;
use crate::events::{Event, EventBus};
use crate::message::{ChannelKind, now_ms};
use crate::store::{
    NodeRecord, NodeStatus, RunOrigin, RunRecord, RunStatus, SharedStore, StoreError,
};

/// What nodes need from the rest of the gateway.
#[async_trait]
pub trait NodeServices: Send + Sync {
    /// One completion of `prompt` (with an optional system prompt).
    async fn complete(&self, system: Option<&str>, prompt: &str) -> Result<String, String>;
    /// Calls a shared tool.
    async fn call_tool(
        &self,
        name: &str,
        args: Value,
        origin: Option<&RunOrigin>,
    ) -> Result<Value, String>;
    /// Sends a message through the outbox; returns the outbox id.
    async fn send_message(&self, target: MessageTarget, text: &str) -> Result<i64, String>;
    /// A `message` node's send for a run started from `origin`; the default sends as
    /// [`send_message`](Self::send_message). The gateway's checks the run's user against
    /// `[tools.send_message] scope`.
    async fn send_message_for(
        &self,
        target: MessageTarget,
        text: &str,
        _origin: Option<&RunOrigin>,
    ) -> Result<i64, String> {
        self.send_message(target, text).await
    }
    /// The names of the shared tools, for validation.
    fn tool_names(&self) -> HashSet<String>;
    /// The enabled channels, for validating message nodes; `None` (the default) skips that
    /// check.
    fn channels(&self) -> Option<BTreeSet<ChannelKind>> {
        None
    }
    /// Every channel the gateway has, enabled or not, so an unknown one is named as such; empty
    /// (the default) when not known.
    fn all_channels(&self) -> Vec<&'static str> {
        Vec::new()
    }
}

/// Why a run could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// No loaded workflow has that name.
    #[error("no workflow `{0}`; `gatewayctl workflows list` shows the loaded ones")]
    Unknown(String),
    /// The inputs do not match the workflow's.
    #[error("{0}")]
    Inputs(String),
    /// A message node answers the chat that started the run, and the run has no such chat.
    #[error(
        "workflow `{workflow}` sends to the chat that started it (message node `{node}`), and this run has no chat; give it one (`gatewayctl workflows run {workflow} --to CHANNEL:CHAT`)"
    )]
    NoOrigin {
        /// The workflow.
        workflow: String,
        /// The first message node with `to = "origin"` (or no target).
        node: String,
    },
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The workflow engine.
pub struct Engine {
    dir: PathBuf,
    workflows: RwLock<BTreeMap<String, Arc<Workflow>>>,
    errors: RwLock<Vec<WorkflowError>>,
    store: SharedStore,
    events: EventBus,
    services: Arc<dyn NodeServices>,
    sandbox: Arc<Sandbox>,
    /// Multi-instance mode ([`Engine::set_cluster`]).
    cluster: std::sync::OnceLock<Arc<crate::cluster::Cluster>>,
    /// The runs executing in this process, so a takeover never starts one twice here.
    active: std::sync::Mutex<std::collections::HashSet<i64>>,
}

impl Engine {
    /// Loads every workflow in `dir`; files with errors are reported and skipped.
    pub fn load(
        dir: PathBuf,
        store: SharedStore,
        events: EventBus,
        services: Arc<dyn NodeServices>,
    ) -> Arc<Self> {
        let engine = Arc::new(Self {
            dir,
            workflows: RwLock::new(BTreeMap::new()),
            errors: RwLock::new(Vec::new()),
            store,
            events,
            services,
            sandbox: Arc::new(Sandbox::new(Limits::default())),
            cluster: std::sync::OnceLock::new(),
            active: std::sync::Mutex::new(std::collections::HashSet::new()),
        });
        engine.reload();
        engine
    }

    /// Multi-instance mode: every run is filed under a partition, and unfinished runs are
    /// resumed by the owner of theirs ([`Engine::resume_partitions`]).
    pub fn set_cluster(&self, cluster: Arc<crate::cluster::Cluster>) {
        let _ = self.cluster.set(cluster);
    }

    /// Marks `run` as executing here; false if it already is.
    fn activate(&self, run: i64) -> bool {
        self.active.lock().is_ok_and(|mut a| a.insert(run))
    }

    fn deactivate(&self, run: i64) {
        if let Ok(mut a) = self.active.lock() {
            a.remove(&run);
        }
    }

    /// The partition a new run is filed under: its origin chat's when this instance owns that
    /// one (or has no partition at all), else one it owns, chosen by the run id, so that the
    /// instance executing the run is the owner that would resume it.
    fn partition_for(
        cluster: &crate::cluster::Cluster,
        run: i64,
        origin: Option<&RunOrigin>,
    ) -> u32 {
        let home = match origin {
            Some(o) => cluster.partition_of(&crate::message::SessionKey::Group(
                o.channel,
                o.chat_id.clone(),
            )),
            None => crate::cluster::partition_of_str(&format!("run:{run}"), cluster.partitions()),
        };
        let owned = cluster.owned();
        if owned.is_empty() || owned.contains(&home) {
            return home;
        }
        let at = usize::try_from(run.unsigned_abs() % owned.len() as u64).unwrap_or(0);
        owned.get(at).copied().unwrap_or(home)
    }

    /// Multi-instance mode: resumes the unfinished runs of `partitions` (gained by this
    /// instance) that are not executing here already; `unassigned` adds runs filed under no
    /// partition. Returns how many it resumed.
    pub async fn resume_partitions(
        self: &Arc<Self>,
        partitions: &[u32],
        unassigned: bool,
    ) -> Result<usize, StoreError> {
        let Some(cluster) = self.cluster.get() else {
            return Ok(0);
        };
        let runs = cluster
            .store()
            .runs_unfinished_in(partitions, unassigned)
            .await?;
        self.resume_runs(runs).await
    }

    /// Reads the directory again; returns the problems found.
    pub fn reload(&self) -> Vec<WorkflowError> {
        let (loaded, errors) = self.check();
        for e in &errors {
            tracing::error!(message = "Workflow not loaded.", error = %e);
        }
        if let Ok(mut w) = self.workflows.write() {
            *w = loaded
                .into_iter()
                .map(|w| (w.name.clone(), Arc::new(w)))
                .collect();
        }
        if let Ok(mut e) = self.errors.write() {
            e.clone_from(&errors);
        }
        errors
    }

    /// Checks the files on disk without changing what is loaded.
    pub fn check(&self) -> (Vec<Workflow>, Vec<WorkflowError>) {
        if !self.dir.is_dir() {
            return (Vec::new(), Vec::new());
        }
        let known = Known {
            tools: self.services.tool_names(),
            channels: self.services.channels(),
            all_channels: self.services.all_channels(),
        };
        validate::load_dir(&self.dir, &known)
    }

    /// The loaded workflows, by name.
    pub fn list(&self) -> Vec<Arc<Workflow>> {
        self.workflows
            .read()
            .map(|w| w.values().cloned().collect())
            .unwrap_or_default()
    }

    /// Problems of the files that did not load.
    pub fn errors(&self) -> Vec<WorkflowError> {
        self.errors.read().map(|e| e.clone()).unwrap_or_default()
    }

    /// Whether message nodes may send to `channel` (it is enabled, as far as the engine knows).
    pub fn can_send_to(&self, channel: ChannelKind) -> bool {
        self.services
            .channels()
            .is_none_or(|enabled| enabled.contains(&channel))
    }

    /// One loaded workflow.
    pub fn get(&self, name: &str) -> Option<Arc<Workflow>> {
        self.workflows.read().ok()?.get(name).cloned()
    }

    /// Starts a run of `name` with `inputs` (an object); returns its id at once.
    pub async fn start(
        self: &Arc<Self>,
        name: &str,
        inputs: Value,
        origin: Option<RunOrigin>,
    ) -> Result<i64, StartError> {
        let workflow = self
            .get(name)
            .ok_or_else(|| StartError::Unknown(name.to_owned()))?;
        let inputs = check_inputs(&workflow, inputs).map_err(StartError::Inputs)?;
        if origin.is_none()
            && let Some(node) = workflow.nodes.iter().find(
                |n| matches!(&n.kind, NodeKind::Message(m) if m.target() == Ok(Target::Origin)),
            )
        {
            return Err(StartError::NoOrigin {
                workflow: name.to_owned(),
                node: node.id.clone(),
            });
        }
        let run = self
            .store
            .run_create(name, &inputs, origin.as_ref())
            .await?;
        if let Some(cluster) = self.cluster.get() {
            let p = Self::partition_for(cluster, run, origin.as_ref());
            cluster.store().run_set_partition(run, p).await?;
        }
        self.activate(run);
        tracing::info!(message = "Workflow run started.", run, workflow = name);
        self.events.publish(Event::RunChanged {
            run,
            workflow: name.to_owned(),
            status: RunStatus::Running,
            error: None,
        });
        let engine = self.clone();
        tokio::spawn(async move {
            engine
                .clone()
                .execute(run, workflow, inputs, origin, HashMap::new())
                .await;
            engine.deactivate(run);
        });
        Ok(run)
    }

    /// Continues every run a previous process left unfinished; returns how many.
    pub async fn resume_unfinished(self: &Arc<Self>) -> Result<usize, StoreError> {
        let runs = self.store.runs_unfinished().await?;
        self.resume_runs(runs).await
    }

    async fn resume_runs(self: &Arc<Self>, runs: Vec<RunRecord>) -> Result<usize, StoreError> {
        let mut n = 0;
        for run in runs {
            if !self.activate(run.id) {
                continue;
            }
            n += 1;
            let Some(workflow) = self.get(&run.workflow) else {
                let error = format!(
                    "workflow `{}` is no longer loaded; the run cannot continue",
                    run.workflow
                );
                tracing::error!(message = "Cannot resume a workflow run.", run = run.id, error = %error);
                self.deactivate(run.id);
                self.store
                    .run_finish(run.id, RunStatus::Failed, Some(&error))
                    .await?;
                continue;
            };
            tracing::info!(message = "Resuming a workflow run.", run = run.id, workflow = %run.workflow);
            let prior = run.nodes.into_iter().map(|n| (n.node.clone(), n)).collect();
            let engine = self.clone();
            tokio::spawn(async move {
                let id = run.id;
                engine
                    .clone()
                    .execute(id, workflow, run.inputs, run.origin, prior)
                    .await;
                engine.deactivate(id);
            });
        }
        Ok(n)
    }

    /// One run, with its nodes.
    pub async fn run(&self, id: i64) -> Result<RunRecord, StoreError> {
        self.store.run_get(id).await
    }

    async fn record(&self, run: i64, record: &NodeRecord) {
        if let Err(e) = self.store.run_node(run, record).await {
            tracing::error!(message = "Cannot store a node's state.", run, node = %record.node, error = %e);
        }
        self.events.publish(Event::NodeChanged {
            run,
            node: record.node.clone(),
            status: record.status,
            error: record.error.clone(),
        });
    }

    async fn execute(
        self: Arc<Self>,
        run: i64,
        workflow: Arc<Workflow>,
        inputs: Value,
        origin: Option<RunOrigin>,
        prior: HashMap<String, NodeRecord>,
    ) {
        // The graph is indexed once; after that every step costs the node's own edges: a
        // finished node re-examines only the nodes below it, never the whole list.
        let graph = workflow.graph();
        let n = workflow.nodes.len();
        let mut state: Vec<NodeRecord> = workflow
            .nodes
            .iter()
            .map(|node| match prior.get(&node.id) {
                Some(r) if r.status.is_final() => r.clone(),
                _ => pending(&node.id),
            })
            .collect();
        // What templates and scripts see as `nodes`, kept up to date as nodes succeed.
        let mut done_outputs = Map::new();
        for record in &state {
            add_output(&mut done_outputs, record);
        }
        let mut queued = vec![true; n];
        let mut candidates: BinaryHeap<Reverse<usize>> = (0..n).map(Reverse).collect();
        let mut running: JoinSet<(usize, Result<Value, String>, u32)> = JoinSet::new();
        let mut failure: Option<String> = None;
        loop {
            if failure.is_none() {
                // Lowest file position first, so nodes ready together start in file order.
                while let Some(Reverse(i)) = candidates.pop() {
                    queued[i] = false;
                    if state[i].status != NodeStatus::Pending {
                        continue;
                    }
                    match readiness(&graph, &state, i) {
                        Readiness::Wait => {}
                        Readiness::Skip => {
                            // A skip can make the nodes below it ready or skipped.
                            let record = skipped(&graph.node(i).id);
                            self.record(run, &record).await;
                            state[i] = record;
                            for &d in graph.downstream(i) {
                                if !queued[d] {
                                    queued[d] = true;
                                    candidates.push(Reverse(d));
                                }
                            }
                        }
                        Readiness::Ready => {
                            let node = graph.node(i);
                            let mut record = pending(&node.id);
                            record.status = NodeStatus::Running;
                            record.started_at_ms = Some(now_ms());
                            self.record(run, &record).await;
                            state[i] = record;
                            let nodes = Value::Object(done_outputs.clone());
                            let engine = self.clone();
                            let workflow = workflow.clone();
                            let inputs = inputs.clone();
                            let origin = origin.clone();
                            running.spawn(async move {
                                let (result, attempts) = engine
                                    .run_node(&workflow, i, &inputs, &nodes, origin.as_ref())
                                    .await;
                                (i, result, attempts)
                            });
                        }
                    }
                }
            }
            let Some(joined) = running.join_next().await else {
                break;
            };
            let (i, result, attempts) = match joined {
                Ok(done) => done,
                Err(e) => {
                    failure.get_or_insert(format!("a node task failed: {e}"));
                    continue;
                }
            };
            let id = graph.node(i).id.clone();
            let mut record = state[i].clone();
            record.attempts = attempts;
            record.finished_at_ms = Some(now_ms());
            match result {
                Ok(output) => {
                    record.status = NodeStatus::Succeeded;
                    record.output = Some(output);
                }
                Err(error) => {
                    tracing::error!(message = "Workflow node failed after its retries.", run, workflow = %workflow.name, node = %id, attempts, error = %error);
                    record.status = NodeStatus::Failed;
                    failure.get_or_insert(format!("node `{id}` failed: {error}"));
                    record.error = Some(error);
                }
            }
            self.record(run, &record).await;
            add_output(&mut done_outputs, &record);
            state[i] = record;
            for &d in graph.downstream(i) {
                if !queued[d] {
                    queued[d] = true;
                    candidates.push(Reverse(d));
                }
            }
        }
        if failure.is_some() {
            // Nodes that can no longer run end skipped, so a finished run has no pending node.
            for record in &mut state {
                if record.status == NodeStatus::Pending {
                    let skip = skipped(&record.node);
                    self.record(run, &skip).await;
                    *record = skip;
                }
            }
        }
        let state: HashMap<String, NodeRecord> =
            state.into_iter().map(|r| (r.node.clone(), r)).collect();
        let status = if failure.is_some() {
            RunStatus::Failed
        } else {
            RunStatus::Succeeded
        };
        if let Err(e) = self.store.run_finish(run, status, failure.as_deref()).await {
            tracing::error!(message = "Cannot store a run's end; it resumes at next start.", run, error = %e);
            return;
        }
        tracing::info!(message = "Workflow run finished.", run, workflow = %workflow.name, status = status.as_str(), error = failure.as_deref().unwrap_or(""));
        self.events.publish(Event::RunChanged {
            run,
            workflow: workflow.name.clone(),
            status,
            error: failure.clone(),
        });
        self.report(run, &workflow, &state, origin.as_ref(), failure.as_deref())
            .await;
    }

    /// Tells the chat that started a run how it ended, unless a message node already answered.
    async fn report(
        &self,
        run: i64,
        workflow: &Workflow,
        state: &HashMap<String, NodeRecord>,
        origin: Option<&RunOrigin>,
        failure: Option<&str>,
    ) {
        let Some(origin) = origin.filter(|o| o.trigger == "chat") else {
            return;
        };
        let answered = workflow.nodes.iter().any(|n| {
            matches!(&n.kind, NodeKind::Message(m) if m.target() == Ok(Target::Origin))
                && state
                    .get(&n.id)
                    .is_some_and(|r| r.status == NodeStatus::Succeeded)
        });
        let text = match failure {
            Some(error) => format!("Workflow {} (run {run}) failed: {error}", workflow.name),
            None if answered => return,
            None => {
                let last = workflow
                    .nodes
                    .iter()
                    .rev()
                    .find_map(|n| state.get(&n.id)?.output.as_ref())
                    .map_or_else(|| "no output".to_owned(), render_output);
                format!("Workflow {} (run {run}) finished: {last}", workflow.name)
            }
        };
        let target = MessageTarget::Chat {
            channel: origin.channel,
            chat_id: origin.chat_id.clone(),
        };
        if let Err(e) = self.services.send_message(target, &text).await {
            tracing::error!(message = "Cannot report a run's result to its chat.", run, error = %e);
        }
    }
}

#[derive(Debug, PartialEq, Eq)]
enum Readiness {
    Wait,
    Ready,
    Skip,
}

/// Whether a pending node can run, must wait, or is on a branch not taken. Costs the node's
/// own `after` list.
fn readiness(graph: &Graph<'_>, state: &[NodeRecord], i: usize) -> Readiness {
    let mut ready = true;
    for edge in &graph.node(i).after {
        let Some(up) = graph.index(&edge.node).and_then(|u| state.get(u)) else {
            return Readiness::Wait;
        };
        match up.status {
            NodeStatus::Skipped => return Readiness::Skip,
            NodeStatus::Succeeded => {
                if let Some(when) = edge.when
                    && up.output != Some(Value::Bool(when))
                {
                    return Readiness::Skip;
                }
            }
            NodeStatus::Pending | NodeStatus::Running | NodeStatus::Failed => ready = false,
        }
    }
    if ready {
        Readiness::Ready
    } else {
        Readiness::Wait
    }
}

fn pending(id: &str) -> NodeRecord {
    NodeRecord {
        node: id.to_owned(),
        status: NodeStatus::Pending,
        output: None,
        error: None,
        attempts: 0,
        started_at_ms: None,
        finished_at_ms: None,
    }
}

fn skipped(id: &str) -> NodeRecord {
    NodeRecord {
        status: NodeStatus::Skipped,
        finished_at_ms: Some(now_ms()),
        ..pending(id)
    }
}

/// Adds a succeeded node to what templates and scripts see: id → `{ "output": … }`.
fn add_output(map: &mut Map<String, Value>, record: &NodeRecord) {
    if let (NodeStatus::Succeeded, Some(output)) = (record.status, &record.output) {
        map.insert(record.node.clone(), serde_json::json!({ "output": output }));
    }
}

fn render_output(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// Parses a chat given as `CHANNEL:CHAT` (`webchat:ops`, `http:42`; the chat id may itself hold
/// `:`), for a run started by an operator.
pub fn parse_chat_target(text: &str) -> Result<(ChannelKind, String), String> {
    let Some((channel, chat)) = text.split_once(':') else {
        return Err(format!(
            "`{text}` is not CHANNEL:CHAT (e.g. webchat:ops or http:42)"
        ));
    };
    let channel: ChannelKind = channel
        .trim()
        .parse()
        .map_err(|e: String| format!("{e} in `{text}`"))?;
    if chat.trim().is_empty() {
        return Err(format!("the chat id after `:` is empty in `{text}`"));
    }
    Ok((channel, chat.to_owned()))
}

/// Checks `inputs` against the workflow's inputs: unknown names, missing required ones and wrong
/// types are errors (all named at once); defaults fill what is left out.
pub fn check_inputs(workflow: &Workflow, inputs: Value) -> Result<Value, String> {
    let mut given = match inputs {
        Value::Object(m) => m,
        Value::Null => Map::new(),
        other => {
            return Err(format!(
                "inputs must be an object, not {}",
                super::model::json_type_name(&other)
            ));
        }
    };
    let mut errors = Vec::new();
    for name in given.keys() {
        if !workflow.inputs.contains_key(name) {
            let known: Vec<&str> = workflow.inputs.keys().map(String::as_str).collect();
            errors.push(format!(
                "unknown input `{name}` (inputs: {})",
                known.join(", ")
            ));
        }
    }
    for (name, spec) in &workflow.inputs {
        match given.get(name) {
            Some(value) if !spec.kind.matches(value) => {
                errors.push(format!("input `{name}` must be a {}", spec.kind));
            }
            Some(_) => {}
            None => match &spec.default {
                Some(default) => {
                    given.insert(name.clone(), default.clone());
                }
                None if spec.is_required() => errors.push(format!("input `{name}` is required")),
                None => {}
            },
        }
    }
    if errors.is_empty() {
        Ok(Value::Object(given))
    } else {
        Err(errors.join("; "))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;
    use crate::store::sqlite::SqliteStore;

    /// Node services that record the tools called.
    #[derive(Default)]
    struct Recording(Mutex<Vec<String>>);

    #[async_trait]
    impl NodeServices for Recording {
        async fn complete(&self, _: Option<&str>, prompt: &str) -> Result<String, String> {
            Ok(prompt.to_owned())
        }
        async fn call_tool(
            &self,
            name: &str,
            _: Value,
            _: Option<&RunOrigin>,
        ) -> Result<Value, String> {
            self.0
                .lock()
                .map_err(|e| e.to_string())?
                .push(name.to_owned());
            Ok(Value::Null)
        }
        async fn send_message(&self, _: MessageTarget, _: &str) -> Result<i64, String> {
            Ok(1)
        }
        fn tool_names(&self) -> HashSet<String> {
            HashSet::from(["current_time".to_owned()])
        }
    }

    #[tokio::test]
    async fn a_node_calling_an_undeclared_tool_is_refused_at_run_time() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store: SharedStore =
            Arc::new(SqliteStore::open(&dir.path().join("g.db")).expect("store"));
        let events = EventBus::new(64);
        let mut rx = events.subscribe();
        let services = Arc::new(Recording::default());
        let engine = Engine::load(dir.path().to_path_buf(), store, events, services.clone());
        let text =
            "name = \"w\"\n[[nodes]]\nid = \"a\"\nkind = \"tool\"\ntool = \"current_time\"\n";
        let wf = Workflow::from_toml(text, "w.toml").expect("parse");
        let known = Known {
            tools: services.tool_names(),
            ..Known::default()
        };
        assert!(
            !validate::validate(&wf, &known).is_empty(),
            "validation refuses it first"
        );
        // Past validation (as no loaded file can be), the run refuses it too.
        engine
            .workflows
            .write()
            .expect("lock")
            .insert("w".to_owned(), Arc::new(wf));
        let run = engine.start("w", Value::Null, None).await.expect("start");
        let ended = tokio::time::timeout(Duration::from_secs(20), async {
            loop {
                match rx.recv().await.expect("events") {
                    Event::RunChanged { run: r, status, .. }
                        if r == run && status != RunStatus::Running =>
                    {
                        break;
                    }
                    _ => {}
                }
            }
        })
        .await;
        assert!(ended.is_ok(), "run {run} did not end");
        let record = engine.run(run).await.expect("run");
        assert_eq!(record.status, RunStatus::Failed, "{record:?}");
        let node = record.nodes.iter().find(|n| n.node == "a").expect("node a");
        assert_eq!(
            node.error.as_deref(),
            Some(
                "tool `current_time` is not declared by this workflow; add it to the top-level list: tools = [\"current_time\"]"
            )
        );
        assert!(
            services.0.lock().expect("lock").is_empty(),
            "the tool never ran"
        );
    }
}
