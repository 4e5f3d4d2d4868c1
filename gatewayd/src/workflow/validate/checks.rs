//! The checks of one parsed workflow: the workflow's name and inputs, then each node (ids,
//! dependencies, bounds, tools, message targets, templates and scripts and what they refer to).
//! [`Validator`] collects every problem instead of stopping at the first.

use std::collections::HashSet;

use super::script_refs::{ScriptRef, script_refs};
use super::{Known, MAX_CONCURRENCY, MAX_RETRIES, MAX_TIMEOUT, WorkflowError};
use crate::message::{ChannelKind, UserId};
use crate::workflow::model::{self, Graph, MAX_ITEMS_CAP, Node, NodeKind, Reach, Target, Workflow};
use crate::workflow::script::Sandbox;
use crate::workflow::template::{self, Ref};

/// Ids that would clash with template and script names.
const RESERVED_IDS: &[&str] = &["inputs", "nodes", "item", "index"];

pub(super) struct Validator<'a> {
    pub(super) workflow: &'a Workflow,
    pub(super) known: &'a Known,
    pub(super) sandbox: Sandbox,
    pub(super) errors: Vec<WorkflowError>,
    pub(super) graph: &'a Graph<'a>,
    pub(super) reach: Option<Reach>,
}

/// Whether rhai source has nothing but whitespace, comments and `;`.
fn is_blank_script(src: &str) -> bool {
    let bytes = src.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i..].starts_with(b"//") {
            while i < bytes.len() && bytes[i] != b'\n' {
                i += 1;
            }
        } else if bytes[i..].starts_with(b"/*") {
            let mut depth = 0usize;
            while i < bytes.len() {
                if bytes[i..].starts_with(b"/*") {
                    depth += 1;
                    i += 2;
                } else if bytes[i..].starts_with(b"*/") {
                    depth -= 1;
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    i += 1;
                }
            }
        } else if bytes[i].is_ascii_whitespace() || bytes[i] == b';' {
            i += 1;
        } else {
            return false;
        }
    }
    true
}

/// A template that is plain text (no `{{…}}`), as that text.
fn literal(text: &str) -> Option<String> {
    let parsed = template::parse(text).ok()?;
    if !parsed.references().is_empty() {
        return None;
    }
    parsed.render(&|_| None).ok()
}

fn is_id(s: &str) -> bool {
    !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
}

impl Validator<'_> {
    pub(super) fn push(&mut self, node: Option<&str>, field: Option<&str>, message: String) {
        self.errors.push(WorkflowError {
            file: self.workflow.path.clone(),
            node: node.map(str::to_owned),
            field: field.map(str::to_owned),
            message,
        });
    }

    pub(super) fn check_workflow(&mut self) {
        let wf = self.workflow;
        if !wf
            .name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-')
            || wf.name.is_empty()
        {
            self.push(
                None,
                Some("name"),
                format!(
                    "`{}` is not a workflow name; use [a-z0-9_-]+ (it is typed in `/run <name>`)",
                    wf.name
                ),
            );
        }
        for (i, tool) in wf.tools.iter().enumerate() {
            if !self.known.tools.contains(tool) {
                let mut known: Vec<&str> = self.known.tools.iter().map(String::as_str).collect();
                known.sort_unstable();
                self.push(
                    None,
                    Some(&format!("tools[{i}]")),
                    format!("unknown tool `{tool}`; known tools: {}", known.join(", ")),
                );
            }
        }
        for (name, spec) in &wf.inputs {
            let key = |k: &str| format!("inputs.{name}{k}");
            if !is_id(name) {
                self.push(
                    None,
                    Some(&key("")),
                    format!("`{name}` is not an input name; use [a-z0-9_]+"),
                );
            }
            if let Some(default) = &spec.default {
                if !spec.kind.matches(default) {
                    self.push(
                        None,
                        Some(&key(".default")),
                        format!(
                            "the default is {}, but the input's type is {}",
                            model::json_type_name(default),
                            spec.kind
                        ),
                    );
                }
                if spec.required == Some(true) {
                    self.push(
                        None,
                        Some(&key(".required")),
                        "a required input cannot have a default; remove one of them".to_owned(),
                    );
                }
            }
        }
        if wf.nodes.is_empty() {
            self.push(
                None,
                Some("nodes"),
                "the workflow has no nodes; add at least one [[nodes]]".to_owned(),
            );
        }
    }

    pub(super) fn check_node(&mut self, index: usize, node: &Node, duplicate: bool) {
        let id = node.id.as_str();
        let here = Some(id);
        if !is_id(id) {
            self.push(
                here,
                Some("id"),
                format!("`{id}` is not a node id; use [a-z0-9_]+"),
            );
        } else if RESERVED_IDS.contains(&id) {
            self.push(
                here,
                Some("id"),
                format!("`{id}` is reserved for templates and scripts; choose another id"),
            );
        }
        if duplicate {
            self.push(
                here,
                Some("id"),
                format!("duplicate node id `{id}`; ids must be unique in the file"),
            );
        }
        let timeout = node.timeout.get();
        if timeout.is_zero() {
            self.push(here, Some("timeout"), "must be longer than 0".to_owned());
        } else if timeout > MAX_TIMEOUT {
            self.push(
                here,
                Some("timeout"),
                format!(
                    "must be at most {}h, not {timeout:?}",
                    MAX_TIMEOUT.as_secs() / 3600
                ),
            );
        }
        if node.retries > MAX_RETRIES {
            self.push(
                here,
                Some("retries"),
                format!("must be between 0 and {MAX_RETRIES}, not {}", node.retries),
            );
        }

        // Dependencies.
        let mut seen: HashSet<&str> = HashSet::with_capacity(node.after.len());
        for edge in &node.after {
            let up = edge.node.as_str();
            if !seen.insert(up) {
                self.push(
                    here,
                    Some("after"),
                    format!("`{up}` is listed more than once"),
                );
                continue;
            }
            match self.graph.index(up).map(|i| self.graph.node(i)) {
                None => self.push(
                    here,
                    Some("after"),
                    format!("unknown dependency `{up}`: no node has that id"),
                ),
                Some(upstream) => {
                    if let Some(when) = edge.when
                        && !matches!(upstream.kind, NodeKind::Condition(_))
                    {
                        self.push(
                            here,
                            Some("after"),
                            format!(
                                "`when = {when}` on the edge from `{up}`, which is a {} node; `when` is only for edges from a condition",
                                upstream.kind.name()
                            ),
                        );
                    }
                }
            }
        }

        // Kind-specific settings.
        for (field, tool) in node.tools() {
            if !self.known.tools.contains(tool) {
                let mut known: Vec<&str> = self.known.tools.iter().map(String::as_str).collect();
                known.sort_unstable();
                self.push(
                    here,
                    Some(field),
                    format!("unknown tool `{tool}`; known tools: {}", known.join(", ")),
                );
            } else if !self.workflow.tools.iter().any(|t| t == tool) {
                self.push(
                    here,
                    Some(field),
                    undeclared_tool(tool, &self.workflow.tools),
                );
            }
        }
        match &node.kind {
            NodeKind::Foreach(f) => {
                if f.concurrency == 0 || f.concurrency > MAX_CONCURRENCY {
                    self.push(
                        here,
                        Some("concurrency"),
                        format!(
                            "must be between 1 and {MAX_CONCURRENCY}, not {}",
                            f.concurrency
                        ),
                    );
                }
                if f.max_items == 0 || f.max_items > MAX_ITEMS_CAP {
                    self.push(
                        here,
                        Some("max_items"),
                        format!("must be between 1 and {MAX_ITEMS_CAP}, not {}", f.max_items),
                    );
                }
            }
            NodeKind::Message(m) => match m.target() {
                Err(message) => self.push(here, Some("to"), message),
                Ok(Target::Chat { channel, .. }) => {
                    if let Some(problem) = literal(&channel).and_then(|c| self.channel_problem(&c))
                    {
                        self.push(here, Some("channel"), problem);
                    }
                }
                Ok(Target::User(user)) => {
                    if let Some(user) = literal(&user)
                        && user.trim().parse::<UserId>().is_err()
                    {
                        self.push(
                            here,
                            Some("user"),
                            format!("`{user}` is not a user id (a number, as `/whoami` shows)"),
                        );
                    }
                }
                Ok(Target::Origin) => {}
            },
            _ => {}
        }

        // Templates and scripts may only read declared inputs and upstream nodes.
        for field in node.templates() {
            let parsed = match template::parse(field.text) {
                Ok(t) => t,
                Err(e) => {
                    self.push(here, Some(&field.field), e.to_string());
                    continue;
                }
            };
            if field.field == "items" && parsed.single_ref().is_none() {
                self.push(
                    here,
                    Some("items"),
                    "must be exactly one reference to a list, e.g. \"{{fetch.output}}\"".to_owned(),
                );
            }
            for r in parsed.references() {
                let problem = match &r {
                    Ref::Input(name) => self.unknown_input(name),
                    Ref::Node { node: up, .. } => self.not_upstream(index, id, up),
                    Ref::Item | Ref::Index if !field.in_item => {
                        Some("is only available inside a foreach `do` step".to_owned())
                    }
                    Ref::Item | Ref::Index => None,
                };
                if let Some(problem) = problem {
                    self.push(here, Some(&field.field), format!("`{{{{{r}}}}}` {problem}"));
                }
            }
        }
        for field in node.scripts() {
            if is_blank_script(field.source) {
                let what = if field.field == "expr" {
                    "must not be empty; write a rhai expression that yields true or false"
                } else {
                    "must not be empty; write a rhai script whose value is the node's output"
                };
                self.push(here, Some(field.field), what.to_owned());
                continue;
            }
            let compiled = if field.in_item {
                self.sandbox.compile_item(field.source)
            } else {
                self.sandbox.compile(field.source)
            };
            if let Err(e) = compiled {
                self.push(here, Some(field.field), e.to_string());
                continue;
            }
            for r in script_refs(field.source) {
                let problem = match &r {
                    ScriptRef::Input(name) => self
                        .unknown_input(name)
                        .map(|p| format!("`inputs.{name}` {p}")),
                    ScriptRef::Node(up) => self
                        .not_upstream(index, id, up)
                        .map(|p| format!("`nodes.{up}` {p}")),
                };
                if let Some(problem) = problem {
                    self.push(here, Some(field.field), problem);
                }
            }
        }
    }

    fn unknown_input(&self, name: &str) -> Option<String> {
        (!self.workflow.inputs.contains_key(name))
            .then(|| format!("refers to unknown input `{name}`; declare it under [inputs.{name}]"))
    }

    /// Why the channel a message node names cannot be sent to, if it cannot.
    fn channel_problem(&self, channel: &str) -> Option<String> {
        let kind = match channel.parse::<ChannelKind>() {
            Ok(kind) => kind,
            Err(e) => return Some(format!("unknown channel: {e}")),
        };
        if !self.known.all_channels.is_empty() && !self.known.all_channels.contains(&kind.as_str())
        {
            return Some(format!(
                "unknown channel `{channel}`; channels: {}",
                self.known.all_channels.join(", ")
            ));
        }
        let enabled = self.known.channels.as_ref()?;
        if enabled.contains(&kind) {
            return None;
        }
        // In the gateway's display order where it is known.
        let mut on: Vec<&str> = enabled.iter().map(|c| c.as_str()).collect();
        let all = &self.known.all_channels;
        on.sort_by_key(|c| all.iter().position(|a| a == c).unwrap_or(usize::MAX));
        Some(format!(
            "channel `{kind}` is not enabled (enabled: {}); enable [channels.{kind}] or send elsewhere",
            if on.is_empty() {
                "none".to_owned()
            } else {
                on.join(", ")
            }
        ))
    }

    fn not_upstream(&self, index: usize, id: &str, up: &str) -> Option<String> {
        let up_index = self.graph.index(up);
        if up == id {
            Some("refers to the node's own output".to_owned())
        } else if up_index.is_none() {
            Some(format!("refers to unknown node `{up}`"))
        } else if !up_index
            .zip(self.reach.as_ref())
            .is_some_and(|(u, reach)| reach.is_ancestor(u, index))
        {
            Some(format!(
                "refers to node `{up}`, which is not upstream of `{id}`; add it to `after`"
            ))
        } else {
            None
        }
    }
}

/// The error of a node calling `tool` that the file's `tools` (`declared`) does not list.
pub(crate) fn undeclared_tool(tool: &str, declared: &[String]) -> String {
    let mut all: Vec<String> = declared.iter().map(|t| format!("\"{t}\"")).collect();
    all.push(format!("\"{tool}\""));
    format!(
        "tool `{tool}` is not declared by this workflow; add it to the top-level list: tools = [{}]",
        all.join(", ")
    )
}
