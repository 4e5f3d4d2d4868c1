//! The workflow file format: serde types for `config/workflows/*.toml` and graph helpers.
//!
//! Every table rejects unknown keys (`deny_unknown_fields`; a node's kind-specific keys are
//! checked by its kind's struct). These types only describe what the file says: whether the
//! graph is acyclic, whether tools exist and whether templates point upstream is checked by
//! [`super::validate`], and the helpers here stay total on an invalid graph (unknown ids are
//! ignored, cycles never loop forever). Template fields are kept as written (strings), so one bad
//! template does not hide the file's other errors; [`Node::templates`] and [`Node::scripts`]
//! list them with their key paths for the validator and the runner.
//!
//! ```toml
//! name = "support_triage"
//! description = "Classify a ticket and answer."
//!
//! [inputs.ticket]
//! type = "string"            # string | number | boolean | list | object
//! description = "The ticket text."
//!
//! [[nodes]]
//! id = "classify"
//! kind = "llm"
//! prompt = "Urgent or normal? {{inputs.ticket}}"
//!
//! [[nodes]]
//! id = "is_urgent"
//! kind = "condition"
//! after = ["classify"]
//! expr = 'nodes.classify.output.contains("urgent")'
//!
//! [[nodes]]
//! id = "escalate"
//! kind = "message"
//! after = [{ node = "is_urgent", when = true }]
//! text = "Escalated: {{inputs.ticket}}"
//! ```

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap, HashMap, HashSet, VecDeque};
use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use serde::de::{self, MapAccess, Visitor};
use serde::{Deserialize, Deserializer};
use serde_json::Value;

use crate::config::HumanDuration;

/// A node's timeout when the file gives none.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
/// `max_items` of a foreach node when the file gives none.
pub const DEFAULT_MAX_ITEMS: usize = 100;
/// The largest `max_items` a foreach node may ask for.
pub const MAX_ITEMS_CAP: usize = 1000;
/// `concurrency` of a foreach node when the file gives none.
pub const DEFAULT_CONCURRENCY: usize = 4;

/// One workflow file.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Workflow {
    /// The name used to run it (`/run <name>`, `gatewayctl workflows run <name>`).
    pub name: String,
    /// One line for operators and for the agent's `run_workflow` tool.
    #[serde(default)]
    pub description: String,
    /// `[inputs.<name>]`: the values a run takes.
    #[serde(default)]
    pub inputs: BTreeMap<String, InputSpec>,
    /// `[[nodes]]`, in file order.
    #[serde(default)]
    pub nodes: Vec<Node>,
    /// The file it was read from (not a key in the file).
    #[serde(skip)]
    pub path: PathBuf,
}

/// `[inputs.<name>]`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InputSpec {
    /// `type`: what JSON value the input must be.
    #[serde(rename = "type")]
    pub kind: InputType,
    /// `required`: whether a run must give it. Defaults to true, or to false when a default is
    /// given; see [`InputSpec::is_required`].
    #[serde(default)]
    pub required: Option<bool>,
    /// `default`: the value used when a run does not give one.
    #[serde(default, deserialize_with = "optional_json")]
    pub default: Option<Value>,
    /// `description`: for operators and the agent.
    #[serde(default)]
    pub description: String,
}

impl InputSpec {
    /// Whether a run must give this input: as written, else true unless there is a default.
    pub fn is_required(&self) -> bool {
        self.required.unwrap_or(self.default.is_none())
    }
}

/// The type of an input.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum InputType {
    /// A JSON string.
    String,
    /// A JSON number.
    Number,
    /// `true` or `false`.
    Boolean,
    /// A JSON array.
    List,
    /// A JSON object.
    Object,
}

impl InputType {
    /// Whether `value` has this type.
    pub fn matches(self, value: &Value) -> bool {
        matches!(
            (self, value),
            (Self::String, Value::String(_))
                | (Self::Number, Value::Number(_))
                | (Self::Boolean, Value::Bool(_))
                | (Self::List, Value::Array(_))
                | (Self::Object, Value::Object(_))
        )
    }
}

impl fmt::Display for InputType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::String => "string",
            Self::Number => "number",
            Self::Boolean => "boolean",
            Self::List => "list",
            Self::Object => "object",
        })
    }
}

/// One `[[nodes]]` entry.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Node {
    /// `id`: unique in the file, `[a-z0-9_]+`; templates refer to it as `{{id.output}}`.
    pub id: String,
    /// `after`: the nodes that must finish first.
    #[serde(default)]
    pub after: Vec<Edge>,
    /// `timeout`: how long one attempt may take (for a foreach node: one item's step).
    #[serde(default = "default_timeout")]
    pub timeout: HumanDuration,
    /// `retries`: further attempts after a failed one (for a foreach node: per item).
    #[serde(default)]
    pub retries: u32,
    /// `kind` and the keys that kind takes.
    #[serde(flatten)]
    pub kind: NodeKind,
}

fn default_timeout() -> HumanDuration {
    HumanDuration(DEFAULT_TIMEOUT)
}

/// A dependency: `"id"` or `{ node = "id", when = true|false }`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Edge {
    /// The upstream node.
    pub node: String,
    /// For an edge from a condition: run only when the condition yielded this.
    pub when: Option<bool>,
}

impl<'de> Deserialize<'de> for Edge {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct EdgeVisitor;

        impl<'de> Visitor<'de> for EdgeVisitor {
            type Value = Edge;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a node id, or a table `{ node = \"id\", when = true|false }`")
            }

            fn visit_str<E: de::Error>(self, id: &str) -> Result<Edge, E> {
                Ok(Edge {
                    node: id.to_owned(),
                    when: None,
                })
            }

            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Edge, A::Error> {
                let mut node = None;
                let mut when = None;
                while let Some(key) = map.next_key::<String>()? {
                    match key.as_str() {
                        "node" => node = Some(map.next_value::<String>()?),
                        "when" => when = Some(map.next_value::<bool>()?),
                        other => return Err(de::Error::unknown_field(other, &["node", "when"])),
                    }
                }
                let node = node.ok_or_else(|| de::Error::missing_field("node"))?;
                Ok(Edge { node, when })
            }
        }

        d.deserialize_any(EdgeVisitor)
    }
}

/// What a node does.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum NodeKind {
    /// `kind = "llm"`: one completion.
    Llm(LlmStep),
    /// `kind = "tool"`: one call of a shared tool.
    Tool(ToolStep),
    /// `kind = "code"`: a sandboxed rhai script.
    Code(CodeStep),
    /// `kind = "condition"`: a rhai expression choosing the `when = true` or `when = false`
    /// edges below it.
    Condition(ConditionNode),
    /// `kind = "foreach"`: one step per item of a list, bounded.
    Foreach(ForeachNode),
    /// `kind = "message"`: a message sent through the outbox.
    Message(MessageNode),
}

impl NodeKind {
    /// The `kind` as written in the file.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Llm(_) => "llm",
            Self::Tool(_) => "tool",
            Self::Code(_) => "code",
            Self::Condition(_) => "condition",
            Self::Foreach(_) => "foreach",
            Self::Message(_) => "message",
        }
    }
}

/// The body of a foreach node: `[nodes.do]` with `kind = "llm" | "tool" | "code"`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Step {
    /// One completion per item.
    Llm(LlmStep),
    /// One tool call per item.
    Tool(ToolStep),
    /// One script run per item.
    Code(CodeStep),
}

impl Step {
    /// The `kind` as written in the file.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Llm(_) => "llm",
            Self::Tool(_) => "tool",
            Self::Code(_) => "code",
        }
    }
}

/// The keys of an `llm` node or step.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LlmStep {
    /// `prompt` (template): the user message.
    pub prompt: String,
    /// `system` (template): the system prompt; the agent's when absent.
    #[serde(default)]
    pub system: Option<String>,
    /// `model`: overrides the configured model.
    #[serde(default)]
    pub model: Option<String>,
}

/// The keys of a `tool` node or step.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ToolStep {
    /// `tool`: the name of a registered tool.
    pub tool: String,
    /// `args`: the tool's arguments; every string in it, at any depth, is a template.
    #[serde(default, deserialize_with = "json_object")]
    pub args: serde_json::Map<String, Value>,
}

/// The keys of a `code` node or step.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CodeStep {
    /// `script`: rhai source reading `inputs` and `nodes` (and `item`, `index` in a foreach);
    /// its value is the output.
    pub script: String,
}

/// The keys of a `condition` node.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConditionNode {
    /// `expr`: a rhai expression over `inputs` and `nodes` that must yield a boolean.
    pub expr: String,
}

/// The keys of a `foreach` node.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ForeachNode {
    /// `items` (template): exactly one reference to a list, e.g. `"{{fetch.output}}"`.
    pub items: String,
    /// `max_items`: more items than this fails the node (at most [`MAX_ITEMS_CAP`]).
    #[serde(default = "default_max_items")]
    pub max_items: usize,
    /// `concurrency`: items in flight at once.
    #[serde(default = "default_concurrency")]
    pub concurrency: usize,
    /// `do`: the step run for each item, which may use `{{item}}` and `{{index}}`.
    #[serde(rename = "do")]
    pub step: Step,
}

fn default_max_items() -> usize {
    DEFAULT_MAX_ITEMS
}

fn default_concurrency() -> usize {
    DEFAULT_CONCURRENCY
}

impl ForeachNode {
    /// The items of a rendered `items` value: a list, or a string holding a JSON list (what an
    /// LLM node returns). More than `max_items` is an error, never a silent cut.
    pub fn items_from(&self, value: Value) -> Result<Vec<Value>, String> {
        let items = match value {
            Value::Array(items) => items,
            Value::String(text) => match serde_json::from_str::<Value>(text.trim()) {
                Ok(Value::Array(items)) => items,
                _ => return Err("`items` is a string that does not hold a JSON list".to_owned()),
            },
            other => {
                return Err(format!(
                    "`items` must be a list, got {}",
                    json_type_name(&other)
                ));
            }
        };
        if items.len() > self.max_items {
            return Err(format!(
                "`items` has {} items, more than max_items = {}",
                items.len(),
                self.max_items
            ));
        }
        Ok(items)
    }
}

/// The name of a JSON value's type, for messages.
pub fn json_type_name(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

/// The keys of a `message` node.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MessageNode {
    /// `text` (template): what to send.
    pub text: String,
    /// `to = "origin"`: the chat that triggered the run (the default when no target is given).
    #[serde(default)]
    pub to: Option<String>,
    /// `channel` (template): with `chat_id`, an explicit chat.
    #[serde(default)]
    pub channel: Option<String>,
    /// `chat_id` (template): with `channel`, an explicit chat.
    #[serde(default)]
    pub chat_id: Option<String>,
    /// `user` (template): a user id; the gateway picks that person's chat.
    #[serde(default)]
    pub user: Option<String>,
}

/// Where a message node sends, with its fields still templates.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// The chat that triggered the run.
    Origin,
    /// An explicit chat.
    Chat {
        /// Channel kind (template).
        channel: String,
        /// Chat id on that channel (template).
        chat_id: String,
    },
    /// A user, wherever they can be reached (template).
    User(String),
}

impl MessageNode {
    /// The target the keys describe, or why they describe none (or several).
    pub fn target(&self) -> Result<Target, String> {
        let chat = self.channel.is_some() || self.chat_id.is_some();
        let chosen = [self.to.is_some(), chat, self.user.is_some()]
            .iter()
            .filter(|set| **set)
            .count();
        if chosen > 1 {
            return Err(
                "give one target: `to = \"origin\"`, `channel` + `chat_id`, or `user`".to_owned(),
            );
        }
        if let Some(to) = &self.to {
            return if to == "origin" {
                Ok(Target::Origin)
            } else {
                Err(format!(
                    "`to = \"{to}\"` is not a target; the only value is \"origin\" (use `channel` + `chat_id` or `user` for others)"
                ))
            };
        }
        if let Some(user) = &self.user {
            return Ok(Target::User(user.clone()));
        }
        match (&self.channel, &self.chat_id) {
            (Some(channel), Some(chat_id)) => Ok(Target::Chat {
                channel: channel.clone(),
                chat_id: chat_id.clone(),
            }),
            (Some(_), None) => Err("`channel` needs `chat_id`".to_owned()),
            (None, Some(_)) => Err("`chat_id` needs `channel`".to_owned()),
            (None, None) => Ok(Target::Origin),
        }
    }
}

/// A template-valued key of a node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TemplateField<'a> {
    /// Key path inside the node: `prompt`, `args.url`, `do.prompt`, `args.list[0]`.
    pub field: String,
    /// The template text.
    pub text: &'a str,
    /// Whether `{{item}}` and `{{index}}` are available (a foreach `do` step).
    pub in_item: bool,
}

/// A rhai-valued key of a node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScriptField<'a> {
    /// `script`, `expr` or `do.script`.
    pub field: &'static str,
    /// The source.
    pub source: &'a str,
    /// Whether `item` and `index` are available (a foreach `do` step).
    pub in_item: bool,
}

impl Node {
    /// The ids this node waits for, in the order written (each once).
    pub fn upstream_ids(&self) -> Vec<&str> {
        let mut seen: HashSet<&str> = HashSet::with_capacity(self.after.len());
        self.after
            .iter()
            .map(|e| e.node.as_str())
            .filter(|id| seen.insert(id))
            .collect()
    }

    /// Every template-valued key, with its key path.
    pub fn templates(&self) -> Vec<TemplateField<'_>> {
        let mut out = Vec::new();
        match &self.kind {
            NodeKind::Llm(s) => llm_templates(s, "", false, &mut out),
            NodeKind::Tool(s) => tool_templates(s, "", false, &mut out),
            NodeKind::Code(_) | NodeKind::Condition(_) => {}
            NodeKind::Foreach(f) => {
                out.push(TemplateField {
                    field: "items".to_owned(),
                    text: &f.items,
                    in_item: false,
                });
                match &f.step {
                    Step::Llm(s) => llm_templates(s, "do.", true, &mut out),
                    Step::Tool(s) => tool_templates(s, "do.", true, &mut out),
                    Step::Code(_) => {}
                }
            }
            NodeKind::Message(m) => {
                let fields = [
                    ("text", Some(&m.text)),
                    ("channel", m.channel.as_ref()),
                    ("chat_id", m.chat_id.as_ref()),
                    ("user", m.user.as_ref()),
                ];
                for (field, text) in fields {
                    if let Some(text) = text {
                        out.push(TemplateField {
                            field: field.to_owned(),
                            text,
                            in_item: false,
                        });
                    }
                }
            }
        }
        out
    }

    /// Every rhai-valued key.
    pub fn scripts(&self) -> Vec<ScriptField<'_>> {
        let field = |field, source, in_item| ScriptField {
            field,
            source,
            in_item,
        };
        match &self.kind {
            NodeKind::Code(c) => vec![field("script", &c.script, false)],
            NodeKind::Condition(c) => vec![field("expr", &c.expr, false)],
            NodeKind::Foreach(ForeachNode {
                step: Step::Code(c),
                ..
            }) => vec![field("do.script", &c.script, true)],
            _ => Vec::new(),
        }
    }

    /// The tools this node calls, with the key path that names each.
    pub fn tools(&self) -> Vec<(&'static str, &str)> {
        match &self.kind {
            NodeKind::Tool(t) => vec![("tool", &t.tool)],
            NodeKind::Foreach(ForeachNode {
                step: Step::Tool(t),
                ..
            }) => vec![("do.tool", &t.tool)],
            _ => Vec::new(),
        }
    }
}

fn llm_templates<'a>(
    step: &'a LlmStep,
    prefix: &str,
    in_item: bool,
    out: &mut Vec<TemplateField<'a>>,
) {
    out.push(TemplateField {
        field: format!("{prefix}prompt"),
        text: &step.prompt,
        in_item,
    });
    if let Some(system) = &step.system {
        out.push(TemplateField {
            field: format!("{prefix}system"),
            text: system,
            in_item,
        });
    }
}

fn tool_templates<'a>(
    step: &'a ToolStep,
    prefix: &str,
    in_item: bool,
    out: &mut Vec<TemplateField<'a>>,
) {
    fn walk<'a>(value: &'a Value, path: String, in_item: bool, out: &mut Vec<TemplateField<'a>>) {
        match value {
            Value::String(text) => out.push(TemplateField {
                field: path,
                text,
                in_item,
            }),
            Value::Array(items) => {
                for (i, v) in items.iter().enumerate() {
                    walk(v, format!("{path}[{i}]"), in_item, out);
                }
            }
            Value::Object(map) => {
                for (k, v) in map {
                    walk(v, format!("{path}.{k}"), in_item, out);
                }
            }
            _ => {}
        }
    }
    for (k, v) in &step.args {
        walk(v, format!("{prefix}args.{k}"), in_item, out);
    }
}

impl Workflow {
    /// Parses workflow text; `path` is recorded, not read. Only the shape is checked here:
    /// see [`super::validate::validate`] for the rest.
    pub fn from_toml(text: &str, path: impl Into<PathBuf>) -> Result<Self, toml::de::Error> {
        let mut workflow: Self = toml::from_str(text)?;
        workflow.path = path.into();
        Ok(workflow)
    }

    /// The node with this id (the first, if the file repeats it). A linear scan: code that looks
    /// nodes up repeatedly builds a [`Graph`] once instead.
    pub fn node(&self, id: &str) -> Option<&Node> {
        self.nodes.iter().find(|n| n.id == id)
    }

    /// The graph of the nodes, with its indexes built once.
    pub fn graph(&self) -> Graph<'_> {
        Graph::new(self)
    }

    /// The ids `id` waits for directly (its `after` list), each once; empty for an unknown id.
    pub fn upstream(&self, id: &str) -> Vec<&str> {
        self.node(id).map(Node::upstream_ids).unwrap_or_default()
    }

    /// The ids of the nodes that wait for `id` directly, in file order.
    pub fn downstream(&self, id: &str) -> Vec<&str> {
        self.nodes
            .iter()
            .filter(|n| n.after.iter().any(|e| e.node == id))
            .map(|n| n.id.as_str())
            .collect()
    }

    /// The nodes with no dependencies, in file order: where a run starts.
    pub fn roots(&self) -> Vec<&str> {
        self.nodes
            .iter()
            .filter(|n| n.after.is_empty())
            .map(|n| n.id.as_str())
            .collect()
    }

    /// Every node `id` depends on, directly or through others. Unknown ids are skipped; on a
    /// cycle the set includes `id` itself.
    pub fn ancestors(&self, id: &str) -> BTreeSet<&str> {
        let graph = self.graph();
        let Some(i) = graph.index(id) else {
            return BTreeSet::new();
        };
        let reach = graph.reach();
        (0..self.nodes.len())
            .filter(|&a| reach.is_ancestor(a, i))
            .map(|a| self.nodes[a].id.as_str())
            .collect()
    }

    /// One cycle per group of nodes that depend on each other (a strongly connected
    /// component), each written from its first node in file order back to that node
    /// (`["a", "b", "c", "a"]`, in the direction work flows: `b` is after `a`).
    pub fn cycles(&self) -> Vec<Vec<String>> {
        self.graph().cycles()
    }

    /// The node ids in an order where every node comes after its dependencies; among nodes
    /// that are ready together, file order. On a cycle, the cycles (see [`Workflow::cycles`]).
    pub fn topo_order(&self) -> Result<Vec<&str>, Vec<Vec<String>>> {
        let graph = self.graph();
        match graph.topo_order() {
            Some(order) => Ok(order
                .into_iter()
                .map(|i| self.nodes[i].id.as_str())
                .collect()),
            None => Err(graph.cycles()),
        }
    }

    /// Checks a run's inputs against `[inputs]`, fills in defaults, and returns the inputs
    /// object, or every problem (unknown names, missing required inputs, wrong types).
    pub fn resolve_inputs(
        &self,
        given: &serde_json::Map<String, Value>,
    ) -> Result<serde_json::Map<String, Value>, Vec<String>> {
        let mut errors = Vec::new();
        for name in given.keys() {
            if !self.inputs.contains_key(name) {
                errors.push(format!("unknown input `{name}`"));
            }
        }
        let mut out = serde_json::Map::new();
        for (name, spec) in &self.inputs {
            match given.get(name).or(spec.default.as_ref()) {
                Some(value) if spec.kind.matches(value) => {
                    out.insert(name.clone(), value.clone());
                }
                Some(value) => errors.push(format!(
                    "input `{name}` must be a {}, got {}",
                    spec.kind,
                    json_type_name(value)
                )),
                None if spec.is_required() => {
                    errors.push(format!("input `{name}` is required"));
                }
                None => {}
            }
        }
        if errors.is_empty() {
            Ok(out)
        } else {
            Err(errors)
        }
    }
}

/// The nodes of a workflow as a graph over their positions in the file, built in one pass
/// (O(nodes + edges)). Edges go to the first node with an id; unknown ids are left out and a
/// repeated `after` entry counts once. Every query below is linear in the graph or better, so a
/// workflow of [`super::validate::MAX_NODES`] nodes is checked and scheduled in milliseconds.
#[derive(Debug, Clone)]
pub struct Graph<'a> {
    workflow: &'a Workflow,
    index: HashMap<&'a str, usize>,
    up: Vec<Vec<usize>>,
    down: Vec<Vec<usize>>,
}

impl<'a> Graph<'a> {
    /// Indexes `workflow`'s nodes and edges.
    pub fn new(workflow: &'a Workflow) -> Self {
        let n = workflow.nodes.len();
        let mut index: HashMap<&str, usize> = HashMap::with_capacity(n);
        for (i, node) in workflow.nodes.iter().enumerate() {
            index.entry(node.id.as_str()).or_insert(i);
        }
        let mut up: Vec<Vec<usize>> = vec![Vec::new(); n];
        let mut down: Vec<Vec<usize>> = vec![Vec::new(); n];
        let mut seen: HashSet<usize> = HashSet::new();
        for (i, node) in workflow.nodes.iter().enumerate() {
            seen.clear();
            for edge in &node.after {
                if let Some(&u) = index.get(edge.node.as_str())
                    && seen.insert(u)
                {
                    up[i].push(u);
                    down[u].push(i);
                }
            }
        }
        Self {
            workflow,
            index,
            up,
            down,
        }
    }

    /// The number of nodes.
    pub fn len(&self) -> usize {
        self.up.len()
    }

    /// Whether there are no nodes.
    pub fn is_empty(&self) -> bool {
        self.up.is_empty()
    }

    /// The position of the (first) node with this id.
    pub fn index(&self, id: &str) -> Option<usize> {
        self.index.get(id).copied()
    }

    /// The node at a position.
    pub fn node(&self, i: usize) -> &'a Node {
        &self.workflow.nodes[i]
    }

    /// The known nodes `i` waits for, each once, in the order written.
    pub fn upstream(&self, i: usize) -> &[usize] {
        &self.up[i]
    }

    /// The nodes that wait for `i`, in file order.
    pub fn downstream(&self, i: usize) -> &[usize] {
        &self.down[i]
    }

    /// Every node after its dependencies (Kahn's algorithm; among nodes ready together, file
    /// order), or `None` when a cycle leaves some nodes unplaced.
    pub fn topo_order(&self) -> Option<Vec<usize>> {
        let mut waiting: Vec<usize> = self.up.iter().map(Vec::len).collect();
        let mut ready: BinaryHeap<Reverse<usize>> = waiting
            .iter()
            .enumerate()
            .filter(|(_, w)| **w == 0)
            .map(|(i, _)| Reverse(i))
            .collect();
        let mut order = Vec::with_capacity(self.len());
        while let Some(Reverse(i)) = ready.pop() {
            order.push(i);
            for &d in &self.down[i] {
                waiting[d] -= 1;
                if waiting[d] == 0 {
                    ready.push(Reverse(d));
                }
            }
        }
        (order.len() == self.len()).then_some(order)
    }

    /// The strongly connected components (Kosaraju's algorithm, iterative): each node's
    /// component number, and the components in topological order (a component comes after
    /// every component it depends on), each listing its nodes in file order.
    fn components(&self) -> (Vec<usize>, Vec<Vec<usize>>) {
        let n = self.len();
        // First pass: finishing order of a DFS along upstream → downstream edges.
        let mut visited = vec![false; n];
        let mut finished = Vec::with_capacity(n);
        for start in 0..n {
            if visited[start] {
                continue;
            }
            visited[start] = true;
            let mut stack = vec![(start, 0usize)];
            while let Some((node, child)) = stack.last_mut() {
                let node = *node;
                if let Some(&next) = self.down[node].get(*child) {
                    *child += 1;
                    if !visited[next] {
                        visited[next] = true;
                        stack.push((next, 0));
                    }
                } else {
                    finished.push(node);
                    stack.pop();
                }
            }
        }
        // Second pass, on the reversed edges in reverse finishing order: each tree is one
        // component, and they come out sources first.
        const NONE: usize = usize::MAX;
        let mut comp = vec![NONE; n];
        let mut comps: Vec<Vec<usize>> = Vec::new();
        for &start in finished.iter().rev() {
            if comp[start] != NONE {
                continue;
            }
            let c = comps.len();
            let mut members = Vec::new();
            comp[start] = c;
            let mut stack = vec![start];
            while let Some(node) = stack.pop() {
                members.push(node);
                for &u in &self.up[node] {
                    if comp[u] == NONE {
                        comp[u] = c;
                        stack.push(u);
                    }
                }
            }
            members.sort_unstable();
            comps.push(members);
        }
        (comp, comps)
    }

    /// One cycle per strongly connected component that has one (two or more nodes, or a node
    /// after itself): the shortest way from its first node in file order back to it, in the
    /// direction work flows. Sorted by that first node.
    pub fn cycles(&self) -> Vec<Vec<String>> {
        let (comp, comps) = self.components();
        let mut starts: Vec<usize> = comps
            .iter()
            .filter(|m| m.len() > 1 || self.up[m[0]].contains(&m[0]))
            .map(|m| m[0])
            .collect();
        starts.sort_unstable();
        let mut parent = vec![usize::MAX; self.len()];
        starts
            .into_iter()
            .map(|start| {
                // Breadth-first inside the component until an edge leads back to `start`.
                let c = comp[start];
                let mut queue = VecDeque::from([start]);
                let mut touched = vec![start];
                parent[start] = start;
                let mut last = start;
                'search: while let Some(node) = queue.pop_front() {
                    for &next in &self.down[node] {
                        if next == start {
                            last = node;
                            break 'search;
                        }
                        if comp[next] == c && parent[next] == usize::MAX {
                            parent[next] = node;
                            touched.push(next);
                            queue.push_back(next);
                        }
                    }
                }
                let mut path = vec![start];
                let mut at = last;
                while at != start {
                    path.push(at);
                    at = parent[at];
                }
                path[1..].reverse();
                path.push(start);
                for t in touched {
                    parent[t] = usize::MAX;
                }
                path.into_iter()
                    .map(|i| self.workflow.nodes[i].id.clone())
                    .collect()
            })
            .collect()
    }

    /// Which nodes run before which: one bit set of ancestors per node, built in one pass over
    /// the components in topological order. Nodes on a cycle are their own ancestors.
    pub fn reach(&self) -> Reach {
        let n = self.len();
        let words = n.div_ceil(64);
        let mut bits = vec![0u64; n * words];
        let (comp, comps) = self.components();
        let mut row = vec![0u64; words];
        for members in &comps {
            row.iter_mut().for_each(|w| *w = 0);
            let c = comp[members[0]];
            let cyclic = members.len() > 1 || self.up[members[0]].contains(&members[0]);
            for &m in members {
                for &u in &self.up[m] {
                    if comp[u] != c {
                        let from = &bits[u * words..(u + 1) * words];
                        for (w, f) in row.iter_mut().zip(from) {
                            *w |= f;
                        }
                        row[u / 64] |= 1 << (u % 64);
                    }
                }
                if cyclic {
                    row[m / 64] |= 1 << (m % 64);
                }
            }
            for &m in members {
                bits[m * words..(m + 1) * words].copy_from_slice(&row);
            }
        }
        Reach { words, bits }
    }
}

/// Ancestor sets of every node of a [`Graph`], as bits (n²/8 bytes: 12.5 MB at 10,000 nodes).
#[derive(Debug, Clone)]
pub struct Reach {
    words: usize,
    bits: Vec<u64>,
}

impl Reach {
    /// Whether node `a` runs before node `node` (is upstream of it, directly or not).
    pub fn is_ancestor(&self, a: usize, node: usize) -> bool {
        self.bits
            .get(node * self.words + a / 64)
            .is_some_and(|w| w & (1 << (a % 64)) != 0)
    }
}

/// TOML datetimes arrive as a private marker table; keep them as their text.
fn toml_to_json(value: Value) -> Value {
    const DATETIME: &str = "$__toml_private_datetime";
    match value {
        Value::Object(map) => {
            if map.len() == 1
                && let Some(Value::String(text)) = map.get(DATETIME)
            {
                return Value::String(text.clone());
            }
            Value::Object(map.into_iter().map(|(k, v)| (k, toml_to_json(v))).collect())
        }
        Value::Array(items) => Value::Array(items.into_iter().map(toml_to_json).collect()),
        other => other,
    }
}

fn optional_json<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Value>, D::Error> {
    Value::deserialize(d).map(|v| Some(toml_to_json(v)))
}

fn json_object<'de, D: Deserializer<'de>>(
    d: D,
) -> Result<serde_json::Map<String, Value>, D::Error> {
    match toml_to_json(Value::deserialize(d)?) {
        Value::Object(map) => Ok(map),
        _ => Err(de::Error::custom("`args` must be a table")),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn workflow(text: &str) -> Workflow {
        Workflow::from_toml(text, "test.toml").expect("parses")
    }

    const DIAMOND: &str = r#"
name = "diamond"
[inputs.q]
type = "string"
[inputs.n]
type = "number"
default = 3
[[nodes]]
id = "d"
kind = "code"
script = "1"
after = ["b", { node = "c", when = true }]
[[nodes]]
id = "a"
kind = "llm"
prompt = "{{inputs.q}}"
timeout = "5s"
retries = 2
[[nodes]]
id = "b"
kind = "tool"
tool = "http_get"
after = ["a"]
args = { url = "https://x/{{inputs.q}}", n = 1, when = 1979-05-27T07:32:00Z }
[[nodes]]
id = "c"
kind = "condition"
after = ["a"]
expr = "true"
"#;

    #[test]
    fn parses_every_field_with_defaults() {
        let wf = workflow(DIAMOND);
        assert_eq!(wf.path, PathBuf::from("test.toml"));
        let a = wf.node("a").expect("a");
        assert_eq!(a.timeout.get(), Duration::from_secs(5));
        assert_eq!(a.retries, 2);
        let d = wf.node("d").expect("d");
        assert_eq!(d.timeout.get(), DEFAULT_TIMEOUT);
        assert_eq!(d.retries, 0);
        assert_eq!(
            d.after,
            vec![
                Edge {
                    node: "b".into(),
                    when: None
                },
                Edge {
                    node: "c".into(),
                    when: Some(true)
                }
            ]
        );
        let NodeKind::Tool(b) = &wf.node("b").expect("b").kind else {
            panic!("b is a tool node");
        };
        assert_eq!(
            Value::Object(b.args.clone()),
            json!({ "url": "https://x/{{inputs.q}}", "n": 1, "when": "1979-05-27T07:32:00Z" })
        );
        assert!(wf.inputs["q"].is_required());
        assert!(!wf.inputs["n"].is_required());
    }

    #[test]
    fn graph_helpers() {
        let wf = workflow(DIAMOND);
        assert_eq!(wf.upstream("d"), ["b", "c"]);
        assert_eq!(wf.downstream("a"), ["b", "c"]);
        assert_eq!(wf.roots(), ["a"]);
        assert_eq!(
            wf.ancestors("d").into_iter().collect::<Vec<_>>(),
            ["a", "b", "c"]
        );
        assert_eq!(wf.topo_order(), Ok(vec!["a", "b", "c", "d"]));
        assert!(wf.cycles().is_empty());
    }

    #[test]
    fn cycles_are_named_in_the_direction_work_flows() {
        let wf = workflow(
            r#"
name = "loop"
[[nodes]]
id = "a"
kind = "code"
script = "1"
after = ["c"]
[[nodes]]
id = "b"
kind = "code"
script = "1"
after = ["a"]
[[nodes]]
id = "c"
kind = "code"
script = "1"
after = ["b"]
[[nodes]]
id = "s"
kind = "code"
script = "1"
after = ["s"]
"#,
        );
        assert_eq!(wf.cycles(), vec![vec!["a", "b", "c", "a"], vec!["s", "s"]]);
        assert!(wf.topo_order().is_err());
        assert!(wf.ancestors("a").contains("a"));
    }

    #[test]
    fn resolve_inputs_fills_defaults_and_reports_every_problem() {
        let wf = workflow(DIAMOND);
        let given = json!({ "q": "rust" });
        let given = given.as_object().expect("object");
        assert_eq!(
            wf.resolve_inputs(given).map(Value::Object),
            Ok(json!({ "q": "rust", "n": 3 }))
        );
        let bad = json!({ "n": "three", "extra": 1 });
        let bad = bad.as_object().expect("object");
        assert_eq!(
            wf.resolve_inputs(bad),
            Err(vec![
                "unknown input `extra`".to_owned(),
                "input `n` must be a number, got a string".to_owned(),
                "input `q` is required".to_owned(),
            ])
        );
    }

    #[test]
    fn message_targets() {
        let msg =
            |to: Option<&str>, channel: Option<&str>, chat_id: Option<&str>, user: Option<&str>| {
                MessageNode {
                    text: "hi".into(),
                    to: to.map(Into::into),
                    channel: channel.map(Into::into),
                    chat_id: chat_id.map(Into::into),
                    user: user.map(Into::into),
                }
                .target()
            };
        assert_eq!(msg(None, None, None, None), Ok(Target::Origin));
        assert_eq!(msg(Some("origin"), None, None, None), Ok(Target::Origin));
        assert_eq!(
            msg(None, None, None, Some("u1")),
            Ok(Target::User("u1".into()))
        );
        assert_eq!(
            msg(None, Some("telegram"), Some("42"), None),
            Ok(Target::Chat {
                channel: "telegram".into(),
                chat_id: "42".into()
            })
        );
        assert!(msg(Some("elsewhere"), None, None, None).is_err());
        assert!(msg(None, Some("telegram"), None, None).is_err());
        assert!(msg(None, None, Some("42"), None).is_err());
        assert!(msg(Some("origin"), None, None, Some("u1")).is_err());
    }

    #[test]
    fn foreach_items_are_bounded() {
        let node = ForeachNode {
            items: "{{x.output}}".into(),
            max_items: 2,
            concurrency: 1,
            step: Step::Code(CodeStep {
                script: "item".into(),
            }),
        };
        assert_eq!(node.items_from(json!([1, 2])), Ok(vec![json!(1), json!(2)]));
        assert_eq!(node.items_from(json!(" [1] ")), Ok(vec![json!(1)]));
        assert!(node.items_from(json!([1, 2, 3])).is_err());
        assert!(node.items_from(json!("not json")).is_err());
        assert!(node.items_from(json!({ "a": 1 })).is_err());
    }

    #[test]
    fn template_and_script_fields_carry_their_key_paths() {
        let wf = workflow(
            r#"
name = "f"
[[nodes]]
id = "each"
kind = "foreach"
items = "{{inputs.list}}"
[nodes.do]
kind = "tool"
tool = "http_get"
args = { url = "{{item}}", headers = { h = "{{index}}" }, list = ["{{inputs.x}}"] }
"#,
        );
        let node = wf.node("each").expect("each");
        let mut fields: Vec<_> = node
            .templates()
            .into_iter()
            .map(|t| (t.field, t.in_item))
            .collect();
        fields.sort();
        assert_eq!(
            fields,
            [
                ("do.args.headers.h".to_owned(), true),
                ("do.args.list[0]".to_owned(), true),
                ("do.args.url".to_owned(), true),
                ("items".to_owned(), false),
            ]
        );
        assert_eq!(node.tools(), [("do.tool", "http_get")]);
        assert!(node.scripts().is_empty());
    }
}
