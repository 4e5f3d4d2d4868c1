//! Loading and validating workflow files, reporting every error at once.
//!
//! [`load_dir`] reads every `*.toml` in a directory in name order. A file that does not parse or
//! does not validate is reported and skipped; it never stops the others. [`validate`] checks one
//! parsed workflow and returns every problem, each with its file, node and key path, so the
//! operator fixes a file in one pass: ids and names, duplicate ids, unknown and repeated
//! dependencies, cycles (named: `cycle: a → b → c → a`), `when` on an edge that does not leave a
//! condition, unknown tools and tools the file's `tools` list does not declare, template and script references to inputs that are not declared or to
//! nodes that are not upstream, rhai syntax and empty scripts, numeric bounds (`timeout`,
//! `retries`, foreach `max_items` and `concurrency`), message targets and the channels they name
//! (against the channels enabled in the configuration, see [`Known`]), and the size limits of a
//! file ([`MAX_FILE_BYTES`], [`MAX_NODES`], [`MAX_NESTING`]).
//!
//! It scales: the graph is indexed once ([`Graph`](super::model::Graph)), cycles and ancestor
//! sets come from one pass over its strongly connected components, and no check scans the node
//! list per node, so a file of [`MAX_NODES`] nodes validates in well under a second.
//!
//! **Invariant:** a workflow this module returns without errors can be run without finding a
//! cycle, an unknown tool, an unparsable template or script, or a reference to a node that has
//! not run before the node that uses it.

mod checks;
pub(crate) use checks::undeclared_tool;
mod script_refs;
mod text;

use std::collections::{BTreeSet, HashMap, HashSet};
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::model::Workflow;
use super::script::Sandbox;
use crate::message::ChannelKind;
use checks::Validator;
use text::{parse_error, too_deep};

/// The largest workflow file read, in bytes.
pub const MAX_FILE_BYTES: u64 = 4 * 1024 * 1024;
/// The most `[[nodes]]` a workflow may have.
pub const MAX_NODES: usize = 10_000;
/// The deepest nesting of arrays and inline tables in a file (`args = { a = [[…]] }`).
pub const MAX_NESTING: usize = 32;
/// The largest `retries` of a node.
pub const MAX_RETRIES: u32 = 100;
/// The longest `timeout` of a node.
pub const MAX_TIMEOUT: Duration = Duration::from_secs(24 * 3600);
/// The largest `concurrency` of a foreach node.
pub const MAX_CONCURRENCY: usize = 1024;
/// The most cycles reported for one file (one per group of nodes that depend on each other).
const MAX_CYCLES_REPORTED: usize = 20;
/// The most node ids a reported cycle spells out.
const MAX_CYCLE_SHOWN: usize = 24;

/// What a workflow may name, from the gateway's configuration.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Known {
    /// The registered tools.
    pub tools: HashSet<String>,
    /// The enabled channels; `None` skips the check (any channel name passes).
    pub channels: Option<BTreeSet<ChannelKind>>,
    /// Every channel the gateway has, enabled or not (`channels::registry::names()`); empty
    /// when not known, and then a channel that is not enabled is reported as such.
    pub all_channels: Vec<&'static str>,
}

impl Known {
    /// The built-in tools and these enabled channels.
    pub fn builtin(channels: impl IntoIterator<Item = ChannelKind>) -> Self {
        Self {
            tools: builtin_tool_names(),
            channels: Some(channels.into_iter().collect()),
            all_channels: Vec::new(),
        }
    }

    /// These, with `all` the names of every channel the gateway has.
    pub fn with_all_channels(mut self, all: Vec<&'static str>) -> Self {
        self.all_channels = all;
        self
    }
}

/// The names of the gateway's built-in tools (what `check-config` validates against).
pub fn builtin_tool_names() -> HashSet<String> {
    ["current_time", "http_get", "send_message", "run_workflow"]
        .into_iter()
        .map(str::to_owned)
        .collect()
}

/// One problem in one workflow file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkflowError {
    /// The file.
    pub file: PathBuf,
    /// The node it concerns, when it concerns one.
    pub node: Option<String>,
    /// The key path, inside the node when there is one (`after`, `do.prompt`, `args.url`),
    /// otherwise from the top of the file (`name`, `inputs.ticket.default`).
    pub field: Option<String>,
    /// What is wrong and, where it helps, how to fix it.
    pub message: String,
}

impl fmt::Display for WorkflowError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: ", self.file.display())?;
        match (&self.node, &self.field) {
            (Some(node), Some(field)) => write!(f, "node `{node}`, field `{field}`: ")?,
            (Some(node), None) => write!(f, "node `{node}`: ")?,
            (None, Some(field)) => write!(f, "field `{field}`: ")?,
            (None, None) => {}
        }
        f.write_str(&self.message)
    }
}

impl std::error::Error for WorkflowError {}

/// Loads every `*.toml` in `dir`, sorted by name. Returns the workflows that are valid and every
/// error of the others. A name used by an earlier file makes a later file an error.
pub fn load_dir(dir: &Path, known: &Known) -> (Vec<Workflow>, Vec<WorkflowError>) {
    let mut errors = Vec::new();
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) => {
            errors.push(WorkflowError {
                file: dir.to_path_buf(),
                node: None,
                field: None,
                message: format!("cannot read the workflow directory: {e}"),
            });
            return (Vec::new(), errors);
        }
    };
    let mut paths = Vec::new();
    for entry in entries {
        match entry {
            Ok(entry) => {
                let path = entry.path();
                if path.extension().is_some_and(|ext| ext == "toml") && path.is_file() {
                    paths.push(path);
                }
            }
            Err(e) => errors.push(WorkflowError {
                file: dir.to_path_buf(),
                node: None,
                field: None,
                message: format!("cannot list the workflow directory: {e}"),
            }),
        }
    }
    paths.sort();

    let mut workflows: Vec<Workflow> = Vec::new();
    let mut names: HashMap<String, PathBuf> = HashMap::new();
    for path in paths {
        match load_file(&path, known) {
            Ok(workflow) => match names.get(&workflow.name) {
                Some(first) => errors.push(WorkflowError {
                    file: path.clone(),
                    node: None,
                    field: Some("name".to_owned()),
                    message: format!(
                        "workflow name `{}` is already used by {}; names must be unique",
                        workflow.name,
                        first.display()
                    ),
                }),
                None => {
                    names.insert(workflow.name.clone(), path.clone());
                    workflows.push(workflow);
                }
            },
            Err(file_errors) => errors.extend(file_errors),
        }
    }
    (workflows, errors)
}

/// Reads, parses and validates one file (at most [`MAX_FILE_BYTES`] of it).
pub fn load_file(path: &Path, known: &Known) -> Result<Workflow, Vec<WorkflowError>> {
    let file_error = |message: String| {
        vec![WorkflowError {
            file: path.to_path_buf(),
            node: None,
            field: None,
            message,
        }]
    };
    let file =
        std::fs::File::open(path).map_err(|e| file_error(format!("cannot read the file: {e}")))?;
    let mut bytes = Vec::new();
    std::io::Read::read_to_end(
        &mut std::io::Read::take(file, MAX_FILE_BYTES + 1),
        &mut bytes,
    )
    .map_err(|e| file_error(format!("cannot read the file: {e}")))?;
    let text = String::from_utf8(bytes).map_err(|e| {
        file_error(format!(
            "the file is not UTF-8 text (at byte {})",
            e.utf8_error().valid_up_to()
        ))
    })?;
    parse(&text, path, known)
}

/// Parses and validates workflow text as if read from `path`.
pub fn parse(text: &str, path: &Path, known: &Known) -> Result<Workflow, Vec<WorkflowError>> {
    let limit = |message: String| {
        vec![WorkflowError {
            file: path.to_path_buf(),
            node: None,
            field: None,
            message,
        }]
    };
    if text.len() as u64 > MAX_FILE_BYTES {
        return Err(limit(format!(
            "the file is larger than {} MiB, the limit for a workflow file",
            MAX_FILE_BYTES / (1024 * 1024)
        )));
    }
    if let Some(line) = too_deep(text) {
        return Err(limit(format!(
            "arrays and tables are nested deeper than {MAX_NESTING} levels (line {line})"
        )));
    }
    let workflow =
        Workflow::from_toml(text, path).map_err(|e| vec![parse_error(text, path, &e)])?;
    let errors = validate(&workflow, known);
    if errors.is_empty() {
        Ok(workflow)
    } else {
        Err(errors)
    }
}

/// Every problem in a parsed workflow: workflow-level first, then node by node in file order,
/// then cycles. Linear in the size of the workflow, except for the ancestor sets
/// (nodes² / 8 bytes of bit operations).
pub fn validate(workflow: &Workflow, known: &Known) -> Vec<WorkflowError> {
    let graph = workflow.graph();
    let mut v = Validator {
        workflow,
        known,
        sandbox: Sandbox::default(),
        errors: Vec::new(),
        graph: &graph,
        reach: None,
    };
    v.check_workflow();
    if workflow.nodes.len() > MAX_NODES {
        v.push(
            None,
            Some("nodes"),
            format!(
                "the workflow has {} nodes, more than the limit of {MAX_NODES}; split it into workflows that run each other (`run_workflow`)",
                workflow.nodes.len()
            ),
        );
        return v.errors;
    }
    v.reach = Some(graph.reach());
    for (i, node) in workflow.nodes.iter().enumerate() {
        let duplicate = graph.index(&node.id) != Some(i);
        v.check_node(i, node, duplicate);
    }
    let cycles = graph.cycles();
    let more = cycles.len().saturating_sub(MAX_CYCLES_REPORTED);
    for cycle in cycles.into_iter().take(MAX_CYCLES_REPORTED) {
        let shown = if cycle.len() > MAX_CYCLE_SHOWN {
            let head = &cycle[..MAX_CYCLE_SHOWN - 4];
            let tail = &cycle[cycle.len() - 3..];
            format!(
                "{} → … ({} more) … → {}",
                head.join(" → "),
                cycle.len() - head.len() - tail.len(),
                tail.join(" → ")
            )
        } else {
            cycle.join(" → ")
        };
        v.errors.push(WorkflowError {
            file: workflow.path.clone(),
            node: None,
            field: None,
            message: format!("cycle: {shown}"),
        });
    }
    if more > 0 {
        v.errors.push(WorkflowError {
            file: workflow.path.clone(),
            node: None,
            field: None,
            message: format!("… and {more} more cycle(s)"),
        });
    }
    v.errors
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The built-in tools, with WebChat and the HTTP channel enabled.
    fn tools() -> Known {
        Known::builtin([ChannelKind::new("webchat"), ChannelKind::new("http")])
            .with_all_channels(vec!["webchat", "http", "telegram", "discord"])
    }

    /// Parses and validates `toml` as `wf.toml` and compares the errors as displayed.
    fn check(toml: &str, expected: &[&str]) {
        let got: Vec<String> = match parse(toml, Path::new("wf.toml"), &tools()) {
            Ok(_) => Vec::new(),
            Err(errors) => errors.iter().map(ToString::to_string).collect(),
        };
        let expected: Vec<String> = expected.iter().map(|e| format!("wf.toml: {e}")).collect();
        assert_eq!(got, expected, "\n--- for ---\n{toml}");
    }

    const HEAD: &str = "name = \"t\"\ntools = [\"http_get\"]\n[inputs.q]\ntype = \"string\"\n";

    fn wf(nodes: &str) -> String {
        format!("{HEAD}{nodes}")
    }

    #[test]
    fn a_valid_workflow_has_no_errors() {
        check(
            &wf(r#"
[[nodes]]
id = "fetch"
kind = "tool"
tool = "http_get"
args = { url = "https://example.com/?q={{inputs.q}}" }

[[nodes]]
id = "check"
kind = "condition"
after = ["fetch"]
expr = 'nodes.fetch.output.status == 200 && inputs.q != ""'

[[nodes]]
id = "each"
kind = "foreach"
after = [{ node = "check", when = true }]
items = "{{fetch.output.body.items}}"
concurrency = 2
[nodes.do]
kind = "llm"
prompt = "Item {{index}} for {{inputs.q}}: {{item}} (from {{fetch.output.url}})"

[[nodes]]
id = "sum"
kind = "code"
after = ["each"]
script = '''
// nodes.nowhere in a comment is fine
let all = nodes.each.output;
`${all.len()} items, "nodes.also_fine" in a string`
'''

[[nodes]]
id = "tell"
kind = "message"
after = ["sum"]
text = "{{sum.output}}"
"#),
            &[],
        );
    }

    #[test]
    fn each_error_kind_is_reported() {
        let table: &[(&str, &[&str])] = &[
            // TOML syntax, with the line.
            (
                "name = \"t\"\n[[nodes]]\nid = \"a\"\nkind = \n",
                &["string values must be quoted, expected literal string (line 4)"],
            ),
            // Unknown keys, with node, key and line.
            (
                "name = \"t\"\n[[nodes]]\nid = \"a\"\nkind = \"llm\"\npromt = \"x\"\n",
                &[
                    "node `a`, field `promt`: unknown field `promt`, expected one of `prompt`, `system`, `model` (line 5)",
                ],
            ),
            (
                "name = \"t\"\nnme = 1\n",
                &[
                    "field `nme`: unknown field `nme`, expected one of `name`, `description`, `inputs`, `tools`, `nodes` (line 2)",
                ],
            ),
            (
                "name = \"t\"\n[[nodes]]\nid = \"a\"\nkind = \"lm\"\n",
                &[
                    "node `a`, field `kind`: unknown variant `lm`, expected one of `llm`, `tool`, `code`, `condition`, `foreach`, `message` (line 4)",
                ],
            ),
            (
                "name = \"t\"\n[[nodes]]\nid = \"a\"\nkind = \"code\"\nscript = \"1\"\ntimeout = \"5 fortnights\"\n",
                &[
                    "node `a`, field `timeout`: unknown duration unit `fortnights` in `5 fortnights`; use ms, s, m, h or d (line 6)",
                ],
            ),
            // The graph.
            (
                "name = \"t\"\n",
                &["field `nodes`: the workflow has no nodes; add at least one [[nodes]]"],
            ),
            (
                &wf(
                    "[[nodes]]\nid = \"a\"\nkind = \"code\"\nscript = \"1\"\n[[nodes]]\nid = \"a\"\nkind = \"code\"\nscript = \"2\"\n",
                ),
                &["node `a`, field `id`: duplicate node id `a`; ids must be unique in the file"],
            ),
            (
                &wf(
                    "[[nodes]]\nid = \"a\"\nkind = \"code\"\nscript = \"1\"\nafter = [\"ghost\"]\n",
                ),
                &["node `a`, field `after`: unknown dependency `ghost`: no node has that id"],
            ),
            (
                &wf(
                    "[[nodes]]\nid = \"a\"\nkind = \"code\"\nscript = \"1\"\nafter = [\"c\"]\n\
                     [[nodes]]\nid = \"b\"\nkind = \"code\"\nscript = \"1\"\nafter = [\"a\"]\n\
                     [[nodes]]\nid = \"c\"\nkind = \"code\"\nscript = \"1\"\nafter = [\"b\"]\n",
                ),
                &["cycle: a → b → c → a"],
            ),
            (
                &wf(
                    "[[nodes]]\nid = \"a\"\nkind = \"code\"\nscript = \"1\"\n[[nodes]]\nid = \"b\"\nkind = \"code\"\nscript = \"1\"\nafter = [{ node = \"a\", when = true }]\n",
                ),
                &[
                    "node `b`, field `after`: `when = true` on the edge from `a`, which is a code node; `when` is only for edges from a condition",
                ],
            ),
            (
                &wf("[[nodes]]\nid = \"Bad-Id\"\nkind = \"code\"\nscript = \"1\"\n"),
                &["node `Bad-Id`, field `id`: `Bad-Id` is not a node id; use [a-z0-9_]+"],
            ),
            (
                &wf("[[nodes]]\nid = \"item\"\nkind = \"code\"\nscript = \"1\"\n"),
                &[
                    "node `item`, field `id`: `item` is reserved for templates and scripts; choose another id",
                ],
            ),
            // Tools.
            (
                &wf("[[nodes]]\nid = \"a\"\nkind = \"tool\"\ntool = \"rm_rf\"\n"),
                &[
                    "node `a`, field `tool`: unknown tool `rm_rf`; known tools: current_time, http_get, run_workflow, send_message",
                ],
            ),
            (
                &wf(
                    "[[nodes]]\nid = \"a\"\nkind = \"foreach\"\nitems = \"{{inputs.q}}\"\ndo = { kind = \"tool\", tool = \"nope\" }\n",
                ),
                &[
                    "node `a`, field `do.tool`: unknown tool `nope`; known tools: current_time, http_get, run_workflow, send_message",
                ],
            ),
            (
                &wf("[[nodes]]\nid = \"a\"\nkind = \"tool\"\ntool = \"send_message\"\n"),
                &[
                    "node `a`, field `tool`: tool `send_message` is not declared by this workflow; add it to the top-level list: tools = [\"http_get\", \"send_message\"]",
                ],
            ),
            (
                "name = \"t\"\n[inputs.q]\ntype = \"string\"\n[[nodes]]\nid = \"a\"\nkind = \"foreach\"\nitems = \"{{inputs.q}}\"\ndo = { kind = \"tool\", tool = \"current_time\" }\n",
                &[
                    "node `a`, field `do.tool`: tool `current_time` is not declared by this workflow; add it to the top-level list: tools = [\"current_time\"]",
                ],
            ),
            (
                "name = \"t\"\ntools = [\"http_get\", \"wget\"]\n[[nodes]]\nid = \"a\"\nkind = \"code\"\nscript = \"1\"\n",
                &[
                    "field `tools[1]`: unknown tool `wget`; known tools: current_time, http_get, run_workflow, send_message",
                ],
            ),
            // Templates.
            (
                &wf(
                    "[[nodes]]\nid = \"a\"\nkind = \"llm\"\nprompt = \"{{b.output}}\"\n[[nodes]]\nid = \"b\"\nkind = \"llm\"\nprompt = \"x\"\n",
                ),
                &[
                    "node `a`, field `prompt`: `{{b.output}}` refers to node `b`, which is not upstream of `a`; add it to `after`",
                ],
            ),
            (
                &wf(
                    "[[nodes]]\nid = \"a\"\nkind = \"llm\"\nprompt = \"{{zzz.output.x}} {{a.output}}\"\n",
                ),
                &[
                    "node `a`, field `prompt`: `{{zzz.output.x}}` refers to unknown node `zzz`",
                    "node `a`, field `prompt`: `{{a.output}}` refers to the node's own output",
                ],
            ),
            (
                &wf(
                    "[[nodes]]\nid = \"a\"\nkind = \"message\"\ntext = \"{{inputs.nope}} {{item}}\"\n",
                ),
                &[
                    "node `a`, field `text`: `{{inputs.nope}}` refers to unknown input `nope`; declare it under [inputs.nope]",
                    "node `a`, field `text`: `{{item}}` is only available inside a foreach `do` step",
                ],
            ),
            (
                &wf(
                    "[[nodes]]\nid = \"a\"\nkind = \"tool\"\ntool = \"http_get\"\nargs = { url = \"{{inputs.q\" }\n",
                ),
                &["node `a`, field `args.url`: unclosed `{{` at line 1, column 1"],
            ),
            // Scripts.
            (
                &wf("[[nodes]]\nid = \"a\"\nkind = \"code\"\nscript = \"let x = ;\"\n"),
                &["node `a`, field `script`: syntax error at line 1, position 9: Unexpected ';'"],
            ),
            (
                &wf(
                    "[[nodes]]\nid = \"a\"\nkind = \"condition\"\nexpr = 'nodes.b.output == inputs.nope'\n[[nodes]]\nid = \"b\"\nkind = \"code\"\nscript = \"1\"\n",
                ),
                &[
                    "node `a`, field `expr`: `nodes.b` refers to node `b`, which is not upstream of `a`; add it to `after`",
                    "node `a`, field `expr`: `inputs.nope` refers to unknown input `nope`; declare it under [inputs.nope]",
                ],
            ),
            (
                &wf(
                    "[[nodes]]\nid = \"a\"\nkind = \"foreach\"\nitems = \"{{inputs.q}}\"\ndo = { kind = \"code\", script = \"item +\" }\n",
                ),
                &[
                    "node `a`, field `do.script`: syntax error at line 1, position 7: Script is incomplete",
                ],
            ),
            // Foreach bounds.
            (
                &wf(
                    "[[nodes]]\nid = \"a\"\nkind = \"foreach\"\nitems = \"list: {{inputs.q}}\"\nconcurrency = 0\nmax_items = 5000\ndo = { kind = \"code\", script = \"item\" }\n",
                ),
                &[
                    "node `a`, field `concurrency`: must be between 1 and 1024, not 0",
                    "node `a`, field `max_items`: must be between 1 and 1000, not 5000",
                    "node `a`, field `items`: must be exactly one reference to a list, e.g. \"{{fetch.output}}\"",
                ],
            ),
            // Message targets.
            (
                &wf(
                    "[[nodes]]\nid = \"a\"\nkind = \"message\"\ntext = \"hi\"\nchannel = \"telegram\"\n",
                ),
                &["node `a`, field `to`: `channel` needs `chat_id`"],
            ),
            (
                &wf(
                    "[[nodes]]\nid = \"a\"\nkind = \"message\"\ntext = \"hi\"\nto = \"everyone\"\n",
                ),
                &[
                    "node `a`, field `to`: `to = \"everyone\"` is not a target; the only value is \"origin\" (use `channel` + `chat_id` or `user` for others)",
                ],
            ),
            // Inputs.
            (
                "name = \"t\"\n[inputs.n]\ntype = \"number\"\ndefault = \"x\"\nrequired = true\n[[nodes]]\nid = \"a\"\nkind = \"code\"\nscript = \"inputs.n\"\n",
                &[
                    "field `inputs.n.default`: the default is a string, but the input's type is number",
                    "field `inputs.n.required`: a required input cannot have a default; remove one of them",
                ],
            ),
        ];
        for (toml, expected) in table {
            check(toml, expected);
        }
    }

    #[test]
    fn static_errors_fail_validation_not_the_run() {
        let table: &[(&str, &[&str])] = &[
            // Empty scripts and expressions.
            (
                "[[nodes]]\nid = \"a\"\nkind = \"condition\"\nexpr = \"\"\n",
                &[
                    "node `a`, field `expr`: must not be empty; write a rhai expression that yields true or false",
                ],
            ),
            (
                "[[nodes]]\nid = \"a\"\nkind = \"code\"\nscript = \"  // nothing\\n ; /* at all */ \"\n",
                &[
                    "node `a`, field `script`: must not be empty; write a rhai script whose value is the node's output",
                ],
            ),
            (
                "[[nodes]]\nid = \"a\"\nkind = \"foreach\"\nitems = \"{{inputs.q}}\"\ndo = { kind = \"code\", script = \" \" }\n",
                &[
                    "node `a`, field `do.script`: must not be empty; write a rhai script whose value is the node's output",
                ],
            ),
            // Channels: unknown, not enabled; a template is checked when it runs.
            (
                "[[nodes]]\nid = \"a\"\nkind = \"message\"\ntext = \"hi\"\nchannel = \"carrier_pigeon\"\nchat_id = \"1\"\n",
                &[
                    "node `a`, field `channel`: unknown channel `carrier_pigeon`; channels: webchat, http, telegram, discord",
                ],
            ),
            (
                "[[nodes]]\nid = \"a\"\nkind = \"message\"\ntext = \"hi\"\nchannel = \"telegram\"\nchat_id = \"1\"\n",
                &[
                    "node `a`, field `channel`: channel `telegram` is not enabled (enabled: webchat, http); enable [channels.telegram] or send elsewhere",
                ],
            ),
            (
                "[[nodes]]\nid = \"a\"\nkind = \"message\"\ntext = \"hi\"\nchannel = \"{{inputs.q}}\"\nchat_id = \"1\"\n",
                &[],
            ),
            (
                "[[nodes]]\nid = \"a\"\nkind = \"message\"\ntext = \"hi\"\nchannel = \"http\"\nchat_id = \"{{inputs.q}}\"\n",
                &[],
            ),
            (
                "[[nodes]]\nid = \"a\"\nkind = \"message\"\ntext = \"hi\"\nuser = \"bob\"\n",
                &["node `a`, field `user`: `bob` is not a user id (a number, as `/whoami` shows)"],
            ),
            // Numeric bounds.
            (
                "[[nodes]]\nid = \"a\"\nkind = \"foreach\"\nitems = \"{{inputs.q}}\"\nconcurrency = 2305843009213693952\ndo = { kind = \"code\", script = \"item\" }\n",
                &[
                    "node `a`, field `concurrency`: must be between 1 and 1024, not 2305843009213693952",
                ],
            ),
            (
                "[[nodes]]\nid = \"a\"\nkind = \"foreach\"\nitems = \"{{inputs.q}}\"\nconcurrency = 1025\ndo = { kind = \"code\", script = \"item\" }\n",
                &["node `a`, field `concurrency`: must be between 1 and 1024, not 1025"],
            ),
            (
                "[[nodes]]\nid = \"a\"\nkind = \"foreach\"\nitems = \"{{inputs.q}}\"\nconcurrency = 1024\nmax_items = 1000\ndo = { kind = \"code\", script = \"item\" }\n",
                &[],
            ),
            (
                "[[nodes]]\nid = \"a\"\nkind = \"code\"\nscript = \"1\"\nretries = 101\ntimeout = \"2d\"\n",
                &[
                    "node `a`, field `timeout`: must be at most 24h, not 172800s",
                    "node `a`, field `retries`: must be between 0 and 100, not 101",
                ],
            ),
            (
                "[[nodes]]\nid = \"a\"\nkind = \"code\"\nscript = \"1\"\nretries = 100\ntimeout = \"24h\"\n",
                &[],
            ),
        ];
        for (nodes, expected) in table {
            check(&wf(nodes), expected);
        }
    }

    #[test]
    fn the_size_limits_are_enforced_with_clear_errors() {
        let path = Path::new("big.toml");
        let message = |text: &str| match parse(text, path, &tools()) {
            Ok(_) => panic!("accepted"),
            Err(errors) => errors[0].to_string(),
        };
        assert_eq!(
            message(&chain(MAX_NODES + 1)),
            "big.toml: field `nodes`: the workflow has 10001 nodes, more than the limit of 10000; split it into workflows that run each other (`run_workflow`)"
        );
        let deep = format!(
            "name = \"t\"\ntools = [\"http_get\"]\n# [[[[ in a comment\nx = \"[[[[\"\n[[nodes]]\nid = \"a\"\nkind = \"tool\"\ntool = \"http_get\"\nargs = {{ a = {}{} }}\n",
            "[".repeat(40),
            "]".repeat(40)
        );
        assert_eq!(
            message(&deep),
            "big.toml: arrays and tables are nested deeper than 32 levels (line 9)"
        );
        // A hundred thousand levels: refused before the TOML parser could recurse into them.
        let deeper = format!("name = \"t\"\nx = {}\n", "[".repeat(100_000));
        assert!(message(&deeper).contains("nested deeper than 32"));
        let huge = format!("name = \"t\"\n# {}\n", "x".repeat(MAX_FILE_BYTES as usize));
        assert_eq!(
            message(&huge),
            "big.toml: the file is larger than 4 MiB, the limit for a workflow file"
        );
        // Nesting right at the limit is fine.
        let ok = format!(
            "name = \"t\"\ntools = [\"http_get\"]\n[[nodes]]\nid = \"a\"\nkind = \"tool\"\ntool = \"http_get\"\nargs = {{ a = {}1{} }}\n",
            "[".repeat(MAX_NESTING - 1),
            "]".repeat(MAX_NESTING - 1)
        );
        assert!(parse(&ok, path, &tools()).is_ok());
        // Brackets in strings of every kind and in comments are not nesting.
        let strings =
            "a = \"\"\"[[[\n[[[\\\"\"\"\"\nb = '[[[[' # [[[\nc = '''\n]]]]'''\nd = \"\\\"[[\"\n";
        assert!(toml::from_str::<toml::Table>(strings).is_ok(), "valid TOML");
        assert_eq!(too_deep(&strings.repeat(40)), None);
        assert_eq!(
            too_deep(&format!("{strings}e = {}\n", "[".repeat(33))),
            Some(7)
        );
    }

    /// A chain of `n` code nodes, each reading the one before it.
    fn chain(n: usize) -> String {
        let mut toml = String::from("name = \"chain\"\n");
        toml.push_str("[[nodes]]\nid = \"n0\"\nkind = \"code\"\nscript = \"1\"\n");
        for i in 1..n {
            toml.push_str(&format!(
                "[[nodes]]\nid = \"n{i}\"\nkind = \"code\"\nafter = [\"n{}\"]\nscript = \"nodes.n{}.output + 1\"\n",
                i - 1,
                i - 1
            ));
        }
        toml
    }

    #[test]
    fn a_ten_thousand_node_chain_validates_and_its_errors_are_found() {
        let text = chain(MAX_NODES);
        let wf = parse(&text, Path::new("chain.toml"), &tools()).expect("valid");
        assert_eq!(wf.nodes.len(), MAX_NODES);
        let order = wf.topo_order().expect("acyclic");
        assert_eq!(order.first(), Some(&"n0"));
        assert_eq!(order.last(), Some(&"n9999"));

        // The last node reads a node far upstream (fine); the first reads the last (not
        // upstream).
        let text = text.replace(
            "script = \"nodes.n9998.output + 1\"",
            "script = \"nodes.n9998.output + nodes.n1.output\"",
        );
        let text = text.replacen("script = \"1\"", "script = \"nodes.n9999.output\"", 1);
        let shown = |text: &str| -> Vec<String> {
            parse(text, Path::new("chain.toml"), &tools())
                .expect_err("invalid")
                .iter()
                .map(ToString::to_string)
                .collect()
        };
        assert_eq!(
            shown(&text),
            [
                "chain.toml: node `n0`, field `script`: `nodes.n9999` refers to node `n9999`, which is not upstream of `n0`; add it to `after`"
            ]
        );
        // Closing the chain into a loop names the cycle, shortened.
        let looped = text.replacen(
            "script = \"nodes.n9999.output\"",
            "after = [\"n9999\"]\nscript = \"nodes.n9999.output\"",
            1,
        );
        let cycle = format!(
            "chain.toml: cycle: {} → … (9978 more) … → n9998 → n9999 → n0",
            (0..20)
                .map(|i| format!("n{i}"))
                .collect::<Vec<_>>()
                .join(" → ")
        );
        assert_eq!(shown(&looped), [cycle]);
    }

    #[test]
    fn four_different_errors_are_reported_together() {
        check(
            &wf(r#"
[[nodes]]
id = "fetch"
kind = "tool"
tool = "wget"

[[nodes]]
id = "summarize"
kind = "llm"
after = ["missing"]
prompt = "Summarize {{fetch.output}}"

[[nodes]]
id = "x"
kind = "code"
after = ["y"]
script = "1"

[[nodes]]
id = "y"
kind = "code"
after = ["x"]
script = "2"
"#),
            &[
                "node `fetch`, field `tool`: unknown tool `wget`; known tools: current_time, http_get, run_workflow, send_message",
                "node `summarize`, field `after`: unknown dependency `missing`: no node has that id",
                "node `summarize`, field `prompt`: `{{fetch.output}}` refers to node `fetch`, which is not upstream of `summarize`; add it to `after`",
                "cycle: x → y → x",
            ],
        );
    }
    #[test]
    fn load_dir_skips_bad_files_and_reports_duplicate_names() {
        let dir = tempfile::tempdir().expect("tempdir");
        let good = "name = \"same\"\n[[nodes]]\nid = \"a\"\nkind = \"code\"\nscript = \"1\"\n";
        for (file, text) in [
            ("a.toml", good),
            ("b.toml", "name = \"broken\"\n[[nodes]\n"),
            ("c.toml", good),
            ("d.toml", &good.replace("same", "other")),
            ("notes.txt", "not a workflow"),
        ] {
            std::fs::write(dir.path().join(file), text).expect("write");
        }
        let (workflows, errors) = load_dir(dir.path(), &tools());
        let names: Vec<_> = workflows.iter().map(|w| w.name.as_str()).collect();
        assert_eq!(names, ["same", "other"]);
        assert_eq!(errors.len(), 2, "{errors:#?}");
        assert_eq!(errors[0].file, dir.path().join("b.toml"));
        assert_eq!(errors[1].file, dir.path().join("c.toml"));
        assert_eq!(errors[1].field.as_deref(), Some("name"));
        assert!(errors[1].message.contains("a.toml"), "{}", errors[1]);

        let (none, errors) = load_dir(&dir.path().join("missing"), &tools());
        assert!(none.is_empty());
        assert_eq!(errors.len(), 1);
    }

    #[test]
    fn the_support_triage_scripts_behave() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../config/workflows");
        let wf = load_file(&dir.join("support_triage.toml"), &tools()).expect("valid");
        let sandbox = Sandbox::default();
        let script = |id: &str| {
            let node = wf.node(id).expect("node exists");
            let source = node.scripts()[0].source;
            sandbox.compile(source).expect("compiles")
        };
        let inputs = serde_json::json!({ "ticket": format!("  {}\nmore", "x".repeat(100)) });
        let summary = sandbox
            .run(&script("summary"), &inputs, &serde_json::json!({}))
            .expect("runs");
        assert_eq!(summary, serde_json::json!(format!("{}...", "x".repeat(77))));
        for (verdict, urgent) in [("Urgent", true), ("normal", false)] {
            let nodes = serde_json::json!({ "classify": { "output": verdict } });
            assert_eq!(
                sandbox.eval_bool(&script("is_urgent"), &inputs, &nodes),
                Ok(urgent)
            );
        }
    }

    #[test]
    fn the_example_workflows_load_and_validate() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../config/workflows");
        let (workflows, errors) = load_dir(&dir, &tools());
        assert!(
            errors.is_empty(),
            "{}",
            errors
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("\n")
        );
        let mut names: Vec<_> = workflows.iter().map(|w| w.name.as_str()).collect();
        names.sort_unstable();
        assert!(names.contains(&"support_triage"), "{names:?}");
        assert!(names.contains(&"daily_report"), "{names:?}");
    }

    mod generated {
        use std::collections::BTreeSet;

        use proptest::prelude::*;

        use super::super::*;
        use super::tools;

        /// A valid file touching every node kind, to garble.
        const BASE: &str = r#"name = "t"
tools = ["http_get"]
[inputs.q]
type = "string"
[inputs.n]
type = "number"
default = 3

[[nodes]]
id = "fetch"
kind = "tool"
tool = "http_get"
args = { url = "https://example.com/?q={{inputs.q}}", list = ["{{inputs.q}}", 1] }
timeout = "5s"
retries = 2

[[nodes]]
id = "check"
kind = "condition"
after = ["fetch"]
expr = 'nodes.fetch.output.status == 200'

[[nodes]]
id = "each"
kind = "foreach"
after = [{ node = "check", when = true }]
items = "{{fetch.output.body}}"
concurrency = 2
max_items = 10
[nodes.do]
kind = "llm"
prompt = "{{index}}: {{item}}"

[[nodes]]
id = "sum"
kind = "code"
after = ["each"]
script = "nodes.each.output.len() + inputs.n"

[[nodes]]
id = "tell"
kind = "message"
after = ["sum"]
channel = "webchat"
chat_id = "ops"
text = "{{sum.output}}"
"#;

        /// One garbling of a text: the operation, a position and some bytes.
        fn garble(text: &str, op: u8, at: usize, len: usize, with: &str) -> String {
            let mut chars: Vec<char> = text.chars().collect();
            let at = at % (chars.len() + 1);
            let end = (at + len).min(chars.len());
            match op % 4 {
                0 => {
                    chars.drain(at..end);
                }
                1 => {
                    chars.splice(at..at, with.chars());
                }
                2 => {
                    chars.splice(at..end, with.chars());
                }
                _ => {
                    let copy: Vec<char> = chars[at..end].to_vec();
                    chars.splice(at..at, copy);
                }
            }
            chars.into_iter().collect()
        }

        /// Every error is about this file; errors of a file that parsed name a node or a key
        /// (cycles name their nodes in the message).
        fn errors_are_located(text: &str, errors: &[WorkflowError]) -> Result<(), TestCaseError> {
            let parsed = toml::from_str::<Workflow>(text).is_ok();
            for e in errors {
                prop_assert_eq!(&e.file, Path::new("g.toml"));
                prop_assert!(!e.message.is_empty());
                if parsed {
                    prop_assert!(
                        e.node.is_some()
                            || e.field.is_some()
                            || e.message.starts_with("cycle: ")
                            || e.message.starts_with("… and "),
                        "an error naming no node or key: {}",
                        e
                    );
                }
            }
            Ok(())
        }

        proptest! {
            /// Garbled workflow files never panic the loader; what they get is located errors.
            #[test]
            fn prop_garbled_workflow_toml_is_reported_not_panicked(
                ops in proptest::collection::vec(
                    (any::<u8>(), any::<usize>(), 0usize..40, "[\\[\\]{}=\"',.\\n a-z0-9_#{}]{0,12}"),
                    1..6,
                ),
            ) {
                let mut text = BASE.to_owned();
                for (op, at, len, with) in &ops {
                    text = garble(&text, *op, *at, *len, with);
                }
                if let Err(errors) = parse(&text, Path::new("g.toml"), &tools()) {
                    prop_assert!(!errors.is_empty());
                    errors_are_located(&text, &errors)?;
                }
            }

            /// Arbitrary text, too.
            #[test]
            fn prop_arbitrary_text_is_reported_not_panicked(text in any::<String>()) {
                let full = format!("name = \"t\"\n{text}");
                for text in [text.as_str(), full.as_str()] {
                    if let Err(errors) = parse(text, Path::new("g.toml"), &tools()) {
                        errors_are_located(text, &errors)?;
                    }
                }
            }

            /// A random DAG (each node after some earlier ones, reading one of them), written in
            /// a random order, validates; its order and ancestor sets agree with a plain search;
            /// an edge back up the graph is named as a cycle.
            #[test]
            fn prop_random_dags_validate_and_cycles_are_named(
                deps in proptest::collection::vec(proptest::collection::vec(any::<usize>(), 0..4), 1..30),
                order in any::<u64>(),
                back in any::<(usize, usize)>(),
            ) {
                let n = deps.len();
                let ups: Vec<BTreeSet<usize>> = deps
                    .iter()
                    .enumerate()
                    .map(|(i, d)| if i == 0 { BTreeSet::new() } else { d.iter().map(|u| u % i).collect() })
                    .collect();
                let node = |i: usize, extra: Option<usize>| {
                    let mut after: Vec<String> = ups[i].iter().map(|u| format!("\"n{u}\"")).collect();
                    if let Some(e) = extra {
                        after.push(format!("\"n{e}\""));
                    }
                    let script = match ups[i].iter().next() {
                        Some(u) => format!("nodes.n{u}.output + 1"),
                        None => "1".to_owned(),
                    };
                    format!("[[nodes]]\nid = \"n{i}\"\nkind = \"code\"\nafter = [{}]\nscript = \"{script}\"\n", after.join(", "))
                };
                // File order: a rotation and maybe a reversal of creation order.
                let mut positions: Vec<usize> = (0..n).collect();
                positions.rotate_left((order as usize) % n);
                if order & (1 << 40) != 0 {
                    positions.reverse();
                }
                let file = |extra: Option<(usize, usize)>| {
                    let mut text = String::from("name = \"dag\"\n");
                    for &i in &positions {
                        text.push_str(&node(i, extra.filter(|(at, _)| *at == i).map(|(_, e)| e)));
                    }
                    text
                };
                let text = file(None);
                let wf = match parse(&text, Path::new("g.toml"), &tools()) {
                    Ok(wf) => wf,
                    Err(errors) => return Err(TestCaseError::fail(format!("{errors:?}\n{text}"))),
                };
                let topo = wf.topo_order().map_err(|c| TestCaseError::fail(format!("{c:?}")))?;
                let place: HashMap<&str, usize> = topo.iter().enumerate().map(|(p, id)| (*id, p)).collect();
                for i in 0..n {
                    let id = format!("n{i}");
                    // Plain search for the ancestors.
                    let mut seen = BTreeSet::new();
                    let mut stack: Vec<usize> = ups[i].iter().copied().collect();
                    while let Some(u) = stack.pop() {
                        if seen.insert(u) {
                            stack.extend(ups[u].iter().copied());
                        }
                    }
                    let want: BTreeSet<String> = seen.iter().map(|u| format!("n{u}")).collect();
                    let got: BTreeSet<String> = wf.ancestors(&id).into_iter().map(str::to_owned).collect();
                    prop_assert_eq!(got, want);
                    for u in &ups[i] {
                        let up = format!("n{u}");
                        prop_assert!(place[up.as_str()] < place[id.as_str()], "{} placed after {}", up, id);
                    }
                }
                // An edge from a descendant back to an ancestor: u after v, where v is after u.
                let edges: Vec<(usize, usize)> = ups
                    .iter()
                    .enumerate()
                    .flat_map(|(v, us)| us.iter().map(move |&u| (u, v)))
                    .collect();
                if !edges.is_empty() {
                    let (u, v) = edges[back.0 % edges.len()];
                    let looped = file(Some((u, v)));
                    let errors = parse(&looped, Path::new("g.toml"), &tools()).expect_err("a cycle");
                    let cycles: Vec<&WorkflowError> = errors.iter().filter(|e| e.message.starts_with("cycle: ")).collect();
                    prop_assert_eq!(cycles.len(), 1, "{:?}", errors);
                    let named: Vec<&str> = cycles[0].message["cycle: ".len()..].split(" → ").collect();
                    let (nu, nv) = (format!("n{u}"), format!("n{v}"));
                    prop_assert!(named.contains(&nu.as_str()) && named.contains(&nv.as_str()), "{}", cycles[0]);
                    prop_assert_eq!(named.first(), named.last());
                    let _ = back.1;
                }
            }
        }
    }
}
