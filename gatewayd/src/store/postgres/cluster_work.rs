//! The partitioned side of the message path in PostgreSQL, for multi-instance mode: inbox rows
//! committed into their session's partition with a `NOTIFY gateway_inbox` wake-up in the same
//! transaction, the pending work (inbox, outbox, workflow runs) of a set of partitions, and the
//! dedicated `LISTEN` connection that carries the wake-ups.
//!
//! `NOTIFY` is only a hint: it is lost while the listening connection is down, so the owner's
//! poll of its partitions stays the truth. A row with no partition (committed before the
//! instance ran in a cluster) belongs to whoever holds partition 0, which files it under its
//! session's partition.

use futures_util::StreamExt as _;
use tokio::sync::mpsc;
use tokio_postgres::{AsyncMessage, NoTls};

use super::inbox::{PENDING_COLUMNS, pending_from};
use super::outbox::{OUTBOUND_COLUMNS, insert_reply, outbound_from};
use super::runs::{RUN_COLUMNS, to_run};
use super::{PostgresStore, col, db};
use crate::message::{InboundMessage, OutboundMessage, now_ms};
use crate::store::{InboxOutcome, NewReply, PendingInbound, RunRecord, StoreError};

/// The channel of the inbox wake-ups; the payload is the partition.
pub(super) const INBOX_CHANNEL: &str = "gateway_inbox";

/// The most pending inbox rows one poll reads.
const POLL_LIMIT: i64 = 1000;

fn part(p: u32) -> i32 {
    i32::try_from(p).unwrap_or(i32::MAX)
}

fn parts(ps: &[u32]) -> Vec<i32> {
    ps.iter().copied().map(part).collect()
}

pub(super) async fn inbox_commit_in(
    store: &PostgresStore,
    msg: &InboundMessage,
    partition: u32,
) -> Result<InboxOutcome, StoreError> {
    let attachments = if msg.attachments.is_empty() {
        None
    } else {
        Some(
            serde_json::to_string(&msg.attachments)
                .map_err(|e| StoreError::Database(format!("cannot encode attachments: {e}")))?,
        )
    };
    let mut client = store.client().await?;
    // Twice at most: the first row may be pruned between the insert and the select.
    for _ in 0..2 {
        let tx = client.transaction().await.map_err(db)?;
        let insert = tx
            .prepare_cached(
                "INSERT INTO inbox
                 (channel, channel_message_id, chat_id, chat_type, sender_id, text, received_at,
                  reply_to, attachments, sender_name, mentioned, partition)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)
                 ON CONFLICT (channel, channel_message_id) DO NOTHING
                 RETURNING id",
            )
            .await
            .map_err(db)?;
        let inserted = tx
            .query_opt(
                &insert,
                &[
                    &msg.channel.as_str(),
                    &msg.channel_message_id,
                    &msg.chat_id,
                    &msg.chat_type.as_str(),
                    &msg.sender_id,
                    &msg.text,
                    &msg.received_at_ms,
                    &msg.reply_to,
                    &attachments,
                    &msg.sender_name,
                    &msg.mentioned,
                    &part(partition),
                ],
            )
            .await
            .map_err(db)?;
        if let Some(row) = inserted {
            let id: i64 = col(&row, 0)?;
            tx.execute(
                "SELECT pg_notify($1, $2)",
                &[&INBOX_CHANNEL, &partition.to_string()],
            )
            .await
            .map_err(db)?;
            tx.commit().await.map_err(db)?;
            return Ok(InboxOutcome::New(id));
        }
        let existing = tx
            .query_opt(
                "SELECT id FROM inbox WHERE channel = $1 AND channel_message_id = $2",
                &[&msg.channel.as_str(), &msg.channel_message_id],
            )
            .await
            .map_err(db)?;
        tx.commit().await.map_err(db)?;
        if let Some(row) = existing {
            return Ok(InboxOutcome::Duplicate(col(&row, 0)?));
        }
    }
    Err(StoreError::Database(format!(
        "inbox row ({}, {}) neither inserted nor found",
        msg.channel, msg.channel_message_id
    )))
}

pub(super) async fn inbox_pending_in(
    store: &PostgresStore,
    partitions: &[u32],
    unassigned: bool,
) -> Result<Vec<(PendingInbound, Option<u32>)>, StoreError> {
    let client = store.client().await?;
    let rows = client
        .query(
            &format!(
                "SELECT {PENDING_COLUMNS}, partition FROM inbox i
                 WHERE NOT done AND (partition = ANY($1) OR ($2 AND partition IS NULL))
                   AND NOT EXISTS (SELECT 1 FROM pairing_kept k WHERE k.inbox_id = i.id)
                 ORDER BY id LIMIT $3"
            ),
            &[&parts(partitions), &unassigned, &POLL_LIMIT],
        )
        .await
        .map_err(db)?;
    rows.iter()
        .map(|r| {
            let p: Option<i32> = col(r, 12)?;
            Ok((pending_from(r)?, p.and_then(|p| u32::try_from(p).ok())))
        })
        .collect()
}

pub(super) async fn inbox_move(
    store: &PostgresStore,
    inbox_id: i64,
    partition: u32,
) -> Result<(), StoreError> {
    let mut client = store.client().await?;
    let tx = client.transaction().await.map_err(db)?;
    tx.execute(
        "UPDATE inbox SET partition = $2 WHERE id = $1 AND NOT done",
        &[&inbox_id, &part(partition)],
    )
    .await
    .map_err(db)?;
    tx.execute(
        "SELECT pg_notify($1, $2)",
        &[&INBOX_CHANNEL, &partition.to_string()],
    )
    .await
    .map_err(db)?;
    tx.commit().await.map_err(db)
}

pub(super) async fn outbox_put_in(
    store: &PostgresStore,
    reply: NewReply,
    partition: u32,
) -> Result<OutboundMessage, StoreError> {
    let mut client = store.client().await?;
    let tx = client.transaction().await.map_err(db)?;
    let id = insert_reply(&tx, 0, &reply, now_ms()).await?;
    tx.execute(
        "UPDATE outbox SET partition = $2 WHERE id = $1",
        &[&id, &part(partition)],
    )
    .await
    .map_err(db)?;
    tx.commit().await.map_err(db)?;
    Ok(OutboundMessage {
        id,
        channel: reply.channel,
        chat_id: reply.chat_id,
        text: reply.text,
        reply_to: reply.reply_to,
        attempts: 0,
        chunks_sent: 0,
    })
}

pub(super) async fn outbox_pending_in(
    store: &PostgresStore,
    partitions: &[u32],
    unassigned: bool,
) -> Result<Vec<(OutboundMessage, Option<u32>)>, StoreError> {
    let client = store.client().await?;
    let rows = client
        .query(
            &format!(
                "SELECT {OUTBOUND_COLUMNS}, partition FROM outbox
                 WHERE status = 'pending' AND (partition = ANY($1) OR ($2 AND partition IS NULL))
                 ORDER BY id"
            ),
            &[&parts(partitions), &unassigned],
        )
        .await
        .map_err(db)?;
    rows.iter()
        .map(|r| {
            let p: Option<i32> = col(r, 7)?;
            Ok((outbound_from(r)?, p.and_then(|p| u32::try_from(p).ok())))
        })
        .collect()
}

pub(super) async fn run_set_partition(
    store: &PostgresStore,
    run: i64,
    partition: u32,
) -> Result<(), StoreError> {
    let client = store.client().await?;
    client
        .execute(
            "UPDATE workflow_runs SET partition = $2 WHERE id = $1",
            &[&run, &part(partition)],
        )
        .await
        .map_err(db)?;
    Ok(())
}

pub(super) async fn runs_unfinished_in(
    store: &PostgresStore,
    partitions: &[u32],
    unassigned: bool,
) -> Result<Vec<RunRecord>, StoreError> {
    let client = store.client().await?;
    let rows = client
        .query(
            &format!(
                "SELECT {RUN_COLUMNS} FROM workflow_runs
                 WHERE status = 'running' AND (partition = ANY($1) OR ($2 AND partition IS NULL))
                 ORDER BY id"
            ),
            &[&parts(partitions), &unassigned],
        )
        .await
        .map_err(db)?;
    let mut out = Vec::with_capacity(rows.len());
    for row in &rows {
        out.push(to_run(&client, row).await?);
    }
    Ok(out)
}

/// Opens a connection of its own, `LISTEN`s on [`INBOX_CHANNEL`], and forwards each wake-up's
/// partition. The receiver ends when that connection is lost; the caller opens another.
pub(super) async fn listen_inbox(
    store: &PostgresStore,
) -> Result<mpsc::Receiver<Option<u32>>, StoreError> {
    let (client, mut connection) = store
        .pg_config
        .connect(NoTls)
        .await
        .map_err(|e| StoreError::Database(format!("cannot open the LISTEN connection: {e}")))?;
    let (tx, rx) = mpsc::channel(256);
    // The client must outlive the LISTEN; the driving task keeps it (through this channel)
    // and drops it, closing the connection, when the connection ends or nobody listens.
    let (keep_tx, keep_rx) = tokio::sync::oneshot::channel::<tokio_postgres::Client>();
    tokio::spawn(async move {
        let _keep = keep_rx;
        let mut messages = futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
        while let Some(message) = messages.next().await {
            match message {
                Ok(AsyncMessage::Notification(n)) => {
                    // A full queue already holds a wake-up; only a closed one ends this.
                    if tx.try_send(n.payload().parse::<u32>().ok()).is_err() && tx.is_closed() {
                        return;
                    }
                }
                Ok(_) => {}
                Err(error) => {
                    tracing::debug!(message = "The LISTEN connection ended.", %error);
                    return;
                }
            }
        }
    });
    client
        .batch_execute(&format!("LISTEN {INBOX_CHANNEL}"))
        .await
        .map_err(|e| StoreError::Database(format!("cannot LISTEN: {e}")))?;
    let _ = keep_tx.send(client);
    Ok(rx)
}
