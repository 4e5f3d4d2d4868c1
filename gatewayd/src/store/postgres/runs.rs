//! Workflow runs and the state of their nodes, in PostgreSQL.
//!
//! A run is created `running`, its nodes are recorded (insert or replace) as they change, and it
//! is finished once; runs still `running` are resumed after a restart. Inputs, origins and node
//! outputs are stored as JSON text, as the embedded store keeps them.

use deadpool_postgres::GenericClient;
use tokio_postgres::Row;

use super::{PostgresStore, col, db, to_i64};
use crate::message::now_ms;
use crate::store::{NodeRecord, NodeStatus, RunOrigin, RunRecord, RunStatus, StoreError};

pub(super) async fn create(
    store: &PostgresStore,
    workflow: &str,
    inputs: &serde_json::Value,
    origin: Option<&RunOrigin>,
) -> Result<i64, StoreError> {
    let inputs = json_text(inputs)?;
    let origin = origin.map(json_text).transpose()?;
    let client = store.client().await?;
    let row = client
        .query_one(
            "INSERT INTO workflow_runs (workflow, inputs, origin, status, created_at)
             VALUES ($1, $2, $3, 'running', $4) RETURNING id",
            &[&workflow, &inputs, &origin, &now_ms()],
        )
        .await
        .map_err(db)?;
    col(&row, 0)
}

pub(super) async fn node(
    store: &PostgresStore,
    run: i64,
    node: &NodeRecord,
) -> Result<(), StoreError> {
    let output = node.output.as_ref().map(json_text).transpose()?;
    let client = store.client().await?;
    let stmt = client
        .prepare_cached(
            "INSERT INTO workflow_nodes
             (run_id, node, status, output, error, attempts, started_at, finished_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
             ON CONFLICT (run_id, node) DO UPDATE SET status = excluded.status,
                output = excluded.output, error = excluded.error, attempts = excluded.attempts,
                started_at = excluded.started_at, finished_at = excluded.finished_at",
        )
        .await
        .map_err(db)?;
    client
        .execute(
            &stmt,
            &[
                &run,
                &node.node,
                &node.status.as_str(),
                &output,
                &node.error,
                &i64::from(node.attempts),
                &node.started_at_ms,
                &node.finished_at_ms,
            ],
        )
        .await
        .map_err(db)?;
    Ok(())
}

pub(super) async fn finish(
    store: &PostgresStore,
    run: i64,
    status: RunStatus,
    error: Option<&str>,
) -> Result<(), StoreError> {
    let client = store.client().await?;
    client
        .execute(
            "UPDATE workflow_runs SET status = $2, error = $3, finished_at = $4 WHERE id = $1",
            &[&run, &status.as_str(), &error, &now_ms()],
        )
        .await
        .map_err(db)?;
    Ok(())
}

pub(super) const RUN_COLUMNS: &str =
    "id, workflow, inputs, origin, status, error, created_at, finished_at";

pub(super) async fn get(store: &PostgresStore, run: i64) -> Result<RunRecord, StoreError> {
    let client = store.client().await?;
    let row = client
        .query_opt(
            &format!("SELECT {RUN_COLUMNS} FROM workflow_runs WHERE id = $1"),
            &[&run],
        )
        .await
        .map_err(db)?
        .ok_or_else(|| StoreError::NotFound(format!("no run {run}")))?;
    to_run(&client, &row).await
}

pub(super) async fn list(
    store: &PostgresStore,
    workflow: Option<&str>,
    before: Option<i64>,
    limit: usize,
) -> Result<Vec<RunRecord>, StoreError> {
    let client = store.client().await?;
    let rows = client
        .query(
            &format!(
                "SELECT {RUN_COLUMNS} FROM workflow_runs
                 WHERE ($1::text IS NULL OR workflow = $1) AND id < $2 ORDER BY id DESC LIMIT $3"
            ),
            &[&workflow, &before.unwrap_or(i64::MAX), &to_i64(limit)],
        )
        .await
        .map_err(db)?;
    let mut out = Vec::with_capacity(rows.len());
    for row in &rows {
        out.push(to_run(&client, row).await?);
    }
    Ok(out)
}

pub(super) async fn unfinished(store: &PostgresStore) -> Result<Vec<RunRecord>, StoreError> {
    let client = store.client().await?;
    let rows = client
        .query(
            &format!(
                "SELECT {RUN_COLUMNS} FROM workflow_runs WHERE status = 'running' ORDER BY id"
            ),
            &[],
        )
        .await
        .map_err(db)?;
    let mut out = Vec::with_capacity(rows.len());
    for row in &rows {
        out.push(to_run(&client, row).await?);
    }
    Ok(out)
}

fn json_text<T: serde::Serialize>(value: &T) -> Result<String, StoreError> {
    serde_json::to_string(value)
        .map_err(|e| StoreError::Database(format!("cannot encode JSON: {e}")))
}

fn json_parse<T: serde::de::DeserializeOwned>(text: &str, what: &str) -> Result<T, StoreError> {
    serde_json::from_str(text).map_err(|e| StoreError::Database(format!("corrupt {what}: {e}")))
}

/// A run row with its nodes read on the same connection.
pub(super) async fn to_run(conn: &impl GenericClient, row: &Row) -> Result<RunRecord, StoreError> {
    let id: i64 = col(row, 0)?;
    let stmt = conn
        .prepare_cached(
            "SELECT node, status, output, error, attempts, started_at, finished_at
             FROM workflow_nodes WHERE run_id = $1",
        )
        .await
        .map_err(db)?;
    let rows = conn.query(&stmt, &[&id]).await.map_err(db)?;
    let mut nodes = Vec::with_capacity(rows.len());
    for r in &rows {
        let status: String = col(r, 1)?;
        let output: Option<String> = col(r, 2)?;
        nodes.push(NodeRecord {
            status: NodeStatus::parse(&status)
                .ok_or_else(|| StoreError::Database(format!("corrupt node status `{status}`")))?,
            output: output
                .as_deref()
                .map(|o| json_parse(o, "node output"))
                .transpose()?,
            node: col(r, 0)?,
            error: col(r, 3)?,
            attempts: u32::try_from(col::<i64>(r, 4)?).unwrap_or(0),
            started_at_ms: col(r, 5)?,
            finished_at_ms: col(r, 6)?,
        });
    }
    let inputs: String = col(row, 2)?;
    let origin: Option<String> = col(row, 3)?;
    let status: String = col(row, 4)?;
    Ok(RunRecord {
        id,
        workflow: col(row, 1)?,
        inputs: json_parse(&inputs, "run inputs")?,
        origin: origin
            .as_deref()
            .map(|o| json_parse(o, "run origin"))
            .transpose()?,
        status: RunStatus::parse(&status)
            .ok_or_else(|| StoreError::Database(format!("corrupt run status `{status}`")))?,
        error: col(row, 5)?,
        created_at_ms: col(row, 6)?,
        finished_at_ms: col(row, 7)?,
        nodes,
    })
}
