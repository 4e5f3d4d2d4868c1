//! The rhai sandbox that runs `code` nodes, `condition` expressions and `foreach` code steps.
//!
//! A [`Sandbox`] compiles and runs scripts under hard [`Limits`]: operations, call depth,
//! expression depth, string, array and map sizes, and wall time (checked from
//! `Engine::on_progress` against a deadline, so a busy loop stops even when its operation budget
//! is huge). The engine is built raw with only the pure standard packages: it has no module
//! resolver (so `import` cannot read files), no file, network or process functions, `eval` is
//! disabled, and `print`/`debug` go to tracing instead of stdout. Variables are strict: a script
//! sees `inputs` and `nodes` (and `item`/`index` in a foreach step) and nothing else, and a
//! misspelled variable is a compile error. Reading a map property that does not exist is an
//! error too, so a typo in `nodes.fetch.outptu` fails loudly instead of yielding `()`.
//!
//! Values cross the boundary as JSON: [`to_dynamic`] and [`from_dynamic`] convert by hand
//! (rhai's `serde` feature is not enabled). Running a script blocks the calling thread for up to
//! [`Limits::wall_time`]; async callers run it on a blocking thread.

use std::time::{Duration, Instant};

use rhai::packages::{Package, StandardPackage};
use rhai::{AST, Dynamic, Engine, EvalAltResult, ParseError, Position, Scope};
use serde_json::Value;

/// The resource limits every script runs under.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Operations (rhai's unit of work) one run may perform.
    pub max_operations: u64,
    /// Nested function calls, which bounds recursion.
    pub max_call_depth: usize,
    /// Nesting of expressions, checked when compiling.
    pub max_expr_depth: usize,
    /// Bytes in any one string a script builds.
    pub max_string_size: usize,
    /// Elements in any one array.
    pub max_array_size: usize,
    /// Entries in any one object map.
    pub max_map_size: usize,
    /// How long one run may take, whatever its operation count.
    pub wall_time: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_operations: 100_000,
            max_call_depth: 32,
            max_expr_depth: 64,
            max_string_size: 64 * 1024,
            max_array_size: 10_000,
            max_map_size: 10_000,
            wall_time: Duration::from_secs(1),
        }
    }
}

/// Why a script did not compile, did not finish, or returned something unusable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScriptError {
    /// The source does not parse (or nests expressions deeper than the limit).
    #[error("syntax error{}: {message}", at(*line, *position))]
    Syntax {
        /// 1-based line, where known.
        line: Option<usize>,
        /// 1-based column, where known.
        position: Option<usize>,
        /// What is wrong.
        message: String,
    },
    /// The operation budget ran out.
    #[error("script exceeded {0} operations")]
    TooManyOperations(u64),
    /// The wall-time budget ran out.
    #[error("script ran longer than {}", human(*.0))]
    WallTime(Duration),
    /// Function calls nested deeper than the limit (usually runaway recursion).
    #[error("script exceeded the call depth of {limit}{}", at(*line, None))]
    CallDepth {
        /// The limit that was hit.
        limit: usize,
        /// 1-based line of the call that went too deep, where known.
        line: Option<usize>,
    },
    /// A string, array or map grew past its limit.
    #[error("script exceeded the {what} limit of {limit}")]
    TooLarge {
        /// `string size (bytes)`, `array size` or `map size`.
        what: &'static str,
        /// The limit that was hit.
        limit: usize,
    },
    /// The script failed at run time (a thrown error, a type mismatch, a missing property…).
    #[error("script error{}: {message}", at(*line, *position))]
    Runtime {
        /// 1-based line, where known.
        line: Option<usize>,
        /// 1-based column, where known.
        position: Option<usize>,
        /// What went wrong.
        message: String,
    },
    /// A condition yielded something other than a boolean.
    #[error("condition yielded {0}, not a boolean")]
    NotBool(String),
    /// The script returned a value that has no JSON form (a function pointer, a timestamp…).
    #[error("script returned {0}, which cannot be turned into JSON")]
    NotJson(String),
}

fn at(line: Option<usize>, position: Option<usize>) -> String {
    match (line, position) {
        (Some(l), Some(p)) => format!(" at line {l}, position {p}"),
        (Some(l), None) => format!(" at line {l}"),
        _ => String::new(),
    }
}

/// `1s`, `250ms`: how limits are written in config.
fn human(d: Duration) -> String {
    let ms = d.as_millis();
    if ms.is_multiple_of(1000) {
        format!("{}s", ms / 1000)
    } else {
        format!("{ms}ms")
    }
}

/// What the wall-time callback hands back to rhai when it stops a run.
const WALL_TIME_TOKEN: &str = "gatewayd: wall time exceeded";

/// A factory of locked-down rhai engines. Cheap to share; every run builds its own engine so
/// concurrent runs have independent deadlines.
pub struct Sandbox {
    limits: Limits,
    std: rhai::Shared<rhai::Module>,
    compiler: Engine,
}

impl std::fmt::Debug for Sandbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sandbox")
            .field("limits", &self.limits)
            .finish_non_exhaustive()
    }
}

impl Default for Sandbox {
    fn default() -> Self {
        Self::new(Limits::default())
    }
}

/// The variables a script may read, declared when compiling.
const VARS: &[&str] = &["inputs", "nodes"];
/// The variables a foreach `do` step may read.
const ITEM_VARS: &[&str] = &["inputs", "nodes", "item", "index"];

impl Sandbox {
    /// A sandbox enforcing `limits`.
    pub fn new(limits: Limits) -> Self {
        let std = StandardPackage::new().as_shared_module();
        let compiler = build_engine(&limits, &std, None);
        Self {
            limits,
            std,
            compiler,
        }
    }

    /// The limits this sandbox enforces.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Compiles a script that reads `inputs` and `nodes`.
    pub fn compile(&self, src: &str) -> Result<AST, ScriptError> {
        self.compile_with(src, VARS)
    }

    /// Compiles a foreach `do` step, which may also read `item` and `index`.
    pub fn compile_item(&self, src: &str) -> Result<AST, ScriptError> {
        self.compile_with(src, ITEM_VARS)
    }

    fn compile_with(&self, src: &str, vars: &[&str]) -> Result<AST, ScriptError> {
        let mut scope = Scope::new();
        for var in vars {
            // Not constants: the optimizer would fold these placeholders into the script.
            scope.push_dynamic(*var, Dynamic::UNIT);
        }
        self.compiler
            .compile_with_scope(&scope, src)
            .map_err(syntax_error)
    }

    /// Runs `ast` with `inputs` (an object) and `nodes` (upstream id → `{ "output": … }`) and
    /// returns the script's value as JSON.
    pub fn run(&self, ast: &AST, inputs: &Value, nodes: &Value) -> Result<Value, ScriptError> {
        let out = self.eval(ast, inputs, nodes, None)?;
        from_dynamic(out)
    }

    /// Runs a foreach `do` step for one `item` at `index`.
    pub fn run_item(
        &self,
        ast: &AST,
        inputs: &Value,
        nodes: &Value,
        item: &Value,
        index: usize,
    ) -> Result<Value, ScriptError> {
        let out = self.eval(ast, inputs, nodes, Some((item, index)))?;
        from_dynamic(out)
    }

    /// Runs a condition; anything but a boolean is an error.
    pub fn eval_bool(&self, ast: &AST, inputs: &Value, nodes: &Value) -> Result<bool, ScriptError> {
        let out = self.eval(ast, inputs, nodes, None)?;
        out.as_bool()
            .map_err(|type_name| ScriptError::NotBool(type_name.to_owned()))
    }

    fn eval(
        &self,
        ast: &AST,
        inputs: &Value,
        nodes: &Value,
        item: Option<(&Value, usize)>,
    ) -> Result<Dynamic, ScriptError> {
        let mut scope = Scope::new();
        scope.push_dynamic("inputs", to_dynamic(inputs));
        scope.push_dynamic("nodes", to_dynamic(nodes));
        if let Some((item, index)) = item {
            scope.push_dynamic("item", to_dynamic(item));
            scope.push_dynamic("index", Dynamic::from_int(saturating_int(index)));
        }
        let deadline = Instant::now() + self.limits.wall_time;
        let engine = build_engine(&self.limits, &self.std, Some(deadline));
        engine
            .eval_ast_with_scope::<Dynamic>(&mut scope, ast)
            .map_err(|e| self.runtime_error(*e))
    }

    fn runtime_error(&self, err: EvalAltResult) -> ScriptError {
        let err = root_cause(err);
        let (line, position) = split(err.position());
        match err {
            EvalAltResult::ErrorTooManyOperations(_) => {
                ScriptError::TooManyOperations(self.limits.max_operations)
            }
            EvalAltResult::ErrorTerminated(token, _)
                if token.clone().into_string().ok().as_deref() == Some(WALL_TIME_TOKEN) =>
            {
                ScriptError::WallTime(self.limits.wall_time)
            }
            EvalAltResult::ErrorStackOverflow(_) => ScriptError::CallDepth {
                limit: self.limits.max_call_depth,
                line,
            },
            EvalAltResult::ErrorDataTooLarge(what, _) => {
                let (what, limit) = if what.contains("string") {
                    ("string size (bytes)", self.limits.max_string_size)
                } else if what.contains("array") {
                    ("array size", self.limits.max_array_size)
                } else {
                    ("map size", self.limits.max_map_size)
                };
                ScriptError::TooLarge { what, limit }
            }
            other => ScriptError::Runtime {
                line,
                position,
                message: describe(&other),
            },
        }
    }
}

/// Builds an engine with the pure standard library and every limit set. With a `deadline`, the
/// progress callback stops the run once it is passed.
fn build_engine(
    limits: &Limits,
    std: &rhai::Shared<rhai::Module>,
    deadline: Option<Instant>,
) -> Engine {
    let mut engine = Engine::new_raw();
    engine.register_global_module(std.clone());
    engine
        .set_max_operations(limits.max_operations)
        .set_max_call_levels(limits.max_call_depth)
        .set_max_expr_depths(limits.max_expr_depth, limits.max_expr_depth)
        .set_max_string_size(limits.max_string_size)
        .set_max_array_size(limits.max_array_size)
        .set_max_map_size(limits.max_map_size)
        .set_max_modules(0)
        .set_strict_variables(true)
        .set_fail_on_invalid_map_property(true);
    engine.disable_symbol("eval");
    engine.disable_symbol("import");
    engine.on_print(|text| tracing::debug!(message = "Script printed.", text));
    engine.on_debug(|text, _source, pos| {
        tracing::debug!(message = "Script debug.", text, position = %pos);
    });
    if let Some(deadline) = deadline {
        engine.on_progress(move |ops| {
            // Reading the clock every operation would dominate small scripts.
            if ops.is_multiple_of(64) && Instant::now() >= deadline {
                Some(Dynamic::from(WALL_TIME_TOKEN))
            } else {
                None
            }
        });
    }
    engine
}

/// Errors raised inside a function call arrive wrapped; the limit that was hit is inside.
fn root_cause(mut err: EvalAltResult) -> EvalAltResult {
    loop {
        match err {
            EvalAltResult::ErrorInFunctionCall(_, _, inner, _)
            | EvalAltResult::ErrorInModule(_, inner, _) => err = *inner,
            other => return other,
        }
    }
}

fn describe(err: &EvalAltResult) -> String {
    // rhai's Display appends the position; we report it separately.
    let text = err.to_string();
    match text.rfind(" (line ") {
        Some(i) if text.ends_with(')') => text[..i].to_owned(),
        _ => text,
    }
}

fn split(pos: Position) -> (Option<usize>, Option<usize>) {
    (pos.line(), pos.position())
}

fn syntax_error(err: ParseError) -> ScriptError {
    let (line, position) = split(err.position());
    ScriptError::Syntax {
        line,
        position,
        message: err.err_type().to_string(),
    }
}

fn saturating_int(n: usize) -> rhai::INT {
    rhai::INT::try_from(n).unwrap_or(rhai::INT::MAX)
}

/// Converts JSON into a rhai value: `null` → `()`, numbers → integer when whole and in range,
/// otherwise float; arrays and objects recursively.
pub fn to_dynamic(value: &Value) -> Dynamic {
    match value {
        Value::Null => Dynamic::UNIT,
        Value::Bool(b) => Dynamic::from_bool(*b),
        Value::Number(n) => match n.as_i64() {
            Some(i) => Dynamic::from_int(i),
            None => Dynamic::from_float(n.as_f64().unwrap_or(f64::NAN)),
        },
        Value::String(s) => Dynamic::from(s.clone()),
        Value::Array(items) => Dynamic::from_array(items.iter().map(to_dynamic).collect()),
        Value::Object(map) => Dynamic::from_map(
            map.iter()
                .map(|(k, v)| (k.as_str().into(), to_dynamic(v)))
                .collect(),
        ),
    }
}

/// Converts a rhai value back into JSON. Characters become strings and blobs arrays of bytes;
/// a float that is not finite becomes `null`; other types (function pointers, timestamps,
/// custom types) are an error.
pub fn from_dynamic(value: Dynamic) -> Result<Value, ScriptError> {
    let value = value.flatten();
    if value.is_unit() {
        return Ok(Value::Null);
    }
    if let Ok(b) = value.as_bool() {
        return Ok(Value::Bool(b));
    }
    if let Ok(i) = value.as_int() {
        return Ok(Value::from(i));
    }
    if let Ok(f) = value.as_float() {
        return Ok(serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number));
    }
    if let Ok(c) = value.as_char() {
        return Ok(Value::String(c.to_string()));
    }
    if value.is_string() {
        return value
            .into_string()
            .map(Value::String)
            .map_err(|t| ScriptError::NotJson(t.to_owned()));
    }
    if value.is_array() {
        let items = value
            .into_array()
            .map_err(|t| ScriptError::NotJson(t.to_owned()))?;
        return items
            .into_iter()
            .map(from_dynamic)
            .collect::<Result<Vec<_>, _>>()
            .map(Value::Array);
    }
    if value.is_blob() {
        let bytes = value
            .into_blob()
            .map_err(|t| ScriptError::NotJson(t.to_owned()))?;
        return Ok(Value::Array(bytes.into_iter().map(Value::from).collect()));
    }
    if value.is_map() {
        let type_name = value.type_name().to_owned();
        let map = value
            .try_cast::<rhai::Map>()
            .ok_or(ScriptError::NotJson(type_name))?;
        let mut out = serde_json::Map::with_capacity(map.len());
        for (k, v) in map {
            out.insert(k.to_string(), from_dynamic(v)?);
        }
        return Ok(Value::Object(out));
    }
    Err(ScriptError::NotJson(value.type_name().to_owned()))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn run(src: &str) -> Result<Value, ScriptError> {
        run_with(&Sandbox::default(), src)
    }

    fn run_with(sandbox: &Sandbox, src: &str) -> Result<Value, ScriptError> {
        let ast = sandbox.compile(src)?;
        sandbox.run(&ast, &json!({}), &json!({}))
    }

    #[test]
    fn reads_inputs_and_upstream_outputs() {
        let sandbox = Sandbox::default();
        let ast = sandbox
            .compile(r#"#{ title: inputs.x + "!", n: nodes.fetch.output.len(), first: nodes.fetch.output[0].id }"#)
            .expect("compiles");
        let out = sandbox
            .run(
                &ast,
                &json!({ "x": "hi" }),
                &json!({ "fetch": { "output": [{ "id": 7 }, { "id": 8 }] } }),
            )
            .expect("runs");
        assert_eq!(out, json!({ "title": "hi!", "n": 2, "first": 7 }));
    }

    #[test]
    fn json_round_trips() {
        let value = json!({ "s": "x", "i": -3, "f": 1.5, "b": true, "n": null, "a": [1, [2], {}] });
        let back = from_dynamic(to_dynamic(&value)).expect("convertible");
        assert_eq!(back, value);
    }

    #[test]
    fn conditions_must_yield_booleans() {
        let sandbox = Sandbox::default();
        let nodes = json!({ "classify": { "output": "URGENT" } });
        let yes = sandbox
            .compile(r#"nodes.classify.output.to_lower().contains("urgent")"#)
            .expect("compiles");
        assert_eq!(sandbox.eval_bool(&yes, &json!({}), &nodes), Ok(true));
        let not_bool = sandbox.compile("42").expect("compiles");
        assert_eq!(
            sandbox.eval_bool(&not_bool, &json!({}), &nodes),
            Err(ScriptError::NotBool("i64".into()))
        );
    }

    #[test]
    fn foreach_steps_see_item_and_index() {
        let sandbox = Sandbox::default();
        let ast = sandbox
            .compile_item("`${index}: ${item}`")
            .expect("compiles");
        let out = sandbox.run_item(&ast, &json!({}), &json!({}), &json!("x"), 3);
        assert_eq!(out, Ok(json!("3: x")));
        assert!(
            sandbox.compile("item").is_err(),
            "outside foreach, `item` is unknown"
        );
    }

    #[test]
    fn an_infinite_loop_is_stopped_by_the_operation_limit() {
        let err = run("loop { }").expect_err("must stop");
        assert_eq!(err, ScriptError::TooManyOperations(100_000));
        assert_eq!(err.to_string(), "script exceeded 100000 operations");
    }

    #[test]
    fn deep_recursion_is_stopped_by_the_call_depth() {
        let err = run("fn down(n) { down(n + 1) } down(0)").expect_err("must stop");
        assert!(
            matches!(err, ScriptError::CallDepth { limit: 32, .. }),
            "{err:?}"
        );
        assert!(err.to_string().contains("call depth of 32"), "{err}");
    }

    #[test]
    fn deeply_nested_expressions_do_not_compile() {
        let src = format!("{}1{}", "(".repeat(200), ")".repeat(200));
        let err = Sandbox::default().compile(&src).expect_err("too deep");
        assert!(matches!(err, ScriptError::Syntax { .. }), "{err:?}");
    }

    #[test]
    fn a_huge_string_is_stopped_by_the_size_limit() {
        // A generous wall time, so a busy machine cannot make the clock stop the script before
        // the size limit does (10,000 pushes take a while in a debug build).
        let sandbox = Sandbox::new(Limits {
            wall_time: Duration::from_secs(30),
            ..Limits::default()
        });
        let run = |src: &str| run_with(&sandbox, src);
        let err = run(r#"let s = "x"; loop { s += s; }"#).expect_err("must stop");
        assert_eq!(
            err,
            ScriptError::TooLarge {
                what: "string size (bytes)",
                limit: 65536
            }
        );
        let err = run("let a = []; loop { a.push(1); }").expect_err("must stop");
        assert!(
            matches!(
                err,
                ScriptError::TooLarge {
                    what: "array size",
                    ..
                } | ScriptError::TooManyOperations(_)
            ),
            "{err:?}"
        );
    }

    #[test]
    fn a_big_array_is_stopped_by_the_size_limit() {
        let sandbox = Sandbox::new(Limits {
            max_operations: 10_000_000,
            max_array_size: 100,
            ..Limits::default()
        });
        let err = run_with(&sandbox, "let a = []; loop { a.push(1); }").expect_err("must stop");
        assert_eq!(
            err,
            ScriptError::TooLarge {
                what: "array size",
                limit: 100
            }
        );
    }

    #[test]
    fn a_busy_loop_is_stopped_by_the_wall_time_limit() {
        let sandbox = Sandbox::new(Limits {
            max_operations: u64::MAX,
            wall_time: Duration::from_millis(50),
            ..Limits::default()
        });
        let started = Instant::now();
        let err = run_with(&sandbox, "let n = 0; loop { n += 1; }").expect_err("must stop");
        assert_eq!(err, ScriptError::WallTime(Duration::from_millis(50)));
        assert_eq!(err.to_string(), "script ran longer than 50ms");
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "stopped promptly"
        );
        assert_eq!(
            ScriptError::WallTime(Duration::from_secs(1)).to_string(),
            "script ran longer than 1s"
        );
    }

    #[test]
    fn eval_is_refused() {
        let err = run(r#"eval("1")"#).expect_err("eval is disabled");
        assert!(matches!(err, ScriptError::Syntax { .. }), "{err:?}");
    }

    #[test]
    fn no_file_network_or_process_functions_exist() {
        for src in [
            r#"open("/etc/passwd")"#,
            r#"read_file("/etc/passwd")"#,
            r#"File::open("/etc/passwd")"#,
            r#"system("ls")"#,
            r#"http_get("http://example.com")"#,
            r#"import "os" as os;"#,
        ] {
            assert!(run(src).is_err(), "{src} must fail");
        }
    }

    #[test]
    fn print_does_not_write_to_stdout_and_returns_unit() {
        assert_eq!(run(r#"print("hello"); debug(1); 5"#), Ok(json!(5)));
    }

    #[test]
    fn syntax_errors_carry_line_and_position() {
        let err = Sandbox::default()
            .compile("let x = 1;\nlet = 2;")
            .expect_err("bad syntax");
        match err {
            ScriptError::Syntax { line, position, .. } => {
                assert_eq!(line, Some(2));
                assert!(position.is_some());
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn misspelled_variables_and_properties_fail() {
        assert!(Sandbox::default().compile("input.x").is_err());
        let sandbox = Sandbox::default();
        let ast = sandbox.compile("nodes.fetch.outptu").expect("compiles");
        let err = sandbox
            .run(&ast, &json!({}), &json!({ "fetch": { "output": 1 } }))
            .expect_err("missing property");
        assert!(
            matches!(err, ScriptError::Runtime { line: Some(1), .. }),
            "{err:?}"
        );
    }

    #[test]
    fn values_without_json_form_are_an_error() {
        let err = run("|x| x + 1").expect_err("closures are not JSON");
        assert!(matches!(err, ScriptError::NotJson(_)), "{err:?}");
        assert_eq!(run("1.0 / 0.0"), Ok(Value::Null));
        assert_eq!(run("'c'"), Ok(json!("c")));
    }
}
