"""Text-to-image fixtures from diffusers' own pipeline on the tiny model.

For crates/engine/tests/pipeline.rs. Usage (after building the binary):

    target/debug/sie model tiny --out /tmp/tiny-eps --prediction-type epsilon
    target/debug/sie model tiny --out /tmp/tiny-v --prediction-type v-prediction
    /path/to/venv/bin/python tools/parity/make_pipeline_fixtures.py /tmp/tiny-eps /tmp/tiny-v

The model directories are what `sie model tiny` writes with its default seed;
the fixtures record a hash of each weights file, and the Rust test refuses to
compare against a model that differs (regenerate the fixtures then).

For every scheduler of the contract and both prediction types this runs
`StableDiffusionPipeline.from_pretrained(dir)` with `Cls.from_config(config)`
and records the token ids, the text embeddings, the initial latents, the
latents after every step (through `callback_on_step_end`), and the final
uint8 image. A few extra cases cover several images per prompt, guidance
off (scale 1), guidance_rescale and DDIM eta.
"""

import hashlib
import json
import os
import sys

import numpy as np
import torch
from safetensors.torch import save_file

import diffusers

OUT = os.path.join(os.path.dirname(__file__), "..", "..", "crates", "engine", "tests", "fixtures", "pipeline")

SCHEDULERS = [
    "LMSDiscreteScheduler",
    "DDIMScheduler",
    "PNDMScheduler",
    "EulerDiscreteScheduler",
    "EulerAncestralDiscreteScheduler",
    "DPMSolverMultistepScheduler",
    "UniPCMultistepScheduler",
    "DDPMScheduler",
    "HeunDiscreteScheduler",
]

PROMPT = "An oil painting of a salad"
NEGATIVE = "blurry, low quality"


def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        h.update(f.read())
    return h.hexdigest()


def run_case(pipe, model_dir, name, scheduler, **kw):
    pipe.scheduler = getattr(diffusers, scheduler).from_config(pipe.scheduler.config)
    request = dict(
        prompt=PROMPT,
        negative_prompt=NEGATIVE,
        num_inference_steps=6,
        guidance_scale=7.5,
        width=72,
        height=64,
        num_images_per_prompt=1,
        seed=42,
        eta=0.0,
        guidance_rescale=0.0,
    )
    request.update(kw)
    steps = []

    def on_step(p, i, t, tensors):
        steps.append(tensors["latents"].clone())
        return tensors

    # The initial latents are the generator's first randn, scaled by the scheduler's sigma.
    extra = {}
    if request["eta"]:
        extra["eta"] = request["eta"]
    if request["guidance_rescale"]:
        extra["guidance_rescale"] = request["guidance_rescale"]
    generator = torch.Generator("cpu").manual_seed(request["seed"])
    out = pipe(
        prompt=request["prompt"],
        negative_prompt=request["negative_prompt"],
        num_inference_steps=request["num_inference_steps"],
        guidance_scale=request["guidance_scale"],
        width=request["width"],
        height=request["height"],
        num_images_per_prompt=request["num_images_per_prompt"],
        generator=generator,
        output_type="np",
        callback_on_step_end=on_step,
        **extra,
    )
    images = out.images  # float in [0, 1], (n, h, w, 3)
    as_bytes = (images * 255).round().astype("uint8")

    tensors = {f"latents_{i + 1}": s.contiguous() for i, s in enumerate(steps)}
    tensors["images"] = torch.from_numpy(np.ascontiguousarray(as_bytes))
    save_file(tensors, os.path.join(OUT, name + ".safetensors"))
    meta = {
        "request": dict(request, scheduler=scheduler),
        "model": os.path.basename(model_dir.rstrip("/")),
        "steps_recorded": len(steps),
        "diffusers": diffusers.__version__,
        "torch": torch.__version__,
    }
    with open(os.path.join(OUT, name + ".json"), "w") as f:
        json.dump(meta, f, indent=1, sort_keys=True)
    print(name, len(steps), "steps")


def record_model(pipe, model_dir, key):
    """Per model: weight hashes, token ids and text embeddings of PROMPT and NEGATIVE."""
    tok = pipe.tokenizer
    ids = tok(PROMPT, padding="max_length", max_length=tok.model_max_length, truncation=True, return_tensors="pt").input_ids
    neg = tok(NEGATIVE, padding="max_length", max_length=tok.model_max_length, truncation=True, return_tensors="pt").input_ids
    with torch.no_grad():
        emb = pipe.text_encoder(ids)[0]
        neg_emb = pipe.text_encoder(neg)[0]
    save_file(
        {
            "prompt_ids": ids[0].to(torch.int64).contiguous(),
            "negative_prompt_ids": neg[0].to(torch.int64).contiguous(),
            "prompt_embeddings": emb[0].contiguous(),
            "negative_prompt_embeddings": neg_emb[0].contiguous(),
        },
        os.path.join(OUT, f"{key}-text.safetensors"),
    )
    hashes = {}
    for sub, fname in [
        ("text_encoder", "model.safetensors"),
        ("unet", "diffusion_pytorch_model.safetensors"),
        ("vae", "diffusion_pytorch_model.safetensors"),
    ]:
        hashes[f"{sub}/{fname}"] = sha256(os.path.join(model_dir, sub, fname))
    with open(os.path.join(OUT, f"{key}-model.json"), "w") as f:
        json.dump({"sha256": hashes, "prompt": PROMPT, "negative_prompt": NEGATIVE}, f, indent=1, sort_keys=True)


def main():
    eps_dir, v_dir = sys.argv[1], sys.argv[2]
    os.makedirs(OUT, exist_ok=True)
    torch.set_num_threads(2)
    for key, model_dir in [("epsilon", eps_dir), ("v_prediction", v_dir)]:
        pipe = diffusers.StableDiffusionPipeline.from_pretrained(model_dir, safety_checker=None)
        pipe.set_progress_bar_config(disable=True)
        assert pipe.scheduler.config.prediction_type == key, pipe.scheduler.config
        record_model(pipe, model_dir, key)
        for scheduler in SCHEDULERS:
            run_case(pipe, model_dir, f"{key}-{scheduler}", scheduler)
        run_case(pipe, model_dir, f"{key}-batch2-rescale", "EulerAncestralDiscreteScheduler", num_images_per_prompt=2, guidance_rescale=0.7, seed=7)
        run_case(pipe, model_dir, f"{key}-unguided", "DDIMScheduler", guidance_scale=1.0, seed=3, width=64)
        run_case(pipe, model_dir, f"{key}-ddim-eta", "DDIMScheduler", eta=0.5, seed=11)


if __name__ == "__main__":
    main()
