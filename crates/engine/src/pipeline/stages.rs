//! The stages every pipeline shares, in diffusers' order: checking the request, building the
//! scheduler, encoding the prompts; encoding an input image to latents; the denoising loop
//! (with the two places inpainting changes it); decoding, quantising and the safety checker.
//!
//! Each pipeline file is then only what its diffusers class does differently, read in
//! order: where its latents start, at which step the loop begins, and what it feeds the
//! UNet beside the latents.

use std::sync::atomic::{AtomicBool, Ordering};

use candle_core::{DType, Tensor};

use super::{Generated, Observer, TextToImage};
use crate::error::{Error, Result};
use crate::loader::StableDiffusion;
use crate::noise::TorchGenerator;
use crate::scheduler::{self, Scheduler, SchedulerKind};

/// What the shared first stages produced for one run.
pub(super) struct Prepared {
    pub kind: SchedulerKind,
    pub scheduler: Box<dyn Scheduler>,
    /// (unconditional; conditional) when guided, each repeated per image.
    pub embeddings: Tensor,
    pub guided: bool,
    pub prompt_truncated: bool,
    pub negative_prompt_truncated: bool,
    /// The request's generator: every random draw of the run comes from it, in diffusers' order.
    pub generator: TorchGenerator,
}

/// The latents' shape for `request`: (images, latent channels, height / 8, width / 8).
pub(super) fn latent_shape(
    request: &TextToImage,
    model: &StableDiffusion,
) -> (usize, usize, usize, usize) {
    let scale = model.files.vae.scale_factor();
    (
        request.num_images_per_prompt,
        model.files.vae.latent_channels,
        request.height / scale,
        request.width / scale,
    )
}

/// Checks what the engine itself must refuse, builds the scheduler and encodes the prompts
/// (diffusers' `check_inputs`, `encode_prompt` and `retrieve_timesteps`).
pub(super) fn prepare(
    request: &TextToImage,
    model: &StableDiffusion,
    observer: &mut dyn Observer,
) -> Result<Prepared> {
    let scale = model.files.vae.scale_factor();
    for (field, value) in [("width", request.width), ("height", request.height)] {
        if value == 0 || value % scale != 0 {
            return Err(Error::invalid(
                field,
                format!("{value} is not a positive multiple of {scale}"),
            ));
        }
    }
    if request.safety_checker && model.safety_checker.is_none() {
        return Err(Error::invalid(
            "safety_checker",
            "requested, but this model has no safety checker installed \
             (a safety_checker/ directory, or one named when loading)",
        ));
    }
    if request.num_images_per_prompt == 0 {
        return Err(Error::invalid(
            "num_images_per_prompt",
            "must be at least 1",
        ));
    }
    let kind = match request.scheduler {
        Some(kind) => kind,
        None => model.files.scheduler.default_kind()?,
    };
    let scheduler = scheduler::build(
        kind,
        &model.files.scheduler,
        request.num_inference_steps,
        request.eta,
    )?;
    let guided = request.guidance_scale > 1.0;
    let n = request.num_images_per_prompt;

    // The unconditional half first, as diffusers concatenates [negative, positive].
    let prompt = model.tokenizer.encode(&request.prompt);
    let negative = model.tokenizer.encode(&request.negative_prompt);
    observer.tokens(&prompt.ids, &negative.ids);
    let cond = model.encode_text(&prompt.ids)?.repeat((n, 1, 1))?;
    let embeddings = if guided {
        let uncond = model.encode_text(&negative.ids)?.repeat((n, 1, 1))?;
        Tensor::cat(&[uncond, cond], 0)?
    } else {
        cond
    };
    observer.text_embeddings(&embeddings);
    Ok(Prepared {
        kind,
        scheduler,
        embeddings,
        guided,
        prompt_truncated: prompt.truncated,
        negative_prompt_truncated: negative.truncated,
        generator: TorchGenerator::new(request.seed),
    })
}

/// One `randn` of `shape` from the generator, in the model's dtype on its device, as
/// `randn_tensor` draws on the CPU generator and moves the result.
pub(super) fn randn(
    generator: &mut TorchGenerator,
    shape: (usize, usize, usize, usize),
    model: &StableDiffusion,
) -> Result<Tensor> {
    let numel = shape.0 * shape.1 * shape.2 * shape.3;
    Ok(Tensor::from_vec(generator.randn(numel), shape, &model.device)?.to_dtype(model.dtype)?)
}

/// diffusers' `retrieve_latents(vae.encode(image), generator) * scaling_factor`: the VAE's
/// latent distribution for `image` ((batch, 3, h, w) in [-1, 1]), sampled with one draw
/// from the generator (`DiagonalGaussianDistribution.sample`), then scaled.
pub(super) fn encode_image(
    model: &StableDiffusion,
    image: &Tensor,
    generator: &mut TorchGenerator,
) -> Result<Tensor> {
    let moments = model.vae_encode_moments(&image.to_dtype(model.dtype)?)?;
    let (b, c2, h, w) = moments.dims4()?;
    let c = c2 / 2;
    let mean = moments.narrow(1, 0, c)?;
    let log_var = moments.narrow(1, c, c)?.clamp(-30f32, 20f32)?;
    let std = (log_var * 0.5)?.exp()?;
    let sample = randn(generator, (b, c, h, w), model)?;
    let latents = (mean + (std * sample)?)?;
    Ok((latents * model.files.vae.scaling_factor)?)
}

/// Applied to the latents after a step, with the scheduler and the entry just taken.
pub(super) type AfterStep<'a> = &'a dyn Fn(&dyn Scheduler, usize, Tensor) -> Result<Tensor>;

/// How a pipeline changes the denoising loop.
pub(super) struct Loop<'a> {
    /// The entry of the scheduler's timesteps the loop starts at: 0 for text-to-image, later
    /// when image-to-image's strength skips the first steps.
    pub begin: usize,
    /// Concatenated to the scaled UNet input on the channel axis (the 9-channel inpainting
    /// UNet's mask and masked-image latents), already doubled when guided.
    pub unet_extra: Option<&'a Tensor>,
    /// Applied to the latents after every step with the scheduler and the entry just taken
    /// (the 4-channel inpainting's re-imposed known region).
    pub after_step: Option<AfterStep<'a>>,
}

/// Refuses a run of text-to-image or image-to-image on a 9-channel inpainting UNet, which
/// needs a mask at every step.
pub(super) fn refuse_inpainting_model(model: &StableDiffusion) -> Result<()> {
    if model.files.is_inpainting() {
        return Err(Error::invalid(
            "pipeline",
            format!(
                "this model's UNet is an inpainting one ({} input channels); it runs {} only",
                model.files.unet.in_channels,
                sie_vocab::Pipeline::Inpaint
            ),
        ));
    }
    Ok(())
}

/// The rest of every run: the denoising loop from `latents` as `how` says, a
/// [`Denoising`] stepped alone (`cancel` read before every step), then [`finish`].
pub(super) fn denoise_and_finish(
    request: &TextToImage,
    model: &StableDiffusion,
    prepared: Prepared,
    latents: Tensor,
    how: Loop<'_>,
    observer: &mut dyn Observer,
    cancel: &AtomicBool,
) -> Result<Generated> {
    let mut run = Denoising::new(request, prepared, latents, how.begin);
    while !run.done() {
        if cancel.load(Ordering::Relaxed) {
            return Err(Error::Cancelled);
        }
        let (input, t) = run.unet_input(how.unet_extra)?;
        let noise_pred = model.unet_forward(&input, t, run.embeddings())?;
        run.advance(&noise_pred, model, how.after_step, observer)?;
    }
    run.finish(request, model)
}

/// One run's denoising loop in progress: its latents and its place in its scheduler's
/// timesteps, taken one step at a time, so a run can go alone ([`denoise_and_finish`]) or
/// share each UNet evaluation with other runs (`batch.rs`): classifier-free guidance over
/// both halves, `guidance_rescale`, the scheduler's step with the run's own generator.
pub(super) struct Denoising {
    prepared: Prepared,
    latents: Tensor,
    images: usize,
    guidance_scale: f64,
    guidance_rescale: f64,
    timesteps: Vec<f64>,
    /// The entry the loop began at, and the one it takes next.
    begin: usize,
    next: usize,
}

impl Denoising {
    pub fn new(request: &TextToImage, prepared: Prepared, latents: Tensor, begin: usize) -> Self {
        let timesteps = prepared.scheduler.timesteps().to_vec();
        Denoising {
            prepared,
            latents,
            images: request.num_images_per_prompt,
            guidance_scale: request.guidance_scale,
            guidance_rescale: request.guidance_rescale,
            timesteps,
            begin,
            next: begin,
        }
    }

    /// Whether every step has been taken.
    pub fn done(&self) -> bool {
        self.next >= self.timesteps.len()
    }

    /// Steps taken so far, and how many the run takes in all.
    pub fn progress(&self) -> (usize, usize) {
        (
            self.next - self.begin,
            self.timesteps.len().saturating_sub(self.begin),
        )
    }

    /// The UNet's input for the next step (the latents twice when guided, scaled by the
    /// scheduler, with `extra` on the channel axis) and that step's timestep.
    pub fn unet_input(&self, extra: Option<&Tensor>) -> Result<(Tensor, f64)> {
        let model_input = if self.prepared.guided {
            Tensor::cat(&[&self.latents, &self.latents], 0)?
        } else {
            self.latents.clone()
        };
        let mut model_input = self
            .prepared
            .scheduler
            .scale_model_input(model_input, self.next)?;
        if let Some(extra) = extra {
            model_input = Tensor::cat(&[&model_input, extra], 1)?;
        }
        Ok((model_input, self.timesteps[self.next]))
    }

    /// The text embeddings the UNet is conditioned on, a row per row of [`Self::unet_input`].
    pub fn embeddings(&self) -> &Tensor {
        &self.prepared.embeddings
    }

    /// Takes the step with the UNet's prediction for this run's rows: guidance, the
    /// scheduler's step (stochastic ones draw from the run's generator), `after`.
    pub fn advance(
        &mut self,
        noise_pred: &Tensor,
        model: &StableDiffusion,
        after: Option<AfterStep<'_>>,
        observer: &mut dyn Observer,
    ) -> Result<()> {
        let (n, i) = (self.images, self.next);
        let noise_pred = if self.prepared.guided {
            let uncond = noise_pred.narrow(0, 0, n)?;
            let text = noise_pred.narrow(0, n, n)?;
            let guided_pred = (&uncond + ((&text - &uncond)? * self.guidance_scale)?)?;
            if self.guidance_rescale > 0.0 {
                rescale_noise_cfg(&guided_pred, &text, self.guidance_rescale)?
            } else {
                guided_pred
            }
        } else {
            noise_pred.clone()
        };
        let shape = self.latents.dims4()?;
        let generator = &mut self.prepared.generator;
        let mut draw = || {
            let numel = shape.0 * shape.1 * shape.2 * shape.3;
            Tensor::from_vec(generator.randn(numel), shape, &model.device)?.to_dtype(model.dtype)
        };
        let mut latents = self
            .prepared
            .scheduler
            .step(&noise_pred, i, &self.latents, &mut draw)?;
        if let Some(after) = after {
            latents = after(self.prepared.scheduler.as_ref(), i, latents)?;
        }
        self.latents = latents;
        self.next += 1;
        let (step, steps) = self.progress();
        observer.step(step, steps, &self.latents);
        Ok(())
    }

    /// Decodes what the loop made ([`finish`]).
    pub fn finish(self, request: &TextToImage, model: &StableDiffusion) -> Result<Generated> {
        finish(request, model, &self.prepared, &self.latents)
    }
}

/// Decodes the latents, rounds to bytes and, when asked, runs the safety checker: diffusers'
/// `vae.decode`, `run_safety_checker` and `postprocess`.
fn finish(
    request: &TextToImage,
    model: &StableDiffusion,
    prepared: &Prepared,
    latents: &Tensor,
) -> Result<Generated> {
    let decoded = model.vae_decode(&(latents / model.files.vae.scaling_factor)?)?;
    let mut images = to_rgb_bytes(&decoded)?;
    // The checker sees the uint8 images; a flagged one is returned black (diffusers zeroes it
    // and skips the denormalisation, so all zeros).
    let nsfw_content_detected = match (&model.safety_checker, request.safety_checker) {
        (Some(checker), true) => Some(checker.apply(&mut images, request.width, request.height)?),
        _ => None,
    };
    Ok(Generated {
        images,
        width: request.width,
        height: request.height,
        seed: request.seed,
        scheduler: prepared.kind,
        prompt_truncated: prepared.prompt_truncated,
        negative_prompt_truncated: prepared.negative_prompt_truncated,
        nsfw_content_detected,
    })
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
