//! One task's translation between the wire protocol and the engine.
//!
//! `sie-api`'s `CreateTask` is what the API validated and the queue stored;
//! here it becomes the engine's `TextToImage`, and the engine's `Generated`
//! becomes the `modelOutputs` object the client reads (SPEC 1.2): base64
//! images, `nsfw_content_detected`, `seed`, `$meta` and `$timings`.

use base64::Engine as _;
use serde_json::{json, Value};
use sie_api::request::{CreateTask, ImageFormat, Pipeline, Scheduler};
use sie_api::worker::Announcement;
use sie_engine::model::StableDiffusion;
use sie_engine::output;
use sie_engine::pipeline::{Generated, TextToImage};
use sie_engine::scheduler::SchedulerKind;

/// The pipelines this worker's engine runs.
pub const PIPELINES: &[Pipeline] = &[Pipeline::Text2Image];

/// What a worker with `model` says it serves. `name` is the model's name for operators.
pub fn announcement(model: &StableDiffusion, name: &str) -> Announcement {
    let native = model.files.native_size() as u32;
    Announcement {
        model: name.to_owned(),
        native_width: native,
        native_height: native,
        pipelines: PIPELINES.to_vec(),
        // The engine implements every scheduler the API accepts.
        schedulers: Scheduler::ALL.to_vec(),
        safety_checker: model.safety_checker.is_some(),
    }
}

/// The store's form of an announcement: what `worker_id` may lease.
pub fn offer(announcement: &Announcement, worker_id: &str) -> sie_store::WorkerOffer {
    sie_store::WorkerOffer {
        worker_id: worker_id.to_owned(),
        pipelines: announcement
            .pipelines
            .iter()
            .map(|p| p.as_str().to_owned())
            .collect(),
        schedulers: announcement
            .schedulers
            .iter()
            .map(|s| s.as_str().to_owned())
            .collect(),
        safety_checker: announcement.safety_checker,
    }
}

/// Why a task cannot run on this worker; it fails with `code` and the client reads `message`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub code: &'static str,
    pub message: String,
}

/// The engine request for `task`. `random_seed` is used only when the task has no seed
/// (the API draws one at submission, so this is for tasks stored without).
pub fn text_to_image(
    model: &StableDiffusion,
    task: &CreateTask,
    random_seed: u64,
) -> Result<TextToImage, Refusal> {
    let m = &task.model_inputs;
    let c = &task.call_inputs;
    if c.pipeline != Pipeline::Text2Image {
        return Err(Refusal {
            code: "pipeline_unavailable",
            message: format!(
                "{} is not available on this endpoint yet; use StableDiffusionPipeline",
                c.pipeline.as_str()
            ),
        });
    }
    let safety_checker = match (c.safety_checker, model.safety_checker.is_some()) {
        (Some(true), false) => {
            return Err(Refusal {
                code: "safety_checker_unavailable",
                message: "callInputs.safety_checker: this endpoint has no safety checker installed"
                    .into(),
            })
        }
        (Some(asked), _) => asked,
        (None, installed) => installed,
    };
    let mut request = TextToImage::new(
        model,
        m.prompt.as_str(),
        m.seed.map(|s| s.get()).unwrap_or(random_seed),
    );
    request.negative_prompt = m.negative_prompt.clone();
    request.num_inference_steps = m.num_inference_steps.get() as usize;
    request.guidance_scale = m.guidance_scale.get();
    if let Some(w) = m.width {
        request.width = w.get() as usize;
    }
    if let Some(h) = m.height {
        request.height = h.get() as usize;
    }
    request.num_images_per_prompt = m.num_images_per_prompt.get() as usize;
    request.eta = m.eta.get();
    request.guidance_rescale = m.guidance_rescale.get();
    request.scheduler = c.scheduler.map(scheduler_kind);
    request.safety_checker = safety_checker;
    Ok(request)
}

/// The wire scheduler names are the engine's class names.
fn scheduler_kind(s: Scheduler) -> SchedulerKind {
    match s {
        Scheduler::Lms => SchedulerKind::LmsDiscrete,
        Scheduler::Ddim => SchedulerKind::Ddim,
        Scheduler::Pndm => SchedulerKind::Pndm,
        Scheduler::Euler => SchedulerKind::EulerDiscrete,
        Scheduler::EulerAncestral => SchedulerKind::EulerAncestralDiscrete,
        Scheduler::DpmSolverMultistep => SchedulerKind::DpmSolverMultistep,
        Scheduler::UniPc => SchedulerKind::UniPcMultistep,
        Scheduler::Ddpm => SchedulerKind::Ddpm,
        Scheduler::Heun => SchedulerKind::HeunDiscrete,
    }
}

fn engine_format(f: ImageFormat) -> output::ImageFormat {
    match f {
        ImageFormat::Png => output::ImageFormat::Png,
        ImageFormat::Jpeg => output::ImageFormat::Jpeg,
        ImageFormat::Webp => output::ImageFormat::Webp,
    }
}

/// Milliseconds a task spent waiting and running, for `$timings`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timings {
    pub queue_ms: u64,
    pub inference_ms: u64,
    /// From the start of inference to the end of the first denoising step (text encoding
    /// included): with `queue_ms`, the latency a client waits before anything happens.
    pub first_step_ms: Option<u64>,
}

/// The `modelOutputs` object for a finished run.
pub fn model_outputs(
    model: &StableDiffusion,
    task: &CreateTask,
    request: &TextToImage,
    generated: &Generated,
    timings: Timings,
) -> sie_engine::Result<Value> {
    let format = engine_format(task.call_inputs.image_format);
    let images = generated
        .images
        .iter()
        .map(|rgb| {
            output::encode(rgb, generated.width, generated.height, format)
                .map(|bytes| base64::engine::general_purpose::STANDARD.encode(bytes))
        })
        .collect::<sie_engine::Result<Vec<_>>>()?;
    Ok(json!({
        "images": images,
        "nsfw_content_detected": generated.nsfw_content_detected,
        "seed": generated.seed,
        "$meta": {
            "PIPELINE": task.call_inputs.pipeline.as_str(),
            "SCHEDULER": generated.scheduler.class_name(),
            "width": generated.width,
            "height": generated.height,
            "num_inference_steps": request.num_inference_steps,
            "num_images_per_prompt": generated.images.len(),
            "image_format": format.mime_type(),
            "prompt_truncated": generated.prompt_truncated,
            "negative_prompt_truncated": generated.negative_prompt_truncated,
            "model": model.files.summary().get("variant").cloned().unwrap_or_default(),
        },
        "$timings": {
            "queue": timings.queue_ms,
            "inference": timings.inference_ms,
            "total": timings.queue_ms + timings.inference_ms,
            "first_step": timings.first_step_ms,
        },
    }))
}
