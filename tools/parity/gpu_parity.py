"""Parity of `sie model run` against diffusers on one GPU, image value by image value.

The same model directory, prompt, seed (diffusers with torch.Generator("cpu"), as the engine
draws its noise), scheduler, steps, guidance and size, in each dtype asked for. Ours is
written by the sie binary as PNG; diffusers' comes out as numpy floats and is rounded to
bytes as diffusers' own numpy_to_pil rounds it. The report (one JSON object on stdout and in
OUT/parity.json) gives, per dtype, the fraction of values within 2/255, the mean absolute
difference and the worst value, and whether our image is black or not finite.

Run (on the GPU machine, a python3 with torch, diffusers and transformers):
  python3 tools/parity/gpu_parity.py --sie target/release/sie --model DIR --out OUT \
      [--size 512] [--steps 20] [--scheduler DDIMScheduler] [--dtypes float32 float16]
"""

import argparse
import json
import os
import subprocess
import sys
import time

import numpy as np
import torch
from PIL import Image


def ours(args, dtype, path):
    cmd = [
        args.sie, "model", "run", "--model", args.model, "--prompt", args.prompt,
        "--seed", str(args.seed), "--steps", str(args.steps), "--guidance", str(args.guidance),
        "--width", str(args.size), "--height", str(args.size), "--scheduler", args.scheduler,
        "--device", "cuda", "--dtype", dtype, "--no-safety-checker", "--out", path,
    ]
    start = time.time()
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{done.stderr}")
    return np.asarray(Image.open(path).convert("RGB")), time.time() - start


def theirs(args, dtype):
    import diffusers

    torch_dtype = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}[dtype]
    pipe = diffusers.StableDiffusionPipeline.from_pretrained(
        args.model, torch_dtype=torch_dtype, safety_checker=None, requires_safety_checker=False
    ).to("cuda")
    scheduler_class = getattr(diffusers, args.scheduler)
    pipe.scheduler = scheduler_class.from_config(pipe.scheduler.config)
    generator = torch.Generator("cpu").manual_seed(args.seed)
    start = time.time()
    image = pipe(
        args.prompt, num_inference_steps=args.steps, guidance_scale=args.guidance,
        width=args.size, height=args.size, generator=generator, output_type="np",
    ).images[0]
    seconds = time.time() - start
    del pipe
    torch.cuda.empty_cache()
    return (image * 255).round().astype("uint8"), seconds


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sie", required=True)
    ap.add_argument("--model", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--guidance", type=float, default=7.5)
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--scheduler", default="DDIMScheduler")
    ap.add_argument("--prompt", default="An oil painting of a salad")
    ap.add_argument("--dtypes", nargs="+", default=["float32", "float16"])
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    report = {"model": args.model, "size": args.size, "steps": args.steps,
              "scheduler": args.scheduler, "seed": args.seed, "rows": []}
    for dtype in args.dtypes:
        mine, our_seconds = ours(args, dtype, os.path.join(args.out, f"ours-{dtype}.png"))
        ref, their_seconds = theirs(args, dtype)
        Image.fromarray(ref).save(os.path.join(args.out, f"diffusers-{dtype}.png"))
        diff = np.abs(mine.astype(np.int16) - ref.astype(np.int16))
        report["rows"].append({
            "dtype": dtype,
            "within_2_of_255": float((diff <= 2).mean()),
            "mean_abs_diff": float(diff.mean()),
            "max_abs_diff": int(diff.max()),
            "ours_black": bool(mine.max() == 0),
            "ours_mean": float(mine.mean()),
            "ours_seconds_with_load": our_seconds,
            "diffusers_seconds": their_seconds,
        })
        print(json.dumps(report["rows"][-1]), file=sys.stderr)
    with open(os.path.join(args.out, "parity.json"), "w") as f:
        json.dump(report, f, indent=1)
    print(json.dumps(report))


if __name__ == "__main__":
    main()
