//! Helpers shared by the parity tests: fixture paths, loading, and the one error measure.

#![allow(dead_code)] // each test binary uses its own subset

pub mod original;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use sha2::{Digest, Sha256};
use sie_engine::candle_core::{Device, Tensor};
use sie_engine::pipeline::{Generated, Observer, TextToImage};
use sie_engine::scheduler::{PredictionType, SchedulerKind};
use sie_engine::tiny::{write_tiny_model, TinyOptions};
use sie_engine::{Error, LoadOptions, StableDiffusion};

/// `tests/fixtures/<topic>`.
pub fn fixtures(topic: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(topic)
}

pub fn read_json(path: &Path) -> serde_json::Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

pub fn load_tensors(path: &Path) -> HashMap<String, Tensor> {
    sie_engine::candle_core::safetensors::load(path, &Device::Cpu)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// max |ours - reference| / max |reference|: the error relative to the reference's scale,
/// as the parity tolerances are stated. Any NaN or infinity counts as infinitely wrong
/// (`f64::max` would silently drop a NaN).
pub fn rel_diff(ours: &Tensor, reference: &Tensor) -> f64 {
    assert_eq!(ours.dims(), reference.dims(), "shape mismatch");
    let a: Vec<f32> = ours
        .to_dtype(sie_engine::candle_core::DType::F32)
        .and_then(|t| t.flatten_all())
        .and_then(|t| t.to_vec1())
        .unwrap();
    let b: Vec<f32> = reference
        .to_dtype(sie_engine::candle_core::DType::F32)
        .and_then(|t| t.flatten_all())
        .and_then(|t| t.to_vec1())
        .unwrap();
    if a.iter().chain(&b).any(|v| !v.is_finite()) {
        return f64::INFINITY;
    }
    let scale = b.iter().fold(0f64, |m, v| m.max(v.abs() as f64)).max(1e-12);
    let diff = a
        .iter()
        .zip(&b)
        .fold(0f64, |m, (x, y)| m.max((*x as f64 - *y as f64).abs()));
    diff / scale
}

/// The tiny model `sie model tiny` writes with its default seed, for `"epsilon"`,
/// `"v_prediction"` or `"inpainting"` (the epsilon model with a 9-channel UNet, as
/// `--inpainting` writes it); written once per test binary into a temporary directory.
pub fn tiny_model_dir(prediction: &str) -> &'static Path {
    static ROOT: OnceLock<tempfile::TempDir> = OnceLock::new();
    let root = ROOT.get_or_init(|| {
        let root = tempfile::tempdir().unwrap();
        for (name, prediction_type, inpainting) in [
            ("epsilon", PredictionType::Epsilon, false),
            ("v_prediction", PredictionType::VPrediction, false),
            ("inpainting", PredictionType::Epsilon, true),
        ] {
            let options = TinyOptions {
                prediction_type,
                seed: 0,
                inpainting,
            };
            write_tiny_model(&root.path().join(name), options).unwrap();
        }
        root
    });
    Box::leak(root.path().join(prediction).into_boxed_path())
}

/// The tiny model `key` (see [`tiny_model_dir`]), loaded after checking that its weights are
/// the ones the fixtures in `fixtures` were made with (`<key>-model.json` holds their hashes),
/// so a change to the writer cannot silently compare against another model.
pub fn load_checked(key: &str, fixtures: &Path) -> StableDiffusion {
    let dir = tiny_model_dir(key);
    let meta = read_json(&fixtures.join(format!("{key}-model.json")));
    for (file, want) in meta["sha256"].as_object().unwrap() {
        let got = format!(
            "{:x}",
            Sha256::digest(std::fs::read(dir.join(file)).unwrap())
        );
        assert_eq!(
            &got,
            want.as_str().unwrap(),
            "{file} of the tiny {key} model differs from the one the fixtures in {} were made \
             with; regenerate them with the script in tools/parity/",
            fixtures.display()
        );
    }
    StableDiffusion::load(dir, &LoadOptions::default()).unwrap()
}

/// Records the latents after every step, and the token ids.
#[derive(Default)]
pub struct Recorder {
    pub steps: Vec<Tensor>,
    pub tokens: Option<(Vec<u32>, Vec<u32>)>,
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

/// Asserts the recorded steps are diffusers' `latents_<i>` within `tolerance` (relative to
/// their scale) and the images diffusers' `images` within 1/255 on at least 99.9% of values.
pub fn assert_matches_fixture(
    name: &str,
    recorder: &Recorder,
    generated: &Generated,
    want: &HashMap<String, Tensor>,
    steps_recorded: usize,
    tolerance: f64,
) {
    assert_eq!(
        recorder.steps.len(),
        steps_recorded,
        "{name}: number of steps"
    );
    let mut worst = 0f64;
    for (i, latents) in recorder.steps.iter().enumerate() {
        let d = rel_diff(latents, &want[&format!("latents_{}", i + 1)]);
        worst = worst.max(d);
        assert!(
            d <= tolerance,
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

/// The request a fixture's `request` object describes (`guidance_rescale` 0 when absent).
pub fn fixture_request(model: &StableDiffusion, r: &serde_json::Value) -> TextToImage {
    let int = |key: &str| r[key].as_u64().unwrap();
    let mut request = TextToImage::new(model, r["prompt"].as_str().unwrap(), int("seed"));
    request.negative_prompt = r["negative_prompt"].as_str().unwrap().to_owned();
    request.num_inference_steps = int("num_inference_steps") as usize;
    request.guidance_scale = r["guidance_scale"].as_f64().unwrap();
    request.width = int("width") as usize;
    request.height = int("height") as usize;
    request.num_images_per_prompt = int("num_images_per_prompt") as usize;
    request.eta = r["eta"].as_f64().unwrap();
    request.guidance_rescale = r["guidance_rescale"].as_f64().unwrap_or(0.0);
    request.scheduler = Some(SchedulerKind::parse(r["scheduler"].as_str().unwrap()).unwrap());
    request
}

/// A fresh tiny model (the default options) in `root/model`, for tests that edit it; the
/// temporary root, which removes it when dropped, and the model's path.
pub fn fresh_tiny() -> (tempfile::TempDir, PathBuf) {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("model");
    write_tiny_model(&dir, TinyOptions::default()).unwrap();
    (root, dir)
}

/// The error loading `dir` fails with (it must fail).
pub fn load_err(dir: &Path) -> Error {
    match StableDiffusion::load(dir, &LoadOptions::default()) {
        Ok(_) => panic!("{} loaded, but should not have", dir.display()),
        Err(e) => e,
    }
}
