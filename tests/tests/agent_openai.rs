//! The `openai` provider through the real `gatewayd` binary against `FakeOpenAi`: the request
//! (model, bearer key, history window), the key kept out of the logs, retries of server errors,
//! honest error replies when the model cannot answer (errors, timeouts, refused connections)
//! with the user's message kept, and sessions running in parallel while each stays in order.

use std::sync::atomic::{AtomicUsize, Ordering};

use gateway_tests::{
    Delivery, FakeCallback, FakeOpenAi, Fault, Gateway, GatewayOptions, TIMEOUT, last_user_content,
    poll_until_async,
};
use serde_json::{Value, json};

const KEY: &str = "sk-test-secret";
const SORRY: &str = "Sorry, the assistant could not answer just now (";
const SAVED: &str = "Your message is saved; please try again in a moment.";

/// Unique message ids across this test binary, so `reply_to` identifies one message.
static NEXT_ID: AtomicUsize = AtomicUsize::new(1);

fn next_id() -> String {
    format!("o-{}", NEXT_ID.fetch_add(1, Ordering::SeqCst))
}

/// Options for an openai agent at `base_url`; `agent_extra` adds or overrides `[agent]` keys
/// (`max_attempts`, `timeout`).
fn options(base_url: &str, callback: &FakeCallback, agent_extra: &str) -> GatewayOptions {
    GatewayOptions {
        extra_config: format!(
            "[agent]\nprovider = \"openai\"\nbase_url = \"{base_url}\"\nmodel = \"test-model\"\n\
             api_key_env = \"GW_TEST_KEY\"\nretry_backoff = \"20ms\"\n{agent_extra}\n\n\
             [channels.http]\nenabled = true\ncallback_url = \"{}\"\n",
            callback.url()
        ),
        env: vec![("GW_TEST_KEY".to_owned(), KEY.to_owned())],
        ..GatewayOptions::default()
    }
}

const DEFAULT_AGENT: &str = "max_attempts = 3\ntimeout = \"1s\"";

/// Posts a direct message in chat `chat` from `sender` and returns its message id.
async fn post(gw: &Gateway, chat: &str, sender: &str, text: &str) -> String {
    let id = next_id();
    let resp = gw
        .post_http_message(&json!({
            "message_id": id,
            "chat_id": chat,
            "sender_id": sender,
            "chat_type": "direct",
            "text": text,
        }))
        .await
        .expect("post message");
    assert_eq!(resp.status, 202, "POST {text:?}: {}", resp.text);
    assert_eq!(resp.json, json!({"accepted": true, "duplicate": false}));
    id
}

fn reply_to<'a>(delivered: &'a [Delivery], id: &str) -> Option<&'a Delivery> {
    delivered.iter().find(|d| d.reply_to.as_deref() == Some(id))
}

/// Posts `text` from `sender` (chat id = sender) and returns the text of its reply.
async fn ask(gw: &Gateway, callback: &FakeCallback, sender: &str, text: &str) -> String {
    let id = post(gw, sender, sender, text).await;
    let delivered = callback
        .wait_delivered(|d| reply_to(d, &id).is_some(), TIMEOUT)
        .await
        .unwrap_or_else(|e| {
            panic!(
                "reply to {text:?}: {e}\n--- stderr ---\n{}",
                gw.stderr_tail(40)
            )
        });
    let replies: Vec<_> = delivered
        .iter()
        .filter(|d| d.reply_to.as_deref() == Some(id.as_str()))
        .collect();
    assert_eq!(replies.len(), 1, "one reply to {text:?}: {replies:?}");
    replies[0].text.clone()
}

fn user(text: &str) -> Value {
    json!({"role": "user", "content": text})
}

fn assistant(text: &str) -> Value {
    json!({"role": "assistant", "content": text})
}

/// Every file in the daemon's log directory, concatenated.
fn log_files(gw: &Gateway) -> String {
    let dir = gw.data_dir().join("logs");
    let mut out = String::new();
    for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let path = entry.expect("dir entry").path();
        let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        out.push_str(&String::from_utf8_lossy(&bytes));
    }
    out
}

/// Asserts `reply` is the documented error reply and returns the reason in parentheses.
fn error_reason(reply: &str) -> String {
    assert!(
        reply.starts_with(SORRY) && reply.ends_with(SAVED),
        "expected the error reply, got {reply:?}"
    );
    let inner = &reply[SORRY.len()..reply.len() - SAVED.len()];
    inner
        .strip_suffix("). ")
        .unwrap_or_else(|| panic!("error reply shape: {reply:?}"))
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replies_come_from_the_model_with_model_key_and_history() {
    let llm = FakeOpenAi::start().await;
    let callback = FakeCallback::start().await;
    let mut opts = options(&llm.base_url(), &callback, DEFAULT_AGENT);
    // Debug logging everywhere, so the key check below covers the chattiest setting.
    opts.log_level = Some("debug".to_owned());
    let mut gw = Gateway::start(opts).await.expect("start gatewayd");

    assert_eq!(ask(&gw, &callback, "ann", "one").await, "llm: one");
    assert_eq!(ask(&gw, &callback, "ann", "two").await, "llm: two");
    assert_eq!(ask(&gw, &callback, "ann", "three").await, "llm: three");

    let requests = llm.requests();
    assert_eq!(requests.len(), 3, "one request per message: {requests:?}");
    for r in &requests {
        assert_eq!(r["model"], "test-model", "{r}");
    }
    assert_eq!(
        llm.auth_headers(),
        vec![Some(format!("Bearer {KEY}")); 3],
        "the key from GW_TEST_KEY is sent as a bearer token"
    );
    assert_eq!(requests[0]["messages"], json!([user("one")]));
    assert_eq!(
        requests[2]["messages"],
        json!([
            user("one"),
            assistant("llm: one"),
            user("two"),
            assistant("llm: two"),
            user("three"),
        ]),
        "the third request carries the history in order"
    );

    // The key never reaches the logs (stderr, or the log file once flushed at exit).
    let status = gw.stop().await.expect("stop");
    assert!(status.success(), "graceful exit: {status}");
    let stderr = gw.stderr_log();
    assert!(
        stderr.contains("gatewayd started."),
        "stderr holds the log: {stderr}"
    );
    assert!(!stderr.contains(KEY), "API key leaked to stderr:\n{stderr}");
    let file = log_files(&gw);
    assert!(
        file.contains("gatewayd started."),
        "the log file holds the log: {file}"
    );
    assert!(
        !file.contains(KEY),
        "API key leaked to the log file:\n{file}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_window_limits_what_the_model_sees() {
    let llm = FakeOpenAi::start().await;
    let callback = FakeCallback::start().await;
    let mut opts = options(&llm.base_url(), &callback, DEFAULT_AGENT);
    opts.gateway_extra = "history_window = 2".to_owned();
    let gw = Gateway::start(opts).await.expect("start gatewayd");

    for text in ["one", "two", "three"] {
        assert_eq!(
            ask(&gw, &callback, "ben", text).await,
            format!("llm: {text}")
        );
    }
    let requests = llm.requests();
    assert_eq!(requests.len(), 3, "{requests:?}");
    assert_eq!(
        requests[1]["messages"],
        json!([user("one"), assistant("llm: one"), user("two")])
    );
    assert_eq!(
        requests[2]["messages"],
        json!([user("two"), assistant("llm: two"), user("three")]),
        "only the last 2 history entries and the new message"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_errors_are_retried_until_the_model_answers() {
    let llm = FakeOpenAi::start().await;
    let callback = FakeCallback::start().await;
    let gw = Gateway::start(options(&llm.base_url(), &callback, DEFAULT_AGENT))
        .await
        .expect("start gatewayd");
    llm.push_fault(Fault::Status(500));
    llm.push_fault(Fault::Status(500));

    assert_eq!(
        ask(&gw, &callback, "cat", "try hard").await,
        "llm: try hard"
    );
    let requests = llm.requests();
    let texts: Vec<String> = requests.iter().map(last_user_content).collect();
    assert_eq!(
        texts,
        ["try hard", "try hard", "try hard"],
        "two failed attempts, then the one that answered"
    );
    assert_eq!(llm.pending_faults(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_every_attempt_fails_the_user_gets_an_error_and_the_message_is_kept() {
    let llm = FakeOpenAi::start().await;
    let callback = FakeCallback::start().await;
    let gw = Gateway::start(options(&llm.base_url(), &callback, DEFAULT_AGENT))
        .await
        .expect("start gatewayd");
    for _ in 0..3 {
        llm.push_fault(Fault::Status(500));
    }

    let reply = ask(&gw, &callback, "dan", "are you there?").await;
    let reason = error_reason(&reply);
    assert_eq!(
        reason, "the model server had an internal error",
        "the reason names the class of failure: {reply:?}"
    );
    assert_eq!(llm.requests().len(), 3, "max_attempts = 3");
    let stderr = gw.stderr_log();
    assert!(
        stderr
            .lines()
            .any(|l| l.contains("ERROR") && l.contains("Agent turn failed")),
        "an error is logged:\n{stderr}"
    );

    let history = ask(&gw, &callback, "dan", "/history").await;
    assert!(
        history.starts_with("History (oldest first):\n[http] you: are you there?\n"),
        "the user's message is kept: {history:?}"
    );

    // The model is back: the kept message is context for the next turn, the error is not.
    assert_eq!(ask(&gw, &callback, "dan", "now?").await, "llm: now?");
    let requests = llm.requests();
    assert_eq!(
        requests.last().expect("a request")["messages"],
        json!([user("are you there?"), user("now?")])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_model_that_does_not_answer_in_time_gets_an_honest_error_reply() {
    let llm = FakeOpenAi::start().await;
    let callback = FakeCallback::start().await;
    let gw = Gateway::start(options(
        &llm.base_url(),
        &callback,
        "max_attempts = 1\ntimeout = \"1s\"",
    ))
    .await
    .expect("start gatewayd");
    llm.push_fault(Fault::Hang);

    let reply = ask(&gw, &callback, "eli", "slow question").await;
    let reason = error_reason(&reply);
    assert!(
        reason.contains("did not answer in time"),
        "the reply says the model did not answer: {reply:?}"
    );
    assert_eq!(llm.requests().len(), 1, "max_attempts = 1");
    let history = ask(&gw, &callback, "eli", "/history").await;
    assert!(
        history.contains("[http] you: slow question"),
        "message kept: {history:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_connection_gets_an_error_reply_and_the_message_is_kept() {
    let closed_port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.local_addr().expect("addr").port()
    };
    let callback = FakeCallback::start().await;
    let gw = Gateway::start(options(
        &format!("http://127.0.0.1:{closed_port}/v1"),
        &callback,
        DEFAULT_AGENT,
    ))
    .await
    .expect("start gatewayd");

    let reply = ask(&gw, &callback, "fin", "anyone home?").await;
    let reason = error_reason(&reply);
    assert!(
        reason.contains("cannot reach the model server"),
        "the reply says the server cannot be reached: {reply:?}"
    );
    let history = ask(&gw, &callback, "fin", "/history").await;
    assert!(
        history.starts_with("History (oldest first):\n[http] you: anyone home?\n"),
        "message kept: {history:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_run_in_parallel_and_each_stays_in_order() {
    let llm = FakeOpenAi::start().await;
    let callback = FakeCallback::start().await;
    let gw = Gateway::start(options(
        &llm.base_url(),
        &callback,
        "max_attempts = 3\ntimeout = \"60s\"",
    ))
    .await
    .expect("start gatewayd");
    llm.hold("A-hold");

    let a1 = post(&gw, "chat-a", "a", "A-hold 1").await;
    let a2 = post(&gw, "chat-a", "a", "A 2").await;
    let a3 = post(&gw, "chat-a", "a", "A 3").await;
    llm.wait_held("A-hold", 1, TIMEOUT)
        .await
        .expect("A's first turn reaches the model");

    // Another session is answered while A's first turn is still with the model.
    let b1 = post(&gw, "chat-b", "b", "B 1").await;
    let delivered = callback
        .wait_delivered(|d| reply_to(d, &b1).is_some(), TIMEOUT)
        .await
        .expect("B answered while A is held");
    assert_eq!(reply_to(&delivered, &b1).expect("b1").text, "llm: B 1");
    assert_eq!(llm.held_count("A-hold"), 1, "A's first turn is still held");
    assert!(
        callback.received().iter().all(|d| d.chat_id != "chat-a"),
        "no reply for A yet: {:?}",
        callback.received()
    );
    let asked: Vec<String> = llm.requests().iter().map(last_user_content).collect();
    assert!(
        !asked.iter().any(|t| t == "A 2" || t == "A 3"),
        "A's later turns wait for its first: {asked:?}"
    );

    llm.release("A-hold");
    let delivered = callback
        .wait_delivered(
            |d| [&a1, &a2, &a3].iter().all(|id| reply_to(d, id).is_some()),
            TIMEOUT,
        )
        .await
        .expect("A's replies after release");
    let a_replies: Vec<(Option<String>, String)> = delivered
        .iter()
        .filter(|d| d.chat_id == "chat-a")
        .map(|d| (d.reply_to.clone(), d.text.clone()))
        .collect();
    assert_eq!(
        a_replies,
        [
            (Some(a1.clone()), "llm: A-hold 1".to_owned()),
            (Some(a2.clone()), "llm: A 2".to_owned()),
            (Some(a3.clone()), "llm: A 3".to_owned()),
        ],
        "A's replies in order, once each"
    );

    let requests = llm.requests();
    let for_a2: Vec<&Value> = requests
        .iter()
        .filter(|r| last_user_content(r) == "A 2")
        .collect();
    assert_eq!(for_a2.len(), 1, "{requests:?}");
    assert_eq!(
        for_a2[0]["messages"],
        json!([user("A-hold 1"), assistant("llm: A-hold 1"), user("A 2")]),
        "A's second turn saw the first turn and its reply"
    );
    let for_a3: Vec<&Value> = requests
        .iter()
        .filter(|r| last_user_content(r) == "A 3")
        .collect();
    assert_eq!(
        for_a3[0]["messages"],
        json!([
            user("A-hold 1"),
            assistant("llm: A-hold 1"),
            user("A 2"),
            assistant("llm: A 2"),
            user("A 3"),
        ])
    );
}

/// `gatewayctl events --output json` running against `gw`, its lines collected as they come.
struct EventLines {
    /// Held so that dropping this ends the watcher (`kill_on_drop`).
    _child: tokio::process::Child,
    lines: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

impl EventLines {
    async fn start(gw: &Gateway) -> EventLines {
        use tokio::io::AsyncBufReadExt as _;
        let mut child = tokio::process::Command::new(gateway_tests::gatewayctl_bin())
            .args(["events", "--addr", &gw.admin_url(), "--output", "json"])
            .env_remove("GATEWAYCTL_ADDR")
            .env_remove("GATEWAYCTL_TOKEN")
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("spawn gatewayctl events");
        let mut stderr = tokio::io::BufReader::new(child.stderr.take().expect("stderr")).lines();
        let notice = tokio::time::timeout(TIMEOUT, stderr.next_line())
            .await
            .expect("the watcher starts in time")
            .expect("stderr readable")
            .expect("a notice on stderr");
        assert!(notice.contains("watching events"), "{notice}");
        let mut stdout = tokio::io::BufReader::new(child.stdout.take().expect("stdout")).lines();
        let lines = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let sink = lines.clone();
        tokio::spawn(async move {
            while let Ok(Some(line)) = stdout.next_line().await {
                if let Ok(mut l) = sink.lock() {
                    l.push(line);
                }
            }
        });
        EventLines {
            _child: child,
            lines,
        }
    }

    fn lines(&self) -> Vec<String> {
        self.lines.lock().map(|l| l.clone()).unwrap_or_default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_echoes_the_key_never_gets_it_to_the_chat_transcript_events_or_output() {
    let llm = FakeOpenAi::start().await;
    let callback = FakeCallback::start().await;
    let mut opts = options(
        &llm.base_url(),
        &callback,
        "max_attempts = 2\ntimeout = \"5s\"",
    );
    opts.log_level = Some("debug".to_owned());
    let mut gw = Gateway::start(opts).await.expect("start gatewayd");
    let events = EventLines::start(&gw).await;

    // Two 500s that echo the request headers: a retry, then the error reply.
    llm.push_fault(Fault::EchoHeaders(500));
    llm.push_fault(Fault::EchoHeaders(500));
    let reply = ask(&gw, &callback, "gus", "leak it").await;
    assert_eq!(
        error_reason(&reply),
        "the model server had an internal error",
        "only the class of failure: {reply:?}"
    );
    // A 200 whose body is not a completion but quotes the headers (serde would quote it too).
    llm.push_fault(Fault::EchoHeaders(200));
    let reply2 = ask(&gw, &callback, "gus", "leak it again").await;
    assert_eq!(
        error_reason(&reply2),
        "the model server sent an unexpected response",
        "{reply2:?}"
    );
    assert_eq!(llm.requests().len(), 3, "two attempts, then one");
    assert!(
        llm.auth_headers()
            .iter()
            .all(|a| a.as_deref() == Some(&format!("Bearer {KEY}"))),
        "the key was sent (and so echoed)"
    );
    let history = ask(&gw, &callback, "gus", "/history").await;

    // Nothing of the echoed body in what the chat user got.
    for text in callback
        .received()
        .iter()
        .map(|d| d.text.clone())
        .chain([history.clone()])
    {
        for bad in [KEY, "Bearer", "request was", "authorization"] {
            assert!(!text.contains(bad), "{bad:?} reached the chat: {text:?}");
        }
    }
    // ...nor in the transcript as the admin API shows it.
    let sessions = gw.gatewayctl_json(&["sessions", "list"]).await;
    let keys: Vec<String> = sessions["sessions"]
        .as_array()
        .expect("sessions")
        .iter()
        .filter_map(|s| s["key"].as_str().map(str::to_owned))
        .collect();
    assert!(!keys.is_empty(), "{sessions}");
    for key in &keys {
        let shown = gw
            .gatewayctl_json(&["sessions", "show", key])
            .await
            .to_string();
        assert!(
            shown.contains("leak it"),
            "the user's message is kept: {shown}"
        );
        assert!(!shown.contains(KEY), "key in the transcript: {shown}");
        assert!(
            !shown.contains("request was"),
            "body in the transcript: {shown}"
        );
    }
    // ...nor in the events (waited for until the /history reply went out).
    poll_until_async(
        TIMEOUT,
        "the /history reply's message_out event",
        || async {
            events
                .lines()
                .iter()
                .filter(|l| l.contains("\"message_out\""))
                .count()
                >= 3
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}: {:?}", events.lines()));
    for line in events.lines() {
        assert!(!line.contains(KEY), "key in an event: {line}");
        assert!(!line.contains("request was"), "body in an event: {line}");
    }
    drop(events);

    // The log has a bounded, redacted excerpt; the key is nowhere in stdout, stderr or the file.
    let status = gw.stop().await.expect("stop");
    assert!(status.success(), "graceful exit: {status}");
    let stderr = gw.stderr_log();
    let stdout = gw.stdout_lines().join("\n");
    let file = log_files(&gw);
    for (name, text) in [
        ("stderr", &stderr),
        ("stdout", &stdout),
        ("log file", &file),
    ] {
        assert!(!text.contains(KEY), "API key leaked to {name}:\n{text}");
    }
    for (name, text) in [("stderr", &stderr), ("log file", &file)] {
        let excerpts: Vec<&str> = text
            .lines()
            .filter(|l| l.contains("The model server answered an error."))
            .collect();
        assert_eq!(
            excerpts.len(),
            2,
            "one line per error answer in {name}:\n{text}"
        );
        for line in &excerpts {
            assert!(line.contains("status=500"), "{line}");
            assert!(
                line.contains("request was") && line.contains("[redacted]"),
                "the excerpt is logged, redacted: {line}"
            );
            assert!(
                line.contains("content-type"),
                "the body's newlines are escaped, so the excerpt is one line: {line}"
            );
        }
        assert!(
            text.lines().any(
                |l| l.contains("The model server's response is not a completion.")
                    && l.contains("[redacted]")
            ),
            "the malformed response is logged, redacted:\n{text}"
        );
    }
}
