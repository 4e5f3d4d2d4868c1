//! `gatewayctl workflows`: the loaded workflows and the problems of files that did not load,
//! a validation of every workflow file on disk (exit 1 on any problem), and starting a run —
//! optionally waiting for it on the event stream and showing it like `runs show`.

use std::collections::BTreeSet;

use clap::Subcommand;
use gateway_proto::admin as pb;
use pb::watch_events_response::Event as E;
use serde::Serialize;
use serde_json::Value;

use crate::client::{Api, within};
use crate::model::{Edge, RunState};
use crate::output::{Format, Out, Table, text};
use crate::runs;

/// `workflows …`.
#[derive(Debug, Subcommand)]
pub enum Cmd {
    /// List loaded workflows, and problems of files that did not load.
    List,
    /// Check every workflow file now; print each problem, exit 1 if any.
    Validate,
    /// Start a run of a workflow and print its id.
    Run {
        /// The workflow's name.
        name: String,
        /// An input, as KEY=VALUE; repeat for more.
        #[arg(
            long = "input",
            value_name = "KEY=VALUE",
            value_parser = parse_input,
            long_help = "An input, as KEY=VALUE; repeat for more. VALUE is read as JSON when it\n\
                         is a number, true/false, a [list] or an {object}, or a \"quoted\" string;\n\
                         anything else is taken as a string as it is"
        )]
        inputs: Vec<Input>,
        /// Wait until the run finishes, then show it; exit 1 if it failed.
        #[arg(long)]
        wait: bool,
        /// The chat the run answers, as CHANNEL:CHAT (e.g. webchat:ops, http:42).
        #[arg(
            long,
            value_name = "CHANNEL:CHAT",
            value_parser = parse_to,
            long_help = "The chat the run answers, as CHANNEL:CHAT (e.g. webchat:ops, http:42):\n\
                         message nodes with `to = \"origin\"` (or no target) send there. Without\n\
                         it, a workflow with such a node is refused, since nothing could be sent"
        )]
        to: Option<String>,
    },
}

/// Checks the shape of `--to CHANNEL:CHAT`; the gateway checks that it knows the channel and
/// that it is enabled.
fn parse_to(s: &str) -> Result<String, String> {
    let (channel, chat) = s
        .split_once(':')
        .ok_or_else(|| format!("expected CHANNEL:CHAT, e.g. webchat:ops; got `{s}`"))?;
    channel.parse::<crate::model::Channel>()?;
    if chat.trim().is_empty() {
        return Err(format!("the chat id after `:` is empty in `{s}`"));
    }
    Ok(s.to_owned())
}

/// One `--input KEY=VALUE`.
#[derive(Debug, Clone, PartialEq)]
pub struct Input {
    key: String,
    value: Value,
}

/// Parses `KEY=VALUE`: the value is JSON when it is a number, a boolean, a list, an object or a
/// quoted string, and otherwise the text as it is.
pub(crate) fn parse_input(s: &str) -> Result<Input, String> {
    let (key, raw) = s
        .split_once('=')
        .ok_or_else(|| format!("expected KEY=VALUE, e.g. topic=Rust; got `{s}`"))?;
    let key = key.trim();
    if key.is_empty() {
        return Err(format!("the input name before `=` is empty in `{s}`"));
    }
    let value = match serde_json::from_str::<Value>(raw) {
        Ok(
            v @ (Value::Number(_)
            | Value::Bool(_)
            | Value::Array(_)
            | Value::Object(_)
            | Value::String(_)),
        ) => v,
        Ok(Value::Null) | Err(_) => Value::String(raw.to_owned()),
    };
    Ok(Input {
        key: key.to_owned(),
        value,
    })
}

/// The inputs as one JSON object; a name given twice is an error.
pub(crate) fn inputs_object(inputs: Vec<Input>) -> anyhow::Result<Value> {
    let mut map = serde_json::Map::new();
    for Input { key, value } in inputs {
        if map.contains_key(&key) {
            anyhow::bail!("--input {key} is given more than once");
        }
        map.insert(key, value);
    }
    Ok(Value::Object(map))
}

/// A workflow's input in JSON.
#[derive(Debug, Serialize)]
struct WorkflowInput {
    name: String,
    #[serde(rename = "type")]
    kind: String,
    required: bool,
    description: Option<String>,
}

/// A workflow's node in JSON.
#[derive(Debug, Serialize)]
struct WorkflowNode {
    id: String,
    kind: String,
    after: Vec<Edge>,
}

/// A loaded workflow in JSON.
#[derive(Debug, Serialize)]
struct Workflow {
    name: String,
    description: Option<String>,
    file: String,
    inputs: Vec<WorkflowInput>,
    nodes: Vec<WorkflowNode>,
}

impl Workflow {
    fn from_pb(w: &pb::Workflow) -> Self {
        Self {
            name: w.name.clone(),
            description: text(&w.description),
            file: w.file.clone(),
            inputs: w
                .inputs
                .iter()
                .map(|i| WorkflowInput {
                    name: i.name.clone(),
                    kind: i.r#type.clone(),
                    required: i.required,
                    description: text(&i.description),
                })
                .collect(),
            nodes: w
                .nodes
                .iter()
                .map(|n| WorkflowNode {
                    id: n.id.clone(),
                    kind: n.kind.clone(),
                    after: n.after.iter().map(|e| Edge::from_pb(e)).collect(),
                })
                .collect(),
        }
    }
}

/// A problem in a workflow file in JSON.
#[derive(Debug, Serialize)]
struct WorkflowError {
    file: String,
    node: Option<String>,
    field: Option<String>,
    message: String,
}

impl WorkflowError {
    fn from_pb(e: &pb::WorkflowError) -> Self {
        Self {
            file: e.file.clone(),
            node: text(&e.node),
            field: text(&e.field),
            message: e.message.clone(),
        }
    }

    /// One line, like a compiler's: ``FILE: node `N`, field `F`: MESSAGE`` (node and field
    /// when known). Never cut, so it can be searched for and copied whole.
    fn line(&self) -> String {
        let mut place = Vec::new();
        if let Some(node) = &self.node {
            place.push(format!("node `{node}`"));
        }
        if let Some(field) = &self.field {
            place.push(format!("field `{field}`"));
        }
        let message = crate::output::clean(&self.message);
        if place.is_empty() {
            format!("{}: {message}", self.file)
        } else {
            format!("{}: {}: {message}", self.file, place.join(", "))
        }
    }
}

/// `workflows list` in JSON.
#[derive(Debug, Serialize)]
struct WorkflowList {
    workflows: Vec<Workflow>,
    errors: Vec<WorkflowError>,
}

/// `workflows validate` in JSON.
#[derive(Debug, Serialize)]
struct Validation {
    valid: Vec<String>,
    errors: Vec<WorkflowError>,
}

/// `workflows run` (without `--wait`) in JSON.
#[derive(Debug, Serialize)]
struct Started {
    run_id: i64,
}

/// Runs `workflows …`.
pub async fn run(mut api: Api, format: Format, cmd: Cmd) -> anyhow::Result<()> {
    match cmd {
        Cmd::List => list(api, format).await,
        Cmd::Validate => validate(api, format).await,
        Cmd::Run {
            name,
            inputs,
            wait: false,
            to,
        } => {
            let run_id = start(&mut api, &name, inputs, to).await?;
            let out = Out;
            if format == Format::Json {
                return out.json(&Started { run_id });
            }
            out.line(format!(
                "started run {run_id} of {name}; follow it with `gatewayctl runs show {run_id}`"
            ))
        }
        Cmd::Run {
            name,
            inputs,
            wait: true,
            to,
        } => run_and_wait(api, format, &name, inputs, to).await,
    }
}

/// Starts a run; returns its id.
async fn start(
    api: &mut Api,
    name: &str,
    inputs: Vec<Input>,
    to: Option<String>,
) -> anyhow::Result<i64> {
    let inputs_json = inputs_object(inputs)?.to_string();
    let r = within(api.client.run_workflow(pb::RunWorkflowRequest {
        name: name.to_owned(),
        inputs_json,
        to: to.unwrap_or_default(),
    }))
    .await
    .map_err(|s| api.error(s))?
    .into_inner();
    Ok(r.run_id)
}

async fn list(mut api: Api, format: Format) -> anyhow::Result<()> {
    let r = api
        .client
        .list_workflows(pb::ListWorkflowsRequest {})
        .await
        .map_err(|s| api.error(s))?
        .into_inner();
    let list = WorkflowList {
        workflows: r.workflows.iter().map(Workflow::from_pb).collect(),
        errors: r.errors.iter().map(WorkflowError::from_pb).collect(),
    };
    let out = Out;
    if format == Format::Json {
        return out.json(&list);
    }
    let mut t = Table::new(&["NAME", "NODES", "INPUTS", "DESCRIPTION"]);
    for w in &list.workflows {
        let inputs: Vec<String> = w
            .inputs
            .iter()
            .map(|i| {
                if i.required {
                    i.name.clone()
                } else {
                    format!("{}?", i.name)
                }
            })
            .collect();
        t.row(vec![
            w.name.clone(),
            w.nodes.len().to_string(),
            if inputs.is_empty() {
                "-".to_owned()
            } else {
                inputs.join(", ")
            },
            w.description.clone().unwrap_or_default(),
        ]);
    }
    if t.is_empty() {
        out.line("no workflows loaded")?;
    } else {
        out.table(&t)?;
    }
    if !list.errors.is_empty() {
        let files: BTreeSet<&str> = list.errors.iter().map(|e| e.file.as_str()).collect();
        out.line("")?;
        out.line(format!(
            "not loaded: {} file(s) with {} problem(s) (`gatewayctl workflows validate`):",
            files.len(),
            list.errors.len()
        ))?;
        for e in &list.errors {
            out.line(e.line())?;
        }
    }
    Ok(())
}

async fn validate(mut api: Api, format: Format) -> anyhow::Result<()> {
    let r = api
        .client
        .validate_workflows(pb::ValidateWorkflowsRequest {})
        .await
        .map_err(|s| api.error(s))?
        .into_inner();
    let v = Validation {
        valid: r.valid,
        errors: r.errors.iter().map(WorkflowError::from_pb).collect(),
    };
    let out = Out;
    if format == Format::Json {
        out.json(&v)?;
    } else {
        for e in &v.errors {
            out.line(e.line())?;
        }
        if !v.valid.is_empty() {
            out.line(format!("valid: {}", v.valid.join(", ")))?;
        } else if v.errors.is_empty() {
            out.line("no workflow files")?;
        }
    }
    match v.errors.len() {
        0 => Ok(()),
        n => anyhow::bail!("{n} problem(s) in the workflow files"),
    }
}

/// Subscribes to the event stream, starts the run, waits for its `run_changed` to a final
/// state (or, after a `lagged`, checks with GetRun), then shows it; a failed run is an error.
async fn run_and_wait(
    mut api: Api,
    format: Format,
    name: &str,
    inputs: Vec<Input>,
    to: Option<String>,
) -> anyhow::Result<()> {
    let inputs = inputs_object(inputs)?;
    // Subscribe first (the server subscribes before it answers): the run's end cannot be missed.
    let mut stream = within(api.client.watch_events(pb::WatchEventsRequest {}))
        .await
        .map_err(|s| api.error(s))?
        .into_inner();
    let id = within(api.client.run_workflow(pb::RunWorkflowRequest {
        name: name.to_owned(),
        inputs_json: inputs.to_string(),
        to: to.unwrap_or_default(),
    }))
    .await
    .map_err(|s| api.error(s))?
    .into_inner()
    .run_id;
    let interrupted = tokio::signal::ctrl_c();
    tokio::pin!(interrupted);
    eprintln!(
        "gatewayctl: started run {id} of {name}; waiting for it to finish (Ctrl-C stops waiting, \
         not the run)"
    );
    loop {
        let item = tokio::select! {
            item = stream.message() => item.transpose(),
            _ = &mut interrupted => anyhow::bail!(
                "stopped waiting; run {id} goes on (`gatewayctl runs show {id}`)"
            ),
        };
        let finished = match item {
            Some(Ok(r)) => match r.event {
                Some(E::RunChanged(c)) if c.run_id == id => {
                    RunState::from_pb(c.state).is_finished()
                }
                Some(E::Lagged(_)) => runs::get(&mut api, id).await?.state().is_finished(),
                _ => false,
            },
            Some(Err(status)) => return Err(api.stream_error(status)),
            None => anyhow::bail!("gatewayd closed the event stream before run {id} finished"),
        };
        if finished {
            break;
        }
    }
    let run = runs::get(&mut api, id).await?;
    runs::print(&run, format)?;
    if run.state() == RunState::Failed {
        anyhow::bail!(
            "run {id} failed: {}",
            run.error().unwrap_or("gatewayd gave no reason")
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn input(s: &str) -> Value {
        parse_input(s).expect(s).value
    }

    #[test]
    fn input_values_are_json_when_they_look_like_it_else_strings() {
        assert_eq!(input("n=3"), json!(3));
        assert_eq!(input("x=-1.5"), json!(-1.5));
        assert_eq!(input("ok=true"), json!(true));
        assert_eq!(input("tags=[\"a\",1]"), json!(["a", 1]));
        assert_eq!(input("o={\"k\":{}}"), json!({"k": {}}));
        assert_eq!(input("zip=\"42\""), json!("42"));
        assert_eq!(input("topic=Rust"), json!("Rust"));
        assert_eq!(input("t=two words"), json!("two words"));
        assert_eq!(input("nothing=null"), json!("null"));
        assert_eq!(input("empty="), json!(""));
        assert_eq!(input("url=http://x/?a=b"), json!("http://x/?a=b"));
        assert_eq!(input("broken={"), json!("{"));
        assert_eq!(parse_input(" k =v").expect("trimmed").key, "k");
        assert!(parse_input("novalue").is_err());
        assert!(parse_input("=v").is_err());
    }

    #[test]
    fn inputs_make_one_object_and_a_repeated_name_is_an_error() {
        let inputs = vec![
            parse_input("a=1").expect("a"),
            parse_input("b=x").expect("b"),
        ];
        assert_eq!(
            inputs_object(inputs).expect("object"),
            json!({"a": 1, "b": "x"})
        );
        let twice = vec![
            parse_input("a=1").expect("a"),
            parse_input("a=2").expect("a"),
        ];
        assert!(inputs_object(twice).is_err());
    }

    #[test]
    fn errors_print_as_one_line_with_their_place() {
        let e = |node: &str, field: &str| {
            WorkflowError::from_pb(&pb::WorkflowError {
                file: "/w/broken.toml".to_owned(),
                node: node.to_owned(),
                field: field.to_owned(),
                message: "unknown tool `nope`\n(tools: http_get)".to_owned(),
            })
            .line()
        };
        assert_eq!(
            e("fetch", "tool"),
            "/w/broken.toml: node `fetch`, field `tool`: unknown tool `nope` (tools: http_get)"
        );
        assert_eq!(
            e("fetch", ""),
            "/w/broken.toml: node `fetch`: unknown tool `nope` (tools: http_get)"
        );
        assert_eq!(
            e("", "name"),
            "/w/broken.toml: field `name`: unknown tool `nope` (tools: http_get)"
        );
        assert_eq!(
            e("", ""),
            "/w/broken.toml: unknown tool `nope` (tools: http_get)"
        );
    }
}
