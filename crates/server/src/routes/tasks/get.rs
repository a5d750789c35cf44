//! `GET {base}/{requestId}`: the task's status and, once done, its outputs.

use axum::extract::{Path, State};
use axum::Json;
use serde_json::Value;
use sie_store::Timestamp;

use super::task_status;
use crate::auth::Authorized;
use crate::{ApiError, AppState};

pub async fn get(
    State(state): State<AppState>,
    Authorized { org, .. }: Authorized,
    Path((_, id)): Path<(String, String)>,
) -> Result<Json<Value>, ApiError> {
    task_status(&state, &id, move |s, id| s.get(org, id, Timestamp::now())).await
}
