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
//! [`TextToImage::run`] is that order, beside the request it runs; the caller sees every
//! stage through an [`Observer`] and can stop the run between steps with a cancel flag.

use std::sync::atomic::{AtomicBool, Ordering};

use candle_core::{DType, Tensor};

use super::{Generated, Observer};
use crate::error::{Error, Result};
use crate::loader::StableDiffusion;
use crate::noise::TorchGenerator;
use crate::scheduler::{self, SchedulerKind};

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
    /// stops with [`Error::Cancelled`].
    pub fn run(
        &self,
        model: &StableDiffusion,
        observer: &mut dyn Observer,
        cancel: &AtomicBool,
    ) -> Result<Generated> {
        let scale = model.files.vae.scale_factor();
        for (field, value) in [("width", self.width), ("height", self.height)] {
            if value == 0 || value % scale != 0 {
                return Err(Error::invalid(
                    field,
                    format!("{value} is not a positive multiple of {scale}"),
                ));
            }
        }
        if self.safety_checker && model.safety_checker.is_none() {
            return Err(Error::invalid(
                "safety_checker",
                "requested, but this model has no safety checker installed \
                 (a safety_checker/ directory, or one named when loading)",
            ));
        }
        if self.num_images_per_prompt == 0 {
            return Err(Error::invalid(
                "num_images_per_prompt",
                "must be at least 1",
            ));
        }
        let kind = match self.scheduler {
            Some(kind) => kind,
            None => model.files.scheduler.default_kind()?,
        };
        let mut sched = scheduler::build(
            kind,
            &model.files.scheduler,
            self.num_inference_steps,
            self.eta,
        )?;
        let guided = self.guidance_scale > 1.0;
        let n = self.num_images_per_prompt;

        // 1. Text conditioning, repeated per image; the unconditional half first, as diffusers
        //    concatenates [negative, positive].
        let prompt = model.tokenizer.encode(&self.prompt);
        let negative = model.tokenizer.encode(&self.negative_prompt);
        observer.tokens(&prompt.ids, &negative.ids);
        let cond = model.encode_text(&prompt.ids)?.repeat((n, 1, 1))?;
        let embeddings = if guided {
            let uncond = model.encode_text(&negative.ids)?.repeat((n, 1, 1))?;
            Tensor::cat(&[uncond, cond], 0)?
        } else {
            cond
        };
        observer.text_embeddings(&embeddings);

        // 2. Initial latents: one randn call over the whole batch, as `randn_tensor` does.
        let shape = (
            n,
            model
                .files
                .unet
                .in_channels
                .min(model.files.vae.latent_channels),
            self.height / scale,
            self.width / scale,
        );
        let mut generator = TorchGenerator::new(self.seed);
        let numel = shape.0 * shape.1 * shape.2 * shape.3;
        let noise = Tensor::from_vec(generator.randn(numel), shape, &model.device)?;
        let mut latents = (noise * sched.init_noise_sigma())?.to_dtype(model.dtype)?;
        observer.initial_latents(&latents);

        // 3. Denoising loop.
        let timesteps = sched.timesteps().to_vec();
        for (i, &t) in timesteps.iter().enumerate() {
            if cancel.load(Ordering::Relaxed) {
                return Err(Error::Cancelled);
            }
            let model_input = if guided {
                Tensor::cat(&[&latents, &latents], 0)?
            } else {
                latents.clone()
            };
            let model_input = sched.scale_model_input(model_input, i)?;
            let noise_pred = model.unet_forward(&model_input, t, &embeddings)?;
            let noise_pred = if guided {
                let uncond = noise_pred.narrow(0, 0, n)?;
                let text = noise_pred.narrow(0, n, n)?;
                let guided_pred = (&uncond + ((&text - &uncond)? * self.guidance_scale)?)?;
                if self.guidance_rescale > 0.0 {
                    rescale_noise_cfg(&guided_pred, &text, self.guidance_rescale)?
                } else {
                    guided_pred
                }
            } else {
                noise_pred
            };
            let mut draw = || {
                let noise = generator.randn(numel);
                Tensor::from_vec(noise, shape, &model.device)?.to_dtype(model.dtype)
            };
            latents = sched.step(&noise_pred, i, &latents, &mut draw)?;
            observer.step(i + 1, timesteps.len(), &latents);
        }

        // 4. Decode and quantise.
        let decoded = model.vae_decode(&(latents / model.files.vae.scaling_factor)?)?;
        let mut images = to_rgb_bytes(&decoded)?;

        // 5. diffusers' `run_safety_checker`: the checker sees the uint8 images; a flagged one is
        //    returned black (diffusers zeroes it and skips the denormalisation, so all zeros).
        let nsfw_content_detected = match (&model.safety_checker, self.safety_checker) {
            (Some(checker), true) => Some(checker.apply(&mut images, self.width, self.height)?),
            _ => None,
        };
        Ok(Generated {
            images,
            width: self.width,
            height: self.height,
            seed: self.seed,
            scheduler: kind,
            prompt_truncated: prompt.truncated,
            negative_prompt_truncated: negative.truncated,
            nsfw_content_detected,
        })
    }
}

/// diffusers' `rescale_noise_cfg`: pulls the guided prediction's per-sample standard deviation
/// back towards the text prediction's (Lin et al., "Common Diffusion Noise Schedules...", 3.4).
fn rescale_noise_cfg(cfg: &Tensor, text: &Tensor, rescale: f64) -> Result<Tensor> {
    let std_text = per_sample_std(text)?;
    let std_cfg = per_sample_std(cfg)?;
    let rescaled = cfg.broadcast_mul(&(std_text / std_cfg)?)?;
    Ok(((rescaled * rescale)? + (cfg * (1.0 - rescale))?)?)
}

/// torch's `std(dim=[1, 2, 3], keepdim=True)`: unbiased (n - 1) per batch entry.
fn per_sample_std(t: &Tensor) -> Result<Tensor> {
    let (b, c, h, w) = t.dims4()?;
    let flat = t.reshape((b, c * h * w))?;
    let mean = flat.mean_keepdim(1)?;
    let var = (flat.broadcast_sub(&mean)?.sqr()?.sum_keepdim(1)? / ((c * h * w - 1) as f64))?;
    Ok(var.sqrt()?.reshape((b, 1, 1, 1))?)
}

/// (batch, 3, h, w) in [-1, 1] to RGB bytes per image, as diffusers' `VaeImageProcessor`
/// post-processes: `(x / 2 + 0.5).clamp(0, 1)`, times 255, rounded half-to-even.
fn to_rgb_bytes(decoded: &Tensor) -> Result<Vec<Vec<u8>>> {
    let (b, _, _, _) = decoded.dims4()?;
    let images = ((decoded.to_dtype(DType::F32)? / 2.0)? + 0.5)?
        .clamp(0f32, 1f32)?
        .permute((0, 2, 3, 1))?
        .contiguous()?;
    (0..b)
        .map(|i| {
            let values: Vec<f32> = images.get(i)?.flatten_all()?.to_vec1()?;
            Ok(values
                .into_iter()
                .map(|v| (v * 255.0).round_ties_even() as u8)
                .collect())
        })
        .collect()
}
