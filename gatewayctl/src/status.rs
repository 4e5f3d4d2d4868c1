//! `gatewayctl status`: the gateway at a glance (GetOverview) — version, uptime, traffic,
//! sessions, queues and every channel's health.

use gateway_proto::admin as pb;
use serde::Serialize;

use crate::client::Api;
use crate::model::{ChannelInfo, channels_table};
use crate::output::{Format, Out, duration, now_ms};

/// The JSON document of `status`.
#[derive(Debug, Serialize)]
pub struct Status {
    version: String,
    agent_provider: String,
    uptime_seconds: u64,
    messages_in: u64,
    messages_out: u64,
    rate_in_per_second: f64,
    rate_out_per_second: f64,
    sessions_resident: u64,
    sessions_capacity: u64,
    sessions_stored: u64,
    inbox_pending: u64,
    outbox_pending: u64,
    dead_letters: u64,
    identity_cache_entries: u64,
    identity_cache_capacity: u64,
    channels: Vec<ChannelInfo>,
}

impl Status {
    fn from_pb(o: pb::GetOverviewResponse) -> Self {
        Self {
            channels: o.channels.iter().map(ChannelInfo::from_pb).collect(),
            version: o.version,
            agent_provider: o.agent_provider,
            uptime_seconds: o.uptime_seconds,
            messages_in: o.messages_in,
            messages_out: o.messages_out,
            rate_in_per_second: o.rate_in_per_second,
            rate_out_per_second: o.rate_out_per_second,
            sessions_resident: o.sessions_resident,
            sessions_capacity: o.sessions_capacity,
            sessions_stored: o.sessions_stored,
            inbox_pending: o.inbox_pending,
            outbox_pending: o.outbox_pending,
            dead_letters: o.dead_letters,
            identity_cache_entries: o.identity_cache_entries,
            identity_cache_capacity: o.identity_cache_capacity,
        }
    }
}

/// Runs `status`.
pub async fn run(mut api: Api, format: Format) -> anyhow::Result<()> {
    let overview = api
        .client
        .get_overview(pb::GetOverviewRequest {})
        .await
        .map_err(|s| api.error(s))?
        .into_inner();
    let s = Status::from_pb(overview);
    let out = Out;
    if format == Format::Json {
        return out.json(&s);
    }
    out.line(format!(
        "gatewayd {}, agent {}, up {}",
        s.version,
        s.agent_provider,
        duration(s.uptime_seconds)
    ))?;
    out.line(format!(
        "messages   {} in ({:.2}/s), {} out ({:.2}/s)",
        s.messages_in, s.rate_in_per_second, s.messages_out, s.rate_out_per_second
    ))?;
    out.line(format!(
        "sessions   {} resident of {}, {} stored",
        s.sessions_resident, s.sessions_capacity, s.sessions_stored
    ))?;
    out.line(format!(
        "queues     {} inbound pending, {} replies pending, {} dead letter(s)",
        s.inbox_pending, s.outbox_pending, s.dead_letters
    ))?;
    out.line(format!(
        "identity   {} cached address(es) of {}",
        s.identity_cache_entries, s.identity_cache_capacity
    ))?;
    out.line("")?;
    out.table(&channels_table(&s.channels, now_ms()))
}
