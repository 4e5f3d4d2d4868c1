//! The cluster's shared rate-limit buckets (`rate_buckets` in PostgreSQL): several store handles
//! on one database stand for several instances. What several takers get together never exceeds
//! a bucket (checked against a reference GCRA over the server times of the grants), a channel
//! and a chat token are taken together or not at all, and a pause set by one is seen by all.
//!
//! Every test runs on the cluster named by `GATEWAY_TEST_PG_URL` (`tests/run.sh` starts one), in
//! a fresh database.

mod pg_support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use gatewayd::delivery::rate_limit::{ChannelLimits, RateSettings};
use gatewayd::message::ChannelKind;
use gatewayd::store::cluster::{ClusterStore, RateBucket, RateTake};
use gatewayd::store::postgres::PostgresStore;
use pg_support::FreshDatabase;

/// `n` handles on one fresh database, as `n` instances would open it.
async fn instances(database: &FreshDatabase, n: usize) -> Vec<Arc<dyn ClusterStore>> {
    let mut out: Vec<Arc<dyn ClusterStore>> = Vec::new();
    for _ in 0..n {
        let store = PostgresStore::open(&database.url).await.expect("open");
        out.push(Arc::new(store));
    }
    out
}

fn bucket(key: &str, interval_ms: i64, burst: i64) -> RateBucket {
    RateBucket {
        key: key.to_owned(),
        interval_ms,
        tolerance_ms: interval_ms * (burst - 1),
    }
}

/// Replays grant times (server ms, in the order granted) through a reference GCRA of `burst`
/// and `interval_ms`; panics at the first grant the reference would have refused, and checks
/// that no window of the grants holds more than `burst + window / interval` of them.
fn check_against_reference(grants: &[i64], interval_ms: i64, burst: i64, what: &str) {
    let mut sorted = grants.to_vec();
    sorted.sort_unstable();
    let tolerance = interval_ms * (burst - 1);
    let mut tat = i64::MIN / 2;
    for (i, &t) in sorted.iter().enumerate() {
        assert!(
            t >= tat - tolerance,
            "{what}: grant {i} at {t} ms comes {} ms before the reference GCRA allows it",
            tat - tolerance - t
        );
        tat = tat.max(t) + interval_ms;
    }
    for i in 0..sorted.len() {
        for j in i..sorted.len() {
            let window = sorted[j] - sorted[i];
            let allowed = burst + window / interval_ms;
            let count = i64::try_from(j - i + 1).expect("count");
            assert!(
                count <= allowed,
                "{what}: {count} grants within {window} ms, the bucket allows {allowed}"
            );
        }
    }
}

/// Takes from `buckets` until `deadline`, waiting as long as each refusal says; returns the
/// server times of the grants.
async fn hammer(
    store: Arc<dyn ClusterStore>,
    buckets: Vec<RateBucket>,
    deadline: Instant,
) -> Vec<i64> {
    let mut grants = Vec::new();
    while Instant::now() < deadline {
        match store.rate_take(&buckets).await.expect("take") {
            RateTake::Granted { at_ms, .. } => grants.push(at_ms),
            RateTake::Wait { ms, .. } => {
                let left = deadline.saturating_duration_since(Instant::now());
                let wait = Duration::from_millis(u64::try_from(ms).expect("a positive wait"));
                tokio::time::sleep(wait.min(left)).await;
            }
        }
    }
    grants
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_instances_hammering_one_chat_never_exceed_its_bucket() {
    let database = FreshDatabase::new().await;
    let stores = instances(&database, 3).await;
    // 20/s with a burst of 3: one token per 50 ms.
    let (interval, burst) = (50, 3);
    let run = Duration::from_secs(3);
    let deadline = Instant::now() + run;
    let mut tasks = Vec::new();
    for store in &stores {
        for _ in 0..3 {
            tasks.push(tokio::spawn(hammer(
                store.clone(),
                vec![
                    bucket("telegram", 0, 1),
                    bucket("telegram:42", interval, burst),
                ],
                deadline,
            )));
        }
    }
    let mut grants = Vec::new();
    let mut per_instance = Vec::new();
    for (i, task) in tasks.into_iter().enumerate() {
        let g = task.await.expect("taker");
        if i % 3 == 0 {
            per_instance.push(0);
        }
        if let Some(n) = per_instance.last_mut() {
            *n += g.len();
        }
        grants.extend(g);
    }
    check_against_reference(&grants, interval, burst, "telegram:42");
    // The bucket was kept busy, not merely refused: close to burst + run / interval grants.
    let most = burst + i64::try_from(run.as_millis()).expect("ms") / interval;
    let got = i64::try_from(grants.len()).expect("count");
    assert!(
        got >= most * 8 / 10,
        "only {got} grants of the {most} the bucket allows in {run:?}"
    );
    assert!(
        per_instance.iter().all(|n| *n > 0),
        "every instance got some of the tokens: {per_instance:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_channel_and_a_chat_token_are_taken_together_or_not_at_all() {
    let database = FreshDatabase::new().await;
    let stores = instances(&database, 2).await;
    let (a, b) = (&stores[0], &stores[1]);
    // The channel allows one send per 10 s; the chat one per second.
    let channel = bucket("slack", 10_000, 1);
    let chat = |id: &str| bucket(&format!("slack:{id}"), 1_000, 1);
    assert!(matches!(
        a.rate_take(&[channel.clone(), chat("c1")])
            .await
            .expect("take"),
        RateTake::Granted { .. }
    ));
    // The channel is spent: a fresh chat is refused, and its own token is not taken.
    match b
        .rate_take(&[channel.clone(), chat("c2")])
        .await
        .expect("take")
    {
        RateTake::Wait { key, paused, ms } => {
            assert_eq!(key, "slack");
            assert!(!paused);
            assert!(ms > 9_000 && ms <= 10_000, "{ms}");
        }
        other => panic!("granted past a spent channel bucket: {other:?}"),
    }
    let rows = b
        .rate_buckets(&["slack".to_owned(), "slack:c2".to_owned()])
        .await
        .expect("rows");
    let c2 = rows.iter().find(|r| r.key == "slack:c2").expect("row c2");
    assert_eq!(
        c2.tat_ms, 0,
        "the refused take moved the chat's bucket: {rows:?}"
    );
    let channel_tat = rows.iter().find(|r| r.key == "slack").expect("row").tat_ms;

    // The other way round: the chat is spent, the channel has room; the channel keeps it.
    let roomy = bucket("discord", 1, 1_000);
    assert!(matches!(
        a.rate_take(&[roomy.clone(), bucket("discord:d1", 60_000, 1)])
            .await
            .expect("take"),
        RateTake::Granted { .. }
    ));
    let before = a.rate_buckets(&["discord".to_owned()]).await.expect("rows")[0].tat_ms;
    match b
        .rate_take(&[roomy.clone(), bucket("discord:d1", 60_000, 1)])
        .await
        .expect("take")
    {
        RateTake::Wait { key, .. } => assert_eq!(key, "discord:d1"),
        other => panic!("granted past a spent chat bucket: {other:?}"),
    }
    let after = a.rate_buckets(&["discord".to_owned()]).await.expect("rows")[0].tat_ms;
    assert_eq!(before, after, "a refused take moved the channel's bucket");
    assert_eq!(
        b.rate_buckets(&["slack".to_owned()]).await.expect("rows")[0].tat_ms,
        channel_tat
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn many_chats_on_one_channel_from_three_instances_keep_both_limits_without_deadlock() {
    let database = FreshDatabase::new().await;
    let stores = instances(&database, 3).await;
    // The channel: 40/s, burst 2; each chat: 4/s, burst 1. Six chats, each taken from all
    // three instances, so rows are locked in both orders' worth of contention.
    let (ch_interval, ch_burst) = (25, 2);
    let (chat_interval, chat_burst) = (250, 1);
    let deadline = Instant::now() + Duration::from_secs(3);
    let mut tasks = Vec::new();
    for store in &stores {
        for chat in 0..6 {
            let buckets = vec![
                bucket("whatsapp", ch_interval, ch_burst),
                bucket(&format!("whatsapp:{chat}"), chat_interval, chat_burst),
            ];
            let store = store.clone();
            tasks.push(tokio::spawn(async move {
                (chat, hammer(store, buckets, deadline).await)
            }));
        }
    }
    let mut all = Vec::new();
    let mut per_chat: Vec<Vec<i64>> = vec![Vec::new(); 6];
    for task in tasks {
        let (chat, grants) = tokio::time::timeout(Duration::from_secs(30), task)
            .await
            .expect("a taker is stuck (a deadlock?)")
            .expect("taker");
        per_chat[chat].extend(&grants);
        all.extend(grants);
    }
    check_against_reference(&all, ch_interval, ch_burst, "whatsapp");
    for (chat, grants) in per_chat.iter().enumerate() {
        check_against_reference(
            grants,
            chat_interval,
            chat_burst,
            &format!("whatsapp:{chat}"),
        );
        assert!(
            grants.len() >= 6,
            "chat {chat} got only {} grants",
            grants.len()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_pause_set_by_one_instance_holds_every_instance() {
    let database = FreshDatabase::new().await;
    let stores = instances(&database, 3).await;
    let chat = || vec![bucket("telegram", 200, 30), bucket("telegram:9", 1_000, 3)];
    let until = stores[0]
        .rate_pause("telegram:9", 1_500)
        .await
        .expect("pause");
    for (i, store) in stores.iter().enumerate() {
        match store.rate_take(&chat()).await.expect("take") {
            RateTake::Wait { key, paused, ms } => {
                assert_eq!(key, "telegram:9", "instance {i}");
                assert!(paused, "instance {i}");
                assert!(ms > 1_000 && ms <= 1_500, "instance {i}: {ms}");
            }
            other => panic!("instance {i} sent into a paused chat: {other:?}"),
        }
    }
    // A shorter pause never cuts a longer one short.
    assert_eq!(
        stores[1].rate_pause("telegram:9", 10).await.expect("pause"),
        until
    );
    // Another chat is not held.
    assert!(matches!(
        stores[2]
            .rate_take(&[bucket("telegram", 200, 30), bucket("telegram:10", 1_000, 3)])
            .await
            .expect("take"),
        RateTake::Granted { .. }
    ));
    // A pause of the whole channel holds every chat, even where the channel has no limit.
    stores[2].rate_pause("webchat", 2_000).await.expect("pause");
    match stores[1]
        .rate_take(&[bucket("webchat", 0, 1), bucket("webchat:any", 100, 10)])
        .await
        .expect("take")
    {
        RateTake::Wait { key, paused, .. } => {
            assert_eq!(key, "webchat");
            assert!(paused);
        }
        other => panic!("sent into a paused channel: {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn delivery_limits_shared_by_three_instances_space_sends_and_honour_a_429_of_another() {
    let database = FreshDatabase::new().await;
    let stores = instances(&database, 3).await;
    let settings = RateSettings {
        per_second: None,
        burst: None,
        per_chat_per_second: Some(10.0),
        per_chat_burst: Some(2),
    };
    let limits: Vec<Arc<ChannelLimits>> = stores
        .iter()
        .map(|s| {
            let l = ChannelLimits::new(ChannelKind::new("telegram"), settings);
            l.share(s.clone());
            assert!(l.is_shared());
            Arc::new(l)
        })
        .collect();
    // Twelve sends to one chat, four from each instance at once: 2 at once, then 10 more at
    // 100 ms each, so at least 1 s whoever sends.
    let start = Instant::now();
    let mut tasks = Vec::new();
    for l in &limits {
        for _ in 0..4 {
            let l = l.clone();
            tasks.push(tokio::spawn(async move { l.acquire("chat-1").await }));
        }
    }
    for t in tasks {
        t.await.expect("acquire");
    }
    let elapsed = start.elapsed();
    assert!(elapsed >= Duration::from_millis(990), "{elapsed:?}");
    let throttled: u64 = limits
        .iter()
        .map(|l| {
            let (_, chats) = l.buckets(5);
            chats.iter().map(|c| c.throttled).sum::<u64>()
        })
        .sum();
    assert!(throttled >= 10, "waits seen by the instances: {throttled}");

    // A 429 on instance 0 holds the chat on instance 2 too, which never saw it.
    let pause = Duration::from_millis(1_200);
    let paused_at = Instant::now();
    limits[0].pause_for(Some("chat-2"), pause).await;
    limits[2].acquire("chat-2").await;
    let held = paused_at.elapsed();
    assert!(
        held >= Duration::from_millis(1_100),
        "instance 2 sent {held:?} into a {pause:?} pause"
    );
    let (_, chats) = limits[2].buckets(5);
    assert!(
        chats.iter().any(|c| c.chat_id.as_deref() == Some("chat-2")),
        "{chats:?}"
    );
}
