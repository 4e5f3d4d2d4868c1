//! Which instance holds an open WebChat socket for which chat (`webchat_sockets`), for the
//! cluster's reply relay.
//!
//! A row is `(chat_id, instance_id)`: the instance holds at least one socket of that chat. It is
//! written when the instance's first socket of the chat opens and deleted when its last one
//! closes; an instance clears its own rows when it starts (a killed run leaves them behind).
//! Lookups ignore rows of instances whose heartbeat is older than the given age, so a dead
//! instance's rows are never relayed to.

use std::time::Duration;

use super::{PostgresStore, col, db, to_i64};
use crate::store::StoreError;
use crate::store::cluster::SocketHolder;

impl PostgresStore {
    pub(super) async fn record_socket_opened(
        &self,
        chat_id: &str,
        me: &str,
    ) -> Result<(), StoreError> {
        let client = self.client().await?;
        client
            .execute(
                "INSERT INTO webchat_sockets (chat_id, instance_id, opened_at)
                 VALUES ($1, $2, gw_now_ms())
                 ON CONFLICT (chat_id, instance_id) DO UPDATE SET opened_at = excluded.opened_at",
                &[&chat_id, &me],
            )
            .await
            .map_err(db)?;
        Ok(())
    }

    pub(super) async fn record_socket_closed(
        &self,
        chat_id: &str,
        me: &str,
    ) -> Result<(), StoreError> {
        let client = self.client().await?;
        client
            .execute(
                "DELETE FROM webchat_sockets WHERE chat_id = $1 AND instance_id = $2",
                &[&chat_id, &me],
            )
            .await
            .map_err(db)?;
        Ok(())
    }

    pub(super) async fn clear_sockets_of(&self, me: &str) -> Result<u64, StoreError> {
        let client = self.client().await?;
        client
            .execute("DELETE FROM webchat_sockets WHERE instance_id = $1", &[&me])
            .await
            .map_err(db)
    }

    pub(super) async fn socket_holders_of(
        &self,
        chat_id: &str,
        except: &str,
        alive_within: Duration,
    ) -> Result<Vec<SocketHolder>, StoreError> {
        let client = self.client().await?;
        let rows = client
            .query(
                "SELECT s.instance_id, i.advertise_url FROM webchat_sockets s
                 JOIN cluster_instances i ON i.instance_id = s.instance_id
                 WHERE s.chat_id = $1 AND s.instance_id <> $2
                   AND i.advertise_url IS NOT NULL
                   AND i.heartbeat_at > gw_now_ms() - $3
                 ORDER BY s.opened_at DESC",
                &[&chat_id, &except, &to_i64(alive_within.as_millis())],
            )
            .await
            .map_err(db)?;
        rows.iter()
            .map(|r| {
                Ok(SocketHolder {
                    instance_id: col(r, 0)?,
                    advertise_url: col(r, 1)?,
                })
            })
            .collect()
    }
}
