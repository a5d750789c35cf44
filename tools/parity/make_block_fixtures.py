"""Block-by-block activation fixtures for the UNet and the VAE, from diffusers on the tiny models.

For the Rust UNet and VAE tests (crates/engine/tests/fixtures/blocks/). The pipeline fixtures
only say *that* a whole denoising run differs from diffusers; these say *where*. Each file
holds the inputs fed to diffusers' `UNet2DConditionModel` / `AutoencoderKL` and the outputs of
their sub-modules, captured with forward hooks, in the order the forward pass runs them. A Rust
test compares its own activations against them in that order: the first tensor out of tolerance
(1e-4 relative) names the block that diverges, and everything before it is known to be right.

Usage (the model directories are what `sie model tiny` writes with its default seed):

    /work/venv-parity/bin/python tools/parity/make_block_fixtures.py /tmp/tiny-eps /tmp/tiny-v

Files, per model key (`epsilon` for the first directory, `v_prediction` for the second):

`{key}-unet.safetensors`
    inputs:  `sample` (2,4,8,9) and `encoder_hidden_states` (2,77,32), both
             `torch.randn` from one `torch.Generator("cpu").manual_seed(0)`, in that order;
             `timestep` = [981.0] and `timestep_t2` = [500.5] (stored as float32, fed to the
             UNet as a float64 tensor of shape [1], which diffusers broadcasts over the batch).
    at t=981, named by module path (hidden states only: the first element when a block returns
    a tuple or an output object):
             `time_proj` (t_emb, (2,32)), `time_embedding` ((2,128)), `conv_in`,
             `down_blocks.0.resnets.0`, `down_blocks.0.attentions.0` (after proj_out and the
             residual), `down_blocks.0.attentions.0.transformer_blocks.0` (tokens, (B,H*W,C),
             before proj_out), `down_blocks.{0..3}` (after the downsampler, if any),
             `mid_block`, `up_blocks.{0..3}` (after the upsampler, if any), `conv_norm_out`
             (the GroupNorm, before SiLU and conv_out), and `out` (the UNet's `sample`).
    at t=500.5: `out_t2`, plus `time_proj_t2` and `time_embedding_t2` (tiny; they separate a
             fractional-timestep embedding bug from everything else).
    The width 9 is odd on purpose: it is 9 -> 5 -> 3 -> 2 down the UNet, so the up blocks
    must upsample to the skip connection's size (diffusers' `upsample_size`), not just double.

`{key}-vae.safetensors`
    decode:  input `z` (1,4,2,2) raw latents (no scaling_factor applied), `torch.randn`
             from `manual_seed(1)`; outputs `post_quant_conv`, `decoder.conv_in`,
             `decoder.mid_block.resnets.0`, `decoder.mid_block.attentions.0` (includes the
             residual), `decoder.mid_block`, `decoder.up_blocks.{0..3}`,
             `decoder.conv_norm_out` (GroupNorm, before SiLU and conv_out), and `decoded`
             (`vae.decode(z).sample`, not clamped).
    encode:  input `x` (1,3,16,24) uniform in [-1, 1) (`torch.rand` from
             `manual_seed(2)`, then `* 2 - 1`); outputs `encoder.down_blocks.{0..3}`,
             `encoder.mid_block`, and `moments`, the `quant_conv` output (1,8,...): channels
             0..4 are the mean, 4..8 the log-variance (before diffusers clamps it to [-30, 20]).
    The VAE sizes are much smaller than a real image: the decoder's full-resolution
    activations (16 channels at 8x the latent size, three of them) dominate the file size, and
    the fixtures must stay well under 600 KB all together. At z (1,4,8,9) each VAE file would
    be 1.3 MB. The encoder input is non-square so that H/W mix-ups still show in the VAE code.

`{key}-unet.json`, `{key}-vae.json`
    sha256 of the model's weights files (the Rust test should refuse to compare against a
    model that differs), the config flags that matter, diffusers/torch versions, the seeds,
    the timesteps and the attention processor used.

Everything is float32 on the CPU, with diffusers' default attention processor
(AttnProcessor2_0, i.e. torch's scaled_dot_product_attention).
"""

import hashlib
import json
import os
import sys

import torch
from safetensors.torch import save_file

import diffusers
from diffusers import AutoencoderKL, UNet2DConditionModel

OUT = os.path.join(os.path.dirname(__file__), "..", "..", "crates", "engine", "tests", "fixtures", "blocks")

UNET_SAMPLE = (2, 4, 8, 9)
UNET_CONTEXT = (2, 77, 32)
TIMESTEP = 981.0
TIMESTEP_T2 = 500.5
UNET_SEED, VAE_DECODE_SEED, VAE_ENCODE_SEED = 0, 1, 2
VAE_LATENT = (2, 2)  # decode input z: (1,4,2,2) -> (1,3,16,16)
VAE_IMAGE = (16, 24)  # encode input x: (1,3,16,24) -> latents 2x3 (non-square on purpose)

UNET_MODULES = [
    "time_proj",
    "time_embedding",
    "conv_in",
    "down_blocks.0.resnets.0",
    "down_blocks.0.attentions.0.transformer_blocks.0",
    "down_blocks.0.attentions.0",
    "down_blocks.0",
    "down_blocks.1",
    "down_blocks.2",
    "down_blocks.3",
    "mid_block",
    "up_blocks.0",
    "up_blocks.1",
    "up_blocks.2",
    "up_blocks.3",
    "conv_norm_out",
]

VAE_DECODE_MODULES = [
    "post_quant_conv",
    "decoder.conv_in",
    "decoder.mid_block.resnets.0",
    "decoder.mid_block.attentions.0",
    "decoder.mid_block",
    "decoder.up_blocks.0",
    "decoder.up_blocks.1",
    "decoder.up_blocks.2",
    "decoder.up_blocks.3",
    "decoder.conv_norm_out",
]

VAE_ENCODE_MODULES = [
    "encoder.down_blocks.0",
    "encoder.down_blocks.1",
    "encoder.down_blocks.2",
    "encoder.down_blocks.3",
    "encoder.mid_block",
    "quant_conv",
]


def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        h.update(f.read())
    return h.hexdigest()


def first(output):
    """The hidden states of a module's output: tensors as they are, else the first element."""
    if isinstance(output, torch.Tensor):
        return output
    return output[0]  # a tuple, or a BaseOutput (e.g. Transformer2DModelOutput), which indexes like one


def capture(model, names, run, suffix=""):
    """Run `run()` with forward hooks on `names`; return {name + suffix: float32 output}."""
    modules = dict(model.named_modules())
    got = {}
    handles = []
    for name in names:

        def hook(_module, _inputs, output, name=name):
            assert name + suffix not in got, f"{name} ran twice"
            got[name + suffix] = first(output).detach().to(torch.float32).contiguous().clone()

        handles.append(modules[name].register_forward_hook(hook))
    try:
        with torch.no_grad():
            result = run()
    finally:
        for h in handles:
            h.remove()
    missing = [n for n in names if n + suffix not in got]
    assert not missing, f"hooks never ran: {missing}"
    return got, result


def load(cls, model_dir, sub):
    """Load a component and hash its weights, refusing if the file changes meanwhile."""
    path = os.path.join(model_dir, sub, "diffusion_pytorch_model.safetensors")
    before = sha256(path)
    model = cls.from_pretrained(os.path.join(model_dir, sub), torch_dtype=torch.float32).eval()
    if sha256(path) != before:
        sys.exit(f"{path} changed while loading; rerun once the model is written")
    return model, {f"{sub}/diffusion_pytorch_model.safetensors": before}


def unet_fixtures(model_dir):
    unet, hashes = load(UNet2DConditionModel, model_dir, "unet")
    g = torch.Generator("cpu").manual_seed(UNET_SEED)
    sample = torch.randn(UNET_SAMPLE, generator=g, dtype=torch.float32)
    context = torch.randn(UNET_CONTEXT, generator=g, dtype=torch.float32)

    def forward(t):
        timestep = torch.tensor([t], dtype=torch.float64)
        return lambda: unet(sample, timestep, encoder_hidden_states=context, return_dict=False)[0]

    tensors = {
        "sample": sample,
        "encoder_hidden_states": context,
        "timestep": torch.tensor([TIMESTEP], dtype=torch.float32),
        "timestep_t2": torch.tensor([TIMESTEP_T2], dtype=torch.float32),
    }
    got, out = capture(unet, UNET_MODULES, forward(TIMESTEP))
    tensors.update(got)
    tensors["out"] = out
    got, out = capture(unet, ["time_proj", "time_embedding"], forward(TIMESTEP_T2), suffix="_t2")
    tensors.update(got)
    tensors["out_t2"] = out
    processors = sorted({type(p).__name__ for p in unet.attn_processors.values()})
    meta = {
        "sha256": hashes,
        "config": {k: unet.config[k] for k in ["upcast_attention", "use_linear_projection", "attention_head_dim", "block_out_channels", "norm_num_groups", "cross_attention_dim", "flip_sin_to_cos", "freq_shift"]},
        "timesteps": [TIMESTEP, TIMESTEP_T2],
        "timestep_dtype": "float64, shape [1]",
        "seed": UNET_SEED,
        "draws": {"sample": list(UNET_SAMPLE), "encoder_hidden_states": list(UNET_CONTEXT)},
        "attention_processors": processors,
    }
    return tensors, meta


def vae_fixtures(model_dir):
    vae, hashes = load(AutoencoderKL, model_dir, "vae")
    h, w = VAE_LATENT
    ih, iw = VAE_IMAGE
    z = torch.randn((1, 4, h, w), generator=torch.Generator("cpu").manual_seed(VAE_DECODE_SEED), dtype=torch.float32)
    x = torch.rand((1, 3, ih, iw), generator=torch.Generator("cpu").manual_seed(VAE_ENCODE_SEED), dtype=torch.float32) * 2 - 1

    tensors = {"z": z}
    got, decoded = capture(vae, VAE_DECODE_MODULES, lambda: vae.decode(z, return_dict=False)[0])
    tensors.update(got)
    tensors["decoded"] = decoded
    tensors["x"] = x
    got, _ = capture(vae, VAE_ENCODE_MODULES, lambda: vae.encode(x, return_dict=False)[0])
    got["moments"] = got.pop("quant_conv")
    tensors.update(got)
    processors = sorted({type(p).__name__ for p in vae.attn_processors.values()})
    meta = {
        "sha256": hashes,
        "config": {k: vae.config[k] for k in ["block_out_channels", "norm_num_groups", "latent_channels", "scaling_factor"]},
        "seeds": {"z": VAE_DECODE_SEED, "x": VAE_ENCODE_SEED},
        "draws": {"z": "torch.randn((1,4,%d,%d))" % (h, w), "x": "torch.rand((1,3,%d,%d)) * 2 - 1" % (ih, iw)},
        "attention_processors": processors,
    }
    return tensors, meta


def save(name, tensors, meta):
    tensors = {k: v.to(torch.float32).contiguous() for k, v in tensors.items()}
    path = os.path.join(OUT, name + ".safetensors")
    save_file(tensors, path)
    meta = dict(meta, diffusers=diffusers.__version__, torch=torch.__version__, names=list(tensors))
    with open(os.path.join(OUT, name + ".json"), "w") as f:
        json.dump(meta, f, indent=1)
    print(f"{name}.safetensors: {os.path.getsize(path)} bytes")
    for k, v in tensors.items():
        print(f"  {k:50s} {tuple(v.shape)}")


def main():
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    eps_dir, v_dir = sys.argv[1], sys.argv[2]
    os.makedirs(OUT, exist_ok=True)
    torch.set_num_threads(1)  # one reduction order, and the machine is shared
    for key, model_dir in [("epsilon", eps_dir), ("v_prediction", v_dir)]:
        save(f"{key}-unet", *unet_fixtures(model_dir))
        save(f"{key}-vae", *vae_fixtures(model_dir))
    total = sum(os.path.getsize(os.path.join(OUT, f)) for f in os.listdir(OUT))
    print(f"total in {os.path.normpath(OUT)}: {total} bytes")


if __name__ == "__main__":
    main()
