//! The writer thread and its group commit.
//!
//! Every write is a [`Job`] sent to one thread. The thread takes every job that is waiting (up
//! to [`MAX_BATCH`]), opens one `BEGIN IMMEDIATE` transaction, runs each job (each that writes
//! more than one statement runs inside [`atomic`], its own savepoint), commits them all with one
//! `COMMIT`, and only then answers each caller with the commit's outcome. A job never runs
//! outside a transaction. If SQLite rolls the whole transaction back (it does on `SQLITE_FULL`),
//! every job of the batch is answered with that error, so "committed" is never said falsely.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::sync::mpsc;

use rusqlite::Connection;

use super::{Shared, db};
use crate::store::StoreError;

/// Most operations committed together.
pub(super) const MAX_BATCH: usize = 1024;

type Reply = Box<dyn FnOnce(Result<(), StoreError>) + Send>;
/// A write: given the connection it runs and returns how to answer its caller once the batch
/// is committed; given `None` (the batch failed before it ran) it runs nothing.
pub(super) type Job = Box<dyn FnOnce(Option<&Connection>) -> Reply + Send>;

/// A job running `f`, whose caller is answered through `answer` once the batch is committed
/// (or with the batch's error). A `Full` result marks the store full.
pub(super) fn job<T, F, A>(shared: &Arc<Shared>, f: F, answer: A) -> Job
where
    T: Send + 'static,
    F: FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    A: FnOnce(Result<T, StoreError>) + Send + 'static,
{
    let shared = shared.clone();
    Box::new(move |conn: Option<&Connection>| {
        let result = conn.map(f);
        if let Some(Err(e)) = &result {
            shared.mark_full(e);
        }
        Box::new(move |commit: Result<(), StoreError>| {
            answer(match (commit, result) {
                (Err(e), _) => Err(e),
                (Ok(()), Some(r)) => r,
                (Ok(()), None) => Err(StoreError::Database("the write did not run".to_owned())),
            });
        })
    })
}

pub(super) fn writer_loop(conn: Connection, rx: mpsc::Receiver<Job>, shared: &Shared) {
    let mut batch: Vec<Job> = Vec::with_capacity(MAX_BATCH);
    let mut replies: Vec<Reply> = Vec::with_capacity(MAX_BATCH);
    while let Ok(first) = rx.recv() {
        batch.push(first);
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        if let Err(e) = conn.execute_batch("BEGIN IMMEDIATE") {
            let error = db(e);
            shared.mark_full(&error);
            tracing::error!(message = "Store writer cannot begin a transaction.", %error);
            // No job may run outside a transaction: each is answered with the error instead.
            for job in batch.drain(..) {
                job(None)(Err(error.clone()));
            }
            continue;
        }
        // Each job that writes more than one statement wraps them in `atomic`, so a failed job
        // leaves nothing behind and the rest of the batch still commits. But SQLite may roll
        // back the whole transaction on some errors (`SQLITE_FULL` among them): then the jobs
        // before it are lost too, and none after it may run, so the whole batch fails.
        let mut lost: Option<StoreError> = None;
        for job in batch.drain(..) {
            if lost.is_some() {
                replies.push(job(None));
                continue;
            }
            replies.push(job(Some(&conn)));
            if conn.is_autocommit() {
                let text = "the database rolled back the transaction".to_owned();
                lost = Some(if shared.full.load(Ordering::Acquire) {
                    StoreError::Full(text)
                } else {
                    StoreError::Database(text)
                });
            }
        }
        let commit = match lost {
            Some(e) => Err(e),
            None => conn.execute_batch("COMMIT").map_err(|e| match db(e) {
                StoreError::Full(m) => StoreError::Full(format!("commit failed: {m}")),
                other => StoreError::Database(format!("commit failed: {other}")),
            }),
        };
        if let Err(error) = &commit {
            shared.mark_full(error);
            if !conn.is_autocommit() {
                let _ = conn.execute_batch("ROLLBACK");
            }
        }
        for reply in replies.drain(..) {
            reply(commit.clone());
        }
    }
}

/// Runs `f` so that its statements are undone if it fails, leaving the rest of the batch intact.
pub(super) fn atomic<T>(
    conn: &Connection,
    f: impl FnOnce(&Connection) -> Result<T, StoreError>,
) -> Result<T, StoreError> {
    // Cached statements: these run for nearly every write, and parsing them each time shows.
    let run = |sql: &str| {
        conn.prepare_cached(sql)
            .and_then(|mut s| s.execute([]))
            .map_err(db)
    };
    run("SAVEPOINT atomic")?;
    match f(conn) {
        Ok(v) => {
            run("RELEASE atomic")?;
            Ok(v)
        }
        Err(e) => {
            let _ = run("ROLLBACK TO atomic").and_then(|_| run("RELEASE atomic"));
            Err(e)
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use crate::message::{SessionKey, now_ms};
    use crate::store::sqlite::test_support::*;
    use crate::store::{InboxOutcome, Store, StoreError, TurnRecord};

    #[tokio::test]
    async fn a_full_disk_fails_writes_keeps_committed_ones_and_recovers_by_itself() {
        let (_dir, store) = open();
        let first = new_inbox_row(&store, "before", "a").await;
        let mut recoveries = store.recoveries();
        let pages = store.set_page_limit(Some(1)).await.expect("limit");
        assert!(pages > 1);
        // Fill what is left until a commit fails.
        let mut acknowledged = vec![first];
        let mut refused = None;
        for i in 0..10_000 {
            let mut m = msg(&format!("fill-{i}"), "a");
            m.text = "y".repeat(3000);
            match store.inbox_commit(&m).await {
                Ok(InboxOutcome::New(id)) => acknowledged.push(id),
                Ok(other) => panic!("unexpected {other:?}"),
                Err(e) => {
                    refused = Some(e);
                    break;
                }
            }
        }
        let refused = refused.expect("the limit was reached");
        assert!(matches!(refused, StoreError::Full(_)), "{refused}");
        assert!(store.disk_full());
        // A turn that needs space fails, changes nothing, and is remembered.
        let turn = TurnRecord {
            inbox_id: first,
            session: SessionKey::User(1),
            entries: vec![entry(&"z".repeat(100_000), now_ms())],
            replies: Vec::new(),
            fence: None,
        };
        let failed = store.commit_turn(turn.clone()).await.expect_err("no space");
        assert!(matches!(failed, StoreError::Full(_)), "{failed}");
        // Reads still work, and every acknowledged message is still pending.
        let pending: Vec<i64> = store
            .inbox_pending()
            .await
            .expect("reads work")
            .iter()
            .map(|p| p.inbox_id)
            .collect();
        assert_eq!(pending, acknowledged);
        // Space returns: the pruner's probe notices within a few seconds.
        store.set_page_limit(None).await.expect("lift");
        tokio::time::timeout(Duration::from_secs(10), recoveries.changed())
            .await
            .expect("recovered in time")
            .expect("store open");
        assert!(!store.disk_full());
        let stranded: Vec<i64> = store
            .take_stranded()
            .await
            .expect("stranded")
            .iter()
            .map(|p| p.inbox_id)
            .collect();
        assert_eq!(stranded, vec![first]);
        store.commit_turn(turn).await.expect("turn commits now");
        assert!(matches!(
            store.inbox_commit(&msg("after", "a")).await,
            Ok(InboxOutcome::New(_))
        ));
        store.close().await;
    }
}
