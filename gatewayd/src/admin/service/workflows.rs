//! The admin RPCs about workflows: the loaded definitions, their validation, starting a run, and
//! the runs with their node states.

use gateway_proto::admin as pb;
use tonic::{Request, Response, Status};

use super::AdminService;
use super::args::*;
use crate::admin::convert;
use crate::workflow::run::StartError;

pub(super) async fn list_workflows(
    svc: &AdminService,
    _: Request<pb::ListWorkflowsRequest>,
) -> Result<Response<pb::ListWorkflowsResponse>, Status> {
    let engine = svc.engine()?;
    Ok(Response::new(pb::ListWorkflowsResponse {
        workflows: engine.list().iter().map(|w| convert::workflow(w)).collect(),
        errors: engine
            .errors()
            .iter()
            .map(convert::workflow_error)
            .collect(),
    }))
}

pub(super) async fn validate_workflows(
    svc: &AdminService,
    _: Request<pb::ValidateWorkflowsRequest>,
) -> Result<Response<pb::ValidateWorkflowsResponse>, Status> {
    let (valid, errors) = svc.engine()?.check();
    Ok(Response::new(pb::ValidateWorkflowsResponse {
        valid: valid.iter().map(|w| w.name.clone()).collect(),
        errors: errors.iter().map(convert::workflow_error).collect(),
    }))
}

pub(super) async fn run_workflow(
    svc: &AdminService,
    request: Request<pb::RunWorkflowRequest>,
) -> Result<Response<pb::RunWorkflowResponse>, Status> {
    let r = request.into_inner();
    let inputs: serde_json::Value = if r.inputs_json.trim().is_empty() {
        serde_json::Value::Null
    } else {
        serde_json::from_str(&r.inputs_json)
            .map_err(|e| Status::invalid_argument(format!("inputs_json is not JSON: {e}")))?
    };
    let engine = svc.engine()?;
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

pub(super) async fn list_runs(
    svc: &AdminService,
    request: Request<pb::ListRunsRequest>,
) -> Result<Response<pb::ListRunsResponse>, Status> {
    let r = request.into_inner();
    let limit = limit(r.limit);
    let workflow = (!r.workflow.is_empty()).then_some(r.workflow.as_str());
    let runs = svc
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

pub(super) async fn get_run(
    svc: &AdminService,
    request: Request<pb::GetRunRequest>,
) -> Result<Response<pb::GetRunResponse>, Status> {
    let id = request.into_inner().id;
    let run = svc.state.store.run_get(id).await.map_err(store_status)?;
    let workflow = svc
        .state
        .workflows
        .as_ref()
        .and_then(|e| e.get(&run.workflow));
    Ok(Response::new(pb::GetRunResponse {
        run: Some(convert::run(&run, workflow.as_deref(), true)),
    }))
}
