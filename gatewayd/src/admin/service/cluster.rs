//! `GetCluster`: the cluster's members and what each holds, read from the shared database's
//! membership rows and leases at its own clock, so every instance answers the same. A gateway
//! that is not in a cluster answers `enabled = false` with no instances, never an error.

use gateway_proto::admin as pb;
use tonic::Status;

use super::args::store_status;
use super::{AdminService, convert};

impl AdminService {
    /// The reply of `GetCluster`.
    pub(super) async fn cluster(&self) -> Result<pb::GetClusterReply, Status> {
        let info = &self.state.cluster;
        let lease_ttl_ms = u64::try_from(info.lease_ttl.as_millis()).unwrap_or(u64::MAX);
        let shared = if info.enabled {
            self.state.store.clone().cluster_store()
        } else {
            None
        };
        let Some(shared) = shared else {
            return Ok(pb::GetClusterReply {
                enabled: false,
                instance_id: String::new(),
                partitions: info.partitions,
                lease_ttl_ms,
                instances: Vec::new(),
                unowned_partitions: 0,
                server_now_ms: 0,
            });
        };
        let instances = shared.instances().await.map_err(store_status)?;
        let leases = shared.leases().await.map_err(store_status)?;
        let now_ms = shared.server_now_ms().await.map_err(store_status)?;
        Ok(convert::cluster(
            &info.instance_id,
            info.partitions,
            lease_ttl_ms,
            &instances,
            &leases,
            now_ms,
        ))
    }
}
