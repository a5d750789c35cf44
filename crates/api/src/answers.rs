//! What the public API answers (SPEC 1.1-1.3): the 202 to a create-task POST, a task's
//! status, the task list, usage, the health checks.
//!
//! The handlers serialise these types, and the OpenAPI document is derived from them, so
//! what `/openapi.json` says a route answers is what it sends. One answer is not built from
//! its type: a succeeded task's status, which the server writes around the stored
//! `modelOutputs` bytes without parsing or copying them; [`TaskStatus::Success`] states its
//! shape, and those bytes were serialised from [`ModelOutputs`] by the worker's typed
//! completion.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::worker::{ModelOutputs, StepProgress};

/// `202 Accepted` to `POST {base}`: the task is durably stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Created {
    /// The task's id.
    pub request_id: String,
    /// Where its status is read: the POST's absolute URL, then `/{requestId}` (also the
    /// `Location` header).
    pub result_url: String,
}

/// Why a task failed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct TaskError {
    /// Stable machine code: `cancelled`, `worker_lost`, `engine_error`, `invalid_image`, ...
    pub code: String,
    pub message: String,
}

/// `GET {base}/{requestId}` and `DELETE {base}/{requestId}`: where a task stands.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(tag = "status", rename_all = "lowercase")]
pub enum TaskStatus {
    /// Queued or running.
    Pending {
        #[serde(rename = "requestId")]
        request_id: String,
        /// While queued: tasks ahead of it in its organization's queue.
        #[serde(
            rename = "queuePosition",
            default,
            skip_serializing_if = "Option::is_none"
        )]
        queue_position: Option<u32>,
        /// While running: denoising steps done.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        progress: Option<StepProgress>,
    },
    /// Done: the pipeline's outputs.
    Success {
        #[serde(rename = "requestId")]
        request_id: String,
        #[serde(rename = "modelOutputs")]
        model_outputs: ModelOutputs,
    },
    /// Failed, or cancelled (code `cancelled`).
    Failed {
        #[serde(rename = "requestId")]
        request_id: String,
        error: TaskError,
    },
}

/// A task as the list shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct TaskSummary {
    pub request_id: String,
    pub status: Status,
    /// When the POST was accepted, milliseconds since the Unix epoch.
    pub created_at: i64,
    /// When its latest attempt began; `null` before it ran.
    pub started_at: Option<i64>,
    /// When it ended; `null` until then.
    pub finished_at: Option<i64>,
    /// Why it failed; `null` unless it did.
    pub error: Option<TaskError>,
}

/// A task's status word, as in [`TaskStatus`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Pending,
    Success,
    Failed,
}

/// `GET {base}?page=&page_size=`: a page of the organization's tasks, newest first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct TaskList {
    /// The page shown, from 1.
    pub page: u32,
    /// Tasks per page.
    pub page_size: u32,
    /// The organization's tasks that have not expired, on every page.
    pub total: u64,
    pub tasks: Vec<TaskSummary>,
}

/// One UTC day of an organization's use.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct UsageDay {
    /// `YYYY-MM-DD`, UTC.
    #[schema(format = Date)]
    pub day: String,
    pub images: u64,
    pub steps: u64,
    pub gpu_seconds: f64,
    pub tasks_succeeded: u64,
    pub tasks_failed: u64,
}

/// `GET /api/beta/organizations/{orgName}/usage`: the last 30 days with any use.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct UsageReport {
    /// The organization, as the path names it.
    pub organization: String,
    /// Oldest first.
    pub days: Vec<UsageDay>,
}

/// `GET /healthz` and `GET /readyz`: the process answers (`ok`); it and its store do
/// (`ready`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Health {
    pub status: HealthStatus,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum HealthStatus {
    Ok,
    Ready,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn statuses_serialise_as_spec_1_2_writes_them() {
        let pending = TaskStatus::Pending {
            request_id: "t".into(),
            queue_position: Some(3),
            progress: None,
        };
        assert_eq!(
            serde_json::to_value(&pending).unwrap(),
            json!({"requestId": "t", "status": "pending", "queuePosition": 3})
        );
        let failed = TaskStatus::Failed {
            request_id: "t".into(),
            error: TaskError {
                code: "cancelled".into(),
                message: "m".into(),
            },
        };
        assert_eq!(
            serde_json::to_value(&failed).unwrap(),
            json!({"requestId": "t", "status": "failed", "error": {"code": "cancelled", "message": "m"}})
        );
        let created = Created {
            request_id: "t".into(),
            result_url: "http://h/t".into(),
        };
        assert_eq!(
            serde_json::to_value(&created).unwrap(),
            json!({"requestId": "t", "resultUrl": "http://h/t"})
        );
    }
}
