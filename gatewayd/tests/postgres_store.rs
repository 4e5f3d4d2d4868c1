//! What only the PostgreSQL store has, beyond the shared contract (`store_contract.rs`):
//! migrations under an advisory lock, refusing a newer schema, commits flushed with
//! `synchronous_commit = on` and sharing WAL flushes, recovery from lost connections, pruning
//! and storage figures.
//!
//! Every test runs on the cluster named by `GATEWAY_TEST_PG_URL` (`tests/run.sh` starts one), in
//! a fresh database. The tests of this file run one at a time: the WAL statistics are the
//! cluster's, so another test's commits would count in them.

mod pg_support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use gatewayd::message::{ChannelKind, ChatType, InboundMessage, SessionKey, now_ms};
use gatewayd::send::ErrorClass;
use gatewayd::store::postgres::{PostgresStore, SCHEMA_VERSION};
use gatewayd::store::{
    DeadSelector, InboxOutcome, NewReply, Retention, Role, Store, StoreError, TranscriptEntry,
    TurnRecord,
};
use pg_support::FreshDatabase;

/// Serializes this file's tests.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn msg(id: &str, sender: &str, received_at_ms: i64) -> InboundMessage {
    InboundMessage {
        channel: ChannelKind::new("http"),
        channel_message_id: id.to_owned(),
        chat_id: format!("chat-{sender}"),
        chat_type: ChatType::Direct,
        sender_id: sender.to_owned(),
        text: format!("text {id}"),
        reply_to: None,
        attachments: Vec::new(),
        sender_name: None,
        received_at_ms,
        mentioned: false,
    }
}

async fn new_row(store: &dyn Store, m: &InboundMessage) -> i64 {
    match store.inbox_commit(m).await.expect("commit") {
        InboxOutcome::New(id) => id,
        other => panic!("not new: {other:?}"),
    }
}

/// A connection to `database` itself, for looking at what the store wrote.
async fn connect(database: &FreshDatabase) -> tokio_postgres::Client {
    let (client, connection) = tokio_postgres::connect(&database.url, tokio_postgres::NoTls)
        .await
        .expect("connect to the test database");
    tokio::spawn(connection);
    client
}

#[tokio::test]
async fn concurrent_opens_of_a_fresh_database_all_succeed_and_apply_the_history_once() {
    let _one = ONE_AT_A_TIME.lock().await;
    let database = FreshDatabase::new().await;
    let opens = (0..8).map(|_| {
        let url = database.url.clone();
        tokio::spawn(async move { PostgresStore::open(&url).await })
    });
    let mut stores = Vec::new();
    for open in futures_util::future::join_all(opens).await {
        stores.push(open.expect("task").expect("every open succeeds"));
    }
    let client = connect(&database).await;
    let versions: Vec<i64> = client
        .query("SELECT version FROM gateway_schema ORDER BY version", &[])
        .await
        .expect("schema rows")
        .iter()
        .map(|r| r.get(0))
        .collect();
    let expected: Vec<i64> = (1..=SCHEMA_VERSION as i64).collect();
    assert_eq!(versions, expected, "each step applied exactly once");
    // Every instance works on the one schema.
    for (i, store) in stores.iter().enumerate() {
        new_row(store, &msg(&format!("m{i}"), "a", now_ms())).await;
    }
    assert_eq!(stores[0].counts().await.expect("counts").0, 8);
    for store in &stores {
        store.close().await;
    }
}

#[tokio::test]
async fn a_database_newer_than_this_build_is_refused() {
    let _one = ONE_AT_A_TIME.lock().await;
    let database = FreshDatabase::new().await;
    PostgresStore::open(&database.url)
        .await
        .expect("first open")
        .close()
        .await;
    let newer = SCHEMA_VERSION as i64 + 1;
    connect(&database)
        .await
        .execute(
            "INSERT INTO gateway_schema (version, applied_at) VALUES ($1, 0)",
            &[&newer],
        )
        .await
        .expect("bump the version");
    let err = match PostgresStore::open(&database.url).await {
        Ok(_) => panic!("a newer database was opened"),
        Err(e) => e,
    };
    assert_eq!(
        err.to_string(),
        format!(
            "database error: the database is at schema version {newer}, newer than this gatewayd knows ({SCHEMA_VERSION}); upgrade gatewayd"
        )
    );
}

#[tokio::test]
async fn every_pooled_connection_commits_synchronously_even_if_the_database_says_otherwise() {
    let _one = ONE_AT_A_TIME.lock().await;
    let database = FreshDatabase::new().await;
    pg_support::admin()
        .await
        .batch_execute(&format!(
            "ALTER DATABASE {} SET synchronous_commit = off",
            database.name
        ))
        .await
        .expect("lower the database default");
    let store = PostgresStore::open(&database.url).await.expect("open");
    // Several connections at once, so more than one pooled connection is asked.
    let asks = (0..8).map(|_| store.setting("synchronous_commit"));
    for value in futures_util::future::join_all(asks).await {
        assert_eq!(value.expect("setting"), "on");
    }
    store.close().await;
}

/// Waits until no connection to `database` is left. A backend flushes its statistics (its WAL
/// syncs among them) as it exits, so after this they are all in `pg_stat_wal`.
async fn wait_disconnected(admin: &tokio_postgres::Client, database: &FreshDatabase) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let left: i64 = admin
            .query_one(
                "SELECT COUNT(*) FROM pg_stat_activity WHERE datname = $1",
                &[&database.name],
            )
            .await
            .expect("activity")
            .get(0);
        if left == 0 {
            return;
        }
        assert!(Instant::now() < deadline, "{left} connections still open");
        tokio::task::yield_now().await;
    }
}

#[tokio::test]
async fn concurrent_commits_share_wal_flushes() {
    let _one = ONE_AT_A_TIME.lock().await;
    let database = FreshDatabase::new().await;
    let admin = pg_support::admin().await;
    let fsync: String = admin
        .query_one("SELECT current_setting('fsync')", &[])
        .await
        .expect("fsync")
        .get(0);
    assert_eq!(
        fsync, "on",
        "the test cluster runs with fsync = off, so WAL flushes cannot be counted; start it with fsync = on"
    );
    // Migrated first, by a store of its own, so the measured one only commits inbox rows.
    PostgresStore::open(&database.url)
        .await
        .expect("migrate")
        .close()
        .await;
    wait_disconnected(&admin, &database).await;
    let wal_sync = || async {
        admin
            .query_one("SELECT wal_sync FROM pg_stat_wal", &[])
            .await
            .expect("pg_stat_wal")
            .get::<_, i64>(0)
    };
    const COMMITS: usize = 200;
    let before = wal_sync().await;
    let store = Arc::new(
        PostgresStore::open_with(&database.url, Retention::default(), 16)
            .await
            .expect("open"),
    );
    let started = Instant::now();
    let commits = (0..COMMITS).map(|i| {
        let store = store.clone();
        tokio::spawn(async move { new_row(&*store, &msg(&format!("m{i}"), "a", now_ms())).await })
    });
    for c in futures_util::future::join_all(commits).await {
        c.expect("task");
    }
    let elapsed = started.elapsed();
    assert_eq!(
        store.counts().await.expect("counts").0,
        COMMITS as u64,
        "every commit landed"
    );
    store.close().await;
    wait_disconnected(&admin, &database).await;
    let syncs = wal_sync().await - before;
    println!(
        "{COMMITS} concurrent inbox commits on 16 connections: {syncs} WAL syncs, {} ms",
        elapsed.as_millis()
    );
    assert!(syncs > 0, "the commits were flushed");
    assert!(
        (syncs as usize) < COMMITS,
        "{syncs} WAL syncs for {COMMITS} commits: no commit shared a flush"
    );
}

#[tokio::test]
async fn a_lost_connection_is_replaced_and_the_store_works_again() {
    let _one = ONE_AT_A_TIME.lock().await;
    let database = FreshDatabase::new().await;
    let store = PostgresStore::open_with(&database.url, Retention::default(), 4)
        .await
        .expect("open");
    let before: Vec<InboundMessage> = (0..4)
        .map(|i| msg(&format!("before{i}"), "a", now_ms()))
        .collect();
    let used = before.iter().map(|m| store.inbox_commit(m));
    for r in futures_util::future::join_all(used).await {
        r.expect("commit");
    }
    let admin = pg_support::admin().await;
    let terminated: i64 = admin
        .query_one(
            "SELECT COUNT(*) FROM (SELECT pg_terminate_backend(pid) FROM pg_stat_activity
             WHERE datname = $1 AND pid <> pg_backend_pid()) t",
            &[&database.name],
        )
        .await
        .expect("terminate")
        .get(0);
    assert!(terminated > 0, "the store had connections");
    // Wait until they are gone, so the store's next operations meet broken connections.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let left: i64 = admin
            .query_one(
                "SELECT COUNT(*) FROM pg_stat_activity WHERE datname = $1",
                &[&database.name],
            )
            .await
            .expect("activity")
            .get(0);
        if left == 0 {
            break;
        }
        assert!(Instant::now() < deadline, "{left} connections still open");
        tokio::task::yield_now().await;
    }
    // The pool checks each connection before it hands it out, and replaces the broken ones.
    for i in 0..20 {
        new_row(&store, &msg(&format!("after{i}"), "a", now_ms())).await;
    }
    store.ping().await.expect("ping");
    assert_eq!(store.counts().await.expect("counts").0, 24);
    store.close().await;
}

#[tokio::test]
async fn an_unreachable_database_is_named_without_its_password() {
    let _one = ONE_AT_A_TIME.lock().await;
    // A port nothing listens on: bound, then released.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port();
    let url = format!("postgres://gw:hunter2@127.0.0.1:{port}/gw");
    let err = match PostgresStore::open(&url).await {
        Ok(_) => panic!("opened a database that is not there"),
        Err(e) => e,
    };
    let text = err.to_string();
    assert!(matches!(err, StoreError::Database(_)), "{text}");
    assert!(text.contains("the database is unreachable"), "{text}");
    assert!(text.contains(&format!("127.0.0.1:{port}/gw")), "{text}");
    assert!(!text.contains("hunter2"), "{text}");
}

#[tokio::test]
async fn pruning_keeps_pending_rows_dead_letters_and_each_sessions_history_window() {
    let _one = ONE_AT_A_TIME.lock().await;
    let database = FreshDatabase::new().await;
    let store = PostgresStore::open(&database.url).await.expect("open");
    let day = 86_400_000;
    let old = now_ms() - 30 * day;
    let http = ChannelKind::new("http");
    let pending = new_row(&store, &msg("pending", "a", old)).await;
    let session = SessionKey::User(1);
    let mut answered = Vec::new();
    for i in 0..5 {
        let id = new_row(&store, &msg(&format!("done{i}"), "a", old + i)).await;
        let replies = store
            .commit_turn(TurnRecord {
                inbox_id: id,
                session: session.clone(),
                entries: vec![
                    TranscriptEntry {
                        role: Role::User,
                        text: format!("q{i}"),
                        at_ms: old + i,
                        channel: Some(http),
                    },
                    TranscriptEntry {
                        role: Role::Assistant,
                        text: format!("a{i}"),
                        at_ms: old + i,
                        channel: Some(http),
                    },
                ],
                replies: vec![NewReply {
                    channel: http,
                    chat_id: "chat-a".to_owned(),
                    text: format!("a{i}"),
                    reply_to: None,
                }],
                fence: None,
            })
            .await
            .expect("turn");
        answered.push(replies[0].id);
    }
    for id in &answered[..4] {
        store.outbox_delivered(*id).await.expect("delivered");
    }
    store
        .outbox_dead(answered[4], 3, ErrorClass::Permanent, "refused")
        .await
        .expect("dead");
    let user = store
        .resolve_address(&msg("x", "a", 0).address())
        .await
        .expect("user");
    let retention = Retention {
        dedupe_window: Duration::from_secs(86_400),
        transcript: Some(Duration::from_secs(3600)),
        history_window: 3,
        ..Retention::default()
    };
    // Far enough ahead that every delivered row is past the window.
    let report = store
        .prune_now(now_ms() + 2 * day, retention)
        .await
        .expect("prune");
    assert_eq!(report.inbox, 5, "{report:?}");
    assert_eq!(report.outbox, 4, "{report:?}");
    assert_eq!(report.transcript, 7, "{report:?}");
    let pending_now: Vec<i64> = store
        .inbox_pending()
        .await
        .expect("pending")
        .iter()
        .map(|p| p.inbox_id)
        .collect();
    assert_eq!(pending_now, [pending]);
    let dead = store.dead_letters(None, None, 10).await.expect("dead");
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].message.id, answered[4]);
    let history: Vec<String> = store
        .history(&session, 100)
        .await
        .expect("history")
        .into_iter()
        .map(|e| e.text)
        .collect();
    assert_eq!(history, ["a3", "q4", "a4"]);
    // The pruned direct chat is still the user's.
    assert!(
        store
            .is_direct_chat_of(user, http, "chat-a")
            .await
            .expect("direct")
    );
    let stats = store.storage().await.expect("storage");
    assert!(stats.database_bytes > 0);
    assert!(stats.counted_at_ms > 0);
    let rows = |t: &str| {
        stats
            .table_rows
            .iter()
            .find(|(name, _)| name == t)
            .map(|(_, n)| *n)
    };
    assert_eq!(rows("inbox"), Some(1));
    assert_eq!(rows("outbox"), Some(1));
    assert_eq!(rows("transcript"), Some(3));
    // A retried dead letter is pending again and is not pruned.
    store
        .retry_dead(&DeadSelector::Ids(vec![answered[4]]))
        .await
        .expect("retry");
    store
        .prune_now(now_ms() + 2 * day, retention)
        .await
        .expect("prune");
    assert_eq!(store.outbox_pending().await.expect("pending").len(), 1);
    store.close().await;
}

/// A TCP proxy to the test cluster that can be cut and restored: a database that goes away and
/// comes back. While cut it closes every connection it has and every new one at once.
struct Proxy {
    port: u16,
    up: tokio::sync::watch::Sender<bool>,
}

impl Proxy {
    async fn start(target: (String, u16)) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the proxy");
        let port = listener.local_addr().expect("addr").port();
        let (up, watch) = tokio::sync::watch::channel(true);
        tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                let mut cut = watch.clone();
                if !*cut.borrow() {
                    continue;
                }
                let target = target.clone();
                tokio::spawn(async move {
                    let Ok(mut server) = tokio::net::TcpStream::connect(target).await else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                        _ = cut.wait_for(|up| !*up) => {}
                    }
                });
            }
        });
        Self { port, up }
    }

    fn set_up(&self, up: bool) {
        self.up.send_replace(up);
    }
}

#[tokio::test]
async fn an_unreachable_database_strands_the_turn_and_recovers_when_it_is_back() {
    let _one = ONE_AT_A_TIME.lock().await;
    let database = FreshDatabase::new().await;
    let cluster = pg_support::cluster_url();
    let cluster = gatewayd::store::postgres::parse_url(&cluster).expect("cluster url");
    let host = match cluster.get_hosts().first() {
        Some(tokio_postgres::config::Host::Tcp(h)) => h.clone(),
        _ => panic!("GATEWAY_TEST_PG_URL must name a TCP host"),
    };
    let port = cluster.get_ports().first().copied().unwrap_or(5432);
    let proxy = Proxy::start((host, port)).await;
    let mut through = tokio_postgres::Config::new();
    through
        .host("127.0.0.1")
        .port(proxy.port)
        .dbname(&database.name)
        .user(cluster.get_user().unwrap_or("postgres"));
    if let Some(password) = cluster.get_password() {
        through.password(password);
    }
    let store = PostgresStore::open_config(through, Retention::default(), 4)
        .await
        .expect("open through the proxy");
    let mut recoveries = store.recoveries();
    let first = new_row(&store, &msg("m1", "a", now_ms())).await;
    proxy.set_up(false);
    let turn = TurnRecord {
        inbox_id: first,
        session: SessionKey::User(1),
        entries: Vec::new(),
        replies: Vec::new(),
        fence: None,
    };
    let err = store
        .commit_turn(turn.clone())
        .await
        .expect_err("the database is away");
    assert!(matches!(err, StoreError::Database(_)), "{err}");
    assert!(err.to_string().contains("unreachable"), "{err}");
    assert_eq!(store.failed_turn_commits(), 1);
    assert!(store.ping().await.is_err());
    assert!(!store.disk_full(), "unreachable is not full");
    proxy.set_up(true);
    tokio::time::timeout(Duration::from_secs(15), recoveries.changed())
        .await
        .expect("recovered in time")
        .expect("store open");
    let stranded: Vec<i64> = store
        .take_stranded()
        .await
        .expect("stranded")
        .iter()
        .map(|p| p.inbox_id)
        .collect();
    assert_eq!(stranded, [first]);
    store.commit_turn(turn).await.expect("the turn commits now");
    new_row(&store, &msg("m2", "a", now_ms())).await;
    store.close().await;
}
