//! `sie model …` as a user runs it: the real binary on the tiny model.

use std::path::Path;
use std::process::{Command, Output};

fn sie(args: &[&str]) -> Output {
    let out = Command::new(env!("CARGO_BIN_EXE_sie"))
        .args(args)
        .output()
        .expect("the sie binary runs");
    out
}

fn ok(args: &[&str]) -> String {
    let out = sie(args);
    assert!(
        out.status.success(),
        "sie {args:?} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn png_size(path: &Path) -> (u32, u32) {
    let img = image::open(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    (img.width(), img.height())
}

#[test]
fn tiny_check_and_run_with_several_images_and_a_dump() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tmp.path().join("tiny");
    let model = model.to_str().unwrap();
    ok(&[
        "model",
        "tiny",
        "--out",
        model,
        "--prediction-type",
        "v-prediction",
    ]);

    let summary = ok(&["model", "check", model]);
    assert!(summary.contains("native_size: 512x512"), "{summary}");
    assert!(
        summary.contains("prediction_type: VPrediction"),
        "{summary}"
    );
    assert!(summary.contains("scheduler: DDIMScheduler"), "{summary}");

    let out = tmp.path().join("salad.png");
    let dump = tmp.path().join("dump");
    let stdout = ok(&[
        "model",
        "run",
        "--model",
        model,
        "--prompt",
        "An oil painting of a salad",
        "--steps",
        "3",
        "--guidance",
        "20",
        "--width",
        "64",
        "--height",
        "48",
        "--scheduler",
        "LMS",
        "--images",
        "2",
        "--seed",
        "5",
        "--out",
        out.to_str().unwrap(),
        "--dump",
        dump.to_str().unwrap(),
    ]);
    assert!(stdout.contains("seed: 5"), "{stdout}");
    assert!(
        stdout.contains("scheduler: LMSDiscreteScheduler"),
        "{stdout}"
    );
    for name in ["salad-1.png", "salad-2.png"] {
        assert_eq!(png_size(&tmp.path().join(name)), (64, 48), "{name}");
    }
    let tensors = sie_engine::candle_core::safetensors::load(
        dump.join("dump.safetensors"),
        &sie_engine::candle_core::Device::Cpu,
    )
    .unwrap();
    for key in [
        "prompt_ids",
        "negative_prompt_ids",
        "text_embeddings",
        "latents_0",
        "latents_3",
    ] {
        assert!(
            tensors.contains_key(key),
            "dump lacks {key}: {:?}",
            tensors.keys()
        );
    }
    assert_eq!(tensors["latents_3"].dims(), &[2, 4, 6, 8]);
    assert_eq!(tensors["text_embeddings"].dims(), &[4, 77, 32]);

    // Same seed, same image; and a random seed is printed so it can be reproduced.
    let again = tmp.path().join("again.png");
    let stdout = ok(&[
        "model",
        "run",
        "--model",
        model,
        "--prompt",
        "An oil painting of a salad",
        "--steps",
        "3",
        "--guidance",
        "20",
        "--width",
        "64",
        "--height",
        "48",
        "--scheduler",
        "LMS",
        "--images",
        "2",
        "--seed",
        "5",
        "--out",
        again.to_str().unwrap(),
    ]);
    assert!(stdout.contains("seed: 5"));
    assert_eq!(
        std::fs::read(tmp.path().join("again-1.png")).unwrap(),
        std::fs::read(tmp.path().join("salad-1.png")).unwrap()
    );
    let stdout = ok(&[
        "model",
        "run",
        "--model",
        model,
        "--prompt",
        "x",
        "--steps",
        "1",
        "--width",
        "64",
        "--height",
        "64",
        "--out",
        tmp.path().join("r.png").to_str().unwrap(),
    ]);
    let seed_line = stdout
        .lines()
        .find(|l| l.starts_with("seed: "))
        .expect("seed printed");
    let seed: u64 = seed_line["seed: ".len()..].parse().unwrap();
    assert!(seed < 1 << 63);
}

#[test]
fn bad_input_is_refused_with_what_is_accepted() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tmp.path().join("tiny");
    let model = model.to_str().unwrap();
    ok(&["model", "tiny", "--out", model]);
    let out = tmp.path().join("x.png");
    let out = out.to_str().unwrap();

    let run = sie(&[
        "model",
        "run",
        "--model",
        model,
        "--prompt",
        "x",
        "--scheduler",
        "Karras",
        "--out",
        out,
    ]);
    let err = String::from_utf8_lossy(&run.stderr);
    assert!(!run.status.success());
    assert!(
        err.contains("Karras") && err.contains("EulerAncestralDiscreteScheduler"),
        "{err}"
    );

    let run = sie(&[
        "model", "run", "--model", model, "--prompt", "x", "--width", "100", "--out", out,
    ]);
    let err = String::from_utf8_lossy(&run.stderr);
    assert!(!run.status.success());
    assert!(
        err.contains("width") && err.contains("multiple of 8"),
        "{err}"
    );

    let run = sie(&["model", "check", tmp.path().join("nope").to_str().unwrap()]);
    let err = String::from_utf8_lossy(&run.stderr);
    assert!(!run.status.success());
    assert!(
        err.contains("nope") && err.contains("model_index.json"),
        "{err}"
    );
}
