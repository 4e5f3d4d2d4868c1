//! `gatewayctl status`: the gateway at a glance (GetOverview) — version, uptime, traffic,
//! sessions, queues, readiness with the parts that panicked or failed, the store's backend and
//! whether it answers, and every channel's health. While the store does not answer, what only
//! the store knows is shown as unknown (`null` in JSON), not as zero.

use gateway_proto::admin as pb;
use serde::Serialize;

use crate::client::Api;
use crate::model::{ChannelInfo, Cluster, channels_table};
use crate::output::{Format, Out, ago, clean, duration, now_ms, truncate};

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
    sessions_stored: Option<u64>,
    inbox_pending: Option<u64>,
    outbox_pending: Option<u64>,
    dead_letters: Option<u64>,
    ready: bool,
    store_backend: String,
    store_ok: bool,
    store_error: Option<String>,
    faults: Vec<FaultInfo>,
    identity_cache_entries: u64,
    identity_cache_capacity: u64,
    channels: Vec<ChannelInfo>,
    database_bytes: Option<u64>,
    table_rows: Vec<TableRows>,
    /// Whether the gateway runs as a member of a cluster.
    cluster_enabled: bool,
    /// Its instance id in the cluster (null when not in one).
    instance_id: Option<String>,
    /// Live instances of the cluster (null when not in one).
    cluster_live_instances: Option<usize>,
    /// Partitions no live instance holds (null when not in one).
    unowned_partitions: Option<u32>,
}

/// The rows of one database table, as last counted by the gateway.
#[derive(Debug, Serialize)]
pub struct TableRows {
    table: String,
    rows: u64,
}

/// A part that panicked or failed, in the JSON document of `status`.
#[derive(Debug, Serialize)]
pub struct FaultInfo {
    component: String,
    message: String,
    at_unix_ms: i64,
    restartable: bool,
    restarts: u64,
}

impl FaultInfo {
    fn from_pb(f: pb::Fault) -> Self {
        Self {
            component: f.component,
            message: f.message,
            at_unix_ms: f.at_unix_ms,
            restartable: f.restartable,
            restarts: f.restarts,
        }
    }
}

impl Status {
    fn from_pb(o: pb::GetOverviewResponse) -> Self {
        // A daemon that names no backend predates the store fields: its store answered.
        let store_ok = o.store_ok || o.store_backend.is_empty();
        let known = |n: u64| store_ok.then_some(n);
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
            sessions_stored: known(o.sessions_stored),
            inbox_pending: known(o.inbox_pending),
            outbox_pending: known(o.outbox_pending),
            dead_letters: known(o.dead_letters),
            ready: o.ready,
            store_backend: o.store_backend,
            store_ok,
            store_error: (!store_ok).then_some(o.store_error),
            faults: o.faults.into_iter().map(FaultInfo::from_pb).collect(),
            database_bytes: known(o.database_bytes),
            table_rows: o
                .table_rows
                .into_iter()
                .map(|t| TableRows {
                    table: t.table,
                    rows: t.rows,
                })
                .collect(),
            identity_cache_entries: o.identity_cache_entries,
            identity_cache_capacity: o.identity_cache_capacity,
            cluster_enabled: false,
            instance_id: None,
            cluster_live_instances: None,
            unowned_partitions: None,
        }
    }

    /// Adds what the cluster view says, when the gateway is in a cluster.
    fn with_cluster(mut self, c: Option<&Cluster>) -> Self {
        if let Some(c) = c.filter(|c| c.enabled) {
            self.cluster_enabled = true;
            self.instance_id = c.instance_id.clone();
            self.cluster_live_instances = Some(c.instances.iter().filter(|i| i.live).count());
            self.unowned_partitions = Some(c.unowned_partitions);
        }
        self
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
    // A gateway without the cluster view (an older one), or whose database does not answer
    // it, is shown without the cluster line rather than failing the whole status.
    let cluster = api
        .client
        .get_cluster(pb::GetClusterRequest {})
        .await
        .ok()
        .map(|r| Cluster::from_pb(&r.into_inner()));
    let s = Status::from_pb(overview).with_cluster(cluster.as_ref());
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
        s.sessions_resident,
        s.sessions_capacity,
        or_unknown(s.sessions_stored)
    ))?;
    out.line(match (s.inbox_pending, s.outbox_pending, s.dead_letters) {
        (Some(inbox), Some(outbox), Some(dead)) => format!(
            "queues     {inbox} inbound pending, {outbox} replies pending, {dead} dead letter(s)"
        ),
        _ => "queues     unknown while the store does not answer".to_owned(),
    })?;
    let failed = s.faults.iter().any(|f| !f.restartable);
    out.line(if s.ready {
        "health     ready".to_owned()
    } else if failed {
        "health     NOT READY: a part failed and cannot be restarted; restart gatewayd".to_owned()
    } else {
        "health     NOT READY: the store does not answer".to_owned()
    })?;
    let backend = if s.store_backend.is_empty() {
        "unknown"
    } else {
        s.store_backend.as_str()
    };
    out.line(match &s.store_error {
        None => format!("store      {backend}, ok"),
        Some(e) => format!(
            "store      {backend}, UNAVAILABLE: {}",
            truncate(&clean(e), 200)
        ),
    })?;
    let now = now_ms();
    for f in &s.faults {
        let what = if f.restartable {
            format!("restarted {} time(s)", f.restarts)
        } else {
            "FAILED".to_owned()
        };
        out.line(format!(
            "  {}: {}, last {}: {}",
            f.component,
            what,
            ago(f.at_unix_ms, now),
            truncate(&clean(&f.message), 200)
        ))?;
    }
    match s.database_bytes {
        Some(n) => {
            out.line(format!(
                "database   {} on disk; rows as last counted:",
                bytes(n)
            ))?;
            table_rows(&out, &s.table_rows)?;
        }
        None => out.line("database   unknown while the store does not answer")?,
    }
    out.line(format!(
        "identity   {} cached address(es) of {}",
        s.identity_cache_entries, s.identity_cache_capacity
    ))?;
    if let Some(c) = cluster.as_ref().filter(|c| c.enabled) {
        out.line(format!("cluster    {}", c.summary()))?;
    }
    out.line("")?;
    out.table(&channels_table(&s.channels, now_ms()))
}

/// The rows per table, wrapped to 78 columns under the `database` line.
fn table_rows(out: &Out, rows: &[TableRows]) -> anyhow::Result<()> {
    if rows.is_empty() {
        out.line("           not counted yet")?;
    }
    let mut line = String::new();
    for t in rows {
        let item = format!("{} {}", t.table, t.rows);
        if !line.is_empty() && 11 + line.len() + 2 + item.len() > 78 {
            out.line(format!("           {line},"))?;
            line.clear();
        }
        if !line.is_empty() {
            line.push_str(", ");
        }
        line.push_str(&item);
    }
    if !line.is_empty() {
        out.line(format!("           {line}"))?;
    }
    Ok(())
}

/// A count the store gave, or `unknown`.
fn or_unknown(n: Option<u64>) -> String {
    n.map_or_else(|| "unknown".to_owned(), |n| n.to_string())
}

/// `1536` → `1.5 KiB`.
fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = n as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}
