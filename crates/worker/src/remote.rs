//! [`HttpSource`]: an API node's worker protocol (`/worker/v1`, `docs/worker-protocol.md`)
//! as a [`TaskSource`], for `sie worker` on a machine that holds no database credentials.
//!
//! The node is far away and may blink: a lease call that cannot reach it is an error the
//! caller backs off from, a heartbeat that cannot reach it is logged and tried again next
//! beat, and a finished result is offered again with backoff for a while (the worker keeps
//! heartbeating meanwhile, so the lease stays its own), because a generated image is the
//! one thing a worker must not drop. `409 lease_lost` is not an error: it is the answer
//! "another attempt owns this task now". Each kind of call has its own time limit: a
//! heartbeat that hangs must not outlast the lease, an upload over a slow line must not be
//! cut short.

use std::time::{Duration, Instant};

use reqwest::blocking::{Client, Response};
use reqwest::StatusCode;
use serde::de::DeserializeOwned;
use serde::Serialize;
use sie_api::worker::{
    Accepted, Action, Announcement, CompleteRequest, FailRequest, HeartbeatRequest,
    HeartbeatResponse, LeaseRequest, LeaseResponse, ReleaseRequest, StepProgress, Usage,
    LEASE_LOST, PREFIX,
};
use sie_store::{Failure, Heartbeat, Progress, TaskId, Timestamp};

use crate::source::{Finished, LeasedTask, Reply, SourceError, TaskSource};

/// The first pause after a failed report; it doubles up to [`MAX_BACKOFF`].
pub const MIN_BACKOFF: Duration = Duration::from_millis(250);
pub const MAX_BACKOFF: Duration = Duration::from_secs(10);

pub struct HttpSource {
    client: Client,
    /// `http://host:port` of an API node (or its load balancer), without a trailing `/`.
    server: String,
    token: String,
    announcement: Announcement,
}

impl std::fmt::Debug for HttpSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpSource")
            .field("server", &self.server)
            .field("token", &"<redacted>")
            .finish()
    }
}

impl HttpSource {
    pub fn new(server: &str, token: &str, announcement: Announcement) -> Result<Self, SourceError> {
        // No client-wide timeout: each call sets its own (`post`).
        let client = Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .build()
            .map_err(|e| SourceError::Remote(format!("building the HTTP client: {e}")))?;
        Ok(Self {
            client,
            server: server.trim_end_matches('/').to_owned(),
            token: token.to_owned(),
            announcement,
        })
    }

    fn post<B: Serialize>(
        &self,
        path: &str,
        body: &B,
        timeout: Duration,
    ) -> Result<Response, SourceError> {
        let url = format!("{}{PREFIX}{path}", self.server);
        self.client
            .post(&url)
            .bearer_auth(&self.token)
            .timeout(timeout)
            .json(body)
            .send()
            .map_err(|e| SourceError::Remote(format!("POST {url}: {e}")))
    }

    /// Posts a report for a task: `Some(answer)` when accepted, `None` on `409 lease_lost`.
    /// Unreachable servers and 5xx answers are retried with backoff until `give_up_after`;
    /// each try may take `timeout`.
    fn report<B: Serialize, T: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
        timeout: Duration,
        give_up_after: Duration,
    ) -> Result<Option<T>, SourceError> {
        let deadline = Instant::now() + give_up_after;
        let mut pause = MIN_BACKOFF;
        loop {
            let err = match self.post(path, body, timeout) {
                Ok(resp) if resp.status().is_server_error() => problem(resp),
                Ok(resp) if resp.status() == StatusCode::CONFLICT => {
                    let err = problem(resp);
                    if err.to_string().contains(LEASE_LOST) {
                        return Ok(None);
                    }
                    return Err(err);
                }
                Ok(resp) if resp.status().is_success() => return parse(resp).map(Some),
                Ok(resp) if resp.status() == StatusCode::UNAUTHORIZED => {
                    return Err(unauthorized(resp))
                }
                Ok(resp) => return Err(rejected(resp)),
                Err(e) => e,
            };
            if Instant::now() + pause > deadline {
                return Err(err);
            }
            tracing::warn!(error = %err, retry_in_ms = pause.as_millis() as u64, "report failed; retrying");
            std::thread::sleep(pause);
            pause = (pause * 2).min(MAX_BACKOFF);
        }
    }
}

/// The server's problem document, as an error that keeps its code and detail.
fn problem(resp: Response) -> SourceError {
    let status = resp.status();
    let body = resp.text().unwrap_or_default();
    let what = serde_json::from_str::<serde_json::Value>(&body)
        .ok()
        .and_then(|v| {
            Some(format!(
                "{}: {}",
                v.get("code")?.as_str()?,
                v.get("detail")?.as_str()?
            ))
        })
        .unwrap_or_else(|| body.chars().take(300).collect());
    SourceError::Remote(format!("the server answered {status}: {what}"))
}

fn unauthorized(resp: Response) -> SourceError {
    match problem(resp) {
        SourceError::Remote(m) => SourceError::Unauthorized(m),
        other => other,
    }
}

fn rejected(resp: Response) -> SourceError {
    match problem(resp) {
        SourceError::Remote(m) => SourceError::Rejected(m),
        other => other,
    }
}

fn parse<T: DeserializeOwned>(resp: Response) -> Result<T, SourceError> {
    let url = resp.url().to_string();
    resp.json()
        .map_err(|e| SourceError::Remote(format!("unreadable answer from {url}: {e}")))
}

/// How long a finished result (or a failure) keeps being offered while the API node cannot
/// be reached. The worker heartbeats meanwhile, but its heartbeats cannot reach the node
/// either, so the lease lapses after `lease_seconds` and another worker may take the task;
/// an offer after that is answered `409` and dropped.
const REPORT_PATIENCE: Duration = Duration::from_secs(120);
/// Time limits per call. A heartbeat must come back well within a lease; an upload of eight
/// large images over a home uplink may take minutes.
const HEARTBEAT_TIMEOUT: Duration = Duration::from_secs(10);
const UPLOAD_TIMEOUT: Duration = Duration::from_secs(600);
const REPORT_TIMEOUT: Duration = Duration::from_secs(30);

impl TaskSource for HttpSource {
    fn lease(&self, wait: Duration) -> Result<Option<LeasedTask>, SourceError> {
        let body = LeaseRequest {
            worker: self.announcement.clone(),
            wait_seconds: Some((wait.as_secs() as u32).min(sie_api::worker::MAX_WAIT_SECONDS)),
        };
        // The server may wait `wait_seconds` before answering.
        let timeout = wait + Duration::from_secs(30);
        let resp = self.post("/lease", &body, timeout)?;
        match resp.status() {
            StatusCode::NO_CONTENT => Ok(None),
            StatusCode::OK => {
                let l: LeaseResponse<serde_json::Value> = parse(resp)?;
                let id = TaskId::parse(&l.id).map_err(|e| {
                    SourceError::Remote(format!("the server leased a task with a bad id: {e}"))
                })?;
                Ok(Some(LeasedTask {
                    id,
                    attempt: l.attempt,
                    request: serde_json::from_value(l.request).map_err(|e| {
                        let message = format!(
                            "the worker could not read the request ({e}); it may be older than \
                             the API node"
                        );
                        Failure::new(crate::INCOMPATIBLE, message, true)
                    }),
                    created_at: Timestamp::from_millis(l.created_at_ms),
                    lease: Duration::from_secs(l.lease_seconds),
                }))
            }
            StatusCode::UNAUTHORIZED => Err(unauthorized(resp)),
            _ => Err(problem(resp)),
        }
    }

    fn heartbeat(&self, id: TaskId, attempt: u32, at: Option<Progress>) -> Reply<Heartbeat> {
        let body = HeartbeatRequest {
            attempt,
            progress: at.map(|p| StepProgress {
                step: p.step,
                steps: p.steps,
            }),
        };
        // One try: the next beat is the retry. A refused token means the operator revoked
        // this worker, and its leases with it: the task is no longer ours.
        let answer: Option<HeartbeatResponse> = match self.report(
            &format!("/tasks/{id}/heartbeat"),
            &body,
            HEARTBEAT_TIMEOUT,
            Duration::ZERO,
        ) {
            Err(SourceError::Unauthorized(m)) => {
                tracing::error!(error = %m, "this worker's token was refused; dropping the task");
                None
            }
            other => other?,
        };
        Ok(match answer.map(|a| a.action) {
            None => Heartbeat::Lost,
            Some(Action::Continue) => Heartbeat::Continue,
            Some(Action::Cancel) => Heartbeat::Cancelled,
        })
    }

    fn complete(&self, id: TaskId, attempt: u32, done: Finished) -> Result<bool, SourceError> {
        let Finished { outputs, usage } = done;
        let body = CompleteRequest {
            attempt,
            model_outputs: outputs,
            usage: Usage {
                images: usage.images,
                steps: usage.steps,
                gpu_ms: usage.gpu_ms,
            },
        };
        let answer: Option<Accepted> = self.report(
            &format!("/tasks/{id}/complete"),
            &body,
            UPLOAD_TIMEOUT,
            REPORT_PATIENCE,
        )?;
        Ok(answer.is_some())
    }

    fn fail(&self, id: TaskId, attempt: u32, failure: &Failure) -> Result<bool, SourceError> {
        let body = FailRequest {
            attempt,
            code: failure.code.to_string(),
            message: failure.message.clone(),
            retryable: failure.retryable,
        };
        let answer: Option<Accepted> = self.report(
            &format!("/tasks/{id}/fail"),
            &body,
            REPORT_TIMEOUT,
            REPORT_PATIENCE,
        )?;
        Ok(answer.is_some())
    }

    fn release(&self, id: TaskId, attempt: u32) -> Result<bool, SourceError> {
        // Shutting down: a few seconds at most; if it fails the lease lapses instead.
        let answer: Option<Accepted> = self.report(
            &format!("/tasks/{id}/release"),
            &ReleaseRequest { attempt },
            REPORT_TIMEOUT,
            Duration::from_secs(5),
        )?;
        Ok(answer.is_some())
    }
}
