//! Writes a tiny random-weight model with SD 2.1's architecture.
//!
//! No weights can be downloaded where this project is built and tested, so
//! tests and demos run on a model we make: SD 2.1's exact structure (four UNet
//! levels, three with cross-attention, linear projections; a four-level VAE,
//! so latents are 1/8 of the image; a GELU CLIP text encoder; the real 49408-token
//! CLIP vocabulary padded with `!`; SD 2.1's scheduler config) at tiny widths.
//! diffusers loads the directory unchanged (`tools/parity/check_tiny_model.py`).
//!
//! The weight names come from building our own networks on the random-weight builder
//! (`random.rs`): whatever tensor the loader asks for is made up and its name and shape
//! noted, so the file has exactly the tensors the loader reads. Values are a function of
//! the user's seed and the tensor's name, so the same seed writes the same bytes whatever
//! order the networks ask in.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device};
use candle_nn::VarBuilder;
use serde_json::{json, Value};

use crate::error::{Error, Result};
use crate::loader::json::FromJson;
use crate::loader::original::sd2_scheduler_config;
use crate::networks::{ClipTextConfig, ClipTextEncoder, UNet, UNetConfig, Vae, VaeConfig};
use crate::random::{self, RandomWeights, Values};
use crate::scheduler::PredictionType;
use crate::tokenizer;

/// What to write.
#[derive(Debug, Clone, Copy)]
pub struct TinyOptions {
    /// `VPrediction` writes a 2-1-like model (DDIM, upcast attention); `Epsilon` a 2-1-base-like one (PNDM).
    pub prediction_type: PredictionType,
    pub seed: u64,
    /// A 9-channel inpainting UNet (stable-diffusion-2-inpainting's layout: the latents, the
    /// mask and the masked image's latents), saved as a `StableDiffusionInpaintPipeline`.
    pub inpainting: bool,
}

impl Default for TinyOptions {
    fn default() -> Self {
        TinyOptions {
            prediction_type: PredictionType::Epsilon,
            seed: 0,
            inpainting: false,
        }
    }
}

/// The tiny text encoder's width; the UNet's cross-attention must match it.
const TEXT_WIDTH: usize = 32;

/// SD's VAE latent channels (the UNet's output, and its input without inpainting).
const LATENT_CHANNELS: usize = 4;

/// Writes the whole model directory into `out` (created if needed; existing files are replaced).
pub fn write_tiny_model(out: &Path, options: TinyOptions) -> Result<()> {
    let v_prediction = options.prediction_type == PredictionType::VPrediction;
    let scheduler = sd2_scheduler_config(options.prediction_type);
    let (pipeline_class, unet_in_channels) = if options.inpainting {
        ("StableDiffusionInpaintPipeline", 2 * LATENT_CHANNELS + 1)
    } else {
        ("StableDiffusionPipeline", LATENT_CHANNELS)
    };
    write_json(
        &out.join("model_index.json"),
        &json!({
            "_class_name": pipeline_class,
            "_diffusers_version": "0.42.1",
            "feature_extractor": [null, null],
            "requires_safety_checker": false,
            "safety_checker": [null, null],
            "scheduler": ["diffusers", scheduler["_class_name"]],
            "text_encoder": ["transformers", "CLIPTextModel"],
            "tokenizer": ["transformers", "CLIPTokenizer"],
            "unet": ["diffusers", "UNet2DConditionModel"],
            "vae": ["diffusers", "AutoencoderKL"],
        }),
    )?;
    // SD 2.1's published scheduler config (2-1: DDIM + v_prediction; 2-1-base: PNDM + epsilon).
    write_json(&out.join("scheduler/scheduler_config.json"), &scheduler)?;
    write_sd2_tokenizer(&out.join("tokenizer"))?;

    let text_path = out.join("text_encoder/config.json");
    write_json(
        &text_path,
        &json!({
            "architectures": ["CLIPTextModel"],
            "model_type": "clip_text_model",
            "attention_dropout": 0.0,
            "bos_token_id": 0,
            "dropout": 0.0,
            "eos_token_id": 2,
            "hidden_act": "gelu",
            "hidden_size": TEXT_WIDTH,
            "initializer_factor": 1.0,
            "initializer_range": 0.02,
            "intermediate_size": 2 * TEXT_WIDTH,
            "layer_norm_eps": 1e-05,
            "max_position_embeddings": 77,
            "num_attention_heads": 4,
            "num_hidden_layers": 2,
            "pad_token_id": 1,
            "projection_dim": TEXT_WIDTH,
            "torch_dtype": "float32",
            "vocab_size": 49408,
        }),
    )?;
    let unet_path = out.join("unet/config.json");
    write_json(
        &unet_path,
        &json!({
            "_class_name": "UNet2DConditionModel",
            "_diffusers_version": "0.42.1",
            "act_fn": "silu",
            "attention_head_dim": [2, 2, 4, 4],
            "block_out_channels": [32, 32, 64, 64],
            "center_input_sample": false,
            "cross_attention_dim": TEXT_WIDTH,
            "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
            "downsample_padding": 1,
            "dual_cross_attention": false,
            "flip_sin_to_cos": true,
            "freq_shift": 0,
            "in_channels": unet_in_channels,
            "layers_per_block": 1,
            "mid_block_scale_factor": 1,
            "norm_eps": 1e-05,
            "norm_num_groups": 8,
            "num_class_embeds": null,
            "only_cross_attention": false,
            "out_channels": LATENT_CHANNELS,
            "sample_size": 64,
            "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
            "upcast_attention": v_prediction,
            "use_linear_projection": true,
        }),
    )?;
    let vae_path = out.join("vae/config.json");
    write_json(
        &vae_path,
        &json!({
            "_class_name": "AutoencoderKL",
            "_diffusers_version": "0.42.1",
            "act_fn": "silu",
            "block_out_channels": [16, 16, 32, 32],
            "down_block_types": ["DownEncoderBlock2D", "DownEncoderBlock2D", "DownEncoderBlock2D", "DownEncoderBlock2D"],
            "in_channels": 3,
            "latent_channels": LATENT_CHANNELS,
            "layers_per_block": 1,
            "norm_num_groups": 8,
            "out_channels": 3,
            "sample_size": 512,
            "scaling_factor": 0.18215,
            "up_block_types": ["UpDecoderBlock2D", "UpDecoderBlock2D", "UpDecoderBlock2D", "UpDecoderBlock2D"],
        }),
    )?;

    // Build each network from its config on a recording backend, then save what it asked for.
    let seed = options.seed;
    let text = ClipTextConfig::load(&text_path)?;
    let unet = UNetConfig::load(&unet_path)?;
    let vae = VaeConfig::load(&vae_path)?;
    type Build<'a> = Box<dyn FnOnce(VarBuilder) -> candle_core::Result<()> + 'a>;
    let networks: [(&str, Build); 3] = [
        (
            "text_encoder/model.safetensors",
            Box::new(|vb| ClipTextEncoder::new(vb.pp("text_model"), &text).map(drop)),
        ),
        (
            "unet/diffusion_pytorch_model.safetensors",
            Box::new(|vb| UNet::new(vb, &unet).map(drop)),
        ),
        (
            "vae/diffusion_pytorch_model.safetensors",
            Box::new(|vb| Vae::new(vb, &vae).map(drop)),
        ),
    ];
    for (file, build) in networks {
        save_weights(&out.join(file), seed, build, &[])?;
    }
    Ok(())
}

/// What the tiny safety checker looks like.
#[derive(Debug, Clone, Copy)]
pub struct TinyCheckerOptions {
    /// Every concept and special-care threshold. Cosine similarities lie in [-1, 1], so -1 flags
    /// every image and 1 none.
    pub threshold: f32,
    pub seed: u64,
}

impl Default for TinyCheckerOptions {
    fn default() -> Self {
        TinyCheckerOptions {
            threshold: 0.0,
            seed: 0,
        }
    }
}

/// The tiny checker's vision tower: ViT-L/14's structure (patch 14, QuickGELU) at width 32 on
/// 56-pixel images (4x4 patches), so a check costs nothing and its fixtures stay small.
const CHECKER_WIDTH: usize = 32;
const CHECKER_IMAGE_SIZE: usize = 56;

/// Adds a tiny `StableDiffusionSafetyChecker` to the model directory `out` (written by
/// [`write_tiny_model`]): `safety_checker/` (a CLIPConfig and random weights of the real
/// checker's architecture), `feature_extractor/preprocessor_config.json` (CLIPImageProcessor
/// at the tiny image size), and both named in `model_index.json` as a diffusers pipeline
/// directory names them. diffusers loads it (`tools/parity/check_tiny_model.py`).
pub fn write_tiny_safety_checker(out: &Path, options: TinyCheckerOptions) -> Result<()> {
    let index_path = out.join("model_index.json");
    let text = std::fs::read_to_string(&index_path).map_err(|e| io_error(&index_path, e))?;
    let mut index: Value = serde_json::from_str(&text).map_err(|e| Error::File {
        path: index_path.clone(),
        message: format!("not valid JSON: {e}"),
    })?;
    let Some(map) = index.as_object_mut() else {
        return Err(Error::File {
            path: index_path,
            message: "expected a JSON object".into(),
        });
    };
    map.insert(
        "safety_checker".into(),
        json!(["stable_diffusion", "StableDiffusionSafetyChecker"]),
    );
    map.insert(
        "feature_extractor".into(),
        json!(["transformers", "CLIPImageProcessor"]),
    );
    map.insert("requires_safety_checker".into(), json!(true));
    write_json(&index_path, &index)?;

    write_json(
        &out.join("feature_extractor/preprocessor_config.json"),
        &json!({
            "crop_size": {"height": CHECKER_IMAGE_SIZE, "width": CHECKER_IMAGE_SIZE},
            "do_center_crop": true,
            "do_convert_rgb": true,
            "do_normalize": true,
            "do_rescale": true,
            "do_resize": true,
            "image_mean": [0.48145466, 0.4578275, 0.40821073],
            "image_processor_type": "CLIPImageProcessor",
            "image_std": [0.26862954, 0.26130258, 0.27577711],
            "resample": 3,
            "rescale_factor": 0.00392156862745098,
            "size": {"shortest_edge": CHECKER_IMAGE_SIZE},
        }),
    )?;
    let config_path = out.join("safety_checker/config.json");
    write_json(
        &config_path,
        &json!({
            "architectures": ["StableDiffusionSafetyChecker"],
            "model_type": "clip",
            "initializer_factor": 1.0,
            "logit_scale_init_value": 2.6592,
            "projection_dim": CHECKER_WIDTH,
            "torch_dtype": "float32",
            // The checker has no text tower; CLIPConfig still wants a text_config.
            "text_config": {
                "model_type": "clip_text_model",
                "hidden_act": "quick_gelu",
                "hidden_size": CHECKER_WIDTH,
                "intermediate_size": 2 * CHECKER_WIDTH,
                "num_attention_heads": 4,
                "num_hidden_layers": 1,
                "max_position_embeddings": 77,
                "vocab_size": 49408,
                "bos_token_id": 49406,
                "eos_token_id": 49407,
                "pad_token_id": 1,
            },
            "vision_config": {
                "model_type": "clip_vision_model",
                "hidden_act": "quick_gelu",
                "hidden_size": CHECKER_WIDTH,
                "image_size": CHECKER_IMAGE_SIZE,
                "intermediate_size": 2 * CHECKER_WIDTH,
                "layer_norm_eps": 1e-05,
                "num_attention_heads": 4,
                "num_channels": 3,
                "num_hidden_layers": 2,
                "patch_size": 14,
                "projection_dim": CHECKER_WIDTH,
            },
        }),
    )?;
    let config = crate::safety::SafetyCheckerConfig::load(&config_path)?;
    let t = options.threshold;
    save_weights(
        &out.join("safety_checker/model.safetensors"),
        options.seed,
        |vb| crate::safety::build(vb, &config).map(drop),
        &[
            ("concept_embeds_weights", t),
            ("special_care_embeds_weights", t),
        ],
    )
}

pub(crate) fn io_error(path: &Path, e: impl std::fmt::Display) -> Error {
    Error::File {
        path: path.to_owned(),
        message: format!("cannot write: {e}"),
    }
}

pub(crate) fn write_text(path: &Path, text: &str) -> Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| io_error(dir, e))?;
    }
    std::fs::write(path, text).map_err(|e| io_error(path, e))
}

/// SD 2.1's tokenizer folder as stabilityai publishes it: `vocab.json`, `merges.txt` and its
/// two config files.
pub(crate) fn write_sd2_tokenizer(dir: &Path) -> Result<()> {
    let (vocab, merges) = tokenizer::clip_vocabulary_files();
    write_text(&dir.join("vocab.json"), &vocab)?;
    write_text(&dir.join("merges.txt"), &merges)?;
    for (name, text) in tokenizer::sd2_tokenizer_config_files() {
        write_text(&dir.join(name), &text)?;
    }
    Ok(())
}

pub(crate) fn write_json(path: &Path, value: &Value) -> Result<()> {
    let text = serde_json::to_string_pretty(value).map_err(|e| io_error(path, e))?;
    write_text(path, &(text + "\n"))
}

/// Runs `build` on seeded random weights and saves every tensor it asked for, in f32,
/// with the `{"format": "pt"}` metadata transformers and diffusers expect; the tensors
/// named in `fill` hold one value each instead of random ones.
fn save_weights(
    path: &Path,
    seed: u64,
    build: impl FnOnce(VarBuilder) -> candle_core::Result<()>,
    fill: &[(&str, f32)],
) -> Result<()> {
    let weights = RandomWeights::new(Values::Seeded(seed));
    weights.build(DType::F32, &Device::Cpu, build)?;
    let data: Vec<(String, Vec<u8>, Vec<usize>)> = weights
        .into_shapes()
        .into_iter()
        .map(|(name, shape)| {
            let values = match fill.iter().find(|(filled, _)| *filled == name) {
                Some(&(_, value)) => vec![value; shape.elem_count()],
                None => random::seeded(seed, &name, shape.dims()),
            };
            let bytes = values.iter().flat_map(|v| v.to_le_bytes()).collect();
            (name, bytes, shape.dims().to_vec())
        })
        .collect();
    let views = data
        .iter()
        .map(|(name, bytes, shape)| {
            safetensors::tensor::TensorView::new(safetensors::Dtype::F32, shape.clone(), bytes)
                .map(|view| (name.clone(), view))
        })
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| io_error(path, e))?;
    let metadata = Some(HashMap::from([("format".to_owned(), "pt".to_owned())]));
    let bytes = safetensors::tensor::serialize(views, metadata).map_err(|e| io_error(path, e))?;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| io_error(dir, e))?;
    }
    std::fs::write(path, bytes).map_err(|e| io_error(path, e))
}
