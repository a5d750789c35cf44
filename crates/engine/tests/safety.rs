//! The safety checker against diffusers' `StableDiffusionSafetyChecker` and transformers'
//! `CLIPImageProcessor` (PIL backend), on the tiny checker `sie model tiny --safety-checker`
//! writes; fixtures from `tools/parity/make_safety_fixtures.py`.

mod common;

use std::path::Path;
use std::sync::atomic::AtomicBool;

use sie_engine::candle_core::{DType, Device, Tensor};
use sie_engine::pipeline::{NoObserver, TextToImage};
use sie_engine::safety::SafetyChecker;
use sie_engine::tiny::{
    write_tiny_model, write_tiny_safety_checker, TinyCheckerOptions, TinyOptions,
};
use sie_engine::Error;
use sie_engine::{LoadOptions, SafetyCheckerSource, StableDiffusion};

/// A tiny model with a tiny checker whose thresholds are all `threshold` (seed 0, as the fixtures').
fn tiny_with_checker(dir: &Path, threshold: f32) {
    write_tiny_model(dir, TinyOptions::default()).unwrap();
    write_tiny_safety_checker(dir, TinyCheckerOptions { threshold, seed: 0 }).unwrap();
}

fn sha256(path: &Path) -> String {
    use sha2::Digest;
    let bytes = std::fs::read(path).unwrap();
    format!("{:x}", sha2::Sha256::digest(bytes))
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    assert_eq!(a.dims(), b.dims());
    (a.to_dtype(DType::F32).unwrap() - b.to_dtype(DType::F32).unwrap())
        .unwrap()
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar()
        .unwrap()
}

struct Fixture {
    images: Vec<(Vec<u8>, usize, usize)>,
    tensors: std::collections::HashMap<String, Tensor>,
}

fn fixture(checker_weights: &Path) -> Fixture {
    let dir = common::fixtures("safety");
    let meta = common::read_json(&dir.join("checker.json"));
    assert_eq!(
        meta["weights_sha256"].as_str().unwrap(),
        sha256(checker_weights),
        "the tiny checker differs from the one the fixtures were made with; \
         rerun tools/parity/make_safety_fixtures.py"
    );
    let tensors = common::load_tensors(&dir.join("checker.safetensors"));
    let images = meta["sizes"]
        .as_array()
        .unwrap()
        .iter()
        .enumerate()
        .map(|(i, size)| {
            let (w, h) = (
                size[0].as_u64().unwrap() as usize,
                size[1].as_u64().unwrap() as usize,
            );
            let t = &tensors[&format!("image_{i}")];
            assert_eq!(t.dims(), [h, w, 3]);
            (t.flatten_all().unwrap().to_vec1::<u8>().unwrap(), w, h)
        })
        .collect();
    Fixture { images, tensors }
}

#[test]
fn preprocessing_and_scores_match_diffusers() {
    let tmp = tempfile::tempdir().unwrap();
    tiny_with_checker(tmp.path(), 0.0);
    let mut checker = SafetyChecker::load(tmp.path(), &Device::Cpu, DType::F32).unwrap();
    let fx = fixture(&tmp.path().join("safety_checker/model.safetensors"));

    // Pixel values of 4 images of different sizes and aspect ratios, up- and downsampled.
    let mut worst_pixels = 0f32;
    for i in 0..4 {
        let (rgb, w, h) = &fx.images[i];
        let ours = checker.pixel_values(rgb, *w, *h).unwrap();
        let diff = max_abs_diff(&ours, &fx.tensors[&format!("pixel_values_{i}")]);
        assert!(
            diff <= 1e-5,
            "image {i} ({w}x{h}): pixel values differ by {diff}"
        );
        worst_pixels = worst_pixels.max(diff);
    }

    // Scores of all 8 in one batch, with the fixture's thresholds.
    let vec1 = |name: &str| fx.tensors[name].to_vec1::<f32>().unwrap();
    checker.special_care_thresholds = vec1("special_thresholds");
    checker.concept_thresholds = vec1("concept_thresholds");
    let pixels: Vec<Tensor> = fx
        .images
        .iter()
        .map(|(rgb, w, h)| checker.pixel_values(rgb, *w, *h).unwrap())
        .collect();
    let verdicts = checker
        .check_pixels(&Tensor::stack(&pixels, 0).unwrap())
        .unwrap();
    let rows = |v: Vec<Vec<f32>>| Tensor::new(v, &Device::Cpu).unwrap();
    let mut worst = Vec::new();
    for (name, ours) in [
        (
            "cos_special",
            rows(verdicts.iter().map(|v| v.special_cosine.clone()).collect()),
        ),
        (
            "cos_concept",
            rows(verdicts.iter().map(|v| v.concept_cosine.clone()).collect()),
        ),
        (
            "special_scores",
            rows(verdicts.iter().map(|v| v.special_scores.clone()).collect()),
        ),
        (
            "concept_scores",
            rows(verdicts.iter().map(|v| v.concept_scores.clone()).collect()),
        ),
    ] {
        let diff = max_abs_diff(&ours, &fx.tensors[name]);
        assert!(diff <= 1e-4, "{name} differ by {diff}");
        worst.push(format!("{name} {diff:.2e}"));
    }
    let flags: Vec<bool> = verdicts.iter().map(|v| v.nsfw).collect();
    let expected: Vec<bool> = fx.tensors["flags"]
        .to_vec1::<u8>()
        .unwrap()
        .into_iter()
        .map(|f| f != 0)
        .collect();
    assert_eq!(flags, expected);
    // Both sides of the thresholds are exercised, and the special-care adjustment decides one.
    assert!(flags.contains(&true) && flags.contains(&false), "{flags:?}");
    let meta = common::read_json(&common::fixtures("safety").join("checker.json"));
    let adjusted = meta["adjusted_image"].as_u64().unwrap() as usize;
    assert!(verdicts[adjusted].special_scores.iter().any(|&s| s > 0.0));
    assert!(flags[adjusted]);
    println!(
        "max |diff|: pixel values {worst_pixels:.2e}, {}",
        worst.join(", ")
    );
}

/// The published checker (saved by transformers 4) nests the tower as `vision_model.vision_model.`;
/// ours writes transformers 5's `vision_model.`. Both load to the same checker.
#[test]
fn the_transformers_4_layout_loads_too() {
    let tmp = tempfile::tempdir().unwrap();
    tiny_with_checker(tmp.path(), 0.0);
    let weights = tmp.path().join("safety_checker/model.safetensors");
    let tensors = common::load_tensors(&weights);
    let renamed: std::collections::HashMap<String, Tensor> = tensors
        .into_iter()
        .map(|(k, v)| match k.strip_prefix("vision_model.") {
            Some(rest) => (format!("vision_model.vision_model.{rest}"), v),
            None => (k, v),
        })
        .collect();
    let image: Vec<u8> = (0..40 * 30 * 3).map(|i| (i * 37 % 256) as u8).collect();
    let before = SafetyChecker::load(tmp.path(), &Device::Cpu, DType::F32)
        .unwrap()
        .check(&[&image], 40, 30)
        .unwrap();
    sie_engine::candle_core::safetensors::save(&renamed, &weights).unwrap();
    let after = SafetyChecker::load(tmp.path(), &Device::Cpu, DType::F32)
        .unwrap()
        .check(&[&image], 40, 30)
        .unwrap();
    assert_eq!(before, after);
}

#[test]
fn a_crop_size_that_does_not_fit_the_tower_names_the_field() {
    let tmp = tempfile::tempdir().unwrap();
    tiny_with_checker(tmp.path(), 0.0);
    let path = tmp
        .path()
        .join("feature_extractor/preprocessor_config.json");
    let text = std::fs::read_to_string(&path)
        .unwrap()
        .replace("\"height\": 56", "\"height\": 64");
    std::fs::write(&path, text).unwrap();
    let e = SafetyChecker::load(tmp.path(), &Device::Cpu, DType::F32)
        .err()
        .unwrap()
        .to_string();
    assert!(
        e.contains("preprocessor_config.json") && e.contains("crop_size"),
        "{e}"
    );
}

fn generate(model: &StableDiffusion, safety_checker: bool) -> sie_engine::pipeline::Generated {
    let mut request = TextToImage::new(model, "An oil painting of a salad", 3);
    request.num_inference_steps = 2;
    request.width = 64;
    request.height = 48;
    request.num_images_per_prompt = 2;
    request.safety_checker = safety_checker;
    request
        .run(model, &mut NoObserver, &AtomicBool::new(false))
        .unwrap()
}

#[test]
fn flagged_images_are_black_and_unflagged_ones_untouched() {
    let tmp = tempfile::tempdir().unwrap();
    let all = tmp.path().join("all");
    let none = tmp.path().join("none");
    tiny_with_checker(&all, -1.0);
    tiny_with_checker(&none, 1.0);

    let flagging = StableDiffusion::load(&all, &LoadOptions::default()).unwrap();
    assert!(flagging.safety_checker.is_some());
    let out = generate(&flagging, true);
    assert_eq!(out.nsfw_content_detected, Some(vec![true, true]));
    assert!(out.images.iter().all(|im| im.iter().all(|&b| b == 0)));

    let passing = StableDiffusion::load(&none, &LoadOptions::default()).unwrap();
    let checked = generate(&passing, true);
    assert_eq!(checked.nsfw_content_detected, Some(vec![false, false]));
    let unchecked = generate(&passing, false);
    assert_eq!(unchecked.nsfw_content_detected, None);
    assert_eq!(checked.images, unchecked.images);
    assert!(checked.images[0].iter().any(|&b| b != 0));

    // Disabled at load: no checker, and a request that asks for one is refused.
    let options = LoadOptions {
        safety_checker: SafetyCheckerSource::Disabled,
        ..LoadOptions::default()
    };
    let bare = StableDiffusion::load(&all, &options).unwrap();
    assert!(bare.safety_checker.is_none());
    let mut request = TextToImage::new(&bare, "x", 0);
    assert!(!request.safety_checker);
    request.safety_checker = true;
    match request.run(&bare, &mut NoObserver, &AtomicBool::new(false)) {
        Err(Error::Invalid { field, .. }) => assert_eq!(field, "safety_checker"),
        other => panic!("expected Invalid(safety_checker), got {other:?}"),
    }

    // A checker named explicitly, for a model without one.
    let options = LoadOptions {
        safety_checker: SafetyCheckerSource::Dir(all.join("safety_checker")),
        ..LoadOptions::default()
    };
    let named = StableDiffusion::load(common::tiny_model_dir("epsilon"), &options).unwrap();
    let out = generate(&named, true);
    assert_eq!(out.nsfw_content_detected, Some(vec![true, true]));
}
