//! `gatewayctl cluster`: the instances of the cluster the gateway belongs to (GetCluster) —
//! each one's age, last heartbeat, state (live, leaving, dead), the partitions and other leases
//! it holds — and how many partitions no one holds. Ages come from the database server's clock,
//! so every instance answers alike.

use gateway_proto::admin as pb;

use crate::client::Api;
use crate::model::{Cluster, cluster_table};
use crate::output::{Format, Out};

/// Runs `cluster`.
pub async fn run(mut api: Api, format: Format) -> anyhow::Result<()> {
    let r = api
        .client
        .get_cluster(pb::GetClusterRequest {})
        .await
        .map_err(|s| api.error(s))?
        .into_inner();
    let cluster = Cluster::from_pb(&r);
    let out = Out;
    if format == Format::Json {
        return out.json(&cluster);
    }
    out.line(cluster.summary())?;
    if !cluster.enabled {
        return Ok(());
    }
    if cluster.instances.is_empty() {
        return out.line("no instance has a membership row yet");
    }
    out.line("")?;
    out.table(&cluster_table(&cluster))
}
