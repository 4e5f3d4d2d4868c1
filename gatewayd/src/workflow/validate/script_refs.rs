//! A static look at the names a rhai script reads from `inputs` and `nodes`, so a typo or a
//! missing `after` is reported when the file loads rather than when the script runs.

/// A name a script reads from `inputs` or `nodes`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum ScriptRef {
    Input(String),
    Node(String),
}

/// Finds `inputs.x`, `nodes.x` (also `?.` and `["x"]`) in rhai source, outside string literals
/// and comments. A static look, good enough to catch the usual typo or missing `after`.
pub(super) fn script_refs(src: &str) -> Vec<ScriptRef> {
    let bytes = src.as_bytes();
    let is_ident = |b: u8| b.is_ascii_alphanumeric() || b == b'_';
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'/' if bytes.get(i + 1) == Some(&b'/') => {
                while i < bytes.len() && bytes[i] != b'\n' {
                    i += 1;
                }
            }
            b'/' if bytes.get(i + 1) == Some(&b'*') => {
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
            }
            b'"' => {
                i += 1;
                while i < bytes.len() && bytes[i] != b'"' {
                    i += if bytes[i] == b'\\' { 2 } else { 1 };
                }
                i += 1;
            }
            b if is_ident(b) => {
                let start = i;
                while i < bytes.len() && is_ident(bytes[i]) {
                    i += 1;
                }
                let word = &src[start..i];
                let after_dot = start > 0 && bytes[start - 1] == b'.';
                if !after_dot
                    && (word == "inputs" || word == "nodes")
                    && let Some(name) = member_name(&src[i..])
                {
                    out.push(if word == "inputs" {
                        ScriptRef::Input(name)
                    } else {
                        ScriptRef::Node(name)
                    });
                }
            }
            _ => i += 1,
        }
    }
    out.dedup();
    out
}

/// The member read right after a variable: `.name`, `?.name` or `["name"]`.
fn member_name(rest: &str) -> Option<String> {
    let rest = rest.trim_start();
    let ident_end = |s: &str| {
        s.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(s.len())
    };
    if let Some(tail) = rest.strip_prefix("?.").or_else(|| rest.strip_prefix('.')) {
        let tail = tail.trim_start();
        let end = ident_end(tail);
        return (end > 0).then(|| tail[..end].to_owned());
    }
    let tail = rest.strip_prefix('[')?.trim_start();
    let tail = tail.strip_prefix('"')?;
    let end = tail.find('"')?;
    let after = tail[end + 1..].trim_start();
    after.starts_with(']').then(|| tail[..end].to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn script_refs_skip_strings_and_comments() {
        let refs = script_refs(
            r#"
// nodes.comment
/* nodes.block /* nested */ nodes.still */
let s = "nodes.string \" nodes.escaped";
nodes.a.output + nodes ?. b + nodes["c"] + inputs.x + my.nodes.d + mynodes.e
"#,
        );
        assert_eq!(
            refs,
            [
                ScriptRef::Node("a".into()),
                ScriptRef::Node("b".into()),
                ScriptRef::Node("c".into()),
                ScriptRef::Input("x".into()),
            ]
        );
    }
}
