//! The task routes of SPEC 1.1-1.3, one file each, and the status answer they share.

pub mod delete;
pub mod get;
pub mod list;
pub mod post;

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::Value;
use sie_api::answers::{TaskError, TaskStatus};
use sie_api::worker::StepProgress;
use sie_store::{OrgId, Store, TaskId, TaskState, TaskView, Timestamp};

use crate::{results, ApiError, AppState};

/// A `{requestId}` from the path; anything that is not one of our ids (in the one spelling
/// we give them out in) is simply not found, and only the start of it is echoed.
pub fn parse_id(id: &str) -> Result<TaskId, ApiError> {
    TaskId::parse(id).map_err(|e| {
        ApiError::client(
            StatusCode::NOT_FOUND,
            "unknown_task",
            "Unknown task",
            format!("no task {:?} in this organization; {}", e.value, e.accepted),
        )
    })
}

/// SPEC 1.2's status body for a task that has not succeeded: pending (with queue position
/// or progress) or failed with an error. A success is answered from the results cache
/// ([`task_status`]).
pub(crate) fn unfinished_body(view: &TaskView) -> Value {
    // Plain strings, numbers and objects: serialising them cannot fail.
    serde_json::to_value(unfinished_status(view)).unwrap_or_default()
}

fn unfinished_status(view: &TaskView) -> TaskStatus {
    let request_id = view.id.to_string();
    match view.state {
        TaskState::Queued => TaskStatus::Pending {
            request_id,
            queue_position: view.queue_position,
            progress: None,
        },
        TaskState::Running => TaskStatus::Pending {
            request_id,
            queue_position: None,
            progress: view.progress.map(|p| StepProgress {
                step: p.step,
                steps: p.steps,
            }),
        },
        TaskState::Succeeded | TaskState::Failed => {
            let error = view
                .error
                .as_ref()
                .map(|e| TaskError {
                    code: e.code.clone(),
                    message: e.message.clone(),
                })
                .unwrap_or_else(|| TaskError {
                    code: "failed".into(),
                    message: "the task failed".into(),
                });
            TaskStatus::Failed { request_id, error }
        }
    }
}

/// The answer of a route on the task `id` names (anything that is not one of our ids is not
/// found): `find` reads the task (after acting on it) on the store's thread; its status,
/// or 404 when it finds none or its result has expired (SPEC 1.2), even before the expiry
/// sweep has deleted it.
pub(crate) async fn task_status(
    state: &AppState,
    org: OrgId,
    id: &str,
    find: impl FnOnce(&dyn Store, TaskId, Timestamp) -> sie_store::Result<Option<TaskView>>
        + Send
        + 'static,
) -> Result<Response, ApiError> {
    let id = parse_id(id)?;
    let now = Timestamp::now();
    let view = state.store(move |s| find(s, id, now)).await?;
    let view = match view {
        Some(v) if !v.result_expired(state.settings.result_ttl, now) => v,
        _ => {
            state.results.remove(org, id);
            return Err(not_found(id));
        }
    };
    if view.state != TaskState::Succeeded {
        return Ok(Json(unfinished_status(&view)).into_response());
    }
    match state.results.outputs(state, org, id).await? {
        Some(outputs) => Ok(results::success(id, outputs)),
        // Deleted by the expiry sweep between the two reads.
        None => Err(not_found(id)),
    }
}

pub fn not_found(id: TaskId) -> ApiError {
    ApiError::client(
        StatusCode::NOT_FOUND,
        "unknown_task",
        "Unknown task",
        format!("no task {id} in this organization (it may have expired)"),
    )
}
