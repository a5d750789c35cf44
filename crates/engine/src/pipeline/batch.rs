//! Step-level batching: several text-to-image runs of the same size share every UNet
//! evaluation, each keeping its own prompt, seed, guidance, scheduler, progress and cancel
//! flag, joining and leaving at step boundaries.
//!
//! A run in a batch is the same [`Denoising`] a run alone takes step by step; the batch only
//! stacks the runs' UNet inputs (each run's rows: both guidance halves of each of its images)
//! into one evaluation, with each row's own timestep and text embeddings, and hands each run
//! back its rows of the prediction. Everything after the UNet (guidance, the scheduler's
//! step, the generator's draws) is each run's own, so a run's images are the ones it makes
//! alone, to within the rounding of a larger matrix product. A run joins between steps
//! ([`Batch::join`]: its prompts encoded, its first noise drawn) and leaves when its last
//! step is taken (its images decoded) or at the first step after its cancel flag is raised;
//! the others carry on untouched.
//!
//! The batch is the worker's to fill (`sie_worker`'s `batch.rs`, `--max-batch`): which runs
//! may share one and how many at once are its decisions; the engine only refuses a run of
//! another size.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use candle_core::Tensor;

use super::stages::{self, Denoising};
use super::{Generated, Observer, TextToImage};
use crate::error::{Error, Result};
use crate::loader::StableDiffusion;

/// Which run of a [`Batch`] an outcome is about: given by [`Batch::join`], unique within it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RunId(u64);

/// One run in the batch.
struct Member {
    id: RunId,
    request: TextToImage,
    run: Denoising,
    observer: Box<dyn Observer + Send>,
    cancel: Arc<AtomicBool>,
}

/// Text-to-image runs of one size, denoised together a step at a time.
pub struct Batch<'m> {
    model: &'m StableDiffusion,
    members: Vec<Member>,
    /// (width, height) of every run in the batch, once one has joined.
    size: Option<(usize, usize)>,
    next_id: u64,
}

impl<'m> Batch<'m> {
    pub fn new(model: &'m StableDiffusion) -> Self {
        Batch {
            model,
            members: Vec::new(),
            size: None,
            next_id: 0,
        }
    }

    /// Runs in the batch now.
    pub fn len(&self) -> usize {
        self.members.len()
    }

    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    /// Images the batch makes now (each a row of the UNet's batch, two when guided).
    pub fn images(&self) -> usize {
        self.members
            .iter()
            .map(|m| m.request.num_images_per_prompt)
            .sum()
    }

    /// Whether `request` could join: the batch is empty or its runs have the same size.
    pub fn fits(&self, request: &TextToImage) -> bool {
        self.size
            .is_none_or(|size| size == (request.width, request.height))
    }

    /// Adds a run before the next step: checks the request, encodes its prompts and draws
    /// its first noise, as [`TextToImage::run`] does. `cancel` is read before every step.
    /// Refused (nothing joins) when the request is invalid or of another size than the runs
    /// in the batch.
    pub fn join(
        &mut self,
        request: TextToImage,
        mut observer: Box<dyn Observer + Send>,
        cancel: Arc<AtomicBool>,
    ) -> Result<RunId> {
        if !self.fits(&request) {
            let (w, h) = self.size.unwrap_or_default();
            return Err(Error::invalid(
                "width",
                format!(
                    "{}x{} cannot join a batch of {w}x{h} runs: a batch's runs share one size",
                    request.width, request.height
                ),
            ));
        }
        let model = self.model;
        stages::refuse_inpainting_model(model)?;
        let mut prepared = stages::prepare(&request, model, observer.as_mut())?;
        let shape = stages::latent_shape(&request, model);
        let noise = stages::randn(&mut prepared.generator, shape, model)?;
        let latents = (noise * prepared.scheduler.init_noise_sigma())?;
        observer.initial_latents(&latents);
        let run = Denoising::new(&request, prepared, latents, 0);
        let id = RunId(self.next_id);
        self.next_id += 1;
        self.size = Some((request.width, request.height));
        self.members.push(Member {
            id,
            request,
            run,
            observer,
            cancel,
        });
        Ok(id)
    }

    /// Takes one step of every run in one UNet evaluation. What left the batch: runs whose
    /// last step this was, with their images; runs cancelled before it
    /// ([`Error::Cancelled`]); runs whose own part failed or panicked. When the evaluation
    /// they share fails, [`Stepped::failed`] says so and the runs still in the batch stay
    /// there, untouched, for the caller to end.
    pub fn step(&mut self) -> Stepped {
        let mut left = Vec::new();
        // Runs cancelled since the last step leave before it, as a run alone stops; so do
        // runs whose input cannot be made (their own scheduler refused the step).
        let mut inputs = Vec::with_capacity(self.members.len());
        let mut timesteps = Vec::new();
        let mut i = 0;
        while i < self.members.len() {
            let m = &self.members[i];
            if m.run.done() {
                // Nothing to denoise (no timesteps): it leaves with its decoded latents.
                let Member {
                    id, request, run, ..
                } = self.members.remove(i);
                let model = self.model;
                left.push((id, guarded(|| run.finish(&request, model))));
                continue;
            }
            let input = if m.cancel.load(Ordering::Relaxed) {
                Err(Error::Cancelled)
            } else {
                m.run.unet_input(None)
            };
            match input.and_then(|(input, t)| Ok((input.dim(0)?, input, t))) {
                Ok((rows, input, t)) => {
                    timesteps.extend(std::iter::repeat_n(t, rows));
                    inputs.push(input);
                    i += 1;
                }
                Err(e) => {
                    let m = self.members.remove(i);
                    left.push((m.id, Err(e)));
                }
            }
        }
        if self.members.is_empty() {
            self.size = None;
            return Stepped { left, failed: None };
        }

        let prediction = match self.evaluate(&inputs, &timesteps) {
            Ok(p) => p,
            Err(e) => {
                return Stepped {
                    left,
                    failed: Some(e),
                }
            }
        };
        let mut row = 0;
        let mut i = 0;
        while i < self.members.len() {
            let rows = inputs[i].dim(0).unwrap_or_default();
            let model = self.model;
            let member = &mut self.members[i];
            let stepped = guarded(|| {
                let p = prediction.narrow(0, row, rows)?;
                member
                    .run
                    .advance(&p, model, None, member.observer.as_mut())
            });
            row += rows;
            match stepped {
                Ok(()) if !member.run.done() => i += 1,
                stepped => {
                    let Member {
                        id, request, run, ..
                    } = self.members.remove(i);
                    inputs.remove(i);
                    let outcome = stepped.and_then(|()| guarded(|| run.finish(&request, model)));
                    left.push((id, outcome));
                }
            }
        }
        if self.members.is_empty() {
            self.size = None;
        }
        Stepped { left, failed: None }
    }

    /// The UNet over every run's rows at once (a run alone: exactly its own evaluation).
    fn evaluate(&self, inputs: &[Tensor], timesteps: &[f64]) -> Result<Tensor> {
        guarded(|| {
            if let [m] = self.members.as_slice() {
                return self
                    .model
                    .unet_forward(&inputs[0], timesteps[0], m.run.embeddings());
            }
            let embeddings: Vec<&Tensor> =
                self.members.iter().map(|m| m.run.embeddings()).collect();
            self.model.unet_forward_rows(
                &Tensor::cat(inputs, 0)?,
                timesteps,
                &Tensor::cat(&embeddings, 0)?,
            )
        })
    }
}

/// What one [`Batch::step`] did.
pub struct Stepped {
    /// The runs that left the batch, each with its outcome.
    pub left: Vec<(RunId, Result<Generated>)>,
    /// The shared evaluation failed (or panicked): no run in the batch took this step.
    pub failed: Option<Error>,
}

/// Runs `f`, turning a panic into [`Error::Panicked`], so one run's panic (or the shared
/// evaluation's) ends what it touched and no more.
fn guarded<T>(f: impl FnOnce() -> Result<T>) -> Result<T> {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(result) => result,
        Err(panic) => Err(Error::Panicked(
            panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "unknown panic".into()),
        )),
    }
}
