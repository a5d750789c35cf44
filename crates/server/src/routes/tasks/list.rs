//! `GET {base}?page=&page_size=`: the organization's tasks, newest first.

use axum::extract::{Query, State};
use axum::Json;
use serde::Deserialize;
use sie_api::answers::{Status, TaskError, TaskList, TaskSummary};
use sie_api::RequestError;
use sie_store::{PageRequest, StoreError};

use crate::auth::Authorized;
use crate::{ApiError, AppState};

/// Tasks per page when the query does not say, and the most it may ask for.
const DEFAULT_PAGE_SIZE: u32 = 20;
const MAX_PAGE_SIZE: u32 = 100;

#[derive(Deserialize)]
pub struct Paging {
    page: Option<String>,
    page_size: Option<String>,
}

impl utoipa::IntoParams for Paging {
    fn into_params(
        _: impl Fn() -> Option<utoipa::openapi::path::ParameterIn>,
    ) -> Vec<utoipa::openapi::path::Parameter> {
        use crate::routes::openapi::page_param;
        vec![
            page_param("page", 1, u32::MAX, "The page, from 1."),
            page_param(
                "page_size",
                DEFAULT_PAGE_SIZE,
                MAX_PAGE_SIZE,
                "Tasks per page.",
            ),
        ]
    }
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

/// List tasks
///
/// The organization's tasks, newest first, a page at a time.
#[utoipa::path(
    get,
    path = crate::BASE,
    operation_id = "listTasks",
    tag = "tasks",
    security(("api_key" = [])),
    params(crate::routes::openapi::OrgParam, Paging),
    responses(
        (status = 200, description = "A page of tasks.", body = TaskList),
        (status = 400, response = crate::routes::openapi::BadRequest),
        (status = 401, response = crate::routes::openapi::Unauthorized),
        (status = 403, response = crate::routes::openapi::Forbidden),
        (status = 404, response = crate::routes::openapi::NotFound),
        (status = 429, response = crate::routes::openapi::TooManyRequests),
    ),
)]
pub async fn list(
    State(state): State<AppState>,
    Authorized { org, .. }: Authorized,
    Query(paging): Query<Paging>,
) -> Result<Json<TaskList>, ApiError> {
    let page = number("page", paging.page.as_deref(), 1, u32::MAX)?;
    let page_size = number(
        "page_size",
        paging.page_size.as_deref(),
        DEFAULT_PAGE_SIZE,
        MAX_PAGE_SIZE,
    )?;
    // Within the store's bounds, which `number` has just checked more tightly.
    let request = PageRequest::new(page, page_size).map_err(StoreError::from)?;
    let listing = state
        .store(move |s| s.list(org, request, sie_store::Timestamp::now()))
        .await?;
    let tasks = listing
        .tasks
        .iter()
        .map(|t| TaskSummary {
            request_id: t.id.to_string(),
            status: match t.state {
                sie_store::TaskState::Queued | sie_store::TaskState::Running => Status::Pending,
                sie_store::TaskState::Succeeded => Status::Success,
                sie_store::TaskState::Failed => Status::Failed,
            },
            created_at: t.created_at.as_millis(),
            started_at: t.started_at.map(|s| s.as_millis()),
            finished_at: t.finished_at.map(|s| s.as_millis()),
            error: t.error.as_ref().map(|e| TaskError {
                code: e.code.clone(),
                message: e.message.clone(),
            }),
        })
        .collect();
    Ok(Json(TaskList {
        page,
        page_size,
        total: listing.total,
        tasks,
    }))
}
