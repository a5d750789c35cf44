//! `GET {base}/{requestId}`: the task's status and, once done, its outputs.

use axum::extract::{Path, State};
use axum::response::Response;

use super::task_status;
use crate::auth::Authorized;
use crate::{ApiError, AppState};

/// Read a task
///
/// Its status: `pending` (with `queuePosition` while queued, `progress` while running),
/// `success` with `modelOutputs`, or `failed` with an `error`.
#[utoipa::path(
    get,
    path = "/{id}",
    context_path = crate::BASE,
    operation_id = "getTask",
    tag = "tasks",
    security(("api_key" = [])),
    params(crate::routes::openapi::OrgParam, crate::routes::openapi::TaskIdParam),
    responses(
        (status = 200, description = "Where the task stands.", body = sie_api::answers::TaskStatus),
        (status = 401, response = crate::routes::openapi::Unauthorized),
        (status = 403, response = crate::routes::openapi::Forbidden),
        (status = 404, response = crate::routes::openapi::NotFound),
        (status = 429, response = crate::routes::openapi::TooManyRequests),
    ),
)]
pub async fn get(
    State(state): State<AppState>,
    Authorized { org, .. }: Authorized,
    Path((_, id)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    task_status(&state, org, &id, move |s, id, now| s.get(org, id, now)).await
}
