//! A single-file checkpoint in the original Stable Diffusion 2.x layout (what the authors'
//! repository, A1111 and ComfyUI save, and diffusers reads with `from_single_file`), opened as
//! a [`ModelFiles`] whose weights are read through a renaming (`names.rs`).
//!
//! Only `.safetensors` is read: a pickled `.ckpt` can run code when unpickled, so it is
//! refused with the one-line conversion. The file says the architecture through its tensors'
//! shapes, which is all that is inferred here (levels, widths, resnets per level, attention
//! placement, projections, context width, text encoder depth); what the shapes cannot say
//! comes from SD 2.x's own fixed choices (64-channel attention heads, 32 normalisation
//! groups, the OpenCLIP tokenizer), from a diffusers directory given with `--config` (whose
//! configs, scheduler and tokenizer then win, as in diffusers), and, for the prediction
//! type, from `--prediction-type`: SD 2.1 (v-prediction) and 2.1-base (epsilon) have the
//! same tensors, so without one of those two the file is refused rather than guessed at.
//! Checkpoints of other families (SD 1.x's CLIP ViT-L text encoder, SDXL's conditioner) are
//! recognised by their tensor names and refused as such.

pub(crate) mod convert;
pub(crate) mod names;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use candle_core::safetensors::MmapedSafetensors;
use serde_json::{json, Value};

use super::json::FromJson;
use super::weights::WeightsFile;
use crate::error::{Error, Result};
use crate::networks::{ClipTextConfig, UNetConfig, VaeConfig};
use crate::scheduler::{PredictionType, SchedulerConfig};
use names::{Network, TEXT_PREFIX, UNET_PREFIX, VAE_PREFIX};

/// What a single file cannot say about itself; both optional, each needed only where the
/// file leaves a question open.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SingleFileOptions {
    /// What the UNet predicts (SD 2.1: v-prediction; 2.1-base: epsilon).
    pub prediction_type: Option<PredictionType>,
    /// A diffusers-layout directory whose configs, scheduler and tokenizer describe the file
    /// (diffusers' `from_single_file(config=...)`); its weights are not read.
    pub config: Option<PathBuf>,
}

/// SD 2.x's attention heads are 64 channels wide (`num_head_channels: 64` in the original
/// configs), in the UNet and in OpenCLIP's text transformer alike.
const HEAD_CHANNELS: usize = 64;
/// OpenCLIP ViT-H's text transformer, whose penultimate layer SD 2.x reads.
const OPENCLIP_LAYERS: usize = 24;
/// SD 2.x normalises in 32 groups everywhere.
const NORM_GROUPS: usize = 32;

/// The original-layout checkpoint's header: every tensor's name and shape.
pub(crate) struct Header {
    path: PathBuf,
    file: Arc<MmapedSafetensors>,
    shapes: BTreeMap<String, (Vec<usize>, safetensors::Dtype)>,
}

impl Header {
    /// Maps `path` and reads its table of tensors, refusing what is not a safetensors file.
    pub(crate) fn open(path: &Path) -> Result<Self> {
        let extension = path
            .extension()
            .and_then(|e| e.to_str())
            .unwrap_or("")
            .to_ascii_lowercase();
        if matches!(extension.as_str(), "ckpt" | "pt" | "pth" | "bin" | "pkl") {
            return Err(Error::File {
                path: path.to_owned(),
                message: format!(
                    "a pickled PyTorch checkpoint (.{extension}) is not read: unpickling can run \
                     arbitrary code. Convert it to safetensors once, where you trust it: \
                     python -c \"import torch, safetensors.torch as s; \
                     sd = torch.load('{name}', map_location='cpu', weights_only=True); \
                     sd = sd.get('state_dict', sd); \
                     s.save_file({{k: v.contiguous() for k, v in sd.items() if hasattr(v, 'contiguous')}}, \
                     '{stem}.safetensors')\"",
                    name = path.display(),
                    stem = path.with_extension("").display(),
                ),
            });
        }
        // SAFETY: read-only mapping; a checkpoint changed underneath a running server is an
        // operator error we cannot guard (as for every weights file, `weights.rs`).
        let file = unsafe { MmapedSafetensors::new(path) }.map_err(|e| Error::File {
            path: path.to_owned(),
            message: format!(
                "not a readable safetensors file (truncated, or not safetensors?): {e}"
            ),
        })?;
        let shapes = file
            .tensors()
            .into_iter()
            .map(|(name, view)| (name, (view.shape().to_vec(), view.dtype())))
            .collect();
        Ok(Header {
            path: path.to_owned(),
            file: Arc::new(file),
            shapes,
        })
    }

    fn shape(&self, name: &str) -> Result<&[usize]> {
        self.shapes
            .get(name)
            .map(|(s, _)| s.as_slice())
            .ok_or_else(|| self.error(format!("has no tensor `{name}`, which SD 2.x's layout has")))
    }

    /// Dimension `dim` of `name`, which must have `rank` dimensions.
    fn dim(&self, name: &str, rank: usize, dim: usize) -> Result<usize> {
        let shape = self.shape(name)?;
        if shape.len() != rank {
            return Err(self.error(format!(
                "`{name}` has shape {shape:?}; SD 2.x's has {rank} dimensions"
            )));
        }
        Ok(shape[dim])
    }

    fn has(&self, name: &str) -> bool {
        self.shapes.contains_key(name)
    }

    fn has_prefix(&self, prefix: &str) -> bool {
        self.shapes
            .range(prefix.to_owned()..)
            .next()
            .is_some_and(|(k, _)| k.starts_with(prefix))
    }

    /// How many `{prefix}{i}{suffix}` exist for i = 0, 1, ... (stopping at the first gap).
    fn count(&self, prefix: &str, suffix: &str) -> usize {
        (0..)
            .take_while(|i| self.has(&format!("{prefix}{i}{suffix}")))
            .count()
    }

    fn error(&self, message: impl Into<String>) -> Error {
        Error::File {
            path: self.path.clone(),
            message: message.into(),
        }
    }

    /// Refuses checkpoints of other model families, named by what gives them away, and
    /// files missing one of SD's three networks.
    fn check_family(&self) -> Result<()> {
        const EXPECTED: &str = "expected SD 2.x's original layout: `model.diffusion_model.*` \
                                (UNet), `first_stage_model.*` (VAE) and `cond_stage_model.model.*` \
                                (OpenCLIP ViT-H text encoder)";
        if self.has_prefix("conditioner.embedders.") {
            return Err(self.error(format!(
                "an SDXL checkpoint (it has `conditioner.embedders.*`, SDXL's two text encoders); \
                 sie runs Stable Diffusion 2.x: {EXPECTED}"
            )));
        }
        if self.has_prefix("cond_stage_model.transformer.") {
            return Err(self.error(format!(
                "an SD 1.x checkpoint (it has `cond_stage_model.transformer.*`, the CLIP ViT-L/14 \
                 text encoder of SD 1.x); sie runs Stable Diffusion 2.x: {EXPECTED}"
            )));
        }
        if self.has_prefix(&format!("{UNET_PREFIX}label_emb.")) {
            return Err(self.error(format!(
                "its UNet has `label_emb` (class or size conditioning, as SDXL, unCLIP and the \
                 upscaler have); sie runs Stable Diffusion 2.x: {EXPECTED}"
            )));
        }
        if self.has_prefix("unet.") || self.has_prefix("down_blocks.") {
            return Err(self.error(
                "holds diffusers-named tensors; a diffusers model is a directory (model_index.json, \
                 unet/, vae/, ...): give the directory instead of one file",
            ));
        }
        for (prefix, what) in [
            (UNET_PREFIX, "the UNet"),
            (VAE_PREFIX, "the VAE"),
            (TEXT_PREFIX, "the OpenCLIP text encoder"),
        ] {
            if !self.has_prefix(prefix) {
                return Err(self.error(format!(
                    "has no `{prefix}*` tensors ({what}): not a whole Stable Diffusion 2.x \
                     checkpoint; {EXPECTED}"
                )));
            }
        }
        Ok(())
    }

    /// The dtype of a network's tensors and how many parameters it has (the text encoder's
    /// unused last layer included, as the file holds it).
    fn census(&self, prefix: &str) -> Result<(candle_core::DType, usize)> {
        // The dtype most of the parameters have (what `check` reports and the default the
        // networks are built in); `convert` keeps each tensor's own.
        let mut by_dtype: Vec<(safetensors::Dtype, usize)> = Vec::new();
        let mut parameters = 0;
        for (name, (shape, dt)) in self.shapes.range(prefix.to_owned()..) {
            if !name.starts_with(prefix) {
                break;
            }
            let n = shape.iter().product::<usize>();
            parameters += n;
            match by_dtype.iter_mut().find(|(d, _)| d == dt) {
                Some((_, count)) => *count += n,
                None => by_dtype.push((*dt, n)),
            }
        }
        let dtype = by_dtype.iter().max_by_key(|(_, n)| *n).map(|(d, _)| *d);
        let dtype = match dtype {
            Some(safetensors::Dtype::F32) => candle_core::DType::F32,
            Some(safetensors::Dtype::F16) => candle_core::DType::F16,
            Some(safetensors::Dtype::BF16) => candle_core::DType::BF16,
            other => {
                return Err(self.error(format!(
                    "`{prefix}*` weights of type {other:?}; accepted: F32, F16, BF16"
                )))
            }
        };
        Ok((dtype, parameters))
    }
}

/// The three networks' configs as diffusers writes them (inferred from the shapes, or
/// `--config`'s): what `sie model convert` writes.
#[derive(Debug, Clone)]
pub(crate) struct Configs {
    pub(crate) unet: Value,
    pub(crate) vae: Value,
    pub(crate) text_encoder: Value,
}

/// The UNet's config from its tensors, for `prediction` (which sets the native size and
/// whether attention is upcast, as SD 2.1 and 2.1-base differ only there).
fn infer_unet(h: &Header, prediction: Option<PredictionType>) -> Result<(Value, String)> {
    let u = UNET_PREFIX;
    let input = |i: usize, rest: &str| format!("{u}input_blocks.{i}.{rest}");
    let in_channels = h.dim(&input(0, "0.weight"), 4, 1)?;
    // Level i's resnets are input blocks 1 + i*(L+1) .. L + i*(L+1), then its downsampler.
    let first_down = (1..64)
        .find(|&i| h.has(&input(i, "0.op.weight")))
        .ok_or_else(|| {
            h.error(format!(
                "has no downsampler (`{u}input_blocks.N.0.op.weight`)"
            ))
        })?;
    let layers = first_down - 1;
    let input_blocks = (0..).take_while(|&i| h.has_prefix(&input(i, ""))).count();
    if layers == 0 || input_blocks % (layers + 1) != 0 {
        return Err(h.error(format!(
            "its UNet has {input_blocks} input blocks and the first downsampler at block \
             {first_down}: not SD 2.x's layout of levels"
        )));
    }
    let levels = input_blocks / (layers + 1);
    let mut widths = Vec::with_capacity(levels);
    let mut attention = Vec::with_capacity(levels);
    for level in 0..levels {
        let first = 1 + level * (layers + 1);
        widths.push(h.dim(&input(first, "0.out_layers.3.weight"), 4, 0)?);
        attention.push(h.has(&input(first, "1.proj_in.weight")));
    }
    let Some(first_attention) = attention.iter().position(|&a| a) else {
        return Err(h.error("its UNet has no attention: not SD 2.x"));
    };
    let attn = input(1 + first_attention * (layers + 1), "1.");
    let linear_projection = h.shape(&format!("{attn}proj_in.weight"))?.len() == 2;
    let context = h.dim(
        &format!("{attn}transformer_blocks.0.attn2.to_k.weight"),
        2,
        1,
    )?;
    let transformer_layers = h.count(&format!("{attn}transformer_blocks."), ".norm1.weight");
    let mut heads = Vec::with_capacity(levels);
    for &w in &widths {
        if w % HEAD_CHANNELS != 0 {
            return Err(h.error(format!(
                "a UNet level of {w} channels cannot have SD 2.x's {HEAD_CHANNELS}-channel heads; \
                 give the model's diffusers configs with --config DIR"
            )));
        }
        heads.push(w / HEAD_CHANNELS);
    }
    let out_channels = h.dim(&format!("{u}out.2.weight"), 4, 0)?;
    let v = prediction == Some(PredictionType::VPrediction);
    let down: Vec<&str> = attention
        .iter()
        .map(|&a| {
            if a {
                "CrossAttnDownBlock2D"
            } else {
                "DownBlock2D"
            }
        })
        .collect();
    let up: Vec<&str> = attention
        .iter()
        .rev()
        .map(|&a| if a { "CrossAttnUpBlock2D" } else { "UpBlock2D" })
        .collect();
    let config = json!({
        "_class_name": "UNet2DConditionModel",
        "act_fn": "silu",
        "attention_head_dim": heads,
        "block_out_channels": widths,
        "center_input_sample": false,
        "cross_attention_dim": context,
        "down_block_types": down,
        "downsample_padding": 1,
        "dual_cross_attention": false,
        "flip_sin_to_cos": true,
        "freq_shift": 0,
        "in_channels": in_channels,
        "layers_per_block": layers,
        "mid_block_scale_factor": 1,
        "norm_eps": 1e-05,
        "norm_num_groups": NORM_GROUPS,
        "num_class_embeds": null,
        "only_cross_attention": false,
        "out_channels": out_channels,
        "sample_size": if v { 96 } else { 64 },
        "transformer_layers_per_block": transformer_layers,
        "up_block_types": up,
        "upcast_attention": v,
        "use_linear_projection": linear_projection,
    });
    let report = format!(
        "{levels} levels of {widths:?} channels, {layers} resnets each, attention on levels \
         {:?} ({heads:?} heads of {HEAD_CHANNELS}), {} projections, context {context}, \
         {in_channels} input channels{}",
        (0..levels).filter(|&l| attention[l]).collect::<Vec<_>>(),
        if linear_projection {
            "linear"
        } else {
            "1x1 convolution"
        },
        if in_channels == 9 {
            " (inpainting)"
        } else {
            ""
        },
    );
    Ok((config, report))
}

/// The VAE's config from its tensors; its `sample_size` (only diffusers' tiling reads it) is
/// the native image size, as the published configs have it.
fn infer_vae(h: &Header, prediction: Option<PredictionType>) -> Result<(Value, String)> {
    let v = VAE_PREFIX;
    let levels = h.count(&format!("{v}encoder.down."), ".block.0.conv1.weight");
    if levels < 2 {
        return Err(h.error(format!(
            "its VAE has {levels} levels (`{v}encoder.down.N`); SD's has 4"
        )));
    }
    let widths = (0..levels)
        .map(|i| h.dim(&format!("{v}encoder.down.{i}.block.0.conv2.weight"), 4, 0))
        .collect::<Result<Vec<_>>>()?;
    let layers = h.count(&format!("{v}encoder.down.0.block."), ".conv1.weight");
    let latent = h.dim(&format!("{v}post_quant_conv.weight"), 4, 1)?;
    let config = json!({
        "_class_name": "AutoencoderKL",
        "act_fn": "silu",
        "block_out_channels": widths,
        "down_block_types": vec!["DownEncoderBlock2D"; levels],
        "in_channels": h.dim(&format!("{v}encoder.conv_in.weight"), 4, 1)?,
        "latent_channels": latent,
        "layers_per_block": layers,
        "norm_num_groups": NORM_GROUPS,
        "out_channels": h.dim(&format!("{v}decoder.conv_out.weight"), 4, 0)?,
        "sample_size": if prediction == Some(PredictionType::VPrediction) { 768 } else { 512 },
        "scaling_factor": 0.18215,
        "up_block_types": vec!["UpDecoderBlock2D"; levels],
    });
    let report = format!(
        "{levels} levels of {widths:?} channels, {layers} resnets each, {latent} latent channels"
    );
    Ok((config, report))
}

fn infer_text_encoder(h: &Header) -> Result<(Value, String)> {
    let t = TEXT_PREFIX;
    let embedding = format!("{t}token_embedding.weight");
    let (vocab, hidden) = (h.dim(&embedding, 2, 0)?, h.dim(&embedding, 2, 1)?);
    let positions = h.dim(&format!("{t}positional_embedding"), 2, 0)?;
    let blocks = h.count(&format!("{t}transformer.resblocks."), ".ln_1.weight");
    // SD 2.x encodes prompts with the penultimate layer of OpenCLIP ViT-H (23 of 24). A file
    // that saved the whole OpenCLIP model (24 layers, or any depth with its `text_projection`)
    // holds one layer more than is used; diffusers' converter back to this layout (and the
    // fine-tuning tools built on it) saves only the 23 used and no projection.
    let whole_model = blocks == OPENCLIP_LAYERS || h.has(&format!("{t}text_projection"));
    let layers = if whole_model {
        blocks.saturating_sub(1)
    } else {
        blocks
    };
    if layers == 0 {
        return Err(h.error(format!(
            "its text encoder has {blocks} layers (`{t}transformer.resblocks.N`); SD 2.x uses \
             at least one"
        )));
    }
    let intermediate = h.dim(&format!("{t}transformer.resblocks.0.mlp.c_fc.weight"), 2, 0)?;
    if hidden % HEAD_CHANNELS != 0 {
        return Err(h.error(format!(
            "a text encoder {hidden} wide cannot have SD 2.x's {HEAD_CHANNELS}-channel heads; \
             give the model's diffusers configs with --config DIR"
        )));
    }
    let heads = hidden / HEAD_CHANNELS;
    let config = json!({
        "architectures": ["CLIPTextModel"],
        "attention_dropout": 0.0,
        "bos_token_id": 0,
        "dropout": 0.0,
        "eos_token_id": 2,
        "hidden_act": "gelu",
        "hidden_size": hidden,
        "initializer_factor": 1.0,
        "initializer_range": 0.02,
        "intermediate_size": intermediate,
        "layer_norm_eps": 1e-05,
        "max_position_embeddings": positions,
        "model_type": "clip_text_model",
        "num_attention_heads": heads,
        "num_hidden_layers": layers,
        "pad_token_id": 1,
        "projection_dim": hidden,
        "torch_dtype": "float32",
        "vocab_size": vocab,
    });
    let depth = if whole_model {
        format!("{layers} of its {blocks} layers (SD 2.x skips the last)")
    } else {
        format!("all {layers} of its layers (the unused last one is not in the file)")
    };
    let report = format!(
        "OpenCLIP, {depth}, width {hidden}, {heads} heads, {vocab} tokens, {positions} positions"
    );
    Ok((config, report))
}

/// SD 2.1's published scheduler configs: DDIM with v-prediction for 2.1, PNDM with epsilon for
/// 2.1-base (what `sie model tiny` writes too).
pub(crate) fn sd2_scheduler_config(prediction: PredictionType) -> Value {
    let (class, prediction) = match prediction {
        PredictionType::VPrediction => ("DDIMScheduler", "v_prediction"),
        _ => ("PNDMScheduler", "epsilon"),
    };
    json!({
        "_class_name": class,
        "_diffusers_version": "0.8.0",
        "beta_end": 0.012,
        "beta_schedule": "scaled_linear",
        "beta_start": 0.00085,
        "clip_sample": false,
        "num_train_timesteps": 1000,
        "prediction_type": prediction,
        "set_alpha_to_one": false,
        "skip_prk_steps": true,
        "steps_offset": 1,
        "trained_betas": null,
    })
}

/// Where the tokenizer comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenizerSource {
    /// A diffusers `tokenizer/` folder.
    Dir(PathBuf),
    /// SD 2.x's OpenCLIP tokenizer, built in (a single file holds no tokenizer).
    BuiltInSd2,
}

/// Everything [`ModelFiles`](super::ModelFiles) needs of a single file.
pub(crate) struct Opened {
    pub(crate) pipeline_class: String,
    pub(crate) text_encoder: ClipTextConfig,
    pub(crate) unet: UNetConfig,
    pub(crate) vae: VaeConfig,
    pub(crate) scheduler: SchedulerConfig,
    pub(crate) tokenizer: TokenizerSource,
    pub(crate) weights: [WeightsFile; 3],
    pub(crate) report: Vec<(&'static str, String)>,
    /// The configs as diffusers writes them (inferred, or `--config`'s), for `convert`.
    pub(crate) configs: Configs,
    pub(crate) scheduler_json: Value,
}

/// Opens the single file `path`, inferring or reading what `options` leaves to each.
pub(crate) fn open(path: &Path, options: &SingleFileOptions) -> Result<Opened> {
    let header = Header::open(path)?;
    header.check_family()?;
    let missing_prediction = || {
        header.error(
            "SD 2.1 (v-prediction, 768) and 2.1-base (epsilon, 512) checkpoints have the same \
             tensors, so the file cannot say which it is: give --prediction-type v-prediction or \
             epsilon, or a diffusers directory with --config DIR",
        )
    };
    let mut report = vec![(
        "layout",
        "a single file in the original SD 2.x layout".to_owned(),
    )];
    let (configs, scheduler_json, tokenizer) = match &options.config {
        Some(dir) => {
            let read = |file: &str| -> Result<Value> {
                let path = dir.join(file);
                let text = std::fs::read_to_string(&path).map_err(|e| Error::File {
                    path: path.clone(),
                    message: format!("cannot read this config (from --config): {e}"),
                })?;
                serde_json::from_str(&text).map_err(|e| Error::File {
                    path,
                    message: format!("not valid JSON: {e}"),
                })
            };
            let mut scheduler = read("scheduler/scheduler_config.json")?;
            if let Some(p) = options.prediction_type {
                scheduler["prediction_type"] = json!(prediction_name(p));
            }
            report.push(("configs", format!("from {} (--config)", dir.display())));
            (
                Configs {
                    unet: read("unet/config.json")?,
                    vae: read("vae/config.json")?,
                    text_encoder: read("text_encoder/config.json")?,
                },
                scheduler,
                TokenizerSource::Dir(dir.join("tokenizer")),
            )
        }
        None => {
            let prediction = options.prediction_type;
            let (unet, unet_report) = infer_unet(&header, prediction)?;
            let (vae, vae_report) = infer_vae(&header, prediction)?;
            let (text_encoder, text_report) = infer_text_encoder(&header)?;
            let prediction = prediction.ok_or_else(missing_prediction)?;
            report.push(("unet (inferred)", unet_report));
            report.push(("vae (inferred)", vae_report));
            report.push(("text_encoder (inferred)", text_report));
            report.push((
                "not in the file",
                format!(
                    "prediction type {} (--prediction-type), SD 2.x's {HEAD_CHANNELS}-channel heads \
                     and {NORM_GROUPS} normalisation groups, its built-in OpenCLIP tokenizer and \
                     published {} scheduler",
                    prediction_name(prediction),
                    sd2_scheduler_config(prediction)["_class_name"].as_str().unwrap_or_default()
                ),
            ));
            (
                Configs {
                    unet,
                    vae,
                    text_encoder,
                },
                sd2_scheduler_config(prediction),
                TokenizerSource::BuiltInSd2,
            )
        }
    };
    let label = |what: &str| format!("{} ({what})", path.display());
    let unet = UNetConfig::from_text(&label("its UNet config"), &configs.unet.to_string())?;
    let vae = VaeConfig::from_text(&label("its VAE config"), &configs.vae.to_string())?;
    let text_encoder = ClipTextConfig::from_text(
        &label("its text encoder config"),
        &configs.text_encoder.to_string(),
    )?;
    let scheduler = SchedulerConfig::from_json(
        Path::new(&label("its scheduler config")),
        &scheduler_json.to_string(),
    )?;
    let pipeline_class = if unet.in_channels == 2 * vae.latent_channels + 1 {
        "StableDiffusionInpaintPipeline"
    } else {
        "StableDiffusionPipeline"
    };
    let weights = |prefix: &str, network: Network| -> Result<WeightsFile> {
        let (dtype, parameters) = header.census(prefix)?;
        Ok(WeightsFile::original(
            path,
            dtype,
            parameters,
            header.file.clone(),
            network,
        ))
    };
    let up_attention = unet.cross_attention.iter().rev().copied().collect();
    let weights = [
        weights(TEXT_PREFIX, Network::TextEncoder)?,
        weights(
            UNET_PREFIX,
            Network::UNet {
                layers: unet.layers_per_block,
                up_attention,
            },
        )?,
        weights(
            VAE_PREFIX,
            Network::Vae {
                levels: vae.block_out_channels.len(),
            },
        )?,
    ];
    Ok(Opened {
        pipeline_class: pipeline_class.into(),
        text_encoder,
        unet,
        vae,
        scheduler,
        tokenizer,
        weights,
        report,
        configs,
        scheduler_json,
    })
}

/// diffusers' spelling of a prediction type.
pub(crate) fn prediction_name(p: PredictionType) -> &'static str {
    match p {
        PredictionType::Epsilon => "epsilon",
        PredictionType::VPrediction => "v_prediction",
        PredictionType::Sample => "sample",
    }
}
