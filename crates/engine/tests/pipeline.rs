//! Text-to-image on the tiny model against diffusers' own pipeline
//! (fixtures from `tools/parity/make_pipeline_fixtures.py`).
//!
//! For every scheduler and both prediction types: the same prompt, seed and
//! model must give latents within 1e-4 of diffusers after every step
//! (relative to their scale) and a final image within 1/255 on at least 99.9%
//! of its bytes. The model is written afresh by `write_tiny_model`; the
//! fixtures remember the hashes of the weights diffusers ran, so a change to
//! the writer cannot silently compare against another model.

mod common;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;

use common::{load_tensors, read_json, rel_diff, tiny_model_dir};
use sha2::{Digest, Sha256};
use sie_engine::candle_core::Tensor;
use sie_engine::pipeline::{Observer, TextToImage};
use sie_engine::scheduler::SchedulerKind;
use sie_engine::{LoadOptions, StableDiffusion};

const TOLERANCE: f64 = 1e-4;

fn fixtures() -> PathBuf {
    common::fixtures("pipeline")
}

fn load(prediction: &str) -> StableDiffusion {
    let dir = tiny_model_dir(prediction);
    let meta: serde_json::Value = read_json(&fixtures().join(format!("{prediction}-model.json")));
    for (file, want) in meta["sha256"].as_object().unwrap() {
        let got = format!(
            "{:x}",
            Sha256::digest(std::fs::read(dir.join(file)).unwrap())
        );
        assert_eq!(
            &got,
            want.as_str().unwrap(),
            "{file} of the tiny {prediction} model differs from the one the fixtures were made \
             with; regenerate them with tools/parity/make_pipeline_fixtures.py"
        );
    }
    StableDiffusion::load(dir, &LoadOptions::default()).unwrap()
}

#[derive(Default)]
struct Recorder {
    steps: Vec<Tensor>,
    tokens: Option<(Vec<u32>, Vec<u32>)>,
}

impl Observer for Recorder {
    fn tokens(&mut self, prompt: &[u32], negative: &[u32]) {
        self.tokens = Some((prompt.to_vec(), negative.to_vec()));
    }
    fn step(&mut self, step: usize, _steps: usize, latents: &Tensor) {
        assert_eq!(step, self.steps.len() + 1);
        self.steps.push(latents.clone());
    }
}

fn check_text(prediction: &str) {
    let model = load(prediction);
    let meta = read_json(&fixtures().join(format!("{prediction}-model.json")));
    let want: HashMap<String, Tensor> =
        load_tensors(&fixtures().join(format!("{prediction}-text.safetensors")));
    for (key, text) in [
        ("prompt", &meta["prompt"]),
        ("negative_prompt", &meta["negative_prompt"]),
    ] {
        let ids = model.tokenizer.encode(text.as_str().unwrap()).ids;
        let want_ids: Vec<i64> = want[&format!("{key}_ids")].to_vec1().unwrap();
        let want_ids: Vec<u32> = want_ids.into_iter().map(|i| i as u32).collect();
        assert_eq!(ids, want_ids, "{prediction}: {key} token ids");
        let emb = model.encode_text(&ids).unwrap().squeeze(0).unwrap();
        let d = rel_diff(&emb, &want[&format!("{key}_embeddings")]);
        assert!(
            d <= TOLERANCE,
            "{prediction}: {key} text embeddings differ by {d:e}"
        );
    }
}

fn check_case(name: &str) {
    let meta = read_json(&fixtures().join(format!("{name}.json")));
    let want = load_tensors(&fixtures().join(format!("{name}.safetensors")));
    let prediction = name.split('-').next().unwrap();
    let model = load(prediction);
    let r = &meta["request"];
    let mut request = TextToImage::new(
        &model,
        r["prompt"].as_str().unwrap(),
        r["seed"].as_u64().unwrap(),
    );
    request.negative_prompt = r["negative_prompt"].as_str().unwrap().to_owned();
    request.num_inference_steps = r["num_inference_steps"].as_u64().unwrap() as usize;
    request.guidance_scale = r["guidance_scale"].as_f64().unwrap();
    request.width = r["width"].as_u64().unwrap() as usize;
    request.height = r["height"].as_u64().unwrap() as usize;
    request.num_images_per_prompt = r["num_images_per_prompt"].as_u64().unwrap() as usize;
    request.eta = r["eta"].as_f64().unwrap();
    request.guidance_rescale = r["guidance_rescale"].as_f64().unwrap();
    request.scheduler = Some(SchedulerKind::parse(r["scheduler"].as_str().unwrap()).unwrap());

    let mut recorder = Recorder::default();
    let generated = request
        .run(&model, &mut recorder, &AtomicBool::new(false))
        .unwrap();

    let steps = meta["steps_recorded"].as_u64().unwrap() as usize;
    assert_eq!(recorder.steps.len(), steps, "{name}: number of steps");
    let mut worst = 0f64;
    for (i, latents) in recorder.steps.iter().enumerate() {
        let d = rel_diff(latents, &want[&format!("latents_{}", i + 1)]);
        worst = worst.max(d);
        assert!(
            d <= TOLERANCE,
            "{name}: latents after step {} differ by {d:e}",
            i + 1
        );
    }

    let images = &want["images"];
    let (n, h, w, c) = images.dims4().unwrap();
    assert_eq!(
        (n, h, w, c),
        (generated.images.len(), generated.height, generated.width, 3)
    );
    let reference: Vec<u8> = images.flatten_all().unwrap().to_vec1().unwrap();
    let ours: Vec<u8> = generated.images.concat();
    let close = ours
        .iter()
        .zip(&reference)
        .filter(|(a, b)| a.abs_diff(**b) <= 1)
        .count();
    let fraction = close as f64 / reference.len() as f64;
    eprintln!(
        "{name}: worst step {worst:.1e}, {:.3}% of pixel values within 1/255",
        fraction * 100.0
    );
    assert!(
        fraction >= 0.999,
        "{name}: only {:.4}% of pixel values within 1/255 of diffusers",
        fraction * 100.0
    );
}

#[test]
fn text_encoder_epsilon_model() {
    check_text("epsilon");
}

#[test]
fn text_encoder_v_prediction_model() {
    check_text("v_prediction");
}

macro_rules! cases {
    ($($test:ident => $name:literal,)*) => {
        $(#[test] fn $test() { check_case($name); })*
    };
}

cases! {
    epsilon_lms => "epsilon-LMSDiscreteScheduler",
    epsilon_ddim => "epsilon-DDIMScheduler",
    epsilon_pndm => "epsilon-PNDMScheduler",
    epsilon_euler => "epsilon-EulerDiscreteScheduler",
    epsilon_euler_ancestral => "epsilon-EulerAncestralDiscreteScheduler",
    epsilon_dpm_solver_multistep => "epsilon-DPMSolverMultistepScheduler",
    epsilon_unipc => "epsilon-UniPCMultistepScheduler",
    epsilon_ddpm => "epsilon-DDPMScheduler",
    epsilon_heun => "epsilon-HeunDiscreteScheduler",
    epsilon_two_images_guidance_rescale => "epsilon-batch2-rescale",
    epsilon_unguided => "epsilon-unguided",
    epsilon_ddim_eta => "epsilon-ddim-eta",
    v_lms => "v_prediction-LMSDiscreteScheduler",
    v_ddim => "v_prediction-DDIMScheduler",
    v_pndm => "v_prediction-PNDMScheduler",
    v_euler => "v_prediction-EulerDiscreteScheduler",
    v_euler_ancestral => "v_prediction-EulerAncestralDiscreteScheduler",
    v_dpm_solver_multistep => "v_prediction-DPMSolverMultistepScheduler",
    v_unipc => "v_prediction-UniPCMultistepScheduler",
    v_ddpm => "v_prediction-DDPMScheduler",
    v_heun => "v_prediction-HeunDiscreteScheduler",
    v_two_images_guidance_rescale => "v_prediction-batch2-rescale",
    v_unguided => "v_prediction-unguided",
    v_ddim_eta => "v_prediction-ddim-eta",
}
