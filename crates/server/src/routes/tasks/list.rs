//! `GET {base}?page=&page_size=`: the organization's tasks, newest first.

use axum::extract::{Query, State};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};
use sie_api::RequestError;
use sie_store::{PageRequest, StoreError};

use crate::auth::Authorized;
use crate::{ApiError, AppState};

#[derive(Deserialize)]
pub struct Paging {
    page: Option<String>,
    page_size: Option<String>,
}

fn number(name: &str, value: Option<&str>, default: u32, max: u32) -> Result<u32, ApiError> {
    let Some(text) = value else {
        return Ok(default);
    };
    match text.parse::<u32>() {
        Ok(n) if (1..=max).contains(&n) => Ok(n),
        _ => Err(ApiError::Invalid(RequestError {
            code: "out_of_range",
            field: Some(name.to_owned()),
            message: format!("{name}: {text:?} is not accepted; use an integer from 1 to {max}"),
        })),
    }
}

pub async fn list(
    State(state): State<AppState>,
    Authorized { org, .. }: Authorized,
    Query(paging): Query<Paging>,
) -> Result<Json<Value>, ApiError> {
    let page = number("page", paging.page.as_deref(), 1, u32::MAX)?;
    let page_size = number("page_size", paging.page_size.as_deref(), 20, 100)?;
    // Within the store's bounds, which `number` has just checked more tightly.
    let request = PageRequest::new(page, page_size).map_err(StoreError::from)?;
    let listing = state
        .store(move |s| s.list(org, request, sie_store::Timestamp::now()))
        .await?;
    let tasks: Vec<Value> = listing
        .tasks
        .iter()
        .map(|t| {
            let status = match t.state {
                sie_store::TaskState::Queued | sie_store::TaskState::Running => "pending",
                sie_store::TaskState::Succeeded => "success",
                sie_store::TaskState::Failed => "failed",
            };
            json!({
                "requestId": t.id.to_string(),
                "status": status,
                "createdAt": t.created_at.as_millis(),
                "startedAt": t.started_at.map(|s| s.as_millis()),
                "finishedAt": t.finished_at.map(|s| s.as_millis()),
                "error": t.error.as_ref().map(|e| json!({"code": e.code, "message": e.message})),
            })
        })
        .collect();
    Ok(Json(
        json!({"page": page, "page_size": page_size, "total": listing.total, "tasks": tasks}),
    ))
}
