//! The admin RPCs about people: identities (list, show, link, unlink), who may talk to the agent
//! (pairing requests, approvals, blocks) and what they spend (usage, per-user budgets).

use gateway_proto::admin as pb;
use tonic::{Request, Response, Status};

use super::AdminService;
use super::args::*;
use crate::admin::convert;
use crate::message::SessionKey;

pub(super) async fn list_identities(
    svc: &AdminService,
    request: Request<pb::ListIdentitiesRequest>,
) -> Result<Response<pb::ListIdentitiesResponse>, Status> {
    let r = request.into_inner();
    let limit = limit(r.limit);
    let users = svc
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

pub(super) async fn get_identity(
    svc: &AdminService,
    request: Request<pb::GetIdentityRequest>,
) -> Result<Response<pb::GetIdentityResponse>, Status> {
    let id = request.into_inner().user_id;
    let user = svc.state.identity.user(id).await.map_err(store_status)?;
    Ok(Response::new(pb::GetIdentityResponse {
        identity: Some(convert::identity(&user)),
    }))
}

pub(super) async fn link_identities(
    svc: &AdminService,
    request: Request<pb::LinkIdentitiesRequest>,
) -> Result<Response<pb::LinkIdentitiesResponse>, Status> {
    let r = request.into_inner();
    let keep = r.user_id;
    let s = &svc.state;
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

pub(super) async fn unlink_address(
    svc: &AdminService,
    request: Request<pb::UnlinkAddressRequest>,
) -> Result<Response<pb::UnlinkAddressResponse>, Status> {
    let a = request
        .into_inner()
        .address
        .ok_or_else(|| Status::invalid_argument("address is required"))?;
    let address = convert::address_from(&a).map_err(Status::invalid_argument)?;
    let (previous, new_user) = svc
        .state
        .identity
        .unlink(&address)
        .await
        .map_err(store_status)?;
    svc.state.router.invalidate(&SessionKey::User(previous));
    Ok(Response::new(pb::UnlinkAddressResponse {
        previous_user_id: previous,
        new_user_id: new_user,
    }))
}

pub(super) async fn list_usage(
    svc: &AdminService,
    request: Request<pb::ListUsageRequest>,
) -> Result<Response<pb::ListUsageResponse>, Status> {
    let r = request.into_inner();
    let budgets = &svc.state.router.context().budgets;
    let now = crate::message::now_ms();
    let users = svc
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

pub(super) async fn set_budget(
    svc: &AdminService,
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
    let store = &svc.state.store;
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

pub(super) async fn list_pairing(
    svc: &AdminService,
    _request: Request<pb::ListPairingRequest>,
) -> Result<Response<pb::ListPairingResponse>, Status> {
    let requests = svc.state.access.pending().await.map_err(store_status)?;
    Ok(Response::new(pb::ListPairingResponse {
        requests: requests.iter().map(convert::pairing).collect(),
    }))
}

pub(super) async fn approve_pairing(
    svc: &AdminService,
    request: Request<pb::ApprovePairingRequest>,
) -> Result<Response<pb::ApprovePairingResponse>, Status> {
    let code = request.into_inner().code;
    let s = &svc.state;
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

pub(super) async fn deny_pairing(
    svc: &AdminService,
    request: Request<pb::DenyPairingRequest>,
) -> Result<Response<pb::DenyPairingResponse>, Status> {
    let code = request.into_inner().code;
    let denied = svc.state.access.deny(&code).await.map_err(store_status)?;
    Ok(Response::new(pb::DenyPairingResponse {
        request: Some(convert::pairing(&denied)),
    }))
}

pub(super) async fn block_user(
    svc: &AdminService,
    request: Request<pb::BlockUserRequest>,
) -> Result<Response<pb::BlockUserResponse>, Status> {
    let user = request.into_inner().user_id;
    svc.state
        .access
        .set_blocked(user, true)
        .await
        .map_err(store_status)?;
    Ok(Response::new(pb::BlockUserResponse {}))
}

pub(super) async fn unblock_user(
    svc: &AdminService,
    request: Request<pb::UnblockUserRequest>,
) -> Result<Response<pb::UnblockUserResponse>, Status> {
    let user = request.into_inner().user_id;
    svc.state
        .access
        .set_blocked(user, false)
        .await
        .map_err(store_status)?;
    Ok(Response::new(pb::UnblockUserResponse {}))
}
