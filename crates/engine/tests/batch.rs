//! Step-level batching on the tiny model: runs with different seeds, prompts, guidance,
//! image counts and schedulers, denoised together (joining at different steps, one
//! cancelled midway), give the images each gives alone, to within 1/255 on 99.9% of values.

mod common;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use candle_core::Tensor;
use sie_engine::pipeline::{Batch, Generated, NoObserver, Observer, RunId, TextToImage};
use sie_engine::scheduler::SchedulerKind;
use sie_engine::{LoadOptions, StableDiffusion};

fn model() -> StableDiffusion {
    StableDiffusion::load(common::tiny_model_dir("epsilon"), &LoadOptions::default()).unwrap()
}

/// Four requests as unlike as a batch allows: the same size, all else different.
fn requests(model: &StableDiffusion) -> Vec<TextToImage> {
    let base = |prompt: &str, seed: u64| {
        let mut r = TextToImage::new(model, prompt, seed);
        (r.width, r.height, r.num_inference_steps) = (64, 64, 6);
        r.safety_checker = false;
        r
    };
    let mut a = base("An oil painting of a salad", 1);
    a.scheduler = Some(SchedulerKind::Ddim);
    let mut b = base("A watercolour of a lighthouse", 2);
    b.guidance_scale = 12.0;
    b.negative_prompt = "blurry".into();
    b.scheduler = Some(SchedulerKind::EulerAncestralDiscrete);
    let mut c = base("A bowl of soup", 3);
    c.guidance_scale = 1.0; // unguided: half the rows
    c.num_images_per_prompt = 2;
    c.scheduler = Some(SchedulerKind::DpmSolverMultistep);
    c.num_inference_steps = 4;
    let mut d = base("A cat on a windowsill", 4);
    d.guidance_rescale = 0.7;
    d.scheduler = Some(SchedulerKind::LmsDiscrete);
    vec![a, b, c, d]
}

fn alone(model: &StableDiffusion, request: &TextToImage) -> Generated {
    request
        .run(model, &mut NoObserver, &AtomicBool::new(false))
        .unwrap()
}

/// Every pixel value within 1/255 on at least 99.9% of values, the same count and size.
fn assert_same_images(name: &str, batched: &Generated, alone: &Generated) {
    assert_eq!(batched.images.len(), alone.images.len(), "{name}");
    let (mut close, mut all) = (0usize, 0usize);
    for (x, y) in batched.images.iter().zip(&alone.images) {
        assert_eq!(x.len(), y.len(), "{name}");
        all += x.len();
        close += x
            .iter()
            .zip(y)
            .filter(|(a, b)| (i16::from(**a) - i16::from(**b)).abs() <= 1)
            .count();
    }
    assert!(
        close as f64 >= 0.999 * all as f64,
        "{name}: {close} of {all} values within 1/255 of the run alone"
    );
    assert_eq!(
        (batched.seed, batched.scheduler),
        (alone.seed, alone.scheduler)
    );
}

/// Records each step's progress, as a worker reports it.
#[derive(Clone, Default)]
struct Progress(Arc<Mutex<Vec<(usize, usize)>>>);

impl Observer for Progress {
    fn step(&mut self, step: usize, steps: usize, _latents: &Tensor) {
        self.0.lock().unwrap().push((step, steps));
    }
}

#[test]
fn runs_batched_make_the_images_they_make_alone() {
    let model = model();
    let requests = requests(&model);
    let expected: Vec<Generated> = requests.iter().map(|r| alone(&model, r)).collect();

    let mut batch = Batch::new(&model);
    let mut ids: HashMap<RunId, usize> = HashMap::new();
    let mut progress = Vec::new();
    let mut done: HashMap<usize, Generated> = HashMap::new();
    // Two join at once; the third after two steps, the fourth after three.
    let mut step = 0;
    while done.len() < requests.len() {
        for (k, r) in requests.iter().enumerate() {
            let joins_at = [0, 0, 2, 3][k];
            if joins_at == step {
                let observer = Progress::default();
                progress.push((k, observer.clone()));
                let id = batch
                    .join(
                        r.clone(),
                        Box::new(observer),
                        Arc::new(AtomicBool::new(false)),
                    )
                    .unwrap();
                ids.insert(id, k);
            }
        }
        if step == 3 {
            assert_eq!(batch.len(), 4, "all four share this step");
        }
        let stepped = batch.step();
        assert!(stepped.failed.is_none(), "{:?}", stepped.failed);
        for (id, outcome) in stepped.left {
            done.insert(ids[&id], outcome.unwrap());
        }
        step += 1;
        assert!(step < 20, "the batch never emptied");
    }
    assert!(batch.is_empty());
    for (k, r) in requests.iter().enumerate() {
        assert_same_images(&r.prompt, &done[&k], &expected[k]);
    }
    // Each run reported its own steps, 1..=N of its own N.
    for (k, observer) in progress {
        let steps = requests[k].num_inference_steps;
        let seen = observer.0.lock().unwrap().clone();
        let want: Vec<(usize, usize)> = (1..=steps).map(|s| (s, steps)).collect();
        assert_eq!(seen, want, "{}", requests[k].prompt);
    }
}

#[test]
fn a_run_cancelled_mid_batch_stops_at_the_next_step_and_the_others_finish_unchanged() {
    let model = model();
    let requests = requests(&model);
    let mut batch = Batch::new(&model);
    let cancels: Vec<Arc<AtomicBool>> = requests
        .iter()
        .map(|_| Arc::new(AtomicBool::new(false)))
        .collect();
    let progress: Vec<Progress> = requests.iter().map(|_| Progress::default()).collect();
    let mut ids = HashMap::new();
    for (k, r) in requests.iter().enumerate() {
        let id = batch
            .join(r.clone(), Box::new(progress[k].clone()), cancels[k].clone())
            .unwrap();
        ids.insert(id, k);
    }
    let mut outcomes = HashMap::new();
    for step in 0.. {
        if step == 2 {
            cancels[1].store(true, Ordering::SeqCst);
        }
        let stepped = batch.step();
        assert!(stepped.failed.is_none(), "{:?}", stepped.failed);
        for (id, outcome) in stepped.left {
            outcomes.insert(ids[&id], outcome);
        }
        if batch.is_empty() {
            break;
        }
        assert!(step < 20);
    }
    // The cancelled run took the two steps before its flag, and no more.
    assert!(matches!(outcomes[&1], Err(sie_engine::Error::Cancelled)));
    assert_eq!(progress[1].0.lock().unwrap().len(), 2);
    for k in [0, 2, 3] {
        let got = outcomes.remove(&k).unwrap().unwrap();
        assert_same_images(&requests[k].prompt, &got, &alone(&model, &requests[k]));
    }
}

#[test]
fn a_run_of_another_size_cannot_join() {
    let model = model();
    let mut batch = Batch::new(&model);
    let mut a = TextToImage::new(&model, "x", 1);
    (a.width, a.height, a.safety_checker) = (64, 64, false);
    let mut b = a.clone();
    b.width = 128;
    assert!(batch.fits(&b));
    batch
        .join(a, Box::new(NoObserver), Arc::new(AtomicBool::new(false)))
        .unwrap();
    assert!(!batch.fits(&b));
    let e = batch
        .join(b, Box::new(NoObserver), Arc::new(AtomicBool::new(false)))
        .unwrap_err();
    assert!(e.to_string().contains("128x64"), "{e}");
    assert_eq!(batch.len(), 1);
}

#[test]
fn each_row_of_a_batched_unet_call_is_evaluated_at_its_own_timestep() {
    let model = model();
    let device = &model.device;
    // The tiny text-to-image model's UNet reads 4 latent channels.
    let x: Vec<Tensor> = (0..2)
        .map(|_| Tensor::randn(0f32, 1.0, (1, 4, 8, 8), device).unwrap())
        .collect();
    let ctx: Vec<Tensor> = ["a salad", "a lighthouse"]
        .iter()
        .map(|p| model.encode_text(&model.tokenizer.encode(p).ids).unwrap())
        .collect();
    let (t0, t1) = (901.0, 41.0);
    let alone = [
        model.unet_forward(&x[0], t0, &ctx[0]).unwrap(),
        model.unet_forward(&x[1], t1, &ctx[1]).unwrap(),
    ];
    let both = |ts: &[f64]| {
        model
            .unet_forward_rows(
                &Tensor::cat(&x, 0).unwrap(),
                ts,
                &Tensor::cat(&ctx, 0).unwrap(),
            )
            .unwrap()
    };
    let max_diff = |a: &Tensor, b: &Tensor| -> f32 {
        (a - b)
            .unwrap()
            .abs()
            .unwrap()
            .flatten_all()
            .unwrap()
            .max(0)
            .unwrap()
            .to_scalar()
            .unwrap()
    };
    let rows = both(&[t0, t1]);
    for (k, expected) in alone.iter().enumerate() {
        let row = rows.narrow(0, k, 1).unwrap();
        assert!(max_diff(&row, expected) < 1e-4, "row {k}");
    }
    // The control: the second row at the first row's timestep is another prediction, so
    // the comparison above can tell timesteps apart.
    let wrong = both(&[t0, t0]).narrow(0, 1, 1).unwrap();
    assert!(max_diff(&wrong, &alone[1]) > 1e-3);
    // One timestep for every row is still accepted; a count that fits neither is not.
    assert!(model
        .unet_forward_rows(
            &Tensor::cat(&x, 0).unwrap(),
            &[t0, t1, t0],
            &Tensor::cat(&ctx, 0).unwrap()
        )
        .is_err());
}
