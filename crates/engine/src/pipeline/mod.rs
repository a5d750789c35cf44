//! The pipelines: a validated request in, images out, in diffusers' order of operations.
//!
//! One file per pipeline (`text_to_image.rs`, `image_to_image.rs`, `inpaint.rs`), each
//! holding its request type and the run that owns it, so the order of operations is read
//! where the request is; the stages they share are in `stages.rs`, and `batch.rs` runs
//! several text-to-image runs of one size through shared UNet evaluations ([`Batch`]). What callers share is
//! here: [`Request`] (any of the three, as a worker holds a task), [`Observer`] (every stage
//! of a run: progress for the queue, tensors for `--dump`), [`Generated`] (what a run
//! produced), [`PIPELINES`] (what this engine implements) and [`pipelines`] (what a loaded
//! model runs, which a worker announces).
//!
//! This is the top floor: a run uses the loaded model (`loader`), draws noise (`noise`) and
//! steps a scheduler (`scheduler`). The scheduler and the tokenizer stay beside this floor
//! rather than under it because the loader reads them too (the scheduler config and the
//! tokenizer files are part of the model directory), and under it they would make the
//! loader import the pipeline. Noise and output encoding are leaves with no model in them;
//! they stay at the crate's top, where the service and the parity tests reach them.

mod batch;
mod image_to_image;
mod inpaint;
mod stages;
mod text_to_image;

use std::sync::atomic::AtomicBool;

use candle_core::Tensor;
pub use sie_vocab::Pipeline;

use crate::error::Result;
use crate::loader::StableDiffusion;
use crate::scheduler::SchedulerKind;

pub use crate::input::RgbImage;
pub use batch::{Batch, RunId, Stepped};
pub use image_to_image::ImageToImage;
pub use inpaint::Inpaint;
pub use text_to_image::TextToImage;

/// The pipelines this engine implements: all a task may ask of some worker.
pub const PIPELINES: &[Pipeline] = &[
    Pipeline::Text2Image,
    Pipeline::Image2Image,
    Pipeline::Inpaint,
];

/// The pipelines `model` runs: an ordinary SD 2.x UNet runs all three (inpainting by
/// re-imposing the known region); a 9-channel inpainting UNet needs a mask at every step,
/// so it runs inpainting only, as in diffusers.
pub fn pipelines(model: &StableDiffusion) -> &'static [Pipeline] {
    if model.files.is_inpainting() {
        &[Pipeline::Inpaint]
    } else {
        PIPELINES
    }
}

/// Any pipeline's request, as a worker holds a task.
#[derive(Debug, Clone, PartialEq)]
pub enum Request {
    TextToImage(TextToImage),
    ImageToImage(ImageToImage),
    Inpaint(Inpaint),
}

impl Request {
    /// Runs the request's pipeline (see [`TextToImage::run`]).
    pub fn run(
        &self,
        model: &StableDiffusion,
        observer: &mut dyn Observer,
        cancel: &AtomicBool,
    ) -> Result<Generated> {
        match self {
            Request::TextToImage(r) => r.run(model, observer, cancel),
            Request::ImageToImage(r) => r.run(model, observer, cancel),
            Request::Inpaint(r) => r.run(model, observer, cancel),
        }
    }

    /// The fields every pipeline shares.
    pub fn common(&self) -> &TextToImage {
        match self {
            Request::TextToImage(r) => r,
            Request::ImageToImage(r) => &r.request,
            Request::Inpaint(r) => &r.request,
        }
    }

    /// The fields every pipeline shares, to set them.
    pub fn common_mut(&mut self) -> &mut TextToImage {
        match self {
            Request::TextToImage(r) => r,
            Request::ImageToImage(r) => &mut r.request,
            Request::Inpaint(r) => &mut r.request,
        }
    }

    /// The denoising steps this request runs: `num_inference_steps`, or for image-to-image
    /// and inpainting the `int(steps * strength)` that strength leaves (0 when it leaves
    /// none, which the run refuses).
    pub fn steps_run(&self) -> usize {
        let steps = self.common().num_inference_steps;
        let strength = match self {
            Request::TextToImage(_) => return steps,
            Request::ImageToImage(r) => r.strength,
            Request::Inpaint(r) => r.strength,
        };
        image_to_image::skipped_steps(steps, strength).map_or(0, |skipped| steps - skipped)
    }

    pub fn pipeline(&self) -> Pipeline {
        match self {
            Request::TextToImage(_) => Pipeline::Text2Image,
            Request::ImageToImage(_) => Pipeline::Image2Image,
            Request::Inpaint(_) => Pipeline::Inpaint,
        }
    }
}

/// What a run produced.
#[derive(Debug)]
pub struct Generated {
    /// RGB images, `width * height * 3` bytes each, row-major.
    pub images: Vec<Vec<u8>>,
    pub width: usize,
    pub height: usize,
    pub seed: u64,
    pub scheduler: SchedulerKind,
    /// The prompt was longer than the text encoder's 77 tokens and was cut, as diffusers cuts it.
    pub prompt_truncated: bool,
    pub negative_prompt_truncated: bool,
    /// Per image, whether the safety checker flagged it (and it was blacked out); `None` when no
    /// checker ran.
    pub nsfw_content_detected: Option<Vec<bool>>,
}

/// Sees each stage of a run. Every method has a do-nothing default.
pub trait Observer {
    /// Token ids of the prompt and the negative prompt, padded to the encoder's length.
    fn tokens(&mut self, _prompt: &[u32], _negative: &[u32]) {}
    /// The text embeddings fed to the UNet, (unconditional; conditional) when guided.
    fn text_embeddings(&mut self, _embeddings: &Tensor) {}
    /// The latents before the first step (already scaled by the scheduler's initial sigma).
    fn initial_latents(&mut self, _latents: &Tensor) {}
    /// Called after step `step` (1-based) of the `steps` this run takes (fewer than asked when
    /// image-to-image's strength skips some) with the latents it produced.
    fn step(&mut self, _step: usize, _steps: usize, _latents: &Tensor) {}
}

/// An observer that watches nothing.
pub struct NoObserver;
impl Observer for NoObserver {}
