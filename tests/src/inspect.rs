//! Reads the daemon's stored state through its admin API, as the end-to-end tests check it:
//! inbox rows (`ListInbox`), outbox rows with their error histories (`ListOutbox`), and every
//! stored transcript entry with the inbox id of its turn (`ListSessions` + `GetSession`).
//!
//! Each function walks every page, so a caller sees all matching rows, and talks to the daemon
//! only, never to its database file: the same checks hold whichever store backend it runs.

use gateway_proto::admin as pb;
use gateway_proto::admin::admin_client::AdminClient;
use tonic::transport::Channel;

use crate::Gateway;

/// Page size used to walk the list RPCs (their maximum).
const PAGE: u32 = 1000;
/// Most transcript entries `GetSession` returns for one session.
pub const MAX_TAIL: u32 = 500;

/// A client of `gw`'s admin API.
pub async fn admin(gw: &Gateway) -> anyhow::Result<AdminClient<Channel>> {
    let channel = Channel::from_shared(gw.admin_url())?.connect().await?;
    Ok(AdminClient::new(channel))
}

/// Every inbox row of `channel` and `chat` (empty: any), oldest first.
pub async fn inbox(gw: &Gateway, channel: &str, chat: &str) -> anyhow::Result<Vec<pb::InboxEntry>> {
    let mut client = admin(gw).await?;
    let mut out = Vec::new();
    let mut cursor = String::new();
    loop {
        let page = client
            .list_inbox(pb::ListInboxRequest {
                cursor,
                limit: PAGE,
                channel: channel.to_owned(),
                chat_id: chat.to_owned(),
                state: pb::InboxState::Unspecified as i32,
            })
            .await?
            .into_inner();
        out.extend(page.entries);
        if page.next_cursor.is_empty() {
            return Ok(out);
        }
        cursor = page.next_cursor;
    }
}

/// Every outbox row of `channel` and `chat` (empty: any), oldest first, each with its error
/// history.
pub async fn outbox(
    gw: &Gateway,
    channel: &str,
    chat: &str,
) -> anyhow::Result<Vec<pb::OutboxEntry>> {
    let mut client = admin(gw).await?;
    let mut out = Vec::new();
    let mut cursor = String::new();
    loop {
        let page = client
            .list_outbox(pb::ListOutboxRequest {
                cursor,
                limit: PAGE,
                channel: channel.to_owned(),
                chat_id: chat.to_owned(),
                status: pb::OutboxStatus::Unspecified as i32,
                include_errors: true,
            })
            .await?
            .into_inner();
        out.extend(page.entries);
        if page.next_cursor.is_empty() {
            return Ok(out);
        }
        cursor = page.next_cursor;
    }
}

/// The transcript of every stored session since its last reset, oldest first within a
/// session: `(session key, entries)`. An error if a session holds more entries than one
/// `GetSession` returns ([`MAX_TAIL`]), since the check would then see only part of it.
pub async fn transcripts(gw: &Gateway) -> anyhow::Result<Vec<(String, Vec<pb::TranscriptEntry>)>> {
    let mut client = admin(gw).await?;
    let mut keys = Vec::new();
    let mut cursor = String::new();
    loop {
        let page = client
            .list_sessions(pb::ListSessionsRequest {
                cursor,
                limit: PAGE,
                ..Default::default()
            })
            .await?
            .into_inner();
        keys.extend(page.sessions.into_iter().map(|s| s.key));
        if page.next_cursor.is_empty() {
            break;
        }
        cursor = page.next_cursor;
    }
    let mut out = Vec::new();
    for key in keys {
        let session = client
            .get_session(pb::GetSessionRequest {
                key: key.clone(),
                tail: MAX_TAIL,
            })
            .await?
            .into_inner();
        anyhow::ensure!(
            session.transcript.len() < MAX_TAIL as usize,
            "session {key} has at least {MAX_TAIL} transcript entries, more than GetSession returns"
        );
        out.push((key, session.transcript));
    }
    Ok(out)
}

/// The stored name of an outbox status, as the store and `gatewayctl` spell it.
pub fn status_name(status: i32) -> &'static str {
    match pb::OutboxStatus::try_from(status) {
        Ok(pb::OutboxStatus::Pending) => "pending",
        Ok(pb::OutboxStatus::Delivered) => "delivered",
        Ok(pb::OutboxStatus::Dead) => "dead",
        Ok(pb::OutboxStatus::Dropped) => "dropped",
        Ok(pb::OutboxStatus::Unspecified) | Err(_) => "unspecified",
    }
}

/// The stored name of an error class (`None` when unspecified: no error).
pub fn class_name(class: i32) -> Option<&'static str> {
    match pb::ErrorClass::try_from(class) {
        Ok(pb::ErrorClass::Retryable) => Some("retryable"),
        Ok(pb::ErrorClass::Auth) => Some("auth"),
        Ok(pb::ErrorClass::Permanent) => Some("permanent"),
        Ok(pb::ErrorClass::Unspecified) | Err(_) => None,
    }
}
