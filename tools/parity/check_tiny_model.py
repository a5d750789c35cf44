"""Shows that diffusers loads the directory `sie model tiny` writes, unchanged.

    target/debug/sie model tiny --out /tmp/tiny --prediction-type v-prediction
    /path/to/venv/bin/python tools/parity/check_tiny_model.py /tmp/tiny

Fails (non-zero exit) if from_pretrained reports missing or unexpected weights,
or if the pipeline cannot run two steps. A directory written with
`--safety-checker` is checked with its checker too.
"""

import sys

import torch

import diffusers
from diffusers import StableDiffusionPipeline


def main():
    model_dir = sys.argv[1]
    for name in ("unet", "vae"):
        cls = getattr(diffusers, {"unet": "UNet2DConditionModel", "vae": "AutoencoderKL"}[name])
        _, info = cls.from_pretrained(model_dir, subfolder=name, output_loading_info=True)
        bad = {k: v for k, v in info.items() if v}
        assert not bad, f"{name}: {bad}"
    from transformers import CLIPTextModel

    _, info = CLIPTextModel.from_pretrained(model_dir, subfolder="text_encoder", output_loading_info=True)
    bad = {k: v for k, v in info.items() if v}
    assert not bad, f"text_encoder: {bad}"

    import os

    if os.path.isdir(os.path.join(model_dir, "safety_checker")):
        # Written by `sie model tiny --safety-checker`: the checker loads with every weight used.
        from diffusers.pipelines.stable_diffusion.safety_checker import StableDiffusionSafetyChecker

        _, info = StableDiffusionSafetyChecker.from_pretrained(
            model_dir, subfolder="safety_checker", output_loading_info=True
        )
        bad = {k: v for k, v in info.items() if v}
        assert not bad, f"safety_checker: {bad}"

    pipe = StableDiffusionPipeline.from_pretrained(model_dir)
    pipe.set_progress_bar_config(disable=True)
    out = pipe("An oil painting of a salad", num_inference_steps=2, width=64, height=64,
               generator=torch.Generator("cpu").manual_seed(0))
    image = out.images[0]
    print("loaded", model_dir, "scheduler", type(pipe.scheduler).__name__,
          "prediction", pipe.scheduler.config.prediction_type, "image", image.size,
          "safety_checker", type(pipe.safety_checker).__name__,
          "nsfw_content_detected", out.nsfw_content_detected)


if __name__ == "__main__":
    main()
