//! Image-to-image: diffusers' `StableDiffusionImg2ImgPipeline.__call__`, step for step.
//!
//! What differs from text-to-image is where the latents start and when the loop begins:
//! `strength` decides how many of the scheduler's steps run (`get_timesteps`: the last
//! `int(steps * strength)` of them, Heun's two entries per step counted as one); the input
//! image, resized to the output size as the image processor resizes it, is encoded by the
//! VAE and sampled with the request's generator (its first draw); then one `randn` over the
//! batch is added at the level of the first timestep that runs, each scheduler in its own
//! way (`Scheduler::add_noise`). Everything after is the shared loop from that entry.

use std::sync::atomic::AtomicBool;

use super::stages::{self, Loop};
use super::{Generated, Observer, TextToImage};
use crate::error::{Error, Result};
use crate::input::RgbImage;
use crate::loader::StableDiffusion;

/// A validated image-to-image request: a text-to-image request (its width and height are the
/// output's, to which the image is resized) with the image to start from.
#[derive(Debug, Clone, PartialEq)]
pub struct ImageToImage {
    pub request: TextToImage,
    pub image: RgbImage,
    /// How far from the image the result may go: 0..=1; the share of the steps that run.
    pub strength: f64,
}

impl ImageToImage {
    /// Runs this request on `model`, as [`TextToImage::run`] does.
    pub fn run(
        &self,
        model: &StableDiffusion,
        observer: &mut dyn Observer,
        cancel: &AtomicBool,
    ) -> Result<Generated> {
        let request = &self.request;
        stages::refuse_inpainting_model(model)?;
        let skipped = check_image_request(request, self.strength)?;
        let mut prepared = stages::prepare(request, model, observer)?;
        let begin = skipped * prepared.scheduler.order();

        let image = self
            .image
            .to_image_tensor(request.width, request.height, &model.device)?;
        let encoded = stages::encode_image(model, &image, &mut prepared.generator)?;
        let clean = encoded.repeat((request.num_images_per_prompt, 1, 1, 1))?;
        let shape = stages::latent_shape(request, model);
        let noise = stages::randn(&mut prepared.generator, shape, model)?;
        let latents = prepared.scheduler.add_noise(&clean, &noise, begin)?;
        observer.initial_latents(&latents);

        let how = Loop {
            begin,
            unet_extra: None,
            after_step: None,
        };
        stages::denoise_and_finish(request, model, prepared, latents, how, observer, cancel)
    }
}

/// What image-to-image and inpainting check before they run: no `guidance_rescale` (their
/// diffusers pipelines have none), and a strength that runs a step; the steps skipped.
pub(super) fn check_image_request(request: &TextToImage, strength: f64) -> Result<usize> {
    if request.guidance_rescale != 0.0 {
        return Err(Error::invalid(
            "guidance_rescale",
            "diffusers' image-to-image and inpainting pipelines have none; leave it at 0",
        ));
    }
    skipped_steps(request.num_inference_steps, strength)
}

/// diffusers' `get_timesteps`: of `steps` inference steps, the `int(steps * strength)` last
/// run, so this many are skipped. A strength that leaves none to run is refused (diffusers'
/// inpainting pipeline refuses it; its image-to-image one would return nothing).
pub(super) fn skipped_steps(steps: usize, strength: f64) -> Result<usize> {
    if !(0.0..=1.0).contains(&strength) {
        return Err(Error::invalid(
            "strength",
            format!("{strength} is out of range; accepted: 0..=1"),
        ));
    }
    // Python's int() of a float product truncates toward zero.
    let run = ((steps as f64 * strength) as usize).min(steps);
    if run == 0 {
        return Err(Error::invalid(
            "strength",
            format!(
                "{strength} with {steps} steps runs no step (the last int(steps * strength) \
                 run); accepted: up to 1, with steps * strength at least 1"
            ),
        ));
    }
    Ok(steps - run)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strength_truncates_like_python() {
        assert_eq!(skipped_steps(10, 0.3).unwrap(), 7); // 10 * 0.3 = 3.0000000000000004
        assert_eq!(skipped_steps(10, 0.8).unwrap(), 2);
        assert_eq!(skipped_steps(50, 1.0).unwrap(), 0);
        assert_eq!(skipped_steps(3, 0.5).unwrap(), 2); // int(1.5) = 1 runs
        assert_eq!(skipped_steps(7, 0.29).unwrap(), 5); // 7 * 0.29 = 2.03
    }

    #[test]
    fn a_strength_that_runs_nothing_is_refused() {
        let e = skipped_steps(10, 0.05).unwrap_err().to_string();
        assert!(e.contains("strength") && e.contains("runs no step"), "{e}");
        assert!(skipped_steps(10, 1.5).is_err());
    }
}
