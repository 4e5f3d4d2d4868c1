//! The console's rows and details, converted from the admin API's proto messages: views
//! never see proto. Channels stay names (a table cell shows `-` for none), so a new channel
//! needs nothing here.

use gateway_proto::admin as pb;
use pb::watch_events_response::Event as E;

use super::Tab;
use super::list::Filterable;
use crate::model::{
    Address, ChannelInfo, ChannelState, ErrorClass, NodeState, RunState, channel_cell, channel_or,
};
use crate::output::{duration, text, time};

/// GetOverview.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Overview {
    pub version: String,
    pub uptime_seconds: u64,
    pub messages_in: u64,
    pub messages_out: u64,
    pub rate_in: f64,
    pub rate_out: f64,
    pub sessions_resident: u64,
    pub sessions_capacity: u64,
    pub sessions_stored: u64,
    pub channels: Vec<(String, ChannelState)>,
    pub dead_letters: u64,
    pub outbox_pending: u64,
    pub inbox_pending: u64,
    pub agent_provider: String,
    /// The store's backend (`sqlite`, `postgres`; empty from a daemon that does not say).
    pub store_backend: String,
    /// Why the store does not answer; `None` while it does (the queue counts are then real).
    pub store_error: Option<String>,
    /// Today's LLM usage (ListUsage); `None` when gatewayd could not tell.
    pub usage: Option<UsageToday>,
}

/// The current UTC day's LLM usage: the gateway's against its budget, and the top users.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UsageToday {
    pub global_tokens: u64,
    pub global_budget: Option<u64>,
    /// `(user_id, tokens, turns)`, most tokens first.
    pub top_users: Vec<(i64, u64, u64)>,
}

/// Users the Overview shows in its usage panel.
pub const TOP_USERS: usize = 3;

impl From<pb::ListUsageResponse> for UsageToday {
    fn from(r: pb::ListUsageResponse) -> Self {
        Self {
            global_tokens: r.global_tokens_today,
            global_budget: r.global_tokens_per_day,
            top_users: r
                .users
                .iter()
                .take(TOP_USERS)
                .map(|u| {
                    (
                        u.user_id,
                        u.prompt_tokens.saturating_add(u.completion_tokens),
                        u.turns,
                    )
                })
                .collect(),
        }
    }
}

impl From<pb::GetOverviewResponse> for Overview {
    fn from(o: pb::GetOverviewResponse) -> Self {
        Self {
            version: o.version,
            uptime_seconds: o.uptime_seconds,
            messages_in: o.messages_in,
            messages_out: o.messages_out,
            rate_in: o.rate_in_per_second,
            rate_out: o.rate_out_per_second,
            sessions_resident: o.sessions_resident,
            sessions_capacity: o.sessions_capacity,
            sessions_stored: o.sessions_stored,
            channels: o
                .channels
                .iter()
                .map(|c| (channel_cell(&c.channel), ChannelState::from_pb(c.state)))
                .collect(),
            dead_letters: o.dead_letters,
            outbox_pending: o.outbox_pending,
            inbox_pending: o.inbox_pending,
            agent_provider: o.agent_provider,
            store_error: (!o.store_ok && !o.store_backend.is_empty()).then_some(o.store_error),
            store_backend: o.store_backend,
            usage: None,
        }
    }
}

/// One session row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session {
    pub key: String,
    pub group: bool,
    pub last_channel: String,
    pub last_active_ms: Option<i64>,
    pub turns: u64,
    pub resident: bool,
    pub in_flight: u64,
}

impl From<pb::SessionInfo> for Session {
    fn from(s: pb::SessionInfo) -> Self {
        Self {
            group: s.kind == pb::SessionKind::Group as i32,
            last_channel: channel_cell(&s.last_channel),
            last_active_ms: time(s.last_active_ms),
            turns: s.turns,
            resident: s.resident,
            in_flight: s.in_flight,
            key: s.key,
        }
    }
}

impl Filterable for Session {
    fn haystack(&self) -> String {
        format!("{} {}", self.key, self.last_channel)
    }
}

/// One transcript entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub role: &'static str,
    pub text: String,
    pub at_ms: i64,
}

/// GetSession: a session and its transcript tail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionDetail {
    pub session: Session,
    pub transcript: Vec<Entry>,
}

impl TryFrom<pb::GetSessionResponse> for SessionDetail {
    type Error = String;
    fn try_from(r: pb::GetSessionResponse) -> Result<Self, String> {
        let session = r.session.ok_or("gatewayd sent no session")?.into();
        let transcript = r
            .transcript
            .into_iter()
            .map(|e| Entry {
                role: match pb::Role::try_from(e.role) {
                    Ok(pb::Role::User) => "user",
                    Ok(pb::Role::Assistant) => "assistant",
                    Ok(pb::Role::Notice) => "notice",
                    _ => "?",
                },
                text: e.text,
                at_ms: e.at_ms,
            })
            .collect();
        Ok(Self {
            session,
            transcript,
        })
    }
}

impl Filterable for ChannelInfo {
    fn haystack(&self) -> String {
        format!(
            "{} {} {}",
            channel_or(self.channel.as_ref(), "?"),
            self.state.name(),
            self.last_error.as_deref().unwrap_or("")
        )
    }
}

/// One rate-limit bucket.
#[derive(Debug, Clone, PartialEq)]
pub struct Bucket {
    pub chat_id: String,
    pub per_second: f64,
    pub burst: u32,
    pub tokens: f64,
    pub queued: u64,
    pub throttled: u64,
    pub paused_until_ms: Option<i64>,
}

impl From<pb::Bucket> for Bucket {
    fn from(b: pb::Bucket) -> Self {
        Self {
            chat_id: b.chat_id,
            per_second: b.per_second,
            burst: b.burst,
            tokens: b.tokens,
            queued: b.queued,
            throttled: b.throttled,
            paused_until_ms: time(b.paused_until_ms),
        }
    }
}

/// One channel's buckets.
#[derive(Debug, Clone, PartialEq)]
pub struct ChannelLimits {
    pub channel: String,
    pub bucket: Option<Bucket>,
    pub chats: Vec<Bucket>,
    pub throttled_total: u64,
}

impl From<pb::ChannelRateLimits> for ChannelLimits {
    fn from(c: pb::ChannelRateLimits) -> Self {
        Self {
            channel: channel_cell(&c.channel),
            bucket: c.channel_bucket.map(Into::into),
            chats: c.chats.into_iter().map(Into::into).collect(),
            throttled_total: c.throttled_total,
        }
    }
}

/// One dead letter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetter {
    pub id: i64,
    pub channel: String,
    pub chat_id: String,
    pub text: String,
    pub attempts: u32,
    pub last_error: String,
    pub class: ErrorClass,
    pub dead_at_ms: Option<i64>,
}

impl From<pb::DeadLetter> for DeadLetter {
    fn from(d: pb::DeadLetter) -> Self {
        Self {
            id: d.id,
            channel: channel_cell(&d.channel),
            chat_id: d.chat_id,
            text: d.text,
            attempts: d.attempts,
            last_error: d.last_error,
            class: ErrorClass::from_pb(d.error_class),
            dead_at_ms: time(d.dead_at_ms),
        }
    }
}

impl Filterable for DeadLetter {
    fn haystack(&self) -> String {
        format!(
            "{} {} {} {}",
            self.id, self.channel, self.chat_id, self.last_error
        )
    }
}

/// One failed attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttemptError {
    pub at_ms: i64,
    pub attempt: u32,
    pub class: ErrorClass,
    pub error: String,
}

/// GetDeadLetter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetterDetail {
    pub letter: DeadLetter,
    pub errors: Vec<AttemptError>,
}

impl TryFrom<pb::GetDeadLetterResponse> for DeadLetterDetail {
    type Error = String;
    fn try_from(r: pb::GetDeadLetterResponse) -> Result<Self, String> {
        Ok(Self {
            letter: r.dead_letter.ok_or("gatewayd sent no dead letter")?.into(),
            errors: r
                .errors
                .into_iter()
                .map(|e| AttemptError {
                    at_ms: e.at_ms,
                    attempt: e.attempt,
                    class: ErrorClass::from_pb(e.error_class),
                    error: e.error,
                })
                .collect(),
        })
    }
}

/// One node of a run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunNode {
    pub id: String,
    pub kind: String,
    pub state: NodeState,
    pub attempts: u32,
    pub started_at_ms: Option<i64>,
    pub finished_at_ms: Option<i64>,
    pub error: String,
}

/// A workflow run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Run {
    pub id: i64,
    pub workflow: String,
    pub state: RunState,
    pub trigger: String,
    pub error: String,
    pub created_at_ms: Option<i64>,
    pub finished_at_ms: Option<i64>,
    pub nodes: Vec<RunNode>,
}

impl From<pb::Run> for Run {
    fn from(r: pb::Run) -> Self {
        Self {
            id: r.id,
            workflow: r.workflow,
            state: RunState::from_pb(r.state),
            trigger: r.trigger,
            error: r.error,
            created_at_ms: time(r.created_at_ms),
            finished_at_ms: time(r.finished_at_ms),
            nodes: r
                .nodes
                .into_iter()
                .map(|n| RunNode {
                    id: n.id,
                    kind: n.kind,
                    state: NodeState::from_pb(n.state),
                    attempts: n.attempts,
                    started_at_ms: time(n.started_at_ms),
                    finished_at_ms: time(n.finished_at_ms),
                    error: n.error,
                })
                .collect(),
        }
    }
}

impl Filterable for Run {
    fn haystack(&self) -> String {
        format!("{} {} {}", self.id, self.workflow, self.state.name())
    }
}

/// One row of the Identities tab: a user and one of their addresses (None: no address).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub user_id: i64,
    pub address: Option<Address>,
}

impl Identity {
    /// One row per address (a user without addresses gets one row).
    pub fn rows(i: pb::Identity) -> Vec<Identity> {
        let addresses: Vec<Address> = i.addresses.iter().filter_map(Address::from_pb).collect();
        if addresses.is_empty() {
            return vec![Identity {
                user_id: i.user_id,
                address: None,
            }];
        }
        addresses
            .into_iter()
            .map(|a| Identity {
                user_id: i.user_id,
                address: Some(a),
            })
            .collect()
    }
}

impl Filterable for Identity {
    fn haystack(&self) -> String {
        format!(
            "user:{} {}",
            self.user_id,
            self.address
                .as_ref()
                .map(ToString::to_string)
                .unwrap_or_default()
        )
    }
}

/// An event of WatchEvents, reduced to what the console acts on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    pub at_ms: i64,
    /// Which tabs' data it changes.
    pub affects: Vec<Tab>,
    /// An error line for the Overview's "recent errors", when it is one.
    pub error: Option<String>,
    /// The stream fell behind: refresh everything.
    pub lagged: bool,
}

impl From<pb::WatchEventsResponse> for Event {
    fn from(r: pb::WatchEventsResponse) -> Self {
        use Tab::*;
        let ch = channel_cell;
        let (affects, error, lagged): (Vec<Tab>, Option<String>, bool) = match r.event {
            Some(E::MessageIn(_) | E::MessageOut(_)) => (vec![RateLimits], None, false),
            Some(E::SessionCreated(_) | E::SessionEvicted(_) | E::TurnCommitted(_)) => {
                (vec![Sessions], None, false)
            }
            Some(E::IdentityLinked(_) | E::IdentityUnlinked(_)) => {
                (vec![Identities, Sessions], None, false)
            }
            Some(E::DeliveryFailed(d)) => (
                vec![Channels],
                Some(format!(
                    "{} send failed (attempt {}): {}",
                    ch(&d.channel),
                    d.attempts,
                    d.error
                )),
                false,
            ),
            Some(E::DeadLettered(d)) => (
                vec![DeadLetters],
                Some(format!("{} dead letter: {}", ch(&d.channel), d.error)),
                false,
            ),
            Some(E::ChannelStateChanged(c)) => (
                vec![Channels],
                text(&c.error).map(|e| {
                    format!(
                        "{} {}: {e}",
                        ch(&c.channel),
                        ChannelState::from_pb(c.state).name()
                    )
                }),
                false,
            ),
            Some(E::RateLimited(r)) => (
                vec![RateLimits],
                Some(format!(
                    "{} rate limited chat {} for {}",
                    ch(&r.channel),
                    r.chat_id,
                    duration(r.pause_ms.div_ceil(1000))
                )),
                false,
            ),
            Some(E::DeadLettersRetried(_)) => (vec![DeadLetters], None, false),
            Some(E::RunChanged(r)) => (
                vec![Runs],
                text(&r.error).map(|e| format!("run {} ({}) failed: {e}", r.run_id, r.workflow)),
                false,
            ),
            Some(E::NodeChanged(_)) => (vec![Runs], None, false),
            Some(E::Lagged(_)) => (Tab::ALL.to_vec(), None, true),
            None => (Vec::new(), None, false),
        };
        Self {
            at_ms: r.at_ms,
            affects,
            error,
            lagged,
        }
    }
}

/// A pending pairing request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pairing {
    pub code: String,
    pub channel: String,
    pub sender_id: String,
    pub display_name: String,
    pub first_seen_ms: i64,
    pub expires_at_ms: i64,
    pub kept_messages: u32,
}

impl From<pb::PairingRequest> for Pairing {
    fn from(p: pb::PairingRequest) -> Self {
        Self {
            code: p.code,
            channel: p.channel,
            sender_id: p.sender_id,
            display_name: p.display_name,
            first_seen_ms: p.first_seen_ms,
            expires_at_ms: p.expires_at_ms,
            kept_messages: p.kept_messages,
        }
    }
}

impl Filterable for Pairing {
    fn haystack(&self) -> String {
        format!(
            "{} {}:{} {}",
            self.code, self.channel, self.sender_id, self.display_name
        )
    }
}
