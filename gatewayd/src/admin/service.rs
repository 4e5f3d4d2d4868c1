//! The `gateway.admin.v1.Admin` service: a thin layer that checks each request, asks the core,
//! and converts the answer. All state lives in the core's services; nothing is cached here.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Instant;

use gateway_proto::admin as pb;
use gateway_proto::admin::admin_server::Admin;
use tokio::sync::{broadcast, mpsc};
use tokio_stream::Stream;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

mod args;
mod cluster;
mod people;
mod workflows;

use super::convert;
use crate::delivery::Delivery;
use crate::events::EventBus;
use crate::identity::Identity;
use crate::message::SessionKey;
use crate::session::router::Router;
use crate::store::{SessionFilter, SharedStore, StorageStats, StoreError, StoredSession};
use crate::workflow::run::Engine;
use args::*;

/// Events buffered per watcher before it is marked lagged.
const WATCH_BUFFER: usize = 256;

/// What the service reads and steers.
#[derive(Clone)]
pub struct AdminState {
    /// The store.
    pub store: SharedStore,
    /// The events bus.
    pub events: EventBus,
    /// Identities.
    pub identity: Arc<Identity>,
    /// Sessions.
    pub router: Arc<Router>,
    /// Delivery.
    pub delivery: Delivery,
    /// When the gateway started.
    pub started_at: Instant,
    /// `gateway.max_sessions`.
    pub max_sessions: usize,
    /// The agent provider's name.
    pub provider: &'static str,
    /// The workflow engine, if workflows are enabled.
    pub workflows: Option<Arc<Engine>>,
    /// Readiness and the faults since start.
    pub supervisor: Arc<crate::supervise::Supervisor>,
    /// Pairing requests, approvals and blocks.
    pub access: Arc<crate::access::Access>,
    /// Multi-instance mode, as configured.
    pub cluster: ClusterInfo,
}

/// What the admin API says of this gateway's place in a cluster (`[cluster]`).
#[derive(Debug, Clone, Default)]
pub struct ClusterInfo {
    /// `cluster.enabled`.
    pub enabled: bool,
    /// This instance's id (empty when not in a cluster).
    pub instance_id: String,
    /// `cluster.partitions`.
    pub partitions: u32,
    /// `cluster.lease_ttl`.
    pub lease_ttl: std::time::Duration,
}

impl ClusterInfo {
    /// From the `[cluster]` table; `instance_id` is the id this process runs under.
    pub fn new(config: &crate::config::ClusterConfig, instance_id: String) -> Self {
        if !config.enabled {
            return Self::default();
        }
        Self {
            enabled: true,
            instance_id,
            partitions: config.partitions,
            lease_ttl: config.lease_ttl.get(),
        }
    }
}

/// The service.
pub struct AdminService {
    state: AdminState,
}

impl AdminService {
    /// A service over `state`.
    pub fn new(state: AdminState) -> Self {
        Self { state }
    }
}

impl AdminService {
    #[allow(clippy::result_large_err)]
    fn engine(&self) -> Result<&Arc<Engine>, Status> {
        self.state
            .workflows
            .as_ref()
            .ok_or_else(|| Status::failed_precondition("workflows are not enabled on this gateway"))
    }

    fn resident(&self, key: &SessionKey) -> Option<usize> {
        self.state.router.peek(key).map(|r| r.in_flight)
    }

    async fn session_info(&self, key: &SessionKey) -> Result<Option<pb::SessionInfo>, Status> {
        let stored = self.state.store.session(key).await.map_err(store_status)?;
        let resident = self.resident(key);
        Ok(match (stored, resident) {
            (Some(s), r) => Some(convert::session(&s, r)),
            (None, Some(r)) => Some(convert::session(
                &unstored(key, &self.state.router),
                Some(r),
            )),
            (None, None) => None,
        })
    }
}

/// A resident session with no committed turn yet.
fn unstored(key: &SessionKey, router: &Router) -> StoredSession {
    let active = router.peek(key).map_or(0, |r| r.last_active_ms);
    StoredSession {
        key: key.clone(),
        created_at_ms: active,
        last_active_ms: active,
        turns: 0,
        last_channel: match key {
            SessionKey::Group(c, _) => Some(*c),
            SessionKey::User(_) => None,
        },
    }
}

type EventStream = Pin<Box<dyn Stream<Item = Result<pb::WatchEventsResponse, Status>> + Send>>;

#[tonic::async_trait]
impl Admin for AdminService {
    async fn get_overview(
        &self,
        _: Request<pb::GetOverviewRequest>,
    ) -> Result<Response<pb::GetOverviewResponse>, Status> {
        let s = &self.state;
        // While the store does not answer, the overview still comes back: with the store's
        // error, and zeros for what only the store knows.
        let read = match crate::http::store_health(&s.store).await {
            Ok(()) => async {
                Ok::<_, StoreError>((
                    s.store.counts().await?,
                    s.store.count_sessions().await?,
                    s.store.storage().await?,
                ))
            }
            .await
            .map_err(|e| e.to_string()),
            Err(why) => Err(why),
        };
        let (store_health, ((inbox_pending, outbox_pending, dead), stored, storage)) = match read {
            Ok(read) => (Ok(()), read),
            Err(why) => (Err(why), ((0, 0, 0), 0, StorageStats::default())),
        };
        let traffic = s.events.traffic();
        let (rate_in, rate_out) = traffic.rates();
        let faults = s.supervisor.faults();
        let (cache_entries, cache_capacity) = s.identity.cache_stats();
        Ok(Response::new(pb::GetOverviewResponse {
            version: env!("CARGO_PKG_VERSION").to_owned(),
            uptime_seconds: s.started_at.elapsed().as_secs(),
            messages_in: traffic.messages_in(),
            messages_out: traffic.messages_out(),
            rate_in_per_second: rate_in,
            rate_out_per_second: rate_out,
            sessions_resident: s.router.resident_count() as u64,
            sessions_capacity: s.max_sessions as u64,
            sessions_stored: stored,
            channels: s
                .delivery
                .channels()
                .iter()
                .map(convert::channel_info)
                .collect(),
            dead_letters: dead,
            outbox_pending,
            inbox_pending,
            agent_provider: s.provider.to_owned(),
            ready: faults.iter().all(|f| f.restartable) && store_health.is_ok(),
            faults: faults.iter().map(convert::fault).collect(),
            database_bytes: storage.database_bytes,
            table_rows: convert::table_rows(&storage),
            identity_cache_entries: convert::count(cache_entries),
            identity_cache_capacity: convert::count(cache_capacity),
            store_backend: s.store.backend().to_owned(),
            store_ok: store_health.is_ok(),
            store_error: store_health.err().unwrap_or_default(),
        }))
    }

    async fn list_sessions(
        &self,
        request: Request<pb::ListSessionsRequest>,
    ) -> Result<Response<pb::ListSessionsResponse>, Status> {
        let r = request.into_inner();
        let limit = limit(r.limit);
        let channel = channel_arg(&r.channel)?;
        let user = (r.user_id != 0).then_some(r.user_id);
        let after = (!r.cursor.is_empty()).then_some(r.cursor.as_str());
        if let Some(a) = after {
            key_arg(a)?;
        }
        let sessions = if r.resident_only {
            let mut resident: Vec<_> = self
                .state
                .router
                .resident()
                .into_iter()
                .filter(|s| after.is_none_or(|a| s.key.to_string().as_str() > a))
                .filter(|s| user.is_none_or(|u| s.key == SessionKey::User(u)))
                .collect();
            resident.sort_by_cached_key(|s| s.key.to_string());
            let mut out = Vec::new();
            for s in resident {
                let Some(info) = self.session_info(&s.key).await? else {
                    continue;
                };
                if channel.is_none_or(|c| info.last_channel == c.as_str()) {
                    out.push(info);
                }
                if out.len() > limit {
                    break;
                }
            }
            out
        } else {
            let filter = SessionFilter { user, channel };
            let stored = self
                .state
                .store
                .list_sessions(&filter, after, limit + 1)
                .await
                .map_err(store_status)?;
            stored
                .iter()
                .map(|s| convert::session(s, self.resident(&s.key)))
                .collect()
        };
        let (sessions, next_cursor) = page(sessions, limit, |s| s.key.clone());
        Ok(Response::new(pb::ListSessionsResponse {
            sessions,
            next_cursor,
        }))
    }

    async fn get_session(
        &self,
        request: Request<pb::GetSessionRequest>,
    ) -> Result<Response<pb::GetSessionResponse>, Status> {
        let r = request.into_inner();
        let key = key_arg(&r.key)?;
        let session = self
            .session_info(&key)
            .await?
            .ok_or_else(|| Status::not_found(format!("no session {key}")))?;
        let tail = if r.tail == 0 { 20 } else { r.tail.min(500) } as usize;
        let transcript = self
            .state
            .store
            .history_traced(&key, tail)
            .await
            .map_err(store_status)?;
        Ok(Response::new(pb::GetSessionResponse {
            session: Some(session),
            transcript: transcript.iter().map(convert::traced_entry).collect(),
        }))
    }

    async fn evict_session(
        &self,
        request: Request<pb::EvictSessionRequest>,
    ) -> Result<Response<pb::EvictSessionResponse>, Status> {
        let key = key_arg(&request.into_inner().key)?;
        if self.session_info(&key).await?.is_none() {
            return Err(Status::not_found(format!("no session {key}")));
        }
        let evicted = self
            .state
            .router
            .evict(&key)
            .map_err(Status::failed_precondition)?;
        Ok(Response::new(pb::EvictSessionResponse { evicted }))
    }

    async fn list_identities(
        &self,
        request: Request<pb::ListIdentitiesRequest>,
    ) -> Result<Response<pb::ListIdentitiesResponse>, Status> {
        people::list_identities(self, request).await
    }

    async fn get_identity(
        &self,
        request: Request<pb::GetIdentityRequest>,
    ) -> Result<Response<pb::GetIdentityResponse>, Status> {
        people::get_identity(self, request).await
    }

    async fn link_identities(
        &self,
        request: Request<pb::LinkIdentitiesRequest>,
    ) -> Result<Response<pb::LinkIdentitiesResponse>, Status> {
        people::link_identities(self, request).await
    }

    async fn unlink_address(
        &self,
        request: Request<pb::UnlinkAddressRequest>,
    ) -> Result<Response<pb::UnlinkAddressResponse>, Status> {
        people::unlink_address(self, request).await
    }

    async fn list_channels(
        &self,
        _: Request<pb::ListChannelsRequest>,
    ) -> Result<Response<pb::ListChannelsResponse>, Status> {
        Ok(Response::new(pb::ListChannelsResponse {
            channels: self
                .state
                .delivery
                .channels()
                .iter()
                .map(convert::channel_info)
                .collect(),
        }))
    }

    async fn reconnect_channel(
        &self,
        request: Request<pb::ReconnectChannelRequest>,
    ) -> Result<Response<pb::ReconnectChannelResponse>, Status> {
        let channel = channel_arg(&request.into_inner().channel)?
            .ok_or_else(|| Status::invalid_argument("channel is required"))?;
        self.state
            .delivery
            .reconnect(channel)
            .await
            .map_err(Status::not_found)?;
        let info = self
            .state
            .delivery
            .channels()
            .into_iter()
            .find(|c| c.channel == channel)
            .map(|c| convert::channel_info(&c));
        Ok(Response::new(pb::ReconnectChannelResponse {
            channel: info,
        }))
    }

    async fn list_rate_limits(
        &self,
        request: Request<pb::ListRateLimitsRequest>,
    ) -> Result<Response<pb::ListRateLimitsResponse>, Status> {
        let hottest = match request.into_inner().hottest {
            0 => 10,
            n => n.min(MAX_LIMIT),
        } as usize;
        Ok(Response::new(pb::ListRateLimitsResponse {
            channels: self
                .state
                .delivery
                .rate_limits(hottest)
                .iter()
                .map(convert::rate_limits)
                .collect(),
        }))
    }

    async fn get_cluster(
        &self,
        _: Request<pb::GetClusterRequest>,
    ) -> Result<Response<pb::GetClusterReply>, Status> {
        self.cluster().await.map(Response::new)
    }

    async fn list_dead_letters(
        &self,
        request: Request<pb::ListDeadLettersRequest>,
    ) -> Result<Response<pb::ListDeadLettersResponse>, Status> {
        let r = request.into_inner();
        let limit = limit(r.limit);
        let letters = self
            .state
            .delivery
            .list_dead(channel_arg(&r.channel)?, id_cursor(&r.cursor)?, limit + 1)
            .await
            .map_err(store_status)?;
        let (letters, next_cursor) = page(letters, limit, |d| d.message.id.to_string());
        let total = self.state.store.counts().await.map_err(store_status)?.2;
        Ok(Response::new(pb::ListDeadLettersResponse {
            dead_letters: letters.iter().map(convert::dead_letter).collect(),
            next_cursor,
            total,
        }))
    }

    async fn get_dead_letter(
        &self,
        request: Request<pb::GetDeadLetterRequest>,
    ) -> Result<Response<pb::GetDeadLetterResponse>, Status> {
        let id = request.into_inner().id;
        let (letter, errors) = self
            .state
            .delivery
            .show_dead(id)
            .await
            .map_err(store_status)?;
        Ok(Response::new(pb::GetDeadLetterResponse {
            dead_letter: Some(convert::dead_letter(&letter)),
            errors: errors.iter().map(convert::attempt).collect(),
        }))
    }

    async fn retry_dead_letters(
        &self,
        request: Request<pb::RetryDeadLettersRequest>,
    ) -> Result<Response<pb::RetryDeadLettersResponse>, Status> {
        let selector = selector(request.into_inner().selector)?;
        let retried = self
            .state
            .delivery
            .retry_dead(&selector)
            .await
            .map_err(store_status)?;
        none_found(&selector, retried)?;
        Ok(Response::new(pb::RetryDeadLettersResponse { retried }))
    }

    async fn drop_dead_letters(
        &self,
        request: Request<pb::DropDeadLettersRequest>,
    ) -> Result<Response<pb::DropDeadLettersResponse>, Status> {
        let selector = selector(request.into_inner().selector)?;
        let dropped = self
            .state
            .delivery
            .drop_dead(&selector)
            .await
            .map_err(store_status)?;
        none_found(&selector, dropped)?;
        Ok(Response::new(pb::DropDeadLettersResponse { dropped }))
    }

    async fn list_workflows(
        &self,
        request: Request<pb::ListWorkflowsRequest>,
    ) -> Result<Response<pb::ListWorkflowsResponse>, Status> {
        workflows::list_workflows(self, request).await
    }

    async fn validate_workflows(
        &self,
        request: Request<pb::ValidateWorkflowsRequest>,
    ) -> Result<Response<pb::ValidateWorkflowsResponse>, Status> {
        workflows::validate_workflows(self, request).await
    }

    async fn run_workflow(
        &self,
        request: Request<pb::RunWorkflowRequest>,
    ) -> Result<Response<pb::RunWorkflowResponse>, Status> {
        workflows::run_workflow(self, request).await
    }

    async fn list_runs(
        &self,
        request: Request<pb::ListRunsRequest>,
    ) -> Result<Response<pb::ListRunsResponse>, Status> {
        workflows::list_runs(self, request).await
    }

    async fn get_run(
        &self,
        request: Request<pb::GetRunRequest>,
    ) -> Result<Response<pb::GetRunResponse>, Status> {
        workflows::get_run(self, request).await
    }

    type WatchEventsStream = EventStream;

    async fn watch_events(
        &self,
        _: Request<pb::WatchEventsRequest>,
    ) -> Result<Response<Self::WatchEventsStream>, Status> {
        let mut events = self.state.events.subscribe();
        let (tx, rx) = mpsc::channel(WATCH_BUFFER);
        tokio::spawn(async move {
            loop {
                let item = match events.recv().await {
                    Ok(e) => convert::event(&e),
                    Err(broadcast::error::RecvError::Lagged(missed)) => convert::lagged(missed),
                    Err(broadcast::error::RecvError::Closed) => return,
                };
                // A full buffer means the watcher is slow: it waits here while the bus moves
                // on, and the next receive reports what it missed as `lagged`.
                if tx.send(Ok(item)).await.is_err() {
                    return;
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn list_inbox(
        &self,
        request: Request<pb::ListInboxRequest>,
    ) -> Result<Response<pb::ListInboxResponse>, Status> {
        let r = request.into_inner();
        let limit = limit(r.limit);
        let filter = crate::store::InboxFilter {
            channel: non_empty(r.channel),
            chat_id: non_empty(r.chat_id),
            done: convert::inbox_state_from(r.state).map_err(Status::invalid_argument)?,
        };
        let rows = self
            .state
            .store
            .list_inbox(&filter, id_cursor(&r.cursor)?, limit + 1)
            .await
            .map_err(store_status)?;
        let (rows, next_cursor) = page(rows, limit, |row| row.id.to_string());
        Ok(Response::new(pb::ListInboxResponse {
            entries: rows.iter().map(convert::inbox_entry).collect(),
            next_cursor,
        }))
    }

    async fn list_outbox(
        &self,
        request: Request<pb::ListOutboxRequest>,
    ) -> Result<Response<pb::ListOutboxResponse>, Status> {
        let r = request.into_inner();
        let limit = limit(r.limit);
        let filter = crate::store::OutboxFilter {
            channel: non_empty(r.channel),
            chat_id: non_empty(r.chat_id),
            status: convert::outbox_status_from(r.status).map_err(Status::invalid_argument)?,
        };
        let rows = self
            .state
            .store
            .list_outbox(&filter, id_cursor(&r.cursor)?, limit + 1, r.include_errors)
            .await
            .map_err(store_status)?;
        let (rows, next_cursor) = page(rows, limit, |row| row.id.to_string());
        Ok(Response::new(pb::ListOutboxResponse {
            entries: rows.iter().map(convert::outbox_entry).collect(),
            next_cursor,
        }))
    }

    async fn list_usage(
        &self,
        request: Request<pb::ListUsageRequest>,
    ) -> Result<Response<pb::ListUsageResponse>, Status> {
        people::list_usage(self, request).await
    }

    async fn set_budget(
        &self,
        request: Request<pb::SetBudgetRequest>,
    ) -> Result<Response<pb::SetBudgetResponse>, Status> {
        people::set_budget(self, request).await
    }
    async fn list_pairing(
        &self,
        request: Request<pb::ListPairingRequest>,
    ) -> Result<Response<pb::ListPairingResponse>, Status> {
        people::list_pairing(self, request).await
    }

    async fn approve_pairing(
        &self,
        request: Request<pb::ApprovePairingRequest>,
    ) -> Result<Response<pb::ApprovePairingResponse>, Status> {
        people::approve_pairing(self, request).await
    }

    async fn deny_pairing(
        &self,
        request: Request<pb::DenyPairingRequest>,
    ) -> Result<Response<pb::DenyPairingResponse>, Status> {
        people::deny_pairing(self, request).await
    }

    async fn block_user(
        &self,
        request: Request<pb::BlockUserRequest>,
    ) -> Result<Response<pb::BlockUserResponse>, Status> {
        people::block_user(self, request).await
    }

    async fn unblock_user(
        &self,
        request: Request<pb::UnblockUserRequest>,
    ) -> Result<Response<pb::UnblockUserResponse>, Status> {
        people::unblock_user(self, request).await
    }
}
