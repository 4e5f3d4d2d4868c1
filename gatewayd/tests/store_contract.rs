//! The [`Store`] contract: one backend-neutral suite that every backend must pass.
//!
//! Each case is an `async fn(&dyn Store)` that asserts behaviour the rest of the daemon relies
//! on, through the trait only: dedupe, the atomic turn, outbox states and dead letters, identity
//! merges, workflow runs, and cursor paging. Each backend is a function that opens a fresh,
//! empty store. The [`contract!`] invocation at the end runs every case on every backend as its
//! own test, named `<backend>::<case>`: adding a backend or a case is one entry there.
//!
//! What only one backend has (SQLite's full disk, vacuum, pruning) is tested beside it. The
//! PostgreSQL cases run on the cluster named by `GATEWAY_TEST_PG_URL` (`tests/run.sh` starts
//! one), each in a fresh database.

mod pg_support;

use std::future::Future;

use gatewayd::message::{
    Address, Attachment, ChannelKind, ChatType, InboundMessage, OutboundMessage, SessionKey,
    UserId, now_ms,
};
use gatewayd::send::ErrorClass;
use gatewayd::store::postgres::PostgresStore;
use gatewayd::store::sqlite::SqliteStore;
use gatewayd::store::{BudgetOverride, UsageRecord};
use gatewayd::store::{
    DeadSelector, InboxOutcome, NewReply, NodeRecord, NodeStatus, OutboxFilter, ReceiptStatus,
    Role, RunOrigin, RunStatus, SessionFilter, SharedStore, Store, StoreError, TranscriptEntry,
    TurnRecord,
};

// ---------------------------------------------------------------------------------------------
// Backends: each opens a fresh, empty store and returns what keeps it alive.

/// A store under test, with whatever it needs kept alive until the case ends.
struct Opened {
    store: SharedStore,
    _keep: Box<dyn std::any::Any + Send>,
}

/// SQLite in a temporary directory.
async fn open_sqlite() -> Opened {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = SqliteStore::open(&dir.path().join("gateway.db")).expect("open the store");
    Opened {
        store: std::sync::Arc::new(store),
        _keep: Box::new(dir),
    }
}

/// PostgreSQL: a fresh database on the cluster named by `GATEWAY_TEST_PG_URL`.
async fn open_postgres() -> Opened {
    let database = pg_support::FreshDatabase::new().await;
    let store = PostgresStore::open(&database.url)
        .await
        .expect("open the store");
    Opened {
        store: std::sync::Arc::new(store),
        _keep: Box::new(database),
    }
}

/// Runs every case on every backend, each pair as its own test.
macro_rules! contract {
    (backends: [$($backend:ident => $open:ident),* $(,)?], cases: $cases:tt $(,)?) => {
        $( contract!(@backend $backend $open $cases); )*
    };
    (@backend $backend:ident $open:ident [$($case:ident),* $(,)?]) => {
        mod $backend {
            $(
                #[tokio::test]
                async fn $case() {
                    let opened = super::$open().await;
                    super::$case(&*opened.store).await;
                    opened.store.close().await;
                }
            )*
        }
    };
}

contract! {
    backends: [sqlite => open_sqlite, postgres => open_postgres],
    cases: [
        inbox_dedupes_by_channel_and_message_id,
        pending_inbound_messages_come_back_whole_and_oldest_first,
        concurrent_writes_all_land_and_concurrent_repeats_dedupe,
        a_turn_commits_transcript_outbox_and_inbox_mark_together,
        a_refused_turn_leaves_nothing_behind,
        history_is_the_last_entries_since_the_last_reset_oldest_first,
        session_rows_count_turns_and_follow_the_last_channel,
        sessions_page_by_key_every_row_once_in_order,
        outbox_rows_go_from_pending_to_delivered_once,
        outbox_rows_go_from_pending_to_dead_with_their_error_history,
        a_retried_dead_letter_is_pending_again_and_a_dropped_one_is_gone,
        dead_letters_page_by_id_every_row_once_in_order,
        an_address_resolves_to_one_user_and_unknown_addresses_are_isolated,
        linking_merges_addresses_sessions_and_transcripts_in_time_order,
        attaching_an_address_moves_only_that_address,
        users_page_by_id_every_row_once_in_order,
        link_codes_are_single_use_expire_and_one_per_user,
        the_last_direct_chat_is_the_newest_direct_message_of_the_user,
        a_direct_chat_belongs_to_the_users_linked_addresses_only,
        workflow_runs_keep_their_state_and_nodes,
        runs_page_newest_first_every_row_once,
        a_stranded_message_is_handed_out_once_while_pending,
        a_closed_store_refuses_writes,
        the_last_inbound_time_is_the_newest_message_of_that_chat_on_that_channel,
        receipts_land_on_their_row_only_move_forward_and_may_come_first,
        cursors_only_move_forward_per_channel_and_name,
        usage_commits_with_its_turn_sums_per_user_and_follows_a_link,
        budget_overrides_are_set_and_cleared_per_user,
    ],
}

// ---------------------------------------------------------------------------------------------
// Fixtures.

fn address(channel: ChannelKind, sender: &str) -> Address {
    Address {
        channel,
        sender_id: sender.to_owned(),
    }
}

fn msg(channel: ChannelKind, id: &str, sender: &str) -> InboundMessage {
    InboundMessage {
        channel,
        channel_message_id: id.to_owned(),
        chat_id: format!("chat-{sender}"),
        chat_type: ChatType::Direct,
        sender_id: sender.to_owned(),
        text: format!("text {id}"),
        reply_to: None,
        attachments: Vec::new(),
        sender_name: None,
        received_at_ms: now_ms(),
        mentioned: false,
    }
}

/// Commits a message that must be new; its inbox id.
async fn new_inbox_row(store: &dyn Store, m: &InboundMessage) -> i64 {
    match store.inbox_commit(m).await.expect("commit") {
        InboxOutcome::New(id) => id,
        other => panic!("{} was not new: {other:?}", m.channel_message_id),
    }
}

fn entry(role: Role, text: &str, at_ms: i64, channel: Option<ChannelKind>) -> TranscriptEntry {
    TranscriptEntry {
        role,
        text: text.to_owned(),
        at_ms,
        channel,
    }
}

fn reply(channel: ChannelKind, chat: &str, text: &str) -> NewReply {
    NewReply {
        channel,
        chat_id: chat.to_owned(),
        text: text.to_owned(),
        reply_to: None,
    }
}

/// Commits a new inbound message `id` and a turn of `entries` for it in `session`.
async fn turn(store: &dyn Store, id: &str, session: &SessionKey, entries: Vec<TranscriptEntry>) {
    let inbox_id = new_inbox_row(store, &msg(ChannelKind::new("http"), id, "turns")).await;
    store
        .commit_turn(TurnRecord {
            inbox_id,
            session: session.clone(),
            entries,
            replies: Vec::new(),
            fence: None,
        })
        .await
        .expect("turn");
}

/// A new pending outbox row.
async fn pending_reply(store: &dyn Store, channel: ChannelKind, text: &str) -> OutboundMessage {
    store
        .outbox_put(reply(channel, "chat", text))
        .await
        .expect("outbox_put")
}

/// A new dead letter whose last error has `class`.
async fn dead_letter(
    store: &dyn Store,
    channel: ChannelKind,
    text: &str,
    class: ErrorClass,
) -> OutboundMessage {
    let row = pending_reply(store, channel, text).await;
    store
        .outbox_dead(row.id, 1, class, "failed")
        .await
        .expect("dead");
    row
}

fn ids(rows: &[OutboundMessage]) -> Vec<i64> {
    rows.iter().map(|r| r.id).collect()
}

async fn pending_ids(store: &dyn Store) -> Vec<i64> {
    ids(&store.outbox_pending().await.expect("outbox_pending"))
}

/// Reads a cursor-paged listing to its end: `page(cursor)` reads one page of at most `limit`
/// rows after the cursor (`None`: from the start), `cursor(row)` is the cursor after `row`.
async fn every_page<T, C, F, Fut>(limit: usize, mut page: F, cursor: impl Fn(&T) -> C) -> Vec<T>
where
    F: FnMut(Option<C>) -> Fut,
    Fut: Future<Output = Vec<T>>,
{
    let mut all = Vec::new();
    let mut after = None;
    for _ in 0..10_000 {
        let rows = page(after.take()).await;
        assert!(
            rows.len() <= limit,
            "a page of {} > {limit} rows",
            rows.len()
        );
        let Some(last) = rows.last() else {
            return all;
        };
        after = Some(cursor(last));
        all.extend(rows);
    }
    panic!("the listing never ended");
}

// ---------------------------------------------------------------------------------------------
// Inbox.

async fn inbox_dedupes_by_channel_and_message_id(store: &dyn Store) {
    let first = msg(ChannelKind::new("http"), "m1", "a");
    let id = new_inbox_row(store, &first).await;
    assert_eq!(
        store.inbox_commit(&first).await.expect("commit"),
        InboxOutcome::Duplicate(id)
    );
    // A repeat is recognised by (channel, id) alone and keeps the first copy.
    let mut changed = first.clone();
    changed.text = "another text".to_owned();
    changed.received_at_ms += 5;
    assert_eq!(
        store.inbox_commit(&changed).await.expect("commit"),
        InboxOutcome::Duplicate(id)
    );
    // The same id on another channel is another message.
    let other = new_inbox_row(store, &msg(ChannelKind::new("telegram"), "m1", "a")).await;
    assert_ne!(other, id);
    let pending = store.inbox_pending().await.expect("pending");
    assert_eq!(pending.len(), 2, "{pending:?}");
    assert_eq!(pending[0].inbox_id, id);
    assert_eq!(pending[0].message, first, "the first copy is kept");
    assert_eq!(store.counts().await.expect("counts").0, 2);
    // Still a duplicate once its turn is done.
    store
        .commit_turn(TurnRecord {
            inbox_id: id,
            session: SessionKey::User(1),
            entries: Vec::new(),
            replies: Vec::new(),
            fence: None,
        })
        .await
        .expect("turn");
    assert_eq!(
        store.inbox_commit(&first).await.expect("commit"),
        InboxOutcome::Duplicate(id)
    );
    assert_eq!(store.counts().await.expect("counts").0, 1);
}

async fn pending_inbound_messages_come_back_whole_and_oldest_first(store: &dyn Store) {
    let mut group = msg(ChannelKind::new("discord"), "g1", "bob");
    group.chat_type = ChatType::Group;
    group.chat_id = "guild-7".to_owned();
    group.reply_to = Some("g0".to_owned());
    group.received_at_ms = 1_700_000_000_123;
    // A group message that addressed the bot keeps the flag, so its replay passes the mention rule.
    group.mentioned = true;
    group.attachments = vec![
        Attachment {
            kind: "photo".to_owned(),
            file_id: "f-1".to_owned(),
            name: None,
        },
        Attachment {
            kind: "document".to_owned(),
            file_id: "f-2".to_owned(),
            name: Some("report.pdf".to_owned()),
        },
    ];
    let mut unicode = msg(ChannelKind::new("webchat"), "w1", "ana");
    unicode.text = "héllo 👋\nsecond line".to_owned();
    unicode.sender_name = Some("Ana Lúcia".to_owned());
    let done = msg(ChannelKind::new("http"), "h1", "carl");
    let first = new_inbox_row(store, &group).await;
    let done_id = new_inbox_row(store, &done).await;
    let last = new_inbox_row(store, &unicode).await;
    assert!(first < done_id && done_id < last, "ids grow");
    store
        .commit_turn(TurnRecord {
            inbox_id: done_id,
            session: SessionKey::User(3),
            entries: Vec::new(),
            replies: Vec::new(),
            fence: None,
        })
        .await
        .expect("turn");
    let pending = store.inbox_pending().await.expect("pending");
    let got: Vec<(i64, &InboundMessage)> =
        pending.iter().map(|p| (p.inbox_id, &p.message)).collect();
    assert_eq!(got, vec![(first, &group), (last, &unicode)]);
}

async fn concurrent_writes_all_land_and_concurrent_repeats_dedupe(store: &dyn Store) {
    let messages: Vec<InboundMessage> = (0..500)
        .map(|i| msg(ChannelKind::new("http"), &format!("m{i}"), "a"))
        .collect();
    let outcomes =
        futures_util::future::join_all(messages.iter().map(|m| store.inbox_commit(m))).await;
    let mut new_ids = Vec::new();
    for outcome in outcomes {
        match outcome.expect("commit") {
            InboxOutcome::New(id) => new_ids.push(id),
            other => panic!("not new: {other:?}"),
        }
    }
    new_ids.sort_unstable();
    new_ids.dedup();
    assert_eq!(new_ids.len(), 500, "every message got its own row");
    assert_eq!(store.inbox_pending().await.expect("pending").len(), 500);
    // Fifty copies of one message at once: one row.
    let same = msg(ChannelKind::new("telegram"), "same", "b");
    let outcomes = futures_util::future::join_all((0..50).map(|_| store.inbox_commit(&same))).await;
    let outcomes: Vec<InboxOutcome> = outcomes.into_iter().map(|o| o.expect("commit")).collect();
    let firsts: Vec<i64> = outcomes
        .iter()
        .filter_map(|o| match o {
            InboxOutcome::New(id) => Some(*id),
            InboxOutcome::Duplicate(_) => None,
        })
        .collect();
    assert_eq!(firsts.len(), 1, "{outcomes:?}");
    assert!(
        outcomes.iter().all(
            |o| matches!(o, InboxOutcome::Duplicate(id) if *id == firsts[0])
                || *o == InboxOutcome::New(firsts[0])
        ),
        "{outcomes:?}"
    );
    assert_eq!(store.counts().await.expect("counts").0, 501);
}

// ---------------------------------------------------------------------------------------------
// Turns, history and sessions.

async fn a_turn_commits_transcript_outbox_and_inbox_mark_together(store: &dyn Store) {
    let inbox_id = new_inbox_row(store, &msg(ChannelKind::new("http"), "m1", "a")).await;
    let session = SessionKey::User(1);
    let entries = vec![
        entry(Role::User, "hi", 10, Some(ChannelKind::new("http"))),
        entry(Role::Assistant, "hello", 11, Some(ChannelKind::new("http"))),
    ];
    let replies = vec![
        NewReply {
            reply_to: Some("m1".to_owned()),
            ..reply(ChannelKind::new("http"), "chat-a", "hello")
        },
        reply(ChannelKind::new("http"), "chat-a", "and more"),
    ];
    let rows = store
        .commit_turn(TurnRecord {
            inbox_id,
            session: session.clone(),
            entries: entries.clone(),
            replies: replies.clone(),
            fence: None,
        })
        .await
        .expect("turn");
    assert_eq!(rows.len(), 2);
    for (row, r) in rows.iter().zip(&replies) {
        assert_eq!(
            (&row.chat_id, &row.text, &row.reply_to, row.channel),
            (&r.chat_id, &r.text, &r.reply_to, r.channel)
        );
        assert_eq!((row.attempts, row.chunks_sent), (0, 0));
    }
    assert!(rows[0].id < rows[1].id, "replies keep their order");
    // All three parts are there at once.
    assert_eq!(store.outbox_pending().await.expect("outbox"), rows);
    assert_eq!(store.history(&session, 10).await.expect("history"), entries);
    assert!(store.inbox_pending().await.expect("inbox").is_empty());
    assert_eq!(store.counts().await.expect("counts"), (0, 2, 0));
    let stored = store
        .session(&session)
        .await
        .expect("session")
        .expect("a session row");
    assert_eq!(
        (stored.turns, stored.last_channel),
        (1, Some(ChannelKind::new("http")))
    );
    assert!(stored.created_at_ms <= stored.last_active_ms);
}

async fn a_refused_turn_leaves_nothing_behind(store: &dyn Store) {
    let inbox_id = new_inbox_row(store, &msg(ChannelKind::new("http"), "m1", "a")).await;
    let session = SessionKey::User(1);
    let turn = TurnRecord {
        inbox_id,
        session: session.clone(),
        entries: vec![entry(Role::User, "hi", 1, Some(ChannelKind::new("http")))],
        replies: vec![NewReply {
            reply_to: Some("m1".to_owned()),
            ..reply(ChannelKind::new("http"), "c", "hi")
        }],
        fence: None,
    };
    assert_eq!(
        store.commit_turn(turn.clone()).await.expect("turn").len(),
        1
    );
    // A second turn for the same message is refused and changes nothing.
    let mut again = turn.clone();
    again.entries.push(entry(
        Role::Assistant,
        "twice",
        2,
        Some(ChannelKind::new("http")),
    ));
    again
        .replies
        .push(reply(ChannelKind::new("http"), "c", "twice"));
    let err = store.commit_turn(again).await.expect_err("second turn");
    assert!(matches!(err, StoreError::Conflict(_)), "{err}");
    assert_eq!(store.outbox_pending().await.expect("outbox").len(), 1);
    assert_eq!(store.history(&session, 10).await.expect("h").len(), 1);
    assert_eq!(
        store.session(&session).await.expect("s").map(|s| s.turns),
        Some(1)
    );
    // A turn for a message that was never committed is refused too, and leaves no trace.
    let other = SessionKey::Group(ChannelKind::new("discord"), "g".to_owned());
    let err = store
        .commit_turn(TurnRecord {
            inbox_id: inbox_id + 1000,
            session: other.clone(),
            entries: vec![entry(Role::User, "ghost", 3, None)],
            replies: vec![reply(ChannelKind::new("discord"), "g", "ghost")],
            fence: None,
        })
        .await
        .expect_err("unknown inbox row");
    assert!(matches!(err, StoreError::Conflict(_)), "{err}");
    assert!(store.history(&other, 10).await.expect("h").is_empty());
    assert_eq!(store.session(&other).await.expect("s"), None);
    assert_eq!(store.count_sessions().await.expect("count"), 1);
    assert_eq!(store.counts().await.expect("counts"), (0, 1, 0));
}

async fn history_is_the_last_entries_since_the_last_reset_oldest_first(store: &dyn Store) {
    let session = SessionKey::User(1);
    let other = SessionKey::Group(ChannelKind::new("telegram"), "-100".to_owned());
    let http = Some(ChannelKind::new("http"));
    for at in 1..=5 {
        turn(
            store,
            &format!("m{at}"),
            &session,
            vec![entry(Role::User, &format!("t{at}"), at, http)],
        )
        .await;
    }
    // Two entries of one turn share a timestamp: they keep their order.
    turn(
        store,
        "m6",
        &session,
        vec![
            entry(Role::User, "q", 6, http),
            entry(Role::Notice, "n", 6, http),
        ],
    )
    .await;
    turn(
        store,
        "o1",
        &other,
        vec![entry(Role::User, "elsewhere", 3, None)],
    )
    .await;
    let texts = |h: Vec<TranscriptEntry>| h.into_iter().map(|e| e.text).collect::<Vec<_>>();
    assert_eq!(
        texts(store.history(&session, 3).await.expect("h")),
        ["t5", "q", "n"]
    );
    assert_eq!(
        texts(store.history(&session, 100).await.expect("h")),
        ["t1", "t2", "t3", "t4", "t5", "q", "n"]
    );
    let notice = store.history(&session, 1).await.expect("h");
    assert_eq!(notice, vec![entry(Role::Notice, "n", 6, http)]);
    assert_eq!(
        texts(store.history(&other, 10).await.expect("h")),
        ["elsewhere"]
    );
    // After a reset the earlier entries are history, not context.
    turn(store, "r", &session, vec![entry(Role::Reset, "", 7, http)]).await;
    assert!(store.history(&session, 10).await.expect("h").is_empty());
    turn(
        store,
        "m8",
        &session,
        vec![entry(Role::User, "fresh", 8, http)],
    )
    .await;
    assert_eq!(
        texts(store.history(&session, 10).await.expect("h")),
        ["fresh"]
    );
    assert!(
        store
            .history(&SessionKey::User(99), 10)
            .await
            .expect("h")
            .is_empty()
    );
}

async fn session_rows_count_turns_and_follow_the_last_channel(store: &dyn Store) {
    let key = SessionKey::User(7);
    // Turns on http, http again, telegram, then a turn with no channel (a workflow's).
    let channels = [
        Some(ChannelKind::new("http")),
        Some(ChannelKind::new("http")),
        Some(ChannelKind::new("telegram")),
        None,
    ];
    for (i, channel) in channels.into_iter().enumerate() {
        let at = i64::try_from(i).expect("small");
        turn(
            store,
            &format!("m{i}"),
            &key,
            vec![entry(Role::User, &format!("t{i}"), at, channel)],
        )
        .await;
        let row = store.session(&key).await.expect("read").expect("stored");
        assert_eq!(row.turns, u64::try_from(i + 1).expect("small"));
        let expected = if i < 2 {
            ChannelKind::new("http")
        } else {
            ChannelKind::new("telegram")
        };
        assert_eq!(row.last_channel, Some(expected), "after turn {i}");
    }
    // Listed under its last channel only.
    let by = |channel| SessionFilter {
        user: None,
        channel: Some(channel),
    };
    let telegram = store
        .list_sessions(&by(ChannelKind::new("telegram")), None, 10)
        .await
        .expect("list");
    assert_eq!(telegram.len(), 1);
    assert_eq!(telegram[0].key, key);
    let http = store
        .list_sessions(&by(ChannelKind::new("http")), None, 10)
        .await
        .expect("list");
    assert!(http.is_empty(), "{http:?}");
}

async fn sessions_page_by_key_every_row_once_in_order(store: &dyn Store) {
    let mut keys: Vec<SessionKey> = (1..=9).map(SessionKey::User).collect();
    keys.push(SessionKey::User(10));
    keys.push(SessionKey::Group(
        ChannelKind::new("discord"),
        "g-1".to_owned(),
    ));
    keys.push(SessionKey::Group(
        ChannelKind::new("http"),
        "g-2".to_owned(),
    ));
    for (i, key) in keys.iter().enumerate() {
        let channel = if i % 3 == 0 {
            ChannelKind::new("telegram")
        } else {
            ChannelKind::new("http")
        };
        turn(
            store,
            &format!("m{i}"),
            key,
            vec![entry(Role::User, "x", 1, Some(channel))],
        )
        .await;
    }
    assert_eq!(store.count_sessions().await.expect("count"), 12);
    let mut expected: Vec<String> = keys.iter().map(ToString::to_string).collect();
    expected.sort();
    let all = SessionFilter::default();
    for limit in [1, 2, 5, 12, 50] {
        let filter = &all;
        let rows = every_page(
            limit,
            move |after: Option<String>| async move {
                store
                    .list_sessions(filter, after.as_deref(), limit)
                    .await
                    .expect("page")
            },
            |s| s.key.to_string(),
        )
        .await;
        let got: Vec<String> = rows.iter().map(|s| s.key.to_string()).collect();
        assert_eq!(got, expected, "pages of {limit}");
    }
    // Filtered by channel, paged.
    let telegram = SessionFilter {
        user: None,
        channel: Some(ChannelKind::new("telegram")),
    };
    let filter = &telegram;
    let rows = every_page(
        2,
        move |after: Option<String>| async move {
            store
                .list_sessions(filter, after.as_deref(), 2)
                .await
                .expect("page")
        },
        |s| s.key.to_string(),
    )
    .await;
    let mut want: Vec<String> = keys.iter().step_by(3).map(ToString::to_string).collect();
    want.sort();
    let got: Vec<String> = rows.iter().map(|s| s.key.to_string()).collect();
    assert_eq!(got, want);
    // Filtered by user: that user's direct session only.
    let user = SessionFilter {
        user: Some(4),
        channel: None,
    };
    let rows = store.list_sessions(&user, None, 10).await.expect("list");
    assert_eq!(
        rows.iter().map(|s| s.key.clone()).collect::<Vec<_>>(),
        [SessionKey::User(4)]
    );
}

// ---------------------------------------------------------------------------------------------
// Outbox and dead letters.

async fn outbox_rows_go_from_pending_to_delivered_once(store: &dyn Store) {
    let row = pending_reply(store, ChannelKind::new("telegram"), "a long reply").await;
    assert_eq!((row.attempts, row.chunks_sent), (0, 0));
    assert_eq!(
        store.outbox_pending().await.expect("pending"),
        std::slice::from_ref(&row)
    );
    assert_eq!(store.counts().await.expect("counts"), (0, 1, 0));
    // Progress and a failed attempt keep it pending, and are remembered.
    store.outbox_progress(row.id, 2).await.expect("progress");
    store
        .outbox_attempt_failed(row.id, 1, ErrorClass::Retryable, "timeout")
        .await
        .expect("attempt failed");
    let pending = store.outbox_pending().await.expect("pending");
    assert_eq!(pending.len(), 1);
    assert_eq!((pending[0].attempts, pending[0].chunks_sent), (1, 2));
    assert_eq!(pending[0].text, "a long reply");
    store.outbox_delivered(row.id).await.expect("delivered");
    assert!(pending_ids(store).await.is_empty());
    assert_eq!(store.counts().await.expect("counts"), (0, 0, 0));
    // A delivered row never becomes a dead letter nor pending again.
    store
        .outbox_dead(row.id, 9, ErrorClass::Permanent, "late")
        .await
        .expect("no-op");
    assert_eq!(store.counts().await.expect("counts"), (0, 0, 0));
    assert!(matches!(
        store.dead_letter(row.id).await,
        Err(StoreError::NotFound(_))
    ));
    assert!(
        store
            .retry_dead(&DeadSelector::Ids(vec![row.id]))
            .await
            .expect("retry")
            .is_empty()
    );
    assert!(pending_ids(store).await.is_empty());
}

async fn outbox_rows_go_from_pending_to_dead_with_their_error_history(store: &dyn Store) {
    let row = pending_reply(store, ChannelKind::new("discord"), "unlucky").await;
    let other = pending_reply(store, ChannelKind::new("discord"), "fine").await;
    store
        .outbox_attempt_failed(row.id, 1, ErrorClass::Retryable, "e1")
        .await
        .expect("1");
    store
        .outbox_attempt_failed(row.id, 2, ErrorClass::Auth, "e2")
        .await
        .expect("2");
    store
        .outbox_dead(row.id, 3, ErrorClass::Permanent, "e3")
        .await
        .expect("dead");
    assert_eq!(pending_ids(store).await, [other.id]);
    assert_eq!(store.counts().await.expect("counts"), (0, 1, 1));
    let (letter, history) = store.dead_letter(row.id).await.expect("dead letter");
    assert_eq!(letter.message.id, row.id);
    assert_eq!(letter.message.text, "unlucky");
    assert_eq!(letter.message.channel, ChannelKind::new("discord"));
    assert_eq!(letter.message.attempts, 3);
    assert_eq!(
        (letter.last_error.as_str(), letter.class),
        ("e3", ErrorClass::Permanent)
    );
    assert!(letter.created_at_ms <= letter.dead_at_ms);
    let got: Vec<(u32, ErrorClass, &str)> = history
        .iter()
        .map(|h| (h.attempt, h.class, h.error.as_str()))
        .collect();
    assert_eq!(
        got,
        [
            (1, ErrorClass::Retryable, "e1"),
            (2, ErrorClass::Auth, "e2"),
            (3, ErrorClass::Permanent, "e3"),
        ]
    );
    assert!(history.windows(2).all(|w| w[0].at_ms <= w[1].at_ms));
    let listed = store.dead_letters(None, None, 10).await.expect("list");
    assert_eq!(listed, std::slice::from_ref(&letter));
    // A late success report does not revive a dead letter.
    store.outbox_delivered(row.id).await.expect("no-op");
    assert_eq!(store.counts().await.expect("counts"), (0, 1, 1));
    assert_eq!(
        store.dead_letter(row.id).await.expect("still dead").0,
        letter
    );
}

async fn a_retried_dead_letter_is_pending_again_and_a_dropped_one_is_gone(store: &dyn Store) {
    let a = dead_letter(store, ChannelKind::new("http"), "a", ErrorClass::Retryable).await;
    let b = dead_letter(store, ChannelKind::new("http"), "b", ErrorClass::Auth).await;
    let c = dead_letter(
        store,
        ChannelKind::new("telegram"),
        "c",
        ErrorClass::Permanent,
    )
    .await;
    assert_eq!(store.counts().await.expect("counts"), (0, 0, 3));
    // By channel and class: only `a`.
    let retried = store
        .retry_dead(&DeadSelector::Channel {
            channel: ChannelKind::new("http"),
            classes: Some(vec![ErrorClass::Retryable]),
        })
        .await
        .expect("retry");
    assert_eq!(ids(&retried), [a.id]);
    assert_eq!(retried[0].attempts, 0, "attempts start over");
    assert_eq!(retried[0].text, "a");
    assert_eq!(pending_ids(store).await, [a.id]);
    let dead: Vec<i64> = store
        .dead_letters(None, None, 10)
        .await
        .expect("list")
        .iter()
        .map(|d| d.message.id)
        .collect();
    assert_eq!(dead, [b.id, c.id]);
    // An empty class list selects nothing.
    assert!(
        store
            .retry_dead(&DeadSelector::Channel {
                channel: ChannelKind::new("http"),
                classes: Some(Vec::new()),
            })
            .await
            .expect("retry")
            .is_empty()
    );
    // By id: ids that are not dead letters are ignored.
    let retried = store
        .retry_dead(&DeadSelector::Ids(vec![b.id, a.id, c.id + 1000]))
        .await
        .expect("retry");
    assert_eq!(ids(&retried), [b.id]);
    assert!(
        store
            .retry_dead(&DeadSelector::Ids(Vec::new()))
            .await
            .expect("retry")
            .is_empty()
    );
    assert_eq!(pending_ids(store).await, [a.id, b.id]);
    // A retried letter is delivered like any reply.
    store.outbox_delivered(a.id).await.expect("delivered");
    assert_eq!(pending_ids(store).await, [b.id]);
    // Dropping: gone from the dead letters, never sent, never retried.
    let dropped = store
        .drop_dead(&DeadSelector::Channel {
            channel: ChannelKind::new("telegram"),
            classes: None,
        })
        .await
        .expect("drop");
    assert_eq!(dropped, 1);
    assert!(
        store
            .dead_letters(None, None, 10)
            .await
            .expect("list")
            .is_empty()
    );
    assert!(matches!(
        store.dead_letter(c.id).await,
        Err(StoreError::NotFound(_))
    ));
    assert!(
        store
            .retry_dead(&DeadSelector::Ids(vec![c.id]))
            .await
            .expect("retry")
            .is_empty()
    );
    assert_eq!(
        store
            .drop_dead(&DeadSelector::Ids(vec![c.id, b.id]))
            .await
            .expect("drop"),
        0,
        "neither is a dead letter"
    );
    assert_eq!(store.counts().await.expect("counts"), (0, 1, 0));
}

async fn dead_letters_page_by_id_every_row_once_in_order(store: &dyn Store) {
    let mut all = Vec::new();
    let mut http = Vec::new();
    for i in 0..7 {
        let channel = if i % 2 == 0 {
            ChannelKind::new("http")
        } else {
            ChannelKind::new("webchat")
        };
        let row = dead_letter(store, channel, &format!("d{i}"), ErrorClass::Retryable).await;
        if channel == ChannelKind::new("http") {
            http.push(row.id);
        }
        all.push(row.id);
        // Pending rows between them are not listed.
        pending_reply(store, channel, "pending").await;
    }
    for limit in 1..=8 {
        let rows = every_page(
            limit,
            move |after| async move { store.dead_letters(None, after, limit).await.expect("page") },
            |d| d.message.id,
        )
        .await;
        let got: Vec<i64> = rows.iter().map(|d| d.message.id).collect();
        assert_eq!(got, all, "pages of {limit}");
    }
    let rows = every_page(
        2,
        move |after| async move {
            store
                .dead_letters(Some(ChannelKind::new("http")), after, 2)
                .await
                .expect("page")
        },
        |d| d.message.id,
    )
    .await;
    assert!(
        rows.iter()
            .all(|d| d.message.channel == ChannelKind::new("http"))
    );
    let got: Vec<i64> = rows.iter().map(|d| d.message.id).collect();
    assert_eq!(got, http);
}

// ---------------------------------------------------------------------------------------------
// Identities.

async fn an_address_resolves_to_one_user_and_unknown_addresses_are_isolated(store: &dyn Store) {
    let w = address(ChannelKind::new("webchat"), "w");
    let a = store.resolve_address(&w).await.expect("a");
    assert_eq!(store.resolve_address(&w).await.expect("again"), a);
    let b = store
        .resolve_address(&address(ChannelKind::new("http"), "w"))
        .await
        .expect("b");
    assert_ne!(
        a, b,
        "the same sender id on another channel is someone else"
    );
    let user = store.user(a).await.expect("user");
    assert_eq!((user.id, user.addresses), (a, vec![w]));
    assert!(matches!(
        store.user(a.max(b) + 1000).await,
        Err(StoreError::NotFound(_))
    ));
    // Concurrent first sightings of one address make one user.
    let t = address(ChannelKind::new("telegram"), "t");
    let users = futures_util::future::join_all((0..20).map(|_| store.resolve_address(&t))).await;
    let users: Vec<UserId> = users.into_iter().map(|u| u.expect("resolve")).collect();
    assert!(users.iter().all(|u| *u == users[0]), "{users:?}");
}

async fn linking_merges_addresses_sessions_and_transcripts_in_time_order(store: &dyn Store) {
    let w = address(ChannelKind::new("webchat"), "w");
    let h = address(ChannelKind::new("http"), "h");
    let a = store.resolve_address(&w).await.expect("a");
    let b = store.resolve_address(&h).await.expect("b");
    assert_ne!(a, b, "unknown addresses are isolated users");
    for (i, (user, at)) in [(a, 10), (b, 20), (a, 30)].into_iter().enumerate() {
        turn(
            store,
            &format!("m{i}"),
            &SessionKey::User(user),
            vec![entry(Role::User, &format!("t{at}"), at, None)],
        )
        .await;
    }
    store
        .put_link_code("OLDCODE", b, i64::MAX)
        .await
        .expect("code");
    store.link_users(a, b).await.expect("link");
    let texts = |h: Vec<TranscriptEntry>| h.into_iter().map(|e| e.text).collect::<Vec<_>>();
    assert_eq!(
        texts(store.history(&SessionKey::User(a), 10).await.expect("h")),
        ["t10", "t20", "t30"]
    );
    assert!(
        store
            .history(&SessionKey::User(b), 10)
            .await
            .expect("h")
            .is_empty()
    );
    let mut addresses = store.user(a).await.expect("user").addresses;
    addresses.sort();
    let mut both = vec![w.clone(), h.clone()];
    both.sort();
    assert_eq!(addresses, both);
    assert!(matches!(store.user(b).await, Err(StoreError::NotFound(_))));
    assert_eq!(store.resolve_address(&h).await.expect("resolve"), a);
    // The session rows merge too.
    let kept = store
        .session(&SessionKey::User(a))
        .await
        .expect("s")
        .expect("kept session");
    assert_eq!(kept.turns, 3);
    assert_eq!(store.session(&SessionKey::User(b)).await.expect("s"), None);
    assert_eq!(store.count_sessions().await.expect("count"), 1);
    // The merged user's link code is spent.
    assert_eq!(
        store.take_link_code("OLDCODE", now_ms()).await.expect("t"),
        None
    );
    // Refused merges.
    assert!(matches!(
        store.link_users(a, a).await,
        Err(StoreError::Conflict(_))
    ));
    assert!(matches!(
        store.link_users(a, b).await,
        Err(StoreError::NotFound(_))
    ));
    assert!(matches!(
        store.link_users(a + b + 1000, a).await,
        Err(StoreError::NotFound(_))
    ));
    // Unlinking moves the address to a new user; the history stays behind.
    let c = store.unlink_address(&h).await.expect("unlink");
    assert!(c != a && c != b);
    assert_eq!(
        store
            .history(&SessionKey::User(a), 10)
            .await
            .expect("h")
            .len(),
        3
    );
    assert!(
        store
            .history(&SessionKey::User(c), 10)
            .await
            .expect("h")
            .is_empty()
    );
    assert_eq!(
        store.user(a).await.expect("a").addresses,
        std::slice::from_ref(&w)
    );
    assert_eq!(
        store.user(c).await.expect("c").addresses,
        std::slice::from_ref(&h)
    );
    assert_eq!(store.resolve_address(&h).await.expect("resolve"), c);
    assert!(matches!(
        store.unlink_address(&w).await,
        Err(StoreError::Conflict(_))
    ));
    assert!(matches!(
        store
            .unlink_address(&address(ChannelKind::new("discord"), "nobody"))
            .await,
        Err(StoreError::NotFound(_))
    ));
}

async fn attaching_an_address_moves_only_that_address(store: &dyn Store) {
    let x = address(ChannelKind::new("http"), "x");
    let y = address(ChannelKind::new("telegram"), "y");
    let z = address(ChannelKind::new("discord"), "z");
    let one = store.resolve_address(&x).await.expect("x");
    let merged = store.resolve_address(&y).await.expect("y");
    store.link_users(one, merged).await.expect("link");
    let two = store.resolve_address(&z).await.expect("z");
    store.attach_address(two, &y).await.expect("attach");
    assert_eq!(
        store.user(one).await.expect("one").addresses,
        std::slice::from_ref(&x)
    );
    let mut got = store.user(two).await.expect("two").addresses;
    got.sort();
    let mut want = vec![y.clone(), z.clone()];
    want.sort();
    assert_eq!(got, want);
    assert_eq!(store.resolve_address(&y).await.expect("y"), two);
    // An unknown address is created on the user.
    let q = address(ChannelKind::new("webchat"), "q");
    store.attach_address(one, &q).await.expect("attach new");
    assert_eq!(store.resolve_address(&q).await.expect("q"), one);
    assert!(matches!(
        store.attach_address(one + two + 1000, &x).await,
        Err(StoreError::NotFound(_))
    ));
    assert!(matches!(
        store.attach_address(merged, &x).await,
        Err(StoreError::NotFound(_))
    ));
    assert_eq!(store.resolve_address(&x).await.expect("x"), one);
}

async fn users_page_by_id_every_row_once_in_order(store: &dyn Store) {
    let mut all = Vec::new();
    let mut telegram = Vec::new();
    for i in 0..9 {
        let channel = if i % 3 == 0 {
            ChannelKind::new("telegram")
        } else {
            ChannelKind::new("http")
        };
        let id = store
            .resolve_address(&address(channel, &format!("s{i}")))
            .await
            .expect("resolve");
        all.push(id);
        if channel == ChannelKind::new("telegram") {
            telegram.push(id);
        }
    }
    // A merged user is no longer listed; its addresses are listed with the kept user.
    let (keep, merge) = (all[1], all[3]);
    store.link_users(keep, merge).await.expect("link");
    all.retain(|u| *u != merge);
    telegram.retain(|u| *u != merge);
    telegram.push(keep);
    telegram.sort_unstable();
    for limit in [1, 2, 4, 8, 20] {
        let rows = every_page(
            limit,
            move |after| async move { store.list_users(None, after, limit).await.expect("page") },
            |u| u.id,
        )
        .await;
        let got: Vec<UserId> = rows.iter().map(|u| u.id).collect();
        assert_eq!(got, all, "pages of {limit}");
        let kept = rows.iter().find(|u| u.id == keep).expect("kept user");
        assert_eq!(kept.addresses.len(), 2, "{kept:?}");
    }
    let rows = every_page(
        2,
        move |after| async move {
            store
                .list_users(Some(ChannelKind::new("telegram")), after, 2)
                .await
                .expect("page")
        },
        |u| u.id,
    )
    .await;
    let got: Vec<UserId> = rows.iter().map(|u| u.id).collect();
    assert_eq!(got, telegram);
}

async fn link_codes_are_single_use_expire_and_one_per_user(store: &dyn Store) {
    store.put_link_code("ABC123", 7, 1_000).await.expect("put");
    assert_eq!(
        store.take_link_code("ABC123", 2_000).await.expect("t"),
        None,
        "expired"
    );
    store.put_link_code("DEF456", 7, 5_000).await.expect("put");
    assert_eq!(
        store.take_link_code("DEF456", 2_000).await.expect("t"),
        Some(7)
    );
    assert_eq!(
        store.take_link_code("DEF456", 2_000).await.expect("t"),
        None,
        "used"
    );
    assert_eq!(
        store.take_link_code("NOSUCH", 2_000).await.expect("t"),
        None
    );
    // A new code replaces the user's previous one; other users' codes stay.
    store.put_link_code("FIRST1", 8, 9_000).await.expect("put");
    store.put_link_code("OTHER1", 9, 9_000).await.expect("put");
    store.put_link_code("SECOND", 8, 9_000).await.expect("put");
    assert_eq!(
        store.take_link_code("FIRST1", 2_000).await.expect("t"),
        None
    );
    assert_eq!(
        store.take_link_code("SECOND", 2_000).await.expect("t"),
        Some(8)
    );
    assert_eq!(
        store.take_link_code("OTHER1", 2_000).await.expect("t"),
        Some(9)
    );
}

async fn the_last_direct_chat_is_the_newest_direct_message_of_the_user(store: &dyn Store) {
    let s = address(ChannelKind::new("http"), "s");
    let user = store.resolve_address(&s).await.expect("user");
    assert_eq!(store.last_direct_chat(user).await.expect("read"), None);
    let mut direct = msg(ChannelKind::new("http"), "d1", "s");
    direct.chat_id = "c1".to_owned();
    new_inbox_row(store, &direct).await;
    let mut group = msg(ChannelKind::new("http"), "g1", "s");
    group.chat_type = ChatType::Group;
    group.chat_id = "room".to_owned();
    new_inbox_row(store, &group).await;
    assert_eq!(
        store.last_direct_chat(user).await.expect("read"),
        Some((ChannelKind::new("http"), "c1".to_owned())),
        "a group message is not a direct chat"
    );
    // A newer direct message from another address of the same user wins.
    let t = address(ChannelKind::new("telegram"), "t");
    let other = store.resolve_address(&t).await.expect("other");
    store.link_users(user, other).await.expect("link");
    let mut telegram = msg(ChannelKind::new("telegram"), "t1", "t");
    telegram.chat_id = "tc".to_owned();
    new_inbox_row(store, &telegram).await;
    assert_eq!(
        store.last_direct_chat(user).await.expect("read"),
        Some((ChannelKind::new("telegram"), "tc".to_owned()))
    );
    let stranger = store
        .resolve_address(&address(ChannelKind::new("discord"), "x"))
        .await
        .expect("stranger");
    assert_eq!(store.last_direct_chat(stranger).await.expect("read"), None);
}

async fn a_direct_chat_belongs_to_the_users_linked_addresses_only(store: &dyn Store) {
    let http = ChannelKind::new("http");
    let telegram = ChannelKind::new("telegram");
    let user = store
        .resolve_address(&address(http, "s"))
        .await
        .expect("user");
    assert!(
        !store
            .is_direct_chat_of(user, http, "c1")
            .await
            .expect("read")
    );
    let mut direct = msg(http, "d1", "s");
    direct.chat_id = "c1".to_owned();
    new_inbox_row(store, &direct).await;
    let mut group = msg(http, "g1", "s");
    group.chat_type = ChatType::Group;
    group.chat_id = "room".to_owned();
    new_inbox_row(store, &group).await;
    assert!(
        store
            .is_direct_chat_of(user, http, "c1")
            .await
            .expect("read")
    );
    assert!(
        !store
            .is_direct_chat_of(user, http, "room")
            .await
            .expect("read"),
        "a group the user wrote in is not theirs"
    );
    assert!(
        !store
            .is_direct_chat_of(user, telegram, "c1")
            .await
            .expect("read"),
        "the same chat id on another channel is another chat"
    );
    let stranger = store
        .resolve_address(&address(telegram, "x"))
        .await
        .expect("stranger");
    let mut theirs = msg(telegram, "x1", "x");
    theirs.chat_id = "xc".to_owned();
    new_inbox_row(store, &theirs).await;
    assert!(
        !store
            .is_direct_chat_of(user, telegram, "xc")
            .await
            .expect("read")
    );
    assert!(
        store
            .is_direct_chat_of(stranger, telegram, "xc")
            .await
            .expect("read")
    );
    // Linked, the stranger's direct chat is the kept user's too.
    store.link_users(user, stranger).await.expect("link");
    assert!(
        store
            .is_direct_chat_of(user, telegram, "xc")
            .await
            .expect("read")
    );
}

// ---------------------------------------------------------------------------------------------
// Workflow runs.

fn node(id: &str, status: NodeStatus, output: Option<serde_json::Value>) -> NodeRecord {
    NodeRecord {
        node: id.to_owned(),
        status,
        output,
        error: None,
        attempts: 1,
        started_at_ms: Some(1),
        finished_at_ms: status.is_final().then_some(2),
    }
}

async fn workflow_runs_keep_their_state_and_nodes(store: &dyn Store) {
    let origin = RunOrigin {
        channel: ChannelKind::new("http"),
        chat_id: "c".into(),
        user: Some(3),
        trigger: "chat".into(),
    };
    let inputs = serde_json::json!({"ticket": "help", "n": [1, 2.5, null]});
    let run = store
        .run_create("triage", &inputs, Some(&origin))
        .await
        .expect("create");
    let plain = store
        .run_create("nightly", &serde_json::json!({}), None)
        .await
        .expect("create");
    let classify = node(
        "classify",
        NodeStatus::Succeeded,
        Some(serde_json::json!("urgent")),
    );
    store.run_node(run, &classify).await.expect("node");
    // A node's record is replaced, not duplicated.
    store
        .run_node(run, &node("answer", NodeStatus::Running, None))
        .await
        .expect("node");
    let answer = NodeRecord {
        error: Some("timeout".into()),
        attempts: 3,
        ..node("answer", NodeStatus::Failed, None)
    };
    store.run_node(run, &answer).await.expect("node");
    let unfinished = store.runs_unfinished().await.expect("unfinished");
    assert_eq!(
        unfinished.iter().map(|r| r.id).collect::<Vec<_>>(),
        [run, plain],
        "oldest first"
    );
    let got = &unfinished[0];
    assert_eq!(got.workflow, "triage");
    assert_eq!(got.inputs, inputs);
    assert_eq!(got.origin, Some(origin.clone()));
    assert_eq!(got.status, RunStatus::Running);
    let mut nodes = got.nodes.clone();
    nodes.sort_by(|a, b| a.node.cmp(&b.node));
    assert_eq!(nodes, [answer.clone(), classify.clone()]);
    assert_eq!(got.finished_at_ms, None);
    store
        .run_finish(run, RunStatus::Failed, Some("answer failed"))
        .await
        .expect("finish");
    store
        .run_finish(plain, RunStatus::Succeeded, None)
        .await
        .expect("finish");
    assert!(
        store
            .runs_unfinished()
            .await
            .expect("unfinished")
            .is_empty()
    );
    let got = store.run_get(run).await.expect("get");
    assert_eq!(got.status, RunStatus::Failed);
    assert_eq!(got.error.as_deref(), Some("answer failed"));
    assert!(got.finished_at_ms.is_some_and(|f| f >= got.created_at_ms));
    assert_eq!(got.nodes.len(), 2);
    let got = store.run_get(plain).await.expect("get");
    assert_eq!(
        (got.status, got.error, got.origin),
        (RunStatus::Succeeded, None, None)
    );
    assert!(got.nodes.is_empty());
    assert_eq!(
        store
            .run_list(Some("triage"), None, 10)
            .await
            .expect("list")
            .iter()
            .map(|r| r.id)
            .collect::<Vec<_>>(),
        [run]
    );
    assert!(matches!(
        store.run_get(run.max(plain) + 1000).await,
        Err(StoreError::NotFound(_))
    ));
}

async fn runs_page_newest_first_every_row_once(store: &dyn Store) {
    let mut all = Vec::new();
    let mut nightly = Vec::new();
    for i in 0..9 {
        let workflow = if i % 2 == 0 { "nightly" } else { "triage" };
        let id = store
            .run_create(workflow, &serde_json::json!({ "i": i }), None)
            .await
            .expect("create");
        all.push(id);
        if workflow == "nightly" {
            nightly.push(id);
        }
    }
    all.reverse();
    nightly.reverse();
    for limit in [1, 2, 4, 9, 20] {
        let rows = every_page(
            limit,
            move |before| async move { store.run_list(None, before, limit).await.expect("page") },
            |r| r.id,
        )
        .await;
        let got: Vec<i64> = rows.iter().map(|r| r.id).collect();
        assert_eq!(got, all, "pages of {limit}");
    }
    let rows = every_page(
        2,
        move |before| async move {
            store
                .run_list(Some("nightly"), before, 2)
                .await
                .expect("page")
        },
        |r| r.id,
    )
    .await;
    assert!(rows.iter().all(|r| r.workflow == "nightly"));
    let got: Vec<i64> = rows.iter().map(|r| r.id).collect();
    assert_eq!(got, nightly);
}

// ---------------------------------------------------------------------------------------------
// Stranded messages and closing.

async fn a_stranded_message_is_handed_out_once_while_pending(store: &dyn Store) {
    let first = new_inbox_row(store, &msg(ChannelKind::new("http"), "m1", "a")).await;
    let second = new_inbox_row(store, &msg(ChannelKind::new("http"), "m2", "a")).await;
    let third = new_inbox_row(store, &msg(ChannelKind::new("http"), "m3", "a")).await;
    store.note_stranded(third);
    store.note_stranded(first);
    store.note_stranded(second);
    // A message whose turn is done is no longer stranded.
    store
        .commit_turn(TurnRecord {
            inbox_id: second,
            session: SessionKey::User(1),
            entries: Vec::new(),
            replies: Vec::new(),
            fence: None,
        })
        .await
        .expect("turn");
    let stranded: Vec<i64> = store
        .take_stranded()
        .await
        .expect("stranded")
        .iter()
        .map(|p| p.inbox_id)
        .collect();
    assert_eq!(stranded, [first, third], "pending ones, oldest first");
    assert!(store.take_stranded().await.expect("again").is_empty());
}

async fn a_closed_store_refuses_writes(store: &dyn Store) {
    new_inbox_row(store, &msg(ChannelKind::new("http"), "before", "a")).await;
    store.close().await;
    let err = store
        .inbox_commit(&msg(ChannelKind::new("http"), "after", "a"))
        .await
        .expect_err("closed");
    assert!(matches!(err, StoreError::Closed), "{err}");
    let err = store
        .outbox_put(reply(ChannelKind::new("http"), "c", "late"))
        .await
        .expect_err("closed");
    assert!(matches!(err, StoreError::Closed), "{err}");
}

// ---------------------------------------------------------------------------------------------
// Reply windows and receipts.

async fn the_last_inbound_time_is_the_newest_message_of_that_chat_on_that_channel(
    store: &dyn Store,
) {
    let wa = ChannelKind::new("whatsapp");
    let http = ChannelKind::new("http");
    assert_eq!(
        store.last_inbound_at(wa, "chat-ada").await.expect("read"),
        None
    );
    let mut old = msg(wa, "m1", "ada");
    old.received_at_ms = 1_000;
    let mut new = msg(wa, "m2", "ada");
    new.received_at_ms = 5_000;
    let mut other_chat = msg(wa, "m3", "bob");
    other_chat.received_at_ms = 9_000;
    let mut other_channel = msg(http, "m4", "ada");
    other_channel.received_at_ms = 9_000;
    for m in [&new, &old, &other_chat, &other_channel] {
        new_inbox_row(store, m).await;
    }
    assert_eq!(
        store.last_inbound_at(wa, "chat-ada").await.expect("read"),
        Some(5_000)
    );
    assert_eq!(
        store.last_inbound_at(wa, "chat-bob").await.expect("read"),
        Some(9_000)
    );
    assert_eq!(
        store.last_inbound_at(wa, "chat-eve").await.expect("read"),
        None
    );
}

async fn receipts_land_on_their_row_only_move_forward_and_may_come_first(store: &dyn Store) {
    let wa = ChannelKind::new("whatsapp");
    let receipt = |id: i64| async move {
        let rows = store
            .list_outbox(&OutboxFilter::default(), None, 100, false)
            .await
            .expect("list_outbox");
        let row = rows
            .into_iter()
            .find(|r| r.id == id)
            .unwrap_or_else(|| panic!("outbox row {id} is listed"));
        (row.receipt, row.receipt_error)
    };
    let row = pending_reply(store, wa, "hello").await;
    assert_eq!(receipt(row.id).await, (None, None), "nothing reported yet");
    store
        .outbox_platform_id(row.id, 0, wa, "wamid.1")
        .await
        .expect("platform id");
    store.outbox_delivered(row.id).await.expect("delivered");
    assert_eq!(
        receipt(row.id).await,
        (None, None),
        "an id is not a receipt"
    );

    let known = store
        .record_receipt(wa, "wamid.1", ReceiptStatus::Read, None)
        .await
        .expect("read");
    assert_eq!(known, Some(row.id));
    assert_eq!(receipt(row.id).await, (Some(ReceiptStatus::Read), None));
    // An older report arriving late changes nothing.
    store
        .record_receipt(wa, "wamid.1", ReceiptStatus::Delivered, None)
        .await
        .expect("delivered");
    assert_eq!(receipt(row.id).await, (Some(ReceiptStatus::Read), None));
    // A failure is recorded whatever came before, with its reason, on a delivered row.
    store
        .record_receipt(
            wa,
            "wamid.1",
            ReceiptStatus::Failed,
            Some("131026 undeliverable"),
        )
        .await
        .expect("failed");
    assert_eq!(
        receipt(row.id).await,
        (
            Some(ReceiptStatus::Failed),
            Some("131026 undeliverable".to_owned())
        )
    );

    // A receipt for a send not yet recorded is kept, and joins its row when the send is.
    let second = pending_reply(store, wa, "two chunks").await;
    let early = store
        .record_receipt(wa, "wamid.2b", ReceiptStatus::Delivered, None)
        .await
        .expect("early receipt");
    assert_eq!(early, None, "no row knows wamid.2b yet");
    store
        .outbox_platform_id(second.id, 0, wa, "wamid.2a")
        .await
        .expect("chunk 1");
    store
        .outbox_platform_id(second.id, 1, wa, "wamid.2b")
        .await
        .expect("chunk 2");
    assert_eq!(
        receipt(second.id).await,
        (Some(ReceiptStatus::Delivered), None)
    );
    store
        .record_receipt(wa, "wamid.2a", ReceiptStatus::Read, None)
        .await
        .expect("read");
    assert_eq!(
        receipt(second.id).await,
        (Some(ReceiptStatus::Delivered), None),
        "a split reply shows its least advanced chunk"
    );
    // The same platform id on another channel is another message.
    assert_eq!(
        store
            .record_receipt(
                ChannelKind::new("http"),
                "wamid.2a",
                ReceiptStatus::Failed,
                None
            )
            .await
            .expect("other channel"),
        None
    );
    assert_eq!(
        receipt(second.id).await,
        (Some(ReceiptStatus::Delivered), None)
    );
    assert_eq!(receipt(row.id).await.0, Some(ReceiptStatus::Failed));
}

// ---------------------------------------------------------------------------------------------
// Adapters' watermarks.

async fn cursors_only_move_forward_per_channel_and_name(store: &dyn Store) {
    let bb = ChannelKind::new("imessage");
    let signal = ChannelKind::new("signal");
    assert_eq!(store.cursor(bb, "after").await.expect("read"), None);
    assert_eq!(
        store
            .advance_cursor(bb, "after", 5_000)
            .await
            .expect("advance"),
        5_000
    );
    assert_eq!(
        store
            .advance_cursor(bb, "after", 3_000)
            .await
            .expect("advance"),
        5_000,
        "an earlier value leaves the watermark where it is"
    );
    assert_eq!(store.cursor(bb, "after").await.expect("read"), Some(5_000));
    assert_eq!(
        store
            .advance_cursor(bb, "after", 7_000)
            .await
            .expect("advance"),
        7_000
    );
    assert_eq!(store.cursor(bb, "after").await.expect("read"), Some(7_000));
    assert_eq!(
        store.cursor(bb, "other").await.expect("read"),
        None,
        "names are apart"
    );
    assert_eq!(
        store.cursor(signal, "after").await.expect("read"),
        None,
        "channels are apart"
    );
    let concurrent: Vec<_> = (1..=20)
        .map(|i| store.advance_cursor(signal, "after", i * 100))
        .collect();
    for r in futures_util::future::join_all(concurrent).await {
        r.expect("advance");
    }
    assert_eq!(
        store.cursor(signal, "after").await.expect("read"),
        Some(2_000),
        "concurrent advances end at the largest"
    );
}

// ---------------------------------------------------------------------------------------------
// Usage and budgets.

fn usage_row(user: UserId, inbox_id: i64, at_ms: i64, tokens: (u64, u64)) -> UsageRecord {
    UsageRecord {
        user,
        session: SessionKey::User(user),
        inbox_id,
        at_ms,
        prompt_tokens: tokens.0,
        completion_tokens: tokens.1,
        estimated: false,
    }
}

async fn usage_commits_with_its_turn_sums_per_user_and_follows_a_link(store: &dyn Store) {
    let http = ChannelKind::new("http");
    let (m1, m2) = (msg(http, "u1", "ann"), msg(http, "u2", "ben"));
    let ann = store.resolve_address(&m1.address()).await.expect("ann");
    let ben = store.resolve_address(&m2.address()).await.expect("ben");
    let now = now_ms();
    for (m, user, at, tokens) in [(&m1, ann, now - 1_000, (30, 5)), (&m2, ben, now, (7, 1))] {
        let inbox_id = new_inbox_row(store, m).await;
        let record = TurnRecord {
            inbox_id,
            session: SessionKey::User(user),
            entries: vec![entry(Role::User, "hi", at, Some(http))],
            replies: vec![reply(http, "chat", "hello")],
            fence: None,
        };
        let rows = store
            .commit_turn_with_usage(record.clone(), Some(usage_row(user, inbox_id, at, tokens)))
            .await
            .expect("turn");
        assert_eq!(rows.len(), 1, "the reply is committed with the usage");
        // A second turn for the row is refused and records nothing.
        let again = store
            .commit_turn_with_usage(record, Some(usage_row(user, inbox_id, at, (999, 999))))
            .await;
        assert!(matches!(again, Err(StoreError::Conflict(_))), "{again:?}");
    }
    let totals = store.usage_totals(None, 0).await.expect("totals");
    let by_user: Vec<_> = totals
        .iter()
        .map(|t| (t.user, t.prompt_tokens, t.completion_tokens, t.turns))
        .collect();
    assert_eq!(
        by_user,
        [(ann, 30, 5, 1), (ben, 7, 1, 1)],
        "most tokens first"
    );
    assert!(
        store
            .usage_totals(Some(ann), now)
            .await
            .expect("since")
            .is_empty()
    );
    assert_eq!(
        store.turn_times(ann, 0).await.expect("times"),
        [now - 1_000]
    );
    store.link_users(ann, ben).await.expect("link");
    let totals = store.usage_totals(None, 0).await.expect("totals");
    assert_eq!(totals.len(), 1, "{totals:?}");
    assert_eq!(
        (totals[0].user, totals[0].tokens(), totals[0].turns),
        (ann, 43, 2)
    );
    assert_eq!(
        store.turn_times(ann, 0).await.expect("times"),
        [now - 1_000, now]
    );
}

async fn budget_overrides_are_set_and_cleared_per_user(store: &dyn Store) {
    assert!(store.budget_override(1).await.expect("none").is_empty());
    let limits = BudgetOverride {
        tokens_per_day: Some(10),
        turns_per_minute: Some(2),
    };
    store.set_budget_override(1, limits).await.expect("set");
    assert_eq!(store.budget_override(1).await.expect("get"), limits);
    assert!(store.budget_override(2).await.expect("other").is_empty());
    store
        .set_budget_override(1, BudgetOverride::default())
        .await
        .expect("clear");
    assert!(store.budget_override(1).await.expect("cleared").is_empty());
}
