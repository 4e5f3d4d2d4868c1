//! Supervision, in process, with panics injected through the gateway's test-only fault handle:
//! a panicked session worker or delivery lane recovers without losing or repeating anything, a
//! message or reply that panics every time is set aside rather than looping, and a part that
//! cannot be restarted turns `/readyz` to 503, is logged at error level and shows in
//! `GetOverview` and `gatewayctl status`.

use std::io::Write;
use std::path::Path;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use gateway_tests::{FakeCallback, TIMEOUT, poll_until_async};
use gatewayd::config::Config;
use gatewayd::events::Event;
use gatewayd::message::{Address, ChannelKind, SessionKey};
use gatewayd::runtime::Gateway;
use gatewayd::session::worker::{MAX_TURN_PANICS, SET_ASIDE_REPLY};
use gatewayd::store::Role;
use gatewayd::supervise::{DELIVERY_LANE, Fault, SESSION_WORKER, STORE_WRITER};
use tokio::sync::broadcast;

/// Everything the process logs, for the tests that look for a log line.
fn log() -> &'static Arc<Mutex<Vec<u8>>> {
    static LOG: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();
    LOG.get_or_init(|| {
        let buf = Arc::new(Mutex::new(Vec::new()));
        let writer = buf.clone();
        let _ = tracing_subscriber::fmt()
            .with_ansi(false)
            .with_max_level(tracing::Level::INFO)
            .with_writer(move || LogWriter(writer.clone()))
            .try_init();
        buf
    })
}

struct LogWriter(Arc<Mutex<Vec<u8>>>);

impl Write for LogWriter {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        if let Ok(mut b) = self.0.lock() {
            b.extend_from_slice(data);
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn log_text() -> String {
    log()
        .lock()
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default()
}

fn config(data: &Path, callback: &FakeCallback) -> Config {
    Config::parse(&format!(
        "[gateway]\ndata_dir = \"{}\"\n[http]\nlisten = \"127.0.0.1:0\"\n[admin]\nlisten = \"127.0.0.1:0\"\n\
         [channels.webchat]\nenabled = false\n\
         [channels.http]\nenabled = true\ncallback_url = \"{}\"\n\
         [delivery]\nretry_backoff = \"10ms\"\nmax_backoff = \"50ms\"\n",
        data.display(),
        callback.url()
    ))
    .expect("valid config")
}

async fn start(data: &Path, callback: &FakeCallback) -> Gateway {
    log();
    Gateway::start(config(data, callback), "test")
        .await
        .expect("start")
}

async fn post(client: &reqwest::Client, gw: &Gateway, id: &str, chat: &str, text: &str) {
    let body =
        serde_json::json!({"message_id": id, "chat_id": chat, "sender_id": chat, "text": text});
    let resp = client
        .post(format!("http://{}/channels/http/messages", gw.http_addr))
        .json(&body)
        .send()
        .await
        .expect("post");
    assert_eq!(resp.status().as_u16(), 202, "{id}");
}

async fn get(client: &reqwest::Client, gw: &Gateway, path: &str) -> (u16, String) {
    let resp = client
        .get(format!("http://{}{path}", gw.http_addr))
        .send()
        .await
        .expect("get");
    let status = resp.status().as_u16();
    (status, resp.text().await.unwrap_or_default())
}

/// Waits on the events bus until `check` holds, re-checking after every event.
async fn wait_for<F, Fut>(events: &mut broadcast::Receiver<Event>, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let waited = tokio::time::timeout(Duration::from_secs(60), async {
        loop {
            if check().await {
                return;
            }
            match events.recv().await {
                Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {}
                Err(broadcast::error::RecvError::Closed) => panic!("events bus closed"),
            }
        }
    })
    .await;
    assert!(waited.is_ok(), "timed out waiting until {what}");
}

fn fault(gw: &Gateway, component: &str) -> Option<Fault> {
    gw.supervisor
        .faults()
        .into_iter()
        .find(|f| f.component == component)
}

/// The stored transcript of an HTTP-channel direct chat whose sender is `sender`.
async fn transcript(gw: &Gateway, sender: &str) -> Vec<(Role, String)> {
    let user = gw
        .identity
        .resolve(&Address {
            channel: ChannelKind::new("http"),
            sender_id: sender.to_owned(),
        })
        .await
        .expect("resolve");
    gw.store
        .history(&SessionKey::User(user), 100)
        .await
        .expect("history")
        .into_iter()
        .map(|e| (e.role, e.text))
        .collect()
}

fn replies_to(callback: &FakeCallback, id: &str) -> usize {
    callback
        .delivered()
        .iter()
        .filter(|d| d.reply_to.as_deref() == Some(id))
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicked_session_worker_is_restarted_and_its_message_answered_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let callback = FakeCallback::start().await;
    let gw = start(dir.path(), &callback).await;
    let mut events = gw.events.subscribe();
    let client = reqwest::Client::new();

    gw.faults().panic_next_turn();
    post(&client, &gw, "w-1", "alice", "first words").await;
    callback
        .wait_delivered(
            |d| d.iter().any(|r| r.reply_to.as_deref() == Some("w-1")),
            TIMEOUT,
        )
        .await
        .expect("the message is answered after the restart");
    let restarted = fault(&gw, SESSION_WORKER).expect("the worker's panic is recorded");
    assert_eq!(restarted.restarts, 1);
    assert!(restarted.restartable);
    assert!(
        restarted.message.contains("injected fault"),
        "{restarted:?}"
    );

    // Later messages in that session and in another are answered as usual.
    post(&client, &gw, "w-2", "alice", "second words").await;
    post(&client, &gw, "w-3", "bob", "other chat").await;
    callback
        .wait_delivered(
            |d| {
                ["w-2", "w-3"]
                    .iter()
                    .all(|id| d.iter().any(|r| r.reply_to.as_deref() == Some(*id)))
            },
            TIMEOUT,
        )
        .await
        .expect("later messages are answered");
    wait_for(&mut events, "nothing is pending", || async {
        gw.store.counts().await.expect("counts") == (0, 0, 0)
    })
    .await;
    for id in ["w-1", "w-2", "w-3"] {
        assert_eq!(
            replies_to(&callback, id),
            1,
            "{id} is answered exactly once"
        );
    }
    assert_eq!(
        transcript(&gw, "alice").await,
        vec![
            (Role::User, "first words".to_owned()),
            (Role::Assistant, "first words".to_owned()),
            (Role::User, "second words".to_owned()),
            (Role::Assistant, "second words".to_owned()),
        ],
        "exactly one turn per message"
    );
    assert_eq!(fault(&gw, SESSION_WORKER).map(|f| f.restarts), Some(1));
    let (status, body) = get(&client, &gw, "/readyz").await;
    assert_eq!(
        (status, body.as_str()),
        (200, "ready\n"),
        "a restart keeps it ready"
    );
    let (_, metrics) = get(&client, &gw, "/metrics").await;
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("gateway_task_restarts_total{component=\"session worker\"}")),
        "restarts are a metric:\n{metrics}"
    );
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_that_always_panics_is_set_aside_with_an_error_reply() {
    let dir = tempfile::tempdir().expect("tempdir");
    let callback = FakeCallback::start().await;
    let gw = start(dir.path(), &callback).await;
    let mut events = gw.events.subscribe();
    let client = reqwest::Client::new();

    gw.faults().poison_turns("poison");
    post(&client, &gw, "p-1", "carol", "poison").await;
    post(&client, &gw, "p-2", "carol", "after the poison").await;
    post(&client, &gw, "p-3", "dave", "elsewhere").await;
    let delivered = callback
        .wait_delivered(|d| d.len() >= 3, TIMEOUT)
        .await
        .expect("all three are answered");
    let reply = |id: &str| {
        delivered
            .iter()
            .find(|d| d.reply_to.as_deref() == Some(id))
            .map(|d| d.text.clone())
    };
    assert_eq!(reply("p-1").as_deref(), Some(SET_ASIDE_REPLY));
    assert_eq!(reply("p-2").as_deref(), Some("after the poison"));
    assert_eq!(reply("p-3").as_deref(), Some("elsewhere"));
    wait_for(&mut events, "nothing is pending", || async {
        gw.store.counts().await.expect("counts") == (0, 0, 0)
    })
    .await;
    assert_eq!(
        fault(&gw, SESSION_WORKER).map(|f| f.restarts),
        Some(u64::from(MAX_TURN_PANICS)),
        "bounded: no more panics than the limit"
    );
    // Entries are in time order, and the notice is written after the next message arrived.
    let mut stored = transcript(&gw, "carol").await;
    stored.sort_by(|a, b| a.1.cmp(&b.1).then(a.0.as_str().cmp(b.0.as_str())));
    let mut expected = vec![
        (Role::User, "poison".to_owned()),
        (Role::Notice, SET_ASIDE_REPLY.to_owned()),
        (Role::User, "after the poison".to_owned()),
        (Role::Assistant, "after the poison".to_owned()),
    ];
    expected.sort_by(|a, b| a.1.cmp(&b.1).then(a.0.as_str().cmp(b.0.as_str())));
    assert_eq!(
        stored, expected,
        "one turn each, the poison answered by the notice"
    );
    let logged = log_text();
    assert!(
        logged
            .lines()
            .any(|l| l.contains("ERROR") && l.contains("set aside") && l.contains("panics=3")),
        "the set-aside is logged at error level"
    );
    let (status, _) = get(&client, &gw, "/readyz").await;
    assert_eq!(status, 200);
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicked_delivery_lane_is_restarted_and_loses_no_reply() {
    let dir = tempfile::tempdir().expect("tempdir");
    let callback = FakeCallback::start().await;
    let gw = start(dir.path(), &callback).await;
    let mut events = gw.events.subscribe();
    let client = reqwest::Client::new();

    gw.faults().panic_next_send();
    let ids: Vec<String> = (0..5).map(|i| format!("d-{i}")).collect();
    for id in &ids {
        post(&client, &gw, id, "erin", id).await;
    }
    post(&client, &gw, "d-other", "frank", "d-other").await;
    let delivered = callback
        .wait_delivered(|d| d.len() > ids.len(), TIMEOUT)
        .await
        .expect("every reply is delivered");
    let in_chat: Vec<String> = delivered
        .iter()
        .filter(|d| d.chat_id == "erin")
        .filter_map(|d| d.reply_to.clone())
        .collect();
    assert_eq!(in_chat, ids, "each reply once, in order");
    wait_for(&mut events, "nothing is pending", || async {
        gw.store.counts().await.expect("counts") == (0, 0, 0)
    })
    .await;
    let lane = fault(&gw, DELIVERY_LANE).expect("the lane's panic is recorded");
    assert_eq!(lane.restarts, 1);
    assert!(lane.restartable);
    assert_eq!(
        callback.received().len(),
        ids.len() + 1,
        "nothing sent twice"
    );
    let (status, _) = get(&client, &gw, "/readyz").await;
    assert_eq!(status, 200);
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reply_that_always_panics_becomes_a_dead_letter_and_others_are_sent() {
    let dir = tempfile::tempdir().expect("tempdir");
    let callback = FakeCallback::start().await;
    let gw = start(dir.path(), &callback).await;
    let mut events = gw.events.subscribe();
    let client = reqwest::Client::new();

    gw.faults().poison_sends("unsendable");
    post(&client, &gw, "u-1", "gina", "unsendable").await;
    post(&client, &gw, "u-2", "gina", "fine").await;
    callback
        .wait_delivered(
            |d| d.iter().any(|r| r.reply_to.as_deref() == Some("u-2")),
            TIMEOUT,
        )
        .await
        .expect("the next reply in the chat is sent");
    wait_for(
        &mut events,
        "the poisoned reply is a dead letter",
        || async { gw.store.counts().await.expect("counts") == (0, 0, 1) },
    )
    .await;
    let dead = gw
        .store
        .dead_letters(None, None, 10)
        .await
        .expect("dead letters");
    assert_eq!(dead.len(), 1);
    assert!(
        dead[0].last_error.contains("panicked 3 times"),
        "{:?}",
        dead[0].last_error
    );
    assert_eq!(dead[0].message.text, "unsendable");
    assert_eq!(replies_to(&callback, "u-1"), 0);
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicked_periodic_task_is_restarted_and_the_gateway_stays_ready() {
    let dir = tempfile::tempdir().expect("tempdir");
    let callback = FakeCallback::start().await;
    let gw = start(dir.path(), &callback).await;
    let client = reqwest::Client::new();
    assert!(gw.faults().panic_component("session sweeper"));
    poll_until_async(TIMEOUT, "the sweeper's panic is recorded", || async {
        fault(&gw, "session sweeper").is_some_and(|f| f.restarts == 1)
    })
    .await
    .expect("restarted");
    assert!(gw.supervisor.ready().is_ok());
    let (status, _) = get(&client, &gw, "/readyz").await;
    assert_eq!(status, 200);
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_writer_panic_turns_readyz_503_and_shows_in_status() {
    let dir = tempfile::tempdir().expect("tempdir");
    let callback = FakeCallback::start().await;
    let gw = start(dir.path(), &callback).await;
    let client = reqwest::Client::new();
    let (status, _) = get(&client, &gw, "/readyz").await;
    assert_eq!(status, 200);

    assert!(gw.faults().panic_component(STORE_WRITER));
    poll_until_async(TIMEOUT, "/readyz answers 503", || async {
        get(&client, &gw, "/readyz").await.0 == 503
    })
    .await
    .expect("not ready");
    let (_, body) = get(&client, &gw, "/readyz").await;
    assert!(body.contains("failed: store writer: panicked"), "{body}");
    assert_eq!(
        get(&client, &gw, "/healthz").await,
        (200, "ok\n".to_owned()),
        "still alive and serving"
    );
    let logged = log_text();
    assert!(
        logged
            .lines()
            .any(|l| l.contains("ERROR") && l.contains("store writer panicked")),
        "the writer's panic is logged at error level"
    );
    assert!(
        logged.lines().any(|l| l.contains("ERROR")
            && l.contains("cannot be restarted")
            && l.contains("component=\"store writer\"")),
        "the failed part is logged at error level"
    );
    let (_, metrics) = get(&client, &gw, "/metrics").await;
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("gateway_task_panics_total{component=\"store writer\"}")),
        "the failure is counted:\n{metrics}"
    );

    let admin = format!("http://{}", gw.admin_addr.expect("admin enabled"));
    let ctl = |args: &[&str]| {
        let out = std::process::Command::new(gateway_tests::gatewayctl_bin())
            .args(["--addr", &admin])
            .args(args)
            .env_remove("GATEWAYCTL_TOKEN")
            .env_remove("GATEWAYCTL_ADDR")
            .output()
            .expect("run gatewayctl");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let json: serde_json::Value =
        serde_json::from_str(&ctl(&["status", "--output", "json"])).expect("status JSON");
    assert_eq!(json["ready"], false, "{json}");
    let faults = json["faults"].as_array().expect("faults");
    let writer = faults
        .iter()
        .find(|f| f["component"] == STORE_WRITER)
        .expect("the store writer is listed");
    assert_eq!(writer["restartable"], false);
    assert!(
        writer["message"]
            .as_str()
            .is_some_and(|m| m.contains("injected fault")),
        "{writer}"
    );
    assert!(writer["at_unix_ms"].as_i64().is_some_and(|t| t > 0));
    let table = ctl(&["status"]);
    assert!(table.contains("health     NOT READY"), "{table}");
    assert!(table.contains("  store writer: FAILED"), "{table}");
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mailbox_larger_than_tokio_allows_never_stalls_routing() {
    // Before, the first message panicked while the router's map was locked, and every later one
    // was acknowledged but never routed. Set past validation, to test the router's own guard.
    let dir = tempfile::tempdir().expect("tempdir");
    let callback = FakeCallback::start().await;
    let mut cfg = config(dir.path(), &callback);
    cfg.gateway.mailbox_capacity = 2_305_843_009_213_693_952;
    log();
    let gw = Gateway::start(cfg, "test").await.expect("start");
    let mut events = gw.events.subscribe();
    let client = reqwest::Client::new();
    for i in 0..3 {
        post(
            &client,
            &gw,
            &format!("big-{i}"),
            &format!("chat-{i}"),
            "hello",
        )
        .await;
    }
    callback
        .wait_delivered(|d| d.len() >= 3, TIMEOUT)
        .await
        .expect("every message is answered");
    wait_for(&mut events, "nothing is pending", || async {
        gw.store.counts().await.expect("counts") == (0, 0, 0)
    })
    .await;
    assert!(
        gw.supervisor.faults().is_empty(),
        "{:?}",
        gw.supervisor.faults()
    );
    gw.shutdown().await;
}
