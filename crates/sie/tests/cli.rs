//! `sie model …` as a user runs it: the real binary on the tiny model.

mod common;

use std::path::Path;

use common::{sie, sie_ok as ok};

/// Writes the tiny model into `dir/tiny`; its path.
fn tiny(dir: &Path) -> String {
    common::tiny_model(dir).to_str().unwrap().to_owned()
}

/// `text` split on spaces, for argument lists without spaces inside an argument.
fn words(text: &str) -> Vec<&str> {
    text.split_whitespace().collect()
}

/// `sie model run --model MODEL --prompt "An oil painting of a salad" ARGS…`, which must
/// succeed; its stdout.
fn run_model(model: &str, args: &str) -> String {
    let mut all = vec!["model", "run", "--model", model];
    all.extend(["--prompt", "An oil painting of a salad"]);
    all.extend(words(args));
    ok(&all)
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
    let lms = "--steps 3 --guidance 20 --width 64 --height 48 --scheduler LMS --images 2 --seed 5";
    let stdout = run_model(
        model,
        &format!("{lms} --out {} --dump {}", out.display(), dump.display()),
    );
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
    let stdout = run_model(model, &format!("{lms} --out {}", again.display()));
    assert!(stdout.contains("seed: 5"));
    assert_eq!(
        std::fs::read(tmp.path().join("again-1.png")).unwrap(),
        std::fs::read(tmp.path().join("salad-1.png")).unwrap()
    );
    let random = tmp.path().join("r.png");
    let stdout = run_model(
        model,
        &format!(
            "--steps 1 --width 64 --height 64 --out {}",
            random.display()
        ),
    );
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
    let model = &tiny(tmp.path());
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

/// `sie model run` of two 64x48 images at 2 steps on `model` into `out`, with `extra`.
fn run_tiny(model: &str, out: &Path, extra: &[&str]) -> String {
    let mut args = format!(
        "--steps 2 --width 64 --height 48 --images 2 --seed 9 --out {}",
        out.display()
    );
    for e in extra {
        args.push(' ');
        args.push_str(e);
    }
    run_model(model, &args)
}

fn rgb(path: &Path) -> Vec<u8> {
    image::open(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .to_rgb8()
        .into_raw()
}

#[test]
fn the_safety_checker_blacks_out_what_it_flags() {
    let tmp = tempfile::tempdir().unwrap();
    let flag_all = tmp.path().join("all");
    let flag_none = tmp.path().join("none");
    let (flag_all, flag_none) = (flag_all.to_str().unwrap(), flag_none.to_str().unwrap());
    for (dir, threshold) in [(flag_all, "-1"), (flag_none, "1")] {
        let mut args = words("model tiny --safety-checker --checker-threshold");
        args.extend([threshold, "--out", dir]);
        ok(&args);
    }
    let summary = ok(&["model", "check", flag_all]);
    assert!(summary.contains("safety_checker: "), "{summary}");

    // The model directory's own checker is the default.
    let stdout = run_tiny(flag_all, &tmp.path().join("a.png"), &[]);
    assert!(
        stdout.contains("nsfw_content_detected: [true, true]"),
        "{stdout}"
    );
    for name in ["a-1.png", "a-2.png"] {
        let pixels = rgb(&tmp.path().join(name));
        assert_eq!(pixels.len(), 64 * 48 * 3);
        assert!(pixels.iter().all(|&b| b == 0), "{name} is not black");
    }

    // Nothing flagged: the same images as without a checker.
    let stdout = run_tiny(flag_none, &tmp.path().join("n.png"), &[]);
    assert!(
        stdout.contains("nsfw_content_detected: [false, false]"),
        "{stdout}"
    );
    let stdout = run_tiny(
        flag_none,
        &tmp.path().join("u.png"),
        &["--no-safety-checker"],
    );
    assert!(!stdout.contains("nsfw_content_detected"), "{stdout}");
    for i in 1..=2 {
        let checked = rgb(&tmp.path().join(format!("n-{i}.png")));
        assert_eq!(checked, rgb(&tmp.path().join(format!("u-{i}.png"))));
        assert!(checked.iter().any(|&b| b != 0));
    }

    // --safety-checker DIR names another checker: the flagging one, on the passing model.
    let other = format!("{flag_all}/safety_checker");
    let stdout = run_tiny(
        flag_none,
        &tmp.path().join("o.png"),
        &["--safety-checker", &other],
    );
    assert!(
        stdout.contains("nsfw_content_detected: [true, true]"),
        "{stdout}"
    );
}

#[test]
fn jpeg_and_webp_outputs_decode_to_the_right_size() {
    let tmp = tempfile::tempdir().unwrap();
    let model = &tiny(tmp.path());
    let png_out = tmp.path().join("p.png");
    run_tiny(model, &png_out, &[]);
    let png = rgb(&tmp.path().join("p-1.png"));
    for (format, file, expected) in [
        ("jpeg", "j.jpg", image::ImageFormat::Jpeg),
        ("WEBP", "w.webp", image::ImageFormat::WebP),
    ] {
        run_tiny(model, &tmp.path().join(file), &["--format", format]);
        let stem = file.split('.').next().unwrap();
        let ext = file.split('.').nth(1).unwrap();
        let path = tmp.path().join(format!("{stem}-1.{ext}"));
        let bytes = std::fs::read(&path).unwrap();
        assert_eq!(image::guess_format(&bytes).unwrap(), expected, "{format}");
        let decoded = image::load_from_memory_with_format(&bytes, expected).unwrap();
        assert_eq!((decoded.width(), decoded.height()), (64, 48), "{format}");
        if expected == image::ImageFormat::WebP {
            // Lossless: the same pixels as the PNG.
            assert_eq!(decoded.to_rgb8().into_raw(), png);
        }
    }
    let run = sie(&[
        "model", "run", "--model", model, "--prompt", "x", "--format", "gif", "--out", "x.gif",
    ]);
    let err = String::from_utf8_lossy(&run.stderr);
    assert!(!run.status.success());
    assert!(
        err.contains("gif") && err.contains("PNG, JPEG, WEBP"),
        "{err}"
    );
}

/// Every command that generates takes `--device`; a device this build cannot use is refused
/// at start with what is missing, never replaced by the CPU. (A CUDA build would try it.)
#[cfg(not(feature = "cuda"))]
#[test]
fn a_device_that_cannot_be_used_is_refused_at_start() {
    let tmp = tempfile::tempdir().unwrap();
    let model = &tiny(tmp.path());
    let data = tmp.path().join("data");
    let data = data.to_str().unwrap();
    let serve = words("serve --model tiny --listen 127.0.0.1:0 --device cuda --data-dir");
    let run = [
        "model", "run", "--model", model, "--prompt", "x", "--out", "x.png",
    ];
    let cases: [(Vec<&str>, &str); 5] = [
        ([serve, vec![data]].concat(), "built without CUDA support"),
        (
            [&run[..], &["--device", "cuda:1"]].concat(),
            "--device cuda:1: this sie was built without CUDA support",
        ),
        (
            vec!["model", "check", model, "--device", "cuda"],
            "tools/gpu/build.sh",
        ),
        ([&run[..], &["--dtype", "float16"]].concat(), "float32 only"),
        (
            [&run[..], &["--device", "gpu"]].concat(),
            "accepted: cpu, cuda, cuda:N",
        ),
    ];
    for (args, needle) in cases {
        let out = sie(&args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} succeeded");
        assert!(err.contains(needle), "{args:?}: {err}");
        assert!(
            err.matches("cuda:").count() <= 1,
            "the device named twice: {err}"
        );
    }
    // Refused before anything is written: no data directory, no tiny model in it.
    assert!(
        !std::path::Path::new(data).exists(),
        "a refused serve made {data}"
    );
    // SIE_DEVICE is the same setting.
    let out = std::process::Command::new(common::SIE)
        .args(run)
        .env("SIE_DEVICE", "cuda")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("built without CUDA support"));
}

#[test]
fn model_run_starts_from_an_image_and_inpaints_with_a_mask() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tiny(tmp.path());
    let photo = tmp.path().join("photo.png");
    let mask = tmp.path().join("mask.png");
    image::RgbImage::from_fn(83, 67, |x, y| image::Rgb([x as u8 * 3, y as u8 * 3, 40]))
        .save(&photo)
        .unwrap();
    image::RgbImage::from_fn(10, 30, |_, y| image::Rgb([if y > 15 { 255 } else { 0 }; 3]))
        .save(&mask)
        .unwrap();
    let (photo, mask) = (photo.display(), mask.display());

    // The output takes the image's size rounded down to multiples of 8, unless given.
    let out = tmp.path().join("from-image.png");
    run_model(
        &model,
        &format!(
            "--steps 4 --strength 0.5 --image {photo} --seed 1 --out {}",
            out.display()
        ),
    );
    assert_eq!(png_size(&out), (80, 64));
    let again = tmp.path().join("again.png");
    run_model(
        &model,
        &format!(
            "--steps 4 --strength 0.5 --image {photo} --seed 1 --out {}",
            again.display()
        ),
    );
    assert_eq!(
        rgb(&out),
        rgb(&again),
        "the same seed and image give the same picture"
    );

    let out = tmp.path().join("inpainted.png");
    run_model(
        &model,
        &format!(
            "--steps 2 --image {photo} --mask {mask} --width 64 --height 72 --out {}",
            out.display()
        ),
    );
    assert_eq!(png_size(&out), (64, 72));

    // A strength that runs no step, and a mask without an image, are refused.
    let refused = |args: String| {
        let run = sie(&words(&args));
        assert!(!run.status.success(), "{args}");
        String::from_utf8_lossy(&run.stderr).into_owned()
    };
    let err = refused(format!(
        "model run --model {model} --prompt x --steps 4 --strength 0.2 --image {photo} --out x.png"
    ));
    assert!(
        err.contains("strength") && err.contains("runs no step"),
        "{err}"
    );
    let err = refused(format!(
        "model run --model {model} --prompt x --mask {mask} --out x.png"
    ));
    assert!(err.contains("--image"), "{err}");
}

/// The engine's tiny single-file checkpoint (original SD 2.x layout), rebuilt from its fixture.
#[path = "../../engine/tests/common/original.rs"]
mod original;

#[test]
fn a_single_file_checkpoint_is_checked_converted_run_and_served() {
    let tmp = tempfile::tempdir().unwrap();
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("../engine/tests/fixtures/layouts");
    let (file, _) = original::write_checkpoint(&fixtures, tmp.path());
    let file = file.to_str().unwrap();

    // What the file cannot say is asked for.
    let run = sie(&["model", "check", file]);
    let err = String::from_utf8_lossy(&run.stderr);
    assert!(!run.status.success());
    assert!(
        err.contains("--prediction-type") && err.contains("single.safetensors"),
        "{err}"
    );

    let summary = ok(&["model", "check", file, "--prediction-type", "epsilon"]);
    for line in [
        "layout: a single file in the original SD 2.x layout",
        "unet (inferred): 4 levels of [64, 64, 128, 128] channels",
        "text_encoder (inferred): OpenCLIP, 2 of its 3 layers",
        "not in the file: prediction type epsilon (--prediction-type)",
        "ok: every tensor is present",
    ] {
        assert!(summary.contains(line), "{line:?} in\n{summary}");
    }

    let dir = tmp.path().join("converted");
    let dir = dir.to_str().unwrap();
    ok(&[
        "model",
        "convert",
        file,
        "--out",
        dir,
        "--prediction-type",
        "epsilon",
    ]);
    let summary = ok(&["model", "check", dir]);
    assert!(
        summary.contains("layout: a diffusers directory"),
        "{summary}"
    );
    // The hints belong to single files.
    let run = sie(&["model", "check", dir, "--prediction-type", "epsilon"]);
    assert!(!run.status.success());

    // The file and its conversion make the same image.
    let args = "--steps 2 --width 64 --height 64 --seed 3";
    let (a, b) = (tmp.path().join("a.png"), tmp.path().join("b.png"));
    run_model(
        file,
        &format!("{args} --prediction-type epsilon --out {}", a.display()),
    );
    run_model(dir, &format!("{args} --out {}", b.display()));
    assert_eq!(std::fs::read(&a).unwrap(), std::fs::read(&b).unwrap());

    // `sie serve` loads it too.
    let data = tmp.path().join("data");
    let server = common::Server::start_model(file, &data, &["--prediction-type", "epsilon"], None);
    let url = server.submit(common::small(3, 1, 2));
    let done = server.finish(&url, std::time::Duration::from_secs(120));
    assert_eq!(done["status"], "success", "{done}");
    assert_eq!(done["modelOutputs"]["images"].as_array().unwrap().len(), 1);
}
