//! Conversions between the core's domain types and the admin API's proto types. This is the
//! only place where the two meet; the rest of the daemon never sees a proto type.

use gateway_proto::admin as pb;

use crate::delivery::ChannelBuckets;
use crate::delivery::health::{HealthState, HealthStatus};
use crate::delivery::rate_limit::BucketState;
use crate::events::Event;
use crate::message::{Address, ChannelKind, SessionKey, now_ms};
use crate::send::ErrorClass;
use crate::store::cluster::{InstanceRow, LeaseRow};
use crate::store::{
    AttemptError, DeadLetter, NodeRecord, NodeStatus, Role, RunRecord, RunStatus, StorageStats,
    StoredSession, TranscriptEntry, UserRecord,
};
use crate::supervise::Fault;
use crate::workflow::model::{Edge, Workflow};
use crate::workflow::validate::WorkflowError;

/// The rows per table of the database, as proto.
pub fn table_rows(stats: &StorageStats) -> Vec<pb::TableRows> {
    stats
        .table_rows
        .iter()
        .map(|(table, rows)| pb::TableRows {
            table: table.clone(),
            rows: *rows,
        })
        .collect()
}

/// A proto count from an in-memory size.
pub fn count(n: usize) -> u64 {
    u64::try_from(n).unwrap_or(u64::MAX)
}

/// A channel's name as the admin API carries it, e.g. `telegram`.
pub fn channel(c: ChannelKind) -> String {
    c.as_str().to_owned()
}

/// The channel a request names; `None` for the empty string (unspecified, or any in a
/// filter). An unknown name is an error that names it.
pub fn channel_from(name: &str) -> Result<Option<ChannelKind>, String> {
    if name.is_empty() {
        return Ok(None);
    }
    crate::channels::registry::kind(name).map(Some)
}

/// A domain address from a proto address.
pub fn address_from(a: &pb::Address) -> Result<Address, String> {
    let channel = channel_from(&a.channel)?.ok_or("address.channel is required")?;
    if a.sender_id.is_empty() {
        return Err("address.sender_id is required".to_owned());
    }
    Ok(Address {
        channel,
        sender_id: a.sender_id.clone(),
    })
}

/// A proto address.
pub fn address(a: &Address) -> pb::Address {
    pb::Address {
        channel: channel(a.channel),
        sender_id: a.sender_id.clone(),
    }
}

/// A proto identity.
pub fn identity(u: &UserRecord) -> pb::Identity {
    pb::Identity {
        user_id: u.id,
        addresses: u.addresses.iter().map(address).collect(),
    }
}

/// A proto session from its stored record and, if resident, its in-flight count.
pub fn session(s: &StoredSession, resident: Option<usize>) -> pb::SessionInfo {
    let (kind, user_id) = match &s.key {
        SessionKey::User(id) => (pb::SessionKind::Direct, *id),
        SessionKey::Group(..) => (pb::SessionKind::Group, 0),
    };
    pb::SessionInfo {
        key: s.key.to_string(),
        kind: kind as i32,
        user_id,
        last_channel: s.last_channel.map(channel).unwrap_or_default(),
        created_at_ms: s.created_at_ms,
        last_active_ms: s.last_active_ms,
        turns: s.turns,
        resident: resident.is_some(),
        in_flight: resident.unwrap_or(0) as u64,
    }
}

/// A proto transcript entry.
pub fn entry(e: &TranscriptEntry) -> pb::TranscriptEntry {
    let role = match e.role {
        Role::User => pb::Role::User,
        Role::Assistant => pb::Role::Assistant,
        Role::Notice | Role::Reset => pb::Role::Notice,
    };
    pb::TranscriptEntry {
        role: role as i32,
        text: e.text.clone(),
        at_ms: e.at_ms,
        channel: e.channel.map(channel).unwrap_or_default(),
        inbox_id: 0,
    }
}

fn state(s: &HealthState) -> pb::ChannelState {
    match s {
        HealthState::Starting => pb::ChannelState::Starting,
        HealthState::Connected => pb::ChannelState::Connected,
        HealthState::Reconnecting { .. } => pb::ChannelState::Reconnecting,
        HealthState::ReauthNeeded => pb::ChannelState::ReauthNeeded,
        HealthState::Down => pb::ChannelState::Down,
    }
}

fn state_named(name: &str) -> pb::ChannelState {
    match name {
        "starting" => pb::ChannelState::Starting,
        "connected" => pb::ChannelState::Connected,
        "reconnecting" => pb::ChannelState::Reconnecting,
        "reauth_needed" => pb::ChannelState::ReauthNeeded,
        "down" => pb::ChannelState::Down,
        _ => pb::ChannelState::Unspecified,
    }
}

/// A proto fault.
pub fn fault(f: &Fault) -> pb::Fault {
    pb::Fault {
        component: f.component.clone(),
        message: f.message.clone(),
        at_unix_ms: f.at_ms,
        restartable: f.restartable,
        restarts: f.restarts,
    }
}

/// A proto channel status.
pub fn channel_info(h: &HealthStatus) -> pb::ChannelInfo {
    let (attempt, next) = match h.state {
        HealthState::Reconnecting {
            attempt,
            next_at_ms,
        } => (attempt, next_at_ms),
        _ => (0, 0),
    };
    pb::ChannelInfo {
        channel: channel(h.channel),
        state: state(&h.state) as i32,
        last_error: h.last_error.clone().unwrap_or_default(),
        reconnect_attempt: attempt,
        next_attempt_at_ms: next,
        since_ms: h.since_ms,
        sent: h.sent,
        failed: h.failed,
        reconnects: h.reconnects,
    }
}

fn bucket(b: &BucketState) -> pb::Bucket {
    let paused = b.paused_until.map_or(0, |until| {
        let left = until.saturating_duration_since(std::time::Instant::now());
        now_ms().saturating_add(i64::try_from(left.as_millis()).unwrap_or(i64::MAX))
    });
    pb::Bucket {
        chat_id: b.chat_id.clone().unwrap_or_default(),
        per_second: b.per_second,
        burst: b.burst,
        tokens: b.tokens,
        queued: b.queued,
        throttled: b.throttled,
        paused_until_ms: paused,
    }
}

/// A proto channel's buckets.
pub fn rate_limits(c: &ChannelBuckets) -> pb::ChannelRateLimits {
    pb::ChannelRateLimits {
        channel: channel(c.channel),
        channel_bucket: c.channel_bucket.as_ref().map(bucket),
        chats: c.chats.iter().map(bucket).collect(),
        throttled_total: c.throttled_total,
    }
}

/// The partition a lease name stands for (`part:<n>` with `n < partitions`).
fn partition_of(name: &str, partitions: u32) -> Option<u32> {
    name.strip_prefix("part:")
        .and_then(|n| n.parse::<u32>().ok())
        .filter(|n| *n < partitions)
}

/// The cluster as proto: every instance row with the unexpired leases it holds (partitions apart
/// from the rest), and how many partitions no live lease covers, all judged at the database
/// server's `now_ms`. An instance is live while its last heartbeat is younger than
/// `lease_ttl_ms` and it is not leaving.
pub fn cluster(
    instance_id: &str,
    partitions: u32,
    lease_ttl_ms: u64,
    instances: &[InstanceRow],
    leases: &[LeaseRow],
    now_ms: i64,
) -> pb::GetClusterReply {
    let held: Vec<(&str, &str)> = leases
        .iter()
        .filter(|l| l.expires_at_ms > now_ms)
        .filter_map(|l| l.owner.as_deref().map(|o| (o, l.name.as_str())))
        .collect();
    let mut owned = vec![false; partitions as usize];
    for (_, name) in &held {
        if let Some(p) = partition_of(name, partitions) {
            owned[p as usize] = true;
        }
    }
    let unowned = owned.iter().filter(|o| !**o).count();
    let instances = instances
        .iter()
        .map(|i| {
            let age = u64::try_from(now_ms.saturating_sub(i.heartbeat_at_ms)).unwrap_or(0);
            let mut parts: Vec<u32> = Vec::new();
            let mut others: Vec<String> = Vec::new();
            for (_, name) in held.iter().filter(|(o, _)| *o == i.instance_id) {
                match partition_of(name, partitions) {
                    Some(p) => parts.push(p),
                    None => others.push((*name).to_owned()),
                }
            }
            parts.sort_unstable();
            others.sort();
            pb::ClusterInstance {
                instance_id: i.instance_id.clone(),
                started_at_ms: i.started_at_ms,
                heartbeat_at_ms: i.heartbeat_at_ms,
                heartbeat_age_ms: age,
                live: age < lease_ttl_ms && !i.leaving,
                leaving: i.leaving,
                version: i.version.clone(),
                advertise_url: i.advertise_url.clone().unwrap_or_default(),
                partitions: parts,
                leases: others,
            }
        })
        .collect();
    pb::GetClusterReply {
        enabled: true,
        instance_id: instance_id.to_owned(),
        partitions,
        lease_ttl_ms,
        instances,
        unowned_partitions: u32::try_from(unowned).unwrap_or(u32::MAX),
        server_now_ms: now_ms,
    }
}

fn class(c: ErrorClass) -> pb::ErrorClass {
    match c {
        ErrorClass::Retryable => pb::ErrorClass::Retryable,
        ErrorClass::Auth => pb::ErrorClass::Auth,
        ErrorClass::Permanent => pb::ErrorClass::Permanent,
    }
}

/// A proto dead letter.
pub fn dead_letter(d: &DeadLetter) -> pb::DeadLetter {
    pb::DeadLetter {
        id: d.message.id,
        channel: channel(d.message.channel),
        chat_id: d.message.chat_id.clone(),
        text: d.message.text.clone(),
        reply_to: d.message.reply_to.clone().unwrap_or_default(),
        attempts: d.message.attempts,
        last_error: d.last_error.clone(),
        error_class: class(d.class) as i32,
        created_at_ms: d.created_at_ms,
        dead_at_ms: d.dead_at_ms,
    }
}

/// A proto attempt error.
pub fn attempt(a: &AttemptError) -> pb::AttemptError {
    pb::AttemptError {
        at_ms: a.at_ms,
        attempt: a.attempt,
        error_class: class(a.class) as i32,
        error: a.error.clone(),
    }
}

/// A proto event.
pub fn event(e: &Event) -> pb::WatchEventsResponse {
    use pb::watch_events_response::Event as E;
    let inner = match e {
        Event::MessageIn {
            inbox_id,
            channel: c,
            chat_id,
        } => E::MessageIn(pb::MessageIn {
            inbox_id: *inbox_id,
            channel: channel(*c),
            chat_id: chat_id.clone(),
        }),
        Event::MessageOut {
            outbox_id,
            channel: c,
            chat_id,
        } => E::MessageOut(pb::MessageOut {
            outbox_id: *outbox_id,
            channel: channel(*c),
            chat_id: chat_id.clone(),
        }),
        Event::SessionCreated { session } => E::SessionCreated(pb::SessionCreated {
            key: session.to_string(),
        }),
        Event::SessionEvicted { session, reason } => E::SessionEvicted(pb::SessionEvicted {
            key: session.to_string(),
            reason: (*reason).to_owned(),
        }),
        Event::TurnCommitted { session, inbox_id } => E::TurnCommitted(pb::TurnCommitted {
            key: session.to_string(),
            inbox_id: *inbox_id,
        }),
        Event::IdentityLinked { user, merged } => E::IdentityLinked(pb::IdentityLinked {
            user_id: *user,
            merged_user_id: *merged,
        }),
        Event::IdentityUnlinked { user, new_user } => E::IdentityUnlinked(pb::IdentityUnlinked {
            user_id: *user,
            new_user_id: *new_user,
        }),
        Event::DeliveryFailed {
            outbox_id,
            channel: c,
            attempts,
            error,
        } => E::DeliveryFailed(pb::DeliveryFailed {
            outbox_id: *outbox_id,
            channel: channel(*c),
            attempts: *attempts,
            error: error.clone(),
        }),
        Event::DeadLettered {
            outbox_id,
            channel: c,
            error,
        } => E::DeadLettered(pb::DeadLettered {
            outbox_id: *outbox_id,
            channel: channel(*c),
            error: error.clone(),
        }),
        Event::ChannelStateChanged {
            channel: c,
            state,
            error,
        } => E::ChannelStateChanged(pb::ChannelStateChanged {
            channel: channel(*c),
            state: state_named(state) as i32,
            error: error.clone().unwrap_or_default(),
        }),
        Event::RateLimited {
            channel: c,
            chat_id,
            pause_ms,
        } => E::RateLimited(pb::RateLimited {
            channel: channel(*c),
            chat_id: chat_id.clone().unwrap_or_default(),
            pause_ms: *pause_ms,
        }),
        Event::RunChanged {
            run,
            workflow,
            status,
            error,
        } => E::RunChanged(pb::RunChanged {
            run_id: *run,
            workflow: workflow.clone(),
            state: run_state(*status) as i32,
            error: error.clone().unwrap_or_default(),
        }),
        Event::NodeChanged {
            run,
            node,
            status,
            error,
        } => E::NodeChanged(pb::NodeChanged {
            run_id: *run,
            node: node.clone(),
            state: node_state(*status) as i32,
            error: error.clone().unwrap_or_default(),
        }),
        Event::DeadLettersRetried { channel: c, count } => {
            E::DeadLettersRetried(pb::DeadLettersRetried {
                channel: c.map(channel).unwrap_or_default(),
                count: *count,
            })
        }
    };
    pb::WatchEventsResponse {
        at_ms: now_ms(),
        event: Some(inner),
    }
}

/// A proto run state.
pub fn run_state(s: RunStatus) -> pb::RunState {
    match s {
        RunStatus::Running => pb::RunState::Running,
        RunStatus::Succeeded => pb::RunState::Succeeded,
        RunStatus::Failed => pb::RunState::Failed,
    }
}

/// A proto node state.
pub fn node_state(s: NodeStatus) -> pb::NodeState {
    match s {
        NodeStatus::Pending => pb::NodeState::Pending,
        NodeStatus::Running => pb::NodeState::Running,
        NodeStatus::Succeeded => pb::NodeState::Succeeded,
        NodeStatus::Failed => pb::NodeState::Failed,
        NodeStatus::Skipped => pb::NodeState::Skipped,
    }
}

/// A proto workflow error.
pub fn workflow_error(e: &WorkflowError) -> pb::WorkflowError {
    pb::WorkflowError {
        file: e.file.display().to_string(),
        node: e.node.clone().unwrap_or_default(),
        field: e.field.clone().unwrap_or_default(),
        message: e.message.clone(),
    }
}

fn edge_text(e: &Edge) -> String {
    match e.when {
        Some(when) => format!("{}={when}", e.node),
        None => e.node.clone(),
    }
}

/// A proto workflow.
pub fn workflow(w: &Workflow) -> pb::Workflow {
    pb::Workflow {
        name: w.name.clone(),
        description: w.description.clone(),
        file: w.path.display().to_string(),
        inputs: w
            .inputs
            .iter()
            .map(|(name, spec)| pb::WorkflowInput {
                name: name.clone(),
                r#type: spec.kind.to_string(),
                required: spec.is_required(),
                description: spec.description.clone(),
            })
            .collect(),
        nodes: w
            .nodes
            .iter()
            .map(|n| pb::WorkflowNode {
                id: n.id.clone(),
                kind: n.kind.name().to_owned(),
                after: n.after.iter().map(edge_text).collect(),
            })
            .collect(),
    }
}

/// A proto run; with `workflow`, its nodes in the workflow's order (pending ones included).
pub fn run(r: &RunRecord, workflow: Option<&Workflow>, with_nodes: bool) -> pb::Run {
    let mut nodes = Vec::new();
    if with_nodes {
        let recorded: std::collections::HashMap<&str, &NodeRecord> =
            r.nodes.iter().map(|n| (n.node.as_str(), n)).collect();
        let order: Vec<(String, String, Vec<String>)> = match workflow {
            Some(w) => w
                .nodes
                .iter()
                .map(|n| {
                    (
                        n.id.clone(),
                        n.kind.name().to_owned(),
                        n.after.iter().map(edge_text).collect(),
                    )
                })
                .collect(),
            None => r
                .nodes
                .iter()
                .map(|n| (n.node.clone(), String::new(), Vec::new()))
                .collect(),
        };
        for (id, kind, after) in order {
            let rec = recorded.get(id.as_str());
            nodes.push(pb::RunNode {
                state: node_state(rec.map_or(NodeStatus::Pending, |n| n.status)) as i32,
                output_json: rec
                    .and_then(|n| n.output.as_ref())
                    .map(ToString::to_string)
                    .unwrap_or_default(),
                error: rec.and_then(|n| n.error.clone()).unwrap_or_default(),
                attempts: rec.map_or(0, |n| n.attempts),
                started_at_ms: rec.and_then(|n| n.started_at_ms).unwrap_or(0),
                finished_at_ms: rec.and_then(|n| n.finished_at_ms).unwrap_or(0),
                id,
                kind,
                after,
            });
        }
    }
    pb::Run {
        id: r.id,
        workflow: r.workflow.clone(),
        state: run_state(r.status) as i32,
        error: r.error.clone().unwrap_or_default(),
        inputs_json: r.inputs.to_string(),
        created_at_ms: r.created_at_ms,
        finished_at_ms: r.finished_at_ms.unwrap_or(0),
        nodes,
        trigger: r
            .origin
            .as_ref()
            .map_or_else(|| "operator".to_owned(), |o| o.trigger.clone()),
    }
}

/// The marker sent to a watcher that missed `missed` events.
pub fn lagged(missed: u64) -> pb::WatchEventsResponse {
    pb::WatchEventsResponse {
        at_ms: now_ms(),
        event: Some(pb::watch_events_response::Event::Lagged(pb::Lagged {
            missed,
        })),
    }
}

/// A proto transcript entry with the inbox id of its turn.
pub fn traced_entry(e: &crate::store::TracedEntry) -> pb::TranscriptEntry {
    pb::TranscriptEntry {
        inbox_id: e.inbox_id.unwrap_or(0),
        ..entry(&e.entry)
    }
}

/// A proto inbox row.
pub fn inbox_entry(r: &crate::store::InboxRecord) -> pb::InboxEntry {
    let state = if r.blocked {
        pb::InboxState::Blocked
    } else if r.done {
        pb::InboxState::Done
    } else {
        pb::InboxState::Pending
    };
    pb::InboxEntry {
        id: r.id,
        channel: r.channel.clone(),
        channel_message_id: r.channel_message_id.clone(),
        chat_id: r.chat_id.clone(),
        chat_type: r.chat_type.clone(),
        sender_id: r.sender_id.clone(),
        sender_name: r.sender_name.clone().unwrap_or_default(),
        text: r.text.clone(),
        reply_to: r.reply_to.clone().unwrap_or_default(),
        received_at_ms: r.received_at_ms,
        state: state as i32,
    }
}

/// The inbox state a request filters by: `None` for unspecified (any).
pub fn inbox_state_from(value: i32) -> Result<Option<bool>, String> {
    match pb::InboxState::try_from(value) {
        Ok(pb::InboxState::Unspecified) => Ok(None),
        Ok(pb::InboxState::Pending) => Ok(Some(false)),
        Ok(pb::InboxState::Done) => Ok(Some(true)),
        Ok(pb::InboxState::Blocked) => Err(
            "filtering by INBOX_STATE_BLOCKED is not supported; filter by INBOX_STATE_DONE and read each row's state"
                .to_owned(),
        ),
        Err(_) => Err(format!("unknown inbox state {value}")),
    }
}

/// A proto outbox status.
pub fn outbox_status(s: crate::store::OutboxStatus) -> pb::OutboxStatus {
    use crate::store::OutboxStatus as S;
    match s {
        S::Pending => pb::OutboxStatus::Pending,
        S::Delivered => pb::OutboxStatus::Delivered,
        S::Dead => pb::OutboxStatus::Dead,
        S::Dropped => pb::OutboxStatus::Dropped,
    }
}

/// The outbox status a request filters by: `None` for unspecified (any).
pub fn outbox_status_from(value: i32) -> Result<Option<crate::store::OutboxStatus>, String> {
    use crate::store::OutboxStatus as S;
    match pb::OutboxStatus::try_from(value) {
        Ok(pb::OutboxStatus::Unspecified) => Ok(None),
        Ok(pb::OutboxStatus::Pending) => Ok(Some(S::Pending)),
        Ok(pb::OutboxStatus::Delivered) => Ok(Some(S::Delivered)),
        Ok(pb::OutboxStatus::Dead) => Ok(Some(S::Dead)),
        Ok(pb::OutboxStatus::Dropped) => Ok(Some(S::Dropped)),
        Err(_) => Err(format!("unknown outbox status {value}")),
    }
}

/// A proto outbox row.
pub fn outbox_entry(r: &crate::store::OutboxRecord) -> pb::OutboxEntry {
    pb::OutboxEntry {
        id: r.id,
        inbox_id: r.inbox_id.unwrap_or(0),
        channel: r.channel.clone(),
        chat_id: r.chat_id.clone(),
        text: r.text.clone(),
        reply_to: r.reply_to.clone().unwrap_or_default(),
        status: outbox_status(r.status) as i32,
        attempts: r.attempts,
        last_error: r.last_error.clone().unwrap_or_default(),
        error_class: r.class.map_or(pb::ErrorClass::Unspecified, class) as i32,
        chunks_sent: r.chunks_sent,
        created_at_ms: r.created_at_ms,
        updated_at_ms: r.updated_at_ms,
        errors: r.errors.iter().map(attempt).collect(),
        receipt_status: r.receipt.map_or(pb::ReceiptStatus::Unspecified, receipt) as i32,
        receipt_error: r.receipt_error.clone().unwrap_or_default(),
    }
}

fn receipt(s: crate::store::ReceiptStatus) -> pb::ReceiptStatus {
    use crate::store::ReceiptStatus as R;
    match s {
        R::Sent => pb::ReceiptStatus::Sent,
        R::Delivered => pb::ReceiptStatus::Delivered,
        R::Read => pb::ReceiptStatus::Read,
        R::Failed => pb::ReceiptStatus::Failed,
    }
}

/// One user's usage over a period.
pub fn user_usage(u: &crate::store::UsageTotal) -> pb::UserUsage {
    pb::UserUsage {
        user_id: u.user,
        prompt_tokens: u.prompt_tokens,
        completion_tokens: u.completion_tokens,
        turns: u.turns,
        estimated: u.estimated,
    }
}

/// A pending pairing request.
pub fn pairing(r: &crate::store::PairingRequest) -> pb::PairingRequest {
    pb::PairingRequest {
        code: r.code.clone(),
        channel: r.channel.as_str().to_owned(),
        sender_id: r.sender_id.clone(),
        display_name: r.display_name.clone().unwrap_or_default(),
        first_seen_ms: r.first_seen_ms,
        expires_at_ms: r.expires_at_ms,
        kept_messages: u32::try_from(r.kept.len()).unwrap_or(u32::MAX),
        user_id: r.user_id,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn channels_travel_as_their_names_and_unknown_names_are_errors_naming_them() {
        for name in ["webchat", "http", "telegram", "discord"] {
            let kind = channel_from(name).expect("known").expect("named");
            assert_eq!(channel(kind), name);
        }
        assert_eq!(channel_from(""), Ok(None));
        let err = channel_from("smtp").expect_err("unknown");
        assert!(err.contains("`smtp`"), "{err}");
        assert!(channel_from("HTTP").is_err(), "names are exact");
    }
}
