//! Helpers shared by the parity tests: fixture paths, loading, and the one error measure.

#![allow(dead_code)] // each test binary uses its own subset

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use sie_engine::candle_core::{Device, Tensor};
use sie_engine::scheduler::PredictionType;
use sie_engine::tiny::{write_tiny_model, TinyOptions};

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

/// The tiny model `sie model tiny` writes with its default seed, for `"epsilon"` or
/// `"v_prediction"`; written once per test binary into a temporary directory.
pub fn tiny_model_dir(prediction: &str) -> &'static Path {
    static ROOT: OnceLock<tempfile::TempDir> = OnceLock::new();
    let root = ROOT.get_or_init(|| {
        let root = tempfile::tempdir().unwrap();
        for (name, prediction_type) in [
            ("epsilon", PredictionType::Epsilon),
            ("v_prediction", PredictionType::VPrediction),
        ] {
            let options = TinyOptions {
                prediction_type,
                seed: 0,
            };
            write_tiny_model(&root.path().join(name), options).unwrap();
        }
        root
    });
    Box::leak(root.path().join(prediction).into_boxed_path())
}
