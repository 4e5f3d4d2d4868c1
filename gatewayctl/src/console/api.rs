//! The one task that talks to gatewayd for the console. It connects (reusing
//! [`crate::client::Api`], so errors read as they do in the CLI), follows WatchEvents, carries
//! out the fetches and actions the event loop asks for, and sends everything back as
//! [`ApiUpdate`]s in console types. When the connection or the event stream breaks it reports
//! `Disconnected` with the delay before the next try and reconnects by itself, backing off
//! from 1 s to 10 s.
//!
//! **Invariant:** this task never touches the terminal or [`super::state::App`]; it ends when
//! the loop drops its end of either channel.

use std::time::Duration;

use gateway_proto::admin as pb;
use tokio::sync::mpsc;

use super::state::{
    Action, ApiUpdate, Data, DeadLetterDetail, Fetch, Identity, Letters, LinkOther, SESSION_PAGE,
    SessionDetail,
};
use crate::client::{Api, within};
use crate::model::ChannelInfo;

/// What the loop asks of this task.
#[derive(Debug)]
pub enum Request {
    Fetch(Fetch),
    Rpc(Action),
}

const FIRST_BACKOFF: Duration = Duration::from_secs(1);
const MAX_BACKOFF: Duration = Duration::from_secs(10);

/// Runs until `requests` closes or `updates` has no receiver.
pub async fn run(
    addr: String,
    token: Option<String>,
    mut requests: mpsc::Receiver<Request>,
    updates: mpsc::Sender<ApiUpdate>,
) {
    let mut backoff = FIRST_BACKOFF;
    loop {
        let error = match connect(&addr, token.as_deref()).await {
            Ok((mut api, mut stream)) => {
                backoff = FIRST_BACKOFF;
                if updates.send(ApiUpdate::Connected).await.is_err() {
                    return;
                }
                match serve(&mut api, &mut stream, &mut requests, &updates).await {
                    Some(error) => error,
                    None => return,
                }
            }
            Err(error) => error,
        };
        let retry_in_ms = i64::try_from(backoff.as_millis()).unwrap_or(i64::MAX);
        if updates
            .send(ApiUpdate::Disconnected { error, retry_in_ms })
            .await
            .is_err()
        {
            return;
        }
        // Wait out the backoff; requests meanwhile are refused, not queued.
        let sleep = tokio::time::sleep(backoff);
        tokio::pin!(sleep);
        loop {
            tokio::select! {
                () = &mut sleep => break,
                req = requests.recv() => match req {
                    None => return,
                    Some(Request::Rpc(_)) => {
                        let msg = "not connected to gatewayd; the action was not sent".to_owned();
                        if updates.send(ApiUpdate::ActionFailed(msg)).await.is_err() {
                            return;
                        }
                    }
                    Some(Request::Fetch(_)) => {}
                },
            }
        }
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

type Events = tonic::Streaming<pb::WatchEventsResponse>;

async fn connect(addr: &str, token: Option<&str>) -> Result<(Api, Events), String> {
    let mut api = Api::connect(addr, token, true)
        .await
        .map_err(|e| e.to_string())?;
    let stream = within(api.client.watch_events(pb::WatchEventsRequest {}))
        .await
        .map_err(|s| api.error(s).to_string())?
        .into_inner();
    Ok((api, stream))
}

/// Serves requests and forwards events until the stream breaks (returns why) or the loop
/// goes away (returns None).
async fn serve(
    api: &mut Api,
    stream: &mut Events,
    requests: &mut mpsc::Receiver<Request>,
    updates: &mpsc::Sender<ApiUpdate>,
) -> Option<String> {
    loop {
        let update = tokio::select! {
            req = requests.recv() => match req? {
                Request::Fetch(f) => match fetch(api, f).await {
                    Ok(data) => ApiUpdate::Data(data),
                    Err(e) => ApiUpdate::FetchFailed(e),
                },
                Request::Rpc(a) => match act(api, a).await {
                    Ok(done) => ApiUpdate::ActionDone(done),
                    Err(e) => ApiUpdate::ActionFailed(e),
                },
            },
            msg = stream.message() => match msg {
                Ok(Some(event)) => ApiUpdate::Event(event.into()),
                Ok(None) => return Some("gatewayd closed the event stream".to_owned()),
                Err(status) => return Some(api.stream_error(status).to_string()),
            },
        };
        updates.send(update).await.ok()?;
    }
}

async fn fetch(api: &mut Api, f: Fetch) -> Result<Data, String> {
    let c = &mut api.client;
    let result = match f {
        Fetch::Overview => {
            let mut overview: super::state::Overview =
                within(api.client.get_overview(pb::GetOverviewRequest {}))
                    .await
                    .map_err(|s| api.error(s).to_string())?
                    .into_inner()
                    .into();
            // Today's usage for its panel; a gatewayd without budgets leaves the panel empty.
            let now = crate::output::now_ms();
            overview.usage = within(api.client.list_usage(pb::ListUsageRequest {
                user_id: None,
                since_ms: now - now.rem_euclid(86_400_000),
            }))
            .await
            .ok()
            .map(|r| r.into_inner().into());
            return Ok(Data::Overview(Box::new(overview)));
        }
        Fetch::Sessions { after } => within(c.list_sessions(pb::ListSessionsRequest {
            cursor: after.clone().unwrap_or_default(),
            limit: SESSION_PAGE,
            ..Default::default()
        }))
        .await
        .map(|r| {
            let r = r.into_inner();
            Data::Sessions {
                after,
                sessions: r.sessions.into_iter().map(Into::into).collect(),
                next_cursor: crate::output::text(&r.next_cursor),
            }
        }),
        Fetch::Session { key } => {
            let r = within(c.get_session(pb::GetSessionRequest { key, tail: 50 }))
                .await
                .map_err(|s| api.error(s).to_string())?;
            return SessionDetail::try_from(r.into_inner()).map(Data::Session);
        }
        Fetch::Channels => within(c.list_channels(pb::ListChannelsRequest {}))
            .await
            .map(|r| {
                Data::Channels(
                    r.into_inner()
                        .channels
                        .iter()
                        .map(ChannelInfo::from_pb)
                        .collect(),
                )
            }),
        Fetch::RateLimits => within(c.list_rate_limits(pb::ListRateLimitsRequest { hottest: 5 }))
            .await
            .map(|r| {
                Data::RateLimits(
                    r.into_inner()
                        .channels
                        .into_iter()
                        .map(Into::into)
                        .collect(),
                )
            }),
        Fetch::DeadLetters => within(c.list_dead_letters(pb::ListDeadLettersRequest {
            limit: 1000,
            ..Default::default()
        }))
        .await
        .map(|r| {
            let r = r.into_inner();
            Data::DeadLetters {
                items: r.dead_letters.into_iter().map(Into::into).collect(),
                total: r.total,
            }
        }),
        Fetch::DeadLetter { id } => {
            let r = within(c.get_dead_letter(pb::GetDeadLetterRequest { id }))
                .await
                .map_err(|s| api.error(s).to_string())?;
            return DeadLetterDetail::try_from(r.into_inner()).map(Data::DeadLetter);
        }
        Fetch::Runs => within(c.list_runs(pb::ListRunsRequest {
            limit: 200,
            ..Default::default()
        }))
        .await
        .map(|r| Data::Runs(r.into_inner().runs.into_iter().map(Into::into).collect())),
        Fetch::Run { id } => {
            let r = within(c.get_run(pb::GetRunRequest { id }))
                .await
                .map_err(|s| api.error(s).to_string())?;
            return r
                .into_inner()
                .run
                .map(|r| Data::Run(r.into()))
                .ok_or_else(|| "gatewayd sent no run".to_owned());
        }
        Fetch::Identities => within(c.list_identities(pb::ListIdentitiesRequest {
            limit: 1000,
            ..Default::default()
        }))
        .await
        .map(|r| {
            Data::Identities(
                r.into_inner()
                    .identities
                    .into_iter()
                    .flat_map(Identity::rows)
                    .collect(),
            )
        }),
        Fetch::Pairing => within(c.list_pairing(pb::ListPairingRequest {}))
            .await
            .map(|r| {
                Data::Pairing(
                    r.into_inner()
                        .requests
                        .into_iter()
                        .map(Into::into)
                        .collect(),
                )
            }),
        Fetch::Cluster => within(c.get_cluster(pb::GetClusterRequest {}))
            .await
            .map(|r| Data::Cluster(crate::model::Cluster::from_pb(&r.into_inner()))),
    };
    result.map_err(|s| api.error(s).to_string())
}

/// Carries out an action; returns the sentence for the status line.
async fn act(api: &mut Api, a: Action) -> Result<String, String> {
    use pb::dead_letter_selector::Selector;
    let c = &mut api.client;
    let selector = |letters: Letters| pb::DeadLetterSelector {
        selector: Some(match letters {
            Letters::Ids(ids) => Selector::Ids(pb::Ids { ids }),
            Letters::Channel(c) => Selector::Channel(c.to_pb()),
        }),
    };
    let result = match a {
        Action::EvictSession { key } => {
            within(c.evict_session(pb::EvictSessionRequest { key: key.clone() }))
                .await
                .map(|r| {
                    if r.into_inner().evicted {
                        format!("evicted {key}")
                    } else {
                        format!("{key} was not resident")
                    }
                })
        }
        Action::RetryDeadLetters { letters } => {
            within(c.retry_dead_letters(pb::RetryDeadLettersRequest {
                selector: Some(selector(letters)),
            }))
            .await
            .map(|r| format!("retried {}", r.into_inner().retried))
        }
        Action::DropDeadLetters { letters } => {
            within(c.drop_dead_letters(pb::DropDeadLettersRequest {
                selector: Some(selector(letters)),
            }))
            .await
            .map(|r| format!("dropped {}", r.into_inner().dropped))
        }
        Action::ReconnectChannel { channel } => {
            within(c.reconnect_channel(pb::ReconnectChannelRequest {
                channel: channel.to_pb(),
            }))
            .await
            .map(|_| format!("reconnect of {} requested", channel.name()))
        }
        Action::UnlinkAddress { address } => within(c.unlink_address(pb::UnlinkAddressRequest {
            address: Some(address.to_pb()),
        }))
        .await
        .map(|r| {
            let r = r.into_inner();
            format!(
                "unlinked {address} from user {}; it is now user {}",
                r.previous_user_id, r.new_user_id
            )
        }),
        Action::LinkIdentities { user_id, other } => {
            use pb::link_identities_request::Other;
            let (other, done) = match other {
                LinkOther::User(merge) => (
                    Other::MergeUserId(merge),
                    format!("merged user {merge} into user {user_id}"),
                ),
                LinkOther::Address(a) => (
                    Other::Address(a.to_pb()),
                    format!("moved {a} to user {user_id}"),
                ),
            };
            within(c.link_identities(pb::LinkIdentitiesRequest {
                user_id,
                other: Some(other),
            }))
            .await
            .map(|_| done)
        }
        Action::RunWorkflow { name, inputs_json } => {
            within(c.run_workflow(pb::RunWorkflowRequest {
                name: name.clone(),
                inputs_json,
                to: String::new(),
            }))
            .await
            .map(|r| format!("started run {} of {name}", r.into_inner().run_id))
        }
        Action::BlockUser { user_id } => within(c.block_user(pb::BlockUserRequest { user_id }))
            .await
            .map(|_| format!("blocked user {user_id}")),
        Action::UnblockUser { user_id } => {
            within(c.unblock_user(pb::UnblockUserRequest { user_id }))
                .await
                .map(|_| format!("unblocked user {user_id}"))
        }
        Action::ApprovePairing { code } => {
            within(c.approve_pairing(pb::ApprovePairingRequest { code: code.clone() }))
                .await
                .map(|r| {
                    let r = r.into_inner();
                    format!(
                        "approved {code}: user {}; {} kept message(s) being answered",
                        r.user_id, r.answered
                    )
                })
        }
        Action::DenyPairing { code } => {
            within(c.deny_pairing(pb::DenyPairingRequest { code: code.clone() }))
                .await
                .map(|_| format!("denied {code}"))
        }
    };
    result.map_err(|s| api.error(s).to_string())
}
