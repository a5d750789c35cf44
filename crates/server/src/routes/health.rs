//! `/healthz` (the process answers) and `/readyz` (and its store does too).

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use sie_api::answers::{Health, HealthStatus};

use crate::{ApiError, AppState};

/// Liveness
///
/// The process answers.
#[utoipa::path(
    get,
    path = "/healthz",
    operation_id = "healthz",
    tag = "operations",
    responses((status = 200, description = "Alive: `{\"status\": \"ok\"}`.", body = sie_api::answers::Health)),
)]
pub async fn healthz() -> Json<Health> {
    Json(Health {
        status: HealthStatus::Ok,
    })
}

/// Readiness
///
/// The process answers and so does its store.
#[utoipa::path(
    get,
    path = "/readyz",
    operation_id = "readyz",
    tag = "operations",
    responses(
        (status = 200, description = "Ready: `{\"status\": \"ready\"}`.", body = sie_api::answers::Health),
        (status = 503, response = crate::routes::openapi::ServiceUnavailable),
    ),
)]
pub async fn readyz(State(state): State<AppState>) -> Result<Json<Health>, ApiError> {
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
    Ok(Json(Health {
        status: HealthStatus::Ready,
    }))
}
