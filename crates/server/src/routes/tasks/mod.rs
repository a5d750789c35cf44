//! The task routes of SPEC 1.1-1.3, one file each, and the status body they share.

pub mod delete;
pub mod get;
pub mod list;
pub mod post;

use axum::http::StatusCode;
use axum::Json;
use serde_json::{json, Value};
use sie_store::{Store, TaskId, TaskState, TaskView};

use crate::{ApiError, AppState};

/// A `{requestId}` from the path; anything that is not one of our ids is simply not found.
pub fn parse_id(id: &str) -> Result<TaskId, ApiError> {
    TaskId::parse(id).map_err(|_| {
        ApiError::client(
            StatusCode::NOT_FOUND,
            "unknown_task",
            "Unknown task",
            format!("no task {id:?} in this organization"),
        )
    })
}

/// SPEC 1.2's status body: pending (with queue position or progress), success with
/// `modelOutputs`, or failed with an error.
pub fn status_body(view: &TaskView) -> Result<Value, ApiError> {
    let id = view.id.to_string();
    Ok(match view.state {
        TaskState::Queued => {
            let mut body = json!({"requestId": id, "status": "pending"});
            if let Some(position) = view.queue_position {
                body["queuePosition"] = json!(position);
            }
            body
        }
        TaskState::Running => {
            let mut body = json!({"requestId": id, "status": "pending"});
            if let Some(p) = view.progress {
                body["progress"] = json!({"step": p.step, "steps": p.steps});
            }
            body
        }
        TaskState::Succeeded => {
            let text = view.result_json.as_deref().unwrap_or("null");
            let outputs: Value = serde_json::from_str(text).map_err(|e| {
                ApiError::Internal(format!("stored result of {id} is not JSON: {e}"))
            })?;
            json!({"requestId": id, "status": "success", "modelOutputs": outputs})
        }
        TaskState::Failed => {
            let (code, message) = view
                .error
                .as_ref()
                .map(|e| (e.code.clone(), e.message.clone()))
                .unwrap_or_else(|| ("failed".into(), "the task failed".into()));
            json!({"requestId": id, "status": "failed", "error": {"code": code, "message": message}})
        }
    })
}

/// The answer of a route on the task `id` names (anything that is not one of our ids is not
/// found): `find` reads the task (after acting on it) on the store's thread; its status
/// body, or 404 when it finds none.
pub(crate) async fn task_status(
    state: &AppState,
    id: &str,
    find: impl FnOnce(&dyn Store, TaskId) -> sie_store::Result<Option<TaskView>> + Send + 'static,
) -> Result<Json<Value>, ApiError> {
    let id = parse_id(id)?;
    let view = state
        .store(move |s| find(s, id))
        .await?
        .ok_or_else(|| not_found(id))?;
    Ok(Json(status_body(&view)?))
}

pub fn not_found(id: TaskId) -> ApiError {
    ApiError::client(
        StatusCode::NOT_FOUND,
        "unknown_task",
        "Unknown task",
        format!("no task {id} in this organization (it may have expired)"),
    )
}
