//! What the admin service's handlers share: reading a request's arguments (a channel, a session
//! key, a page size and cursor, a dead-letter selector), paging a result, and turning a store
//! error into the gRPC status that says what went wrong.

use gateway_proto::admin as pb;
use tonic::Status;

use super::convert;
use crate::message::{ChannelKind, SessionKey};
use crate::store::{DeadSelector, StoreError};

/// Default page size of list RPCs.
pub(super) const DEFAULT_LIMIT: u32 = 100;
/// Largest page size of list RPCs.
pub(super) const MAX_LIMIT: u32 = 1000;
pub(super) fn store_status(e: StoreError) -> Status {
    match e {
        StoreError::NotFound(m) => Status::not_found(m),
        StoreError::Conflict(m) => Status::failed_precondition(m),
        StoreError::Fenced(m) => Status::unavailable(format!(
            "this instance no longer owns that part of the gateway ({m}); try again"
        )),
        StoreError::Closed => Status::unavailable("the gateway is shutting down"),
        StoreError::Database(m) => Status::internal(m),
        StoreError::Full(m) => Status::unavailable(format!("the disk is full: {m}")),
    }
}

pub(super) fn limit(requested: u32) -> usize {
    (if requested == 0 {
        DEFAULT_LIMIT
    } else {
        requested.min(MAX_LIMIT)
    }) as usize
}

/// The channel a request names (`None`: empty, so unspecified or any); an unknown name is
/// INVALID_ARGUMENT with a message that names it.
pub(super) fn channel_arg(name: &str) -> Result<Option<ChannelKind>, Status> {
    convert::channel_from(name).map_err(Status::invalid_argument)
}

pub(super) fn key_arg(key: &str) -> Result<SessionKey, Status> {
    key.parse().map_err(Status::invalid_argument)
}

pub(super) fn id_cursor(cursor: &str) -> Result<Option<i64>, Status> {
    if cursor.is_empty() {
        return Ok(None);
    }
    cursor.parse().map(Some).map_err(|_| {
        Status::invalid_argument(format!(
            "bad cursor `{cursor}`; pass the next_cursor of the previous page"
        ))
    })
}

/// Splits one extra row off a page fetched with `limit + 1` and returns the next cursor.
pub(super) fn page<T>(
    mut rows: Vec<T>,
    limit: usize,
    cursor_of: impl Fn(&T) -> String,
) -> (Vec<T>, String) {
    if rows.len() > limit {
        rows.truncate(limit);
        let next = rows.last().map(&cursor_of).unwrap_or_default();
        (rows, next)
    } else {
        (rows, String::new())
    }
}

/// A request's string filter: `None` when empty (any).
pub(super) fn non_empty(s: String) -> Option<String> {
    (!s.is_empty()).then_some(s)
}

pub(super) fn selector(s: Option<pb::DeadLetterSelector>) -> Result<DeadSelector, Status> {
    use pb::dead_letter_selector::Selector;
    match s.and_then(|s| s.selector) {
        Some(Selector::Ids(ids)) if !ids.ids.is_empty() => Ok(DeadSelector::Ids(ids.ids)),
        Some(Selector::Channel(c)) => {
            let channel =
                channel_arg(&c)?.ok_or_else(|| Status::invalid_argument("channel is required"))?;
            Ok(DeadSelector::Channel {
                channel,
                classes: None,
            })
        }
        _ => Err(Status::invalid_argument(
            "select dead letters by ids or by channel",
        )),
    }
}

pub(super) fn none_found(selector: &DeadSelector, count: u64) -> Result<(), Status> {
    match selector {
        DeadSelector::Ids(ids) if count == 0 => {
            let ids: Vec<String> = ids.iter().map(ToString::to_string).collect();
            Err(Status::not_found(format!(
                "no dead letter {}",
                ids.join(", ")
            )))
        }
        _ => Ok(()),
    }
}
