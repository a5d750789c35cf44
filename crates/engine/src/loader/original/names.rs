//! Where each tensor our networks ask for (by its diffusers name) lives in a checkpoint in the
//! original Stable Diffusion 2.x layout, and a `VarBuilder` backend that reads it from there.
//!
//! The networks are written once, against diffusers' names; rather than a second set of
//! networks or a converted copy of the weights in memory, a single file is read through this
//! renaming: every request for `down_blocks.0.attentions.0.proj_in.weight` becomes a read of
//! `model.diffusion_model.input_blocks.1.1.proj_in.weight` in the mapped file. Three tensors
//! change shape on the way, and only by views: the text encoder's fused `in_proj` is cut
//! into its query, key and value thirds, and the VAE's mid-block attention, stored as 1x1
//! convolutions, is read as the linear layers it is. `sie model convert` builds the networks
//! through the same backend and saves what was read, so the one mapping serves both.

use std::sync::Arc;

use candle_core::safetensors::MmapedSafetensors;
use candle_core::{DType, Device, Shape, Tensor};
use candle_nn::var_builder::SimpleBackend;

/// The prefixes of the three networks in an original-layout checkpoint.
pub(crate) const UNET_PREFIX: &str = "model.diffusion_model.";
pub(crate) const VAE_PREFIX: &str = "first_stage_model.";
pub(crate) const TEXT_PREFIX: &str = "cond_stage_model.model.";

/// How one diffusers tensor is read from the original file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Source {
    /// The tensor of this (full) name, as it is.
    Whole(String),
    /// A 1x1 convolution's weight `[out, in, 1, 1]`, read as a linear weight `[out, in]`.
    Pointwise(String),
    /// Third `part` (0 query, 1 key, 2 value) of the rows of a fused projection.
    Third(String, usize),
}

impl Source {
    /// The original tensor's full name.
    pub(crate) fn name(&self) -> &str {
        match self {
            Source::Whole(n) | Source::Pointwise(n) | Source::Third(n, _) => n,
        }
    }
}

/// The naming of one network, and what it needs to know of the architecture.
#[derive(Debug, Clone)]
pub(crate) enum Network {
    /// `layers` resnets per down level (one more per up level); whether each up level
    /// (diffusers' order, deepest first) has attention, which moves its upsampler one slot.
    UNet {
        layers: usize,
        up_attention: Vec<bool>,
    },
    /// The number of levels (the decoder's are numbered deepest last in the original).
    Vae {
        levels: usize,
    },
    TextEncoder,
}

impl Network {
    /// Where the diffusers tensor `name` lives in the original layout, or `None` when the
    /// original layout has no such tensor.
    pub(crate) fn source(&self, name: &str) -> Option<Source> {
        match self {
            Network::UNet {
                layers,
                up_attention,
            } => unet(name, *layers, up_attention)
                .map(|n| Source::Whole(UNET_PREFIX.to_owned() + &n)),
            Network::Vae { levels } => vae(name, *levels),
            Network::TextEncoder => text_encoder(name),
        }
    }
}

/// Splits `name` after its first `depth` dot-separated parts: (`a.b`, `rest`).
fn split_at(name: &str, depth: usize) -> Option<(Vec<&str>, &str)> {
    let mut parts = Vec::with_capacity(depth);
    let mut rest = name;
    for _ in 0..depth {
        let (head, tail) = rest.split_once('.')?;
        parts.push(head);
        rest = tail;
    }
    Some((parts, rest))
}

/// A block or level number in a name.
fn index(part: &str) -> Option<usize> {
    part.parse().ok()
}

/// A resnet's inner names: diffusers' `ResnetBlock2D` to the original `ResBlock`.
fn unet_resnet(rest: &str) -> Option<String> {
    let (layer, tail) = rest.split_once('.')?;
    let original = match layer {
        "norm1" => "in_layers.0",
        "conv1" => "in_layers.2",
        "time_emb_proj" => "emb_layers.1",
        "norm2" => "out_layers.0",
        "conv2" => "out_layers.3",
        "conv_shortcut" => "skip_connection",
        _ => return None,
    };
    Some(format!("{original}.{tail}"))
}

fn unet(name: &str, layers: usize, up_attention: &[bool]) -> Option<String> {
    let per_level = layers + 1;
    for (diffusers, original) in [
        ("time_embedding.linear_1.", "time_embed.0."),
        ("time_embedding.linear_2.", "time_embed.2."),
        ("conv_in.", "input_blocks.0.0."),
        ("conv_norm_out.", "out.0."),
        ("conv_out.", "out.2."),
    ] {
        if let Some(tail) = name.strip_prefix(diffusers) {
            return Some(format!("{original}{tail}"));
        }
    }
    let (parts, rest) = split_at(name, 4)?;
    match parts.as_slice() {
        ["down_blocks", level, "resnets", j] => {
            let block = 1 + index(level)? * per_level + index(j)?;
            Some(format!("input_blocks.{block}.0.{}", unet_resnet(rest)?))
        }
        ["down_blocks", level, "attentions", j] => {
            let block = 1 + index(level)? * per_level + index(j)?;
            Some(format!("input_blocks.{block}.1.{rest}"))
        }
        ["down_blocks", level, "downsamplers", "0"] => {
            let tail = rest.strip_prefix("conv.")?;
            let block = (index(level)? + 1) * per_level;
            Some(format!("input_blocks.{block}.0.op.{tail}"))
        }
        ["up_blocks", level, "resnets", j] => {
            let block = index(level)? * per_level + index(j)?;
            Some(format!("output_blocks.{block}.0.{}", unet_resnet(rest)?))
        }
        ["up_blocks", level, "attentions", j] => {
            let block = index(level)? * per_level + index(j)?;
            Some(format!("output_blocks.{block}.1.{rest}"))
        }
        ["up_blocks", level, "upsamplers", "0"] => {
            let level = index(level)?;
            let slot = if *up_attention.get(level)? { 2 } else { 1 };
            let block = level * per_level + layers;
            Some(format!("output_blocks.{block}.{slot}.{rest}"))
        }
        ["mid_block", "resnets", j, _] => {
            let (_, rest) = split_at(name, 3)?;
            Some(format!(
                "middle_block.{}.{}",
                2 * index(j)?,
                unet_resnet(rest)?
            ))
        }
        ["mid_block", "attentions", "0", _] => {
            let (_, rest) = split_at(name, 3)?;
            Some(format!("middle_block.1.{rest}"))
        }
        _ => None,
    }
}

/// A VAE resnet's inner names: the same but for the shortcut.
fn vae_resnet(rest: &str) -> String {
    match rest.strip_prefix("conv_shortcut.") {
        Some(tail) => format!("nin_shortcut.{tail}"),
        None => rest.to_owned(),
    }
}

fn vae(name: &str, levels: usize) -> Option<Source> {
    let whole = |n: String| Some(Source::Whole(VAE_PREFIX.to_owned() + &n));
    if name.starts_with("quant_conv.") || name.starts_with("post_quant_conv.") {
        return whole(name.to_owned());
    }
    let (coder, rest) = name.split_once('.')?;
    if coder != "encoder" && coder != "decoder" {
        return None;
    }
    for (diffusers, original) in [
        ("conv_in.", "conv_in."),
        ("conv_out.", "conv_out."),
        ("conv_norm_out.", "norm_out."),
    ] {
        if let Some(tail) = rest.strip_prefix(diffusers) {
            return whole(format!("{coder}.{original}{tail}"));
        }
    }
    if let Some(tail) = rest.strip_prefix("mid_block.attentions.0.") {
        let (layer, tail) = tail.split_once('.')?;
        let (original, pointwise) = match layer {
            "group_norm" => ("norm", false),
            "to_q" => ("q", true),
            "to_k" => ("k", true),
            "to_v" => ("v", true),
            "to_out" => ("proj_out", true),
            _ => return None,
        };
        let tail = if layer == "to_out" {
            tail.strip_prefix("0.")?
        } else {
            tail
        };
        let full = format!("{VAE_PREFIX}{coder}.mid.attn_1.{original}.{tail}");
        return Some(if pointwise && tail == "weight" {
            Source::Pointwise(full)
        } else {
            Source::Whole(full)
        });
    }
    let (parts, tail) = split_at(rest, 4)?;
    match (coder, parts.as_slice()) {
        (_, ["mid_block", "resnets", j, _]) => {
            let (_, tail) = split_at(rest, 3)?;
            whole(format!(
                "{coder}.mid.block_{}.{}",
                index(j)? + 1,
                vae_resnet(tail)
            ))
        }
        ("encoder", ["down_blocks", level, "resnets", j]) => whole(format!(
            "encoder.down.{level}.block.{j}.{}",
            vae_resnet(tail)
        )),
        ("encoder", ["down_blocks", level, "downsamplers", "0"]) => {
            whole(format!("encoder.down.{level}.downsample.{tail}"))
        }
        ("decoder", ["up_blocks", level, "resnets", j]) => {
            let level = levels.checked_sub(1 + index(level)?)?;
            whole(format!("decoder.up.{level}.block.{j}.{}", vae_resnet(tail)))
        }
        ("decoder", ["up_blocks", level, "upsamplers", "0"]) => {
            let level = levels.checked_sub(1 + index(level)?)?;
            whole(format!("decoder.up.{level}.upsample.{tail}"))
        }
        _ => None,
    }
}

fn text_encoder(name: &str) -> Option<Source> {
    // transformers 4 nests the model under `text_model.`, transformers 5 does not; the
    // encoder asks for whichever the file has, and both are the same tensor here.
    let name = name.strip_prefix("text_model.").unwrap_or(name);
    let whole = |n: String| Some(Source::Whole(TEXT_PREFIX.to_owned() + &n));
    match name {
        "embeddings.token_embedding.weight" => return whole("token_embedding.weight".into()),
        "embeddings.position_embedding.weight" => return whole("positional_embedding".into()),
        _ => {}
    }
    if let Some(tail) = name.strip_prefix("final_layer_norm.") {
        return whole(format!("ln_final.{tail}"));
    }
    let (parts, tail) = split_at(name, 3)?;
    let ["encoder", "layers", layer] = parts.as_slice() else {
        return None;
    };
    let block = format!("{TEXT_PREFIX}transformer.resblocks.{layer}");
    let (module, param) = tail.rsplit_once('.')?;
    let renamed = match module {
        "self_attn.q_proj" => {
            return Some(Source::Third(format!("{block}.attn.in_proj_{param}"), 0))
        }
        "self_attn.k_proj" => {
            return Some(Source::Third(format!("{block}.attn.in_proj_{param}"), 1))
        }
        "self_attn.v_proj" => {
            return Some(Source::Third(format!("{block}.attn.in_proj_{param}"), 2))
        }
        "self_attn.out_proj" => "attn.out_proj",
        "layer_norm1" => "ln_1",
        "layer_norm2" => "ln_2",
        "mlp.fc1" => "mlp.c_fc",
        "mlp.fc2" => "mlp.c_proj",
        _ => return None,
    };
    Some(Source::Whole(format!("{block}.{renamed}.{param}")))
}

/// A `VarBuilder` backend reading one network of an original-layout checkpoint by diffusers'
/// names.
pub(crate) struct OriginalBackend {
    pub(crate) file: Arc<MmapedSafetensors>,
    pub(crate) network: Network,
}

impl OriginalBackend {
    /// The tensor diffusers calls `name`, in the file's dtype, on `device`.
    pub(crate) fn read(&self, name: &str, device: &Device) -> candle_core::Result<Tensor> {
        let source = self.network.source(name).ok_or_else(|| {
            candle_core::Error::Msg(format!(
                "`{name}` has no counterpart in the original SD 2.x layout"
            ))
        })?;
        let tensor = self.file.load(source.name(), device).map_err(|_| {
            candle_core::Error::Msg(format!(
                "`{}` (the network's `{name}`) is missing from the checkpoint",
                source.name()
            ))
        })?;
        match source {
            Source::Whole(_) => Ok(tensor),
            Source::Pointwise(_) => match tensor.dims() {
                &[out, inp, 1, 1] => tensor.reshape((out, inp)),
                _ => Ok(tensor),
            },
            Source::Third(ref original, part) => {
                let rows = tensor.dim(0)?;
                if rows % 3 != 0 {
                    return Err(candle_core::Error::Msg(format!(
                        "`{original}` has {rows} rows; a fused query-key-value projection has 3n"
                    )));
                }
                tensor.narrow(0, part * rows / 3, rows / 3)?.contiguous()
            }
        }
    }
}

impl OriginalBackend {
    /// [`OriginalBackend::read`], refused unless it has the `shape` the network asks for.
    pub(crate) fn read_shaped(
        &self,
        name: &str,
        shape: &Shape,
        device: &Device,
    ) -> candle_core::Result<Tensor> {
        let tensor = self.read(name, device)?;
        if tensor.shape() != shape {
            let original = self.network.source(name);
            return Err(candle_core::Error::Msg(format!(
                "`{}` (the network's `{name}`) has shape {:?}; the architecture wants {:?}",
                original.as_ref().map_or(name, |s| s.name()),
                tensor.dims(),
                shape.dims()
            )));
        }
        Ok(tensor)
    }
}

impl SimpleBackend for OriginalBackend {
    fn get(
        &self,
        shape: Shape,
        name: &str,
        _: candle_nn::Init,
        dtype: DType,
        device: &Device,
    ) -> candle_core::Result<Tensor> {
        self.read_shaped(name, &shape, device)?.to_dtype(dtype)
    }

    fn get_unchecked(
        &self,
        name: &str,
        dtype: DType,
        device: &Device,
    ) -> candle_core::Result<Tensor> {
        self.read(name, device)?.to_dtype(dtype)
    }

    fn contains_tensor(&self, name: &str) -> bool {
        self.network
            .source(name)
            .is_some_and(|s| self.file.get(s.name()).is_ok())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unet_source(name: &str) -> String {
        // SD 2.x: two resnets per level, attention on the three upper levels (so on up
        // levels 1, 2, 3 in diffusers' order).
        let network = Network::UNet {
            layers: 2,
            up_attention: vec![false, true, true, true],
        };
        network.source(name).unwrap().name().to_owned()
    }

    #[test]
    fn unet_names_follow_the_original_block_numbering() {
        let p = UNET_PREFIX;
        for (diffusers, original) in [
            ("conv_in.weight", "input_blocks.0.0.weight"),
            ("time_embedding.linear_2.bias", "time_embed.2.bias"),
            (
                "down_blocks.0.resnets.1.conv1.weight",
                "input_blocks.2.0.in_layers.2.weight",
            ),
            (
                "down_blocks.1.attentions.0.proj_in.weight",
                "input_blocks.4.1.proj_in.weight",
            ),
            (
                "down_blocks.2.downsamplers.0.conv.bias",
                "input_blocks.9.0.op.bias",
            ),
            (
                "down_blocks.3.resnets.0.time_emb_proj.weight",
                "input_blocks.10.0.emb_layers.1.weight",
            ),
            (
                "mid_block.resnets.1.norm2.weight",
                "middle_block.2.out_layers.0.weight",
            ),
            (
                "mid_block.attentions.0.transformer_blocks.0.attn2.to_k.weight",
                "middle_block.1.transformer_blocks.0.attn2.to_k.weight",
            ),
            (
                "up_blocks.0.resnets.2.conv_shortcut.weight",
                "output_blocks.2.0.skip_connection.weight",
            ),
            (
                "up_blocks.0.upsamplers.0.conv.weight",
                "output_blocks.2.1.conv.weight",
            ),
            (
                "up_blocks.1.upsamplers.0.conv.weight",
                "output_blocks.5.2.conv.weight",
            ),
            (
                "up_blocks.3.attentions.2.proj_out.bias",
                "output_blocks.11.1.proj_out.bias",
            ),
            ("conv_norm_out.weight", "out.0.weight"),
            ("conv_out.bias", "out.2.bias"),
        ] {
            assert_eq!(
                unet_source(diffusers),
                format!("{p}{original}"),
                "{diffusers}"
            );
        }
    }

    #[test]
    fn vae_and_text_encoder_names_reshape_where_the_layouts_differ() {
        let vae = Network::Vae { levels: 4 };
        let v = VAE_PREFIX;
        assert_eq!(
            vae.source("decoder.up_blocks.0.resnets.2.conv1.weight"),
            Some(Source::Whole(format!(
                "{v}decoder.up.3.block.2.conv1.weight"
            )))
        );
        assert_eq!(
            vae.source("encoder.down_blocks.1.resnets.0.conv_shortcut.bias"),
            Some(Source::Whole(format!(
                "{v}encoder.down.1.block.0.nin_shortcut.bias"
            )))
        );
        assert_eq!(
            vae.source("decoder.mid_block.attentions.0.to_out.0.weight"),
            Some(Source::Pointwise(format!(
                "{v}decoder.mid.attn_1.proj_out.weight"
            )))
        );
        assert_eq!(
            vae.source("encoder.mid_block.resnets.1.norm1.weight"),
            Some(Source::Whole(format!(
                "{v}encoder.mid.block_2.norm1.weight"
            )))
        );
        let t = TEXT_PREFIX;
        for name in [
            "text_model.encoder.layers.5.self_attn.k_proj.bias",
            "encoder.layers.5.self_attn.k_proj.bias",
        ] {
            assert_eq!(
                Network::TextEncoder.source(name),
                Some(Source::Third(
                    format!("{t}transformer.resblocks.5.attn.in_proj_bias"),
                    1
                ))
            );
        }
        assert_eq!(
            Network::TextEncoder.source("text_model.embeddings.position_embedding.weight"),
            Some(Source::Whole(format!("{t}positional_embedding")))
        );
        assert_eq!(Network::TextEncoder.source("text_projection.weight"), None);
    }
}
