//! `GET {base}/{requestId}`: the task's status and, once done, its outputs.

use axum::extract::{Path, State};
use axum::response::Response;

use super::task_status;
use crate::auth::Authorized;
use crate::{ApiError, AppState};

pub async fn get(
    State(state): State<AppState>,
    Authorized { org, .. }: Authorized,
    Path((_, id)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    task_status(&state, org, &id, move |s, id, now| s.get(org, id, now)).await
}
