//! One task's translation between the wire protocol and the engine.
//!
//! `sie-api`'s `CreateTask` is what the API validated and the queue stored; here it
//! becomes the engine's `TextToImage`, and the engine's `Generated` becomes the typed
//! `ModelOutputs` the client reads (SPEC 1.2): base64 images, `nsfw_content_detected`,
//! `seed`, `$meta` and `$timings`. Nothing here re-checks the request: the API refused
//! what no worker can run, and the store hands this worker only tasks its
//! [`capabilities`] cover; what is left for the engine to refuse is its own assertion.

use base64::Engine as _;
use sie_api::request::{CreateTask, Pipeline, SchedulerKind};
use sie_api::worker::{Announcement, Meta, MimeType, ModelOutputs, RunsOn, Timings};
use sie_engine::output;
use sie_engine::pipeline::{Generated, TextToImage};
use sie_engine::StableDiffusion;
use sie_vocab::Capabilities;

/// What a worker with `model` can run: the engine's pipelines and every scheduler, and
/// the safety checker where the model has one.
pub fn capabilities(model: &StableDiffusion) -> Capabilities {
    Capabilities::new(
        sie_engine::pipeline::PIPELINES.iter().copied(),
        SchedulerKind::ALL.iter().copied(),
        model.safety_checker.is_some(),
    )
}

/// What a worker with `model` says it serves. `name` is the model's name for operators.
pub fn announcement(model: &StableDiffusion, name: &str) -> Announcement {
    let native = model.files.native_size() as u32;
    let can = capabilities(model);
    Announcement {
        model: name.to_owned(),
        native_width: native,
        native_height: native,
        pipelines: can.pipelines().to_vec(),
        schedulers: can.schedulers().to_vec(),
        safety_checker: can.safety_checker(),
        runs_on: Some(runs_on(model)),
    }
}

/// What `model` runs on, as the protocol and `$meta` say it.
pub fn runs_on(model: &StableDiffusion) -> RunsOn {
    let r = model.runs_on();
    RunsOn {
        device: r.device,
        dtype: r.precision.to_string(),
        memory_bytes: r.memory_bytes,
    }
}

/// The store's form of an announcement: what `worker_id` may lease.
pub fn offer(announcement: &Announcement, worker_id: &str) -> sie_store::WorkerOffer {
    sie_store::WorkerOffer::new(worker_id, announcement.capabilities())
}

/// A task this worker was handed but does not run: the store matched it against
/// capabilities this worker does not have (another build's, say). Another worker may.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Incompatible {
    pub message: String,
}

/// The engine request for `task`. `random_seed` is used only when the task has no seed
/// (the API draws one at submission, so this is for tasks stored without).
pub fn text_to_image(
    model: &StableDiffusion,
    task: &CreateTask,
    random_seed: u64,
) -> Result<TextToImage, Incompatible> {
    let m = &task.model_inputs;
    let c = &task.call_inputs;
    if c.pipeline != Pipeline::Text2Image {
        return Err(Incompatible {
            message: format!(
                "this worker runs {} only, and was handed a {} task",
                Pipeline::Text2Image,
                c.pipeline
            ),
        });
    }
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
    request.scheduler = c.scheduler;
    // Left out, the engine's default stands: the checker runs where the model has one.
    if let Some(asked) = c.safety_checker {
        request.safety_checker = asked;
    }
    Ok(request)
}

/// Milliseconds a task spent waiting and running, for `$timings`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Spent {
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
    spent: Spent,
) -> sie_engine::Result<ModelOutputs> {
    let format = task.call_inputs.image_format;
    let images = generated
        .images
        .iter()
        .map(|rgb| {
            output::encode(rgb, generated.width, generated.height, format)
                .map(|bytes| base64::engine::general_purpose::STANDARD.encode(bytes))
        })
        .collect::<sie_engine::Result<Vec<_>>>()?;
    Ok(ModelOutputs {
        nsfw_content_detected: generated.nsfw_content_detected.clone(),
        seed: generated.seed,
        meta: Meta {
            pipeline: task.call_inputs.pipeline,
            scheduler: generated.scheduler,
            width: generated.width as u32,
            height: generated.height as u32,
            num_inference_steps: request.num_inference_steps as u32,
            num_images_per_prompt: images.len() as u32,
            image_format: MimeType(format),
            prompt_truncated: generated.prompt_truncated,
            negative_prompt_truncated: generated.negative_prompt_truncated,
            model: model
                .files
                .summary()
                .get("variant")
                .cloned()
                .unwrap_or_default(),
            runs_on: Some(runs_on(model)),
        },
        timings: Timings {
            queue: spent.queue_ms,
            inference: spent.inference_ms,
            total: spent.queue_ms + spent.inference_ms,
            first_step: spent.first_step_ms,
        },
        images,
    })
}
