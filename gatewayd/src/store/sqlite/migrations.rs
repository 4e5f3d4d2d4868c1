//! The schema: embedded migrations applied in order at open, tracked by `PRAGMA user_version`,
//! and the one-time conversion of an older file to `auto_vacuum = INCREMENTAL`.
//!
//! A migration is only ever appended, never edited: a database at version `n` has run the first
//! `n` entries of [`MIGRATIONS`]. A database newer than this build refuses to open.

use std::path::Path;
use std::time::Instant;

use rusqlite::Connection;

use super::db;
use crate::store::StoreError;

const MIGRATIONS: &[&str] = &[
    r#"
CREATE TABLE inbox (
    id INTEGER PRIMARY KEY,
    channel TEXT NOT NULL,
    channel_message_id TEXT NOT NULL,
    chat_id TEXT NOT NULL,
    chat_type TEXT NOT NULL,
    sender_id TEXT NOT NULL,
    text TEXT NOT NULL,
    received_at INTEGER NOT NULL,
    done INTEGER NOT NULL DEFAULT 0,
    UNIQUE (channel, channel_message_id)
);
CREATE INDEX inbox_pending ON inbox (id) WHERE done = 0;
CREATE TABLE users (
    id INTEGER PRIMARY KEY,
    created_at INTEGER NOT NULL,
    merged_into INTEGER
);
CREATE TABLE addresses (
    channel TEXT NOT NULL,
    sender_id TEXT NOT NULL,
    user_id INTEGER NOT NULL REFERENCES users (id),
    linked_at INTEGER NOT NULL,
    PRIMARY KEY (channel, sender_id)
);
CREATE INDEX addresses_user ON addresses (user_id);
CREATE TABLE transcript (
    id INTEGER PRIMARY KEY,
    session_key TEXT NOT NULL,
    at INTEGER NOT NULL,
    role TEXT NOT NULL,
    text TEXT NOT NULL,
    channel TEXT,
    inbox_id INTEGER
);
CREATE INDEX transcript_session ON transcript (session_key, at, id);
CREATE TABLE sessions (
    key TEXT PRIMARY KEY,
    created_at INTEGER NOT NULL,
    last_active INTEGER NOT NULL,
    turns INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE outbox (
    id INTEGER PRIMARY KEY,
    inbox_id INTEGER,
    channel TEXT NOT NULL,
    chat_id TEXT NOT NULL,
    text TEXT NOT NULL,
    reply_to TEXT,
    status TEXT NOT NULL DEFAULT 'pending',
    attempts INTEGER NOT NULL DEFAULT 0,
    last_error TEXT,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL
);
CREATE INDEX outbox_pending ON outbox (id) WHERE status = 'pending';
CREATE INDEX outbox_dead ON outbox (channel, id) WHERE status = 'dead';
CREATE TABLE link_codes (
    code TEXT PRIMARY KEY,
    user_id INTEGER NOT NULL,
    expires_at INTEGER NOT NULL,
    used INTEGER NOT NULL DEFAULT 0
);
"#,
    r#"
ALTER TABLE outbox ADD COLUMN error_class TEXT;
ALTER TABLE outbox ADD COLUMN chunks_sent INTEGER NOT NULL DEFAULT 0;
CREATE TABLE delivery_errors (
    id INTEGER PRIMARY KEY,
    outbox_id INTEGER NOT NULL,
    at INTEGER NOT NULL,
    attempt INTEGER NOT NULL,
    class TEXT NOT NULL,
    error TEXT NOT NULL
);
CREATE INDEX delivery_errors_outbox ON delivery_errors (outbox_id, id);
"#,
    r#"
ALTER TABLE sessions ADD COLUMN last_channel TEXT;
CREATE INDEX sessions_channel ON sessions (last_channel, key);
"#,
    r#"
ALTER TABLE inbox ADD COLUMN reply_to TEXT;
ALTER TABLE inbox ADD COLUMN attachments TEXT;
"#,
    r#"
CREATE TABLE workflow_runs (
    id INTEGER PRIMARY KEY,
    workflow TEXT NOT NULL,
    inputs TEXT NOT NULL,
    origin TEXT,
    status TEXT NOT NULL,
    error TEXT,
    created_at INTEGER NOT NULL,
    finished_at INTEGER
);
CREATE INDEX workflow_runs_running ON workflow_runs (id) WHERE status = 'running';
CREATE INDEX workflow_runs_by_workflow ON workflow_runs (workflow, id);
CREATE TABLE workflow_nodes (
    run_id INTEGER NOT NULL,
    node TEXT NOT NULL,
    status TEXT NOT NULL,
    output TEXT,
    error TEXT,
    attempts INTEGER NOT NULL DEFAULT 0,
    started_at INTEGER,
    finished_at INTEGER,
    PRIMARY KEY (run_id, node)
);
"#,
    r#"
ALTER TABLE addresses ADD COLUMN last_chat_id TEXT;
ALTER TABLE addresses ADD COLUMN last_chat_inbox INTEGER;
CREATE TABLE space_probe (id INTEGER PRIMARY KEY, filler BLOB);
"#,
    r#"
CREATE TABLE outbox_receipts (
    channel TEXT NOT NULL,
    platform_id TEXT NOT NULL,
    outbox_id INTEGER,
    chunk INTEGER,
    status TEXT,
    error TEXT,
    updated_at INTEGER NOT NULL,
    PRIMARY KEY (channel, platform_id)
);
CREATE INDEX outbox_receipts_outbox ON outbox_receipts (outbox_id);
CREATE INDEX inbox_chat ON inbox (channel, chat_id, received_at);
"#,
    r#"
CREATE TABLE channel_cursors (
    channel TEXT NOT NULL,
    name TEXT NOT NULL,
    value INTEGER NOT NULL,
    updated_at INTEGER NOT NULL,
    PRIMARY KEY (channel, name)
);
ALTER TABLE inbox ADD COLUMN sender_name TEXT;
"#,
    r#"
CREATE TABLE usage (
    id INTEGER PRIMARY KEY,
    user_id INTEGER NOT NULL,
    session_key TEXT NOT NULL,
    inbox_id INTEGER,
    at INTEGER NOT NULL,
    prompt_tokens INTEGER NOT NULL,
    completion_tokens INTEGER NOT NULL,
    estimated INTEGER NOT NULL
);
CREATE INDEX usage_user_at ON usage (user_id, at);
CREATE INDEX usage_at ON usage (at);
CREATE TABLE budget_overrides (
    user_id INTEGER PRIMARY KEY,
    tokens_per_day INTEGER,
    turns_per_minute INTEGER,
    updated_at INTEGER NOT NULL
);
"#,
    r#"
ALTER TABLE inbox ADD COLUMN blocked INTEGER NOT NULL DEFAULT 0;
CREATE TABLE pairing_requests (
    code TEXT PRIMARY KEY,
    channel TEXT NOT NULL,
    sender_id TEXT NOT NULL,
    user_id INTEGER NOT NULL,
    display_name TEXT,
    first_seen INTEGER NOT NULL,
    expires_at INTEGER NOT NULL,
    last_reply_at INTEGER NOT NULL,
    UNIQUE (channel, sender_id)
);
CREATE INDEX pairing_requests_expiry ON pairing_requests (expires_at);
CREATE TABLE pairing_kept (
    inbox_id INTEGER PRIMARY KEY,
    code TEXT NOT NULL
);
CREATE INDEX pairing_kept_code ON pairing_kept (code, inbox_id);
CREATE TABLE access_approvals (
    user_id INTEGER PRIMARY KEY,
    approved_at INTEGER NOT NULL
);
CREATE TABLE access_blocks (
    user_id INTEGER PRIMARY KEY,
    blocked_at INTEGER NOT NULL
);
"#,
    // Whether a group message addressed the bot, kept so a replayed message passes the mention
    // rule as it did when it arrived. Rows from before the column count as addressed: a message
    // that was already accepted is answered rather than dropped.
    r#"
ALTER TABLE inbox ADD COLUMN mentioned INTEGER NOT NULL DEFAULT 1;
"#,
];

/// Puts the database in `auto_vacuum = INCREMENTAL` mode, so pruned pages can be returned to
/// the file system. A new database takes the mode at once; an existing one made without it is
/// rewritten once with `VACUUM` (which needs free disk space about the size of the file). If
/// that fails the store still opens: pruned pages are reused, but the file does not shrink.
pub(super) fn incremental_vacuum_mode(conn: &Connection, path: &Path) -> Result<(), StoreError> {
    const INCREMENTAL: i64 = 2;
    let mode: i64 = conn
        .query_row("PRAGMA auto_vacuum", [], |r| r.get(0))
        .map_err(db)?;
    if mode == INCREMENTAL {
        return Ok(());
    }
    let objects: i64 = conn
        .query_row("SELECT COUNT(*) FROM sqlite_master", [], |r| r.get(0))
        .map_err(db)?;
    conn.execute_batch("PRAGMA auto_vacuum = INCREMENTAL")
        .map_err(db)?;
    // Even a new, empty file needs the VACUUM: switching to WAL has already written its header.
    let started = Instant::now();
    if objects > 0 {
        tracing::info!(message = "Converting the database to incremental vacuum with a one-time VACUUM.", path = %path.display());
    }
    match conn.execute_batch("VACUUM") {
        Ok(()) if objects > 0 => tracing::info!(
            message = "Database converted to incremental vacuum.",
            elapsed_ms = started.elapsed().as_millis() as u64
        ),
        Ok(()) => {}
        Err(e) => {
            let error = db(e);
            tracing::warn!(message = "Cannot convert the database to incremental vacuum; pruned space is reused but the file does not shrink. It is tried again at the next start.", %error);
        }
    }
    Ok(())
}

pub(super) fn migrate(conn: &mut Connection) -> Result<(), StoreError> {
    let version: usize = conn
        .query_row("PRAGMA user_version", [], |r| r.get::<_, i64>(0))
        .map_err(db)?
        .try_into()
        .map_err(|_| StoreError::Database("negative user_version".to_owned()))?;
    if version > MIGRATIONS.len() {
        return Err(StoreError::Database(format!(
            "the database is at schema version {version}, newer than this gatewayd knows ({}); upgrade gatewayd",
            MIGRATIONS.len()
        )));
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(version) {
        let tx = conn.transaction().map_err(db)?;
        tx.execute_batch(sql).map_err(db)?;
        tx.pragma_update(
            None,
            "user_version",
            i64::try_from(i + 1).unwrap_or(i64::MAX),
        )
        .map_err(db)?;
        tx.commit().map_err(db)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::sqlite::SqliteStore;
    use crate::store::sqlite::test_support::*;

    #[test]
    fn an_existing_database_is_converted_to_incremental_vacuum_once() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("old.db");
        {
            let conn = Connection::open(&path).expect("open");
            conn.execute_batch("CREATE TABLE legacy (a); INSERT INTO legacy VALUES (1);")
                .expect("legacy table");
        }
        assert_eq!(pragma(&path, "auto_vacuum"), 0);
        let store = SqliteStore::open(&path).expect("open");
        drop(store);
        assert_eq!(pragma(&path, "auto_vacuum"), 2);
        let conn = Connection::open(&path).expect("open");
        let kept: i64 = conn
            .query_row("SELECT a FROM legacy", [], |r| r.get(0))
            .expect("data kept by the VACUUM");
        assert_eq!(kept, 1);
    }
}
