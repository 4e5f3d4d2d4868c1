//! The vocabulary several commands share, in gatewayctl's own types: channels and addresses
//! (as command-line values and as JSON), channel health, error classes, and the states of
//! workflow runs and their nodes. Channels arrive as names ("webchat", "telegram", …) and
//! stay free strings: gatewayctl lists none of its own, so a new channel needs no change
//! here. Proto enums arrive as numbers; here they become lowercase names such as
//! "connected", "retryable" or "skipped", so the JSON output stays stable whatever the
//! proto's numbering.

use std::fmt;
use std::str::FromStr;

use gateway_proto::admin as pb;
use serde::Serialize;

use crate::output::{Table, ago, text, time};

/// A channel, named as the gateway names it (`webchat`, `http`, `telegram`, …), on the
/// command line and in JSON. Which channels exist is the gateway's business: gatewayctl passes
/// a name on and prints the names it receives, and the gateway refuses one it does not know.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct Channel(String);

impl Channel {
    /// The name used on the command line, in JSON and by the gateway.
    pub fn name(&self) -> &str {
        &self.0
    }

    /// The name as the admin API carries it.
    pub fn to_pb(&self) -> String {
        self.0.clone()
    }

    /// The channel the admin API names; `None` for the empty string (not set).
    pub fn from_pb(name: &str) -> Option<Channel> {
        (!name.is_empty()).then(|| Channel(name.to_owned()))
    }
}

impl FromStr for Channel {
    type Err = String;

    /// Any non-empty name without spaces or colons; the gateway checks that it knows it.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.is_empty() {
            return Err("the channel name is empty".to_owned());
        }
        if s.chars()
            .any(|c| c == ':' || c.is_whitespace() || c.is_control())
        {
            return Err(format!("`{s}` is not a channel name"));
        }
        Ok(Channel(s.to_owned()))
    }
}

impl fmt::Display for Channel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The admin API's form of an optional channel filter (empty: any).
pub fn channel_filter(c: Option<&Channel>) -> String {
    c.map(Channel::to_pb).unwrap_or_default()
}

/// A channel's name for a table, "-" when unset.
pub fn channel_cell(name: &str) -> String {
    if name.is_empty() {
        "-".to_owned()
    } else {
        name.to_owned()
    }
}

/// An optional channel's name for a table, `unset` when there is none.
pub fn channel_or<'a>(c: Option<&'a Channel>, unset: &'a str) -> &'a str {
    c.map_or(unset, Channel::name)
}

/// Where a person can be reached: `CHANNEL:SENDER_ID`, e.g. `http:alice`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Address {
    /// The channel.
    pub channel: Channel,
    /// The platform's id of the sender.
    pub sender_id: String,
}

impl FromStr for Address {
    type Err = String;

    /// Parses `CHANNEL:SENDER_ID`; the sender id is everything after the first colon (it may
    /// hold colons itself).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (channel, sender) = s
            .split_once(':')
            .ok_or_else(|| format!("expected CHANNEL:SENDER_ID, e.g. http:alice; got `{s}`"))?;
        if channel.is_empty() {
            return Err(format!(
                "the channel before `:{sender}` is empty; expected CHANNEL:SENDER_ID, e.g. \
                 http:alice"
            ));
        }
        let channel: Channel = channel.parse()?;
        if sender.is_empty() {
            return Err(format!(
                "the sender id after `{channel}:` is empty",
                channel = channel.name()
            ));
        }
        Ok(Address {
            channel,
            sender_id: sender.to_owned(),
        })
    }
}

impl fmt::Display for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.channel.name(), self.sender_id)
    }
}

impl Address {
    /// The proto address.
    pub fn to_pb(&self) -> pb::Address {
        pb::Address {
            channel: self.channel.to_pb(),
            sender_id: self.sender_id.clone(),
        }
    }

    /// An address from the proto; `None` when it names no channel.
    pub fn from_pb(a: &pb::Address) -> Option<Address> {
        Some(Address {
            channel: Channel::from_pb(&a.channel)?,
            sender_id: a.sender_id.clone(),
        })
    }
}

/// A channel's health.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ChannelState {
    /// Not reported (or unknown to this build).
    Unspecified,
    /// Not yet connected.
    Starting,
    /// Working.
    Connected,
    /// Failing; trying again.
    Reconnecting,
    /// Credentials refused; sends held until reconnected.
    ReauthNeeded,
    /// Failing for a while; probed periodically.
    Down,
}

impl ChannelState {
    /// The state of a proto number.
    pub fn from_pb(value: i32) -> ChannelState {
        match pb::ChannelState::try_from(value) {
            Ok(pb::ChannelState::Starting) => ChannelState::Starting,
            Ok(pb::ChannelState::Connected) => ChannelState::Connected,
            Ok(pb::ChannelState::Reconnecting) => ChannelState::Reconnecting,
            Ok(pb::ChannelState::ReauthNeeded) => ChannelState::ReauthNeeded,
            Ok(pb::ChannelState::Down) => ChannelState::Down,
            Ok(pb::ChannelState::Unspecified) | Err(_) => ChannelState::Unspecified,
        }
    }

    /// The name used in tables and JSON.
    pub fn name(self) -> &'static str {
        match self {
            ChannelState::Unspecified => "unspecified",
            ChannelState::Starting => "starting",
            ChannelState::Connected => "connected",
            ChannelState::Reconnecting => "reconnecting",
            ChannelState::ReauthNeeded => "reauth_needed",
            ChannelState::Down => "down",
        }
    }
}

/// Why a send failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorClass {
    /// Not reported (or unknown to this build).
    Unspecified,
    /// Might pass: network, 5xx, 429.
    Retryable,
    /// Credentials refused.
    Auth,
    /// Cannot pass: bad request, unknown chat.
    Permanent,
}

impl ErrorClass {
    /// The class of a proto number.
    pub fn from_pb(value: i32) -> ErrorClass {
        match pb::ErrorClass::try_from(value) {
            Ok(pb::ErrorClass::Retryable) => ErrorClass::Retryable,
            Ok(pb::ErrorClass::Auth) => ErrorClass::Auth,
            Ok(pb::ErrorClass::Permanent) => ErrorClass::Permanent,
            Ok(pb::ErrorClass::Unspecified) | Err(_) => ErrorClass::Unspecified,
        }
    }

    /// The name used in tables and JSON.
    pub fn name(self) -> &'static str {
        match self {
            ErrorClass::Unspecified => "unspecified",
            ErrorClass::Retryable => "retryable",
            ErrorClass::Auth => "auth",
            ErrorClass::Permanent => "permanent",
        }
    }
}

/// A workflow run's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RunState {
    /// Not reported (or unknown to this build).
    Unspecified,
    /// Not finished.
    Running,
    /// Every node finished or was skipped.
    Succeeded,
    /// A node failed.
    Failed,
}

impl RunState {
    /// The state of a proto number.
    pub fn from_pb(value: i32) -> RunState {
        match pb::RunState::try_from(value) {
            Ok(pb::RunState::Running) => RunState::Running,
            Ok(pb::RunState::Succeeded) => RunState::Succeeded,
            Ok(pb::RunState::Failed) => RunState::Failed,
            Ok(pb::RunState::Unspecified) | Err(_) => RunState::Unspecified,
        }
    }

    /// The name used in tables and JSON.
    pub fn name(self) -> &'static str {
        match self {
            RunState::Unspecified => "unspecified",
            RunState::Running => "running",
            RunState::Succeeded => "succeeded",
            RunState::Failed => "failed",
        }
    }

    /// Whether the run is over (succeeded or failed).
    pub fn is_finished(self) -> bool {
        matches!(self, RunState::Succeeded | RunState::Failed)
    }
}

/// The state of one node within a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum NodeState {
    /// Not reported (or unknown to this build).
    Unspecified,
    /// Not started.
    Pending,
    /// Running.
    Running,
    /// Finished.
    Succeeded,
    /// Failed after its retries.
    Failed,
    /// On a branch not taken.
    Skipped,
}

impl NodeState {
    /// The state of a proto number.
    pub fn from_pb(value: i32) -> NodeState {
        match pb::NodeState::try_from(value) {
            Ok(pb::NodeState::Pending) => NodeState::Pending,
            Ok(pb::NodeState::Running) => NodeState::Running,
            Ok(pb::NodeState::Succeeded) => NodeState::Succeeded,
            Ok(pb::NodeState::Failed) => NodeState::Failed,
            Ok(pb::NodeState::Skipped) => NodeState::Skipped,
            Ok(pb::NodeState::Unspecified) | Err(_) => NodeState::Unspecified,
        }
    }

    /// The name used in tables and JSON.
    pub fn name(self) -> &'static str {
        match self {
            NodeState::Unspecified => "unspecified",
            NodeState::Pending => "pending",
            NodeState::Running => "running",
            NodeState::Succeeded => "succeeded",
            NodeState::Failed => "failed",
            NodeState::Skipped => "skipped",
        }
    }
}

/// A workflow dependency: run after `node`, and for a condition's branch only when it
/// yielded `when`. The proto writes it `id` or `id=true|false`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Edge {
    /// The upstream node.
    pub node: String,
    /// For an edge from a condition: the branch (`null` otherwise).
    pub when: Option<bool>,
}

impl Edge {
    /// Reads the proto's `id` or `id=true|false`.
    pub fn from_pb(text: &str) -> Edge {
        let branch = |when: bool| {
            let suffix = if when { "=true" } else { "=false" };
            text.strip_suffix(suffix).map(|node| Edge {
                node: node.to_owned(),
                when: Some(when),
            })
        };
        branch(true)
            .or_else(|| branch(false))
            .unwrap_or_else(|| Edge {
                node: text.to_owned(),
                when: None,
            })
    }
}

impl fmt::Display for Edge {
    /// `id`, or `id when=true` for a condition's branch.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.when {
            Some(when) => write!(f, "{} when={when}", self.node),
            None => f.write_str(&self.node),
        }
    }
}

/// One channel's health and counters (`status` and `channels`).
#[derive(Debug, Clone, Serialize)]
pub struct ChannelInfo {
    /// The channel; null if the server did not say.
    pub channel: Option<Channel>,
    /// Its health.
    pub state: ChannelState,
    /// When the state last changed.
    pub since_at_ms: Option<i64>,
    /// The last error, if any.
    pub last_error: Option<String>,
    /// Consecutive failed attempts (reconnecting only).
    pub reconnect_attempt: u32,
    /// When the next try is due (reconnecting only).
    pub next_attempt_at_ms: Option<i64>,
    /// Messages (chunks) sent.
    pub sent: u64,
    /// Failed send attempts.
    pub failed: u64,
    /// Reconnects requested.
    pub reconnects: u64,
}

impl ChannelInfo {
    /// From the proto.
    pub fn from_pb(c: &pb::ChannelInfo) -> Self {
        Self {
            channel: Channel::from_pb(&c.channel),
            state: ChannelState::from_pb(c.state),
            since_at_ms: time(c.since_ms),
            last_error: text(&c.last_error),
            reconnect_attempt: c.reconnect_attempt,
            next_attempt_at_ms: time(c.next_attempt_at_ms),
            sent: c.sent,
            failed: c.failed,
            reconnects: c.reconnects,
        }
    }
}

/// The channels table of `status` and `channels list`.
pub fn channels_table(channels: &[ChannelInfo], now: i64) -> Table {
    let mut t = Table::new(&[
        "CHANNEL",
        "STATE",
        "SINCE",
        "SENT",
        "FAILED",
        "RECONN",
        "LAST ERROR",
    ]);
    for c in channels {
        let state = match (c.state, c.next_attempt_at_ms) {
            (ChannelState::Reconnecting, Some(next)) => {
                format!("reconnecting #{} ({})", c.reconnect_attempt, ago(next, now))
            }
            (state, _) => state.name().to_owned(),
        };
        t.row(vec![
            channel_or(c.channel.as_ref(), "?").to_owned(),
            state,
            ago(c.since_at_ms.unwrap_or(0), now),
            c.sent.to_string(),
            c.failed.to_string(),
            c.reconnects.to_string(),
            c.last_error.clone().unwrap_or_default(),
        ]);
    }
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_parse_into_channel_and_sender() {
        let a: Address = "http:alice".parse().expect("valid");
        assert_eq!(a.channel.name(), "http");
        assert_eq!(a.sender_id, "alice");
        assert_eq!(a.to_string(), "http:alice");
        let b: Address = "webchat:abc:def".parse().expect("colons in the sender id");
        assert_eq!(
            (b.channel.name(), b.sender_id.as_str()),
            ("webchat", "abc:def")
        );
        assert_eq!(Address::from_pb(&b.to_pb()), Some(b));
    }

    #[test]
    fn bad_addresses_are_rejected_with_a_reason() {
        for (bad, reason) in [
            ("alice", "expected CHANNEL:SENDER_ID"),
            ("http:", "is empty"),
            (":bob", "the channel before `:bob` is empty"),
            ("", "expected CHANNEL:SENDER_ID"),
            ("my channel:bob", "`my channel` is not a channel name"),
        ] {
            let err = bad.parse::<Address>().expect_err(bad);
            assert!(err.contains(reason), "{bad:?}: {err}");
        }
    }

    #[test]
    fn any_channel_name_passes_through_for_the_gateway_to_judge() {
        // A channel this build has never heard of is just a name: the gateway decides.
        for name in ["webchat", "telegram", "smtp", "HTTP", "matrix-2"] {
            let c: Channel = name.parse().expect("a name");
            assert_eq!(c.name(), name);
            assert_eq!(Channel::from_pb(&c.to_pb()), Some(c.clone()));
            assert_eq!(serde_json::to_value(&c).expect("json"), name);
        }
        let a: Address = "smtp:bob".parse().expect("any channel name");
        assert_eq!(Address::from_pb(&a.to_pb()), Some(a));
        assert_eq!(Channel::from_pb(""), None);
        assert!("".parse::<Channel>().is_err());
        assert_eq!(channel_filter(None), "");
        assert_eq!(channel_cell(""), "-");
        assert_eq!(channel_cell("discord"), "discord");
    }

    #[test]
    fn proto_numbers_map_to_names_and_unknown_ones_do_not_panic() {
        assert_eq!(ChannelState::from_pb(99), ChannelState::Unspecified);
        assert_eq!(ErrorClass::from_pb(3), ErrorClass::Permanent);
        assert_eq!(RunState::from_pb(3), RunState::Failed);
        assert_eq!(RunState::from_pb(99), RunState::Unspecified);
        assert!(RunState::Succeeded.is_finished() && !RunState::Running.is_finished());
        assert_eq!(NodeState::from_pb(5), NodeState::Skipped);
        let branch = Edge::from_pb("is_urgent=true");
        assert_eq!(
            (branch.node.as_str(), branch.when),
            ("is_urgent", Some(true))
        );
        assert_eq!(branch.to_string(), "is_urgent when=true");
        assert_eq!(Edge::from_pb("a=false").when, Some(false));
        assert_eq!(Edge::from_pb("summary").to_string(), "summary");
        assert_eq!(
            serde_json::to_value(NodeState::Skipped).expect("json"),
            "skipped"
        );
        assert_eq!(
            serde_json::to_value(ChannelState::ReauthNeeded).expect("json"),
            "reauth_needed"
        );
    }
}

/// The cluster as `gatewayctl cluster` and the console's Cluster tab show it (GetCluster).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Cluster {
    /// Whether the gateway runs as a member of a cluster.
    pub enabled: bool,
    /// The id of the instance that answered; `None` when not in a cluster.
    pub instance_id: Option<String>,
    /// How many partitions sessions hash into.
    pub partitions: u32,
    /// How long a lease lasts unless renewed, in ms.
    pub lease_ttl_ms: u64,
    /// Every member, newest heartbeat first.
    pub instances: Vec<ClusterMember>,
    /// Partitions no live lease covers.
    pub unowned_partitions: u32,
}

/// One member of the cluster.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ClusterMember {
    pub instance_id: String,
    /// Since it joined, on the database server's clock.
    pub age_ms: u64,
    /// Since its last heartbeat, on the database server's clock.
    pub heartbeat_age_ms: u64,
    pub live: bool,
    pub leaving: bool,
    pub version: String,
    pub advertise_url: Option<String>,
    /// The partitions it holds, ascending.
    pub partitions: Vec<u32>,
    /// The other leases it holds, by name.
    pub leases: Vec<String>,
}

impl Cluster {
    /// From the admin API's answer.
    pub fn from_pb(r: &pb::GetClusterReply) -> Self {
        Self {
            enabled: r.enabled,
            instance_id: text(&r.instance_id),
            partitions: r.partitions,
            lease_ttl_ms: r.lease_ttl_ms,
            instances: r
                .instances
                .iter()
                .map(|i| ClusterMember {
                    instance_id: i.instance_id.clone(),
                    age_ms: u64::try_from(r.server_now_ms.saturating_sub(i.started_at_ms))
                        .unwrap_or(0),
                    heartbeat_age_ms: i.heartbeat_age_ms,
                    live: i.live,
                    leaving: i.leaving,
                    version: i.version.clone(),
                    advertise_url: text(&i.advertise_url),
                    partitions: i.partitions.clone(),
                    leases: i.leases.clone(),
                })
                .collect(),
            unowned_partitions: r.unowned_partitions,
        }
    }

    /// One line about the whole cluster.
    pub fn summary(&self) -> String {
        if !self.enabled {
            return "not in a cluster ([cluster] enabled = false)".to_owned();
        }
        let live = self.instances.iter().filter(|i| i.live).count();
        format!(
            "this instance {}; {live} live of {} instance(s); {} partitions, {} unowned; lease ttl {}",
            self.instance_id.as_deref().unwrap_or("?"),
            self.instances.len(),
            self.partitions,
            self.unowned_partitions,
            millis(self.lease_ttl_ms),
        )
    }
}

impl ClusterMember {
    /// `live`, `leaving` or `dead` (its heartbeat is older than the lease TTL).
    pub fn state(&self) -> &'static str {
        if self.leaving {
            "leaving"
        } else if self.live {
            "live"
        } else {
            "dead"
        }
    }

    /// Its partitions as a count and ranges, e.g. `12 (0-7,9,20-22)`; `-` for none.
    pub fn partitions_text(&self) -> String {
        if self.partitions.is_empty() {
            return "-".to_owned();
        }
        format!("{} ({})", self.partitions.len(), ranges(&self.partitions))
    }

    /// Its other leases, comma-separated; `-` for none.
    pub fn leases_text(&self) -> String {
        if self.leases.is_empty() {
            "-".to_owned()
        } else {
            self.leases.join(",")
        }
    }
}

/// Ascending numbers as ranges: `[0,1,2,5,7,8]` → `0-2,5,7-8`.
pub fn ranges(sorted: &[u32]) -> String {
    let mut out: Vec<String> = Vec::new();
    let mut i = 0;
    while let Some(&start) = sorted.get(i) {
        let mut end = start;
        while sorted.get(i + 1) == Some(&end.saturating_add(1)) && end < u32::MAX {
            end += 1;
            i += 1;
        }
        out.push(if end == start {
            start.to_string()
        } else {
            format!("{start}-{end}")
        });
        i += 1;
    }
    out.join(",")
}

/// A short span of ms: `350ms`, `2.5s`, else whole minutes and seconds (`4m 5s`).
pub fn millis(ms: u64) -> String {
    match ms {
        0..1000 => format!("{ms}ms"),
        1000..60_000 => format!("{:.1}s", ms as f64 / 1000.0),
        _ => crate::output::duration(ms / 1000),
    }
}

/// The members' table: INSTANCE, AGE, LAST HEARTBEAT, STATE, PARTITIONS, LEASES; the instance
/// that answered is marked with `*`.
pub fn cluster_table(c: &Cluster) -> Table {
    let mut t = Table::new(&[
        "INSTANCE",
        "AGE",
        "LAST HEARTBEAT",
        "STATE",
        "PARTITIONS",
        "LEASES",
    ])
    .wrap_last();
    for i in &c.instances {
        let me = c.instance_id.as_deref() == Some(i.instance_id.as_str());
        t.row(vec![
            if me {
                format!("{} *", i.instance_id)
            } else {
                i.instance_id.clone()
            },
            crate::output::duration(i.age_ms / 1000),
            format!("{} ago", millis(i.heartbeat_age_ms)),
            i.state().to_owned(),
            i.partitions_text(),
            i.leases_text(),
        ]);
    }
    t
}
