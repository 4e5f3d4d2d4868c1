//! The SQLite store inside a running gateway, in process.
//!
//! Under a full disk: the database is capped at its current size (the store's test hook sets
//! SQLite's `max_page_count` on the writer), so commits fail with `SQLITE_FULL` as on a full
//! file system. New messages are refused (HTTP 503, WebChat `unavailable`), every message
//! acknowledged before is answered once space returns, and the gateway takes new messages
//! again, all without a restart.
//!
//! Where the file is: `store.path` names it, relative to `gateway.data_dir`.

use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

use gateway_tests::webchat::WebChatClient;
use gateway_tests::{FakeCallback, TIMEOUT, poll_until};
use gatewayd::config::Config;
use gatewayd::message::{ChannelKind, ChatType, InboundMessage};
use gatewayd::runtime::Gateway;
use gatewayd::store::sqlite::SqliteStore;
use gatewayd::store::{InboxOutcome, Store};

fn config(data: &Path, callback: &FakeCallback) -> Config {
    Config::parse(&format!(
        "[gateway]\ndata_dir = \"{}\"\n[http]\nlisten = \"127.0.0.1:0\"\n[admin]\nlisten = \"127.0.0.1:0\"\n\
         [channels.webchat]\nenabled = true\n\
         [channels.http]\nenabled = true\ncallback_url = \"{}\"\n\
         [delivery]\nretry_backoff = \"10ms\"\nmax_backoff = \"50ms\"\n",
        data.display(),
        callback.url()
    ))
    .expect("valid config")
}

/// Posts one HTTP-channel message; the status code.
async fn post(client: &reqwest::Client, gw: &Gateway, id: &str, text: &str) -> u16 {
    let body =
        serde_json::json!({"message_id": id, "chat_id": "c", "sender_id": "s", "text": text});
    client
        .post(format!("http://{}/channels/http/messages", gw.http_addr))
        .json(&body)
        .send()
        .await
        .expect("post")
        .status()
        .as_u16()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_refuses_new_messages_loses_none_and_recovers_without_a_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let callback = FakeCallback::start().await;
    let gw = Gateway::start(config(dir.path(), &callback), "test")
        .await
        .expect("start");
    let client = reqwest::Client::new();
    let mut acknowledged: Vec<String> = Vec::new();
    for i in 0..3 {
        let id = format!("early-{i}");
        assert_eq!(post(&client, &gw, &id, "hello").await, 202);
        acknowledged.push(id);
    }
    callback
        .wait_delivered(|d| d.len() >= 3, TIMEOUT)
        .await
        .expect("early messages answered");

    // The disk is nearly full: the database may grow by a few pages only. Each text needs
    // new (overflow) pages, so a few messages are committed and acknowledged, their turns
    // (which store the text twice more) do not fit, and then commits fail.
    let pages = gw.store.set_page_limit(Some(1)).await.expect("limit");
    gw.store
        .set_page_limit(Some(pages + 12))
        .await
        .expect("limit");
    let big = "f".repeat(9000);
    let mut refused = false;
    for i in 0..5000 {
        let id = format!("fill-{i}");
        match post(&client, &gw, &id, &big).await {
            202 => acknowledged.push(id),
            503 => {
                refused = true;
                break;
            }
            other => panic!("{id}: unexpected status {other}"),
        }
    }
    assert!(refused, "no message was refused with 503");
    assert!(
        acknowledged.len() > 3,
        "no message was acknowledged while space ran out"
    );
    assert!(gw.store.disk_full(), "the store reports the full disk");
    // WebChat refuses too: frames are acknowledged while a page is free, then `unavailable`.
    let ws_url = format!("ws://{}/ws?chat_id=w1", gw.http_addr);
    let mut chat = WebChatClient::connect(&ws_url).await.expect("connect");
    let mut chat_acknowledged: BTreeSet<String> = BTreeSet::new();
    // Replies may arrive among the frames read while waiting for an ack: count them all.
    let mut chat_answered: BTreeSet<String> = BTreeSet::new();
    let note_replies = |frames: &[serde_json::Value], answered: &mut BTreeSet<String>| {
        for f in frames {
            if f["type"] == "message"
                && let Some(to) = f["reply_to"].as_str()
            {
                answered.insert(to.to_owned());
            }
        }
    };
    let mut chat_refused = false;
    for i in 0..200 {
        let id = format!("w-{i}");
        chat.send_message(&id, &big).await.expect("send");
        let frames = chat
            .recv_until(
                |f| (f["type"] == "error" || f["type"] == "ack") && f["id"] == id.as_str(),
                TIMEOUT,
            )
            .await
            .expect("an answer to the frame");
        note_replies(&frames, &mut chat_answered);
        let last = frames.last().expect("a frame");
        if last["type"] == "ack" {
            chat_acknowledged.insert(id);
            continue;
        }
        assert_eq!(last["code"], "unavailable", "{frames:?}");
        chat_refused = true;
        break;
    }
    assert!(chat_refused, "WebChat never answered `unavailable`");
    // Reads still work: every acknowledged message is answered or still pending.
    let (pending, _, _) = gw.store.counts().await.expect("reads work");
    let answered: BTreeSet<String> = callback
        .delivered()
        .iter()
        .filter_map(|d| d.reply_to.clone())
        .collect();
    let unanswered = acknowledged
        .iter()
        .filter(|id| !answered.contains(*id))
        .count();
    assert!(
        pending as usize >= unanswered,
        "{pending} pending in the inbox, {unanswered} acknowledged and unanswered"
    );

    // Hold the disk full until the gateway has given up on at least one turn (a session
    // worker tries a commit five times): that message is left to the recovery.
    poll_until(TIMEOUT, "a turn commit failed five times", || {
        gw.store.failed_turn_commits() >= 5
    })
    .await
    .expect("the gateway gave up on a turn");
    let mut recoveries = gw.store.recoveries();

    // Space returns. Without a restart: every acknowledged message is answered, and new
    // messages are accepted and answered.
    // The limit is lifted by a job in the writer's group commit. When another write of the same
    // batch fails for lack of space, SQLite rolls the whole batch back and the job reports
    // `Full`, although the pragma (a connection setting) may already hold: ask until it says so.
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    loop {
        match gw.store.set_page_limit(None).await {
            Ok(_) => break,
            Err(e) => assert!(
                tokio::time::Instant::now() < deadline,
                "lift the limit: {e:?}"
            ),
        }
    }
    assert_eq!(post(&client, &gw, "after", "back").await, 202);
    acknowledged.push("after".to_owned());
    chat.send_message("w-after", "back on webchat")
        .await
        .expect("send");
    let frames = chat
        .recv_until(|f| f["type"] == "ack" || f["type"] == "error", TIMEOUT)
        .await
        .expect("ack");
    note_replies(&frames, &mut chat_answered);
    assert_eq!(
        frames.last().map(|f| f["type"].clone()),
        Some("ack".into()),
        "{frames:?}"
    );
    let expected: BTreeSet<String> = acknowledged.iter().cloned().collect();
    let delivered = callback
        .wait_delivered(
            |d| {
                let got: BTreeSet<String> = d.iter().filter_map(|d| d.reply_to.clone()).collect();
                expected.is_subset(&got)
            },
            Duration::from_secs(60),
        )
        .await
        .expect("every acknowledged message answered");
    chat_acknowledged.insert("w-after".to_owned());
    while !chat_acknowledged.is_subset(&chat_answered) {
        let frame = chat
            .recv(Duration::from_secs(60))
            .await
            .unwrap_or_else(|e| {
                panic!("WebChat answers missing: {chat_acknowledged:?} vs {chat_answered:?}: {e}")
            });
        if frame["type"] == "message"
            && let Some(to) = frame["reply_to"].as_str()
        {
            chat_answered.insert(to.to_owned());
        }
    }
    let (pending, _, _) = gw.store.counts().await.expect("counts");
    assert_eq!(pending, 0, "nothing left pending");
    if gw.store.disk_full() {
        tokio::time::timeout(TIMEOUT, recoveries.changed())
            .await
            .expect("the store notices the space")
            .expect("store open");
    }
    assert!(!gw.store.disk_full());
    assert!(delivered.len() >= expected.len());
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_database_is_the_file_store_path_names_relative_to_the_data_dir() {
    let dir = tempfile::tempdir().expect("tempdir");
    let callback = FakeCallback::start().await;
    let config = Config::parse(&format!(
        "[gateway]\ndata_dir = \"{}\"\n[http]\nlisten = \"127.0.0.1:0\"\n[admin]\nlisten = \"127.0.0.1:0\"\n\
         [channels.http]\nenabled = true\ncallback_url = \"{}\"\n\
         [store]\nbackend = \"sqlite\"\npath = \"db/custom.sqlite\"\n",
        dir.path().display(),
        callback.url()
    ))
    .expect("valid config");
    let expected = dir.path().join("db").join("custom.sqlite");
    assert_eq!(config.database_path(), expected);
    let gw = Gateway::start(config, "test").await.expect("start");
    let client = reqwest::Client::new();
    assert_eq!(post(&client, &gw, "where-1", "hello").await, 202);
    callback
        .wait_delivered(|d| !d.is_empty(), TIMEOUT)
        .await
        .expect("answered");
    gw.shutdown().await;
    assert!(expected.is_file(), "{} was not created", expected.display());
    assert!(
        !dir.path().join("gateway.db").exists(),
        "the default file was created too"
    );
    // The message is in that file: committing it again there is a repeat.
    let store = SqliteStore::open(&expected).expect("reopen");
    let again = InboundMessage {
        channel: ChannelKind::new("http"),
        channel_message_id: "where-1".to_owned(),
        chat_id: "c".to_owned(),
        chat_type: ChatType::Direct,
        sender_id: "s".to_owned(),
        text: "hello".to_owned(),
        reply_to: None,
        attachments: Vec::new(),
        sender_name: None,
        received_at_ms: 0,
        mentioned: false,
    };
    let outcome = store.inbox_commit(&again).await.expect("commit");
    assert!(matches!(outcome, InboxOutcome::Duplicate(_)), "{outcome:?}");
    store.close().await;
}
