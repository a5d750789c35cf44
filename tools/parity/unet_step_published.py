"""One UNet forward of a model directory, in fp32 on CPU, with its inputs and output saved.

For the directories made by make_published_random_models.py (or any diffusers SD 2.x
directory): loads MODEL_DIR/unet with UNet2DConditionModel.from_pretrained in float32 (an fp16
directory - one whose unet has only diffusion_pytorch_model.fp16.safetensors - is loaded with
variant="fp16" and upcast to float32), and runs one forward with fixed inputs:

  g = torch.Generator("cpu").manual_seed(0)
  latents               = torch.randn((2, 4, H/8, W/8), generator=g)    # H = W = 64 by default
  encoder_hidden_states = torch.randn((2, 77, 1024), generator=g)       # same generator, continued
  timestep              = torch.tensor(999)                             # int64, as pipelines pass t

OUT.safetensors holds "latents", "encoder_hidden_states", "timestep" (int64, shape [1]) and
"sample" (the UNet output, float32, shape of latents); its metadata records the directory, the
variant, the attention processor and the versions used.

Run: /work/venv-parity/bin/python tools/parity/unet_step_published.py MODEL_DIR OUT.safetensors
     [--height 64] [--width 64] [--timestep 999] [--seed 0]
"""

import argparse
import json
import os
import time

import torch
from safetensors.torch import save_file

import diffusers
from diffusers import UNet2DConditionModel


def unet_variant(model_dir):
    unet_dir = os.path.join(model_dir, "unet")
    has32 = os.path.exists(os.path.join(unet_dir, "diffusion_pytorch_model.safetensors"))
    has16 = os.path.exists(os.path.join(unet_dir, "diffusion_pytorch_model.fp16.safetensors"))
    if not has32 and not has16:
        raise SystemExit(f"no diffusion_pytorch_model[.fp16].safetensors in {unet_dir}")
    return None if has32 else "fp16"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model_dir")
    ap.add_argument("out")
    ap.add_argument("--height", type=int, default=64)
    ap.add_argument("--width", type=int, default=64)
    ap.add_argument("--timestep", type=int, default=999)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    if args.height % 8 or args.width % 8:
        raise SystemExit("height and width must be multiples of 8")

    torch.set_grad_enabled(False)
    variant = unet_variant(args.model_dir)
    t0 = time.time()
    unet = UNet2DConditionModel.from_pretrained(
        args.model_dir, subfolder="unet", variant=variant, dtype=torch.float32
    ).eval()
    load_s = time.time() - t0
    assert all(p.dtype == torch.float32 for p in unet.parameters())

    g = torch.Generator("cpu").manual_seed(args.seed)
    latents = torch.randn((2, unet.config.in_channels, args.height // 8, args.width // 8), generator=g, dtype=torch.float32)
    encoder_hidden_states = torch.randn((2, 77, unet.config.cross_attention_dim), generator=g, dtype=torch.float32)
    timestep = torch.tensor(args.timestep, dtype=torch.int64)

    t0 = time.time()
    sample = unet(latents, timestep, encoder_hidden_states=encoder_hidden_states, return_dict=False)[0]
    forward_s = time.time() - t0

    processors = sorted({type(p).__name__ for p in unet.attn_processors.values()})
    metadata = {
        "model_dir": os.path.abspath(args.model_dir),
        "variant": variant or "",
        "loaded_dtype": "float32",
        "height": str(args.height),
        "width": str(args.width),
        "timestep": str(args.timestep),
        "seed": str(args.seed),
        "inputs": "g=torch.Generator('cpu').manual_seed(seed); latents=randn((2,4,H/8,W/8),g); encoder_hidden_states=randn((2,77,1024),g)",
        "upcast_attention": json.dumps(unet.config.upcast_attention),
        "attn_processors": ",".join(processors),
        "torch": torch.__version__,
        "diffusers": diffusers.__version__,
    }
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    save_file(
        {
            "latents": latents.contiguous(),
            "encoder_hidden_states": encoder_hidden_states.contiguous(),
            "timestep": timestep.reshape(1).contiguous(),
            "sample": sample.contiguous(),
        },
        args.out,
        metadata=metadata,
    )
    s = sample.double()
    print(
        f"{args.model_dir}: variant={variant} load {load_s:.1f}s forward {forward_s:.1f}s "
        f"sample {tuple(sample.shape)} mean {s.mean().item():.6g} std {s.std().item():.6g} "
        f"abs max {s.abs().max().item():.6g} finite {bool(torch.isfinite(sample).all())} -> {args.out}"
    )


if __name__ == "__main__":
    main()
