//! Fixtures shared by the SQLite store's unit tests.

use std::path::Path;
use std::time::Duration;

use rusqlite::Connection;

use super::SqliteStore;
use crate::message::{ChannelKind, ChatType, InboundMessage, OutboundMessage, SessionKey, now_ms};
use crate::store::{InboxOutcome, NewReply, Retention, Role, Store, TranscriptEntry, TurnRecord};

pub(super) fn msg(id: &str, sender: &str) -> InboundMessage {
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
        received_at_ms: now_ms(),
        mentioned: false,
    }
}

pub(super) fn open() -> (tempfile::TempDir, SqliteStore) {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = SqliteStore::open(&dir.path().join("g.db")).expect("open");
    (dir, store)
}

/// Commits a message that must be new to the inbox; its row id.
pub(super) async fn new_inbox_row(store: &SqliteStore, id: &str, sender: &str) -> i64 {
    match store.inbox_commit(&msg(id, sender)).await.expect("commit") {
        InboxOutcome::New(row) => row,
        InboxOutcome::Duplicate(row) => panic!("{id} was already in the inbox as row {row}"),
    }
}

pub(super) const DAY_MS: i64 = 86_400_000;

pub(super) fn retention(batch: usize, transcript: Option<Duration>, window: usize) -> Retention {
    Retention {
        dedupe_window: Duration::from_secs(7 * 86_400),
        transcript,
        history_window: window,
        interval: Duration::from_secs(300),
        batch,
    }
}

pub(super) fn entry(text: &str, at_ms: i64) -> TranscriptEntry {
    TranscriptEntry {
        role: Role::User,
        text: text.to_owned(),
        at_ms,
        channel: Some(ChannelKind::new("http")),
    }
}

/// Commits a new inbox row and a turn for it with one reply; the reply's outbox row.
pub(super) async fn answered(
    store: &SqliteStore,
    id: &str,
    session: i64,
    text: &str,
) -> OutboundMessage {
    let inbox_id = new_inbox_row(store, id, &format!("s{session}")).await;
    let mut rows = store
        .commit_turn(TurnRecord {
            inbox_id,
            session: SessionKey::User(session),
            entries: vec![entry(text, now_ms())],
            replies: vec![NewReply {
                channel: ChannelKind::new("http"),
                chat_id: format!("chat-s{session}"),
                text: text.to_owned(),
                reply_to: Some(id.to_owned()),
            }],
            fence: None,
        })
        .await
        .expect("turn");
    rows.pop().expect("one reply")
}

pub(super) fn pragma(path: &Path, name: &str) -> i64 {
    let conn = Connection::open(path).expect("open");
    conn.query_row(&format!("PRAGMA {name}"), [], |r| r.get(0))
        .expect("pragma")
}
