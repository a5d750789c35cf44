//! The tiny single-file checkpoint of `tests/fixtures/layouts` (original SD 2.x layout),
//! rebuilt from the list of its tensors by the value rule of
//! `tools/parity/make_layout_fixtures.py`, and the content hash that proves it is the file
//! diffusers read. Standalone (the `sie` crate's CLI tests include it by path).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
use sie_engine::candle_core::{DType, Device, Tensor};

fn fnv1a32(text: &str) -> u64 {
    let mut h: u32 = 2_166_136_261;
    for &b in text.as_bytes() {
        h = (h ^ u32::from(b)).wrapping_mul(16_777_619);
    }
    u64::from(h)
}

/// The fixture's value rule (see the script): uniform in [-1, 1) by a hash of the name and
/// the position, scaled by fan-in for matrices, around 1 for 1-D weights, small otherwise.
fn values(name: &str, shape: &[usize]) -> Vec<f32> {
    let h = fnv1a32(name);
    let n: usize = shape.iter().product();
    (0..n as u64)
        .map(|i| {
            let x = (h + i * 2_654_435_761) % (1 << 32);
            let u = x as f64 / 4_294_967_296.0 * 2.0 - 1.0;
            let v = if shape.len() >= 2 {
                let fan_in: usize = shape[1..].iter().product();
                u * (3.0 / fan_in as f64).sqrt()
            } else if name.ends_with(".weight") {
                1.0 + 0.1 * u
            } else {
                0.1 * u
            };
            v as f32
        })
        .collect()
}

/// The checkpoint `fixtures/single-tensors.json` lists, written to `dir/single.safetensors`
/// after checking it is the one the script wrote; its path and tensors.
pub fn write_checkpoint(fixtures: &Path, dir: &Path) -> (PathBuf, HashMap<String, Tensor>) {
    let path = fixtures.join("single-tensors.json");
    let meta: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let mut tensors = HashMap::new();
    for entry in meta["tensors"].as_array().unwrap() {
        let name = entry[0].as_str().unwrap();
        let shape: Vec<usize> = entry[1]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d.as_u64().unwrap() as usize)
            .collect();
        let t = Tensor::from_vec(values(name, &shape), shape.as_slice(), &Device::Cpu).unwrap();
        tensors.insert(name.to_owned(), t);
    }
    assert_eq!(
        content_hash(&tensors),
        meta["content_sha256"].as_str().unwrap(),
        "the rebuilt checkpoint is not the one diffusers read"
    );
    let path = dir.join("single.safetensors");
    sie_engine::candle_core::safetensors::save(&tensors, &path).unwrap();
    (path, tensors)
}

/// sha256 over the tensors in name order: name, shape (`AxB`), raw little-endian data (as
/// `tools/parity/make_layout_fixtures.py` hashes them).
pub fn content_hash(tensors: &HashMap<String, Tensor>) -> String {
    let mut names: Vec<&String> = tensors.keys().collect();
    names.sort();
    let mut hasher = Sha256::new();
    for name in names {
        let t = &tensors[name];
        let shape: Vec<String> = t.dims().iter().map(|d| d.to_string()).collect();
        hasher.update(name.as_bytes());
        hasher.update(b"\n");
        hasher.update(shape.join("x").as_bytes());
        hasher.update(b"\n");
        let flat = t.flatten_all().unwrap();
        match t.dtype() {
            DType::F32 => {
                for v in flat.to_vec1::<f32>().unwrap() {
                    hasher.update(v.to_le_bytes());
                }
            }
            DType::I64 => {
                for v in flat.to_vec1::<i64>().unwrap() {
                    hasher.update(v.to_le_bytes());
                }
            }
            other => panic!("{name}: unexpected dtype {other:?}"),
        }
    }
    format!("{:x}", hasher.finalize())
}
