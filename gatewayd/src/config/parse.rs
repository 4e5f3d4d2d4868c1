//! Reading the file: deserializing in passes so every refused key is named in one run
//! ([`deserialize_in_passes`]), finding the line of a key ([`line_of_key`]), and the checks that
//! every section shares (URLs, secrets).

use std::path::PathBuf;

use super::{Config, ConfigError};

/// Checks what [`Config`] leaves to others, the `[channels.<name>]` sections: given the parsed
/// config and the file's text, every error found.
pub type SectionCheck = fn(&Config, &str) -> Vec<ConfigError>;

/// Most passes [`Config::parse`] makes to collect type errors (each pass removes one key).
pub(super) const MAX_PARSE_PASSES: usize = 256;

/// What [`deserialize_in_passes`] found.
pub struct Passes<T> {
    /// The value, with defaults in place of every refused key; `None` if even that failed.
    pub value: Option<T>,
    /// Every refused key, with its line.
    pub errors: Vec<ConfigError>,
    /// The full paths of the refused keys.
    pub removed: Vec<String>,
}

/// Deserializes `doc` (the table at key path `prefix`, empty for the whole file) as a `T`,
/// naming every key serde refuses: each pass reports the first refused key, removes it (its
/// default takes its place) and tries again, so one run names every bad key. `text` is the
/// file, for line numbers.
pub fn deserialize_in_passes<T: serde::de::DeserializeOwned>(
    mut doc: toml::Table,
    prefix: &str,
    text: &str,
) -> Passes<T> {
    let mut errors = Vec::new();
    let mut removed: Vec<String> = Vec::new();
    let full = |keys: &[String]| {
        let inner = keys.join(".");
        match (prefix.is_empty(), inner.is_empty()) {
            (true, _) => inner,
            (false, true) => prefix.to_owned(),
            (false, false) => format!("{prefix}.{inner}"),
        }
    };
    for _ in 0..MAX_PARSE_PASSES {
        match serde_path_to_error::deserialize::<_, T>(toml::Value::Table(doc.clone())) {
            Ok(value) => {
                return Passes {
                    value: Some(value),
                    errors,
                    removed,
                };
            }
            Err(e) => {
                let keys: Vec<String> = e
                    .path()
                    .iter()
                    .map_while(|segment| match segment {
                        serde_path_to_error::Segment::Map { key } => Some(key.clone()),
                        _ => None,
                    })
                    .collect();
                let path = full(&keys);
                errors.push(ConfigError {
                    line: line_of_key(text, &path),
                    path: if path.is_empty() {
                        "(file)".to_owned()
                    } else {
                        path.clone()
                    },
                    message: e.into_inner().message().trim().replace('\n', " "),
                });
                if !remove_key(&mut doc, &keys) {
                    break;
                }
                removed.push(path);
            }
        }
    }
    Passes {
        value: None,
        errors,
        removed,
    }
}

/// Whether `path` is one of `removed` or lies under one.
pub fn under_removed(removed: &[String], path: &str) -> bool {
    removed.iter().any(|r| {
        path == r
            || path
                .strip_prefix(r.as_str())
                .is_some_and(|rest| rest.starts_with('.'))
    })
}

/// Checks a secret given through `<prefix>.<name>_env` or `<prefix>.<name>_file`: exactly one is
/// set, the variable is set and not empty, the file is readable. `required` says whether one
/// must be set at all; `what` names the secret in the message.
pub fn check_secret(
    prefix: &str,
    name: &str,
    what: &str,
    env: &Option<String>,
    file: &Option<PathBuf>,
    required: bool,
) -> Option<ConfigError> {
    let err = |key: &str, message: String| {
        Some(ConfigError {
            path: format!("{prefix}.{name}_{key}"),
            line: None,
            message,
        })
    };
    match (env, file) {
        (None, None) if required => err(
            "env",
            format!("{what} is required: set {name}_env (an environment variable) or {name}_file"),
        ),
        (None, None) => None,
        (Some(_), Some(_)) => err("env", format!("set only one of {name}_env and {name}_file")),
        (Some(var), None) if std::env::var(var).map_or(true, |v| v.trim().is_empty()) => err(
            "env",
            format!("environment variable `{var}` is not set or empty; export it"),
        ),
        (None, Some(file)) if !file.is_file() => err(
            "file",
            format!("`{}` is not a readable file", file.display()),
        ),
        _ => None,
    }
}

/// Removes the key at `keys` from `doc`; false if there is nothing to remove there.
pub(super) fn remove_key(doc: &mut toml::Table, keys: &[String]) -> bool {
    let Some((last, parents)) = keys.split_last() else {
        return false;
    };
    let mut table = doc;
    for key in parents {
        match table.get_mut(key) {
            Some(toml::Value::Table(inner)) => table = inner,
            _ => return false,
        }
    }
    table.remove(last).is_some()
}

/// Checks the URL key `key`: an `http://` or `https://` URL with a host. Every URL key of the
/// configuration goes through this one check, so each says the same thing.
pub fn check_url(key: &str, value: &str) -> Result<(), ConfigError> {
    let fail = |message: String| ConfigError {
        path: key.to_owned(),
        line: None,
        message,
    };
    let url = reqwest::Url::parse(value.trim()).map_err(|e| {
        fail(format!(
            "`{value}` is not a URL ({e}); write e.g. \"https://example.com\""
        ))
    })?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(fail(format!(
            "`{value}` must be an http:// or https:// URL, not {}://",
            url.scheme()
        )));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(fail(format!("`{value}` has no host")));
    }
    Ok(())
}

pub(super) fn parse_error(text: &str, e: &toml::de::Error) -> ConfigError {
    let line = e.span().map(|span| line_at(text, span.start));
    let message = e.message().trim().replace('\n', " ");
    // serde names the offending key in its message; the span points at it in the file.
    let path = e
        .span()
        .and_then(|span| key_path_at(text, span.start))
        .unwrap_or_else(|| "(syntax)".to_owned());
    ConfigError {
        path,
        line,
        message,
    }
}

pub(super) fn line_at(text: &str, offset: usize) -> usize {
    text.get(..offset)
        .map_or(0, |prefix| prefix.matches('\n').count())
        + 1
}

/// The dotted path of the key whose key or value span contains `offset`, found in the parsed
/// document (the innermost one, searching every table).
pub(super) fn key_path_at(text: &str, offset: usize) -> Option<String> {
    fn walk(
        table: &toml::de::DeTable<'_>,
        prefix: &mut Vec<String>,
        offset: usize,
    ) -> Option<String> {
        for (key, value) in table.iter() {
            prefix.push(key.get_ref().to_string());
            if let toml::de::DeValue::Table(inner) = value.get_ref()
                && let Some(found) = walk(inner, prefix, offset)
            {
                return Some(found);
            }
            let contains = |span: std::ops::Range<usize>| {
                span.start <= offset && offset < span.end.max(span.start + 1)
            };
            if contains(key.span()) || contains(value.span()) {
                return Some(prefix.join("."));
            }
            prefix.pop();
        }
        None
    }
    let doc = toml::de::DeTable::parse(text).ok()?;
    walk(doc.get_ref(), &mut Vec::new(), offset)
}

/// The 1-based line where the key at dotted `path` is written or, for a key that is missing
/// (a required key left out), the line of the nearest enclosing table that is written.
pub fn line_of_key(text: &str, path: &str) -> Option<usize> {
    let doc = toml::de::DeTable::parse(text).ok()?;
    let mut table = doc.get_ref();
    let mut found = None;
    for part in path.split('.') {
        let Some((key, value)) = table.iter().find(|(k, _)| k.get_ref() == part) else {
            return found;
        };
        found = Some(line_at(text, key.span().start));
        match value.get_ref() {
            toml::de::DeValue::Table(inner) => table = inner,
            _ => return found,
        }
    }
    found
}
