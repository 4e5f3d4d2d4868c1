//! The failover test: three instances on one PostgreSQL database under load from the fakes
//! (HTTP-channel messages posted to any instance, as a load balancer spreads them; Telegram
//! updates polled by whichever instance holds the poller's lease; a model that takes its time),
//! `kill -9` of a random instance for several rounds (restarted after each), then a round in
//! which an instance is SIGSTOPped for longer than a lease with turns in flight.
//!
//! Pass means: no acknowledged message lost (each has a committed turn and a sent reply); at
//! most one committed agent turn per message; every partition of a killed instance owned again
//! within 5 s (p50 and max printed); the merged Telegram send log of all instances within the
//! chat's and the channel's buckets (checked with a reference GCRA); never two Telegram pollers
//! at once outside the pause round; the paused instance's commits fenced after SIGCONT.
//!
//! `tests/failover.sh` runs a longer version of this same test: `GATEWAY_FAILOVER_ROUNDS`
//! (kill rounds, default 3), `GATEWAY_FAILOVER_MINUTES` (keep killing until this much time has
//! passed), `GATEWAY_FAILOVER_SESSIONS` (default 30) and `GATEWAY_FAILOVER_RATE` (messages per
//! second, default 20). The last line it prints starts with `failover summary:`.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use gateway_tests::cluster::{ClusterOptions, ClusterRig, instance_id, p50_max};
use gateway_tests::fake_telegram::{ChatSpec, FakeTelegram, PollInterval, SentMessage};
use gateway_tests::skip_without_cluster_pg;
use gateway_tests::{FakeCallback, FakeOpenAi, GatewayOptions, poll_until_async};
use rand::Rng as _;
use serde_json::json;

const TOKEN: &str = "4242:failover-test-token";
/// The bound of the issue: every partition owned again this long after a kill.
const REOWN_BOUND: Duration = Duration::from_secs(5);
/// How long the end of the run may take to drain every message.
const DRAIN: Duration = Duration::from_secs(90);
/// The Telegram limits every instance is configured with (and the reference check uses).
const TG_PER_SECOND: f64 = 20.0;
const TG_BURST: u32 = 10;
const TG_PER_CHAT_PER_SECOND: f64 = 2.0;
const TG_PER_CHAT_BURST: u32 = 2;
/// How far apart two sends may arrive at the fake closer than their bucket allows: the take is
/// on the database's clock, the arrival on the fake's, and the request in between varies.
const ARRIVAL_SLACK: Duration = Duration::from_millis(150);
/// Turns put in flight at the model for the pause round.
const PAUSED_TURNS: usize = 24;

fn env_number(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(default)
}

/// What the load generator acknowledged: HTTP message ids that got a 202, and the Telegram
/// message ids it queued (each acknowledged once the poller's offset passes it).
#[derive(Default)]
struct Acked {
    http: Vec<String>,
    telegram: Vec<(i64, i64)>,
    refused: u64,
}

/// Posts `body` to the instances in `bases`, starting at `first`, until one answers 202 (a load
/// balancer retrying elsewhere); whether one did.
async fn post_anywhere(
    client: &reqwest::Client,
    bases: &[String],
    first: usize,
    body: &serde_json::Value,
) -> bool {
    for k in 0..bases.len() * 2 {
        let base = &bases[(first + k) % bases.len()];
        let sent = client
            .post(format!("{base}/channels/http/messages"))
            .json(body)
            .send()
            .await;
        if let Ok(resp) = sent
            && resp.status().as_u16() == 202
        {
            return true;
        }
    }
    false
}

/// Generates load until `stop`: `rate` messages a second over `sessions` sessions, alternating
/// HTTP messages (to a random instance) and Telegram updates.
async fn generate(
    bases: Vec<String>,
    tg: Arc<FakeTelegram>,
    sessions: u64,
    rate: u64,
    stop: Arc<AtomicBool>,
    acked: Arc<Mutex<Acked>>,
) {
    let client = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(5))
        .build()
        .expect("client");
    let mut tick = tokio::time::interval(Duration::from_millis(1000 / rate.max(1)));
    let mut n: u64 = 0;
    while !stop.load(Ordering::Acquire) {
        tick.tick().await;
        let session = n % sessions;
        if n.is_multiple_of(2) {
            let id = format!("load-{n}");
            let body = json!({
                "message_id": id,
                "chat_id": format!("chat-{session}"),
                "sender_id": format!("user-{session}"),
                "text": format!("message {n} of session {session}"),
                "chat_type": "direct",
            });
            let first = rand::rng().random_range(0..bases.len());
            if post_anywhere(&client, &bases, first, &body).await {
                acked.lock().expect("acked").http.push(id);
            } else {
                acked.lock().expect("acked").refused += 1;
            }
        } else {
            let chat = 1000 + i64::try_from(session).expect("session");
            let message_id = tg.push_text(
                ChatSpec::private(chat),
                chat,
                &format!("telegram {n} of session {session}"),
            );
            acked
                .lock()
                .expect("acked")
                .telegram
                .push((chat, message_id));
        }
        n += 1;
    }
}

/// Reference GCRA over arrival times: how many arrivals came earlier than a bucket of `per_second`
/// and `burst` allows (with [`ARRIVAL_SLACK`]).
fn gcra_violations(times: &[Instant], per_second: f64, burst: u32) -> usize {
    let mut sorted = times.to_vec();
    sorted.sort();
    let interval = Duration::from_secs_f64(1.0 / per_second);
    let tolerance = interval * burst.saturating_sub(1);
    let mut tat: Option<Instant> = None;
    let mut violations = 0;
    for t in sorted {
        let allowed = tat.map(|tat| tat.checked_sub(tolerance + ARRIVAL_SLACK).unwrap_or(t));
        if allowed.is_some_and(|a| t < a) {
            violations += 1;
        }
        tat = Some(tat.map_or(t, |tat| tat.max(t)) + interval);
    }
    violations
}

/// The database's sessions that are not idle: state, wait event, query (for failure messages).
async fn db_activity(rig: &ClusterRig) -> String {
    match rig
        .query(
            "SELECT coalesce(state, ''), coalesce(wait_event_type, '') || ':' || \
             coalesce(wait_event, ''), left(query, 120) FROM pg_stat_activity \
             WHERE datname = current_database() AND state <> 'idle' AND pid <> pg_backend_pid()",
        )
        .await
    {
        Ok(rows) => rows
            .iter()
            .map(|r| {
                let (state, wait, query): (String, String, String) = (r.get(0), r.get(1), r.get(2));
                format!("\n  [{state}] {wait} {query}")
            })
            .collect(),
        Err(e) => format!("cannot read pg_stat_activity: {e:#}"),
    }
}

/// Whether poll `p` was open at some moment between `from` and `to`.
fn open_during(p: &PollInterval, from: Instant, to: Instant) -> bool {
    p.start < to && p.end.unwrap_or_else(Instant::now) > from
}

/// Options of every instance: the HTTP channel to `callback`, Telegram polling `tg`, the model
/// `llm`, the shared Telegram limits.
fn options(callback: &FakeCallback, tg: &FakeTelegram, llm: &FakeOpenAi) -> GatewayOptions {
    let mut opts = GatewayOptions::with_config(format!(
        "[agent]\nprovider = \"openai\"\nbase_url = \"{}\"\nmodel = \"m\"\nretry_backoff = \"10ms\"\n\n\
         [channels.http]\nenabled = true\ncallback_url = \"{}\"\n\n\
         [channels.telegram]\nenabled = true\ntoken_env = \"TG_TOKEN\"\napi_url = \"{}\"\n\
         poll_timeout = \"1s\"\n\n\
         [rate_limits.telegram]\nper_second = {TG_PER_SECOND}\nburst = {TG_BURST}\n\
         per_chat_per_second = {TG_PER_CHAT_PER_SECOND}\nper_chat_burst = {TG_PER_CHAT_BURST}\n\n\
         [delivery]\nretry_backoff = \"20ms\"\nmax_backoff = \"500ms\"\nmax_attempts = 1000\n",
        llm.base_url(),
        callback.url(),
        tg.api_url()
    ));
    opts.env.push(("TG_TOKEN".to_owned(), TOKEN.to_owned()));
    opts
}

/// Counts `(outbox rows per inbox row)` over the committed turns: how many inbox rows have more
/// than one reply committed, and the rows without a finished turn.
async fn turn_counts(rig: &ClusterRig) -> (i64, i64, i64) {
    let dup = rig
        .query(
            "SELECT count(*) FROM (SELECT inbox_id FROM outbox WHERE inbox_id IS NOT NULL
             GROUP BY inbox_id HAVING count(*) > 1) d",
        )
        .await
        .expect("duplicate turns");
    let pending = rig
        .query("SELECT count(*) FROM inbox WHERE NOT done")
        .await
        .expect("pending inbox");
    let total = rig
        .query("SELECT count(*) FROM inbox")
        .await
        .expect("inbox");
    (dup[0].get(0), pending[0].get(0), total[0].get(0))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_instances_survive_kill_9_and_a_pause_without_losing_or_repeating_a_turn() {
    skip_without_cluster_pg!();
    let rounds = env_number("GATEWAY_FAILOVER_ROUNDS", 3);
    let minutes = env_number("GATEWAY_FAILOVER_MINUTES", 0);
    let sessions = env_number("GATEWAY_FAILOVER_SESSIONS", 30);
    let rate = env_number("GATEWAY_FAILOVER_RATE", 20);
    let started = Instant::now();

    let callback = FakeCallback::start().await;
    let tg = Arc::new(FakeTelegram::start(TOKEN).await);
    let llm = FakeOpenAi::start().await;
    llm.set_latency(Duration::from_millis(40));
    let cluster = ClusterOptions {
        partitions: 16,
        lease_ttl: "2s".to_owned(),
        renew_interval: "500ms".to_owned(),
    };
    let mut rig = ClusterRig::start_with(3, cluster, |_| options(&callback, &tg, &llm))
        .await
        .expect("start three instances");
    let all = [0, 1, 2];
    rig.wait_balanced(&all, Duration::from_secs(30))
        .await
        .unwrap_or_else(|e| panic!("{e:#}\n{}", rig.logs_tail(30)));

    let bases: Vec<String> = rig.instances().iter().map(|g| g.http_base()).collect();
    let stop = Arc::new(AtomicBool::new(false));
    let acked = Arc::new(Mutex::new(Acked::default()));
    let load = tokio::spawn(generate(
        bases,
        tg.clone(),
        sessions,
        rate,
        stop.clone(),
        acked.clone(),
    ));

    // Kill rounds: a random victim, its partitions owned again by the survivors, restarted.
    let mut reowned = Vec::new();
    let mut round = 0;
    while round < rounds || started.elapsed() < Duration::from_secs(minutes * 60) {
        round += 1;
        rig.wait_balanced(&all, Duration::from_secs(30))
            .await
            .unwrap_or_else(|e| panic!("round {round}: {e:#}\n{}", rig.logs_tail(30)));
        let victim = rand::rng().random_range(0..3);
        let held = rig.held_by(victim).await.expect("held");
        let killed_at = Instant::now();
        rig.kill(victim).await;
        let took = rig
            .wait_reowned(victim, &held, killed_at, Duration::from_secs(30))
            .await
            .unwrap_or_else(|e| panic!("round {round}: {e:#}\n{}", rig.logs_tail(30)));
        eprintln!(
            "round {round}: killed {}, its {} partitions owned again after {took:?}",
            instance_id(victim),
            held.len()
        );
        reowned.push(took);
        rig.restart(victim).await.expect("restart the victim");
    }

    // The pause round: turns in flight at the model on every instance, one instance stopped
    // for longer than its leases, the survivors take its partitions and answer its messages,
    // then it continues and its commits are refused.
    rig.wait_balanced(&all, Duration::from_secs(30))
        .await
        .unwrap_or_else(|e| panic!("pause round: {e:#}\n{}", rig.logs_tail(30)));
    llm.hold("PAUSEROUND");
    let mut paused_ids = Vec::new();
    let client = reqwest::Client::builder()
        .no_proxy()
        .build()
        .expect("client");
    let bases: Vec<String> = rig.instances().iter().map(|g| g.http_base()).collect();
    for k in 0..PAUSED_TURNS {
        let id = format!("pause-{k}");
        let body = json!({
            "message_id": id,
            "chat_id": format!("pause-chat-{k}"),
            "sender_id": format!("pause-user-{k}"),
            "text": format!("PAUSEROUND {k}"),
            "chat_type": "direct",
        });
        assert!(
            post_anywhere(&client, &bases, k, &body).await,
            "{id} acknowledged"
        );
        paused_ids.push(id);
    }
    llm.wait_held("PAUSEROUND", PAUSED_TURNS, Duration::from_secs(30))
        .await
        .unwrap_or_else(|e| panic!("{e:#}\n{}", rig.logs_tail(30)));
    let victim = rand::rng().random_range(0..3);
    let held = rig.held_by(victim).await.expect("held");
    let fenced_before = rig
        .metric(victim, "gateway_cluster_fenced_commits_total")
        .await
        .expect("metrics");
    rig.pause(victim).await.expect("SIGSTOP");
    let paused_at = Instant::now();
    let took = rig
        .wait_reowned(victim, &held, paused_at, Duration::from_secs(30))
        .await;
    // What the database was doing meanwhile, for a failure message (a paused instance's open
    // transaction holds its row locks until the server ends it).
    let activity = if took.is_err() {
        Some(db_activity(&rig).await)
    } else {
        None
    };
    // The survivors run the paused instance's turns again; all are answered at once now.
    llm.release("PAUSEROUND");
    let replied = callback
        .wait_delivered(
            |d| {
                paused_ids
                    .iter()
                    .all(|id| d.iter().any(|x| x.reply_to.as_deref() == Some(id)))
            },
            Duration::from_secs(60),
        )
        .await;
    rig.resume(victim).await.expect("SIGCONT");
    let resumed_at = Instant::now();
    let took = match took {
        Ok(t) => t,
        Err(e) => panic!(
            "pause round: {e:#}\nsessions of the database then: {}\n{}",
            activity.unwrap_or_default(),
            rig.logs_tail(30)
        ),
    };
    replied.unwrap_or_else(|e| panic!("pause round: {e:#}\n{}", rig.logs_tail(30)));
    eprintln!(
        "pause round: stopped {}, its {} partitions owned again after {took:?}",
        instance_id(victim),
        held.len()
    );
    poll_until_async(
        Duration::from_secs(30),
        "the paused instance's commits are fenced",
        || async {
            rig.metric(victim, "gateway_cluster_fenced_commits_total")
                .await
                .is_ok_and(|n| n > fenced_before)
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e:#}\n{}", rig.logs_tail(40)));
    let fenced = rig
        .metric(victim, "gateway_cluster_fenced_commits_total")
        .await
        .expect("metrics")
        - fenced_before;

    // Drain: stop the load, then every acknowledged message is answered.
    stop.store(true, Ordering::Release);
    load.await.expect("load generator");
    let acked = std::mem::take(&mut *acked.lock().expect("acked"));
    let http_ids: Vec<String> = acked.http.iter().chain(&paused_ids).cloned().collect();
    callback
        .wait_delivered(
            |d| {
                http_ids
                    .iter()
                    .all(|id| d.iter().any(|x| x.reply_to.as_deref() == Some(id)))
            },
            DRAIN,
        )
        .await
        .unwrap_or_else(|e| {
            let got = callback.delivered();
            let missing: Vec<&String> = http_ids
                .iter()
                .filter(|id| !got.iter().any(|x| x.reply_to.as_deref() == Some(id)))
                .collect();
            panic!(
                "{e:#}: {} acknowledged HTTP messages unanswered: {missing:?}\n{}",
                missing.len(),
                rig.logs_tail(40)
            )
        });
    tg.wait_all_acked(DRAIN)
        .await
        .unwrap_or_else(|e| panic!("{e:#}\n{}", rig.logs_tail(40)));
    let answered = |sent: &[SentMessage], chat: i64, id: i64| {
        sent.iter()
            .filter(|s| s.chat_id == chat.to_string() && s.reply_to_message_id == Some(id))
            .count()
    };
    tg.wait_sent(
        |sent| {
            acked
                .telegram
                .iter()
                .all(|(chat, id)| answered(sent, *chat, *id) > 0)
        },
        DRAIN,
    )
    .await
    .unwrap_or_else(|e| panic!("{e:#}\n{}", rig.logs_tail(40)));
    poll_until_async(DRAIN, "every inbox row has its turn", || async {
        turn_counts(&rig).await.1 == 0
    })
    .await
    .unwrap_or_else(|e| panic!("{e:#}\n{}", rig.logs_tail(40)));

    // At most one committed turn per message; every message acknowledged once has one.
    let (duplicate_turns, _, inbox_rows) = turn_counts(&rig).await;
    assert_eq!(duplicate_turns, 0, "no message has two committed turns");
    let expected = (http_ids.len() + acked.telegram.len()) as i64;
    assert_eq!(
        inbox_rows, expected,
        "one inbox row per acknowledged message"
    );
    // Sends: a reply sent twice is the documented window between a send and its mark when an
    // instance dies between them; counted, never more than the kills.
    let delivered = callback.delivered();
    let mut per_reply: HashMap<&str, usize> = HashMap::new();
    for d in &delivered {
        if let Some(r) = d.reply_to.as_deref() {
            *per_reply.entry(r).or_default() += 1;
        }
    }
    let tg_sent = tg.sent_ok();
    let mut tg_dups = 0;
    for (chat, id) in &acked.telegram {
        tg_dups += answered(&tg_sent, *chat, *id).saturating_sub(1);
    }
    let http_dups: usize = per_reply.values().map(|n| n.saturating_sub(1)).sum();
    let paused_dups: usize = paused_ids
        .iter()
        .map(|id| {
            per_reply
                .get(id.as_str())
                .copied()
                .unwrap_or(0)
                .saturating_sub(1)
        })
        .sum();
    assert_eq!(paused_dups, 0, "a fenced commit is never sent");

    // The merged Telegram send log keeps each chat's bucket and the channel's.
    let sent_all = tg.sent();
    let mut chat_times: BTreeMap<String, Vec<Instant>> = BTreeMap::new();
    for s in sent_all.iter().filter(|s| s.method == "sendMessage") {
        chat_times.entry(s.chat_id.clone()).or_default().push(s.at);
    }
    let chat_violations: usize = chat_times
        .values()
        .map(|t| gcra_violations(t, TG_PER_CHAT_PER_SECOND, TG_PER_CHAT_BURST))
        .sum();
    let channel_times: Vec<Instant> = chat_times.values().flatten().copied().collect();
    let channel_violations = gcra_violations(&channel_times, TG_PER_SECOND, TG_BURST);
    assert_eq!(chat_violations, 0, "every chat's sends kept its bucket");
    assert_eq!(channel_violations, 0, "the channel's sends kept its bucket");

    // One poller at a time outside the pause round (whose stopped poller still had its poll
    // open when the new holder started).
    let overlaps = tg.poll_overlaps();
    let outside_pause: Vec<_> = overlaps
        .iter()
        .filter(|(a, b)| {
            !open_during(a, paused_at, resumed_at) && !open_during(b, paused_at, resumed_at)
        })
        .collect();
    assert!(
        outside_pause.is_empty(),
        "two Telegram pollers at once: {outside_pause:?}"
    );

    let (p50, max) = p50_max(&reowned).expect("at least one kill round");
    let llm_calls = llm.requests().len();
    let summary = format!(
        "failover summary: kill_rounds={} reown_p50_ms={} reown_max_ms={} pause_reown_ms={} \
         http_acked={} telegram_acked={} lost=0 duplicate_turns={duplicate_turns} \
         duplicate_sends_http={http_dups} duplicate_sends_telegram={tg_dups} llm_calls={llm_calls} \
         wasted_llm_calls={} refused_posts={} fenced_commits={fenced} rate_violations=0 \
         poll_overlaps_in_pause={} elapsed_s={}",
        reowned.len(),
        p50.as_millis(),
        max.as_millis(),
        took.as_millis(),
        http_ids.len(),
        acked.telegram.len(),
        llm_calls.saturating_sub(usize::try_from(inbox_rows).unwrap_or(0)),
        acked.refused,
        overlaps.len(),
        started.elapsed().as_secs()
    );
    eprintln!("{summary}");
    println!("{summary}");
    assert!(fenced > 0.0, "the paused instance's commits were fenced");
    assert!(
        max <= REOWN_BOUND,
        "every partition owned again within {REOWN_BOUND:?} of a kill: {reowned:?}"
    );
    assert!(
        http_dups + tg_dups <= reowned.len() * usize::try_from(sessions).unwrap_or(usize::MAX),
        "duplicate sends only in kill windows"
    );
}
