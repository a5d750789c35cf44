"""Times diffusers' / transformers' SD 2.1 parts on the CPU, the PyTorch side of `sie bench`.

    PY=/path/to/venv/bin/python
    $PY tools/parity/bench_diffusers.py unet --variant 2-1-base --size 512 --batch 2 --steps 3 --threads 2
    $PY tools/parity/bench_diffusers.py vae  --variant 2-1-base --size 512 --batch 1 --steps 3 --threads 2
    $PY tools/parity/bench_diffusers.py text --variant 2-1-base --batch 2 --steps 3 --threads 2
    $PY tools/parity/bench_diffusers.py pipeline --model DIR --size 512 --steps 20 --runs 1 --threads 2 \\
        --prompt "An oil painting of a salad" --seed 0 --guidance 7.5

Common to all: torch.set_num_threads(--threads), torch.manual_seed(0), under torch.no_grad(),
on --device (cpu, or cuda for the first GPU) in --dtype (float32, or float16/bfloat16 on a GPU).
On a GPU the result also has peak_device_bytes (torch.cuda.max_memory_allocated). Prints one
JSON object on the last stdout line with implementation, part, device, dtype, variant, size,
batch, threads, parameters (elements of the timed module(s)), seconds (the median of the timed
calls, statistics.median: the mean of the middle two for an even count), all_seconds and
peak_rss_bytes (VmHWM of this process, see peak_rss_bytes(): it includes building or
loading the model and the untimed calls, not only the timed ones).

unet, vae and text need no files: each builds its module from the published config
(crates/engine/assets/published/, byte for byte the files of stabilityai/stable-diffusion-2-1
and -2-1-base, see tools/parity/published_configs.py) with random weights, runs one untimed
warm-up call, then --steps timed calls.

* unet: UNet2DConditionModel.from_config(sd21[-base]-unet.json); x = randn(batch, 4, size/8,
  size/8), timestep 999, context = randn(batch, 77, 1024); times
  `unet(x, t, encoder_hidden_states=context).sample.sum().item()`. --batch 2 is one guided step
  of one image.
* vae: AutoencoderKL.from_config(sd21-vae.json); z = randn(batch, 4, size/8, size/8); times
  `vae.decode(z).sample` (post_quant_conv + decoder), decode only. The pipeline's
  `latents / scaling_factor` before it and the (x / 2 + 0.5).clamp(0, 1) to uint8 after it are
  element-wise and left out. "parameters" counts post_quant_conv + decoder, the parts decode
  runs (the encoder and quant_conv are not).
* text: CLIPTextModel(CLIPTextConfig(**sd21-text-encoder.json)); input_ids =
  randint(0, 49408, (batch, 77)); times `model(input_ids).last_hidden_state`. This is exactly
  what StableDiffusionPipeline runs for SD 2.1 (encode_prompt, clip_skip None:
  `text_encoder(input_ids, attention_mask=None)[0]`, no attention mask since the config has no
  "use_attention_mask"): SD 2.x conditions on OpenCLIP ViT-H's penultimate layer followed by the
  final layer norm, and the published text encoder already has that shape (23 of OpenCLIP's 24
  layers, "num_hidden_layers": 23, and CLIPTextModel applies final_layer_norm after the last
  one), so the plain forward is the penultimate-layer output. --batch 2 is one guided prompt
  (prompt + negative prompt); --size does not apply (always 77 tokens) and is reported as null.
* The 2-1 and 2-1-base VAE and text-encoder configs differ only in "_name_or_path" (and the VAE
  in "_diffusers_version"), not in anything that shapes the network, so one asset each
  (2-1's files) serves both --variant values.

pipeline loads a diffusers model directory: StableDiffusionPipeline.from_pretrained(DIR,
safety_checker=None, requires_safety_checker=False, torch_dtype=torch.float32) with the
scheduler the directory names, and times
`pipe(prompt, height=size, width=size, num_inference_steps=steps, guidance_scale=guidance,
generator=torch.Generator().manual_seed(seed), output_type="np")`, the whole text-to-image call
(tokenizer, text encoder, --steps denoising steps, VAE decode, to numpy) of one image. No warm-up
run (a full-size run takes minutes): --runs timed runs, median reported, so the first run pays
PyTorch's one-time costs. "parameters" is unet + vae (all of it) + text_encoder, "variant" the
model directory, "steps" the number of inference steps, "load_seconds" the from_pretrained
time; peak RSS includes loading the model. The progress bar goes to stderr.
"""

import argparse
import json
import os
import resource
import statistics
import sys
import time

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
ASSETS = os.path.join(HERE, "..", "..", "crates", "engine", "assets", "published")

UNET_ASSETS = {"2-1-base": "sd21-base-unet.json", "2-1": "sd21-unet.json"}
# 2-1 and 2-1-base differ here only in "_name_or_path" / "_diffusers_version".
VAE_ASSETS = {"2-1-base": "sd21-vae.json", "2-1": "sd21-vae.json"}
TEXT_ASSETS = {"2-1-base": "sd21-text-encoder.json", "2-1": "sd21-text-encoder.json"}


def published(name):
    with open(os.path.join(ASSETS, name), encoding="utf-8") as f:
        return json.load(f)


def count(*modules):
    return sum(p.numel() for m in modules for p in m.parameters())


def timed(fn, calls, warm_up=True):
    """Seconds of each of `calls` calls of fn, after one untimed call when warm_up."""
    times = []
    with torch.no_grad():
        if warm_up:
            fn()
        for _ in range(calls):
            start = time.perf_counter()
            fn()
            times.append(time.perf_counter() - start)
    return times


def versions(*names):
    parts = [f"{n} {__import__(n).__version__}" for n in names]
    return " + ".join(parts + [f"torch {torch.__version__}"])


def latent_side(size):
    if size <= 0 or size % 8:
        sys.exit(f"--size {size} is not a positive multiple of 8")
    return size // 8


def peak_rss_bytes():
    """This process's peak resident set: VmHWM, which starts afresh at exec.

    Not ru_maxrss: Linux carries the parent's peak across exec into it, so when `sie bench`
    (holding a loaded model) starts this script, ru_maxrss reports at least the parent's.
    """
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def placed(t, args):
    """A tensor or module moved to --device in --dtype (floating point only)."""
    return t.to(device=args.device, dtype=getattr(torch, args.dtype))


def bench_unet(args):
    from diffusers import UNet2DConditionModel

    config = published(UNET_ASSETS[args.variant])
    latent = latent_side(args.size)
    unet = placed(UNet2DConditionModel.from_config(config).eval(), args)
    x = placed(torch.randn(args.batch, config["in_channels"], latent, latent), args)
    ctx = placed(torch.randn(args.batch, 77, config["cross_attention_dim"]), args)
    t = torch.tensor(999)
    times = timed(lambda: unet(x, t, encoder_hidden_states=ctx).sample.sum().item(), args.steps)
    return versions("diffusers"), count(unet), times, {}


def bench_vae(args):
    from diffusers import AutoencoderKL

    config = published(VAE_ASSETS[args.variant])
    latent = latent_side(args.size)
    vae = placed(AutoencoderKL.from_config(config).eval(), args)
    z = placed(torch.randn(args.batch, config["latent_channels"], latent, latent), args)
    # decode() runs post_quant_conv (when the config uses it, as SD 2.1's does) and the decoder.
    decode_parts = [vae.decoder] + ([vae.post_quant_conv] if vae.post_quant_conv is not None else [])
    times = timed(lambda: vae.decode(z).sample.sum().item(), args.steps)
    return versions("diffusers"), count(*decode_parts), times, {}


def bench_text(args):
    from transformers import CLIPTextConfig, CLIPTextModel

    config = published(TEXT_ASSETS[args.variant])
    model = placed(CLIPTextModel(CLIPTextConfig(**config)).eval(), args)
    ids = torch.randint(0, config["vocab_size"], (args.batch, config["max_position_embeddings"]))
    ids = ids.to(args.device)
    times = timed(lambda: model(ids).last_hidden_state.sum().item(), args.steps)
    return versions("transformers"), count(model), times, {}


def bench_pipeline(args):
    model_dir = args.model
    if not os.path.isfile(os.path.join(model_dir, "model_index.json")):
        sys.exit(f"--model {model_dir}: not a diffusers model directory (no model_index.json there)")
    latent_side(args.size)
    from diffusers import StableDiffusionPipeline

    start = time.perf_counter()
    pipe = StableDiffusionPipeline.from_pretrained(
        model_dir, safety_checker=None, requires_safety_checker=False, torch_dtype=getattr(torch, args.dtype)
    ).to(args.device)
    load = time.perf_counter() - start

    def run():
        pipe(
            args.prompt,
            height=args.size,
            width=args.size,
            num_inference_steps=args.steps,
            guidance_scale=args.guidance,
            # diffusers draws the initial noise on the CPU generator's device and moves it.
            generator=torch.Generator().manual_seed(args.seed),
            output_type="np",
        )

    times = timed(run, args.runs, warm_up=False)
    extra = {
        "steps": args.steps,
        "guidance": args.guidance,
        "scheduler": type(pipe.scheduler).__name__,
        "load_seconds": load,
    }
    return versions("diffusers", "transformers"), count(pipe.unet, pipe.vae, pipe.text_encoder), times, extra


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="part", required=True)

    def common(p, size=True, batch=None, steps=3):
        if size:
            p.add_argument("--size", type=int, default=512, help="image size in pixels (the latent is size/8)")
        if batch is not None:
            p.add_argument("--batch", type=int, default=batch)
        p.add_argument("--steps", type=int, default=steps)
        p.add_argument("--threads", type=int, default=2)
        p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
        p.add_argument("--dtype", choices=["float32", "float16", "bfloat16"], default="float32")

    def variant(p):
        p.add_argument("--variant", choices=["2-1-base", "2-1"], default="2-1-base")

    p = sub.add_parser("unet", help="one UNet call (batch 2 = one guided step)")
    variant(p)
    common(p, batch=2)
    p = sub.add_parser("vae", help="VAE decode of a latent")
    variant(p)
    common(p, batch=1)
    p = sub.add_parser("text", help="text encoder on 77 token ids")
    variant(p)
    common(p, size=False, batch=2)
    p = sub.add_parser("pipeline", help="whole text-to-image call of a model directory")
    p.add_argument("--model", required=True, metavar="DIR", help="a diffusers StableDiffusionPipeline directory")
    common(p, steps=20)
    p.add_argument("--runs", type=int, default=1, help="timed runs (no warm-up run); the median is reported")
    p.add_argument("--prompt", default="An oil painting of a salad")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--guidance", type=float, default=7.5)
    args = ap.parse_args()
    if (args.runs if args.part == "pipeline" else args.steps) < 1:
        ap.error("--runs must be at least 1" if args.part == "pipeline" else "--steps must be at least 1")

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    bench = {"unet": bench_unet, "vae": bench_vae, "text": bench_text, "pipeline": bench_pipeline}[args.part]
    implementation, params, times, extra = bench(args)
    peak = peak_rss_bytes()
    seconds = statistics.median(times)
    result = {
        "implementation": implementation,
        "part": args.part,
        "variant": args.model if args.part == "pipeline" else args.variant,
        "size": getattr(args, "size", None),
        "batch": getattr(args, "batch", 1),
        "threads": args.threads,
        "parameters": params,
        "seconds": seconds,
        "all_seconds": times,
        "peak_rss_bytes": peak,
        "device": args.device,
        "dtype": args.dtype,
    }
    if args.device == "cuda":
        result["peak_device_bytes"] = torch.cuda.max_memory_allocated()
    result.update(extra)
    print(json.dumps(result))


if __name__ == "__main__":
    sys.exit(main())
