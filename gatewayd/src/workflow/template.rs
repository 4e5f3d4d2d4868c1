//! `{{…}}` templates: prompts, tool arguments, message texts and foreach item lists.
//!
//! A template is text with references: `{{inputs.x}}` (a workflow input), `{{node.output}}` and
//! `{{node.output.field.sub}}` (an upstream node's output, or a path into it; a numeric segment
//! indexes an array), and `{{item}}`/`{{index}}` inside a foreach `do` step. Whitespace inside the
//! braces is allowed. [`parse`] rejects an unclosed `{{` and anything that is not one of those
//! references, so the validator can check every reference before a run. Rendering never leaves
//! a reference in the text: a variable the context cannot supply is an error that names it.
//! Strings render raw; every other JSON value renders as compact JSON.

use std::fmt;

use serde_json::Value;

/// Why a template does not parse or cannot be rendered.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TemplateError {
    /// A `{{` with no `}}` after it.
    #[error("unclosed `{{{{` at line {line}, column {column}")]
    Unclosed {
        /// 1-based line of the `{{`.
        line: usize,
        /// 1-based column (in characters) of the `{{`.
        column: usize,
    },
    /// The text between the braces is not a reference.
    #[error("`{{{{{text}}}}}` is not a reference: {reason}")]
    BadRef {
        /// The text between the braces, trimmed.
        text: String,
        /// What a reference looks like.
        reason: String,
    },
    /// The context has no value for this reference.
    #[error("missing variable `{{{{{0}}}}}`")]
    Missing(Ref),
}

/// One `{{…}}` reference.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Ref {
    /// `{{inputs.name}}`.
    Input(String),
    /// `{{node.output}}` (empty path) or `{{node.output.a.b}}`.
    Node {
        /// The node id.
        node: String,
        /// Object keys (or array indices) into the output.
        path: Vec<String>,
    },
    /// `{{item}}`: the current foreach item.
    Item,
    /// `{{index}}`: the current foreach index, from 0.
    Index,
}

impl fmt::Display for Ref {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Input(name) => write!(f, "inputs.{name}"),
            Self::Node { node, path } => {
                write!(f, "{node}.output")?;
                for segment in path {
                    write!(f, ".{segment}")?;
                }
                Ok(())
            }
            Self::Item => f.write_str("item"),
            Self::Index => f.write_str("index"),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Text(String),
    Ref(Ref),
}

/// A parsed template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    source: String,
    parts: Vec<Part>,
}

/// Parses `text`, checking every reference's shape.
pub fn parse(text: &str) -> Result<Template, TemplateError> {
    let mut parts = Vec::new();
    let mut rest = text;
    let mut consumed = 0;
    while let Some(open) = rest.find("{{") {
        if open > 0 {
            parts.push(Part::Text(rest[..open].to_owned()));
        }
        let after_open = &rest[open + 2..];
        let unclosed = || {
            let (line, column) = line_column(text, consumed + open);
            TemplateError::Unclosed { line, column }
        };
        let close = after_open.find("}}").ok_or_else(unclosed)?;
        let inner = &after_open[..close];
        if inner.contains("{{") {
            return Err(unclosed());
        }
        parts.push(Part::Ref(parse_ref(inner.trim())?));
        let advance = open + 2 + close + 2;
        consumed += advance;
        rest = &rest[advance..];
    }
    if !rest.is_empty() {
        parts.push(Part::Text(rest.to_owned()));
    }
    Ok(Template {
        source: text.to_owned(),
        parts,
    })
}

fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let before = text.get(..offset).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().unwrap_or("").chars().count() + 1;
    (line, column)
}

fn is_ident(s: &str) -> bool {
    !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
}

fn parse_ref(text: &str) -> Result<Ref, TemplateError> {
    let bad = |reason: &str| TemplateError::BadRef {
        text: text.to_owned(),
        reason: reason.to_owned(),
    };
    if text.is_empty() {
        return Err(bad(
            "write `{{inputs.name}}`, `{{node.output}}`, `{{item}}` or `{{index}}`",
        ));
    }
    let segments: Vec<&str> = text.split('.').collect();
    if segments.iter().any(|s| s.is_empty()) {
        return Err(bad("a path segment is empty"));
    }
    if let Some(bad_segment) = segments
        .iter()
        .find(|s| s.chars().any(|c| c.is_whitespace() || c == '{' || c == '}'))
    {
        return Err(bad(&format!(
            "`{bad_segment}` contains whitespace or braces"
        )));
    }
    match segments.as_slice() {
        ["inputs", name] if is_ident(name) => Ok(Ref::Input((*name).to_owned())),
        ["inputs", ..] => Err(bad(
            "an input is written `{{inputs.name}}`, name in [a-z0-9_]",
        )),
        ["item"] => Ok(Ref::Item),
        ["index"] => Ok(Ref::Index),
        ["item" | "index", ..] => Err(bad(
            "`{{item}}` and `{{index}}` take no path; use a code step to pick fields",
        )),
        [node, "output", path @ ..] if is_ident(node) => Ok(Ref::Node {
            node: (*node).to_owned(),
            path: path.iter().map(|s| (*s).to_owned()).collect(),
        }),
        [node, ..] if is_ident(node) => Err(bad(&format!(
            "a node's result is written `{{{{{node}.output}}}}` or `{{{{{node}.output.field}}}}`"
        ))),
        _ => Err(bad(
            "write `{{inputs.name}}`, `{{node.output}}`, `{{item}}` or `{{index}}` (ids in [a-z0-9_])",
        )),
    }
}

impl Template {
    /// The text the template was parsed from.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// Every reference, in order of appearance, without duplicates.
    pub fn references(&self) -> Vec<Ref> {
        let mut out: Vec<Ref> = Vec::new();
        for part in &self.parts {
            if let Part::Ref(r) = part
                && !out.contains(r)
            {
                out.push(r.clone());
            }
        }
        out
    }

    /// The reference, when the whole template is exactly one `{{…}}` and nothing else.
    pub fn single_ref(&self) -> Option<&Ref> {
        match self.parts.as_slice() {
            [Part::Ref(r)] => Some(r),
            _ => None,
        }
    }

    /// Renders to text. `ctx` returns the value a reference names (see [`Vars::resolve`]);
    /// `None` is an error naming the variable.
    pub fn render(&self, ctx: &dyn Fn(&Ref) -> Option<Value>) -> Result<String, TemplateError> {
        let mut out = String::with_capacity(self.source.len());
        for part in &self.parts {
            match part {
                Part::Text(text) => out.push_str(text),
                Part::Ref(r) => {
                    let value = ctx(r).ok_or_else(|| TemplateError::Missing(r.clone()))?;
                    push_value(&mut out, &value);
                }
            }
        }
        Ok(out)
    }

    /// Renders to a value: when the template is exactly one reference the referenced value
    /// itself (so `"{{fetch.output}}"` yields the list), otherwise the rendered string.
    pub fn render_value(
        &self,
        ctx: &dyn Fn(&Ref) -> Option<Value>,
    ) -> Result<Value, TemplateError> {
        match self.single_ref() {
            Some(r) => ctx(r).ok_or_else(|| TemplateError::Missing(r.clone())),
            None => self.render(ctx).map(Value::String),
        }
    }
}

fn push_value(out: &mut String, value: &Value) {
    match value {
        Value::String(s) => out.push_str(s),
        other => out.push_str(&other.to_string()),
    }
}

/// Renders every string inside `value` (at any depth) as a template with
/// [`Template::render_value`]; other values are kept. Used for a tool node's `args`.
pub fn render_tree(
    value: &Value,
    ctx: &dyn Fn(&Ref) -> Option<Value>,
) -> Result<Value, TemplateError> {
    Ok(match value {
        Value::String(s) => parse(s)?.render_value(ctx)?,
        Value::Array(items) => Value::Array(
            items
                .iter()
                .map(|v| render_tree(v, ctx))
                .collect::<Result<_, _>>()?,
        ),
        Value::Object(map) => {
            let mut out = serde_json::Map::with_capacity(map.len());
            for (k, v) in map {
                out.insert(k.clone(), render_tree(v, ctx)?);
            }
            Value::Object(out)
        }
        other => other.clone(),
    })
}

/// Follows `path` into `value`: object keys, or indices into arrays.
pub fn lookup<'v>(value: &'v Value, path: &[String]) -> Option<&'v Value> {
    path.iter().try_fold(value, |v, segment| match v {
        Value::Object(map) => map.get(segment),
        Value::Array(items) => segment.parse::<usize>().ok().and_then(|i| items.get(i)),
        _ => None,
    })
}

/// The standard variables of a run, for [`Template::render`]: `render(&|r| vars.resolve(r))`.
#[derive(Debug, Clone, Copy)]
pub struct Vars<'a> {
    /// The run's inputs, an object of name → value.
    pub inputs: &'a Value,
    /// Finished upstream nodes, an object of id → `{ "output": … }` (what scripts see as
    /// `nodes`).
    pub nodes: &'a Value,
    /// The current foreach item and its index, inside a `do` step.
    pub item: Option<(&'a Value, usize)>,
}

impl Vars<'_> {
    /// The value `r` names, or `None` when there is none.
    pub fn resolve(&self, r: &Ref) -> Option<Value> {
        match r {
            Ref::Input(name) => self.inputs.get(name).cloned(),
            Ref::Node { node, path } => {
                let output = self.nodes.get(node)?.get("output")?;
                lookup(output, path).cloned()
            }
            Ref::Item => self.item.map(|(item, _)| item.clone()),
            Ref::Index => self.item.map(|(_, index)| Value::from(index)),
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn node(id: &str, path: &[&str]) -> Ref {
        Ref::Node {
            node: id.to_owned(),
            path: path.iter().map(|s| (*s).to_owned()).collect(),
        }
    }

    /// Parses `text` and compares its references, or the parse error's text.
    fn check_parse(text: &str, expected: Result<Vec<Ref>, &str>) {
        let got = parse(text)
            .map(|t| t.references())
            .map_err(|e| e.to_string());
        match expected {
            Ok(refs) => assert_eq!(got, Ok(refs), "{text}"),
            Err(fragment) => match got {
                Err(message) => assert!(
                    message.contains(fragment),
                    "{text}: `{message}` lacks `{fragment}`"
                ),
                Ok(refs) => panic!("{text}: parsed as {refs:?}, expected an error"),
            },
        }
    }

    #[test]
    fn parses_references() {
        for (text, expected) in [
            ("plain text", Ok(vec![])),
            ("", Ok(vec![])),
            ("{{inputs.ticket}}", Ok(vec![Ref::Input("ticket".into())])),
            ("a {{ inputs.x }} b", Ok(vec![Ref::Input("x".into())])),
            ("{{fetch.output}}", Ok(vec![node("fetch", &[])])),
            (
                "{{fetch.output.body.items.0}}",
                Ok(vec![node("fetch", &["body", "items", "0"])]),
            ),
            (
                "{{item}} #{{index}} {{item}}",
                Ok(vec![Ref::Item, Ref::Index]),
            ),
            ("a }} b", Ok(vec![])),
            (
                "unclosed {{inputs.x",
                Err("unclosed `{{` at line 1, column 10"),
            ),
            ("x\n  {{a {{b}}", Err("unclosed `{{` at line 2, column 3")),
            ("{{}}", Err("is not a reference")),
            ("{{inputs}}", Err("`{{inputs.name}}`")),
            ("{{inputs.a.b}}", Err("`{{inputs.name}}`")),
            ("{{fetch}}", Err("`{{fetch.output}}`")),
            ("{{fetch.result}}", Err("`{{fetch.output}}`")),
            ("{{item.title}}", Err("take no path")),
            ("{{Fetch.output}}", Err("[a-z0-9_]")),
            ("{{fetch..output}}", Err("empty")),
            ("{{fetch.output.a b}}", Err("whitespace")),
        ] {
            check_parse(text, expected);
        }
    }

    fn vars_render(text: &str) -> Result<String, TemplateError> {
        let inputs = json!({ "name": "Ada", "n": 3, "tags": ["a", "b"] });
        let nodes =
            json!({ "fetch": { "output": { "title": "T", "items": [{ "id": 1 }], "ok": true } } });
        let item = json!({ "k": "v" });
        let vars = Vars {
            inputs: &inputs,
            nodes: &nodes,
            item: Some((&item, 2)),
        };
        parse(text)?.render(&|r| vars.resolve(r))
    }

    #[test]
    fn renders_strings_raw_and_other_values_as_compact_json() {
        for (text, expected) in [
            ("Hi {{inputs.name}}!", "Hi Ada!"),
            ("{{inputs.n}} {{inputs.tags}}", r#"3 ["a","b"]"#),
            ("{{fetch.output.title}}", "T"),
            ("{{fetch.output.items.0.id}}", "1"),
            ("{{fetch.output.ok}}", "true"),
            ("{{item}} at {{index}}", r#"{"k":"v"} at 2"#),
            ("no refs", "no refs"),
        ] {
            assert_eq!(vars_render(text).as_deref(), Ok(expected), "{text}");
        }
    }

    #[test]
    fn a_missing_variable_is_an_error_naming_it() {
        for (text, missing) in [
            ("Hi {{inputs.nobody}}", "{{inputs.nobody}}"),
            ("{{other.output}}", "{{other.output}}"),
            (
                "{{fetch.output.title.deeper}}",
                "{{fetch.output.title.deeper}}",
            ),
            ("{{fetch.output.items.5}}", "{{fetch.output.items.5}}"),
        ] {
            let err = vars_render(text).expect_err(text);
            assert_eq!(err.to_string(), format!("missing variable `{missing}`"));
        }
        let empty = json!({});
        let outside_foreach = Vars {
            inputs: &empty,
            nodes: &empty,
            item: None,
        };
        let template = parse("{{item}}").expect("parses");
        assert_eq!(
            template.render(&|r| outside_foreach.resolve(r)),
            Err(TemplateError::Missing(Ref::Item))
        );
    }

    #[test]
    fn render_value_keeps_the_type_of_a_single_reference() {
        let list = json!([1, 2, 3]);
        let ctx = |r: &Ref| (r == &node("fetch", &[])).then(|| list.clone());
        let single = parse("{{ fetch.output }}").expect("parses");
        assert_eq!(single.render_value(&ctx), Ok(list.clone()));
        let mixed = parse("items: {{fetch.output}}").expect("parses");
        assert_eq!(mixed.render_value(&ctx), Ok(json!("items: [1,2,3]")));
        assert_eq!(
            parse("{{nope.output}}").expect("parses").render_value(&ctx),
            Err(TemplateError::Missing(node("nope", &[])))
        );
    }

    #[test]
    fn render_tree_renders_nested_strings() {
        let args = json!({ "url": "https://x/{{inputs.name}}", "n": 5, "list": "{{inputs.tags}}", "deep": { "q": ["{{inputs.n}}"] } });
        let inputs = json!({ "name": "Ada", "n": 3, "tags": ["a"] });
        let nodes = json!({});
        let vars = Vars {
            inputs: &inputs,
            nodes: &nodes,
            item: None,
        };
        assert_eq!(
            render_tree(&args, &|r| vars.resolve(r)),
            Ok(json!({ "url": "https://x/Ada", "n": 5, "list": ["a"], "deep": { "q": [3] } }))
        );
    }
}
