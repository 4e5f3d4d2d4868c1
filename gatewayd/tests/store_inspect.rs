//! The store's read-only inspection queries on the SQLite backend: inbox and outbox rows as
//! stored, filtered by channel, chat and state and paged by id, outbox rows with their error
//! histories, and transcript entries with the inbox row whose turn wrote them.

use gatewayd::message::{ChannelKind, ChatType, InboundMessage, SessionKey, now_ms};
use gatewayd::send::ErrorClass;
use gatewayd::store::sqlite::SqliteStore;
use gatewayd::store::{
    DeadSelector, InboxFilter, InboxOutcome, NewReply, OutboxFilter, OutboxStatus, Role, Store,
    TranscriptEntry, TurnRecord,
};

fn open() -> (tempfile::TempDir, SqliteStore) {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = SqliteStore::open(&dir.path().join("g.db")).expect("open");
    (dir, store)
}

fn msg(channel: ChannelKind, id: &str, chat: &str, chat_type: ChatType) -> InboundMessage {
    InboundMessage {
        channel,
        channel_message_id: id.to_owned(),
        chat_id: chat.to_owned(),
        chat_type,
        sender_id: format!("s-{chat}"),
        text: format!("text {id}"),
        reply_to: None,
        attachments: Vec::new(),
        sender_name: None,
        received_at_ms: now_ms(),
        mentioned: false,
    }
}

async fn commit(store: &SqliteStore, m: &InboundMessage) -> i64 {
    match store.inbox_commit(m).await.expect("commit") {
        InboxOutcome::New(id) => id,
        InboxOutcome::Duplicate(id) => panic!("{} is a duplicate of {id}", m.channel_message_id),
    }
}

fn entry(role: Role, text: &str) -> TranscriptEntry {
    TranscriptEntry {
        role,
        text: text.to_owned(),
        at_ms: now_ms(),
        channel: Some(ChannelKind::new("http")),
    }
}

/// Answers inbox row `inbox_id` (message `m`) with one reply in its chat; the reply's id.
async fn answer(store: &SqliteStore, inbox_id: i64, m: &InboundMessage, session: i64) -> i64 {
    let rows = store
        .commit_turn(TurnRecord {
            inbox_id,
            session: SessionKey::User(session),
            entries: vec![
                entry(Role::User, &m.text),
                entry(Role::Assistant, &format!("re {}", m.text)),
            ],
            replies: vec![NewReply {
                channel: m.channel,
                chat_id: m.chat_id.clone(),
                text: format!("re {}", m.text),
                reply_to: Some(m.channel_message_id.clone()),
            }],
            fence: None,
        })
        .await
        .expect("turn");
    assert_eq!(rows.len(), 1);
    rows[0].id
}

#[tokio::test]
async fn inbox_rows_are_listed_oldest_first_filtered_and_paged() {
    let (_dir, store) = open();
    let mut replying = msg(ChannelKind::new("telegram"), "g:2", "g", ChatType::Group);
    replying.reply_to = Some("g:1".to_owned());
    let messages = [
        msg(ChannelKind::new("http"), "h1", "a", ChatType::Direct),
        msg(ChannelKind::new("telegram"), "g:1", "g", ChatType::Group),
        msg(ChannelKind::new("http"), "h2", "b", ChatType::Direct),
        replying,
        msg(ChannelKind::new("http"), "h3", "a", ChatType::Direct),
    ];
    let mut ids = Vec::new();
    for m in &messages {
        ids.push(commit(&store, m).await);
    }
    // A redelivery is not a second row.
    assert_eq!(
        store.inbox_commit(&messages[0]).await.expect("commit"),
        InboxOutcome::Duplicate(ids[0])
    );
    answer(&store, ids[0], &messages[0], 1).await;

    let all = store
        .list_inbox(&InboxFilter::default(), None, 100)
        .await
        .expect("list");
    assert_eq!(all.iter().map(|r| r.id).collect::<Vec<_>>(), ids);
    for (row, m) in all.iter().zip(&messages) {
        assert_eq!(row.channel, m.channel.as_str());
        assert_eq!(row.channel_message_id, m.channel_message_id);
        assert_eq!(row.chat_id, m.chat_id);
        assert_eq!(row.chat_type, m.chat_type.as_str());
        assert_eq!(row.sender_id, m.sender_id);
        assert_eq!(row.text, m.text);
        assert_eq!(row.reply_to, m.reply_to);
        assert_eq!(row.received_at_ms, m.received_at_ms);
    }
    assert_eq!(
        all.iter().map(|r| r.done).collect::<Vec<_>>(),
        [true, false, false, false, false]
    );

    let of = |channel: Option<&str>, chat: Option<&str>, done: Option<bool>| InboxFilter {
        channel: channel.map(str::to_owned),
        chat_id: chat.map(str::to_owned),
        done,
    };
    let ids_of = |rows: Vec<gatewayd::store::InboxRecord>| -> Vec<i64> {
        rows.iter().map(|r| r.id).collect()
    };
    let http = store
        .list_inbox(&of(Some("http"), None, None), None, 100)
        .await
        .expect("list");
    assert_eq!(ids_of(http), [ids[0], ids[2], ids[4]]);
    let chat_a = store
        .list_inbox(&of(Some("http"), Some("a"), None), None, 100)
        .await
        .expect("list");
    assert_eq!(ids_of(chat_a), [ids[0], ids[4]]);
    let pending_a = store
        .list_inbox(&of(None, Some("a"), Some(false)), None, 100)
        .await
        .expect("list");
    assert_eq!(ids_of(pending_a), [ids[4]]);
    let done = store
        .list_inbox(&of(None, None, Some(true)), None, 100)
        .await
        .expect("list");
    assert_eq!(ids_of(done), [ids[0]]);
    let nothing = store
        .list_inbox(&of(Some("discord"), None, None), None, 100)
        .await
        .expect("list");
    assert!(nothing.is_empty(), "{nothing:?}");

    // Paging: after the last id of a page, with the page's limit.
    let mut paged = Vec::new();
    let mut after = None;
    loop {
        let page = store
            .list_inbox(&InboxFilter::default(), after, 2)
            .await
            .expect("page");
        assert!(page.len() <= 2);
        let Some(last) = page.last() else { break };
        after = Some(last.id);
        paged.extend(page.iter().map(|r| r.id));
    }
    assert_eq!(paged, ids);
}

#[tokio::test]
async fn outbox_rows_show_status_attempts_errors_and_page() {
    let (_dir, store) = open();
    let mut outbox = Vec::new();
    for (i, chat) in ["a", "b", "a", "c"].iter().enumerate() {
        let m = msg(
            ChannelKind::new("http"),
            &format!("m{i}"),
            chat,
            ChatType::Direct,
        );
        let inbox_id = commit(&store, &m).await;
        outbox.push((answer(&store, inbox_id, &m, 1).await, inbox_id, m));
    }
    let put = store
        .outbox_put(NewReply {
            channel: ChannelKind::new("webchat"),
            chat_id: "w".to_owned(),
            text: "from a workflow".to_owned(),
            reply_to: None,
        })
        .await
        .expect("put");
    // Row 0: delivered after one failure. Row 1: dead after two. Row 2: held by a credentials
    // error. Row 3: dead, then dropped. The put reply: untouched.
    let ids: Vec<i64> = outbox.iter().map(|o| o.0).collect();
    store
        .outbox_attempt_failed(ids[0], 1, ErrorClass::Retryable, "HTTP 500")
        .await
        .expect("failed");
    store.outbox_delivered(ids[0]).await.expect("delivered");
    store
        .outbox_attempt_failed(ids[1], 1, ErrorClass::Retryable, "HTTP 503")
        .await
        .expect("failed");
    store
        .outbox_dead(ids[1], 2, ErrorClass::Permanent, "HTTP 400")
        .await
        .expect("dead");
    store
        .outbox_attempt_failed(ids[2], 1, ErrorClass::Auth, "HTTP 401")
        .await
        .expect("failed");
    store
        .outbox_dead(ids[3], 1, ErrorClass::Permanent, "HTTP 404")
        .await
        .expect("dead");
    assert_eq!(
        store
            .drop_dead(&DeadSelector::Ids(vec![ids[3]]))
            .await
            .expect("drop"),
        1
    );

    let all = store
        .list_outbox(&OutboxFilter::default(), None, 100, true)
        .await
        .expect("list");
    let mut expected_ids = ids.clone();
    expected_ids.push(put.id);
    assert_eq!(all.iter().map(|r| r.id).collect::<Vec<_>>(), expected_ids);
    for (row, (_, inbox_id, m)) in all.iter().zip(&outbox) {
        assert_eq!(row.inbox_id, Some(*inbox_id));
        assert_eq!(row.channel, "http");
        assert_eq!(row.chat_id, m.chat_id);
        assert_eq!(row.text, format!("re {}", m.text));
        assert_eq!(row.reply_to.as_deref(), Some(m.channel_message_id.as_str()));
        assert!(row.created_at_ms > 0 && row.updated_at_ms >= row.created_at_ms);
    }
    let status: Vec<OutboxStatus> = all.iter().map(|r| r.status).collect();
    assert_eq!(
        status,
        [
            OutboxStatus::Delivered,
            OutboxStatus::Dead,
            OutboxStatus::Pending,
            OutboxStatus::Dropped,
            OutboxStatus::Pending,
        ]
    );
    let attempts: Vec<u32> = all.iter().map(|r| r.attempts).collect();
    assert_eq!(attempts, [2, 2, 1, 1, 0]);
    assert_eq!(all[1].last_error.as_deref(), Some("HTTP 400"));
    assert_eq!(all[1].class, Some(ErrorClass::Permanent));
    assert_eq!(all[2].class, Some(ErrorClass::Auth));
    assert_eq!(all[4].class, None);
    assert_eq!(all[4].last_error, None);
    assert_eq!(all[4].inbox_id, None);
    assert_eq!(all[4].reply_to, None);
    assert_eq!(all[4].channel, "webchat");
    let history: Vec<Vec<(u32, ErrorClass, &str)>> = all
        .iter()
        .map(|r| {
            r.errors
                .iter()
                .map(|e| (e.attempt, e.class, e.error.as_str()))
                .collect()
        })
        .collect();
    assert_eq!(
        history,
        vec![
            vec![(1, ErrorClass::Retryable, "HTTP 500")],
            vec![
                (1, ErrorClass::Retryable, "HTTP 503"),
                (2, ErrorClass::Permanent, "HTTP 400"),
            ],
            vec![(1, ErrorClass::Auth, "HTTP 401")],
            vec![(1, ErrorClass::Permanent, "HTTP 404")],
            vec![],
        ]
    );
    // Without `with_errors` the histories are left out.
    let bare = store
        .list_outbox(&OutboxFilter::default(), None, 100, false)
        .await
        .expect("list");
    assert!(bare.iter().all(|r| r.errors.is_empty()), "{bare:?}");

    let of =
        |channel: Option<&str>, chat: Option<&str>, status: Option<OutboxStatus>| OutboxFilter {
            channel: channel.map(str::to_owned),
            chat_id: chat.map(str::to_owned),
            status,
        };
    let ids_of = |rows: Vec<gatewayd::store::OutboxRecord>| -> Vec<i64> {
        rows.iter().map(|r| r.id).collect()
    };
    let list = |f: OutboxFilter| {
        let store = &store;
        async move { store.list_outbox(&f, None, 100, false).await.expect("list") }
    };
    assert_eq!(ids_of(list(of(Some("http"), None, None)).await), ids);
    assert_eq!(
        ids_of(list(of(Some("http"), Some("a"), None)).await),
        [ids[0], ids[2]]
    );
    assert_eq!(
        ids_of(list(of(None, None, Some(OutboxStatus::Pending))).await),
        [ids[2], put.id]
    );
    assert_eq!(
        ids_of(list(of(None, Some("a"), Some(OutboxStatus::Pending))).await),
        [ids[2]]
    );
    assert_eq!(
        ids_of(list(of(None, None, Some(OutboxStatus::Dead))).await),
        [ids[1]]
    );
    assert_eq!(
        ids_of(list(of(None, None, Some(OutboxStatus::Dropped))).await),
        [ids[3]]
    );
    assert!(list(of(Some("discord"), None, None)).await.is_empty());

    let mut paged = Vec::new();
    let mut after = None;
    loop {
        let page = store
            .list_outbox(&OutboxFilter::default(), after, 2, true)
            .await
            .expect("page");
        assert!(page.len() <= 2);
        let Some(last) = page.last() else { break };
        after = Some(last.id);
        paged.extend(page.iter().map(|r| (r.id, r.errors.len())));
    }
    assert_eq!(
        paged,
        expected_ids
            .iter()
            .copied()
            .zip([1, 2, 1, 1, 0])
            .collect::<Vec<_>>()
    );
}

#[tokio::test]
async fn traced_history_is_the_history_with_the_inbox_id_of_each_turn() {
    let (_dir, store) = open();
    let first = msg(ChannelKind::new("http"), "t1", "a", ChatType::Direct);
    let second = msg(ChannelKind::new("http"), "t2", "a", ChatType::Direct);
    let first_id = commit(&store, &first).await;
    answer(&store, first_id, &first, 7).await;
    let second_id = commit(&store, &second).await;
    answer(&store, second_id, &second, 7).await;
    let session = SessionKey::User(7);

    for limit in [1, 3, 4, 20] {
        let traced = store.history_traced(&session, limit).await.expect("traced");
        let plain = store.history(&session, limit).await.expect("history");
        assert_eq!(
            traced.iter().map(|t| t.entry.clone()).collect::<Vec<_>>(),
            plain,
            "limit {limit}"
        );
    }
    let traced = store.history_traced(&session, 20).await.expect("traced");
    let shape: Vec<(Role, Option<i64>)> =
        traced.iter().map(|t| (t.entry.role, t.inbox_id)).collect();
    assert_eq!(
        shape,
        [
            (Role::User, Some(first_id)),
            (Role::Assistant, Some(first_id)),
            (Role::User, Some(second_id)),
            (Role::Assistant, Some(second_id)),
        ]
    );
    assert!(
        store
            .history_traced(&SessionKey::User(8), 20)
            .await
            .expect("traced")
            .is_empty()
    );
}
