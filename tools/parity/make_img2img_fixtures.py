"""Image-to-image and inpainting fixtures from diffusers' own pipelines on the tiny models.

For crates/engine/tests/img2img.rs. Usage (after building the binary):

    target/debug/sie model tiny --out /tmp/tiny-eps --prediction-type epsilon
    target/debug/sie model tiny --out /tmp/tiny-inpaint --inpainting
    /path/to/venv/bin/python tools/parity/make_img2img_fixtures.py /tmp/tiny-eps /tmp/tiny-inpaint

The inputs are made here from a fixed formula (an RGB image of another size than the
output, so that diffusers' Lanczos resize is part of what is compared, and an RGB mask of a
third size with values on both sides of the binarisation threshold); they are stored as
uint8 tensors beside the outputs, so the Rust test feeds the engine the same pixels. It
also records Pillow's Lanczos resize of random images at sizes that take both of Pillow
13's pass orders (`resize.safetensors`).

Image-to-image: `StableDiffusionImg2ImgPipeline` has no width/height; the image is resized
first with the pipeline's own `image_processor.resize` (what `preprocess(image, h, w)`
does), which is what our API does when a request gives width and height. Inpainting:
`StableDiffusionInpaintPipeline` with the 9-channel model and with the ordinary 4-channel
one (the known region re-imposed every step). Every case records the latents after every
step (`callback_on_step_end`) and the final uint8 image.
"""

import hashlib
import json
import os
import sys

import numpy as np
import PIL
import PIL.Image
import torch
from safetensors.torch import save_file

import diffusers

OUT = os.path.join(os.path.dirname(__file__), "..", "..", "crates", "engine", "tests", "fixtures", "img2img")

PROMPT = "An oil painting of a salad"
NEGATIVE = "blurry, low quality"
WIDTH, HEIGHT = 72, 64


def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        h.update(f.read())
    return h.hexdigest()


def input_image():
    """80x88 (w x h) RGB: smooth gradients with a sharp-edged square, so resizing rings."""
    h, w = 88, 80
    y, x = np.mgrid[0:h, 0:w]
    r = (x * 255 / (w - 1)).round()
    g = (y * 255 / (h - 1)).round()
    b = 128 + 100 * np.sin(x / 5.0) * np.cos(y / 7.0)
    square = (x > 20) & (x < 50) & (y > 30) & (y < 60)
    r[square], g[square], b[square] = 250, 20, 30
    return np.stack([r, g, b], axis=-1).clip(0, 255).astype(np.uint8)


def input_mask():
    """40x36 RGB: white (repaint) on the right, a ramp through grey in the middle, so the
    grayscale conversion and the 0.5 threshold both matter."""
    h, w = 36, 40
    y, x = np.mgrid[0:h, 0:w]
    v = ((x - 12) * 255 / 16).clip(0, 255)
    r = v
    g = (v + 6 * np.sin(y)).clip(0, 255)
    b = (v - 9).clip(0, 255)
    return np.stack([r, g, b], axis=-1).round().astype(np.uint8)


def record(name, model_dir, request, steps, images):
    tensors = {f"latents_{i + 1}": s.contiguous() for i, s in enumerate(steps)}
    tensors["images"] = torch.from_numpy(np.ascontiguousarray((images * 255).round().astype("uint8")))
    tensors["image"] = torch.from_numpy(input_image())
    if request["pipeline"] == "inpaint":
        tensors["mask"] = torch.from_numpy(input_mask())
    save_file(tensors, os.path.join(OUT, name + ".safetensors"))
    meta = {
        "request": request,
        "model": os.path.basename(model_dir.rstrip("/")),
        "steps_recorded": len(steps),
        "diffusers": diffusers.__version__,
        "torch": torch.__version__,
    }
    with open(os.path.join(OUT, name + ".json"), "w") as f:
        json.dump(meta, f, indent=1, sort_keys=True)
    print(name, len(steps), "steps")


def run(pipe, model_dir, name, pipeline, scheduler, strength, **kw):
    pipe.scheduler = getattr(diffusers, scheduler).from_config(pipe.scheduler.config)
    request = dict(
        pipeline=pipeline,
        prompt=PROMPT,
        negative_prompt=NEGATIVE,
        num_inference_steps=10,
        guidance_scale=7.5,
        width=WIDTH,
        height=HEIGHT,
        num_images_per_prompt=1,
        seed=42,
        eta=0.0,
        strength=strength,
        scheduler=scheduler,
    )
    request.update(kw)
    steps = []

    def on_step(p, i, t, tensors):
        steps.append(tensors["latents"].clone())
        return tensors

    image = PIL.Image.fromarray(input_image())
    args = dict(
        prompt=request["prompt"],
        negative_prompt=request["negative_prompt"],
        num_inference_steps=request["num_inference_steps"],
        guidance_scale=request["guidance_scale"],
        num_images_per_prompt=request["num_images_per_prompt"],
        strength=strength,
        generator=torch.Generator("cpu").manual_seed(request["seed"]),
        output_type="np",
        callback_on_step_end=on_step,
    )
    if request["eta"]:
        args["eta"] = request["eta"]
    if pipeline == "img2img":
        # What VaeImageProcessor.preprocess(image, height, width) does first.
        args["image"] = pipe.image_processor.resize(image, HEIGHT, WIDTH)
    else:
        args.update(
            image=image,
            mask_image=PIL.Image.fromarray(input_mask()),
            width=request["width"],
            height=request["height"],
        )
    out = pipe(**args)
    record(name, model_dir, request, steps, out.images)


# (w, h) -> (W, H): Pillow 13 runs the horizontal pass first unless the height shrinks by
# more than twice as many pixels as the width; both orders, up and down, one axis only.
RESIZES = [(80, 88, 72, 64), (75, 70, 72, 64), (40, 36, 72, 64), (30, 60, 50, 20),
           (50, 20, 30, 60), (100, 90, 64, 72), (64, 64, 40, 100), (33, 47, 64, 64),
           (90, 41, 64, 41), (41, 90, 41, 64), (17, 300, 64, 64), (300, 17, 64, 64)]


def record_resizes():
    """Random RGB images and what Pillow's LANCZOS resize makes of them."""
    rng = np.random.default_rng(0)
    tensors = {}
    for i, (w, h, W, H) in enumerate(RESIZES):
        src = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        tensors[f"in_{i}"] = torch.from_numpy(src)
        out = np.array(PIL.Image.fromarray(src).resize((W, H), PIL.Image.LANCZOS))
        tensors[f"out_{i}"] = torch.from_numpy(np.ascontiguousarray(out))
    save_file(tensors, os.path.join(OUT, "resize.safetensors"))
    with open(os.path.join(OUT, "resize.json"), "w") as f:
        json.dump({"cases": len(RESIZES), "pillow": PIL.__version__}, f, indent=1)


def record_model(model_dir, key):
    hashes = {}
    for sub, fname in [
        ("text_encoder", "model.safetensors"),
        ("unet", "diffusion_pytorch_model.safetensors"),
        ("vae", "diffusion_pytorch_model.safetensors"),
    ]:
        hashes[f"{sub}/{fname}"] = sha256(os.path.join(model_dir, sub, fname))
    with open(os.path.join(OUT, f"{key}-model.json"), "w") as f:
        json.dump({"sha256": hashes}, f, indent=1, sort_keys=True)


def main():
    eps_dir, inpaint_dir = sys.argv[1], sys.argv[2]
    os.makedirs(OUT, exist_ok=True)
    torch.set_num_threads(2)
    record_model(eps_dir, "epsilon")
    record_model(inpaint_dir, "inpainting")
    record_resizes()

    pipe = diffusers.StableDiffusionImg2ImgPipeline.from_pretrained(eps_dir, safety_checker=None)
    pipe.set_progress_bar_config(disable=True)
    for scheduler in ["LMSDiscreteScheduler", "DDIMScheduler", "PNDMScheduler", "EulerAncestralDiscreteScheduler"]:
        for strength in (0.3, 0.8):
            run(pipe, eps_dir, f"img2img-{scheduler}-{strength}", "img2img", scheduler, strength)
    # Every other scheduler of the contract once (their noise is added differently), and
    # several images per prompt with DDIM's eta (noise drawn during the steps as well).
    for scheduler in ["EulerDiscreteScheduler", "HeunDiscreteScheduler", "DPMSolverMultistepScheduler",
                      "UniPCMultistepScheduler", "DDPMScheduler"]:
        run(pipe, eps_dir, f"img2img-{scheduler}-0.6", "img2img", scheduler, 0.6)
    run(pipe, eps_dir, "img2img-batch2-eta", "img2img", "DDIMScheduler", 0.7, num_images_per_prompt=2, eta=0.5, seed=7)

    pipe = diffusers.StableDiffusionInpaintPipeline.from_pretrained(inpaint_dir, safety_checker=None)
    pipe.set_progress_bar_config(disable=True)
    assert pipe.unet.config.in_channels == 9
    run(pipe, inpaint_dir, "inpaint9-PNDMScheduler-1.0", "inpaint", "PNDMScheduler", 1.0)
    run(pipe, inpaint_dir, "inpaint9-EulerAncestralDiscreteScheduler-0.75", "inpaint", "EulerAncestralDiscreteScheduler", 0.75)
    run(pipe, inpaint_dir, "inpaint9-DDIMScheduler-0.8-batch2", "inpaint", "DDIMScheduler", 0.8, num_images_per_prompt=2, seed=5)

    pipe = diffusers.StableDiffusionInpaintPipeline.from_pretrained(eps_dir, safety_checker=None)
    pipe.set_progress_bar_config(disable=True)
    assert pipe.unet.config.in_channels == 4
    run(pipe, eps_dir, "inpaint4-DDIMScheduler-1.0", "inpaint", "DDIMScheduler", 1.0)
    run(pipe, eps_dir, "inpaint4-LMSDiscreteScheduler-0.7", "inpaint", "LMSDiscreteScheduler", 0.7)
    run(pipe, eps_dir, "inpaint4-HeunDiscreteScheduler-0.8", "inpaint", "HeunDiscreteScheduler", 0.8)
    run(pipe, eps_dir, "inpaint4-DPMSolverMultistepScheduler-0.5", "inpaint", "DPMSolverMultistepScheduler", 0.5)


if __name__ == "__main__":
    main()
