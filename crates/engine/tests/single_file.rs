//! Single-file checkpoints in the original SD 2.x layout, against diffusers' own reading of
//! the same file (`from_single_file`), and `sie model convert`'s directory.
//!
//! The checkpoint is not committed: `tools/parity/make_layout_fixtures.py` wrote it with
//! values that are a function of each tensor's name and position, and recorded the list of
//! tensors and a hash of their contents; it is rebuilt here from that list by the same rule,
//! and the hash proves it is the file diffusers read. Its widths are multiples of 64 and 32
//! so that the architecture follows from the shapes with SD 2.x's rules, as for a real one.

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;

use common::original::{content_hash, write_checkpoint};
use common::{
    assert_matches_fixture, fixture_request, fixtures, load_tensors, read_json, Recorder,
};
use sie_engine::candle_core::Tensor;
use sie_engine::pipeline::NoObserver;
use sie_engine::scheduler::PredictionType;
use sie_engine::{Error, LoadOptions, ModelFiles, SingleFileOptions, StableDiffusion};

fn options(prediction: Option<PredictionType>, config: Option<PathBuf>) -> LoadOptions {
    LoadOptions {
        single_file: SingleFileOptions {
            prediction_type: prediction,
            config,
        },
        ..LoadOptions::default()
    }
}

fn generate(model: &StableDiffusion, case: &str) -> (Recorder, sie_engine::pipeline::Generated) {
    let meta = read_json(&fixtures("layouts").join(format!("{case}.json")));
    let request = fixture_request(model, &meta["request"]);
    let mut recorder = Recorder::default();
    let generated = request
        .run(model, &mut recorder, &AtomicBool::new(false))
        .unwrap();
    (recorder, generated)
}

fn check_against_diffusers(model: &StableDiffusion) -> Vec<Vec<u8>> {
    let meta = read_json(&fixtures("layouts").join("single.json"));
    let want = load_tensors(&fixtures("layouts").join("single.safetensors"));
    let (recorder, generated) = generate(model, "single");
    let steps = meta["steps_recorded"].as_u64().unwrap() as usize;
    assert_matches_fixture("single", &recorder, &generated, &want, steps, 1e-4);
    generated.images
}

#[test]
fn a_single_file_generates_what_diffusers_from_single_file_does() {
    let tmp = tempfile::tempdir().unwrap();
    let (path, _) = write_checkpoint(&fixtures("layouts"), tmp.path());
    let model =
        StableDiffusion::load(&path, &options(Some(PredictionType::Epsilon), None)).unwrap();
    check_against_diffusers(&model);

    // `sie model check` says what it found and inferred.
    let files = ModelFiles::open_with(
        &path,
        &SingleFileOptions {
            prediction_type: Some(PredictionType::Epsilon),
            config: None,
        },
    )
    .unwrap();
    let summary = files.summary();
    assert_eq!(
        summary["layout"],
        "a single file in the original SD 2.x layout"
    );
    assert!(
        summary["unet (inferred)"]
            .starts_with("4 levels of [64, 64, 128, 128] channels, 1 resnets each"),
        "{summary:?}"
    );
    assert!(
        summary["text_encoder (inferred)"].starts_with("OpenCLIP, 2 of its 3 layers"),
        "{summary:?}"
    );
    assert_eq!(
        summary["tokenizer"],
        "SD 2.x's OpenCLIP tokenizer (built in)"
    );
}

#[test]
fn a_converted_directory_holds_diffusers_tensors_and_generates_the_same() {
    let tmp = tempfile::tempdir().unwrap();
    let (path, _) = write_checkpoint(&fixtures("layouts"), tmp.path());
    let single = SingleFileOptions {
        prediction_type: Some(PredictionType::Epsilon),
        config: None,
    };
    let out = tmp.path().join("converted");
    ModelFiles::open_with(&path, &single)
        .unwrap()
        .convert(&out)
        .unwrap();

    // The tensors are exactly those diffusers' own conversion made of the file.
    let meta = read_json(&fixtures("layouts").join("single.json"));
    let want = &meta["converted_content_sha256"];
    for (component, file) in [
        ("unet", "diffusion_pytorch_model.safetensors"),
        ("vae", "diffusion_pytorch_model.safetensors"),
        ("text_encoder", "model.safetensors"),
    ] {
        let mut tensors = load_tensors(&out.join(component).join(file));
        if component == "text_encoder" && !want[component].is_null() {
            // transformers 5 names them without `text_model.`; we write the published layout.
            let unprefixed: HashMap<String, Tensor> = tensors
                .iter()
                .map(|(k, v)| {
                    (
                        k.strip_prefix("text_model.").unwrap_or(k).to_owned(),
                        v.clone(),
                    )
                })
                .collect();
            if content_hash(&unprefixed) == want[component].as_str().unwrap() {
                continue;
            }
            tensors = unprefixed;
        }
        assert_eq!(
            content_hash(&tensors),
            want[component].as_str().unwrap(),
            "{component}: the converted tensors differ from diffusers' conversion"
        );
    }

    // The directory loads with no hint and generates what diffusers does.
    let converted = StableDiffusion::load(&out, &LoadOptions::default()).unwrap();
    let from_dir = check_against_diffusers(&converted);

    // The single file read with the converted directory as --config (no prediction type:
    // the scheduler config says it) is the same model.
    let with_config = StableDiffusion::load(&path, &options(None, Some(out.clone()))).unwrap();
    let (_, generated) = generate(&with_config, "single");
    assert_eq!(generated.images, from_dir);

    // Converting again onto the directory is refused, and leaves it as it was.
    let before = std::fs::read(out.join("unet/config.json")).unwrap();
    let err = ModelFiles::open_with(&path, &single)
        .unwrap()
        .convert(&out)
        .unwrap_err();
    assert!(err.to_string().contains("already exists"), "{err}");
    assert_eq!(std::fs::read(out.join("unet/config.json")).unwrap(), before);
}

fn open_err(path: &Path, prediction: Option<PredictionType>) -> Error {
    match ModelFiles::open_with(
        path,
        &SingleFileOptions {
            prediction_type: prediction,
            config: None,
        },
    ) {
        Ok(_) => panic!("{} opened, but should not have", path.display()),
        Err(e) => e,
    }
}

/// Writes `tensors` with `rename` applied to every name (dropping those it maps to `None`).
fn write_renamed(
    path: &Path,
    tensors: &HashMap<String, Tensor>,
    rename: impl Fn(&str) -> Option<String>,
) {
    let renamed: HashMap<String, Tensor> = tensors
        .iter()
        .filter_map(|(k, v)| rename(k).map(|k| (k, v.clone())))
        .collect();
    sie_engine::candle_core::safetensors::save(&renamed, path).unwrap();
}

#[test]
fn what_a_single_file_cannot_say_or_does_not_hold_is_refused_by_name() {
    let tmp = tempfile::tempdir().unwrap();
    let (path, tensors) = write_checkpoint(&fixtures("layouts"), tmp.path());
    let message = |e: Error| e.to_string();

    // SD 2.1 and 2.1-base look alike: the prediction type is asked for, not guessed.
    let err = message(open_err(&path, None));
    assert!(
        err.contains("--prediction-type") && err.contains("single.safetensors"),
        "{err}"
    );

    // A pickle is never opened.
    let ckpt = tmp.path().join("model.ckpt");
    std::fs::write(&ckpt, b"not read").unwrap();
    let err = message(open_err(&ckpt, Some(PredictionType::Epsilon)));
    assert!(
        err.contains("model.ckpt") && err.contains("safetensors"),
        "{err}"
    );

    // Truncated.
    let truncated = tmp.path().join("truncated.safetensors");
    let bytes = std::fs::read(&path).unwrap();
    std::fs::write(&truncated, &bytes[..bytes.len() / 2]).unwrap();
    let err = message(open_err(&truncated, Some(PredictionType::Epsilon)));
    assert!(
        err.contains("truncated.safetensors") && err.contains("truncated"),
        "{err}"
    );

    // SD 1.x: CLIP ViT-L under `cond_stage_model.transformer.`.
    let sd1 = tmp.path().join("sd15.safetensors");
    write_renamed(&sd1, &tensors, |k| {
        Some(match k.strip_prefix("cond_stage_model.model.") {
            Some(rest) => format!("cond_stage_model.transformer.text_model.{rest}"),
            None => k.to_owned(),
        })
    });
    let err = message(open_err(&sd1, Some(PredictionType::Epsilon)));
    assert!(
        err.contains("sd15.safetensors") && err.contains("SD 1.x") && err.contains("SD 2.x"),
        "{err}"
    );

    // SDXL: its conditioner and the UNet's label embedding.
    let sdxl = tmp.path().join("sdxl.safetensors");
    write_renamed(&sdxl, &tensors, |k| {
        Some(match k.strip_prefix("cond_stage_model.model.") {
            Some(rest) => format!("conditioner.embedders.1.model.{rest}"),
            None => k.to_owned(),
        })
    });
    let err = message(open_err(&sdxl, Some(PredictionType::Epsilon)));
    assert!(
        err.contains("sdxl.safetensors") && err.contains("SDXL"),
        "{err}"
    );

    // A tensor the networks need is missing: named in the original layout, at load.
    let gone = "model.diffusion_model.output_blocks.3.1.proj_out.weight";
    assert!(tensors.contains_key(gone));
    let missing = tmp.path().join("missing.safetensors");
    write_renamed(&missing, &tensors, |k| (k != gone).then(|| k.to_owned()));
    let err = match StableDiffusion::load(&missing, &options(Some(PredictionType::Epsilon), None)) {
        Ok(_) => panic!("loaded without {gone}"),
        Err(e) => e.to_string(),
    };
    assert!(
        err.contains("missing.safetensors") && err.contains(gone),
        "{err}"
    );

    // Without its VAE it is not a whole pipeline.
    let no_vae = tmp.path().join("no-vae.safetensors");
    write_renamed(&no_vae, &tensors, |k| {
        (!k.starts_with("first_stage_model.")).then(|| k.to_owned())
    });
    let err = message(open_err(&no_vae, Some(PredictionType::Epsilon)));
    assert!(
        err.contains("first_stage_model.") && err.contains("VAE"),
        "{err}"
    );

    // A model directory does not take the single-file hints.
    let converted = tmp.path().join("dir");
    ModelFiles::open_with(
        &path,
        &SingleFileOptions {
            prediction_type: Some(PredictionType::Epsilon),
            config: None,
        },
    )
    .unwrap()
    .convert(&converted)
    .unwrap();
    let err = message(open_err(&converted, Some(PredictionType::Epsilon)));
    assert!(err.contains("--prediction-type"), "{err}");
    // ...and runs without them.
    let model = StableDiffusion::load(&converted, &LoadOptions::default()).unwrap();
    let mut request = sie_engine::pipeline::TextToImage::new(&model, "a salad", 1);
    (request.width, request.height, request.num_inference_steps) = (64, 64, 2);
    request
        .run(&model, &mut NoObserver, &AtomicBool::new(false))
        .unwrap();
}

/// What the review of the first version found: files as diffusers' converter back to this
/// layout writes them (the 23 used text layers, no projection), files mixing dtypes, a
/// mistyped path with the hints, and the `--config` directory's safety checker.
#[test]
fn files_in_the_forms_they_are_found_load_and_convert_faithfully() {
    let tmp = tempfile::tempdir().unwrap();
    let (path, tensors) = write_checkpoint(&fixtures("layouts"), tmp.path());
    let epsilon = Some(PredictionType::Epsilon);

    // Only the layers SD 2.x uses, and no `text_projection`: all of them are read.
    let used_only = tmp.path().join("used-only.safetensors");
    write_renamed(&used_only, &tensors, |k| {
        let unused = k.starts_with("cond_stage_model.model.transformer.resblocks.2.")
            || k == "cond_stage_model.model.text_projection";
        (!unused).then(|| k.to_owned())
    });
    let single = SingleFileOptions {
        prediction_type: epsilon,
        config: None,
    };
    let summary = ModelFiles::open_with(&used_only, &single)
        .unwrap()
        .summary();
    assert!(
        summary["text_encoder (inferred)"].starts_with("OpenCLIP, all 2 of its layers"),
        "{summary:?}"
    );
    let model = StableDiffusion::load(&used_only, &options(epsilon, None)).unwrap();
    check_against_diffusers(&model);

    // A tensor in another dtype keeps it through convert, and the weights are as readable
    // as the configs.
    let odd = "model.diffusion_model.input_blocks.0.0.bias";
    let mixed = tmp.path().join("mixed.safetensors");
    let mut with_half = tensors.clone();
    let half = with_half[odd]
        .to_dtype(sie_engine::candle_core::DType::F16)
        .unwrap();
    with_half.insert(odd.to_owned(), half);
    sie_engine::candle_core::safetensors::save(&with_half, &mixed).unwrap();
    let out = tmp.path().join("mixed-converted");
    ModelFiles::open_with(&mixed, &single)
        .unwrap()
        .convert(&out)
        .unwrap();
    let unet = load_tensors(&out.join("unet/diffusion_pytorch_model.safetensors"));
    assert_eq!(
        unet["conv_in.bias"].dtype(),
        sie_engine::candle_core::DType::F16
    );
    assert_eq!(
        unet["conv_in.weight"].dtype(),
        sie_engine::candle_core::DType::F32
    );
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode();
        assert_eq!(
            mode(&out.join("unet/diffusion_pytorch_model.safetensors")),
            mode(&out.join("unet/config.json"))
        );
    }

    // A mistyped path is named as missing, whatever the hints.
    let err = open_err(&tmp.path().join("nope.safetensors"), epsilon).to_string();
    assert!(
        err.contains("nope.safetensors") && err.contains("no such file"),
        "{err}"
    );

    // With --config, that directory's safety checker is the file's default one.
    let config = tmp.path().join("config");
    ModelFiles::open_with(&path, &single)
        .unwrap()
        .convert(&config)
        .unwrap();
    let bare = StableDiffusion::load(&path, &options(None, Some(config.clone()))).unwrap();
    assert!(bare.safety_checker.is_none());
    sie_engine::tiny::write_tiny_safety_checker(&config, Default::default()).unwrap();
    let checked = StableDiffusion::load(&path, &options(None, Some(config))).unwrap();
    assert!(checked.safety_checker.is_some());
}
