//! Model directories as today's diffusers and transformers save them: weights in shards
//! beside their index, and a tokenizer folder with `tokenizer.json` alone. A pipeline that
//! diffusers itself re-saved must generate what diffusers generates from it; the tiny model
//! rewritten here into those layouts must make the image it makes in the original layout;
//! and each way a sharded checkpoint can be broken is refused naming the file and what was
//! expected.

mod common;

use common::{fresh_tiny, load_err};

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;

use serde_json::json;
use sie_engine::candle_core::{Device, Tensor};
use sie_engine::pipeline::{NoObserver, TextToImage};
use sie_engine::tokenizer::ClipTokenizer;
use sie_engine::{Error, LoadOptions, StableDiffusion};

/// Splits `dir/{stem}.safetensors` into `shards` files named as diffusers names them, with
/// the index beside them, and removes the whole file; the shards' paths.
fn shard(dir: &Path, stem: &str, shards: usize) -> Vec<PathBuf> {
    let whole = dir.join(format!("{stem}.safetensors"));
    let tensors = sie_engine::candle_core::safetensors::load(&whole, &Device::Cpu).unwrap();
    let mut names: Vec<&String> = tensors.keys().collect();
    names.sort();
    let mut weight_map = serde_json::Map::new();
    let mut paths = Vec::new();
    for (k, chunk) in names.chunks(names.len().div_ceil(shards)).enumerate() {
        let file = format!("{stem}-{:05}-of-{shards:05}.safetensors", k + 1);
        let part: HashMap<String, Tensor> = chunk
            .iter()
            .map(|n| ((*n).clone(), tensors[*n].clone()))
            .collect();
        sie_engine::candle_core::safetensors::save(&part, dir.join(&file)).unwrap();
        for n in chunk {
            weight_map.insert((*n).clone(), json!(file));
        }
        paths.push(dir.join(file));
    }
    let index = json!({"metadata": {"total_size": 0}, "weight_map": weight_map});
    std::fs::write(
        dir.join(format!("{stem}.safetensors.index.json")),
        index.to_string(),
    )
    .unwrap();
    std::fs::remove_file(whole).unwrap();
    paths
}

fn image(dir: &Path) -> Vec<Vec<u8>> {
    let model = StableDiffusion::load(dir, &LoadOptions::default()).unwrap();
    let mut request = TextToImage::new(&model, "An oil painting of a salad", 7);
    (request.width, request.height, request.num_inference_steps) = (64, 64, 3);
    request.safety_checker = false;
    request
        .run(&model, &mut NoObserver, &AtomicBool::new(false))
        .unwrap()
        .images
}

#[test]
fn sharded_weights_load_and_make_the_same_image() {
    let (_root, dir) = fresh_tiny();
    let before = image(&dir);
    shard(&dir.join("unet"), "diffusion_pytorch_model", 3);
    shard(&dir.join("vae"), "diffusion_pytorch_model", 2);
    shard(&dir.join("text_encoder"), "model", 2);
    assert_eq!(image(&dir), before);
    // `sie model check` says what it found.
    let summary = sie_engine::ModelFiles::open(&dir).unwrap().summary();
    assert!(
        summary["unet_parameters"].contains("3 shards listed in"),
        "{summary:?}"
    );
    assert_eq!(summary["tokenizer"], "vocab.json and merges.txt");
}

/// The `fp16` variant in shards, as diffusers saves it with `variant="fp16"`: the index is
/// `{stem}.safetensors.index.fp16.json` and names its shards; loaded in f32 on the CPU, each
/// weight widened from its half, so the image is the whole-f16 model's.
#[test]
fn sharded_fp16_variants_load() {
    let (_root, dir) = fresh_tiny();
    for (component, stem, shards) in [
        ("unet", "diffusion_pytorch_model", 3),
        ("vae", "diffusion_pytorch_model", 2),
        ("text_encoder", "model", 2),
    ] {
        let folder = dir.join(component);
        let whole = folder.join(format!("{stem}.safetensors"));
        let half: HashMap<String, Tensor> =
            sie_engine::candle_core::safetensors::load(&whole, &Device::Cpu)
                .unwrap()
                .into_iter()
                .map(|(k, v)| (k, v.to_dtype(sie_engine::candle_core::DType::F16).unwrap()))
                .collect();
        sie_engine::candle_core::safetensors::save(&half, &whole).unwrap();
        shard(&folder, stem, shards);
        let index = folder.join(format!("{stem}.safetensors.index.json"));
        std::fs::rename(
            &index,
            folder.join(format!("{stem}.safetensors.index.fp16.json")),
        )
        .unwrap();
    }
    let summary = sie_engine::ModelFiles::open(&dir).unwrap().summary();
    assert!(
        summary["unet_parameters"].contains("F16, 3 shards listed in")
            && summary["unet_parameters"].contains("index.fp16.json"),
        "{summary:?}"
    );
    let images = image(&dir);
    assert_eq!(images.len(), 1);
}

#[test]
fn broken_shards_are_refused_naming_the_file_and_what_was_expected() {
    // A shard the index names is missing.
    let (_root, dir) = fresh_tiny();
    let shards = shard(&dir.join("unet"), "diffusion_pytorch_model", 2);
    std::fs::remove_file(&shards[1]).unwrap();
    match load_err(&dir) {
        Error::File { path, message } => {
            assert_eq!(path, shards[1]);
            assert!(
                message.contains("missing") && message.contains("index.json"),
                "{message}"
            );
        }
        other => panic!("{other}"),
    }

    // A truncated shard.
    let (_root, dir) = fresh_tiny();
    let shards = shard(&dir.join("unet"), "diffusion_pytorch_model", 2);
    let bytes = std::fs::read(&shards[0]).unwrap();
    std::fs::write(&shards[0], &bytes[..bytes.len() / 2]).unwrap();
    match load_err(&dir) {
        Error::File { path, message } => {
            assert_eq!(path, shards[0]);
            assert!(message.contains("truncated"), "{message}");
        }
        other => panic!("{other}"),
    }

    // The index names a tensor that no shard holds.
    let (_root, dir) = fresh_tiny();
    shard(&dir.join("unet"), "diffusion_pytorch_model", 2);
    let index = dir.join("unet/diffusion_pytorch_model.safetensors.index.json");
    let mut v = common::read_json(&index);
    v["weight_map"]["conv_in.not_a_weight"] =
        json!("diffusion_pytorch_model-00001-of-00002.safetensors");
    std::fs::write(&index, v.to_string()).unwrap();
    match load_err(&dir) {
        Error::File { path, message } => {
            assert_eq!(path, index);
            assert!(message.contains("conv_in.not_a_weight"), "{message}");
        }
        other => panic!("{other}"),
    }

    // An index pointing outside its folder.
    let (_root, dir) = fresh_tiny();
    shard(&dir.join("unet"), "diffusion_pytorch_model", 2);
    let mut v = common::read_json(&index_of(&dir));
    v["weight_map"]["conv_in.weight"] = json!("../vae/diffusion_pytorch_model.safetensors");
    std::fs::write(index_of(&dir), v.to_string()).unwrap();
    match load_err(&dir) {
        Error::File { message, .. } => assert!(message.contains("not a file name"), "{message}"),
        other => panic!("{other}"),
    }
}

fn index_of(dir: &Path) -> PathBuf {
    dir.join("unet/diffusion_pytorch_model.safetensors.index.json")
}

/// The tiny model's `vocab.json` and `merges.txt` written as a `tokenizer.json` the way the
/// tokenizers library does (merges as pairs), the two files removed.
fn tokenizer_json_only(dir: &Path) {
    let tok = dir.join("tokenizer");
    let vocab: serde_json::Value = common::read_json(&tok.join("vocab.json"));
    let merges: Vec<serde_json::Value> = std::fs::read_to_string(tok.join("merges.txt"))
        .unwrap()
        .lines()
        .filter(|l| !l.starts_with("#version") && !l.is_empty())
        .map(|l| {
            let (a, b) = l.split_once(' ').unwrap();
            json!([a, b])
        })
        .collect();
    let json = json!({
        "version": "1.0",
        "added_tokens": [],
        "model": {"type": "BPE", "dropout": null, "unk_token": "<|endoftext|>",
                  "continuing_subword_prefix": "", "end_of_word_suffix": "</w>",
                  "fuse_unk": false, "byte_fallback": false, "ignore_merges": false,
                  "vocab": vocab, "merges": merges},
    });
    std::fs::write(tok.join("tokenizer.json"), json.to_string()).unwrap();
    std::fs::remove_file(tok.join("vocab.json")).unwrap();
    std::fs::remove_file(tok.join("merges.txt")).unwrap();
}

#[test]
fn a_tokenizer_json_alone_tokenizes_as_vocab_and_merges_do() {
    let (_root, dir) = fresh_tiny();
    let reference = ClipTokenizer::from_dir(&dir.join("tokenizer")).unwrap();
    let before = image(&dir);
    tokenizer_json_only(&dir);
    let from_json = ClipTokenizer::from_dir(&dir.join("tokenizer")).unwrap();
    for prompt in [
        "An oil painting of a salad",
        "a photograph of an astronaut riding a horse, 4k, trending on artstation",
        "Ünïcödé, emoji 🥗 and  double  spaces",
        "don't stop! it's 3.14159 o'clock",
        "",
    ] {
        assert_eq!(
            from_json.encode(prompt).ids,
            reference.encode(prompt).ids,
            "{prompt:?}"
        );
    }
    assert_eq!(image(&dir), before);
    let summary = sie_engine::ModelFiles::open(&dir).unwrap().summary();
    assert_eq!(summary["tokenizer"], "tokenizer.json");

    // Another kind of model is refused naming the field.
    let path = dir.join("tokenizer/tokenizer.json");
    let mut v = common::read_json(&path);
    v["model"]["type"] = json!("WordPiece");
    std::fs::write(&path, v.to_string()).unwrap();
    match ClipTokenizer::from_dir(&dir.join("tokenizer")).unwrap_err() {
        Error::Config { path: p, field, .. } => {
            assert_eq!((p, field.as_str()), (path, "model.type"));
        }
        other => panic!("{other}"),
    }
}

/// `tests/fixtures/layouts/resaved` is the tiny model as diffusers 0.42 and transformers 5
/// `save_pretrained` it (`tools/parity/make_layout_fixtures.py`): its configs, the shards'
/// indexes and the `tokenizer.json`-only tokenizer exactly as they wrote them. The shards
/// themselves are rebuilt here from the tiny model by the indexes, each checked against the
/// hash the script took of the shard diffusers wrote.
#[test]
fn a_pipeline_resaved_by_diffusers_generates_what_diffusers_does() {
    let fixtures = common::fixtures("layouts");
    let tiny = common::tiny_model_dir("epsilon");
    let meta = common::read_json(&fixtures.join("resaved-model.json"));
    for (file, want) in meta["sha256"].as_object().unwrap() {
        let got = format!(
            "{:x}",
            <sha2::Sha256 as sha2::Digest>::digest(std::fs::read(tiny.join(file)).unwrap())
        );
        assert_eq!(
            &got,
            want.as_str().unwrap(),
            "{file}: regenerate the fixtures"
        );
    }
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("resaved");
    copy_fixture_dir(&fixtures.join("resaved"), &dir);

    let shards = common::read_json(&fixtures.join("resaved/shards.json"));
    for (shard, entry) in shards.as_object().unwrap() {
        let component = shard.split('/').next().unwrap();
        let file = if component == "text_encoder" {
            "model.safetensors"
        } else {
            "diffusion_pytorch_model.safetensors"
        };
        let source = common::load_tensors(&tiny.join(component).join(file));
        let mut tensors = HashMap::new();
        for t in entry["tensors"].as_array().unwrap() {
            let name = t[0].as_str().unwrap();
            let from = source
                .get(name)
                .or_else(|| source.get(&format!("text_model.{name}")))
                .unwrap_or_else(|| panic!("{shard}: {name} is not in the tiny model"));
            tensors.insert(name.to_owned(), from.clone());
        }
        assert_eq!(
            common::original::content_hash(&tensors),
            entry["content_sha256"].as_str().unwrap(),
            "{shard}"
        );
        sie_engine::candle_core::safetensors::save(&tensors, dir.join(shard)).unwrap();
    }

    let files = sie_engine::ModelFiles::open(&dir).unwrap();
    let summary = files.summary();
    assert_eq!(summary["tokenizer"], "tokenizer.json");
    assert!(
        summary["unet_parameters"].contains("37 shards listed in"),
        "{summary:?}"
    );
    let model = StableDiffusion::load(&dir, &LoadOptions::default()).unwrap();

    let text = common::load_tensors(&fixtures.join("resaved-text.safetensors"));
    let ids = |name: &str| -> Vec<u32> {
        text[name]
            .to_vec1::<i64>()
            .unwrap()
            .into_iter()
            .map(|i| i as u32)
            .collect()
    };
    let run = common::read_json(&fixtures.join("resaved.json"));
    let request = common::fixture_request(&model, &run["request"]);
    let mut recorder = common::Recorder::default();
    let generated = request
        .run(&model, &mut recorder, &AtomicBool::new(false))
        .unwrap();
    let (prompt, negative) = recorder.tokens.clone().unwrap();
    assert_eq!(prompt, ids("prompt_ids"));
    assert_eq!(negative, ids("negative_prompt_ids"));
    let want = common::load_tensors(&fixtures.join("resaved.safetensors"));
    let steps = run["steps_recorded"].as_u64().unwrap() as usize;
    common::assert_matches_fixture("resaved", &recorder, &generated, &want, steps, 1e-4);
}

/// Copies a fixture directory, un-gzipping `*.gz` files and leaving out `shards.json`.
fn copy_fixture_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_str().unwrap().to_owned();
        if path.is_dir() {
            copy_fixture_dir(&path, &to.join(&name));
        } else if let Some(stem) = name.strip_suffix(".gz") {
            let mut text = Vec::new();
            std::io::Read::read_to_end(
                &mut flate2::read::GzDecoder::new(std::fs::File::open(&path).unwrap()),
                &mut text,
            )
            .unwrap();
            std::fs::write(to.join(stem), text).unwrap();
        } else if name != "shards.json" {
            std::fs::copy(&path, to.join(&name)).unwrap();
        }
    }
}
