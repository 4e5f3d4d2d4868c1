//! `gatewayd migrate-store`: an SQLite store populated through the [`Store`] trait is copied into
//! a fresh PostgreSQL database, and a [`PostgresStore`] opened on the result holds the same
//! state, read through the trait, and takes new writes (its sequences are past the copied ids).
//! A target that is not empty is refused and left as it was.
//!
//! Runs on the cluster named by `GATEWAY_TEST_PG_URL` (`tests/run.sh` starts one).

mod pg_support;

use std::process::Command;

use gatewayd::message::{Address, ChannelKind, ChatType, InboundMessage, SessionKey, now_ms};
use gatewayd::send::ErrorClass;
use gatewayd::store::postgres::{PostgresStore, migrate_from_sqlite, parse_url};
use gatewayd::store::sqlite::SqliteStore;
use gatewayd::store::{
    BudgetOverride, InboxOutcome, Kept, NewReply, NodeRecord, NodeStatus, PairingMessage,
    ReceiptStatus, Role, RunOrigin, RunStatus, Store, StoreError, TranscriptEntry, TurnRecord,
    UsageRecord,
};
use pg_support::FreshDatabase;

fn msg(id: &str, sender: &str, chat_type: ChatType) -> InboundMessage {
    InboundMessage {
        channel: ChannelKind::new("http"),
        channel_message_id: id.to_owned(),
        chat_id: format!("chat-{sender}"),
        chat_type,
        sender_id: sender.to_owned(),
        text: format!("text {id}\twith a tab\nand a line"),
        reply_to: Some("r-1".to_owned()),
        attachments: Vec::new(),
        sender_name: Some("Ada".to_owned()),
        received_at_ms: now_ms(),
        mentioned: true,
    }
}

async fn new_row(store: &dyn Store, m: &InboundMessage) -> i64 {
    match store.inbox_commit(m).await.expect("commit") {
        InboxOutcome::New(id) => id,
        other => panic!("not new: {other:?}"),
    }
}

fn reply(text: &str) -> NewReply {
    NewReply {
        channel: ChannelKind::new("http"),
        chat_id: "chat-a".to_owned(),
        text: text.to_owned(),
        reply_to: None,
    }
}

/// What a store holds, read through the trait: equal on both sides after a migration.
#[derive(Debug, PartialEq)]
struct Snapshot {
    pending: Vec<(i64, InboundMessage)>,
    history: Vec<TranscriptEntry>,
    outbox: Vec<gatewayd::message::OutboundMessage>,
    dead: Vec<gatewayd::store::DeadLetter>,
    dead_history: Vec<gatewayd::store::AttemptError>,
    users: Vec<gatewayd::store::UserRecord>,
    run: gatewayd::store::RunRecord,
    usage: Vec<gatewayd::store::UsageTotal>,
    pairing: Vec<gatewayd::store::PairingRequest>,
    access: gatewayd::store::UserFlags,
    cursor: Option<i64>,
    budget: BudgetOverride,
    sessions: Vec<gatewayd::store::StoredSession>,
    counts: (u64, u64, u64),
}

async fn snapshot(store: &dyn Store, keep: i64, run: i64, session: &SessionKey) -> Snapshot {
    let dead = store.dead_letters(None, None, 100).await.expect("dead");
    let dead_history = store.dead_letter(dead[0].message.id).await.expect("one").1;
    Snapshot {
        pending: store
            .inbox_pending()
            .await
            .expect("pending")
            .into_iter()
            .map(|p| (p.inbox_id, p.message))
            .collect(),
        history: store.history(session, 100).await.expect("history"),
        outbox: store.outbox_pending().await.expect("outbox"),
        dead,
        dead_history,
        users: store.list_users(None, None, 100).await.expect("users"),
        run: store.run_get(run).await.expect("run"),
        usage: store.usage_totals(None, 0).await.expect("usage"),
        pairing: store.pairing_list(now_ms()).await.expect("pairing"),
        access: store.access_flags(keep).await.expect("access"),
        cursor: store
            .cursor(ChannelKind::new("http"), "last")
            .await
            .expect("cursor"),
        budget: store.budget_override(keep).await.expect("budget"),
        sessions: store
            .list_sessions(&Default::default(), None, 100)
            .await
            .expect("sessions"),
        counts: store.counts().await.expect("counts"),
    }
}

/// Fills `store` with a bit of everything; returns (kept user, run id, session).
async fn populate(store: &dyn Store) -> (i64, i64, SessionKey) {
    let http = ChannelKind::new("http");
    let keep = store
        .resolve_address(&Address {
            channel: http,
            sender_id: "a".to_owned(),
        })
        .await
        .expect("user a");
    let merge = store
        .resolve_address(&Address {
            channel: ChannelKind::new("webchat"),
            sender_id: "w".to_owned(),
        })
        .await
        .expect("user w");
    store.link_users(keep, merge).await.expect("link");
    let session = SessionKey::User(keep);
    let answered = new_row(store, &msg("m1", "a", ChatType::Direct)).await;
    let _pending = new_row(store, &msg("m2", "a", ChatType::Direct)).await;
    let replies = store
        .commit_turn_with_usage(
            TurnRecord {
                inbox_id: answered,
                session: session.clone(),
                entries: vec![
                    TranscriptEntry {
                        role: Role::User,
                        text: "hello \\ world".to_owned(),
                        at_ms: now_ms(),
                        channel: Some(http),
                    },
                    TranscriptEntry {
                        role: Role::Assistant,
                        text: "hi".to_owned(),
                        at_ms: now_ms(),
                        channel: Some(http),
                    },
                ],
                replies: vec![reply("hi"), reply("dies")],
                fence: None,
            },
            Some(UsageRecord {
                user: keep,
                session: session.clone(),
                inbox_id: answered,
                at_ms: now_ms(),
                prompt_tokens: 120,
                completion_tokens: 30,
                estimated: false,
            }),
        )
        .await
        .expect("turn");
    store
        .outbox_attempt_failed(replies[1].id, 1, ErrorClass::Retryable, "timeout")
        .await
        .expect("attempt");
    store
        .outbox_dead(replies[1].id, 2, ErrorClass::Permanent, "refused")
        .await
        .expect("dead");
    store
        .outbox_platform_id(replies[0].id, 0, http, "p-1")
        .await
        .expect("platform id");
    store
        .record_receipt(http, "p-1", ReceiptStatus::Delivered, None)
        .await
        .expect("receipt");
    store.outbox_put(reply("later")).await.expect("put");
    let run = store
        .run_create(
            "greet",
            &serde_json::json!({"name": "Ada"}),
            Some(&RunOrigin {
                channel: http,
                chat_id: "chat-a".to_owned(),
                user: Some(keep),
                trigger: "chat".to_owned(),
            }),
        )
        .await
        .expect("run");
    store
        .run_node(
            run,
            &NodeRecord {
                node: "say".to_owned(),
                status: NodeStatus::Succeeded,
                output: Some(serde_json::json!({"text": "hi"})),
                error: None,
                attempts: 1,
                started_at_ms: Some(now_ms()),
                finished_at_ms: Some(now_ms()),
            },
        )
        .await
        .expect("node");
    store
        .run_finish(run, RunStatus::Succeeded, None)
        .await
        .expect("finish");
    let stranger = new_row(store, &msg("s1", "stranger", ChatType::Direct)).await;
    let stranger_user = store
        .resolve_address(&Address {
            channel: http,
            sender_id: "stranger".to_owned(),
        })
        .await
        .expect("stranger");
    let kept = store
        .pairing_keep(PairingMessage {
            inbox_id: stranger,
            channel: http,
            sender_id: "stranger".to_owned(),
            user_id: stranger_user,
            display_name: Some("Bob".to_owned()),
            now_ms: now_ms(),
            expires_at_ms: now_ms() + 3_600_000,
            new_code: "ABCDEF".to_owned(),
            keep_max: 5,
            max_pending: 10,
            reply_interval_ms: 600_000,
        })
        .await
        .expect("pairing");
    assert!(matches!(kept, Kept::Kept { new: true, .. }), "{kept:?}");
    store.set_blocked(merge, true).await.expect("block");
    store
        .advance_cursor(http, "last", 42)
        .await
        .expect("cursor");
    store
        .set_budget_override(
            keep,
            BudgetOverride {
                tokens_per_day: Some(5000),
                turns_per_minute: None,
            },
        )
        .await
        .expect("budget");
    store
        .put_link_code("LINK01", keep, i64::MAX)
        .await
        .expect("code");
    (keep, run, session)
}

#[tokio::test]
async fn a_populated_sqlite_store_comes_across_whole_and_takes_new_writes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("gateway.db");
    let sqlite = SqliteStore::open(&path).expect("sqlite");
    let (keep, run, session) = populate(&sqlite).await;
    let before = snapshot(&sqlite, keep, run, &session).await;
    let max_inbox = before.pending.iter().map(|p| p.0).max().expect("rows");
    sqlite.close().await;

    let database = FreshDatabase::new().await;
    let tables = migrate_from_sqlite(&path, parse_url(&database.url).expect("url"))
        .await
        .expect("migrate");
    let rows = |t: &str| {
        tables
            .iter()
            .find(|c| c.table == t)
            .unwrap_or_else(|| panic!("no summary of {t}: {tables:?}"))
            .rows
    };
    assert_eq!(rows("inbox"), 3);
    assert_eq!(rows("outbox"), 3);
    assert_eq!(rows("users"), 3);
    assert_eq!(rows("addresses"), 3);
    assert_eq!(rows("delivery_errors"), 2);
    assert_eq!(rows("pairing_kept"), 1);
    assert!(tables.iter().all(|t| t.checksum.len() == 16), "{tables:?}");

    let pg = PostgresStore::open(&database.url).await.expect("open");
    let after = snapshot(&pg, keep, run, &session).await;
    assert_eq!(after, before);
    assert_eq!(
        pg.take_link_code("LINK01", now_ms()).await.expect("code"),
        Some(keep)
    );
    // The sequences are past the copied ids.
    let id = new_row(&pg, &msg("new", "a", ChatType::Direct)).await;
    assert!(id > max_inbox, "{id} after {max_inbox}");
    let new_user = pg
        .resolve_address(&Address {
            channel: ChannelKind::new("http"),
            sender_id: "newcomer".to_owned(),
        })
        .await
        .expect("new user");
    assert!(
        after.users.iter().all(|u| u.id < new_user),
        "{new_user} is a fresh id"
    );
    let put = pg.outbox_put(reply("new")).await.expect("put");
    assert!(after.outbox.iter().all(|o| o.id < put.id));
    assert!(after.dead.iter().all(|o| o.message.id < put.id));
    pg.close().await;

    // A second migration into the now non-empty database is refused and changes nothing.
    let err = migrate_from_sqlite(&path, parse_url(&database.url).expect("url"))
        .await
        .expect_err("not empty");
    assert!(matches!(err, StoreError::Conflict(_)), "{err}");
    assert!(err.to_string().contains("is not empty"), "{err}");
    let pg = PostgresStore::open(&database.url).await.expect("open");
    assert_eq!(pg.counts().await.expect("counts").0, before.counts.0 + 1);
    pg.close().await;
}

#[tokio::test]
async fn the_command_prints_each_table_and_refuses_a_missing_source() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("gateway.db");
    let sqlite = SqliteStore::open(&path).expect("sqlite");
    new_row(&sqlite, &msg("m1", "a", ChatType::Direct)).await;
    sqlite.close().await;
    let database = FreshDatabase::new().await;
    let config = dir.path().join("gatewayd.toml");
    std::fs::write(
        &config,
        format!(
            "[gateway]\ndata_dir = \"{}\"\n[store]\nbackend = \"postgres\"\nurl_env = \"GW_TEST_MIGRATE_URL\"\n",
            dir.path().display()
        ),
    )
    .expect("config");
    let run = |from: &str| {
        Command::new(env!("CARGO_BIN_EXE_gatewayd"))
            .arg("--config")
            .arg(&config)
            .args(["migrate-store", "--from", from, "--to", "postgres"])
            .env("GW_TEST_MIGRATE_URL", &database.url)
            .output()
            .expect("run gatewayd")
    };
    let missing = run("sqlite:/nonexistent/gateway.db");
    assert_eq!(missing.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&missing.stderr);
    assert!(stderr.contains("--from sqlite:PATH"), "{stderr}");
    let out = run(&format!("sqlite:{}", path.display()));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout
            .lines()
            .any(|l| l.split_whitespace().take(2).eq(["inbox", "1"])),
        "{stdout}"
    );
    assert!(stdout.contains("every table verified"), "{stdout}");
    let again = run(&format!("sqlite:{}", path.display()));
    assert_eq!(again.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&again.stderr);
    assert!(stderr.contains("table inbox has 1 rows"), "{stderr}");
}
