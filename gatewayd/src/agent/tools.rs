//! The shared tool registry: every tool the agent and workflows can call, registered once for the
//! whole gateway, each with a name, a description and a JSON Schema for its arguments.
//!
//! [`ToolRegistry::call`] is the only way a tool runs. It finds the tool, checks the arguments
//! against the tool's schema before the tool sees them (a tool never gets arguments its schema
//! refuses), and runs the tool under the timeout it was registered with. Schemas use a small
//! subset of JSON Schema (see [`validate`]); [`ToolRegistry::register`] refuses a schema that uses
//! a keyword outside it, so nothing a schema says goes silently unenforced. The built-ins are
//! [`CurrentTime`], [`HttpGet`] (only to allowlisted hosts, denying everything when the list is
//! empty, with a capped body and no redirect to another host), [`SendMessage`] (only through the
//! outbox, via an [`OutboxSink`]) and [`RunWorkflow`] (via a [`WorkflowRunner`]).

use std::collections::{BTreeMap, HashSet};
use std::error::Error as StdError;
use std::str::FromStr;
use std::sync::{Arc, PoisonError, RwLock};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use serde_json::{Map, Value, json};

use crate::message::{ChannelKind, SessionKey, UserId, now_ms};

/// What the model is told about a tool.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct ToolSpec {
    /// Unique name: 1 to 64 ASCII letters, digits, `_` or `-`.
    pub name: String,
    /// What the tool does and when to use it, for the model.
    pub description: String,
    /// JSON Schema of the arguments object (the subset [`validate`] understands).
    pub parameters: Value,
}

/// Who a tool is called for. Every field is optional: a workflow started by an operator has no
/// session, chat or user.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ToolCallContext {
    /// The conversation whose agent turn made the call.
    pub session: Option<SessionKey>,
    /// The channel and chat the turn's message came from.
    pub origin: Option<(ChannelKind, String)>,
    /// The user who wrote that message.
    pub user: Option<UserId>,
}

/// Why a tool call failed. The agent hands the text back to the model as the tool's result.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ToolError {
    /// No tool has this name.
    #[error("unknown tool `{0}`")]
    UnknownTool(String),
    /// The arguments do not match the tool's schema; the text names the field.
    #[error("invalid arguments: {0}")]
    InvalidArguments(String),
    /// The tool did not finish within its timeout.
    #[error("the tool did not finish within {0:?}")]
    Timeout(Duration),
    /// The tool ran and failed.
    #[error("the tool failed: {0}")]
    Failed(String),
    /// The call was refused by policy (e.g. a host not on the allowlist).
    #[error("not allowed: {0}")]
    NotAllowed(String),
}

impl ToolError {
    /// Stable lowercase name, for metrics and logs.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::UnknownTool(_) => "unknown_tool",
            Self::InvalidArguments(_) => "invalid_arguments",
            Self::Timeout(_) => "timeout",
            Self::Failed(_) => "failed",
            Self::NotAllowed(_) => "not_allowed",
        }
    }
}

/// Why a tool could not be registered.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RegisterError {
    /// A tool with this name is already registered.
    #[error("tool `{0}` is already registered")]
    Duplicate(String),
    /// The name is not one the OpenAI API accepts.
    #[error("tool name `{0}` is not valid: use 1 to 64 ASCII letters, digits, `_` or `-`")]
    BadName(String),
    /// The schema is not an object schema, or uses something the validator does not support.
    #[error("tool `{tool}` has an unsupported argument schema: {}", errors.join("; "))]
    BadSchema {
        /// The tool.
        tool: String,
        /// Every problem, each with its path in the schema.
        errors: Vec<String>,
    },
}

/// A tool the agent can call.
#[async_trait]
pub trait Tool: Send + Sync {
    /// Name, description and argument schema.
    fn spec(&self) -> &ToolSpec;
    /// Runs the tool. `args` has already been validated against [`spec`](Self::spec)`().parameters`.
    async fn call(&self, args: Value, ctx: &ToolCallContext) -> Result<Value, ToolError>;
}

#[derive(Clone)]
struct Entry {
    tool: Arc<dyn Tool>,
    timeout: Duration,
}

/// The tools of the whole gateway. Cloning shares the same registry.
#[derive(Clone, Default)]
pub struct ToolRegistry {
    tools: Arc<RwLock<BTreeMap<String, Entry>>>,
}

impl std::fmt::Debug for ToolRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let tools = self.tools.read().unwrap_or_else(PoisonError::into_inner);
        f.debug_struct("ToolRegistry")
            .field("tools", &tools.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl ToolRegistry {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds `tool`, run with `timeout` on every call. Refuses a second tool of the same name, a
    /// name the model API would refuse, and a schema outside the supported subset.
    pub fn register(&self, tool: Arc<dyn Tool>, timeout: Duration) -> Result<(), RegisterError> {
        let spec = tool.spec();
        let name = spec.name.clone();
        if !valid_name(&name) {
            return Err(RegisterError::BadName(name));
        }
        let errors = check_schema(&spec.parameters);
        if !errors.is_empty() {
            return Err(RegisterError::BadSchema { tool: name, errors });
        }
        let mut tools = self.tools.write().unwrap_or_else(PoisonError::into_inner);
        if tools.contains_key(&name) {
            return Err(RegisterError::Duplicate(name));
        }
        tools.insert(name, Entry { tool, timeout });
        Ok(())
    }

    /// Every tool's spec, ordered by name.
    pub fn specs(&self) -> Vec<ToolSpec> {
        let tools = self.tools.read().unwrap_or_else(PoisonError::into_inner);
        tools.values().map(|e| e.tool.spec().clone()).collect()
    }

    /// Every tool's name.
    pub fn names(&self) -> HashSet<String> {
        let tools = self.tools.read().unwrap_or_else(PoisonError::into_inner);
        tools.keys().cloned().collect()
    }

    /// Whether no tool is registered.
    pub fn is_empty(&self) -> bool {
        self.tools
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .is_empty()
    }

    /// Calls tool `name`: validates `args` against its schema, then runs it under its timeout.
    pub async fn call(
        &self,
        name: &str,
        args: Value,
        ctx: &ToolCallContext,
    ) -> Result<Value, ToolError> {
        let entry = self
            .tools
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(name)
            .cloned();
        let Some(entry) = entry else {
            tracing::info!(message = "Call of an unknown tool refused.", tool = name);
            return Err(ToolError::UnknownTool(name.to_owned()));
        };
        let started = Instant::now();
        let result = match validate(&entry.tool.spec().parameters, &args) {
            Err(e) => Err(ToolError::InvalidArguments(e)),
            Ok(()) => tokio::time::timeout(entry.timeout, entry.tool.call(args, ctx))
                .await
                .unwrap_or(Err(ToolError::Timeout(entry.timeout))),
        };
        let elapsed_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
        let outcome = result.as_ref().map_or_else(ToolError::kind, |_| "ok");
        metrics::counter!("gateway_tool_calls_total", "tool" => name.to_owned(), "outcome" => outcome)
            .increment(1);
        match &result {
            Ok(_) => tracing::debug!(message = "Tool call done.", tool = name, elapsed_ms),
            Err(e) => {
                tracing::info!(message = "Tool call failed.", tool = name, outcome, elapsed_ms, error = %e)
            }
        }
        result
    }
}

/// Whether `name` is a function name the OpenAI API accepts.
fn valid_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

// ---------------------------------------------------------------------------------------------
// JSON Schema subset
// ---------------------------------------------------------------------------------------------

const TYPES: [&str; 7] = [
    "object", "array", "string", "number", "integer", "boolean", "null",
];

const KEYWORDS: [&str; 13] = [
    "type",
    "properties",
    "required",
    "additionalProperties",
    "enum",
    "minimum",
    "maximum",
    "minLength",
    "maxLength",
    "items",
    "description",
    "title",
    "default",
];

/// Checks `value` against `schema`, a JSON Schema using only: `type` (one name or a list of
/// `object`, `array`, `string`, `number`, `integer`, `boolean`, `null`), `properties`,
/// `required`, `additionalProperties` (`false` or a schema), `enum`, `minimum`, `maximum`,
/// `minLength`, `maxLength` (in Unicode scalar values), `items`, and the annotations
/// `description`, `title`, `default`. The error names the first field that does not match.
pub fn validate(schema: &Value, value: &Value) -> Result<(), String> {
    validate_at(schema, value, "")
}

/// How an error names the place: the whole arguments object, or one field by its path.
fn place(path: &str) -> String {
    if path.is_empty() {
        "the arguments".to_owned()
    } else {
        format!("field `{path}`")
    }
}

fn child(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_owned()
    } else {
        format!("{path}.{key}")
    }
}

fn has_type(value: &Value, ty: &str) -> bool {
    match ty {
        "object" => value.is_object(),
        "array" => value.is_array(),
        "string" => value.is_string(),
        "number" => value.is_number(),
        "integer" => {
            value.is_i64()
                || value.is_u64()
                || value
                    .as_f64()
                    .is_some_and(|f| f.is_finite() && f.fract() == 0.0)
        }
        "boolean" => value.is_boolean(),
        "null" => value.is_null(),
        _ => false,
    }
}

fn type_name(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(n) if n.is_f64() => "a number",
        Value::Number(_) => "an integer",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// `value` as JSON, cut to a readable length.
fn short(value: &Value) -> String {
    let text = value.to_string();
    if text.chars().count() > 40 {
        format!("{}…", text.chars().take(40).collect::<String>())
    } else {
        text
    }
}

fn validate_at(schema: &Value, value: &Value, path: &str) -> Result<(), String> {
    let Some(schema) = schema.as_object() else {
        return Ok(());
    };
    if let Some(ty) = schema.get("type") {
        let types: Vec<&str> = match ty {
            Value::String(s) => vec![s.as_str()],
            Value::Array(list) => list.iter().filter_map(Value::as_str).collect(),
            _ => Vec::new(),
        };
        if !types.iter().any(|t| has_type(value, t)) {
            return Err(format!(
                "{}: expected {}, got {}",
                place(path),
                types.join(" or "),
                type_name(value)
            ));
        }
    }
    if let Some(Value::Array(options)) = schema.get("enum")
        && !options.contains(value)
    {
        let options: Vec<String> = options.iter().map(Value::to_string).collect();
        return Err(format!(
            "{}: must be one of {}, got {}",
            place(path),
            options.join(", "),
            short(value)
        ));
    }
    match value {
        Value::Number(n) => {
            // `as_f64` is `Some` for every number (no `arbitrary_precision`).
            let x = n.as_f64().unwrap_or_default();
            if let Some(min) = schema.get("minimum").and_then(Value::as_f64)
                && x < min
            {
                return Err(format!("{}: must be at least {min}, got {n}", place(path)));
            }
            if let Some(max) = schema.get("maximum").and_then(Value::as_f64)
                && x > max
            {
                return Err(format!("{}: must be at most {max}, got {n}", place(path)));
            }
        }
        Value::String(s) => {
            let len = u64::try_from(s.chars().count()).unwrap_or(u64::MAX);
            if let Some(min) = schema.get("minLength").and_then(Value::as_u64)
                && len < min
            {
                return Err(format!(
                    "{}: must be at least {min} characters long, got {len}",
                    place(path)
                ));
            }
            if let Some(max) = schema.get("maxLength").and_then(Value::as_u64)
                && len > max
            {
                return Err(format!(
                    "{}: must be at most {max} characters long, got {len}",
                    place(path)
                ));
            }
        }
        Value::Array(items) => {
            if let Some(item_schema) = schema.get("items") {
                for (i, item) in items.iter().enumerate() {
                    validate_at(item_schema, item, &format!("{path}[{i}]"))?;
                }
            }
        }
        Value::Object(map) => validate_object(schema, map, path)?,
        Value::Null | Value::Bool(_) => {}
    }
    Ok(())
}

fn validate_object(
    schema: &Map<String, Value>,
    map: &Map<String, Value>,
    path: &str,
) -> Result<(), String> {
    let props = schema.get("properties").and_then(Value::as_object);
    if let Some(Value::Array(required)) = schema.get("required") {
        for name in required.iter().filter_map(Value::as_str) {
            if !map.contains_key(name) {
                return Err(format!("{} is required", place(&child(path, name))));
            }
        }
    }
    for (key, v) in map {
        let at = child(path, key);
        if let Some(s) = props.and_then(|p| p.get(key)) {
            validate_at(s, v, &at)?;
            continue;
        }
        match schema.get("additionalProperties") {
            Some(Value::Bool(false)) => {
                let allowed: Vec<String> = props
                    .map(|p| p.keys().map(|k| format!("`{k}`")).collect())
                    .unwrap_or_default();
                return Err(if allowed.is_empty() {
                    format!(
                        "{} is not allowed (this tool takes no arguments)",
                        place(&at)
                    )
                } else {
                    format!(
                        "{} is not allowed (allowed: {})",
                        place(&at),
                        allowed.join(", ")
                    )
                });
            }
            Some(extra @ Value::Object(_)) => validate_at(extra, v, &at)?,
            _ => {}
        }
    }
    Ok(())
}

/// Every problem with a tool's argument schema: it must be an object schema (`"type":
/// "object"`) that uses only the subset [`validate`] understands.
pub fn check_schema(schema: &Value) -> Vec<String> {
    let mut errors = Vec::new();
    if schema.get("type").and_then(Value::as_str) != Some("object") {
        errors.push("`parameters`: the arguments schema must have \"type\": \"object\"".to_owned());
    }
    check_at(schema, "parameters", &mut errors);
    errors
}

fn check_at(schema: &Value, path: &str, errors: &mut Vec<String>) {
    let Some(obj) = schema.as_object() else {
        errors.push(format!("`{path}`: a schema must be an object"));
        return;
    };
    for (key, v) in obj {
        let at = format!("{path}.{key}");
        let ok = match key.as_str() {
            "type" => match v {
                Value::String(s) => TYPES.contains(&s.as_str()),
                Value::Array(list) => {
                    !list.is_empty()
                        && list
                            .iter()
                            .all(|t| t.as_str().is_some_and(|t| TYPES.contains(&t)))
                }
                _ => false,
            },
            "properties" => match v.as_object() {
                Some(props) => {
                    for (name, s) in props {
                        check_at(s, &format!("{at}.{name}"), errors);
                    }
                    true
                }
                None => false,
            },
            "required" => match v.as_array() {
                Some(list) => {
                    let props = obj.get("properties").and_then(Value::as_object);
                    for name in list {
                        match name.as_str() {
                            Some(n) if props.is_none_or(|p| p.contains_key(n)) => {}
                            Some(n) => errors.push(format!(
                                "`{at}`: required field `{n}` is not in `properties`"
                            )),
                            None => errors.push(format!("`{at}`: entries must be strings")),
                        }
                    }
                    true
                }
                None => false,
            },
            "additionalProperties" => match v {
                Value::Bool(_) => true,
                Value::Object(_) => {
                    check_at(v, &at, errors);
                    true
                }
                _ => false,
            },
            "items" => {
                check_at(v, &at, errors);
                true
            }
            "enum" => v.as_array().is_some_and(|a| !a.is_empty()),
            "minimum" | "maximum" => v.is_number(),
            "minLength" | "maxLength" => v.is_u64(),
            "description" | "title" => v.is_string(),
            "default" => true,
            _ => {
                errors.push(format!(
                    "`{at}`: keyword not supported (supported: {})",
                    KEYWORDS.join(", ")
                ));
                continue;
            }
        };
        if !ok {
            errors.push(format!("`{at}`: invalid value {}", short(v)));
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Built-in tools
// ---------------------------------------------------------------------------------------------

/// `current_time`: the current UTC time.
pub struct CurrentTime {
    spec: ToolSpec,
}

impl CurrentTime {
    /// The tool.
    pub fn new() -> Self {
        Self {
            spec: ToolSpec {
                name: "current_time".to_owned(),
                description:
                    "The current date and time in UTC (RFC 3339) and as Unix milliseconds."
                        .to_owned(),
                parameters: json!({"type": "object", "properties": {}, "additionalProperties": false}),
            },
        }
    }
}

impl Default for CurrentTime {
    fn default() -> Self {
        Self::new()
    }
}

#[async_trait]
impl Tool for CurrentTime {
    fn spec(&self) -> &ToolSpec {
        &self.spec
    }

    async fn call(&self, _args: Value, _ctx: &ToolCallContext) -> Result<Value, ToolError> {
        let ms = now_ms();
        Ok(json!({"utc": rfc3339_ms(ms), "unix_ms": ms}))
    }
}

/// `ms` since the Unix epoch as RFC 3339 UTC with milliseconds: `2024-02-29T23:59:59.999Z`.
pub fn rfc3339_ms(ms: i64) -> String {
    let secs = ms.div_euclid(1000);
    let milli = ms.rem_euclid(1000);
    let (y, m, d) = civil_from_days(secs.div_euclid(86_400));
    let sod = secs.rem_euclid(86_400);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{milli:03}Z",
        sod / 3600,
        sod % 3600 / 60,
        sod % 60
    )
}

/// (year, month, day) of a day count since 1970-01-01 (H. Hinnant's `civil_from_days`).
fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

/// Default cap of an `http_get` response body.
pub const DEFAULT_HTTP_MAX_BYTES: usize = 256 * 1024;

/// Redirects `http_get` follows, all to the same host.
const MAX_REDIRECTS: usize = 5;

/// One entry of the `http_get` allowlist.
#[derive(Debug, Clone, PartialEq, Eq)]
enum HostPattern {
    /// Exactly this host.
    Exact(String),
    /// `*.example.com`: any subdomain of `example.com` (not `example.com` itself).
    Subdomains(String),
}

/// `http_get`: fetches a URL on an allowlisted host. Only `http` and `https`; hosts not on the
/// allowlist are refused, and an empty allowlist refuses every host. The body is read in chunks
/// and reading stops at the cap. A redirect is followed only to the same host.
pub struct HttpGet {
    spec: ToolSpec,
    client: reqwest::Client,
    allowlist: Vec<HostPattern>,
    max_bytes: usize,
    timeout: Duration,
}

impl HttpGet {
    /// The tool, allowed to reach the hosts of `allowlist` (`example.com` or `*.example.com`;
    /// the `[tools] http_allowlist` key), returning at most `max_bytes` of a body, each request
    /// taking at most `timeout`. A malformed entry is an error naming it (the caller adds the
    /// key).
    pub fn new(allowlist: &[String], max_bytes: usize, timeout: Duration) -> Result<Self, String> {
        let mut patterns = Vec::with_capacity(allowlist.len());
        let mut bad = Vec::new();
        for entry in allowlist {
            let e = entry.trim().trim_end_matches('.').to_ascii_lowercase();
            let host_like = !e.is_empty()
                && !e.contains("://")
                && !e.contains('/')
                && !e.contains(char::is_whitespace)
                && (!e.contains(':') || e.starts_with('['));
            match e.strip_prefix("*.") {
                _ if !host_like => bad.push(format!("`{entry}`")),
                Some(rest) if !rest.is_empty() && !rest.contains('*') => {
                    patterns.push(HostPattern::Subdomains(rest.to_owned()));
                }
                Some(_) => bad.push(format!("`{entry}`")),
                None if e.contains('*') => bad.push(format!("`{entry}`")),
                None => patterns.push(HostPattern::Exact(e)),
            }
        }
        if !bad.is_empty() {
            return Err(format!(
                "{} not a host name; write `example.com` or `*.example.com`, without scheme, port or path",
                if bad.len() == 1 {
                    format!("{} is", bad.join(", "))
                } else {
                    format!("{} are", bad.join(", "))
                }
            ));
        }
        let client = reqwest::Client::builder()
            .timeout(timeout)
            .redirect(reqwest::redirect::Policy::custom(same_host_redirects))
            .user_agent(concat!(
                "gatewayd/",
                env!("CARGO_PKG_VERSION"),
                " (http_get tool)"
            ))
            .build()
            .map_err(|e| format!("cannot build the http_get client: {e}"))?;
        Ok(Self {
            spec: ToolSpec {
                name: "http_get".to_owned(),
                description: format!(
                    "Fetches a web page or API response with HTTP GET and returns its status and body \
                     (at most {max_bytes} bytes; longer bodies are cut and marked truncated). Only \
                     hosts on the operator's allowlist can be reached."
                ),
                parameters: json!({
                    "type": "object",
                    "properties": {
                        "url": {
                            "type": "string",
                            "description": "The http:// or https:// URL to fetch.",
                            "minLength": 1,
                            "maxLength": 2048
                        }
                    },
                    "required": ["url"],
                    "additionalProperties": false
                }),
            },
            client,
            allowlist: patterns,
            max_bytes,
            timeout,
        })
    }

    /// Whether `host` (as in a URL) is on the allowlist.
    pub fn allows(&self, host: &str) -> bool {
        let host = host.trim_end_matches('.').to_ascii_lowercase();
        self.allowlist.iter().any(|p| match p {
            HostPattern::Exact(h) => *h == host,
            HostPattern::Subdomains(domain) => host
                .strip_suffix(domain.as_str())
                .is_some_and(|sub| sub.len() > 1 && sub.ends_with('.')),
        })
    }
}

/// The redirect policy of `http_get`: follow only to the same host over http(s), a few times.
fn same_host_redirects(attempt: reqwest::redirect::Attempt<'_>) -> reqwest::redirect::Action {
    let from = attempt
        .previous()
        .first()
        .and_then(|u| u.host_str())
        .map(str::to_ascii_lowercase);
    let to = attempt.url().host_str().map(str::to_ascii_lowercase);
    let scheme_ok = matches!(attempt.url().scheme(), "http" | "https");
    if attempt.previous().len() > MAX_REDIRECTS {
        attempt.error(format!("more than {MAX_REDIRECTS} redirects"))
    } else if !scheme_ok {
        let scheme = attempt.url().scheme().to_owned();
        attempt.error(format!("redirect to a `{scheme}` URL refused"))
    } else if to != from {
        attempt.error(format!(
            "redirect to another host `{}` refused",
            to.unwrap_or_default()
        ))
    } else {
        attempt.follow()
    }
}

/// An error and its sources, without any URL.
fn error_chain(e: reqwest::Error) -> String {
    let e = e.without_url();
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

/// Bytes as text; a multi-byte character cut by truncation is dropped, other invalid bytes are
/// replaced.
fn body_text(mut bytes: Vec<u8>, truncated: bool) -> String {
    if truncated
        && let Err(e) = std::str::from_utf8(&bytes)
        && e.error_len().is_none()
    {
        bytes.truncate(e.valid_up_to());
    }
    String::from_utf8_lossy(&bytes).into_owned()
}

#[async_trait]
impl Tool for HttpGet {
    fn spec(&self) -> &ToolSpec {
        &self.spec
    }

    async fn call(&self, args: Value, _ctx: &ToolCallContext) -> Result<Value, ToolError> {
        let text = args
            .get("url")
            .and_then(Value::as_str)
            .ok_or_else(|| ToolError::InvalidArguments("field `url` is required".to_owned()))?;
        let url = reqwest::Url::parse(text)
            .map_err(|e| ToolError::InvalidArguments(format!("field `url`: not a URL ({e})")))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(ToolError::NotAllowed(format!(
                "only http and https URLs can be fetched, not `{}`",
                url.scheme()
            )));
        }
        let host = url.host_str().unwrap_or_default().to_owned();
        if self.allowlist.is_empty() {
            return Err(ToolError::NotAllowed(format!(
                "http_get is disabled: the allowlist `[tools] http_allowlist` is empty, so host `{host}` cannot be reached"
            )));
        }
        if !self.allows(&host) {
            return Err(ToolError::NotAllowed(format!(
                "host `{host}` is not on the allowlist `[tools] http_allowlist`"
            )));
        }
        let mut resp = self.client.get(url).send().await.map_err(|e| {
            if e.is_redirect() {
                ToolError::NotAllowed(error_chain(e))
            } else if e.is_timeout() {
                ToolError::Failed(format!("`{host}` did not answer within {:?}", self.timeout))
            } else {
                ToolError::Failed(error_chain(e))
            }
        })?;
        let status = resp.status().as_u16();
        let content_type = resp
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let mut body = Vec::new();
        let mut truncated = false;
        loop {
            let chunk = resp.chunk().await.map_err(|e| {
                if e.is_timeout() {
                    ToolError::Failed(format!(
                        "`{host}` did not send the whole body within {:?}",
                        self.timeout
                    ))
                } else {
                    ToolError::Failed(error_chain(e))
                }
            })?;
            let Some(chunk) = chunk else { break };
            let room = self.max_bytes.saturating_sub(body.len());
            if chunk.len() > room {
                body.extend_from_slice(&chunk[..room]);
                truncated = true;
                break;
            }
            body.extend_from_slice(&chunk);
        }
        Ok(json!({
            "status": status,
            "content_type": content_type,
            "body": body_text(body, truncated),
            "truncated": truncated,
        }))
    }
}

/// Where `send_message` sends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MessageTarget {
    /// A user, on a channel linked to them.
    User(UserId),
    /// A chat on one channel.
    Chat {
        /// The channel.
        channel: ChannelKind,
        /// The platform's chat id.
        chat_id: String,
    },
}

/// Where `send_message` puts messages: the outbox. An implementation commits the row before it
/// hands it to delivery, as every other reply.
#[async_trait]
pub trait OutboxSink: Send + Sync {
    /// Commits `text` for `target` to the outbox, hands it to delivery, and returns the outbox id.
    async fn send(&self, target: MessageTarget, text: String) -> Result<i64, String>;
}

/// `send_message`: sends a message to a user or a chat, through the outbox.
pub struct SendMessage {
    spec: ToolSpec,
    sink: Arc<dyn OutboxSink>,
}

/// Longest `send_message` text, in characters; delivery splits it for each channel.
const SEND_MAX_CHARS: u64 = 8000;

impl SendMessage {
    /// The tool, sending through `sink` to one of `channels` (the gateway's channel names).
    pub fn new(sink: Arc<dyn OutboxSink>, channels: Vec<&'static str>) -> Self {
        Self {
            spec: ToolSpec {
                name: "send_message".to_owned(),
                description: "Sends a message to a user (by `user_id`) or to a chat (by `channel` \
                              and `chat_id`). Give either `user_id`, or `channel` and `chat_id`."
                    .to_owned(),
                parameters: json!({
                    "type": "object",
                    "properties": {
                        "text": {"type": "string", "description": "The message.", "minLength": 1, "maxLength": SEND_MAX_CHARS},
                        "user_id": {"type": "integer", "description": "The gateway user to message.", "minimum": 1},
                        "channel": {"type": "string", "description": "The channel of the chat.", "enum": channels},
                        "chat_id": {"type": "string", "description": "The chat on that channel.", "minLength": 1}
                    },
                    "required": ["text"],
                    "additionalProperties": false
                }),
            },
            sink,
        }
    }
}

/// The target named by `send_message` arguments.
fn message_target(args: &Value) -> Result<MessageTarget, ToolError> {
    let user = args.get("user_id").and_then(Value::as_i64);
    let channel = args.get("channel").and_then(Value::as_str);
    let chat = args.get("chat_id").and_then(Value::as_str);
    let invalid = |m: &str| Err(ToolError::InvalidArguments(m.to_owned()));
    match (user, channel, chat) {
        (Some(_), Some(_), _) | (Some(_), _, Some(_)) => {
            invalid("give either `user_id`, or `channel` and `chat_id`, not both")
        }
        (Some(id), None, None) => Ok(MessageTarget::User(id)),
        (None, Some(channel), Some(chat)) => {
            let channel = ChannelKind::from_str(channel)
                .map_err(|e| ToolError::InvalidArguments(format!("field `channel`: {e}")))?;
            Ok(MessageTarget::Chat {
                channel,
                chat_id: chat.to_owned(),
            })
        }
        (None, Some(_), None) => invalid("field `chat_id` is required with `channel`"),
        (None, None, Some(_)) => invalid("field `channel` is required with `chat_id`"),
        (None, None, None) => invalid("give `user_id`, or `channel` and `chat_id`"),
    }
}

#[async_trait]
impl Tool for SendMessage {
    fn spec(&self) -> &ToolSpec {
        &self.spec
    }

    async fn call(&self, args: Value, _ctx: &ToolCallContext) -> Result<Value, ToolError> {
        let target = message_target(&args)?;
        let text = args
            .get("text")
            .and_then(Value::as_str)
            .ok_or_else(|| ToolError::InvalidArguments("field `text` is required".to_owned()))?
            .to_owned();
        let id = self
            .sink
            .send(target, text)
            .await
            .map_err(ToolError::Failed)?;
        Ok(json!({"outbox_id": id, "status": "queued"}))
    }
}

/// Starts workflow runs for `run_workflow`.
#[async_trait]
pub trait WorkflowRunner: Send + Sync {
    /// Starts workflow `name` with `inputs` for `ctx` and returns the run id without waiting for
    /// it to finish. An unknown workflow or bad inputs are an error the model can read.
    async fn start(
        &self,
        name: &str,
        inputs: Value,
        ctx: &ToolCallContext,
    ) -> Result<String, String>;
}

/// `run_workflow`: starts a workflow run.
pub struct RunWorkflow {
    spec: ToolSpec,
    runner: Arc<dyn WorkflowRunner>,
}

impl RunWorkflow {
    /// The tool, starting runs through `runner`.
    pub fn new(runner: Arc<dyn WorkflowRunner>) -> Self {
        Self {
            spec: ToolSpec {
                name: "run_workflow".to_owned(),
                description: "Starts a workflow by name with input values and returns its run id; \
                              the workflow runs in the background."
                    .to_owned(),
                parameters: json!({
                    "type": "object",
                    "properties": {
                        "name": {"type": "string", "description": "The workflow's name.", "minLength": 1, "maxLength": 128},
                        "inputs": {"type": "object", "description": "The workflow's inputs, by name."}
                    },
                    "required": ["name"],
                    "additionalProperties": false
                }),
            },
            runner,
        }
    }
}

#[async_trait]
impl Tool for RunWorkflow {
    fn spec(&self) -> &ToolSpec {
        &self.spec
    }

    async fn call(&self, args: Value, ctx: &ToolCallContext) -> Result<Value, ToolError> {
        let name = args
            .get("name")
            .and_then(Value::as_str)
            .ok_or_else(|| ToolError::InvalidArguments("field `name` is required".to_owned()))?;
        let inputs = args
            .get("inputs")
            .cloned()
            .unwrap_or_else(|| Value::Object(Map::new()));
        let run_id = self
            .runner
            .start(name, inputs, ctx)
            .await
            .map_err(ToolError::Failed)?;
        Ok(json!({"run_id": run_id, "status": "started"}))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use axum::Router;
    use axum::response::{IntoResponse, Redirect};
    use axum::routing::get;

    use super::*;

    // --- the validator --------------------------------------------------------------------

    fn schema() -> Value {
        json!({
            "type": "object",
            "properties": {
                "url": {"type": "string", "maxLength": 10},
                "name": {"type": "string", "minLength": 2},
                "count": {"type": "integer", "minimum": 1, "maximum": 5},
                "ratio": {"type": "number", "minimum": 0.0, "maximum": 1.0},
                "flag": {"type": "boolean"},
                "mode": {"type": "string", "enum": ["fast", "slow"]},
                "tags": {"type": "array", "items": {"type": "string", "maxLength": 3}},
                "inner": {
                    "type": "object",
                    "properties": {"x": {"type": "integer"}},
                    "required": ["x"],
                    "additionalProperties": false
                },
                "maybe": {"type": ["string", "null"]},
                "free": {"type": "object"}
            },
            "required": ["url"],
            "additionalProperties": false
        })
    }

    /// `Ok(())` or the error text must contain `expected`.
    fn check(args: Value, expected: Result<(), &str>) {
        let got = validate(&schema(), &args);
        match (&got, expected) {
            (Ok(()), Ok(())) => {}
            (Err(e), Err(want)) if e.contains(want) => {}
            _ => panic!("validate({args}) = {got:?}, expected {expected:?}"),
        }
    }

    #[test]
    fn validator_accepts_and_refuses_by_the_schema() {
        check(json!({"url": "a"}), Ok(()));
        check(
            json!({"url": "a", "count": 3, "ratio": 0.5, "flag": true, "mode": "slow",
                   "tags": ["ab"], "inner": {"x": 1}, "maybe": null, "free": {"any": [1]}}),
            Ok(()),
        );
        check(json!({"url": "a", "count": 2.0}), Ok(()));
        check(json!({"url": "a", "maybe": "s"}), Ok(()));
        check(json!({"url": "ü".repeat(10)}), Ok(()));
        check(
            json!("x"),
            Err("the arguments: expected object, got a string"),
        );
        check(json!({}), Err("field `url` is required"));
        check(
            json!({"url": 1}),
            Err("field `url`: expected string, got an integer"),
        );
        check(
            json!({"url": "a".repeat(11)}),
            Err("field `url`: must be at most 10 characters long, got 11"),
        );
        check(
            json!({"url": "a", "name": "n"}),
            Err("field `name`: must be at least 2 characters long"),
        );
        check(
            json!({"url": "a", "count": 1.5}),
            Err("field `count`: expected integer, got a number"),
        );
        check(
            json!({"url": "a", "count": 0}),
            Err("field `count`: must be at least 1"),
        );
        check(
            json!({"url": "a", "count": 6}),
            Err("field `count`: must be at most 5"),
        );
        check(
            json!({"url": "a", "ratio": 1.5}),
            Err("field `ratio`: must be at most 1"),
        );
        check(
            json!({"url": "a", "flag": "yes"}),
            Err("field `flag`: expected boolean, got a string"),
        );
        check(
            json!({"url": "a", "mode": "medium"}),
            Err("field `mode`: must be one of \"fast\", \"slow\", got \"medium\""),
        );
        check(
            json!({"url": "a", "tags": ["ok", "long"]}),
            Err("field `tags[1]`: must be at most 3 characters long"),
        );
        check(
            json!({"url": "a", "tags": "ok"}),
            Err("field `tags`: expected array, got a string"),
        );
        check(
            json!({"url": "a", "inner": {}}),
            Err("field `inner.x` is required"),
        );
        check(
            json!({"url": "a", "inner": {"x": 1, "y": 2}}),
            Err("field `inner.y` is not allowed (allowed: `x`)"),
        );
        check(
            json!({"url": "a", "maybe": 1}),
            Err("field `maybe`: expected string or null, got an integer"),
        );
        check(
            json!({"url": "a", "extra": 1}),
            Err("field `extra` is not allowed (allowed: "),
        );
        check(
            json!({"url": null}),
            Err("field `url`: expected string, got null"),
        );
    }

    #[test]
    fn schemas_outside_the_subset_are_refused() {
        fn errors(schema: Value) -> String {
            check_schema(&schema).join("\n")
        }
        assert_eq!(errors(schema()), "");
        assert_eq!(errors(CurrentTime::new().spec.parameters), "");
        assert!(errors(json!({"type": "string"})).contains("must have \"type\": \"object\""));
        assert!(
            errors(
                json!({"type": "object", "properties": {"a": {"type": "string", "pattern": "x"}}})
            )
            .contains("`parameters.properties.a.pattern`: keyword not supported")
        );
        assert!(
            errors(json!({"type": "object", "properties": {"a": {"type": "text"}}}))
                .contains("`parameters.properties.a.type`: invalid value \"text\"")
        );
        assert!(
            errors(json!({"type": "object", "properties": {}, "required": ["a"]}))
                .contains("required field `a` is not in `properties`")
        );
        assert!(
            errors(json!({"type": "object", "properties": {"a": {"maxLength": -1}}}))
                .contains("`parameters.properties.a.maxLength`: invalid value -1")
        );
    }

    // --- the registry ---------------------------------------------------------------------

    /// Counts calls; sleeps `delay` when called.
    struct Probe {
        spec: ToolSpec,
        calls: AtomicUsize,
        delay: Duration,
    }

    impl Probe {
        fn new(name: &str, delay: Duration) -> Arc<Self> {
            Arc::new(Self {
                spec: ToolSpec {
                    name: name.to_owned(),
                    description: "test".to_owned(),
                    parameters: json!({
                        "type": "object",
                        "properties": {"n": {"type": "integer"}},
                        "required": ["n"],
                        "additionalProperties": false
                    }),
                },
                calls: AtomicUsize::new(0),
                delay,
            })
        }
    }

    #[async_trait]
    impl Tool for Probe {
        fn spec(&self) -> &ToolSpec {
            &self.spec
        }
        async fn call(&self, args: Value, _ctx: &ToolCallContext) -> Result<Value, ToolError> {
            self.calls.fetch_add(1, Ordering::SeqCst);
            tokio::time::sleep(self.delay).await;
            Ok(json!({"got": args["n"]}))
        }
    }

    #[tokio::test]
    async fn registry_validates_first_then_runs_under_the_timeout() {
        let reg = ToolRegistry::new();
        let fast = Probe::new("fast", Duration::ZERO);
        let slow = Probe::new("slow", Duration::from_secs(60));
        reg.register(fast.clone(), Duration::from_secs(5))
            .expect("register fast");
        reg.register(slow.clone(), Duration::from_millis(20))
            .expect("register slow");
        assert_eq!(
            reg.register(Probe::new("fast", Duration::ZERO), Duration::from_secs(1)),
            Err(RegisterError::Duplicate("fast".to_owned()))
        );
        assert_eq!(
            reg.register(
                Probe::new("no spaces", Duration::ZERO),
                Duration::from_secs(1)
            ),
            Err(RegisterError::BadName("no spaces".to_owned()))
        );
        let names: Vec<String> = reg.specs().into_iter().map(|s| s.name).collect();
        assert_eq!(names, ["fast", "slow"]);
        assert_eq!(
            reg.names(),
            HashSet::from(["fast".to_owned(), "slow".to_owned()])
        );

        let ctx = ToolCallContext::default();
        assert_eq!(
            reg.call("fast", json!({"n": 7}), &ctx).await,
            Ok(json!({"got": 7}))
        );
        assert_eq!(
            reg.call("fast", json!({"n": "7"}), &ctx).await,
            Err(ToolError::InvalidArguments(
                "field `n`: expected integer, got a string".to_owned()
            ))
        );
        assert_eq!(
            fast.calls.load(Ordering::SeqCst),
            1,
            "invalid call never ran"
        );
        assert_eq!(
            reg.call("missing", json!({}), &ctx).await,
            Err(ToolError::UnknownTool("missing".to_owned()))
        );
        assert_eq!(
            reg.call("slow", json!({"n": 1}), &ctx).await,
            Err(ToolError::Timeout(Duration::from_millis(20)))
        );
        assert_eq!(slow.calls.load(Ordering::SeqCst), 1);
    }

    // --- current_time ---------------------------------------------------------------------

    #[test]
    fn rfc3339_formats_known_instants() {
        fn check(ms: i64, expected: &str) {
            assert_eq!(rfc3339_ms(ms), expected, "{ms}");
        }
        check(0, "1970-01-01T00:00:00.000Z");
        check(951_782_400_000, "2000-02-29T00:00:00.000Z");
        check(1_709_251_199_999, "2024-02-29T23:59:59.999Z");
        check(4_102_444_800_000, "2100-01-01T00:00:00.000Z");
        check(-1, "1969-12-31T23:59:59.999Z");
    }

    #[tokio::test]
    async fn current_time_returns_utc_and_unix_ms() {
        let before = now_ms();
        let reg = ToolRegistry::new();
        reg.register(Arc::new(CurrentTime::new()), Duration::from_secs(1))
            .expect("register");
        let out = reg
            .call("current_time", json!({}), &ToolCallContext::default())
            .await
            .expect("call");
        let ms = out["unix_ms"].as_i64().expect("unix_ms is an integer");
        assert!(ms >= before && ms <= now_ms(), "{out}");
        assert_eq!(out["utc"], json!(rfc3339_ms(ms)));
        let utc = out["utc"].as_str().expect("utc is a string");
        assert_eq!(utc.len(), "2024-02-29T23:59:59.999Z".len(), "{utc}");
        assert!(utc.ends_with('Z') && utc.as_bytes()[10] == b'T', "{utc}");
        assert_eq!(
            reg.call(
                "current_time",
                json!({"tz": "UTC"}),
                &ToolCallContext::default()
            )
            .await,
            Err(ToolError::InvalidArguments(
                "field `tz` is not allowed (this tool takes no arguments)".to_owned()
            ))
        );
    }

    // --- http_get -------------------------------------------------------------------------

    /// A local server: `/small`, `/big` (1 MiB of `a`), `/same` (redirect to `/small`), and
    /// `/away` (redirect to `localhost`).
    async fn web() -> (std::net::SocketAddr, tokio::task::JoinHandle<()>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let app = Router::new()
            .route("/small", get(|| async { "hello" }))
            .route("/big", get(|| async { "a".repeat(1 << 20) }))
            .route("/utf8", get(|| async { "éé" }))
            .route("/same", get(|| async { Redirect::temporary("/small") }))
            .route(
                "/away",
                get(move || async move {
                    Redirect::temporary(&format!("http://localhost:{}/small", addr.port()))
                        .into_response()
                }),
            );
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        (addr, task)
    }

    async fn get_url(tool: &HttpGet, url: &str) -> Result<Value, ToolError> {
        tool.call(json!({"url": url}), &ToolCallContext::default())
            .await
    }

    #[tokio::test]
    async fn http_get_refuses_hosts_off_the_allowlist_and_denies_by_default() {
        let (addr, _server) = web().await;
        let url = format!("http://{addr}/small");
        let none = HttpGet::new(&[], DEFAULT_HTTP_MAX_BYTES, Duration::from_secs(5)).expect("tool");
        let err = get_url(&none, &url).await.expect_err("empty list denies");
        assert!(
            matches!(&err, ToolError::NotAllowed(m) if m.contains("`127.0.0.1`") && m.contains("`[tools] http_allowlist` is empty")),
            "{err}"
        );
        let other = HttpGet::new(
            &["example.com".to_owned(), "*.example.org".to_owned()],
            DEFAULT_HTTP_MAX_BYTES,
            Duration::from_secs(5),
        )
        .expect("tool");
        let err = get_url(&other, &url).await.expect_err("not listed");
        assert_eq!(
            err,
            ToolError::NotAllowed(
                "host `127.0.0.1` is not on the allowlist `[tools] http_allowlist`".to_owned()
            )
        );
        assert!(other.allows("EXAMPLE.com."));
        assert!(other.allows("api.example.org"));
        assert!(!other.allows("example.org"));
        assert!(!other.allows("badexample.org"));
        assert!(!other.allows("example.com.evil.net"));
        let err = get_url(&other, "file:///etc/passwd")
            .await
            .expect_err("scheme");
        assert!(
            matches!(&err, ToolError::NotAllowed(m) if m.contains("`file`")),
            "{err}"
        );
        let err = get_url(&other, "not a url").await.expect_err("url");
        assert!(
            matches!(&err, ToolError::InvalidArguments(m) if m.contains("field `url`")),
            "{err}"
        );

        let err = HttpGet::new(
            &[
                "https://example.com/".to_owned(),
                "ok.com".to_owned(),
                "*".to_owned(),
            ],
            1,
            Duration::from_secs(1),
        )
        .err()
        .expect("malformed entries are refused");
        assert!(
            err.starts_with("`https://example.com/`, `*` are not a host name"),
            "{err}"
        );
    }

    #[tokio::test]
    async fn http_get_caps_the_body_and_marks_it_truncated() {
        let (addr, _server) = web().await;
        let tool =
            HttpGet::new(&["127.0.0.1".to_owned()], 1000, Duration::from_secs(5)).expect("tool");
        let small = get_url(&tool, &format!("http://{addr}/small"))
            .await
            .expect("small");
        assert_eq!(small["status"], 200);
        assert_eq!(small["body"], "hello");
        assert_eq!(small["truncated"], false);
        assert!(
            small["content_type"]
                .as_str()
                .is_some_and(|c| c.starts_with("text/plain"))
        );

        let big = get_url(&tool, &format!("http://{addr}/big"))
            .await
            .expect("big");
        assert_eq!(big["status"], 200);
        assert_eq!(big["truncated"], true);
        assert_eq!(big["body"], "a".repeat(1000));

        let exact =
            HttpGet::new(&["127.0.0.1".to_owned()], 5, Duration::from_secs(5)).expect("tool");
        let at_cap = get_url(&exact, &format!("http://{addr}/small"))
            .await
            .expect("at cap");
        assert_eq!(
            (at_cap["body"].clone(), at_cap["truncated"].clone()),
            (json!("hello"), json!(false))
        );

        let cut = HttpGet::new(&["127.0.0.1".to_owned()], 3, Duration::from_secs(5)).expect("tool");
        let utf8 = get_url(&cut, &format!("http://{addr}/utf8"))
            .await
            .expect("utf8");
        assert_eq!(utf8["body"], "é", "a character cut in half is dropped");
        assert_eq!(utf8["truncated"], true);
    }

    #[tokio::test]
    async fn http_get_follows_redirects_only_to_the_same_host() {
        let (addr, _server) = web().await;
        let tool = HttpGet::new(
            &["127.0.0.1".to_owned(), "localhost".to_owned()],
            DEFAULT_HTTP_MAX_BYTES,
            Duration::from_secs(5),
        )
        .expect("tool");
        let same = get_url(&tool, &format!("http://{addr}/same"))
            .await
            .expect("same host");
        assert_eq!(same["body"], "hello");
        let err = get_url(&tool, &format!("http://{addr}/away"))
            .await
            .expect_err("another host");
        assert!(
            matches!(&err, ToolError::NotAllowed(m) if m.contains("redirect to another host `localhost` refused")),
            "{err}"
        );
    }

    // --- send_message and run_workflow ----------------------------------------------------

    #[derive(Default)]
    struct Sink(Mutex<Vec<(MessageTarget, String)>>);

    #[async_trait]
    impl OutboxSink for Sink {
        async fn send(&self, target: MessageTarget, text: String) -> Result<i64, String> {
            let mut sent = self.0.lock().map_err(|e| e.to_string())?;
            if text == "fail" {
                return Err("the store is closed".to_owned());
            }
            sent.push((target, text));
            i64::try_from(sent.len()).map_err(|e| e.to_string())
        }
    }

    #[tokio::test]
    async fn send_message_goes_to_the_outbox_for_a_user_or_a_chat() {
        let sink = Arc::new(Sink::default());
        let reg = ToolRegistry::new();
        reg.register(
            Arc::new(SendMessage::new(
                sink.clone(),
                vec!["webchat", "http", "telegram", "discord"],
            )),
            Duration::from_secs(1),
        )
        .expect("register");
        let ctx = ToolCallContext::default();
        let send = |args: Value| {
            let reg = reg.clone();
            let ctx = ctx.clone();
            async move { reg.call("send_message", args, &ctx).await }
        };
        assert_eq!(
            send(json!({"text": "hi", "user_id": 3})).await,
            Ok(json!({"outbox_id": 1, "status": "queued"}))
        );
        assert_eq!(
            send(json!({"text": "yo", "channel": "telegram", "chat_id": "42"})).await,
            Ok(json!({"outbox_id": 2, "status": "queued"}))
        );
        let refused = [
            (
                json!({"text": "x"}),
                "give `user_id`, or `channel` and `chat_id`",
            ),
            (
                json!({"text": "x", "user_id": 1, "chat_id": "1"}),
                "not both",
            ),
            (
                json!({"text": "x", "channel": "discord"}),
                "field `chat_id` is required with `channel`",
            ),
            (
                json!({"text": "x", "chat_id": "1"}),
                "field `channel` is required with `chat_id`",
            ),
            (
                json!({"text": "x", "channel": "irc", "chat_id": "1"}),
                "field `channel`: must be one of",
            ),
            (
                json!({"text": "", "user_id": 1}),
                "field `text`: must be at least 1 characters long",
            ),
            (json!({"user_id": 1}), "field `text` is required"),
        ];
        for (args, want) in refused {
            let got = send(args.clone()).await;
            assert!(
                matches!(&got, Err(ToolError::InvalidArguments(m)) if m.contains(want)),
                "{args}: {got:?}"
            );
        }
        assert_eq!(
            send(json!({"text": "fail", "user_id": 1})).await,
            Err(ToolError::Failed("the store is closed".to_owned()))
        );
        let sent = sink.0.lock().expect("lock").clone();
        assert_eq!(
            sent,
            [
                (MessageTarget::User(3), "hi".to_owned()),
                (
                    MessageTarget::Chat {
                        channel: ChannelKind::new("telegram"),
                        chat_id: "42".to_owned()
                    },
                    "yo".to_owned()
                ),
            ]
        );
    }

    #[derive(Default)]
    struct Runner(Mutex<Vec<(String, Value, ToolCallContext)>>);

    #[async_trait]
    impl WorkflowRunner for Runner {
        async fn start(
            &self,
            name: &str,
            inputs: Value,
            ctx: &ToolCallContext,
        ) -> Result<String, String> {
            if name != "digest" {
                return Err(format!("unknown workflow `{name}`"));
            }
            let mut runs = self.0.lock().map_err(|e| e.to_string())?;
            runs.push((name.to_owned(), inputs, ctx.clone()));
            Ok(format!("run-{}", runs.len()))
        }
    }

    #[tokio::test]
    async fn run_workflow_starts_a_run_with_inputs_and_context() {
        let runner = Arc::new(Runner::default());
        let reg = ToolRegistry::new();
        reg.register(
            Arc::new(RunWorkflow::new(runner.clone())),
            Duration::from_secs(1),
        )
        .expect("register");
        let ctx = ToolCallContext {
            session: Some(SessionKey::User(9)),
            origin: Some((ChannelKind::new("webchat"), "c1".to_owned())),
            user: Some(9),
        };
        assert_eq!(
            reg.call(
                "run_workflow",
                json!({"name": "digest", "inputs": {"topic": "rust"}}),
                &ctx
            )
            .await,
            Ok(json!({"run_id": "run-1", "status": "started"}))
        );
        assert_eq!(
            reg.call("run_workflow", json!({"name": "digest"}), &ctx)
                .await,
            Ok(json!({"run_id": "run-2", "status": "started"}))
        );
        assert_eq!(
            reg.call("run_workflow", json!({"name": "nope"}), &ctx)
                .await,
            Err(ToolError::Failed("unknown workflow `nope`".to_owned()))
        );
        assert!(matches!(
            reg.call("run_workflow", json!({"name": "digest", "inputs": [1]}), &ctx).await,
            Err(ToolError::InvalidArguments(m)) if m == "field `inputs`: expected object, got an array"
        ));
        let runs = runner.0.lock().expect("lock").clone();
        assert_eq!(
            runs,
            [
                ("digest".to_owned(), json!({"topic": "rust"}), ctx.clone()),
                ("digest".to_owned(), json!({}), ctx.clone()),
            ]
        );
    }
}
