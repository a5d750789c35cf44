//! One task's translation between the wire protocol and the engine.
//!
//! `sie-api`'s `CreateTask` is what the API validated and the queue stored; here it
//! becomes the engine's `Request` (its input images decoded to pixels), and the engine's `Generated` becomes the typed
//! `ModelOutputs` the client reads (SPEC 1.2): base64 images, `nsfw_content_detected`,
//! `seed`, `$meta` and `$timings`. Nothing here re-checks the request: the API refused
//! what no worker can run, and the store hands this worker only tasks its
//! [`capabilities`] cover; what is left for the engine to refuse is its own assertion.

use base64::Engine as _;
use sie_api::request::{CreateTask, InputImage, Pipeline, SchedulerKind};
use sie_api::worker::{Announcement, Meta, MimeType, ModelOutputs, RunsOn, Timings};
use sie_engine::output;
use sie_engine::pipeline::{Generated, ImageToImage, Inpaint, Request, RgbImage, TextToImage};
use sie_engine::StableDiffusion;
use sie_vocab::Capabilities;

/// What a worker with `model` can run: the pipelines the model runs (a 9-channel inpainting
/// model runs inpainting only), every scheduler, and the safety checker where the model has one.
pub fn capabilities(model: &StableDiffusion) -> Capabilities {
    Capabilities::new(
        sie_engine::pipeline::pipelines(model).iter().copied(),
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

/// Why a task this worker was handed does not run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NotRun {
    /// The store matched it against capabilities this worker does not have (another
    /// build's, say). Another worker may run it.
    Incompatible(String),
    /// Its input image no longer decodes (the API decoded it at submission, so the stored
    /// bytes changed): no worker can run it.
    InvalidImage(String),
}

/// The engine request for `task`. `random_seed` is used only when the task has no seed
/// (the API draws one at submission, so this is for tasks stored without). Input images
/// are decoded here, on the worker's thread.
pub fn request(
    model: &StableDiffusion,
    task: &CreateTask,
    random_seed: u64,
) -> Result<Request, NotRun> {
    let m = &task.model_inputs;
    let c = &task.call_inputs;
    let runs = sie_engine::pipeline::pipelines(model);
    if !runs.contains(&c.pipeline) {
        let names: Vec<&str> = runs.iter().map(|p| p.as_str()).collect();
        return Err(NotRun::Incompatible(format!(
            "this worker runs {} only, and was handed a {} task",
            names.join(", "),
            c.pipeline
        )));
    }
    let mut common = TextToImage::new(
        model,
        m.prompt.as_str(),
        m.seed.map(|s| s.get()).unwrap_or(random_seed),
    );
    common.negative_prompt = m.negative_prompt.clone();
    common.num_inference_steps = m.num_inference_steps.get() as usize;
    common.guidance_scale = m.guidance_scale.get();
    if let Some(w) = m.width {
        common.width = w.get() as usize;
    }
    if let Some(h) = m.height {
        common.height = h.get() as usize;
    }
    common.num_images_per_prompt = m.num_images_per_prompt.get() as usize;
    common.eta = m.eta.get();
    common.guidance_rescale = m.guidance_rescale.get();
    common.scheduler = c.scheduler;
    // Left out, the engine's default stands: the checker runs where the model has one.
    if let Some(asked) = c.safety_checker {
        common.safety_checker = asked;
    }
    let pixels = |name: &str, image: Option<&InputImage>| -> Result<RgbImage, NotRun> {
        let invalid = |why: String| NotRun::InvalidImage(format!("modelInputs.{name}: {why}"));
        let image = image.ok_or_else(|| invalid("is missing from the stored task".into()))?;
        let rgb = image.to_rgb().map_err(invalid)?;
        RgbImage::new(rgb.width as usize, rgb.height as usize, rgb.pixels)
            .map_err(|e| invalid(e.to_string()))
    };
    let strength = m.strength.get();
    Ok(match c.pipeline {
        Pipeline::Text2Image => Request::TextToImage(common),
        Pipeline::Image2Image => Request::ImageToImage(ImageToImage {
            request: common,
            image: pixels("image", m.image.as_ref())?,
            strength,
        }),
        Pipeline::Inpaint => Request::Inpaint(Inpaint {
            request: common,
            image: pixels("image", m.image.as_ref())?,
            mask: pixels("mask_image", m.mask_image.as_ref())?,
            strength,
        }),
    })
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
