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

mod fields;
mod graph;
mod parse;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;
use serde_json::Value;

use crate::config::HumanDuration;
pub use fields::{ScriptField, TemplateField};
pub use graph::{Graph, Reach};
use parse::{json_object, optional_json};

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
    /// `tools`: the tools its nodes may call; a node calling any other is refused at validation
    /// and at run time. Absent: none.
    #[serde(default)]
    pub tools: Vec<String>,
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
}
