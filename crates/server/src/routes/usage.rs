//! `GET /api/beta/organizations/{org}/usage`: images, steps and GPU-seconds per UTC day,
//! the last 30 days.

use axum::extract::State;
use axum::Json;
use serde_json::{json, Value};
use sie_store::{Timestamp, UtcDay};

use crate::auth::Authorized;
use crate::{ApiError, AppState};

pub async fn usage(
    State(state): State<AppState>,
    Authorized { org, name }: Authorized,
) -> Result<Json<Value>, ApiError> {
    let today = Timestamp::now().day();
    let from = UtcDay::from_days_since_epoch(today.days_since_epoch() - 29);
    let days = state.store(move |s| s.usage(org, from, today)).await?;
    let days: Vec<Value> = days
        .iter()
        .map(|d| {
            json!({
                "day": d.day.to_string(),
                "images": d.images,
                "steps": d.steps,
                "gpuSeconds": d.gpu_seconds,
                "tasksSucceeded": d.tasks_succeeded,
                "tasksFailed": d.tasks_failed,
            })
        })
        .collect();
    Ok(Json(json!({"organization": name, "days": days})))
}
