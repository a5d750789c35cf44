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

use common::{
    assert_matches_fixture, fixture_request, load_tensors, read_json, rel_diff, Recorder,
};
use sie_engine::candle_core::Tensor;
use sie_engine::StableDiffusion;

const TOLERANCE: f64 = 1e-4;

fn fixtures() -> PathBuf {
    common::fixtures("pipeline")
}

fn load(prediction: &str) -> StableDiffusion {
    common::load_checked(prediction, &fixtures())
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
    let request = fixture_request(&model, r);

    let mut recorder = Recorder::default();
    let generated = request
        .run(&model, &mut recorder, &AtomicBool::new(false))
        .unwrap();
    let steps = meta["steps_recorded"].as_u64().unwrap() as usize;
    assert_matches_fixture(name, &recorder, &generated, &want, steps, TOLERANCE);
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
