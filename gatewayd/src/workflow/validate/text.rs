//! Checks on a workflow file's text, around the TOML parser: [`too_deep`] refuses nesting the
//! parser would recurse into too deeply, and [`parse_error`] turns a TOML or shape error into a
//! [`WorkflowError`] naming the node and key it concerns, with its line.

use std::path::Path;

use super::{MAX_NESTING, WorkflowError};

/// The line where arrays and inline tables first nest deeper than [`MAX_NESTING`], if they do;
/// a scan outside strings and comments, so the TOML parser never recurses that deep.
pub(super) fn too_deep(text: &str) -> Option<usize> {
    let bytes = text.as_bytes();
    let mut depth = 0usize;
    let mut line = 1;
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'\n' => line += 1,
            b'#' => {
                while i < bytes.len() && bytes[i] != b'\n' {
                    i += 1;
                }
                continue;
            }
            quote @ (b'"' | b'\'') => {
                let triple = bytes[i..].starts_with(if quote == b'"' { b"\"\"\"" } else { b"'''" });
                let escapes = quote == b'"';
                i += if triple { 3 } else { 1 };
                while i < bytes.len() {
                    let b = bytes[i];
                    if b == b'\n' {
                        line += 1;
                        if !triple {
                            break;
                        }
                    }
                    if escapes && b == b'\\' {
                        if bytes.get(i + 1) == Some(&b'\n') {
                            line += 1;
                        }
                        i += 2;
                        continue;
                    }
                    if b == quote {
                        if !triple {
                            break;
                        }
                        if bytes[i..].starts_with(&[quote; 3]) {
                            // A closing `"""` may be followed by up to two more quotes.
                            i += 2;
                            while bytes.get(i + 1) == Some(&quote) {
                                i += 1;
                            }
                            break;
                        }
                    }
                    i += 1;
                }
            }
            b'[' | b'{' => {
                depth += 1;
                if depth > MAX_NESTING {
                    return Some(line);
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
        i += 1;
    }
    None
}

/// A TOML or shape error as a workflow error, with the node and key it concerns where the
/// parsed document can tell, and the line in the message.
pub(super) fn parse_error(text: &str, path: &Path, e: &toml::de::Error) -> WorkflowError {
    let message = e.message().trim().replace('\n', " ");
    let mut node = None;
    let mut field = None;
    let mut line = None;
    if let Some(span) = e.span() {
        line = Some(line_at(text, span.start));
        if let Ok(doc) = toml::de::DeTable::parse(text) {
            let located = locate(doc.get_ref(), span.start, &message);
            node = located.node;
            field = located.field;
            if let Some(offset) = located.offset {
                line = Some(line_at(text, offset));
            }
        }
    }
    let message = match line {
        Some(line) => format!("{message} (line {line})"),
        None => message,
    };
    WorkflowError {
        file: path.to_path_buf(),
        node,
        field,
        message,
    }
}

fn line_at(text: &str, offset: usize) -> usize {
    text.get(..offset)
        .map_or(0, |prefix| prefix.matches('\n').count())
        + 1
}

#[derive(Debug, Default, PartialEq, Eq)]
struct Located {
    node: Option<String>,
    field: Option<String>,
    /// Where the key that is wrong is written, when found.
    offset: Option<usize>,
}

/// Finds what an error at `offset` is about: the innermost key whose key or value contains it,
/// or, when serde only knows the whole table (spans then point at a `[table]` or `[[nodes]]`
/// header), the key the message names inside that table. Keys inside a `[[nodes]]` entry are
/// reported relative to the node, with the node's id.
fn locate(root: &toml::de::DeTable<'_>, offset: usize, message: &str) -> Located {
    walk(root, "", false, offset, message).unwrap_or_else(|| Located {
        field: named_key(message),
        ..Located::default()
    })
}

fn walk(
    table: &toml::de::DeTable<'_>,
    prefix: &str,
    in_node: bool,
    offset: usize,
    message: &str,
) -> Option<Located> {
    use toml::de::DeValue;

    let contains = |span: std::ops::Range<usize>| {
        span.start <= offset && offset < span.end.max(span.start + 1)
    };
    let join = |key: &str| {
        if prefix.is_empty() {
            key.to_owned()
        } else {
            format!("{prefix}.{key}")
        }
    };
    // A header names a whole table: the message's key inside it, else the table itself.
    let header_hit =
        |inner: &toml::de::DeTable<'_>, path: String, node: Option<String>, at: usize| {
            let named = named_key(message);
            let (field, offset) = match named.and_then(|n| find_key(inner, &n)) {
                Some((key, at)) if path.is_empty() => (Some(key), at),
                Some((key, at)) => (Some(format!("{path}.{key}")), at),
                None if path.is_empty() => (named_key(message), at),
                None => (Some(path), at),
            };
            Located {
                node,
                field,
                offset: Some(offset),
            }
        };
    for (key, value) in table.iter() {
        let name = key.get_ref().as_ref();
        match value.get_ref() {
            DeValue::Array(items) if prefix.is_empty() && !in_node && name == "nodes" => {
                for item in items {
                    let DeValue::Table(inner) = item.get_ref() else {
                        if contains(item.span()) {
                            return Some(Located {
                                field: Some("nodes".to_owned()),
                                offset: Some(item.span().start),
                                ..Located::default()
                            });
                        }
                        continue;
                    };
                    let id = string_key(inner, "id");
                    if contains(item.span()) {
                        return Some(header_hit(inner, String::new(), id, item.span().start));
                    }
                    if let Some(found) = walk(inner, "", true, offset, message) {
                        return Some(Located { node: id, ..found });
                    }
                }
            }
            DeValue::Table(inner) => {
                if contains(value.span())
                    && !contains(key.span())
                    && !is_inline(inner, value.span())
                {
                    return Some(header_hit(inner, join(name), None, value.span().start));
                }
                if let Some(found) = walk(inner, &join(name), in_node, offset, message) {
                    return Some(found);
                }
                if contains(key.span()) || contains(value.span()) {
                    return Some(header_hit(inner, join(name), None, key.span().start));
                }
            }
            _ => {
                if contains(key.span()) || contains(value.span()) {
                    return Some(Located {
                        node: None,
                        field: Some(join(name)),
                        offset: Some(key.span().start),
                    });
                }
            }
        }
    }
    None
}

/// Whether a table's span covers its keys (an inline table) rather than only a header.
fn is_inline(table: &toml::de::DeTable<'_>, span: std::ops::Range<usize>) -> bool {
    table
        .iter()
        .next()
        .is_some_and(|(key, _)| span.start <= key.span().start && key.span().end <= span.end)
}

/// Where `name` is written in a table, directly or in a nested table (`do.prompt`).
fn find_key(table: &toml::de::DeTable<'_>, name: &str) -> Option<(String, usize)> {
    for (key, _) in table.iter() {
        if key.get_ref() == name {
            return Some((name.to_owned(), key.span().start));
        }
    }
    for (key, value) in table.iter() {
        if let toml::de::DeValue::Table(inner) = value.get_ref()
            && let Some((path, at)) = find_key(inner, name)
        {
            return Some((format!("{}.{path}", key.get_ref()), at));
        }
    }
    None
}

fn string_key(table: &toml::de::DeTable<'_>, name: &str) -> Option<String> {
    table.iter().find_map(|(key, value)| match value.get_ref() {
        toml::de::DeValue::String(s) if key.get_ref() == name => Some(s.to_string()),
        _ => None,
    })
}

/// The key serde names in `unknown field `x`` / `missing field `x``; `kind` for an unknown kind.
fn named_key(message: &str) -> Option<String> {
    if message.starts_with("unknown variant") {
        return Some("kind".to_owned());
    }
    // serde's own messages, then ours (which start with the key in backquotes).
    for prefix in [
        "unknown field `",
        "missing field `",
        "duplicate field `",
        "`",
    ] {
        if let Some(rest) = message.strip_prefix(prefix)
            && let Some(end) = rest.find('`')
        {
            return Some(rest[..end].to_owned());
        }
    }
    None
}
