//! Every scheduler against diffusers' own loop (fixtures from
//! `tools/parity/make_scheduler_fixtures.py`).
//!
//! The fixtures record the model outputs and the noise diffusers used, so this
//! checks the scheduler alone: same timesteps, same scaled inputs, and latents
//! after every step within 1e-4 of diffusers relative to their scale. The Rust
//! side carries its own latents forward (it is never reset to diffusers'), so
//! any drift would accumulate and show.

mod common;

use std::collections::HashMap;
use std::path::PathBuf;

use candle_core::{Device, Tensor};
use common::rel_diff;
use sie_engine::scheduler::{self, SchedulerConfig, SchedulerKind};

const TOLERANCE: f64 = 1e-4;

fn fixture_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/schedulers")
}

fn check(name: &str) {
    let dir = fixture_dir();
    let meta: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join(format!("{name}.json"))).unwrap())
            .unwrap();
    let tensors: HashMap<String, Tensor> =
        candle_core::safetensors::load(dir.join(format!("{name}.safetensors")), &Device::Cpu)
            .unwrap();
    let config = SchedulerConfig::from_json(
        &dir.join(format!("{name}.json")),
        &meta["config"].to_string(),
    )
    .unwrap();
    let kind = SchedulerKind::parse(meta["class"].as_str().unwrap()).unwrap();
    let steps = meta["steps"].as_u64().unwrap() as usize;
    let eta = meta["eta"].as_f64().unwrap();
    let mut sched = scheduler::build(kind, &config, steps, eta).unwrap();

    let want_t: Vec<f64> = tensors["timesteps"].to_vec1().unwrap();
    let got_t = sched.timesteps().to_vec();
    assert_eq!(
        got_t.len(),
        want_t.len(),
        "{name}: timesteps {got_t:?} vs {want_t:?}"
    );
    for (g, w) in got_t.iter().zip(&want_t) {
        assert!(
            (g - w).abs() < 1e-3,
            "{name}: timesteps {got_t:?} vs {want_t:?}"
        );
    }
    let want_sigma = tensors["init_noise_sigma"].to_vec1::<f64>().unwrap()[0];
    let got_sigma = sched.init_noise_sigma();
    assert!(
        (got_sigma - want_sigma).abs() <= 1e-5 * want_sigma.abs().max(1.0),
        "{name}: init_noise_sigma {got_sigma} vs {want_sigma}"
    );

    let mut sample = (&tensors["init_noise"] * got_sigma).unwrap();
    for i in 0..want_t.len() {
        let scaled = sched.scale_model_input(sample.clone(), i).unwrap();
        let d = rel_diff(&scaled, &tensors[&format!("scaled_{i}")]);
        assert!(
            d <= TOLERANCE,
            "{name}: scaled input at step {i} differs by {d:e}"
        );

        let draws = meta["noise_draws"][i].as_u64().unwrap() as usize;
        let mut k = 0;
        let mut noise = || {
            assert!(k < draws, "{name}: step {i} drew more noise than diffusers");
            let t = tensors[&format!("noise_{i}_{k}")].clone();
            k += 1;
            Ok(t)
        };
        let model_output = &tensors[&format!("model_output_{i}")];
        sample = sched.step(model_output, i, &sample, &mut noise).unwrap();
        assert_eq!(
            k, draws,
            "{name}: step {i} drew {k} noise tensors, diffusers {draws}"
        );
        let d = rel_diff(&sample, &tensors[&format!("sample_{}", i + 1)]);
        assert!(
            d <= TOLERANCE,
            "{name}: latents after step {i} differ by {d:e}"
        );
    }
}

/// Runs every fixture of one scheduler class (both prediction types, all step counts).
fn check_class(class: &str) {
    let mut names: Vec<String> = std::fs::read_dir(fixture_dir())
        .unwrap()
        .filter_map(|e| {
            let name = e.unwrap().file_name().into_string().unwrap();
            let stem = name.strip_suffix(".json")?.to_owned();
            stem.starts_with(&format!("{class}-")).then_some(stem)
        })
        .collect();
    names.sort();
    assert!(!names.is_empty(), "no fixtures for {class}");
    for name in names {
        check(&name);
    }
}

#[test]
fn names_and_aliases_parse() {
    for kind in SchedulerKind::ALL {
        assert_eq!(SchedulerKind::parse(kind.as_str()).unwrap(), *kind);
    }
    assert_eq!(
        SchedulerKind::parse("LMS").unwrap(),
        SchedulerKind::LmsDiscrete
    );
    let err = SchedulerKind::parse("KarrasVe").unwrap_err().to_string();
    assert!(
        err.contains("KarrasVe") && err.contains("UniPCMultistepScheduler"),
        "{err}"
    );
}

#[test]
fn ddim() {
    check_class("DDIMScheduler");
}

#[test]
fn ddpm() {
    check_class("DDPMScheduler");
}

#[test]
fn pndm() {
    check_class("PNDMScheduler");
}

#[test]
fn lms() {
    check_class("LMSDiscreteScheduler");
}

#[test]
fn heun() {
    check_class("HeunDiscreteScheduler");
}

#[test]
fn euler() {
    check_class("EulerDiscreteScheduler");
}

#[test]
fn euler_ancestral() {
    check_class("EulerAncestralDiscreteScheduler");
}

#[test]
fn dpm_solver_multistep() {
    check_class("DPMSolverMultistepScheduler");
}

#[test]
fn unipc() {
    check_class("UniPCMultistepScheduler");
}
