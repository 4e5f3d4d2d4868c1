//! The outbox and its dead letters in PostgreSQL: replies to send, their attempts and error
//! history, and the operator's retry and drop.
//!
//! A row only moves `pending → delivered`, `pending → dead`, or (by an operator) `dead →
//! pending` and `dead → dropped`; every update names the state it expects, so a late answer for
//! a row that has moved on (here or in another instance) changes nothing.

use deadpool_postgres::GenericClient;
use tokio_postgres::Row;

use super::{PostgresStore, col, db, to_i64};
use crate::message::{ChannelKind, OutboundMessage, now_ms};
use crate::send::ErrorClass;
use crate::store::{AttemptError, DeadLetter, DeadSelector, NewReply, StoreError, parse_channel};

/// The columns [`outbound_from`] reads, in order.
pub(super) const OUTBOUND_COLUMNS: &str =
    "id, channel, chat_id, text, reply_to, attempts, chunks_sent";
/// [`OUTBOUND_COLUMNS`] and what a dead letter adds, as [`dead_letter_from`] reads them.
const DEAD_COLUMNS: &str = "id, channel, chat_id, text, reply_to, attempts, chunks_sent, \
     last_error, error_class, created_at, updated_at";

pub(super) async fn pending(store: &PostgresStore) -> Result<Vec<OutboundMessage>, StoreError> {
    let client = store.client().await?;
    let rows = client
        .query(
            &format!("SELECT {OUTBOUND_COLUMNS} FROM outbox WHERE status = 'pending' ORDER BY id"),
            &[],
        )
        .await
        .map_err(db)?;
    rows.iter().map(outbound_from).collect()
}

pub(super) async fn delivered(store: &PostgresStore, id: i64) -> Result<(), StoreError> {
    let client = store.client().await?;
    let stmt = client
        .prepare_cached(
            "UPDATE outbox SET status = 'delivered', attempts = attempts + 1, updated_at = $2
             WHERE id = $1 AND status = 'pending'",
        )
        .await
        .map_err(db)?;
    client.execute(&stmt, &[&id, &now_ms()]).await.map_err(db)?;
    Ok(())
}

pub(super) async fn progress(
    store: &PostgresStore,
    id: i64,
    chunks_sent: u32,
) -> Result<(), StoreError> {
    let client = store.client().await?;
    let stmt = client
        .prepare_cached(
            "UPDATE outbox SET chunks_sent = $2, updated_at = $3
             WHERE id = $1 AND status = 'pending'",
        )
        .await
        .map_err(db)?;
    client
        .execute(&stmt, &[&id, &i64::from(chunks_sent), &now_ms()])
        .await
        .map_err(db)?;
    Ok(())
}

/// Records a failed send in the row and its error history; `dead` also ends the row as a
/// dead letter. Only a pending row changes.
pub(super) async fn record_failure(
    store: &PostgresStore,
    id: i64,
    attempts: u32,
    class: ErrorClass,
    error: &str,
    dead: bool,
) -> Result<(), StoreError> {
    let mut client = store.client().await?;
    let tx = client.transaction().await.map_err(db)?;
    let now = now_ms();
    let attempts = i64::from(attempts);
    let stmt = tx
        .prepare_cached(
            "UPDATE outbox SET status = CASE WHEN $6 THEN 'dead' ELSE status END,
             attempts = $2, last_error = $3, error_class = $4, updated_at = $5
             WHERE id = $1 AND status = 'pending'",
        )
        .await
        .map_err(db)?;
    tx.execute(
        &stmt,
        &[&id, &attempts, &error, &class.as_str(), &now, &dead],
    )
    .await
    .map_err(db)?;
    let stmt = tx
        .prepare_cached(
            "INSERT INTO delivery_errors (outbox_id, at, attempt, class, error)
             VALUES ($1, $2, $3, $4, $5)",
        )
        .await
        .map_err(db)?;
    tx.execute(&stmt, &[&id, &now, &attempts, &class.as_str(), &error])
        .await
        .map_err(db)?;
    tx.commit().await.map_err(db)
}

pub(super) async fn put(
    store: &PostgresStore,
    reply: NewReply,
) -> Result<OutboundMessage, StoreError> {
    let client = store.client().await?;
    let id = insert_reply(&client, 0, &reply, now_ms()).await?;
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

pub(super) async fn insert_reply(
    conn: &impl GenericClient,
    inbox_id: i64,
    r: &NewReply,
    now: i64,
) -> Result<i64, StoreError> {
    let stmt = conn
        .prepare_cached(
            "INSERT INTO outbox (inbox_id, channel, chat_id, text, reply_to, created_at, updated_at)
             VALUES ($1, $2, $3, $4, $5, $6, $6) RETURNING id",
        )
        .await
        .map_err(db)?;
    let row = conn
        .query_one(
            &stmt,
            &[
                &inbox_id,
                &r.channel.as_str(),
                &r.chat_id,
                &r.text,
                &r.reply_to,
                &now,
            ],
        )
        .await
        .map_err(db)?;
    col(&row, 0)
}

pub(super) async fn dead_letters(
    store: &PostgresStore,
    channel: Option<ChannelKind>,
    after: Option<i64>,
    limit: usize,
) -> Result<Vec<DeadLetter>, StoreError> {
    let client = store.client().await?;
    let rows = client
        .query(
            &format!(
                "SELECT {DEAD_COLUMNS} FROM outbox
                 WHERE status = 'dead' AND ($1::text IS NULL OR channel = $1) AND id > $2
                 ORDER BY id LIMIT $3"
            ),
            &[
                &channel.map(ChannelKind::as_str),
                &after.unwrap_or(0),
                &to_i64(limit),
            ],
        )
        .await
        .map_err(db)?;
    rows.iter().map(dead_letter_from).collect()
}

pub(super) async fn dead_letter(
    store: &PostgresStore,
    id: i64,
) -> Result<(DeadLetter, Vec<AttemptError>), StoreError> {
    let client = store.client().await?;
    let letter = client
        .query_opt(
            &format!("SELECT {DEAD_COLUMNS} FROM outbox WHERE id = $1 AND status = 'dead'"),
            &[&id],
        )
        .await
        .map_err(db)?
        .ok_or_else(|| StoreError::NotFound(format!("no dead letter {id}")))?;
    let history = errors_of(&client, id).await?;
    Ok((dead_letter_from(&letter)?, history))
}

/// The failed attempts of one outbox row, oldest first.
pub(super) async fn errors_of(
    conn: &impl GenericClient,
    outbox_id: i64,
) -> Result<Vec<AttemptError>, StoreError> {
    let stmt = conn
        .prepare_cached(
            "SELECT at, attempt, class, error FROM delivery_errors WHERE outbox_id = $1 ORDER BY id",
        )
        .await
        .map_err(db)?;
    let rows = conn.query(&stmt, &[&outbox_id]).await.map_err(db)?;
    rows.iter()
        .map(|r| {
            let class: String = col(r, 2)?;
            Ok(AttemptError {
                at_ms: col(r, 0)?,
                attempt: u32::try_from(col::<i64>(r, 1)?).unwrap_or(0),
                class: parse_class(&class)?,
                error: col(r, 3)?,
            })
        })
        .collect()
}

pub(super) async fn retry_dead(
    store: &PostgresStore,
    selector: &DeadSelector,
) -> Result<Vec<OutboundMessage>, StoreError> {
    let client = store.client().await?;
    let (ids, channel, classes) = dead_params(selector);
    let rows = client
        .query(
            &format!(
                "UPDATE outbox SET status = 'pending', attempts = 0, updated_at = $4
                 WHERE {DEAD_WHERE} RETURNING {OUTBOUND_COLUMNS}"
            ),
            &[&ids, &channel, &classes, &now_ms()],
        )
        .await
        .map_err(db)?;
    let mut out: Vec<OutboundMessage> = rows.iter().map(outbound_from).collect::<Result<_, _>>()?;
    out.sort_by_key(|m| m.id);
    Ok(out)
}

pub(super) async fn drop_dead(
    store: &PostgresStore,
    selector: &DeadSelector,
) -> Result<u64, StoreError> {
    let client = store.client().await?;
    let (ids, channel, classes) = dead_params(selector);
    client
        .execute(
            &format!("UPDATE outbox SET status = 'dropped', updated_at = $4 WHERE {DEAD_WHERE}"),
            &[&ids, &channel, &classes, &now_ms()],
        )
        .await
        .map_err(db)
}

/// Selects dead letters by id (`$1`), or by channel (`$2`) and optionally error class (`$3`).
const DEAD_WHERE: &str = "status = 'dead' AND ($1::bigint[] IS NULL OR id = ANY($1))
     AND ($2::text IS NULL OR channel = $2)
     AND ($3::text[] IS NULL OR error_class = ANY($3))";

type DeadParams = (Option<Vec<i64>>, Option<String>, Option<Vec<String>>);

/// The parameters of [`DEAD_WHERE`] for `selector`.
fn dead_params(selector: &DeadSelector) -> DeadParams {
    match selector {
        DeadSelector::Ids(ids) => (Some(ids.clone()), None, None),
        DeadSelector::Channel { channel, classes } => (
            None,
            Some(channel.as_str().to_owned()),
            classes
                .as_ref()
                .map(|cs| cs.iter().map(|c| c.as_str().to_owned()).collect()),
        ),
    }
}

pub(super) fn outbound_from(r: &Row) -> Result<OutboundMessage, StoreError> {
    let channel: String = col(r, 1)?;
    Ok(OutboundMessage {
        id: col(r, 0)?,
        channel: parse_channel(&channel)?,
        chat_id: col(r, 2)?,
        text: col(r, 3)?,
        reply_to: col(r, 4)?,
        attempts: u32::try_from(col::<i64>(r, 5)?).unwrap_or(u32::MAX),
        chunks_sent: u32::try_from(col::<i64>(r, 6)?).unwrap_or(0),
    })
}

pub(super) fn parse_class(s: &str) -> Result<ErrorClass, StoreError> {
    ErrorClass::parse(s).ok_or_else(|| StoreError::Database(format!("corrupt error class `{s}`")))
}

fn dead_letter_from(r: &Row) -> Result<DeadLetter, StoreError> {
    let error: Option<String> = col(r, 7)?;
    let class: Option<String> = col(r, 8)?;
    Ok(DeadLetter {
        message: outbound_from(r)?,
        last_error: error.unwrap_or_default(),
        class: class
            .as_deref()
            .map_or(Ok(ErrorClass::Permanent), parse_class)?,
        created_at_ms: col(r, 9)?,
        dead_at_ms: col(r, 10)?,
    })
}
