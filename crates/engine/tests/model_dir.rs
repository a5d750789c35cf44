//! The model directory as an operator meets it: bad directories fail with the file and
//! field named, the tiny writer is deterministic, and a run can be cancelled between steps.

mod common;

use common::{fresh_tiny, load_err};

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};

use sie_engine::candle_core::Tensor;
use sie_engine::pipeline::{Observer, TextToImage};
use sie_engine::scheduler::PredictionType;
use sie_engine::tiny::{write_tiny_model, TinyOptions};
use sie_engine::Error;
use sie_engine::{LoadOptions, ModelFiles, StableDiffusion};

fn edit_json(path: &Path, edit: impl FnOnce(&mut serde_json::Value)) {
    let mut v = common::read_json(path);
    edit(&mut v);
    std::fs::write(path, serde_json::to_string_pretty(&v).unwrap()).unwrap();
}

#[test]
fn missing_weights_file_is_named() {
    let (_root, dir) = fresh_tiny();
    let weights = dir.join("unet/diffusion_pytorch_model.safetensors");
    std::fs::remove_file(&weights).unwrap();
    match load_err(&dir) {
        Error::File { path, message } => {
            assert_eq!(path, weights);
            assert!(message.contains("fp16.safetensors"), "{message}");
        }
        other => panic!("unexpected error: {other}"),
    }
}

#[test]
fn missing_config_file_is_named() {
    let (_root, dir) = fresh_tiny();
    std::fs::remove_file(dir.join("model_index.json")).unwrap();
    let e = load_err(&dir);
    assert!(
        matches!(&e, Error::File { path, .. } if path.ends_with("model_index.json")),
        "{e}"
    );
}

#[test]
fn wrong_shape_names_the_file_and_the_tensor() {
    let (_root, dir) = fresh_tiny();
    edit_json(&dir.join("text_encoder/config.json"), |v| {
        v["intermediate_size"] = 48.into()
    });
    match load_err(&dir) {
        Error::File { path, message } => {
            assert!(
                path.ends_with("text_encoder/model.safetensors"),
                "{}",
                path.display()
            );
            assert!(message.contains("mlp.fc1"), "{message}");
        }
        other => panic!("unexpected error: {other}"),
    }
}

#[test]
fn unsupported_config_values_name_the_file_and_the_field() {
    let cases: [(&str, &str, serde_json::Value); 5] = [
        ("unet/config.json", "act_fn", "gelu".into()),
        (
            "unet/config.json",
            "down_block_types",
            serde_json::json!([
                "CrossAttnDownBlock2D",
                "SimpleCrossAttnDownBlock2D",
                "CrossAttnDownBlock2D",
                "DownBlock2D"
            ]),
        ),
        ("vae/config.json", "norm_num_groups", 7.into()),
        (
            "scheduler/scheduler_config.json",
            "beta_schedule",
            "cosine".into(),
        ),
        ("text_encoder/config.json", "hidden_act", "relu".into()),
    ];
    for (file, field, value) in cases {
        let (_root, dir) = fresh_tiny();
        edit_json(&dir.join(file), |v| v[field] = value.clone());
        match ModelFiles::open(&dir) {
            Err(Error::Config {
                path,
                field: f,
                message,
            }) => {
                assert!(path.ends_with(file), "{file}: {}", path.display());
                assert_eq!(f, field, "{file}: {message}");
                assert!(
                    message.contains("accepted") || message.contains("divide"),
                    "{file} {field}: {message}"
                );
            }
            Err(other) => panic!("{file} {field}: unexpected error {other}"),
            Ok(_) => panic!("{file} {field}={value} was accepted"),
        }
    }
}

#[test]
fn tiny_writer_same_seed_same_bytes() {
    let root = tempfile::tempdir().unwrap();
    let write = |name: &str, seed| {
        let dir = root.path().join(name);
        let options = TinyOptions {
            prediction_type: PredictionType::VPrediction,
            seed,
            ..Default::default()
        };
        write_tiny_model(&dir, options).unwrap();
        dir
    };
    let (a, b, c) = (write("a", 7), write("b", 7), write("c", 8));
    for file in [
        "model_index.json",
        "scheduler/scheduler_config.json",
        "tokenizer/vocab.json",
        "tokenizer/merges.txt",
        "text_encoder/model.safetensors",
        "unet/diffusion_pytorch_model.safetensors",
        "vae/diffusion_pytorch_model.safetensors",
    ] {
        let read = |d: &Path| std::fs::read(d.join(file)).unwrap();
        assert!(
            read(&a) == read(&b),
            "{file} differs between two writes with seed 7"
        );
        if file.ends_with(".safetensors") {
            assert!(read(&a) != read(&c), "{file} is the same for seeds 7 and 8");
        }
    }
    let files = ModelFiles::open(&a).unwrap();
    assert_eq!(files.native_size(), 512);
    assert_eq!(files.prediction_type(), PredictionType::VPrediction);
}

/// Raises the cancel flag once `after` steps have run.
struct CancelAfter<'a> {
    after: usize,
    seen: usize,
    flag: &'a AtomicBool,
}

impl Observer for CancelAfter<'_> {
    fn step(&mut self, step: usize, _steps: usize, _latents: &Tensor) {
        self.seen = step;
        if step == self.after {
            self.flag.store(true, Ordering::Relaxed);
        }
    }
}

#[test]
fn cancel_stops_between_steps() {
    let model =
        StableDiffusion::load(common::tiny_model_dir("epsilon"), &LoadOptions::default()).unwrap();
    let mut request = TextToImage::new(&model, "a salad", 1);
    request.width = 64;
    request.height = 64;
    request.num_inference_steps = 10;
    let flag = AtomicBool::new(false);
    let mut observer = CancelAfter {
        after: 2,
        seen: 0,
        flag: &flag,
    };
    let result = request.run(&model, &mut observer, &flag);
    assert!(matches!(result, Err(Error::Cancelled)), "{result:?}");
    assert_eq!(
        observer.seen, 2,
        "the run went past the step after which it was cancelled"
    );
}
