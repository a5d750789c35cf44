//! `DELETE {base}/{requestId}`: cancel. A queued task never runs; a running one stops at
//! its next step; either way it ends `failed` with code `cancelled`. Answers the status
//! after the cancel (a running task shows `pending` until its worker stops).

use axum::extract::{Path, State};
use axum::Json;
use serde_json::Value;
use sie_store::{CancelOutcome, Timestamp};

use super::task_status;
use crate::auth::Authorized;
use crate::{ApiError, AppState};

pub async fn cancel(
    State(state): State<AppState>,
    Authorized { org, .. }: Authorized,
    Path((_, id)): Path<(String, String)>,
) -> Result<Json<Value>, ApiError> {
    task_status(&state, &id, move |s, id| {
        let now = Timestamp::now();
        match s.cancel(org, id, now)? {
            CancelOutcome::NotFound => Ok(None),
            _ => s.get(org, id, now),
        }
    })
    .await
}
