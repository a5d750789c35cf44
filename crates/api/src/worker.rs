//! The worker protocol's bodies (`/worker/v1`, `docs/worker-protocol.md`): what a remote
//! worker and an API node say to each other.
//!
//! Both sides use these types, so the protocol cannot drift between them. In what a worker
//! sends, unknown fields are refused, as on the public API: a worker built for a newer
//! protocol learns at its first call that this server is older, instead of having its words
//! silently dropped. What the server answers is read leniently, so a newer server can add a
//! field without stranding the tasks it hands to older workers.
//! The leased request is the same [`CreateTask`] the API parsed, so the worker runs the
//! typed request and never re-derives it from the client's JSON.

use serde::{Deserialize, Serialize};
use sie_vocab::{Capabilities, ImageFormat, Pipeline, SchedulerKind};

use crate::request::CreateTask;

/// The path prefix of every worker route.
pub const PREFIX: &str = "/worker/v1";

/// The longest a lease call may wait for a task, in seconds.
pub const MAX_WAIT_SECONDS: u32 = 30;

/// What a worker serves, sent with every lease call; the API hands it only tasks it can run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Announcement {
    /// The model's name (its directory's name unless the operator gave one).
    pub model: String,
    /// The model's native size: what a task without `width`/`height` is generated at.
    pub native_width: u32,
    pub native_height: u32,
    #[schema(schema_with = crate::schema::pipelines_list)]
    pub pipelines: Vec<Pipeline>,
    #[schema(schema_with = crate::schema::schedulers_list)]
    pub schedulers: Vec<SchedulerKind>,
    pub safety_checker: bool,
    /// What the worker's model runs on (left out by workers older than this field).
    #[serde(default)]
    pub runs_on: Option<RunsOn>,
}

/// The device and precision a worker's model runs on, for operators and clients.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RunsOn {
    /// The GPU's name as its driver reports it (`NVIDIA H200`), or `cpu`.
    pub device: String,
    /// `float32`, `float16` or `bfloat16`.
    pub dtype: String,
    /// The GPU's memory in bytes; `null` on the CPU.
    pub memory_bytes: Option<u64>,
}

impl Announcement {
    /// What the worker can run, as the store matches it against each task's needs.
    pub fn capabilities(&self) -> Capabilities {
        Capabilities::new(
            self.pipelines.iter().copied(),
            self.schedulers.iter().copied(),
            self.safety_checker,
        )
    }
}

/// `POST /worker/v1/lease`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LeaseRequest {
    pub worker: Announcement,
    /// How long to wait for a task before answering `204 No Content`: 0 to
    /// [`MAX_WAIT_SECONDS`]; 20 when left out.
    #[serde(default)]
    pub wait_seconds: Option<u32>,
}

/// `200` to a lease call: one task, now this worker's until `lease_seconds` pass without
/// a heartbeat. The server sends a [`CreateTask`]; a worker reads `request` as plain JSON
/// first (`LeaseResponse<serde_json::Value>`), so a request it cannot read is reported on
/// the task instead of being lost with the lease.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct LeaseResponse<R = CreateTask> {
    /// The task's `requestId`.
    pub id: String,
    /// The fencing token: every later call for this task passes it back.
    pub attempt: u32,
    /// The task's request as the API stored it: `CreateTask`'s own serde form (field names
    /// as in Rust, `webhook_url` left out), not the public API's body; described here as
    /// an open object, since the public document's schema is the body's.
    #[schema(value_type = Object)]
    pub request: R,
    /// When the client's POST was accepted, milliseconds since the Unix epoch.
    pub created_at_ms: i64,
    pub lease_seconds: u64,
}

/// Denoising progress: `step` of `steps` done.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct StepProgress {
    pub step: u32,
    pub steps: u32,
}

/// `POST /worker/v1/tasks/{id}/heartbeat`: renews the lease.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct HeartbeatRequest {
    pub attempt: u32,
    #[serde(default)]
    pub progress: Option<StepProgress>,
}

/// What the worker does after a heartbeat.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    /// The lease is renewed; keep going.
    Continue,
    /// The client cancelled: stop at the next step and report `fail` with code `cancelled`.
    Cancel,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct HeartbeatResponse {
    pub action: Action,
}

/// What the worker used, for billing and the usage endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Usage {
    pub images: u32,
    pub steps: u32,
    pub gpu_ms: u64,
}

/// The `modelOutputs` a client reads (SPEC 1.2): built typed by the worker, stored as
/// this JSON, and served as stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ModelOutputs {
    /// Base64 images, one per `num_images_per_prompt`.
    pub images: Vec<String>,
    /// One flag per image, or `null` when no checker ran.
    pub nsfw_content_detected: Option<Vec<bool>>,
    pub seed: u64,
    #[serde(rename = "$meta")]
    pub meta: Meta,
    #[serde(rename = "$timings")]
    pub timings: Timings,
}

/// `$meta`: what actually ran, after defaults were filled in.
///
/// Read leniently on the server (no `deny_unknown_fields`, fields added after the first
/// release optional): a worker and an API node of different versions must not turn a
/// finished result into a refused one, which would fail the task for good. A field the
/// server does not know is dropped from what clients read until it is updated.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Meta {
    #[serde(rename = "PIPELINE")]
    #[schema(schema_with = crate::schema::pipeline_output)]
    pub pipeline: Pipeline,
    /// The scheduler that ran: the requested one, or the model's own.
    #[serde(rename = "SCHEDULER")]
    #[schema(schema_with = crate::schema::scheduler_output)]
    pub scheduler: SchedulerKind,
    pub width: u32,
    pub height: u32,
    pub num_inference_steps: u32,
    pub num_images_per_prompt: u32,
    /// The images' MIME type (`image/png`, ...).
    #[schema(inline)]
    pub image_format: MimeType,
    /// The prompt was longer than the text encoder reads (77 tokens) and was cut.
    pub prompt_truncated: bool,
    pub negative_prompt_truncated: bool,
    /// The model's variant, as `sie model check` names it.
    pub model: String,
    /// The device and precision it ran on (left out by workers older than this field).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runs_on: Option<RunsOn>,
}

/// An image format as its MIME type, the spelling `$meta.image_format` has always used.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "&'static str")]
pub struct MimeType(pub ImageFormat);

impl TryFrom<String> for MimeType {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        ImageFormat::ALL
            .iter()
            .find(|f| f.mime_type() == s)
            .map(|f| MimeType(*f))
            .ok_or_else(|| format!("\"{s}\" is not an image MIME type sie writes; accepted: image/png, image/jpeg, image/webp"))
    }
}

impl From<MimeType> for &'static str {
    fn from(m: MimeType) -> &'static str {
        m.0.mime_type()
    }
}

/// `$timings`, in milliseconds; read leniently, as [`Meta`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Timings {
    /// From the POST's acceptance to the start of inference.
    pub queue: u64,
    pub inference: u64,
    /// `queue + inference`.
    pub total: u64,
    /// From the start of inference to the end of the first denoising step (text encoding
    /// included); `null` when no step ran.
    pub first_step: Option<u64>,
}

/// `POST /worker/v1/tasks/{id}/complete`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CompleteRequest {
    pub attempt: u32,
    pub model_outputs: ModelOutputs,
    pub usage: Usage,
}

/// `POST /worker/v1/tasks/{id}/fail`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct FailRequest {
    pub attempt: u32,
    /// A stable machine code, e.g. `engine_error`, `out_of_memory`.
    pub code: String,
    pub message: String,
    /// `true`: the task may succeed elsewhere (the node's fault, not the request's); it goes
    /// back to the queue and the attempt counts.
    pub retryable: bool,
}

/// `POST /worker/v1/tasks/{id}/release`: the worker is shutting down; the task goes back to
/// the queue without counting the attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReleaseRequest {
    pub attempt: u32,
}

/// `200` to complete, fail and release: the call was this attempt's, and took effect.
/// (A call for an attempt that no longer owns the task is `409` with code `lease_lost`.)
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Accepted {
    pub accepted: bool,
}

/// The problem `code` of a call for a task this worker does not hold.
pub const LEASE_LOST: &str = "lease_lost";
/// The problem `code` of a missing, unknown or revoked worker token.
pub const UNAUTHORIZED: &str = "invalid_worker_token";
