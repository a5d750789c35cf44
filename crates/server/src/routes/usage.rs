//! `GET /api/beta/organizations/{org}/usage`: images, steps and GPU-seconds per UTC day,
//! the last 30 days.

use axum::extract::State;
use axum::Json;
use sie_api::answers::{UsageDay, UsageReport};
use sie_store::{Timestamp, UtcDay};

use crate::auth::Authorized;
use crate::{ApiError, AppState};

/// An organization's usage
///
/// Images, steps and GPU-seconds per UTC day, the last 30 days.
#[utoipa::path(
    get,
    path = "/api/beta/organizations/{org}/usage",
    operation_id = "getUsage",
    tag = "usage",
    security(("api_key" = [])),
    params(crate::routes::openapi::OrgParam),
    responses(
        (status = 200, description = "Usage per day.", body = sie_api::answers::UsageReport),
        (status = 401, response = crate::routes::openapi::Unauthorized),
        (status = 403, response = crate::routes::openapi::Forbidden),
        (status = 404, response = crate::routes::openapi::NotFound),
        (status = 429, response = crate::routes::openapi::TooManyRequests),
    ),
)]
pub async fn usage(
    State(state): State<AppState>,
    Authorized { org, name }: Authorized,
) -> Result<Json<UsageReport>, ApiError> {
    let today = Timestamp::now().day();
    let from = UtcDay::from_days_since_epoch(today.days_since_epoch() - 29);
    let days = state.store(move |s| s.usage(org, from, today)).await?;
    let days = days
        .iter()
        .map(|d| UsageDay {
            day: d.day.to_string(),
            images: d.images,
            steps: d.steps,
            gpu_seconds: d.gpu_seconds,
            tasks_succeeded: d.tasks_succeeded,
            tasks_failed: d.tasks_failed,
        })
        .collect();
    Ok(Json(UsageReport {
        organization: name,
        days,
    }))
}
