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

use super::convert;
use crate::delivery::Delivery;
use crate::events::EventBus;
use crate::identity::Identity;
use crate::message::{ChannelKind, SessionKey};
use crate::session::router::Router;
use crate::store::{DeadSelector, SessionFilter, SharedStore, StoreError, StoredSession};
use crate::workflow::run::{Engine, StartError};

/// Default page size of list RPCs.
const DEFAULT_LIMIT: u32 = 100;
/// Largest page size of list RPCs.
const MAX_LIMIT: u32 = 1000;
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

fn store_status(e: StoreError) -> Status {
    match e {
        StoreError::NotFound(m) => Status::not_found(m),
        StoreError::Conflict(m) => Status::failed_precondition(m),
        StoreError::Closed => Status::unavailable("the gateway is shutting down"),
        StoreError::Database(m) => Status::internal(m),
        StoreError::Full(m) => Status::unavailable(format!("the disk is full: {m}")),
    }
}

fn limit(requested: u32) -> usize {
    (if requested == 0 {
        DEFAULT_LIMIT
    } else {
        requested.min(MAX_LIMIT)
    }) as usize
}

/// The channel a request names (`None`: empty, so unspecified or any); an unknown name is
/// INVALID_ARGUMENT with a message that names it.
fn channel_arg(name: &str) -> Result<Option<ChannelKind>, Status> {
    convert::channel_from(name).map_err(Status::invalid_argument)
}

fn key_arg(key: &str) -> Result<SessionKey, Status> {
    key.parse().map_err(Status::invalid_argument)
}

fn id_cursor(cursor: &str) -> Result<Option<i64>, Status> {
    if cursor.is_empty() {
        return Ok(None);
    }
    cursor.parse().map(Some).map_err(|_| {
        Status::invalid_argument(format!(
            "bad cursor `{cursor}`; pass the next_cursor of the previous page"
        ))
    })
}

/// Splits one extra row off a page fetched with `limit + 1` and returns the next cursor.
fn page<T>(mut rows: Vec<T>, limit: usize, cursor_of: impl Fn(&T) -> String) -> (Vec<T>, String) {
    if rows.len() > limit {
        rows.truncate(limit);
        let next = rows.last().map(&cursor_of).unwrap_or_default();
        (rows, next)
    } else {
        (rows, String::new())
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
        let (inbox_pending, outbox_pending, dead) = s.store.counts().await.map_err(store_status)?;
        let stored = s.store.count_sessions().await.map_err(store_status)?;
        let storage = s.store.storage().await.map_err(store_status)?;
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
            ready: faults.iter().all(|f| f.restartable),
            faults: faults.iter().map(convert::fault).collect(),
            database_bytes: storage.database_bytes,
            table_rows: convert::table_rows(&storage),
            identity_cache_entries: convert::count(cache_entries),
            identity_cache_capacity: convert::count(cache_capacity),
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
        let r = request.into_inner();
        let limit = limit(r.limit);
        let users = self
            .state
            .store
            .list_users(channel_arg(&r.channel)?, id_cursor(&r.cursor)?, limit + 1)
            .await
            .map_err(store_status)?;
        let (users, next_cursor) = page(users, limit, |u| u.id.to_string());
        Ok(Response::new(pb::ListIdentitiesResponse {
            identities: users.iter().map(convert::identity).collect(),
            next_cursor,
        }))
    }

    async fn get_identity(
        &self,
        request: Request<pb::GetIdentityRequest>,
    ) -> Result<Response<pb::GetIdentityResponse>, Status> {
        let id = request.into_inner().user_id;
        let user = self.state.identity.user(id).await.map_err(store_status)?;
        Ok(Response::new(pb::GetIdentityResponse {
            identity: Some(convert::identity(&user)),
        }))
    }

    async fn link_identities(
        &self,
        request: Request<pb::LinkIdentitiesRequest>,
    ) -> Result<Response<pb::LinkIdentitiesResponse>, Status> {
        let r = request.into_inner();
        let keep = r.user_id;
        let s = &self.state;
        let merged = match r.other {
            Some(pb::link_identities_request::Other::MergeUserId(merge)) => {
                s.identity.link(keep, merge).await.map_err(store_status)?;
                merge
            }
            Some(pb::link_identities_request::Other::Address(a)) => {
                let address = convert::address_from(&a).map_err(Status::invalid_argument)?;
                s.identity
                    .attach(keep, &address)
                    .await
                    .map_err(store_status)?
            }
            None => {
                return Err(Status::invalid_argument(
                    "say what to link: merge_user_id or address",
                ));
            }
        };
        s.router.invalidate(&SessionKey::User(keep));
        s.router.invalidate(&SessionKey::User(merged));
        let user = s.identity.user(keep).await.map_err(store_status)?;
        Ok(Response::new(pb::LinkIdentitiesResponse {
            identity: Some(convert::identity(&user)),
        }))
    }

    async fn unlink_address(
        &self,
        request: Request<pb::UnlinkAddressRequest>,
    ) -> Result<Response<pb::UnlinkAddressResponse>, Status> {
        let a = request
            .into_inner()
            .address
            .ok_or_else(|| Status::invalid_argument("address is required"))?;
        let address = convert::address_from(&a).map_err(Status::invalid_argument)?;
        let (previous, new_user) = self
            .state
            .identity
            .unlink(&address)
            .await
            .map_err(store_status)?;
        self.state.router.invalidate(&SessionKey::User(previous));
        Ok(Response::new(pb::UnlinkAddressResponse {
            previous_user_id: previous,
            new_user_id: new_user,
        }))
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
        _: Request<pb::ListWorkflowsRequest>,
    ) -> Result<Response<pb::ListWorkflowsResponse>, Status> {
        let engine = self.engine()?;
        Ok(Response::new(pb::ListWorkflowsResponse {
            workflows: engine.list().iter().map(|w| convert::workflow(w)).collect(),
            errors: engine
                .errors()
                .iter()
                .map(convert::workflow_error)
                .collect(),
        }))
    }

    async fn validate_workflows(
        &self,
        _: Request<pb::ValidateWorkflowsRequest>,
    ) -> Result<Response<pb::ValidateWorkflowsResponse>, Status> {
        let (valid, errors) = self.engine()?.check();
        Ok(Response::new(pb::ValidateWorkflowsResponse {
            valid: valid.iter().map(|w| w.name.clone()).collect(),
            errors: errors.iter().map(convert::workflow_error).collect(),
        }))
    }

    async fn run_workflow(
        &self,
        request: Request<pb::RunWorkflowRequest>,
    ) -> Result<Response<pb::RunWorkflowResponse>, Status> {
        let r = request.into_inner();
        let inputs: serde_json::Value = if r.inputs_json.trim().is_empty() {
            serde_json::Value::Null
        } else {
            serde_json::from_str(&r.inputs_json)
                .map_err(|e| Status::invalid_argument(format!("inputs_json is not JSON: {e}")))?
        };
        let engine = self.engine()?;
        let origin = match r.to.trim() {
            "" => None,
            to => {
                let (channel, chat_id) = crate::workflow::run::parse_chat_target(to)
                    .map_err(|e| Status::invalid_argument(format!("to: {e}")))?;
                crate::channels::registry::kind(channel.as_str())
                    .map_err(|e| Status::invalid_argument(format!("to: {e}")))?;
                if !engine.can_send_to(channel) {
                    return Err(Status::invalid_argument(format!(
                        "to: channel `{channel}` is not enabled on this gateway"
                    )));
                }
                Some(crate::store::RunOrigin {
                    channel,
                    chat_id,
                    user: None,
                    trigger: "operator".to_owned(),
                })
            }
        };
        let run_id = engine
            .start(&r.name, inputs, origin)
            .await
            .map_err(|e| match e {
                StartError::Unknown(_) => Status::not_found(e.to_string()),
                StartError::Inputs(m) => Status::invalid_argument(m),
                StartError::NoOrigin { .. } => Status::failed_precondition(e.to_string()),
                StartError::Store(s) => store_status(s),
            })?;
        Ok(Response::new(pb::RunWorkflowResponse { run_id }))
    }

    async fn list_runs(
        &self,
        request: Request<pb::ListRunsRequest>,
    ) -> Result<Response<pb::ListRunsResponse>, Status> {
        let r = request.into_inner();
        let limit = limit(r.limit);
        let workflow = (!r.workflow.is_empty()).then_some(r.workflow.as_str());
        let runs = self
            .state
            .store
            .run_list(workflow, id_cursor(&r.cursor)?, limit + 1)
            .await
            .map_err(store_status)?;
        let (runs, next_cursor) = page(runs, limit, |run| run.id.to_string());
        Ok(Response::new(pb::ListRunsResponse {
            runs: runs
                .iter()
                .map(|run| convert::run(run, None, false))
                .collect(),
            next_cursor,
        }))
    }

    async fn get_run(
        &self,
        request: Request<pb::GetRunRequest>,
    ) -> Result<Response<pb::GetRunResponse>, Status> {
        let id = request.into_inner().id;
        let run = self.state.store.run_get(id).await.map_err(store_status)?;
        let workflow = self
            .state
            .workflows
            .as_ref()
            .and_then(|e| e.get(&run.workflow));
        Ok(Response::new(pb::GetRunResponse {
            run: Some(convert::run(&run, workflow.as_deref(), true)),
        }))
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
        let r = request.into_inner();
        let budgets = &self.state.router.context().budgets;
        let now = crate::message::now_ms();
        let users = self
            .state
            .store
            .usage_totals(r.user_id, r.since_ms)
            .await
            .map_err(store_status)?;
        let global = budgets.global_today(now).await.map_err(store_status)?;
        let config = budgets.config();
        Ok(Response::new(pb::ListUsageResponse {
            users: users.iter().map(convert::user_usage).collect(),
            global_tokens_today: global,
            global_tokens_per_day: config.global_tokens_per_day,
            user_tokens_per_day: config.user_tokens_per_day,
            user_turns_per_minute: config.user_turns_per_minute,
            day_start_ms: crate::budget::window::day_start(now),
        }))
    }

    async fn set_budget(
        &self,
        request: Request<pb::SetBudgetRequest>,
    ) -> Result<Response<pb::SetBudgetResponse>, Status> {
        let r = request.into_inner();
        let check = |name: &str, value: Option<u64>, range: crate::config::Range| match value {
            Some(v) => range
                .check(crate::config::Number::Int(v))
                .map_err(|e| Status::invalid_argument(format!("{name} {e}"))),
            None => Ok(()),
        };
        check(
            "tokens_per_day",
            r.tokens_per_day,
            crate::config::ints(1, crate::config::MAX_BUDGET_TOKENS),
        )?;
        check(
            "turns_per_minute",
            r.turns_per_minute,
            crate::config::ints(1, crate::config::MAX_BUDGET_TURNS),
        )?;
        let store = &self.state.store;
        // The user must exist: a mistyped id would otherwise set a budget nobody has.
        store.user(r.user_id).await.map_err(store_status)?;
        let mut limits = if r.clear {
            crate::store::BudgetOverride::default()
        } else {
            store
                .budget_override(r.user_id)
                .await
                .map_err(store_status)?
        };
        if r.tokens_per_day.is_some() {
            limits.tokens_per_day = r.tokens_per_day;
        }
        if r.turns_per_minute.is_some() {
            limits.turns_per_minute = r.turns_per_minute;
        }
        store
            .set_budget_override(r.user_id, limits)
            .await
            .map_err(store_status)?;
        Ok(Response::new(pb::SetBudgetResponse {
            tokens_per_day: limits.tokens_per_day,
            turns_per_minute: limits.turns_per_minute,
        }))
    }
    async fn list_pairing(
        &self,
        _request: Request<pb::ListPairingRequest>,
    ) -> Result<Response<pb::ListPairingResponse>, Status> {
        let requests = self.state.access.pending().await.map_err(store_status)?;
        Ok(Response::new(pb::ListPairingResponse {
            requests: requests.iter().map(convert::pairing).collect(),
        }))
    }

    async fn approve_pairing(
        &self,
        request: Request<pb::ApprovePairingRequest>,
    ) -> Result<Response<pb::ApprovePairingResponse>, Status> {
        let code = request.into_inner().code;
        let s = &self.state;
        let (approved, kept) = s
            .access
            .approve(&code, &s.identity)
            .await
            .map_err(store_status)?;
        let user_id = s
            .identity
            .resolve(&crate::message::Address {
                channel: approved.channel,
                sender_id: approved.sender_id.clone(),
            })
            .await
            .map_err(store_status)?;
        let mut answered = 0u32;
        for row in kept {
            match s.router.route(row.inbox_id, row.message).await {
                Ok(_) => answered += 1,
                Err(e) => {
                    tracing::error!(message = "Cannot route a kept message after approval; it stays pending and is answered at next start.", inbox_id = row.inbox_id, error = %e);
                }
            }
        }
        Ok(Response::new(pb::ApprovePairingResponse {
            request: Some(convert::pairing(&approved)),
            user_id,
            answered,
        }))
    }

    async fn deny_pairing(
        &self,
        request: Request<pb::DenyPairingRequest>,
    ) -> Result<Response<pb::DenyPairingResponse>, Status> {
        let code = request.into_inner().code;
        let denied = self.state.access.deny(&code).await.map_err(store_status)?;
        Ok(Response::new(pb::DenyPairingResponse {
            request: Some(convert::pairing(&denied)),
        }))
    }

    async fn block_user(
        &self,
        request: Request<pb::BlockUserRequest>,
    ) -> Result<Response<pb::BlockUserResponse>, Status> {
        let user = request.into_inner().user_id;
        self.state
            .access
            .set_blocked(user, true)
            .await
            .map_err(store_status)?;
        Ok(Response::new(pb::BlockUserResponse {}))
    }

    async fn unblock_user(
        &self,
        request: Request<pb::UnblockUserRequest>,
    ) -> Result<Response<pb::UnblockUserResponse>, Status> {
        let user = request.into_inner().user_id;
        self.state
            .access
            .set_blocked(user, false)
            .await
            .map_err(store_status)?;
        Ok(Response::new(pb::UnblockUserResponse {}))
    }
}

/// A request's string filter: `None` when empty (any).
fn non_empty(s: String) -> Option<String> {
    (!s.is_empty()).then_some(s)
}

fn selector(s: Option<pb::DeadLetterSelector>) -> Result<DeadSelector, Status> {
    use pb::dead_letter_selector::Selector;
    match s.and_then(|s| s.selector) {
        Some(Selector::Ids(ids)) if !ids.ids.is_empty() => Ok(DeadSelector::Ids(ids.ids)),
        Some(Selector::Channel(c)) => {
            let channel =
                channel_arg(&c)?.ok_or_else(|| Status::invalid_argument("channel is required"))?;
            Ok(DeadSelector::Channel {
                channel,
                classes: None,
            })
        }
        _ => Err(Status::invalid_argument(
            "select dead letters by ids or by channel",
        )),
    }
}

fn none_found(selector: &DeadSelector, count: u64) -> Result<(), Status> {
    match selector {
        DeadSelector::Ids(ids) if count == 0 => {
            let ids: Vec<String> = ids.iter().map(ToString::to_string).collect();
            Err(Status::not_found(format!(
                "no dead letter {}",
                ids.join(", ")
            )))
        }
        _ => Ok(()),
    }
}
