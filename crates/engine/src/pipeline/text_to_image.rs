//! Text-to-image: diffusers' `StableDiffusionPipeline.__call__`, step for step.
//!
//! The order of operations is the contract that makes our images diffusers'
//! images: the prompt and the negative prompt are encoded separately, the
//! initial latents come from one `torch.randn` call on the request's generator
//! (all images of the request at once), stochastic schedulers draw from that
//! same generator afterwards, classifier-free guidance runs the unconditional
//! and conditional halves as one batch, and the decoded image is rounded to
//! bytes half-to-even as numpy does. When the request asks for it, the safety
//! checker then sees those bytes and blacks out what it flags.
//!
//! [`TextToImage::run`] is that order, beside the request it runs; the stages it shares with
//! image-to-image and inpainting are in `stages.rs`. The caller sees every stage through an
//! [`Observer`] and can stop the run between steps with a cancel flag.

use std::sync::atomic::AtomicBool;

use super::stages::{self, Loop};
use super::{Generated, Observer};
use crate::error::Result;
use crate::loader::StableDiffusion;
use crate::scheduler::SchedulerKind;

/// A validated text-to-image request, in the engine's terms.
#[derive(Debug, Clone, PartialEq)]
pub struct TextToImage {
    pub prompt: String,
    pub negative_prompt: String,
    pub num_inference_steps: usize,
    pub guidance_scale: f64,
    pub width: usize,
    pub height: usize,
    pub num_images_per_prompt: usize,
    pub seed: u64,
    /// `None`: the model's own scheduler from `scheduler_config.json`.
    pub scheduler: Option<SchedulerKind>,
    pub eta: f64,
    pub guidance_rescale: f64,
    /// Run the model's safety checker on the images (refused when none is loaded).
    pub safety_checker: bool,
}

impl TextToImage {
    /// A request with diffusers' defaults at the model's native size.
    pub fn new(model: &StableDiffusion, prompt: impl Into<String>, seed: u64) -> Self {
        let size = model.files.native_size();
        TextToImage {
            prompt: prompt.into(),
            negative_prompt: String::new(),
            num_inference_steps: 50,
            guidance_scale: 7.5,
            width: size,
            height: size,
            num_images_per_prompt: 1,
            seed,
            scheduler: None,
            eta: 0.0,
            guidance_rescale: 0.0,
            safety_checker: model.safety_checker.is_some(),
        }
    }

    /// Runs this request on `model`. `cancel` is read before every step; once set, the run
    /// stops with [`Error::Cancelled`](crate::Error::Cancelled).
    pub fn run(
        &self,
        model: &StableDiffusion,
        observer: &mut dyn Observer,
        cancel: &AtomicBool,
    ) -> Result<Generated> {
        stages::refuse_inpainting_model(model)?;
        let mut prepared = stages::prepare(self, model, observer)?;
        // Initial latents: one randn call over the whole batch, as `randn_tensor` does, scaled
        // by the scheduler's initial sigma.
        let shape = stages::latent_shape(self, model);
        let noise = stages::randn(&mut prepared.generator, shape, model)?;
        let latents = (noise * prepared.scheduler.init_noise_sigma())?;
        observer.initial_latents(&latents);
        let how = Loop {
            begin: 0,
            unet_extra: None,
            after_step: None,
        };
        stages::denoise_and_finish(self, model, prepared, latents, how, observer, cancel)
    }
}
