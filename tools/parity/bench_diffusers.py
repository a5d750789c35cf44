"""Times diffusers' full-size SD 2.1 UNet, the PyTorch side of `sie bench unet`.

    /path/to/venv/bin/python tools/parity/bench_diffusers.py --variant 2-1-base --size 512 --batch 2 --threads 2

Same settings as `sie bench unet`: the published UNet config, random weights,
f32 on CPU, timestep 999, one warm-up step then the median of --steps timed
steps. Prints one JSON object with seconds_per_step and peak_rss_bytes.
"""

import argparse
import json
import os
import resource
import statistics
import sys
import time

import torch

from diffusers import UNet2DConditionModel

HERE = os.path.dirname(__file__)
ASSETS = os.path.join(HERE, "..", "..", "crates", "engine", "assets", "published")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--variant", choices=["2-1-base", "2-1"], default="2-1-base")
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    name = "sd21-base-unet.json" if args.variant == "2-1-base" else "sd21-unet.json"
    with open(os.path.join(ASSETS, name)) as f:
        config = json.load(f)
    torch.manual_seed(0)
    unet = UNet2DConditionModel.from_config(config).eval()
    params = sum(p.numel() for p in unet.parameters())
    latent = args.size // 8
    x = torch.randn(args.batch, config["in_channels"], latent, latent)
    ctx = torch.randn(args.batch, 77, config["cross_attention_dim"])
    t = torch.tensor(999)
    times = []
    with torch.no_grad():
        for i in range(args.steps + 1):
            start = time.perf_counter()
            unet(x, t, encoder_hidden_states=ctx).sample.sum().item()
            if i > 0:
                times.append(time.perf_counter() - start)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(json.dumps({
        "implementation": f"diffusers {__import__('diffusers').__version__} + torch {torch.__version__}",
        "variant": args.variant,
        "size": args.size,
        "batch": args.batch,
        "threads": args.threads,
        "parameters": params,
        "seconds_per_step": statistics.median(times),
        "all_seconds": times,
        "peak_rss_bytes": peak,
    }))


if __name__ == "__main__":
    sys.exit(main())
