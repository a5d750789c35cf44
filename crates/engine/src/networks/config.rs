//! The typed configuration of each network, parsed from its `config.json`.
//!
//! It sits with the networks it shapes, and reads its file through the loader's
//! `JsonConfig` (which imports nothing of the engine but its error type). Every size the
//! engine uses comes from here, never from constants, so the full SD 2.1 checkpoints and
//! the tiny test model load through the same code. Options that would change the
//! architecture in a way SD 2.x never uses are refused with the file and field named,
//! instead of being silently ignored.

use serde_json::{json, Value};

use crate::error::Result;
use crate::loader::json::{FromJson, JsonConfig};

/// A CLIP transformer's `num_attention_heads` must split `hidden_size` evenly.
pub fn check_heads(c: &JsonConfig, heads: usize, hidden: usize) -> Result<()> {
    if heads == 0 || hidden % heads != 0 {
        return Err(c.error(
            "num_attention_heads",
            format!("{heads} does not divide hidden_size {hidden}"),
        ));
    }
    Ok(())
}

/// `text_encoder/config.json` (transformers' `CLIPTextConfig`).
#[derive(Debug, Clone, PartialEq)]
pub struct ClipTextConfig {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub max_position_embeddings: usize,
    pub activation: ClipActivation,
    pub layer_norm_eps: f64,
}

/// The MLP activation of the text encoder: SD 2.x (OpenCLIP) uses GELU, SD 1.x QuickGELU.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClipActivation {
    Gelu,
    QuickGelu,
}

impl ClipActivation {
    /// `hidden_act` of a CLIP text or vision config; transformers' default is QuickGELU.
    pub fn from_config(c: &JsonConfig) -> Result<Self> {
        match c.str_or("hidden_act", "quick_gelu")?.as_str() {
            "gelu" => Ok(ClipActivation::Gelu),
            "quick_gelu" => Ok(ClipActivation::QuickGelu),
            other => Err(c.error(
                "hidden_act",
                format!("\"{other}\" is not supported; accepted: \"gelu\", \"quick_gelu\""),
            )),
        }
    }
}

impl FromJson for ClipTextConfig {
    fn from_config(c: &JsonConfig) -> Result<Self> {
        let activation = ClipActivation::from_config(c)?;
        let config = ClipTextConfig {
            vocab_size: c.usize("vocab_size")?,
            hidden_size: c.usize("hidden_size")?,
            intermediate_size: c.usize("intermediate_size")?,
            num_hidden_layers: c.usize("num_hidden_layers")?,
            num_attention_heads: c.usize("num_attention_heads")?,
            max_position_embeddings: c.usize_or("max_position_embeddings", 77)?,
            activation,
            layer_norm_eps: c.f64_or("layer_norm_eps", 1e-5)?,
        };
        check_heads(c, config.num_attention_heads, config.hidden_size)?;
        Ok(config)
    }
}

/// `unet/config.json` (diffusers' `UNet2DConditionModel`), restricted to the SD 1.x/2.x family.
#[derive(Debug, Clone, PartialEq)]
pub struct UNetConfig {
    pub in_channels: usize,
    pub out_channels: usize,
    /// Width of each level, from the top.
    pub block_out_channels: Vec<usize>,
    /// Whether each down level has cross-attention (its up mirror has it too).
    pub cross_attention: Vec<bool>,
    /// Attention heads of each down level (diffusers' `attention_head_dim`, a misnomer there).
    pub attention_heads: Vec<usize>,
    pub layers_per_block: usize,
    pub transformer_layers_per_block: usize,
    pub cross_attention_dim: usize,
    pub use_linear_projection: bool,
    pub upcast_attention: bool,
    pub norm_num_groups: usize,
    pub norm_eps: f64,
    pub flip_sin_to_cos: bool,
    pub freq_shift: f64,
    pub center_input_sample: bool,
    pub downsample_padding: usize,
    pub mid_block_scale_factor: f64,
    /// Latent size the model was trained at (native image size / VAE scale).
    pub sample_size: usize,
}

/// `block_out_channels` and the down and up block types of a UNet or VAE config: one
/// entry of each per level.
fn levels(c: &JsonConfig) -> Result<(Vec<usize>, Vec<String>, Vec<String>)> {
    let block_out_channels =
        c.usize_list("block_out_channels", list_len(c, "block_out_channels")?)?;
    Ok((
        block_out_channels,
        c.str_list("down_block_types")?,
        c.str_list("up_block_types")?,
    ))
}

/// `norm_num_groups`, which must divide every level's channels.
fn norm_groups(c: &JsonConfig, block_out_channels: &[usize]) -> Result<usize> {
    let groups = c.usize_or("norm_num_groups", 32)?;
    match block_out_channels
        .iter()
        .find(|&&w| groups == 0 || w % groups != 0)
    {
        Some(w) => Err(c.error(
            "norm_num_groups",
            format!("{groups} groups do not divide a level of {w} channels"),
        )),
        None => Ok(groups),
    }
}

impl FromJson for UNetConfig {
    fn from_config(c: &JsonConfig) -> Result<Self> {
        let (block_out_channels, down, up) = levels(c)?;
        let n = block_out_channels.len();
        if down.len() != n || up.len() != n {
            return Err(c.error(
                "down_block_types",
                format!(
                    "{} down and {} up block types for {n} levels in block_out_channels; expected {n} of each",
                    down.len(),
                    up.len()
                ),
            ));
        }
        let mut cross_attention = Vec::with_capacity(n);
        for name in &down {
            cross_attention.push(match name.as_str() {
                "CrossAttnDownBlock2D" => true,
                "DownBlock2D" => false,
                other => {
                    return Err(c.error(
                        "down_block_types",
                        format!("\"{other}\" is not supported; accepted: \"CrossAttnDownBlock2D\", \"DownBlock2D\""),
                    ))
                }
            });
        }
        for (i, name) in up.iter().enumerate() {
            let want = if cross_attention[n - 1 - i] {
                "CrossAttnUpBlock2D"
            } else {
                "UpBlock2D"
            };
            if name != want {
                return Err(c.error(
                    "up_block_types",
                    format!("entry {i} is \"{name}\"; the up path must mirror the down path, so expected \"{want}\""),
                ));
            }
        }
        // diffusers: `num_attention_heads` wins when given, else the misnamed `attention_head_dim`.
        let heads_key = if c.get("num_attention_heads").is_some() {
            "num_attention_heads"
        } else {
            "attention_head_dim"
        };
        let attention_heads = c.usize_list(heads_key, n)?;
        for (i, (&h, &w)) in attention_heads.iter().zip(&block_out_channels).enumerate() {
            if h == 0 || w % h != 0 {
                return Err(c.error(
                    heads_key,
                    format!("{h} heads do not divide the {w} channels of level {i}"),
                ));
            }
        }
        let transformer_layers = c
            .usize_list("transformer_layers_per_block", n)
            .or_else(|_| {
                // Absent means 1 per block, as in every SD 1.x/2.x config.
                if c.get("transformer_layers_per_block").is_none() {
                    Ok(vec![1; n])
                } else {
                    Err(c.error(
                        "transformer_layers_per_block",
                        "expected an integer or a list of integers",
                    ))
                }
            })?;
        if transformer_layers
            .iter()
            .any(|&l| l != transformer_layers[0])
        {
            return Err(c.error(
                "transformer_layers_per_block",
                "different values per level are not supported; use one integer",
            ));
        }
        let norm_num_groups = norm_groups(c, &block_out_channels)?;
        let cross_attention_dim = match c.get("cross_attention_dim") {
            Some(v) if v.is_u64() => v.as_u64().unwrap_or_default() as usize,
            Some(v) => {
                return Err(c.error(
                    "cross_attention_dim",
                    format!("{v} is not supported; expected one integer"),
                ))
            }
            None => 1280,
        };
        c.require(
            "mid_block_type",
            &json!("UNetMidBlock2DCrossAttn"),
            "SD 2.x's mid block",
        )?;
        c.require("act_fn", &json!("silu"), "SD 2.x's activation")?;
        c.require(
            "time_embedding_type",
            &json!("positional"),
            "SD 2.x's time embedding",
        )?;
        c.require(
            "resnet_time_scale_shift",
            &json!("default"),
            "SD 2.x's resnets",
        )?;
        c.require("dual_cross_attention", &json!(false), "SD 2.x has none")?;
        c.require(
            "only_cross_attention",
            &json!(false),
            "SD 2.x has self-attention too",
        )?;
        c.require("conv_in_kernel", &json!(3), "SD 2.x's input convolution")?;
        c.require("conv_out_kernel", &json!(3), "SD 2.x's output convolution")?;
        c.require("attention_type", &json!("default"), "SD 2.x's attention")?;
        c.require("resnet_skip_time_act", &json!(false), "SD 2.x's resnets")?;
        c.require("resnet_out_scale_factor", &json!(1.0), "SD 2.x's resnets")?;
        for absent in [
            "class_embed_type",
            "addition_embed_type",
            "encoder_hid_dim",
            "time_cond_proj_dim",
            "num_class_embeds",
            "projection_class_embeddings_input_dim",
            "cross_attention_norm",
            "time_embedding_act_fn",
            "timestep_post_act",
            "mid_block_only_cross_attention",
            "addition_time_embed_dim",
        ] {
            if let Some(v) = c.get(absent) {
                return Err(c.error(
                    absent,
                    format!("{v} is not supported; SD 2.x leaves it null"),
                ));
            }
        }
        Ok(UNetConfig {
            in_channels: c.usize_or("in_channels", 4)?,
            out_channels: c.usize_or("out_channels", 4)?,
            block_out_channels,
            cross_attention,
            attention_heads,
            layers_per_block: c.usize_or("layers_per_block", 2)?,
            transformer_layers_per_block: transformer_layers[0],
            cross_attention_dim,
            use_linear_projection: c.bool_or("use_linear_projection", false)?,
            upcast_attention: c.bool_or("upcast_attention", false)?,
            norm_num_groups,
            norm_eps: c.f64_or("norm_eps", 1e-5)?,
            flip_sin_to_cos: c.bool_or("flip_sin_to_cos", true)?,
            freq_shift: c.f64_or("freq_shift", 0.0)?,
            center_input_sample: c.bool_or("center_input_sample", false)?,
            downsample_padding: c.usize_or("downsample_padding", 1)?,
            mid_block_scale_factor: c.f64_or("mid_block_scale_factor", 1.0)?,
            sample_size: c.usize_or("sample_size", 64)?,
        })
    }
}

fn list_len(c: &JsonConfig, key: &str) -> Result<usize> {
    match c.get(key) {
        Some(Value::Array(items)) if !items.is_empty() => Ok(items.len()),
        Some(v) => Err(c.error(
            key,
            format!("expected a non-empty list of integers, found {v}"),
        )),
        None => Err(c.error(key, "missing; expected a list of integers")),
    }
}

/// `vae/config.json` (diffusers' `AutoencoderKL`).
#[derive(Debug, Clone, PartialEq)]
pub struct VaeConfig {
    pub in_channels: usize,
    pub out_channels: usize,
    pub block_out_channels: Vec<usize>,
    pub layers_per_block: usize,
    pub latent_channels: usize,
    pub norm_num_groups: usize,
    pub scaling_factor: f64,
    pub use_quant_conv: bool,
    pub use_post_quant_conv: bool,
}

impl FromJson for VaeConfig {
    fn from_config(c: &JsonConfig) -> Result<Self> {
        let (block_out_channels, down, up) = levels(c)?;
        let n = block_out_channels.len();
        if down.len() != n || down.iter().any(|d| d != "DownEncoderBlock2D") {
            return Err(c.error(
                "down_block_types",
                format!("expected {n} entries of \"DownEncoderBlock2D\", found {down:?}"),
            ));
        }
        if up.len() != n || up.iter().any(|d| d != "UpDecoderBlock2D") {
            return Err(c.error(
                "up_block_types",
                format!("expected {n} entries of \"UpDecoderBlock2D\", found {up:?}"),
            ));
        }
        let norm_num_groups = norm_groups(c, &block_out_channels)?;
        c.require("act_fn", &json!("silu"), "SD 2.x's activation")?;
        c.require(
            "mid_block_add_attention",
            &json!(true),
            "SD 2.x's VAE has mid-block attention",
        )?;
        if let Some(v) = c.get("shift_factor") {
            return Err(c.error(
                "shift_factor",
                format!("{v} is not supported; SD 2.x leaves it null"),
            ));
        }
        Ok(VaeConfig {
            in_channels: c.usize_or("in_channels", 3)?,
            out_channels: c.usize_or("out_channels", 3)?,
            block_out_channels,
            layers_per_block: c.usize_or("layers_per_block", 1)?,
            latent_channels: c.usize_or("latent_channels", 4)?,
            norm_num_groups,
            scaling_factor: c.f64_or("scaling_factor", 0.18215)?,
            use_quant_conv: c.bool_or("use_quant_conv", true)?,
            use_post_quant_conv: c.bool_or("use_post_quant_conv", true)?,
        })
    }
}

impl VaeConfig {
    /// How many image pixels one latent covers per side: 2^(levels - 1), 8 for SD.
    pub fn scale_factor(&self) -> usize {
        1 << (self.block_out_channels.len() - 1)
    }
}
