//! Crash safety under chaos: many chats post concurrently to the real `gatewayd` while it is
//! SIGKILLed and restarted at random moments, the way a platform keeps redelivering a webhook
//! until it gets its 2xx. Afterwards nothing acknowledged may be lost, every message must have had
//! exactly one agent turn and one reply row, and every reply must have reached the callback.
//!
//! Sizes come from the environment: `CHAOS_MESSAGES` (2000), `CHAOS_CHATS` (50), `CHAOS_KILLS`
//! (5) and `CHAOS_SEED` (random; printed so a failing run's kill points can be replayed).
//! `tests/chaos.sh` runs a long version.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use gateway_proto::admin as pb;
use gateway_tests::{
    Delivery, FakeCallback, Gateway, GatewayOptions, TIMEOUT, inspect, poll_until_async,
};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{Value, json};
use tokio::sync::watch;

/// How long the accepted count may stand still while the senders run before the test fails.
const STALL: Duration = Duration::from_secs(60);
/// After a failed post that no kill explains (the daemon is up and answered badly), how long a
/// sender waits for a restart before it tries again anyway.
const UNEXPLAINED_RETRY: Duration = Duration::from_millis(100);
/// Shortest wait for every reply after the senders are done.
const DELIVERY_TIMEOUT: Duration = Duration::from_secs(120);

fn env_count(name: &str, default: usize) -> usize {
    match std::env::var(name) {
        Ok(v) if !v.trim().is_empty() => v
            .trim()
            .parse()
            .unwrap_or_else(|e| panic!("{name}={v:?} is not a whole number: {e}")),
        _ => default,
    }
}

fn env_seed() -> u64 {
    match std::env::var("CHAOS_SEED") {
        Ok(v) if !v.trim().is_empty() => v
            .trim()
            .parse()
            .unwrap_or_else(|e| panic!("CHAOS_SEED={v:?} is not a u64: {e}")),
        _ => rand::random(),
    }
}

/// Where the daemon can be reached: `base` is `None` from just before a kill until the restarted
/// daemon listens; `generation` counts the runs.
#[derive(Debug, Clone)]
struct Up {
    generation: u64,
    base: Option<String>,
}

/// What one chat's sender did.
#[derive(Debug, Default)]
struct ChatStats {
    accepted: Vec<String>,
    posts: usize,
    failed_posts: usize,
    /// Posts answered 202 with `duplicate: true` (the message was committed by an earlier try).
    redelivered: usize,
    /// Failed posts while the daemon was up and no kill had happened since the post began.
    unexplained: Vec<String>,
}

/// One SIGKILL and restart.
#[derive(Debug)]
struct Kill {
    after_sending: bool,
    accepted: usize,
    replies_missing: usize,
    /// Just before the SIGKILL.
    killed_at: Instant,
    /// When the new run listened.
    restarted_at: Instant,
}

fn message_id(chat: usize, i: usize) -> String {
    format!("c{chat}-m{i}")
}

fn chat_of(chat: usize) -> String {
    format!("chat-{chat}")
}

/// Posts once; `Ok(duplicate)` on a 202 `{"accepted":true,...}`, otherwise why not.
async fn post_once(client: &reqwest::Client, base: &str, body: &Value) -> Result<bool, String> {
    let resp = client
        .post(format!("{base}/channels/http/messages"))
        .json(body)
        .send()
        .await
        .map_err(|e| error_chain(&e))?;
    let status = resp.status().as_u16();
    let text = resp.text().await.map_err(|e| error_chain(&e))?;
    if status != 202 {
        return Err(format!("HTTP {status}: {text}"));
    }
    let json: Value = serde_json::from_str(&text)
        .map_err(|e| format!("202 with a non-JSON body {text:?}: {e}"))?;
    if json["accepted"] != Value::Bool(true) {
        return Err(format!("202 without accepted:true: {text}"));
    }
    json["duplicate"]
        .as_bool()
        .ok_or_else(|| format!("202 without a boolean duplicate: {text}"))
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

/// One chat's sender: posts its messages in order, each until it gets a 202, with the same body
/// every time.
async fn run_chat(
    chat: usize,
    count: usize,
    client: reqwest::Client,
    mut up: watch::Receiver<Up>,
    accepted: Arc<watch::Sender<usize>>,
) -> Result<ChatStats, String> {
    let mut stats = ChatStats::default();
    for i in 0..count {
        let id = message_id(chat, i);
        let body = json!({
            "message_id": id,
            "chat_id": chat_of(chat),
            "sender_id": format!("u{chat}"),
            "chat_type": "direct",
            "text": id,
        });
        loop {
            let (generation, base) = {
                let state = up
                    .wait_for(|s| s.base.is_some())
                    .await
                    .map_err(|_| format!("{id}: the killer is gone (restart failed?)"))?;
                (state.generation, state.base.clone().unwrap_or_default())
            };
            stats.posts += 1;
            match post_once(&client, &base, &body).await {
                Ok(duplicate) => {
                    if duplicate {
                        stats.redelivered += 1;
                    }
                    stats.accepted.push(id.clone());
                    accepted.send_modify(|n| *n += 1);
                    break;
                }
                Err(e) => {
                    stats.failed_posts += 1;
                    // The killer marks the daemon down before it kills, so a post a kill broke
                    // always sees the mark (or a newer run) here.
                    let explained = {
                        let s = up.borrow();
                        s.generation != generation || s.base.is_none()
                    };
                    if explained {
                        up.wait_for(|s| s.generation != generation && s.base.is_some())
                            .await
                            .map_err(|_| format!("{id}: the killer is gone (restart failed?)"))?;
                    } else {
                        stats.unexplained.push(format!("{id}: {e}"));
                        // Back off until the next restart, or briefly if none comes.
                        let _ = tokio::time::timeout(
                            UNEXPLAINED_RETRY,
                            up.wait_for(|s| s.generation != generation),
                        )
                        .await;
                    }
                }
            }
        }
    }
    Ok(stats)
}

/// Waits until at least `target` messages are accepted; fails if the count stands still for
/// [`STALL`].
async fn wait_accepted(rx: &mut watch::Receiver<usize>, target: usize) {
    loop {
        let now = *rx.borrow_and_update();
        if now >= target {
            return;
        }
        match tokio::time::timeout(STALL, rx.changed()).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) => panic!("accepted counter closed at {now} before {target}"),
            Err(_) => {
                panic!("no message accepted for {STALL:?}: stuck at {now}, waiting for {target}")
            }
        }
    }
}

/// Distinct expected messages that have at least one delivered reply.
fn answered(delivered: &[Delivery], expected: &HashMap<String, String>) -> usize {
    delivered
        .iter()
        .filter_map(|d| d.reply_to.as_deref())
        .filter(|r| expected.contains_key(*r))
        .collect::<HashSet<_>>()
        .len()
}

/// Marks the daemon down, SIGKILLs it, restarts it and publishes the new address; returns when
/// the kill began and when the new run listened.
async fn kill_and_restart(gw: &mut Gateway, up: &watch::Sender<Up>) -> (Instant, Instant) {
    up.send_modify(|s| s.base = None);
    let killed_at = Instant::now();
    gw.kill().await;
    if let Err(e) = gw.restart().await {
        panic!("gatewayd did not come back after SIGKILL: {e:#}");
    }
    let restarted_at = Instant::now();
    let base = gw.http_base();
    up.send_modify(|s| {
        s.generation += 1;
        s.base = Some(base);
    });
    (killed_at, restarted_at)
}

/// Warning/error/panic lines of the daemon's stderr (all runs).
fn notable_lines(log: &str) -> Vec<&str> {
    log.lines()
        .filter(|l| l.contains("WARN") || l.contains("ERROR") || l.contains("panicked"))
        .collect()
}

/// The daemon's warning/error/panic lines, for reports.
fn notable_stderr(gw: &Gateway, limit: usize) -> String {
    let log = gw.stderr_log();
    let lines = notable_lines(&log);
    format!(
        "{} warning/error/panic line(s) in {}; first {}:\n{}",
        lines.len(),
        gw.stderr_path().display(),
        limit.min(lines.len()),
        lines[..limit.min(lines.len())].join("\n")
    )
}

#[derive(Debug)]
struct InboxRow {
    id: i64,
    channel: String,
    message_id: String,
    chat_id: String,
    sender_id: String,
    text: String,
    done: bool,
}

#[derive(Debug)]
struct OutboxRow {
    id: i64,
    inbox_id: Option<i64>,
    chat_id: String,
    text: String,
    reply_to: Option<String>,
    status: String,
}

/// What the daemon has stored, read through its admin API.
struct Stored {
    inbox: Vec<InboxRow>,
    outbox: Vec<OutboxRow>,
    /// Every transcript entry that belongs to an inbound message's turn: (inbox id, role, text).
    transcript: Vec<(i64, String, String)>,
}

impl Stored {
    /// Whether every inbox row's turn is committed and every outbox row delivered: the state the
    /// marks of the last deliveries settle in shortly after the callback has seen them.
    fn settled(&self) -> bool {
        self.inbox.iter().all(|r| r.done) && self.outbox.iter().all(|r| r.status == "delivered")
    }
}

/// Reads the inbox and the outbox (without transcripts) through the admin API.
async fn read_rows(gw: &Gateway) -> anyhow::Result<(Vec<InboxRow>, Vec<OutboxRow>)> {
    let inbox = inspect::inbox(gw, "", "")
        .await?
        .into_iter()
        .map(|r| InboxRow {
            id: r.id,
            channel: r.channel,
            message_id: r.channel_message_id,
            chat_id: r.chat_id,
            sender_id: r.sender_id,
            text: r.text,
            done: r.state == pb::InboxState::Done as i32,
        })
        .collect();
    let outbox = inspect::outbox(gw, "", "")
        .await?
        .into_iter()
        .map(|r| OutboxRow {
            id: r.id,
            inbox_id: (r.inbox_id != 0).then_some(r.inbox_id),
            chat_id: r.chat_id,
            text: r.text,
            reply_to: (!r.reply_to.is_empty()).then_some(r.reply_to),
            status: inspect::status_name(r.status).to_owned(),
        })
        .collect();
    Ok((inbox, outbox))
}

/// Reads everything [`check_stored`] looks at through the admin API, once the delivered marks
/// have settled (or after a timeout, so the check reports what is wrong).
async fn read_stored(gw: &Gateway) -> Stored {
    let last = std::sync::Mutex::new(None);
    let settled = poll_until_async(
        TIMEOUT,
        "every inbox row is done and every reply delivered",
        || {
            let last = &last;
            async move {
                match read_rows(gw).await {
                    Ok(rows) => {
                        let stored = Stored {
                            inbox: rows.0,
                            outbox: rows.1,
                            transcript: Vec::new(),
                        };
                        let ok = stored.settled();
                        *last.lock().expect("the last state read") = Some(stored);
                        ok
                    }
                    Err(_) => false,
                }
            }
        },
    )
    .await;
    if let Err(e) = settled {
        eprintln!("chaos: {e}; checking the last state read");
    }
    let last = last.into_inner().expect("the last state read");
    let mut stored = match last {
        Some(s) => s,
        None => {
            let (inbox, outbox) = read_rows(gw).await.expect("read the inbox and outbox");
            Stored {
                inbox,
                outbox,
                transcript: Vec::new(),
            }
        }
    };
    for (key, entries) in inspect::transcripts(gw)
        .await
        .expect("read the transcripts")
    {
        for e in entries {
            if e.inbox_id == 0 {
                continue;
            }
            let role = match pb::Role::try_from(e.role) {
                Ok(pb::Role::User) => "user".to_owned(),
                Ok(pb::Role::Assistant) => "assistant".to_owned(),
                Ok(pb::Role::Notice) => "notice".to_owned(),
                _ => format!("{} in {key}", e.role),
            };
            stored.transcript.push((e.inbox_id, role, e.text));
        }
    }
    stored
}

/// Checks the stored state after the run; returns every violation found.
fn check_stored(
    stored: &Stored,
    expected: &HashMap<String, String>,
    senders: &HashMap<String, String>,
) -> Vec<String> {
    let mut problems = Vec::new();

    let inbox = &stored.inbox;
    if inbox.len() != expected.len() {
        problems.push(format!(
            "inbox has {} rows, expected exactly {} (one per message, redeliveries deduplicated)",
            inbox.len(),
            expected.len()
        ));
    }
    let mut inbox_by_mid: HashMap<&str, Vec<i64>> = HashMap::new();
    for row in inbox {
        inbox_by_mid
            .entry(&row.message_id)
            .or_default()
            .push(row.id);
        if !row.done {
            problems.push(format!(
                "inbox row {} ({}) is not done",
                row.id, row.message_id
            ));
        }
        if row.channel != "http" {
            problems.push(format!(
                "inbox row {} has channel {:?}",
                row.id, row.channel
            ));
        }
        match expected.get(&row.message_id) {
            None => problems.push(format!(
                "inbox row {} has unexpected message id {:?}",
                row.id, row.message_id
            )),
            Some(chat) => {
                if &row.chat_id != chat
                    || row.text != row.message_id
                    || senders.get(&row.message_id) != Some(&row.sender_id)
                {
                    problems.push(format!(
                        "inbox row {} does not match what was posted: {row:?}",
                        row.id
                    ));
                }
            }
        }
    }
    for (mid, ids) in &inbox_by_mid {
        if ids.len() > 1 {
            problems.push(format!(
                "message {mid} is in the inbox {} times: rows {ids:?}",
                ids.len()
            ));
        }
    }
    let mut missing: Vec<&String> = expected
        .keys()
        .filter(|m| !inbox_by_mid.contains_key(m.as_str()))
        .collect();
    missing.sort();
    if !missing.is_empty() {
        problems.push(format!(
            "{} accepted message(s) LOST (no inbox row): {missing:?}",
            missing.len()
        ));
    }

    // Transcript entries per inbox row and role.
    let mut turns: HashMap<i64, BTreeMap<String, usize>> = HashMap::new();
    let mut assistant_text: HashMap<i64, Vec<String>> = HashMap::new();
    for (inbox_id, role, text) in &stored.transcript {
        *turns
            .entry(*inbox_id)
            .or_default()
            .entry(role.clone())
            .or_default() += 1;
        if role == "assistant" {
            assistant_text
                .entry(*inbox_id)
                .or_default()
                .push(text.clone());
        }
    }
    let inbox_ids: HashSet<i64> = inbox.iter().map(|r| r.id).collect();
    for row in inbox {
        let roles = turns.get(&row.id).cloned().unwrap_or_default();
        let user = roles.get("user").copied().unwrap_or(0);
        let assistant = roles.get("assistant").copied().unwrap_or(0);
        if user != 1 || assistant != 1 || roles.len() != 2 {
            problems.push(format!(
                "inbox row {} ({}) has transcript rows {roles:?}; expected exactly one user and one assistant",
                row.id, row.message_id
            ));
        }
        if let Some(texts) = assistant_text.get(&row.id)
            && texts.iter().any(|t| t != &row.text)
        {
            problems.push(format!(
                "inbox row {} ({}) assistant text {texts:?} is not the echo",
                row.id, row.message_id
            ));
        }
    }
    for id in turns.keys().filter(|id| !inbox_ids.contains(id)) {
        problems.push(format!(
            "transcript rows point at inbox row {id}, which does not exist"
        ));
    }

    // Outbox: one delivered row per inbox row.
    let outbox = &stored.outbox;
    if outbox.len() != inbox.len() {
        problems.push(format!(
            "outbox has {} rows for {} inbox rows; expected one each",
            outbox.len(),
            inbox.len()
        ));
    }
    let by_id: HashMap<i64, &InboxRow> = inbox.iter().map(|r| (r.id, r)).collect();
    let mut per_inbox: HashMap<i64, Vec<i64>> = HashMap::new();
    for row in outbox {
        if row.status != "delivered" {
            problems.push(format!(
                "outbox row {} is {:?}, not delivered: {row:?}",
                row.id, row.status
            ));
        }
        let Some(inbox_id) = row.inbox_id else {
            problems.push(format!("outbox row {} has no inbox_id: {row:?}", row.id));
            continue;
        };
        per_inbox.entry(inbox_id).or_default().push(row.id);
        match by_id.get(&inbox_id) {
            None => problems.push(format!(
                "outbox row {} points at missing inbox row {inbox_id}",
                row.id
            )),
            Some(msg) => {
                if row.reply_to.as_deref() != Some(msg.message_id.as_str())
                    || row.chat_id != msg.chat_id
                    || row.text != msg.text
                {
                    problems.push(format!(
                        "outbox row {} does not answer inbox row {inbox_id} ({}) with its echo: {row:?}",
                        row.id, msg.message_id
                    ));
                }
            }
        }
    }
    for row in inbox {
        match per_inbox.get(&row.id).map(Vec::len).unwrap_or(0) {
            1 => {}
            n => problems.push(format!(
                "inbox row {} ({}) has {n} outbox rows {:?}; expected exactly one",
                row.id,
                row.message_id,
                per_inbox.get(&row.id)
            )),
        }
    }
    problems
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaos_kills_lose_nothing_and_answer_each_message_once() {
    let messages = env_count("CHAOS_MESSAGES", 2000);
    let chats = env_count("CHAOS_CHATS", 50);
    let kills_wanted = env_count("CHAOS_KILLS", 5);
    let seed = env_seed();
    assert!(
        messages >= 2 && chats >= 1,
        "CHAOS_MESSAGES must be >= 2 and CHAOS_CHATS >= 1"
    );
    eprintln!(
        "chaos: CHAOS_SEED={seed} CHAOS_MESSAGES={messages} CHAOS_CHATS={chats} CHAOS_KILLS={kills_wanted} \
         (set CHAOS_SEED={seed} to replay the same kill points)"
    );
    let mut rng = StdRng::seed_from_u64(seed);
    let started = Instant::now();

    // The messages: `expected` maps message id -> chat id, `senders` message id -> sender id.
    let per_chat: Vec<usize> = (0..chats)
        .map(|c| messages / chats + usize::from(c < messages % chats))
        .collect();
    let mut expected: HashMap<String, String> = HashMap::new();
    let mut senders: HashMap<String, String> = HashMap::new();
    for (c, &n) in per_chat.iter().enumerate() {
        for i in 0..n {
            expected.insert(message_id(c, i), chat_of(c));
            senders.insert(message_id(c, i), format!("u{c}"));
        }
    }
    assert_eq!(expected.len(), messages);

    let callback = FakeCallback::start().await;
    let opts = GatewayOptions::with_config(format!(
        "[agent]\nprovider = \"echo\"\n\n\
         [channels.http]\nenabled = true\ncallback_url = \"{}\"\n\n\
         [delivery]\nretry_backoff = \"20ms\"\nmax_backoff = \"200ms\"\n",
        callback.url()
    ));
    let mut gw = Gateway::start(opts).await.expect("start gatewayd");

    let (up_tx, up_rx) = watch::channel(Up {
        generation: 0,
        base: Some(gw.http_base()),
    });
    let (accepted_tx, mut accepted_rx) = watch::channel(0usize);
    let accepted_tx = Arc::new(accepted_tx);
    let client = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(30))
        .build()
        .expect("reqwest client");

    let mut tasks = tokio::task::JoinSet::new();
    for (c, &n) in per_chat.iter().enumerate() {
        let client = client.clone();
        let up = up_rx.clone();
        let accepted = Arc::clone(&accepted_tx);
        tasks.spawn(run_chat(c, n, client, up, accepted));
    }
    drop(up_rx);

    // Kill points: one random accepted count in each of `kills_wanted` equal slices of the first
    // 95% of the run, so every kill lands while messages are still being posted.
    let span = (messages * 95 / 100).max(1);
    let thresholds: Vec<usize> = (0..kills_wanted)
        .map(|k| {
            let lo = (span * k / kills_wanted + 1).min(messages - 1);
            let hi = (span * (k + 1) / kills_wanted).clamp(lo, messages - 1);
            rng.random_range(lo..=hi)
        })
        .collect();

    let mut kills: Vec<Kill> = Vec::new();
    for &t in &thresholds {
        wait_accepted(&mut accepted_rx, t).await;
        let accepted = *accepted_rx.borrow();
        let replies_missing = messages - answered(&callback.delivered(), &expected);
        let (killed_at, restarted_at) = kill_and_restart(&mut gw, &up_tx).await;
        kills.push(Kill {
            after_sending: accepted >= messages,
            accepted,
            replies_missing,
            killed_at,
            restarted_at,
        });
    }

    // One more kill the moment the last message is accepted, while its replies (and usually
    // others) are still on their way.
    wait_accepted(&mut accepted_rx, messages).await;
    let replies_missing = messages - answered(&callback.delivered(), &expected);
    if replies_missing > 0 {
        let (killed_at, restarted_at) = kill_and_restart(&mut gw, &up_tx).await;
        kills.push(Kill {
            after_sending: true,
            accepted: messages,
            replies_missing,
            killed_at,
            restarted_at,
        });
    } else {
        eprintln!(
            "chaos: every reply was delivered by the time the last post was accepted; no kill after sending"
        );
    }
    let mut stats = Vec::new();
    while let Some(joined) = tasks.join_next().await {
        match joined.expect("sender task panicked") {
            Ok(s) => stats.push(s),
            Err(e) => panic!("sender failed: {e}"),
        }
    }
    let sending_done = started.elapsed();

    // Every accepted message gets a reply.
    let accepted_ids: HashSet<String> = stats
        .iter()
        .flat_map(|s| s.accepted.iter().cloned())
        .collect();
    assert_eq!(
        accepted_ids.len(),
        messages,
        "every message was accepted once by its sender"
    );
    let delivery_timeout = DELIVERY_TIMEOUT.max(Duration::from_millis(10 * messages as u64));
    let delivered = match callback
        .wait_delivered(|d| answered(d, &expected) >= messages, delivery_timeout)
        .await
    {
        Ok(d) => d,
        Err(_) => {
            let d = callback.delivered();
            let got: HashSet<&str> = d.iter().filter_map(|x| x.reply_to.as_deref()).collect();
            let mut lost: Vec<&String> = accepted_ids
                .iter()
                .filter(|id| !got.contains(id.as_str()))
                .collect();
            lost.sort();
            panic!(
                "{} accepted message(s) never got a reply within {delivery_timeout:?} (seed {seed}): {lost:?}\n{}\n--- stderr tail ---\n{}",
                lost.len(),
                notable_stderr(&gw, 100),
                gw.stderr_tail(80)
            );
        }
    };
    let all_answered = started.elapsed();

    // What the daemon stored, read through its admin API before it stops.
    let stored = read_stored(&gw).await;

    let status = gw.stop().await.expect("graceful stop");
    assert!(status.success(), "gatewayd exited with {status} on SIGTERM");

    // Deliveries: echo, right chat, and how often a reply went out twice.
    let mut problems = check_stored(&stored, &expected, &senders);
    let mut by_reply: BTreeMap<&str, Vec<&Delivery>> = BTreeMap::new();
    for d in &delivered {
        let Some(reply_to) = d.reply_to.as_deref() else {
            problems.push(format!("delivery without reply_to: {d:?}"));
            continue;
        };
        by_reply.entry(reply_to).or_default().push(d);
        match expected.get(reply_to) {
            None => problems.push(format!("reply to an unknown message: {d:?}")),
            Some(chat) => {
                if d.text != reply_to || &d.chat_id != chat {
                    problems.push(format!(
                        "reply to {reply_to} is not its echo in {chat}: text {:?} chat {:?}",
                        d.text, d.chat_id
                    ));
                }
            }
        }
    }
    let mut duplicates = 0;
    let mut duplicated = Vec::new();
    let mut unbracketed = Vec::new();
    // Per kill: resends it explains, per chat (at most one in-flight send per chat lane).
    let mut resent_by_kill: Vec<HashMap<&str, usize>> = vec![HashMap::new(); kills.len()];
    for (reply_to, ds) in &by_reply {
        if ds.len() > 1 {
            duplicates += ds.len() - 1;
            let ids: Vec<&str> = ds.iter().map(|d| d.message_id.as_str()).collect();
            duplicated.push(format!("{reply_to} x{} (reply ids {ids:?})", ds.len()));
            // The documented window: sent, then killed before the delivered mark, then sent again
            // by a later run. A resend with no kill between the two sends would be something else.
            for pair in ds.windows(2) {
                let (a, b) = (pair[0].at, pair[1].at);
                if let Some(k) = kills
                    .iter()
                    .position(|k| k.killed_at < b && a < k.restarted_at)
                {
                    *resent_by_kill[k]
                        .entry(pair[1].chat_id.as_str())
                        .or_default() += 1;
                } else {
                    unbracketed.push(format!(
                        "{reply_to} (reply id {}) sent at {:.3?} and again at {:.3?}",
                        pair[0].message_id,
                        a.saturating_duration_since(started),
                        b.saturating_duration_since(started)
                    ));
                }
            }
            // A resend repeats the same outbox row; two different reply ids mean two turns.
            if ids.iter().collect::<HashSet<_>>().len() > 1 {
                problems.push(format!(
                    "message {reply_to} was answered by {} different replies {ids:?}: more than one agent turn",
                    ids.iter().collect::<HashSet<_>>().len()
                ));
            }
        }
    }

    let kill_count = kills.len();
    let during = kills.iter().filter(|k| !k.after_sending).count();
    let redelivered: usize = stats.iter().map(|s| s.redelivered).sum();
    let posts: usize = stats.iter().map(|s| s.posts).sum();
    let failed: usize = stats.iter().map(|s| s.failed_posts).sum();
    let unexplained: Vec<&String> = stats.iter().flat_map(|s| s.unexplained.iter()).collect();
    for (n, k) in kills.iter().enumerate() {
        let resent = &resent_by_kill[n];
        eprintln!(
            "chaos: kill {} at {:.3?}: {} sending, {} accepted, {} replies missing, back in {:?}; \
             then {} reply(ies) resent in {} chat(s), at most {} in one chat",
            n + 1,
            k.killed_at - started,
            if k.after_sending { "after" } else { "during" },
            k.accepted,
            k.replies_missing,
            k.restarted_at - k.killed_at,
            resent.values().sum::<usize>(),
            resent.len(),
            resent.values().max().copied().unwrap_or(0)
        );
    }
    if !duplicated.is_empty() {
        eprintln!("chaos: delivered more than once: {}", duplicated.join(", "));
    }
    if !unbracketed.is_empty() {
        eprintln!(
            "chaos: {} resend(s) with no kill between the two sends: {}",
            unbracketed.len(),
            unbracketed.join(", ")
        );
    }
    if !unexplained.is_empty() {
        eprintln!(
            "chaos: {} failed post(s) not caused by a kill; first: {:?}",
            unexplained.len(),
            &unexplained[..unexplained.len().min(10)]
        );
    }
    let stderr_log = gw.stderr_log();
    let notable = notable_lines(&stderr_log);
    if !notable.is_empty() {
        eprintln!("chaos: {}", notable_stderr(&gw, 20));
    }
    eprintln!(
        "chaos summary: seed={seed} messages={messages} chats={chats} kills={kill_count} \
         (during sending {during}, after {}) posts={posts} failed_posts={failed} \
         unexplained_failures={} redelivered_posts={redelivered} duplicate_deliveries={duplicates} \
         resends_without_kill={} daemon_warn_error_lines={} \
         sending={sending_done:.1?} all_answered={all_answered:.1?} elapsed={:.1?}",
        kill_count - during,
        unexplained.len(),
        unbracketed.len(),
        notable.len(),
        started.elapsed()
    );

    assert!(
        problems.is_empty(),
        "seed {seed}: {} problem(s):\n{}\n{}",
        problems.len(),
        problems
            .iter()
            .take(100)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n"),
        notable_stderr(&gw, 100)
    );
    assert!(
        during >= kills_wanted,
        "only {during} of {kills_wanted} kills landed while messages were still being posted"
    );
    assert!(
        duplicates <= kill_count * chats,
        "{duplicates} duplicate deliveries after {kill_count} kills with {chats} lanes (at most one \
         in-flight send per lane per kill): {}",
        duplicated.join(", ")
    );
}
