//! The pipelines: a validated request in, images out, in diffusers' order of operations.
//!
//! One file per pipeline (`text_to_image.rs` today; img2img and inpainting will sit beside
//! it), each holding its request type and the run that owns it, so the order of operations
//! is read where the request is. What every pipeline shares is here: [`Observer`] (every
//! stage of a run: progress for the queue, tensors for `--dump`), [`Generated`] (what a run
//! produced) and [`PIPELINES`] (what a worker announces).
//!
//! This is the top floor: a run uses the loaded model (`loader`), draws noise (`noise`) and
//! steps a scheduler (`scheduler`). The scheduler and the tokenizer stay beside this floor
//! rather than under it because the loader reads them too (the scheduler config and the
//! tokenizer files are part of the model directory), and under it they would make the
//! loader import the pipeline. Noise and output encoding are leaves with no model in them;
//! they stay at the crate's top, where the service and the parity tests reach them.

mod text_to_image;

use candle_core::Tensor;

use crate::scheduler::SchedulerKind;

pub use text_to_image::TextToImage;

/// The pipelines this engine runs: what a worker announces, and all a task may ask for.
pub const PIPELINES: &[sie_vocab::Pipeline] = &[sie_vocab::Pipeline::Text2Image];

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
    /// Called after step `step` (1-based) of `steps` with the latents it produced.
    fn step(&mut self, _step: usize, _steps: usize, _latents: &Tensor) {}
}

/// An observer that watches nothing.
pub struct NoObserver;
impl Observer for NoObserver {}
