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

    /// Takes one step of every run in one UNet evaluation. Returns the runs that left: those
    /// whose last step this was, with their images; those cancelled before it
    /// ([`Error::Cancelled`]); those whose own step failed. An error of the evaluation itself
    /// (shared by all) is returned as such, and the runs stay for the caller to end.
    pub fn step(&mut self) -> Result<Vec<(RunId, Result<Generated>)>> {
        let mut left = Vec::new();
        // Runs cancelled since the last step leave before it, as a run alone stops.
        let mut i = 0;
        while i < self.members.len() {
            let m = &self.members[i];
            if m.cancel.load(Ordering::Relaxed) || m.run.done() {
                let m = self.members.remove(i);
                let outcome = if m.run.done() {
                    m.run.finish(&m.request, self.model)
                } else {
                    Err(Error::Cancelled)
                };
                left.push((m.id, outcome));
            } else {
                i += 1;
            }
        }
        if self.members.is_empty() {
            self.size = None;
            return Ok(left);
        }

        let mut inputs = Vec::with_capacity(self.members.len());
        let mut timesteps = Vec::new();
        for m in &self.members {
            let (input, t) = m.run.unet_input(None)?;
            timesteps.extend(std::iter::repeat_n(t, input.dim(0)?));
            inputs.push(input);
        }
        let prediction = if let [m] = self.members.as_slice() {
            // Alone, the run's evaluation is exactly what it would be outside a batch.
            self.model
                .unet_forward(&inputs[0], timesteps[0], m.run.embeddings())?
        } else {
            let embeddings: Vec<&Tensor> =
                self.members.iter().map(|m| m.run.embeddings()).collect();
            self.model.unet_forward_rows(
                &Tensor::cat(&inputs, 0)?,
                &timesteps,
                &Tensor::cat(&embeddings, 0)?,
            )?
        };

        let mut row = 0;
        let mut i = 0;
        while i < self.members.len() {
            let rows = inputs[i].dim(0)?;
            let member = &mut self.members[i];
            let stepped = prediction
                .narrow(0, row, rows)
                .map_err(Error::from)
                .and_then(|p| {
                    member
                        .run
                        .advance(&p, self.model, None, member.observer.as_mut())
                });
            row += rows;
            match stepped {
                Ok(()) if !member.run.done() => i += 1,
                stepped => {
                    let m = self.members.remove(i);
                    inputs.remove(i);
                    let outcome = stepped.and_then(|()| m.run.finish(&m.request, self.model));
                    left.push((m.id, outcome));
                }
            }
        }
        if self.members.is_empty() {
            self.size = None;
        }
        Ok(left)
    }
}
