//! Our UNet and VAE against diffusers' on the tiny model, one forward pass each
//! (fixtures from `tools/parity/make_block_fixtures.py`, which also records the
//! intermediate activations of every block for locating a divergence).

mod common;

use common::{fixtures, load_tensors, read_json, rel_diff, tiny_model_dir};
use sie_engine::candle_core::DType;
use sie_engine::{LoadOptions, StableDiffusion};

const TOLERANCE: f64 = 1e-4;

fn model() -> StableDiffusion {
    StableDiffusion::load(tiny_model_dir("epsilon"), &LoadOptions::default()).unwrap()
}

#[test]
fn unet_matches_diffusers_at_integer_and_fractional_timesteps() {
    let model = model();
    let t = load_tensors(&fixtures("blocks").join("epsilon-unet.safetensors"));
    let meta = read_json(&fixtures("blocks").join("epsilon-unet.json"));
    let timesteps: Vec<f64> = meta["timesteps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap())
        .collect();
    for (timestep, key) in timesteps.into_iter().zip(["out", "out_t2"]) {
        let out = model
            .unet_forward(&t["sample"], timestep, &t["encoder_hidden_states"])
            .unwrap();
        let d = rel_diff(&out, &t[key]);
        assert!(
            d <= TOLERANCE,
            "UNet at t={timestep} differs from diffusers by {d:e}"
        );
    }
}

#[test]
fn vae_decode_and_encode_match_diffusers() {
    let model = model();
    let t = load_tensors(&fixtures("blocks").join("epsilon-vae.safetensors"));
    let decoded = model.vae_decode(&t["z"]).unwrap();
    let d = rel_diff(&decoded, &t["decoded"]);
    assert!(d <= TOLERANCE, "VAE decode differs from diffusers by {d:e}");
    let moments = model
        .vae_encode_moments(&t["x"].to_dtype(DType::F32).unwrap())
        .unwrap();
    let d = rel_diff(&moments, &t["moments"]);
    assert!(d <= TOLERANCE, "VAE encode differs from diffusers by {d:e}");
}
