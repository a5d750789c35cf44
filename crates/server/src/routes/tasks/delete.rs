//! `DELETE {base}/{requestId}`: cancel. A queued task never runs; a running one stops at
//! its next step; either way it ends `failed` with code `cancelled`. Answers the status
//! after the cancel (a running task shows `pending` until its worker stops).

use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::Json;
use serde_json::Value;
use sie_store::{CancelOutcome, Timestamp};

use super::{not_found, parse_id, status_body};
use crate::auth::authorize;
use crate::{ApiError, AppState};

pub async fn cancel(
    State(state): State<AppState>,
    Path((org, id)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    let org = authorize(&state, &headers, &org).await?;
    let id = parse_id(&id)?;
    let view = state
        .store(move |s| {
            let now = Timestamp::now();
            match s.cancel(org, id, now)? {
                CancelOutcome::NotFound => Ok(None),
                _ => s.get(org, id, now),
            }
        })
        .await?
        .ok_or_else(|| not_found(id))?;
    Ok(Json(status_body(&view)?))
}
