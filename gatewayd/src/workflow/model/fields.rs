//! The template-valued and rhai-valued keys of a node, listed with their key paths
//! (`prompt`, `args.url`, `do.script`, …) for the validator and the runner.

use std::collections::HashSet;

use serde_json::Value;

use super::{ForeachNode, LlmStep, Node, NodeKind, Step, ToolStep};

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

#[cfg(test)]
mod tests {
    use super::super::Workflow;

    fn workflow(text: &str) -> Workflow {
        Workflow::from_toml(text, "test.toml").expect("parses")
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
