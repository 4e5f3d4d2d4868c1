//! Workflow runs and the state of their nodes.
//!
//! A run is created `running`, its nodes are recorded (insert or replace) as they change, and it
//! is finished once; runs still `running` are resumed after a restart.

use rusqlite::{Connection, OptionalExtension, params};

use super::{SqliteStore, db};
use crate::message::now_ms;
use crate::store::{NodeRecord, NodeStatus, RunOrigin, RunRecord, RunStatus, StoreError};

pub(super) async fn create(
    store: &SqliteStore,
    workflow: &str,
    inputs: &serde_json::Value,
    origin: Option<&RunOrigin>,
) -> Result<i64, StoreError> {
    let workflow = workflow.to_owned();
    let inputs = json_text(inputs)?;
    let origin = origin.map(json_text).transpose()?;
    store
        .write(move |conn| {
            conn.execute(
                "INSERT INTO workflow_runs (workflow, inputs, origin, status, created_at)
             VALUES (?1, ?2, ?3, 'running', ?4)",
                params![workflow, inputs, origin, now_ms()],
            )
            .map_err(db)?;
            Ok(conn.last_insert_rowid())
        })
        .await
}

pub(super) async fn node(
    store: &SqliteStore,
    run: i64,
    node: &NodeRecord,
) -> Result<(), StoreError> {
    let node = node.clone();
    let output = node.output.as_ref().map(json_text).transpose()?;
    store
        .write(move |conn| {
            conn.prepare_cached(
                "INSERT OR REPLACE INTO workflow_nodes
             (run_id, node, status, output, error, attempts, started_at, finished_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            )
            .and_then(|mut s| {
                s.execute(params![
                    run,
                    node.node,
                    node.status.as_str(),
                    output,
                    node.error,
                    node.attempts,
                    node.started_at_ms,
                    node.finished_at_ms
                ])
            })
            .map(|_| ())
            .map_err(db)
        })
        .await
}

pub(super) async fn finish(
    store: &SqliteStore,
    run: i64,
    status: RunStatus,
    error: Option<&str>,
) -> Result<(), StoreError> {
    let error = error.map(str::to_owned);
    store
        .write(move |conn| {
            conn.execute(
                "UPDATE workflow_runs SET status = ?2, error = ?3, finished_at = ?4 WHERE id = ?1",
                params![run, status.as_str(), error, now_ms()],
            )
            .map(|_| ())
            .map_err(db)
        })
        .await
}

pub(super) async fn get(store: &SqliteStore, run: i64) -> Result<RunRecord, StoreError> {
    store
        .read(move |conn| {
            let row = conn
                .query_row(
                    &format!("SELECT {RUN_COLUMNS} FROM workflow_runs WHERE id = ?1"),
                    [run],
                    run_row,
                )
                .optional()
                .map_err(db)?
                .ok_or_else(|| StoreError::NotFound(format!("no run {run}")))?;
            to_run(conn, row)
        })
        .await
}

pub(super) async fn list(
    store: &SqliteStore,
    workflow: Option<&str>,
    before: Option<i64>,
    limit: usize,
) -> Result<Vec<RunRecord>, StoreError> {
    let workflow = workflow.map(str::to_owned);
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    store
        .read(move |conn| {
            let mut stmt = conn
                .prepare_cached(&format!(
                    "SELECT {RUN_COLUMNS} FROM workflow_runs
                 WHERE (?1 IS NULL OR workflow = ?1) AND id < ?2 ORDER BY id DESC LIMIT ?3"
                ))
                .map_err(db)?;
            let rows: Vec<RunRow> = stmt
                .query_map(
                    params![workflow, before.unwrap_or(i64::MAX), limit],
                    run_row,
                )
                .map_err(db)?
                .collect::<Result<_, _>>()
                .map_err(db)?;
            rows.into_iter().map(|r| to_run(conn, r)).collect()
        })
        .await
}

pub(super) async fn unfinished(store: &SqliteStore) -> Result<Vec<RunRecord>, StoreError> {
    store
        .read(|conn| {
            let mut stmt = conn
                .prepare(&format!(
                    "SELECT {RUN_COLUMNS} FROM workflow_runs WHERE status = 'running' ORDER BY id"
                ))
                .map_err(db)?;
            let rows: Vec<RunRow> = stmt
                .query_map([], run_row)
                .map_err(db)?
                .collect::<Result<_, _>>()
                .map_err(db)?;
            rows.into_iter().map(|r| to_run(conn, r)).collect()
        })
        .await
}

fn json_text<T: serde::Serialize>(value: &T) -> Result<String, StoreError> {
    serde_json::to_string(value)
        .map_err(|e| StoreError::Database(format!("cannot encode JSON: {e}")))
}

fn json_parse<T: serde::de::DeserializeOwned>(text: &str, what: &str) -> Result<T, StoreError> {
    serde_json::from_str(text).map_err(|e| StoreError::Database(format!("corrupt {what}: {e}")))
}

type RunRow = (
    i64,
    String,
    String,
    Option<String>,
    String,
    Option<String>,
    i64,
    Option<i64>,
);

const RUN_COLUMNS: &str = "id, workflow, inputs, origin, status, error, created_at, finished_at";

fn run_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<RunRow> {
    Ok((
        r.get(0)?,
        r.get(1)?,
        r.get(2)?,
        r.get(3)?,
        r.get(4)?,
        r.get(5)?,
        r.get(6)?,
        r.get(7)?,
    ))
}

/// A run row with its nodes read from the same connection.
fn to_run(conn: &Connection, row: RunRow) -> Result<RunRecord, StoreError> {
    let (id, workflow, inputs, origin, status, error, created, finished) = row;
    let mut stmt = conn
        .prepare_cached(
            "SELECT node, status, output, error, attempts, started_at, finished_at
             FROM workflow_nodes WHERE run_id = ?1",
        )
        .map_err(db)?;
    let rows = stmt
        .query_map([id], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, Option<String>>(2)?,
                r.get::<_, Option<String>>(3)?,
                r.get::<_, i64>(4)?,
                r.get::<_, Option<i64>>(5)?,
                r.get::<_, Option<i64>>(6)?,
            ))
        })
        .map_err(db)?;
    let mut nodes = Vec::new();
    for row in rows {
        let (node, status, output, error, attempts, started, finished) = row.map_err(db)?;
        nodes.push(NodeRecord {
            status: NodeStatus::parse(&status)
                .ok_or_else(|| StoreError::Database(format!("corrupt node status `{status}`")))?,
            output: output
                .as_deref()
                .map(|o| json_parse(o, "node output"))
                .transpose()?,
            node,
            error,
            attempts: u32::try_from(attempts).unwrap_or(0),
            started_at_ms: started,
            finished_at_ms: finished,
        });
    }
    Ok(RunRecord {
        id,
        workflow,
        inputs: json_parse(&inputs, "run inputs")?,
        origin: origin
            .as_deref()
            .map(|o| json_parse(o, "run origin"))
            .transpose()?,
        status: RunStatus::parse(&status)
            .ok_or_else(|| StoreError::Database(format!("corrupt run status `{status}`")))?,
        error,
        created_at_ms: created,
        finished_at_ms: finished,
        nodes,
    })
}
