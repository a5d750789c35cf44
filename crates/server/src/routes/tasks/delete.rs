//! `DELETE {base}/{requestId}`: cancel. A queued task never runs; a running one stops at
//! its next step; either way it ends `failed` with code `cancelled`. Answers the status
//! after the cancel (a running task shows `pending` until its worker stops).

use axum::extract::{Path, State};
use axum::response::Response;
use sie_store::CancelOutcome;

use super::task_status;
use crate::auth::Authorized;
use crate::{ApiError, AppState};

pub async fn cancel(
    State(state): State<AppState>,
    Authorized { org, .. }: Authorized,
    Path((_, id)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    task_status(&state, org, &id, move |s, id, now| {
        match s.cancel(org, id, now)? {
            CancelOutcome::NotFound => Ok(None),
            _ => s.get(org, id, now),
        }
    })
    .await
}
