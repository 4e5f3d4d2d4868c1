//! Workflows end to end, through the real `gatewayd` and `gatewayctl` binaries: the two example
//! workflows against the fake LLM (a chat-triggered triage with one branch skipped, a daily
//! report fetching from a local server), `gatewayctl workflows` and `gatewayctl runs` in table
//! and JSON output (load errors, validation, the DAG of a run, the event stream), a run started
//! by the agent's `run_workflow` tool, a run that resumes after SIGKILL without re-running its
//! finished nodes, and a failing node failing its run (reported back to the chat that asked).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::process::Stdio;
use std::sync::{Arc, Mutex, PoisonError};

use axum::Router;
use axum::extract::State;
use axum::http::Uri;
use gateway_tests::gateway::toml_string;
use gateway_tests::{
    FakeCallback, FakeOpenAi, Gateway, GatewayOptions, TIMEOUT, gatewayctl_bin, last_user_content,
    poll_until_async,
};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;
use tokio::sync::{Notify, watch};

// ---- gatewayctl ------------------------------------------------------------------------------

/// What one `gatewayctl` run printed and how it ended.
#[derive(Debug)]
struct Ctl {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

impl Ctl {
    /// Its stdout as one JSON document, after checking it succeeded.
    fn json(&self) -> Value {
        assert_eq!(self.code, Some(0), "gatewayctl failed: {self:#?}");
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("gatewayctl printed no JSON document ({e}): {self:#?}"))
    }

    /// Its stdout, after checking it succeeded with nothing on stderr.
    fn table(&self) -> &str {
        assert_eq!(self.code, Some(0), "gatewayctl failed: {self:#?}");
        assert!(
            self.stderr.is_empty(),
            "gatewayctl wrote to stderr: {self:#?}"
        );
        &self.stdout
    }
}

/// Runs `gatewayctl --addr <gw's admin API> ARGS…` with a clean environment.
async fn ctl(gw: &Gateway, args: &[&str]) -> Ctl {
    let mut cmd = Command::new(gatewayctl_bin());
    cmd.arg("--addr")
        .arg(gw.admin_url())
        .args(args)
        .env_remove("GATEWAYCTL_ADDR")
        .env_remove("GATEWAYCTL_TOKEN")
        .stdin(Stdio::null())
        .kill_on_drop(true);
    let out = tokio::time::timeout(TIMEOUT, cmd.output())
        .await
        .unwrap_or_else(|_| panic!("gatewayctl {args:?} did not finish within {TIMEOUT:?}"))
        .expect("gatewayctl ran");
    Ctl {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// `gatewayctl --output json ARGS…`, expected to succeed; its JSON document.
async fn ctl_json(gw: &Gateway, args: &[&str]) -> Value {
    let mut all = vec!["--output", "json"];
    all.extend_from_slice(args);
    ctl(gw, &all).await.json()
}

/// Asserts every line of `text` fits 80 columns.
fn fits(text: &str) {
    for line in text.lines() {
        assert!(
            line.chars().count() <= 80,
            "a line is wider than 80 columns: {line:?}\n{text}"
        );
    }
}

/// The run, with its nodes, as `gatewayctl runs show ID --output json` gives it.
async fn run_json(gw: &Gateway, id: i64) -> Value {
    ctl_json(gw, &["runs", "show", &id.to_string()]).await
}

/// Waits (polling GetRun: a run has no per-run change notification) until run `id` is in
/// `state`; returns it.
async fn wait_run(gw: &Gateway, id: i64, state: &str) -> Value {
    let polled = poll_until_async(TIMEOUT, &format!("run {id} is {state}"), || async {
        run_json(gw, id).await["state"] == state
    })
    .await;
    let run = run_json(gw, id).await;
    if let Err(e) = polled {
        panic!(
            "{e}; last seen: {run:#}\n--- gatewayd stderr ---\n{}",
            gw.stderr_tail(40)
        );
    }
    run
}

/// The node `id` of a run document.
fn node<'a>(run: &'a Value, id: &str) -> &'a Value {
    run["nodes"]
        .as_array()
        .and_then(|nodes| nodes.iter().find(|n| n["id"] == id))
        .unwrap_or_else(|| panic!("no node {id} in {run:#}"))
}

/// The line of `runs show` drawing node `id` (`✓ id  kind …`, indented by depth).
fn node_line<'a>(shown: &'a str, id: &str) -> &'a str {
    shown
        .lines()
        .find(|l| {
            let mut words = l.split_whitespace();
            matches!(words.next(), Some("✓" | "✗" | "·" | "▸" | "○")) && words.next() == Some(id)
        })
        .unwrap_or_else(|| panic!("no line for node {id} in:\n{shown}"))
}

// ---- the gateway -----------------------------------------------------------------------------

/// A temporary `[workflows] dir` holding `files` (name, text), plus copies of the examples in
/// `config/workflows/` when `examples`.
fn workflow_dir(examples: bool, files: &[(&str, String)]) -> tempfile::TempDir {
    let dir = tempfile::Builder::new()
        .prefix("workflows-")
        .tempdir()
        .expect("temp dir");
    if examples {
        let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("../config/workflows");
        for entry in std::fs::read_dir(&source).expect("config/workflows") {
            let path = entry.expect("entry").path();
            if path.extension().is_some_and(|e| e == "toml") {
                let name = path.file_name().expect("a file name");
                std::fs::copy(&path, dir.path().join(name)).expect("copy an example");
            }
        }
    }
    for (name, text) in files {
        std::fs::write(dir.path().join(name), text).expect("write a workflow");
    }
    dir
}

/// Options for a gateway with the HTTP channel to `callback`, workflows from `dir`, `http_get`
/// allowed to 127.0.0.1, and either the openai agent against `llm` or the echo agent.
fn options(dir: &Path, callback: &FakeCallback, llm: Option<&FakeOpenAi>) -> GatewayOptions {
    let agent = match llm {
        Some(llm) => format!(
            "[agent]\nprovider = \"openai\"\nbase_url = \"{}\"\nmodel = \"test-model\"\n\
             api_key_env = \"GW_TEST_KEY\"\nretry_backoff = \"20ms\"\nmax_tool_steps = 3\n\n",
            llm.base_url()
        ),
        None => String::new(),
    };
    GatewayOptions {
        extra_config: format!(
            "{agent}[channels.http]\nenabled = true\ncallback_url = \"{}\"\n\n\
             [workflows]\nenabled = true\ndir = {}\n\n\
             [tools]\nhttp_allowlist = [\"127.0.0.1\"]\ntimeout = \"60s\"\n",
            callback.url(),
            toml_string(&dir.to_string_lossy())
        ),
        env: vec![("GW_TEST_KEY".to_owned(), "sk-test".to_owned())],
        ..GatewayOptions::default()
    }
}

async fn start(opts: GatewayOptions) -> Gateway {
    Gateway::start(opts).await.expect("gatewayd starts")
}

/// Posts `text` on the HTTP channel from `chat` (also the sender) with message id `id`.
async fn post(gw: &Gateway, id: &str, chat: &str, text: &str) {
    let reply = gw
        .post_http_message(
            &json!({"message_id": id, "chat_id": chat, "sender_id": chat, "text": text}),
        )
        .await
        .expect("post");
    assert_eq!(reply.status, 202, "{}", reply.text);
}

/// Waits for a message to `chat` containing `needle`; returns its text.
async fn wait_text(gw: &Gateway, callback: &FakeCallback, chat: &str, needle: &str) -> String {
    let delivered = callback
        .wait_delivered(
            |d| {
                d.iter()
                    .any(|d| d.chat_id == chat && d.text.contains(needle))
            },
            TIMEOUT,
        )
        .await
        .unwrap_or_else(|e| {
            panic!(
                "no message to {chat} with {needle:?}: {e}\n--- gatewayd stderr ---\n{}",
                gw.stderr_tail(40)
            )
        });
    delivered
        .into_iter()
        .find(|d| d.chat_id == chat && d.text.contains(needle))
        .map(|d| d.text)
        .unwrap_or_default()
}

/// Sends `/run …` from `chat` and returns the run id from the "Started workflow" reply.
async fn run_from_chat(
    gw: &Gateway,
    callback: &FakeCallback,
    id: &str,
    chat: &str,
    command: &str,
) -> i64 {
    post(gw, id, chat, command).await;
    let started = wait_text(gw, callback, chat, "Started workflow").await;
    started
        .split("(run ")
        .nth(1)
        .and_then(|rest| rest.split(')').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no run id in {started:?}"))
}

// ---- a local web server for http_get -----------------------------------------------------------

/// Counts hits per path and answers `/a`, `/b` with fixed bodies; `/hold` waits until
/// [`Web::release`].
struct Web {
    addr: SocketAddr,
    state: Arc<WebState>,
    task: tokio::task::JoinHandle<()>,
}

struct WebState {
    hits: Mutex<HashMap<String, usize>>,
    changed: Notify,
    released: watch::Sender<bool>,
}

const BODY_A: &str = "alpha-body: Rust 1.95 is out";
const BODY_B: &str = "beta-body: a borrow checker story";

async fn answer(State(web): State<Arc<WebState>>, uri: Uri) -> String {
    let path = uri.path().to_owned();
    *web.hits
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .entry(path.clone())
        .or_default() += 1;
    web.changed.notify_waiters();
    match path.as_str() {
        "/a" => BODY_A.to_owned(),
        "/b" => BODY_B.to_owned(),
        "/hold" => {
            let mut released = web.released.subscribe();
            let _ = released.wait_for(|r| *r).await;
            "released".to_owned()
        }
        other => format!("hit {other}"),
    }
}

impl Web {
    async fn start() -> Web {
        let state = Arc::new(WebState {
            hits: Mutex::new(HashMap::new()),
            changed: Notify::new(),
            released: watch::channel(false).0,
        });
        let app = Router::new()
            .fallback(answer)
            .with_state(Arc::clone(&state));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Web { addr, state, task }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    fn hits(&self, path: &str) -> usize {
        self.state
            .hits
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(path)
            .copied()
            .unwrap_or(0)
    }

    /// Waits (on the hit notification) until `path` was hit at least `n` times.
    async fn wait_hits(&self, path: &str, n: usize) {
        let deadline = tokio::time::Instant::now() + TIMEOUT;
        loop {
            let notified = self.state.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.hits(path) >= n {
                return;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                panic!(
                    "{path} was hit {} time(s), not {n}, within {TIMEOUT:?}",
                    self.hits(path)
                );
            }
        }
    }

    /// Lets every `/hold` request, now and later, finish.
    fn release(&self) {
        self.state.released.send_replace(true);
    }
}

impl Drop for Web {
    fn drop(&mut self) {
        self.task.abort();
    }
}

// ---- workflows used by the tests -------------------------------------------------------------

/// A condition between two code branches; runnable by an operator (no message node).
const BRANCHY: &str = r#"
name = "branchy"
description = "Doubles a number and says whether the result is big."

[inputs.n]
type = "number"
description = "The number."

[[nodes]]
id = "double"
kind = "code"
script = "inputs.n * 2"

[[nodes]]
id = "big"
kind = "condition"
after = ["double"]
expr = "nodes.double.output > 10"

[[nodes]]
id = "shout"
kind = "code"
after = [{ node = "big", when = true }]
script = '"big"'

[[nodes]]
id = "whisper"
kind = "code"
after = [{ node = "big", when = false }]
script = '"small"'
"#;

/// A cycle (a → b → a) and an unknown tool, in one file.
const BROKEN: &str = r#"
name = "broken"

[[nodes]]
id = "a"
kind = "code"
after = ["b"]
script = "1"

[[nodes]]
id = "b"
kind = "tool"
tool = "no_such_tool"
after = ["a"]
"#;

// ---- tests -----------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn examples_work_with_the_fake_llm() {
    let web = Web::start().await;
    let llm = FakeOpenAi::start().await;
    let callback = FakeCallback::start().await;
    let dir = workflow_dir(true, &[]);
    let gw = start(options(dir.path(), &callback, Some(&llm))).await;

    // support_triage, urgent: the model says "urgent", the escalation reaches the chat and the
    // reassuring branch is skipped.
    llm.push_answer("urgent");
    let urgent = run_from_chat(
        &gw,
        &callback,
        "t-1",
        "triage-1",
        "/run support_triage ticket=site-down-cannot-log-in customer=Ana",
    )
    .await;
    let escalated = wait_text(&gw, &callback, "triage-1", "Urgent ticket escalated").await;
    assert_eq!(
        escalated,
        "Urgent ticket escalated: \"site-down-cannot-log-in\". The on-call engineer takes it from here."
    );
    let run = wait_run(&gw, urgent, "succeeded").await;
    assert_eq!(run["workflow"], "support_triage", "{run:#}");
    assert_eq!(run["trigger"], "chat", "{run:#}");
    assert_eq!(
        run["inputs"],
        json!({"ticket": "site-down-cannot-log-in", "customer": "Ana"}),
        "{run:#}"
    );
    assert_eq!(node(&run, "classify")["output"], "urgent", "{run:#}");
    assert_eq!(node(&run, "is_urgent")["output"], true, "{run:#}");
    assert_eq!(node(&run, "escalate")["state"], "succeeded", "{run:#}");
    assert_eq!(node(&run, "reassure")["state"], "skipped", "{run:#}");
    assert_eq!(
        node(&run, "reassure")["after"],
        json!([{"node": "is_urgent", "when": false}, {"node": "summary", "when": null}]),
        "{run:#}"
    );
    let classify = llm
        .requests()
        .into_iter()
        .find(|r| last_user_content(r).contains("site-down-cannot-log-in"))
        .expect("the classify request carries the ticket");
    assert!(
        last_user_content(&classify).contains("Classify this ticket"),
        "{classify:#}"
    );
    let shown = ctl(&gw, &["runs", "show", &urgent.to_string()]).await;
    let shown = shown.table();
    fits(shown);
    assert!(shown.contains("state        succeeded"), "{shown}");
    assert!(shown.contains("trigger      chat"), "{shown}");
    let reassure = node_line(shown, "reassure");
    assert!(
        reassure.starts_with("    · reassure  message  after is_urgent when=false, summary")
            && reassure.ends_with("skipped"),
        "{shown}"
    );
    assert!(
        node_line(shown, "escalate").starts_with("    ✓ escalate  message"),
        "{shown}"
    );
    assert!(
        node_line(shown, "classify").starts_with("✓ classify  llm  "),
        "{shown}"
    );

    // support_triage, normal: the other branch.
    llm.push_answer("normal");
    let normal = run_from_chat(
        &gw,
        &callback,
        "t-2",
        "triage-2",
        "/run support_triage ticket=how-do-I-export-my-data customer=Bo",
    )
    .await;
    let reassured = wait_text(&gw, &callback, "triage-2", "Hi Bo, thanks").await;
    assert!(
        reassured.contains("(\"how-do-I-export-my-data\")"),
        "{reassured}"
    );
    let run = wait_run(&gw, normal, "succeeded").await;
    assert_eq!(node(&run, "escalate")["state"], "skipped", "{run:#}");
    assert_eq!(node(&run, "reassure")["state"], "succeeded", "{run:#}");
    assert!(
        !callback
            .delivered()
            .iter()
            .any(|d| d.chat_id == "triage-2" && d.text.contains("escalated")),
        "no escalation for a normal ticket"
    );

    // daily_report from a chat: both sources fetched from the local server, summarized, posted.
    let (a, b) = (web.url("/a"), web.url("/b"));
    let from_chat = run_from_chat(
        &gw,
        &callback,
        "d-1",
        "reports",
        &format!("/run daily_report topic=Rust source_a={a} source_b={b}"),
    )
    .await;
    let report = wait_text(&gw, &callback, "reports", "Daily report: Rust").await;
    assert!(
        report.contains(BODY_A) && report.contains(BODY_B),
        "{report}"
    );
    let run = wait_run(&gw, from_chat, "succeeded").await;
    assert_eq!(node(&run, "fetch_a")["output"]["body"], BODY_A, "{run:#}");
    assert_eq!(node(&run, "fetch_b")["output"]["status"], 200, "{run:#}");
    assert_eq!((web.hits("/a"), web.hits("/b")), (1, 1));

    // daily_report from gatewayctl, waiting for the result; without --to it would be refused,
    // since its message node has no chat to answer.
    let source_a = format!("source_a={a}");
    let source_b = format!("source_b={b}");
    let waited = ctl(
        &gw,
        &[
            "--output",
            "json",
            "workflows",
            "run",
            "daily_report",
            "--input",
            "topic=Rust",
            "--input",
            &source_a,
            "--input",
            &source_b,
            "--to",
            "http:reports-ops",
            "--wait",
        ],
    )
    .await;
    assert_eq!((web.hits("/a"), web.hits("/b")), (2, 2), "{waited:#?}");
    // Its message node (`to = "origin"`) answers the chat given with --to.
    let report = wait_text(&gw, &callback, "reports-ops", "Daily report: Rust").await;
    assert!(report.contains(BODY_A), "{report}");
    let summaries: Vec<String> = llm
        .requests()
        .iter()
        .filter(|r| r.to_string().contains("daily briefings"))
        .map(last_user_content)
        .collect();
    assert_eq!(
        summaries.len(),
        2,
        "one summarize request per run: {summaries:#?}"
    );
    for prompt in &summaries {
        assert!(
            prompt.contains(BODY_A) && prompt.contains(BODY_B) && prompt.contains("about Rust"),
            "{prompt}"
        );
    }
    assert!(
        waited.stderr.starts_with("gatewayctl: started run "),
        "{waited:#?}"
    );
    let doc: Value = serde_json::from_str(&waited.stdout)
        .unwrap_or_else(|e| panic!("--wait prints the run ({e}): {waited:#?}"));
    assert_eq!(doc["workflow"], "daily_report", "{doc:#}");
    assert_eq!(doc["trigger"], "operator", "{doc:#}");
    assert_eq!(node(&doc, "summarize")["state"], "succeeded", "{doc:#}");
    assert_eq!(
        (doc["state"].clone(), waited.code),
        (json!("succeeded"), Some(0)),
        "daily_report started by an operator should succeed: {doc:#}\nstderr: {}",
        waited.stderr
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gatewayctl_lists_validates_runs_and_shows_workflows() {
    let callback = FakeCallback::start().await;
    let dir = workflow_dir(
        true,
        &[
            ("branchy.toml", BRANCHY.to_owned()),
            ("broken.toml", BROKEN.to_owned()),
        ],
    );
    let broken = dir.path().join("broken.toml").display().to_string();
    let gw = start(options(dir.path(), &callback, None)).await;

    // workflows list: the good ones, and the broken file's problems.
    let list = ctl_json(&gw, &["workflows", "list"]).await;
    let names: Vec<&str> = list["workflows"]
        .as_array()
        .expect("workflows")
        .iter()
        .filter_map(|w| w["name"].as_str())
        .collect();
    assert_eq!(
        names,
        ["branchy", "daily_report", "support_triage"],
        "{list:#}"
    );
    let branchy = &list["workflows"][0];
    assert_eq!(
        branchy["inputs"],
        json!([{"name": "n", "type": "number", "required": true, "description": "The number."}]),
        "{list:#}"
    );
    assert_eq!(
        branchy["nodes"][2],
        json!({"id": "shout", "kind": "code", "after": [{"node": "big", "when": true}]}),
        "{list:#}"
    );
    let errors = list["errors"].as_array().expect("errors");
    assert!(
        errors
            .iter()
            .any(|e| e["file"] == broken.as_str() && e["message"] == "cycle: a → b → a"),
        "{list:#}"
    );
    assert!(
        errors.iter().any(|e| e["node"] == "b"
            && e["field"] == "tool"
            && e["message"]
                .as_str()
                .is_some_and(|m| m.contains("no_such_tool"))),
        "{list:#}"
    );
    let shown = ctl(&gw, &["workflows", "list"]).await;
    let shown = shown.table();
    let (table, problems) = shown
        .split_once("\n\n")
        .expect("the table, then the problems");
    fits(table);
    assert!(table.starts_with("NAME "), "{shown}");
    for name in ["branchy  ", "daily_report  ", "support_triage  "] {
        assert!(table.lines().any(|l| l.starts_with(name)), "{shown}");
    }
    assert!(table.contains("customer?, ticket"), "{shown}");
    assert!(!table.contains("broken"), "{shown}");
    assert!(
        problems
            .lines()
            .any(|l| l == format!("{broken}: cycle: a → b → a")),
        "{shown}"
    );

    // workflows validate: both problems, one per line, and exit 1.
    let v = ctl(&gw, &["workflows", "validate"]).await;
    assert_eq!(v.code, Some(1), "{v:#?}");
    let lines: Vec<&str> = v.stdout.lines().collect();
    assert!(
        lines.contains(&format!("{broken}: cycle: a → b → a").as_str()),
        "{v:#?}"
    );
    assert!(
        lines.iter().any(|l| l.starts_with(&format!(
            "{broken}: node `b`, field `tool`: unknown tool `no_such_tool`"
        ))),
        "{v:#?}"
    );
    assert!(
        lines.contains(&"valid: branchy, daily_report, support_triage"),
        "{v:#?}"
    );
    assert_eq!(v.stderr, "gatewayctl: 2 problem(s) in the workflow files\n");
    let v = ctl(&gw, &["--output", "json", "workflows", "validate"]).await;
    assert_eq!(v.code, Some(1), "{v:#?}");
    let doc: Value = serde_json::from_str(&v.stdout).expect("a JSON document");
    assert_eq!(
        doc["valid"],
        json!(["branchy", "daily_report", "support_triage"])
    );
    assert_eq!(doc["errors"].as_array().map(Vec::len), Some(2), "{doc:#}");

    // The event stream shows the run and its nodes.
    let mut watcher = Command::new(gatewayctl_bin());
    watcher
        .args(["--addr", &gw.admin_url(), "--output", "json", "events"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let mut watcher = watcher.spawn().expect("spawn gatewayctl events");
    let mut events = BufReader::new(watcher.stdout.take().expect("stdout")).lines();
    let mut notice = BufReader::new(watcher.stderr.take().expect("stderr")).lines();
    tokio::time::timeout(TIMEOUT, notice.next_line())
        .await
        .expect("the watcher subscribes in time")
        .expect("stderr")
        .expect("a notice");

    // workflows run --wait, as a table: the DAG with one branch skipped.
    let small = ctl(
        &gw,
        &["workflows", "run", "branchy", "--input", "n=3", "--wait"],
    )
    .await;
    assert_eq!(small.code, Some(0), "{small:#?}");
    fits(&small.stdout);
    assert!(
        small.stderr.starts_with("gatewayctl: started run "),
        "{small:#?}"
    );
    let shown = &small.stdout;
    assert!(shown.contains("state        succeeded"), "{shown}");
    assert!(shown.contains("inputs       {\"n\":3}"), "{shown}");
    assert!(shown.contains("result       small"), "{shown}");
    assert!(
        node_line(shown, "double").starts_with("✓ double  code  "),
        "{shown}"
    );
    assert!(
        node_line(shown, "big").starts_with("  ✓ big  condition  after double  "),
        "{shown}"
    );
    assert_eq!(
        node_line(shown, "shout"),
        "    · shout  code  after big when=true  skipped",
        "{shown}"
    );
    assert!(
        node_line(shown, "whisper").starts_with("    ✓ whisper  code  after big when=false  "),
        "{shown}"
    );

    let mut seen = Vec::new();
    let read = tokio::time::timeout(TIMEOUT, async {
        while let Some(line) = events.next_line().await.expect("stdout") {
            let e: Value = serde_json::from_str(&line).expect("one JSON object per line");
            seen.push(e.clone());
            if e["kind"] == "run_changed" && e["state"] == "succeeded" {
                return;
            }
        }
    })
    .await;
    assert!(read.is_ok(), "no run_changed succeeded in {seen:#?}");
    let first = seen
        .iter()
        .find(|e| e["kind"] == "run_changed")
        .expect("a run_changed");
    assert_eq!(first["state"], "running", "{seen:#?}");
    assert_eq!(first["workflow"], "branchy", "{seen:#?}");
    let run_id = first["run_id"].as_i64().expect("a run id");
    assert!(
        seen.iter().any(|e| e["kind"] == "node_changed"
            && e["run_id"] == run_id
            && e["node"] == "shout"
            && e["state"] == "skipped"),
        "{seen:#?}"
    );
    drop(watcher);

    // workflows run without --wait: just the id.
    let started = ctl_json(&gw, &["workflows", "run", "branchy", "--input", "n=30"]).await;
    let big = started["run_id"].as_i64().expect("run_id");
    assert!(big > run_id, "{started}");
    let started = ctl(&gw, &["workflows", "run", "branchy", "--input", "n=1"]).await;
    assert!(started.table().starts_with("started run "), "{started:#?}");
    let run = wait_run(&gw, big, "succeeded").await;
    assert_eq!(run["trigger"], "operator", "{run:#}");
    assert_eq!(run["inputs"], json!({"n": 30}), "{run:#}");
    assert_eq!(run["result"], "big", "{run:#}");
    assert_eq!(run["error"], Value::Null, "{run:#}");
    assert!(
        run["finished_at_ms"].as_i64() >= run["created_at_ms"].as_i64(),
        "{run:#}"
    );
    let states: Vec<(&str, &str)> = run["nodes"]
        .as_array()
        .expect("nodes")
        .iter()
        .filter_map(|n| Some((n["id"].as_str()?, n["state"].as_str()?)))
        .collect();
    assert_eq!(
        states,
        [
            ("double", "succeeded"),
            ("big", "succeeded"),
            ("shout", "succeeded"),
            ("whisper", "skipped")
        ],
        "{run:#}"
    );
    assert_eq!(node(&run, "double")["output"], 60, "{run:#}");
    assert_eq!(node(&run, "double")["attempts"], 1, "{run:#}");

    // runs list: newest first, filtered, paged; and as a table.
    let list = ctl_json(&gw, &["runs", "list"]).await;
    let ids: Vec<i64> = list["runs"]
        .as_array()
        .expect("runs")
        .iter()
        .filter_map(|r| r["id"].as_i64())
        .collect();
    assert_eq!(ids.len(), 3, "{list:#}");
    assert!(
        ids.windows(2).all(|w| w[0] > w[1]),
        "newest first: {list:#}"
    );
    assert!(list["runs"][0].get("nodes").is_none(), "{list:#}");
    assert_eq!(list["next_cursor"], Value::Null, "{list:#}");
    let none = ctl_json(&gw, &["runs", "list", "--workflow", "support_triage"]).await;
    assert_eq!(none["runs"], json!([]), "{none:#}");
    let page = ctl_json(
        &gw,
        &["runs", "list", "--workflow", "branchy", "--limit", "2"],
    )
    .await;
    assert_eq!(page["runs"].as_array().map(Vec::len), Some(2), "{page:#}");
    let cursor = page["next_cursor"]
        .as_str()
        .expect("another page")
        .to_owned();
    let rest = ctl_json(&gw, &["runs", "list", "--limit", "2", "--cursor", &cursor]).await;
    assert_eq!(rest["runs"][0]["id"], ids[2], "{rest:#}");
    let shown = ctl(&gw, &["runs", "list"]).await;
    let shown = shown.table();
    fits(shown);
    assert!(shown.starts_with("ID  WORKFLOW  STATE"), "{shown}");
    assert!(
        shown.lines().any(|l| l.split_whitespace().take(4).eq([
            big.to_string().as_str(),
            "branchy",
            "succeeded",
            "operator"
        ])),
        "{shown}"
    );

    // What an operator sees when something does not exist or is refused.
    let missing = ctl(&gw, &["runs", "show", "999"]).await;
    assert_eq!(
        (
            missing.code,
            missing.stdout.as_str(),
            missing.stderr.as_str()
        ),
        (Some(1), "", "gatewayctl: no run 999\n")
    );
    let missing = ctl(&gw, &["workflows", "run", "broken"]).await;
    assert_eq!(missing.code, Some(1), "{missing:#?}");
    assert!(
        missing
            .stderr
            .starts_with("gatewayctl: no workflow `broken`"),
        "{missing:#?}"
    );
    let bad = ctl(&gw, &["workflows", "run", "branchy", "--input", "n=three"]).await;
    assert_eq!(bad.code, Some(1), "{bad:#?}");
    assert!(
        bad.stderr.starts_with("gatewayctl: INVALID_ARGUMENT: ") && bad.stderr.contains("`n`"),
        "{bad:#?}"
    );
    let usage = ctl(&gw, &["workflows", "run", "branchy", "--input", "n"]).await;
    assert_eq!(usage.code, Some(2), "{usage:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_run_workflow_tool() {
    let llm = FakeOpenAi::start().await;
    let callback = FakeCallback::start().await;
    let dir = workflow_dir(false, &[("branchy.toml", BRANCHY.to_owned())]);
    let gw = start(options(dir.path(), &callback, Some(&llm))).await;

    llm.push_tool_call("run_workflow", r#"{"name": "branchy", "inputs": {"n": 7}}"#);
    llm.push_answer("I started branchy for you.");
    post(&gw, "ag-1", "agent-chat", "please double 7").await;
    wait_text(&gw, &callback, "agent-chat", "I started branchy for you.").await;

    let offered = llm.tools_offered();
    assert!(
        offered
            .first()
            .and_then(|t| t.as_ref())
            .is_some_and(|t| t.to_string().contains("\"run_workflow\"")),
        "the agent is offered run_workflow: {offered:?}"
    );
    let results = llm.tool_results();
    assert_eq!(results.len(), 1, "{results:?}");
    assert!(
        results[0].content.contains("started") && results[0].content.contains("run_id"),
        "{results:?}"
    );

    let list = ctl_json(&gw, &["runs", "list"]).await;
    let runs = list["runs"].as_array().expect("runs");
    assert_eq!(runs.len(), 1, "{list:#}");
    assert_eq!(runs[0]["workflow"], "branchy", "{list:#}");
    assert_eq!(runs[0]["trigger"], "agent", "{list:#}");
    let id = runs[0]["id"].as_i64().expect("id");
    let shown = ctl(&gw, &["runs", "list"]).await;
    let shown = shown.table();
    let id_cell = id.to_string();
    assert!(
        shown.lines().any(|l| {
            let cells: Vec<&str> = l.split_whitespace().collect();
            cells.len() >= 4 && cells[..2] == [id_cell.as_str(), "branchy"] && cells[3] == "agent"
        }),
        "{shown}"
    );
    let run = wait_run(&gw, id, "succeeded").await;
    assert_eq!(run["inputs"], json!({"n": 7}), "{run:#}");
    assert_eq!(run["result"], "big", "{run:#}");
    let shown = ctl(&gw, &["runs", "show", &id.to_string()]).await;
    assert!(shown.table().contains("trigger      agent"), "{shown:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_after_sigkill_does_not_rerun_finished_nodes() {
    let web = Web::start().await;
    let callback = FakeCallback::start().await;
    let resumable = format!(
        r#"
name = "resumable"
tools = ["http_get"]

[[nodes]]
id = "count"
kind = "tool"
tool = "http_get"
args = {{ url = "{count}" }}

[[nodes]]
id = "wait"
kind = "tool"
tool = "http_get"
after = ["count"]
timeout = "60s"
args = {{ url = "{hold}" }}

[[nodes]]
id = "done"
kind = "code"
after = ["wait"]
script = '"done"'
"#,
        count = web.url("/count"),
        hold = web.url("/hold"),
    );
    let dir = workflow_dir(false, &[("resumable.toml", resumable)]);
    let mut gw = start(options(dir.path(), &callback, None)).await;

    let started = ctl_json(&gw, &["workflows", "run", "resumable"]).await;
    let id = started["run_id"].as_i64().expect("run_id");
    web.wait_hits("/hold", 1).await;
    let before = run_json(&gw, id).await;
    assert_eq!(node(&before, "count")["state"], "succeeded", "{before:#}");
    assert_eq!(node(&before, "wait")["state"], "running", "{before:#}");

    gw.kill().await;
    gw.restart().await.expect("gatewayd starts again");
    web.wait_hits("/hold", 2).await;
    web.release();

    let run = wait_run(&gw, id, "succeeded").await;
    assert_eq!(web.hits("/count"), 1, "the finished node ran once: {run:#}");
    assert_eq!(
        web.hits("/hold"),
        2,
        "the interrupted node ran again: {run:#}"
    );
    assert_eq!(
        node(&run, "count")["output"]["body"],
        "hit /count",
        "{run:#}"
    );
    assert_eq!(node(&run, "wait")["output"]["body"], "released", "{run:#}");
    assert_eq!(node(&run, "done")["output"], "done", "{run:#}");
    assert_eq!(run["result"], "done", "{run:#}");
    assert!(
        gw.stderr_log().contains("Resuming a workflow run."),
        "{}",
        gw.stderr_tail(40)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_node_fails_the_run_and_the_chat_hears_of_it() {
    let callback = FakeCallback::start().await;
    let fragile = r#"
name = "fragile"
tools = ["http_get"]

[[nodes]]
id = "fetch"
kind = "tool"
tool = "http_get"
retries = 1
args = { url = "http://example.invalid/data" }

[[nodes]]
id = "use"
kind = "code"
after = ["fetch"]
script = '"never"'
"#;
    let dir = workflow_dir(false, &[("fragile.toml", fragile.to_owned())]);
    let gw = start(options(dir.path(), &callback, None)).await;
    let refused =
        "not allowed: host `example.invalid` is not on the allowlist `[tools] http_allowlist`";

    // Started by an operator: --wait shows the failure and exits 1.
    let waited = ctl(&gw, &["workflows", "run", "fragile", "--wait"]).await;
    assert_eq!(waited.code, Some(1), "{waited:#?}");
    fits(&waited.stdout);
    assert!(waited.stdout.contains("state        failed"), "{waited:#?}");
    assert!(
        node_line(&waited.stdout, "fetch")
            .starts_with("✗ fetch  tool  failed after 2 attempts: not allowed"),
        "{waited:#?}"
    );
    let last = waited.stderr.lines().last().unwrap_or_default();
    assert!(
        last.starts_with("gatewayctl: run ")
            && last.ends_with(&format!("failed: node `fetch` failed: {refused}")),
        "{waited:#?}"
    );
    let id: i64 = last
        .trim_start_matches("gatewayctl: run ")
        .split(' ')
        .next()
        .and_then(|n| n.parse().ok())
        .expect("the run id");
    let run = run_json(&gw, id).await;
    assert_eq!(run["state"], "failed", "{run:#}");
    assert_eq!(
        run["error"],
        format!("node `fetch` failed: {refused}"),
        "{run:#}"
    );
    assert_eq!(node(&run, "fetch")["state"], "failed", "{run:#}");
    assert_eq!(node(&run, "fetch")["attempts"], 2, "{run:#}");
    assert_eq!(node(&run, "fetch")["error"], refused, "{run:#}");
    assert_ne!(node(&run, "use")["state"], "succeeded", "{run:#}");
    assert_eq!(run["result"], Value::Null, "{run:#}");

    // Started from a chat: the failure is sent back there.
    let chat_run = run_from_chat(&gw, &callback, "f-1", "fragile-chat", "/run fragile").await;
    let told = wait_text(&gw, &callback, "fragile-chat", "failed").await;
    assert_eq!(
        told,
        format!("Workflow fragile (run {chat_run}) failed: node `fetch` failed: {refused}")
    );
    let run = wait_run(&gw, chat_run, "failed").await;
    assert_eq!(run["trigger"], "chat", "{run:#}");
    let shown = ctl(&gw, &["runs", "show", &chat_run.to_string()]).await;
    let shown = shown.table();
    fits(shown);
    assert!(shown.contains("state        failed"), "{shown}");
    assert!(
        shown.contains("error        node `fetch` failed: not allowed"),
        "{shown}"
    );
    let list = ctl(&gw, &["runs", "list"]).await;
    let list = list.table();
    fits(list);
    assert_eq!(
        list.lines().filter(|l| l.contains("  failed  ")).count(),
        2,
        "{list}"
    );
}

/// Every `/run …` that README.md shows in backquotes (not the `WORKFLOW` usage line), exactly as
/// printed.
fn readme_run_examples() -> Vec<String> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../README.md");
    let readme = std::fs::read_to_string(&path).expect("README.md");
    readme
        .split('`')
        .skip(1)
        .step_by(2)
        .filter(|span| span.starts_with("/run ") && !span.contains("WORKFLOW"))
        .map(str::to_owned)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_readme_run_examples_work_as_printed() {
    let examples = readme_run_examples();
    assert!(!examples.is_empty(), "README.md shows no /run example");
    let callback = FakeCallback::start().await;
    let dir = workflow_dir(true, &[]);
    let gw = start(options(dir.path(), &callback, None)).await;
    for (i, example) in examples.iter().enumerate() {
        let chat = format!("readme-{i}");
        let run = run_from_chat(&gw, &callback, &format!("r-{i}"), &chat, example).await;
        let shown = wait_run(&gw, run, "succeeded").await;
        // The values arrive unquoted: `ticket="printer on fire"` is the one input
        // `printer on fire`, whichever quotes the README uses.
        let inputs = shown["inputs"].as_object().expect("inputs object");
        assert!(!inputs.is_empty(), "{example}: {shown:#}");
        for (key, value) in inputs {
            let text = value.as_str().unwrap_or_default();
            assert!(
                !text.contains(['"', '\'']),
                "{example}: input {key} kept its quotes: {value}"
            );
        }
        if example.contains("ticket=\"printer on fire\"") {
            assert_eq!(inputs["ticket"], "printer on fire", "{shown:#}");
        }
    }
    // The same with single quotes, and an unclosed quote is answered with the reason.
    let run = run_from_chat(
        &gw,
        &callback,
        "r-single",
        "readme-single",
        "/run support_triage ticket='printer on fire'",
    )
    .await;
    let shown = wait_run(&gw, run, "succeeded").await;
    assert_eq!(shown["inputs"]["ticket"], "printer on fire", "{shown:#}");
    post(
        &gw,
        "r-open",
        "readme-open",
        "/run support_triage ticket=\"printer on fire",
    )
    .await;
    let answer = wait_text(&gw, &callback, "readme-open", "not closed").await;
    assert!(answer.contains("double quote"), "{answer}");
}

/// A workflow whose one message node answers the chat that started it.
const TELL: &str = r#"
name = "tell"

[inputs.what]
type = "string"

[[nodes]]
id = "say"
kind = "message"
to = "origin"
text = "news: {{inputs.what}}"
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_run_answers_the_chat_given_with_to_or_is_refused() {
    let callback = FakeCallback::start().await;
    let dir = workflow_dir(false, &[("tell.toml", TELL.to_owned())]);
    let gw = start(options(dir.path(), &callback, None)).await;

    // No chat to answer: refused at start with the reason, and no run is made.
    let refused = ctl(&gw, &["workflows", "run", "tell", "--input", "what=x"]).await;
    assert_ne!(refused.code, Some(0), "{refused:#?}");
    assert!(
        refused.stderr.contains("FAILED_PRECONDITION")
            && refused.stderr.contains("message node `say`")
            && refused.stderr.contains("--to CHANNEL:CHAT"),
        "{refused:#?}"
    );
    let runs = ctl_json(&gw, &["runs", "list"]).await;
    assert_eq!(runs["runs"].as_array().map(Vec::len), Some(0), "{runs:#}");

    // With --to, the message arrives at that chat and the run succeeds.
    let started = ctl_json(
        &gw,
        &[
            "workflows",
            "run",
            "tell",
            "--input",
            "what=printer on fire",
            "--to",
            "http:ops-room",
        ],
    )
    .await;
    let id = started["run_id"].as_i64().expect("run_id");
    let text = wait_text(&gw, &callback, "ops-room", "news:").await;
    assert_eq!(text, "news: printer on fire");
    let run = wait_run(&gw, id, "succeeded").await;
    assert!(node(&run, "say")["output"]["outbox_id"].is_i64(), "{run:#}");

    // A bad --to is refused with what is wrong, by gatewayctl or by the gateway.
    for (to, says) in [
        ("ops-room", "expected CHANNEL:CHAT"),
        ("pigeon:1", "unknown channel `pigeon`"),
        ("http:", "chat id after `:` is empty"),
        ("telegram:42", "channel `telegram` is not enabled"),
    ] {
        let bad = ctl(
            &gw,
            &["workflows", "run", "tell", "--input", "what=x", "--to", to],
        )
        .await;
        assert_ne!(bad.code, Some(0), "--to {to}: {bad:#?}");
        assert!(bad.stderr.contains(says), "--to {to}: {bad:#?}");
    }
}

/// Empty scripts, channels that are unknown or not enabled, and out-of-range numbers.
const STATIC_ERRORS: &str = r#"
name = "static_errors"

[inputs.list]
type = "list"

[[nodes]]
id = "gate"
kind = "condition"
expr = ""

[[nodes]]
id = "page"
kind = "message"
text = "hi"
channel = "telegram"
chat_id = "42"

[[nodes]]
id = "pigeon"
kind = "message"
text = "hi"
channel = "carrier_pigeon"
chat_id = "1"

[[nodes]]
id = "each"
kind = "foreach"
items = "{{inputs.list}}"
concurrency = 2305843009213693952
[nodes.do]
kind = "code"
script = "item"
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_config_and_validate_catch_static_workflow_errors() {
    let callback = FakeCallback::start().await;
    let dir = workflow_dir(false, &[("static_errors.toml", STATIC_ERRORS.to_owned())]);
    // (node, field, the start of the message)
    let expected = [
        ("gate", "expr", "must not be empty"),
        ("page", "channel", "channel `telegram` is not enabled"),
        ("pigeon", "channel", "unknown channel `carrier_pigeon`"),
        (
            "each",
            "concurrency",
            "must be between 1 and 1024, not 2305843009213693952",
        ),
    ];

    // gatewayd check-config, with the HTTP channel and WebChat enabled.
    let data = tempfile::tempdir().expect("temp dir");
    let opts = options(dir.path(), &callback, None);
    let config = data.path().join("gatewayd.toml");
    std::fs::write(&config, opts.render_config(&data.path().join("data"))).expect("write config");
    let out = tokio::time::timeout(
        TIMEOUT,
        Command::new(gateway_tests::gateway::gatewayd_bin().expect("gatewayd"))
            .arg("check-config")
            .arg("--config")
            .arg(&config)
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("check-config finished")
    .expect("check-config ran");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    for (node, field, message) in expected {
        let needle = format!("node `{node}`, field `{field}`: {message}");
        assert!(stderr.contains(&needle), "no `{needle}` in:\n{stderr}");
    }

    // The running gateway skips the file and ValidateWorkflows says why.
    let gw = start(opts).await;
    let checked = ctl(&gw, &["--output", "json", "workflows", "validate"]).await;
    assert_eq!(checked.code, Some(1), "{checked:#?}");
    let doc: Value = serde_json::from_str(&checked.stdout).expect("JSON");
    let errors = doc["errors"].as_array().expect("errors");
    for (node, field, message) in expected {
        assert!(
            errors.iter().any(|e| e["node"] == node
                && e["field"] == field
                && e["message"]
                    .as_str()
                    .is_some_and(|m| m.starts_with(message))),
            "no {node}.{field}: {message} in {doc:#}"
        );
    }
    assert_eq!(errors.len(), expected.len(), "{doc:#}");
}

/// A workflow whose message node sends to any chat its input names.
const RELAY: &str = r#"
name = "relay"

[inputs.chat]
type = "string"

[[nodes]]
id = "say"
kind = "message"
channel = "http"
chat_id = "{{inputs.chat}}"
text = "relayed"
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_workflow_run_by_a_users_turn_sends_only_where_the_scope_allows() {
    let llm = FakeOpenAi::start().await;
    let callback = FakeCallback::start().await;
    let dir = workflow_dir(false, &[("relay.toml", RELAY.to_owned())]);
    let gw = start(options(dir.path(), &callback, Some(&llm))).await;

    // ann's turn starts the workflow at bob's chat: under the default `same_user` it is refused.
    llm.push_tool_call(
        "run_workflow",
        r#"{"name": "relay", "inputs": {"chat": "bob"}}"#,
    );
    llm.push_answer("relay started");
    post(&gw, "rl-1", "ann", "relay to bob").await;
    wait_text(&gw, &callback, "ann", "relay started").await;
    let list = ctl_json(&gw, &["runs", "list"]).await;
    let id = list["runs"][0]["id"].as_i64().expect("run id");
    let run = wait_run(&gw, id, "failed").await;
    let error = node(&run, "say")["error"].as_str().unwrap_or_default();
    assert!(
        error.contains(
            "send_message may only send to this user's own chats (tools.send_message.scope = \"same_user\")"
        ),
        "{run:#}"
    );

    // An operator's run has no user: it sends as before.
    let started = ctl_json(&gw, &["workflows", "run", "relay", "--input", "chat=bob"]).await;
    let id = started["run_id"]
        .as_i64()
        .or_else(|| started["id"].as_i64())
        .unwrap_or_else(|| panic!("no run id in {started:#}"));
    wait_run(&gw, id, "succeeded").await;
    wait_text(&gw, &callback, "bob", "relayed").await;
    let to_bob: Vec<String> = callback
        .delivered()
        .iter()
        .filter(|d| d.chat_id == "bob")
        .map(|d| d.text.clone())
        .collect();
    assert_eq!(to_bob, ["relayed"], "only the operator's run reached bob");
}
