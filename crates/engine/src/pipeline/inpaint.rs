//! Inpainting: diffusers' `StableDiffusionInpaintPipeline.__call__`, step for step.
//!
//! The mask (white = repaint) is resized, made grayscale and binarised as the mask processor
//! does; the masked image is the input image with the repainted region set to 0 (grey).
//! With a 9-channel inpainting UNet, the mask (nearest-sampled to the latents' size) and the
//! masked image's latents are concatenated to the UNet's input at every step. With an
//! ordinary 4-channel UNet the model knows nothing of the mask, so after every step the
//! known region of the latents is replaced by the input image's latents noised to the next
//! step's level, with the same noise the run started from.
//!
//! The generator's draws come in diffusers' order, which depends on the UNet and the
//! strength: the image's latents (when a 4-channel UNet needs them to re-impose, or when
//! strength below 1 starts from them), the initial noise, then the masked image's latents.
//! At strength 1 the latents start from pure noise scaled by the initial sigma.

use std::sync::atomic::AtomicBool;

use candle_core::{DType, Tensor};

use super::image_to_image::check_image_request;
use super::stages::{self, Loop};
use super::{Generated, Observer, TextToImage};
use crate::error::Result;
use crate::input::RgbImage;
use crate::loader::StableDiffusion;
use crate::scheduler::Scheduler;

/// A validated inpainting request: a text-to-image request (its width and height are the
/// output's, to which image and mask are resized), the image and the mask.
#[derive(Debug, Clone, PartialEq)]
pub struct Inpaint {
    pub request: TextToImage,
    pub image: RgbImage,
    /// White (after conversion to grayscale, at least half-way) is repainted; the rest is kept.
    pub mask: RgbImage,
    /// 0..=1: the share of the steps that run; at 1 the repainted region starts from noise.
    pub strength: f64,
}

impl Inpaint {
    /// Runs this request on `model`, as [`TextToImage::run`] does.
    pub fn run(
        &self,
        model: &StableDiffusion,
        observer: &mut dyn Observer,
        cancel: &AtomicBool,
    ) -> Result<Generated> {
        let request = &self.request;
        let n = request.num_images_per_prompt;
        let skipped = check_image_request(request, self.strength)?;
        let mut prepared = stages::prepare(request, model, observer)?;
        let begin = skipped * prepared.scheduler.order();
        let at_full_strength = self.strength == 1.0;
        let nine_channels = model.files.is_inpainting();

        let (w, h) = (request.width, request.height);
        let image = self.image.to_image_tensor(w, h, &model.device)?;
        let image_latents = if !nine_channels || !at_full_strength {
            let encoded = stages::encode_image(model, &image, &mut prepared.generator)?;
            Some(encoded.repeat((n, 1, 1, 1))?)
        } else {
            None
        };
        let shape = stages::latent_shape(request, model);
        let noise = stages::randn(&mut prepared.generator, shape, model)?;
        let latents = match &image_latents {
            Some(clean) if !at_full_strength => {
                prepared.scheduler.add_noise(clean, &noise, begin)?
            }
            _ => (&noise * prepared.scheduler.init_noise_sigma())?,
        };
        observer.initial_latents(&latents);

        // The mask at full size (1 = repaint), the image with that region blanked, and the
        // mask at the latents' size: torch's nearest interpolation by the VAE's factor reads
        // every factor-th pixel.
        let mask = self.mask.to_mask_tensor(w, h, &model.device)?;
        let keep = (1.0 - &mask)?;
        let masked_image = image.broadcast_mul(&keep)?;
        let scale = model.files.vae.scale_factor();
        let small_mask = nearest_downsample(&mask, scale)?
            .to_dtype(model.dtype)?
            .repeat((n, 1, 1, 1))?;
        let masked_latents = stages::encode_image(model, &masked_image, &mut prepared.generator)?
            .repeat((n, 1, 1, 1))?;

        let unet_extra = if nine_channels {
            let both = Tensor::cat(&[&small_mask, &masked_latents], 1)?;
            Some(if prepared.guided {
                Tensor::cat(&[&both, &both], 0)?
            } else {
                both
            })
        } else {
            None
        };
        let reimpose =
            |scheduler: &dyn Scheduler, index: usize, latents: Tensor| -> Result<Tensor> {
                let clean = image_latents
                    .as_ref()
                    .expect("a 4-channel UNet's run encodes the image");
                let known = if index + 1 < scheduler.timesteps().len() {
                    scheduler.add_noise(clean, &noise, index + 1)?
                } else {
                    clean.clone()
                };
                let keep = (1.0 - &small_mask)?;
                Ok((keep.broadcast_mul(&known)? + small_mask.broadcast_mul(&latents)?)?)
            };
        let how = Loop {
            begin,
            unet_extra: unet_extra.as_ref(),
            after_step: if nine_channels { None } else { Some(&reimpose) },
        };
        stages::denoise_and_finish(request, model, prepared, latents, how, observer, cancel)
    }
}

/// torch's `interpolate(mask, size=(h / factor, w / factor))` (mode `nearest`): output pixel
/// (i, j) is input pixel (i * factor, j * factor).
fn nearest_downsample(mask: &Tensor, factor: usize) -> Result<Tensor> {
    let (b, c, h, w) = mask.dims4()?;
    let values: Vec<f32> = mask.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?;
    let (oh, ow) = (h / factor, w / factor);
    let mut out = Vec::with_capacity(b * c * oh * ow);
    for plane in values.chunks_exact(h * w) {
        for i in 0..oh {
            for j in 0..ow {
                out.push(plane[i * factor * w + j * factor]);
            }
        }
    }
    Ok(Tensor::from_vec(out, (b, c, oh, ow), mask.device())?)
}
