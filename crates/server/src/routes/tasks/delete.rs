//! `DELETE {base}/{requestId}`: cancel. A queued task never runs; a running one stops at
//! its next step; either way it ends `failed` with code `cancelled`. Answers the status
//! after the cancel (a running task shows `pending` until its worker stops).

use axum::extract::{Path, State};
use axum::response::Response;
use sie_store::CancelOutcome;

use super::task_status;
use crate::auth::Authorized;
use crate::{ApiError, AppState};

/// Cancel a task
///
/// A queued task never runs; a running one stops at its next step. Either way it ends
/// `failed` with code `cancelled`; the answer is its status after the cancel (a running
/// task shows `pending` until its worker stops). Cancelling a finished task changes nothing.
#[utoipa::path(
    delete,
    path = "/{id}",
    context_path = crate::BASE,
    operation_id = "cancelTask",
    tag = "tasks",
    security(("api_key" = [])),
    params(crate::routes::openapi::OrgParam, crate::routes::openapi::TaskIdParam),
    responses(
        (status = 200, description = "The task's status after the cancel.", body = sie_api::answers::TaskStatus),
        (status = 401, response = crate::routes::openapi::Unauthorized),
        (status = 403, response = crate::routes::openapi::Forbidden),
        (status = 404, response = crate::routes::openapi::NotFound),
        (status = 429, response = crate::routes::openapi::TooManyRequests),
    ),
)]
pub async fn cancel(
    State(state): State<AppState>,
    Authorized { org, name }: Authorized,
    Path((_, id)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let metrics = state.metrics.clone();
    task_status(&state, org, &id, move |s, id, now| {
        match s.cancel(org, id, now)? {
            CancelOutcome::NotFound => Ok(None),
            outcome => {
                // A running task's cancel is counted when its worker reports it.
                if outcome == CancelOutcome::Cancelled {
                    metrics.queued_task_cancelled(&name);
                }
                s.get(org, id, now)
            }
        }
    })
    .await
}
