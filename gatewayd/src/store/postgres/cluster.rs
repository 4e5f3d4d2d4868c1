//! Membership rows and leases in PostgreSQL ([`ClusterStore`]).
//!
//! Every expiry is computed by the server (`gw_now_ms()`, from `clock_timestamp()`, not the
//! transaction's start), so a lease expires at the same moment for every instance. Acquiring
//! takes only rows that are free or expired and raises their epoch in the same `UPDATE`; a
//! renewal extends only rows still held unexpired; a fenced write (see [`fence_check`]) locks
//! its lease row `FOR SHARE`, so a takeover's `UPDATE` waits for that write's transaction and
//! then sees it committed, or the write sees the lease gone and rolls back.

use std::time::Duration;

use async_trait::async_trait;

use super::cluster_work;
use super::{PostgresStore, col, db, to_i64};
use crate::message::{InboundMessage, OutboundMessage};
use crate::store::cluster::{
    ClusterStore, Fence, InstanceInfo, InstanceRow, LeaseHeld, LeaseRow, RateBucket, RateBucketRow,
    RateTake, SocketHolder,
};
use crate::store::{InboxOutcome, NewReply, PendingInbound, RunRecord, StoreError};

fn ms(d: Duration) -> i64 {
    to_i64(d.as_millis())
}

/// Checks `fence` inside `tx`, holding its row `FOR SHARE` until `tx` ends; `Fenced` if the
/// lease expired or changed hands.
pub(crate) async fn fence_check(
    tx: &impl deadpool_postgres::GenericClient,
    fence: &Fence,
) -> Result<(), StoreError> {
    let row = tx
        .query_opt(
            "SELECT 1 FROM leases WHERE name = $1 AND owner = $2 AND epoch = $3
               AND expires_at > gw_now_ms() FOR SHARE",
            &[&&*fence.lease, &&*fence.owner, &fence.epoch],
        )
        .await
        .map_err(db)?;
    if row.is_none() {
        return Err(StoreError::Fenced(format!(
            "lease {} is no longer held by {} at epoch {}",
            fence.lease, fence.owner, fence.epoch
        )));
    }
    Ok(())
}

fn held(row: &tokio_postgres::Row) -> Result<LeaseHeld, StoreError> {
    Ok(LeaseHeld {
        name: col(row, 0)?,
        epoch: col(row, 1)?,
        expires_at_ms: col(row, 2)?,
    })
}

#[async_trait]
impl ClusterStore for PostgresStore {
    async fn server_now_ms(&self) -> Result<i64, StoreError> {
        let client = self.client().await?;
        let row = client
            .query_one("SELECT gw_now_ms()", &[])
            .await
            .map_err(db)?;
        col(&row, 0)
    }

    async fn heartbeat(&self, me: &InstanceInfo) -> Result<(), StoreError> {
        let client = self.client().await?;
        let stmt = client
            .prepare_cached(
                "INSERT INTO cluster_instances
                     (instance_id, started_at, heartbeat_at, advertise_url, version, leaving)
                 VALUES ($1, gw_now_ms(), gw_now_ms(), $2, $3, FALSE)
                 ON CONFLICT (instance_id) DO UPDATE
                 SET heartbeat_at = gw_now_ms(), advertise_url = excluded.advertise_url,
                     version = excluded.version, leaving = FALSE",
            )
            .await
            .map_err(db)?;
        client
            .execute(&stmt, &[&me.instance_id, &me.advertise_url, &me.version])
            .await
            .map_err(db)?;
        Ok(())
    }

    async fn leave(&self, instance_id: &str) -> Result<(), StoreError> {
        let client = self.client().await?;
        client
            .execute(
                "UPDATE cluster_instances SET leaving = TRUE WHERE instance_id = $1",
                &[&instance_id],
            )
            .await
            .map_err(db)?;
        Ok(())
    }

    async fn instances(&self) -> Result<Vec<InstanceRow>, StoreError> {
        let client = self.client().await?;
        let rows = client
            .query(
                "SELECT instance_id, started_at, heartbeat_at, advertise_url, version, leaving
                 FROM cluster_instances ORDER BY heartbeat_at DESC, instance_id",
                &[],
            )
            .await
            .map_err(db)?;
        rows.iter()
            .map(|r| {
                Ok(InstanceRow {
                    instance_id: col(r, 0)?,
                    started_at_ms: col(r, 1)?,
                    heartbeat_at_ms: col(r, 2)?,
                    advertise_url: col(r, 3)?,
                    version: col(r, 4)?,
                    leaving: col(r, 5)?,
                })
            })
            .collect()
    }

    async fn forget_instances(&self, older_than: Duration) -> Result<u64, StoreError> {
        let client = self.client().await?;
        client
            .execute(
                "DELETE FROM cluster_instances WHERE heartbeat_at < gw_now_ms() - $1",
                &[&ms(older_than)],
            )
            .await
            .map_err(db)
    }

    async fn lease_acquire(
        &self,
        names: &[String],
        me: &str,
        ttl: Duration,
    ) -> Result<Vec<LeaseHeld>, StoreError> {
        if names.is_empty() {
            return Ok(Vec::new());
        }
        let client = self.client().await?;
        client
            .execute(
                "INSERT INTO leases (name) SELECT unnest($1::TEXT[]) ON CONFLICT (name) DO NOTHING",
                &[&names],
            )
            .await
            .map_err(db)?;
        let rows = client
            .query(
                "UPDATE leases SET owner = $2, epoch = epoch + 1,
                        expires_at = gw_now_ms() + $3, acquired_at = gw_now_ms()
                 WHERE name = ANY($1) AND (owner IS NULL OR expires_at <= gw_now_ms())
                 RETURNING name, epoch, expires_at",
                &[&names, &me, &ms(ttl)],
            )
            .await
            .map_err(db)?;
        rows.iter().map(held).collect()
    }

    async fn lease_renew(
        &self,
        names: &[String],
        me: &str,
        ttl: Duration,
    ) -> Result<Vec<LeaseHeld>, StoreError> {
        if names.is_empty() {
            return Ok(Vec::new());
        }
        let client = self.client().await?;
        let rows = client
            .query(
                "UPDATE leases SET expires_at = gw_now_ms() + $3
                 WHERE name = ANY($1) AND owner = $2 AND expires_at > gw_now_ms()
                 RETURNING name, epoch, expires_at",
                &[&names, &me, &ms(ttl)],
            )
            .await
            .map_err(db)?;
        rows.iter().map(held).collect()
    }

    async fn lease_release(&self, names: &[String], me: &str) -> Result<(), StoreError> {
        if names.is_empty() {
            return Ok(());
        }
        let client = self.client().await?;
        client
            .execute(
                "UPDATE leases SET owner = NULL, expires_at = 0
                 WHERE name = ANY($1) AND owner = $2",
                &[&names, &me],
            )
            .await
            .map_err(db)?;
        Ok(())
    }

    async fn leases(&self) -> Result<Vec<LeaseRow>, StoreError> {
        let client = self.client().await?;
        let rows = client
            .query(
                "SELECT name, owner, epoch, expires_at, acquired_at FROM leases ORDER BY name",
                &[],
            )
            .await
            .map_err(db)?;
        rows.iter()
            .map(|r| {
                Ok(LeaseRow {
                    name: col(r, 0)?,
                    owner: col(r, 1)?,
                    epoch: col(r, 2)?,
                    expires_at_ms: col(r, 3)?,
                    acquired_at_ms: col(r, 4)?,
                })
            })
            .collect()
    }

    async fn fence_holds(&self, fence: &Fence) -> Result<bool, StoreError> {
        let client = self.client().await?;
        let row = client
            .query_opt(
                "SELECT 1 FROM leases WHERE name = $1 AND owner = $2 AND epoch = $3
                   AND expires_at > gw_now_ms()",
                &[&&*fence.lease, &&*fence.owner, &fence.epoch],
            )
            .await
            .map_err(db)?;
        Ok(row.is_some())
    }

    async fn lease_meta(&self, name: &str) -> Result<Option<String>, StoreError> {
        let client = self.client().await?;
        let row = client
            .query_opt("SELECT meta FROM leases WHERE name = $1", &[&name])
            .await
            .map_err(db)?;
        match row {
            Some(r) => col(&r, 0),
            None => Ok(None),
        }
    }

    fn set_pruning(&self, on: bool) {
        self.shared
            .pruning
            .store(on, std::sync::atomic::Ordering::Release);
    }

    async fn set_lease_meta(&self, fence: &Fence, meta: &str) -> Result<(), StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(db)?;
        fence_check(&tx, fence).await?;
        tx.execute(
            "UPDATE leases SET meta = $2 WHERE name = $1",
            &[&&*fence.lease, &meta],
        )
        .await
        .map_err(db)?;
        tx.commit().await.map_err(db)
    }

    async fn inbox_commit_in(
        &self,
        msg: &InboundMessage,
        partition: u32,
    ) -> Result<InboxOutcome, StoreError> {
        self.track(cluster_work::inbox_commit_in(self, msg, partition))
            .await
    }

    async fn inbox_pending_in(
        &self,
        partitions: &[u32],
        unassigned: bool,
    ) -> Result<Vec<(PendingInbound, Option<u32>)>, StoreError> {
        cluster_work::inbox_pending_in(self, partitions, unassigned).await
    }

    async fn inbox_move(&self, inbox_id: i64, partition: u32) -> Result<(), StoreError> {
        cluster_work::inbox_move(self, inbox_id, partition).await
    }

    async fn outbox_put_in(
        &self,
        reply: NewReply,
        partition: u32,
    ) -> Result<OutboundMessage, StoreError> {
        self.track(cluster_work::outbox_put_in(self, reply, partition))
            .await
    }

    async fn outbox_pending_in(
        &self,
        partitions: &[u32],
        unassigned: bool,
    ) -> Result<Vec<(OutboundMessage, Option<u32>)>, StoreError> {
        cluster_work::outbox_pending_in(self, partitions, unassigned).await
    }

    async fn run_set_partition(&self, run: i64, partition: u32) -> Result<(), StoreError> {
        cluster_work::run_set_partition(self, run, partition).await
    }

    async fn runs_unfinished_in(
        &self,
        partitions: &[u32],
        unassigned: bool,
    ) -> Result<Vec<RunRecord>, StoreError> {
        cluster_work::runs_unfinished_in(self, partitions, unassigned).await
    }

    async fn listen_inbox(&self) -> Result<tokio::sync::mpsc::Receiver<Option<u32>>, StoreError> {
        cluster_work::listen_inbox(self).await
    }

    async fn webchat_socket_opened(&self, chat_id: &str, me: &str) -> Result<(), StoreError> {
        self.record_socket_opened(chat_id, me).await
    }

    async fn webchat_socket_closed(&self, chat_id: &str, me: &str) -> Result<(), StoreError> {
        self.record_socket_closed(chat_id, me).await
    }

    async fn webchat_sockets_clear(&self, me: &str) -> Result<u64, StoreError> {
        self.clear_sockets_of(me).await
    }

    async fn webchat_socket_holders(
        &self,
        chat_id: &str,
        except: &str,
        alive_within: Duration,
    ) -> Result<Vec<SocketHolder>, StoreError> {
        self.socket_holders_of(chat_id, except, alive_within).await
    }

    async fn rate_take(&self, buckets: &[RateBucket]) -> Result<RateTake, StoreError> {
        super::rates::take(self, buckets).await
    }

    async fn rate_pause(&self, key: &str, pause_ms: i64) -> Result<i64, StoreError> {
        super::rates::pause(self, key, pause_ms).await
    }

    async fn rate_buckets(&self, keys: &[String]) -> Result<Vec<RateBucketRow>, StoreError> {
        super::rates::rows(self, keys).await
    }
}
