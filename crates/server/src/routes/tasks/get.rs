//! `GET {base}/{requestId}`: the task's status and, once done, its outputs.

use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::Json;
use serde_json::Value;
use sie_store::Timestamp;

use super::{not_found, parse_id, status_body};
use crate::auth::authorize;
use crate::{ApiError, AppState};

pub async fn get(
    State(state): State<AppState>,
    Path((org, id)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    let org = authorize(&state, &headers, &org).await?;
    let id = parse_id(&id)?;
    let view = state
        .store(move |s| s.get(org, id, Timestamp::now()))
        .await?
        .ok_or_else(|| not_found(id))?;
    Ok(Json(status_body(&view)?))
}
