//! `/healthz` (the process answers) and `/readyz` (and its store does too).

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use serde_json::{json, Value};

use crate::{ApiError, AppState};

pub async fn healthz() -> Json<Value> {
    Json(json!({"status": "ok"}))
}

pub async fn readyz(State(state): State<AppState>) -> Result<Json<Value>, ApiError> {
    state
        .store(|s| s.list_orgs().map(|_| ()))
        .await
        .map_err(|e| {
            tracing::error!(error = ?e, "readiness check: the store does not answer");
            ApiError::client(
                StatusCode::SERVICE_UNAVAILABLE,
                "not_ready",
                "Not ready",
                "the store does not answer; see the server's log",
            )
        })?;
    Ok(Json(json!({"status": "ready"})))
}
