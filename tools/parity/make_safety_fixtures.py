"""Safety-checker fixtures from diffusers' StableDiffusionSafetyChecker on the tiny checker.

For crates/engine/tests/safety.rs. Usage (after building the binary):

    target/debug/sie model tiny --out /tmp/tiny-checker --safety-checker --checker-threshold 0
    /path/to/venv/bin/python tools/parity/make_safety_fixtures.py /tmp/tiny-checker

The directory is what `sie model tiny --safety-checker` writes with its default
seed; the fixture records the checker's weight hash and the Rust test refuses
to compare against a checker that differs (regenerate the fixtures then).

What it records:
- that `StableDiffusionPipeline.from_pretrained(dir)` loads the checker and
  the feature extractor, and that the checker's weights load with no missing
  or unexpected keys;
- 8 uint8 RGB images of different sizes and aspect ratios (smaller and larger
  than the checker's input, so Pillow's bicubic both up- and downsamples, in
  both of Pillow 13's pass orders, with noise that overshoots so the uint8
  clipping between passes matters);
- the pixel values the pipeline's feature extractor (transformers'
  CLIPImageProcessor; without torchvision its PIL backend) makes of the first 4;
- for all 8 in one batch: the cosine similarities to the special-care and
  concept embeddings, the thresholds used, diffusers' rounded scores and the
  flags. The thresholds are moved off the written ones so that both outcomes
  happen: one special-care threshold at the median (so some images get the
  0.01 adjustment), one concept threshold at the median (so some images are
  flagged and some not), and one concept threshold 0.005 above an adjusted
  image's similarity (so that image is flagged only because of the adjustment).
"""

import hashlib
import json
import os
import sys
import warnings

import numpy as np
import PIL.Image
import torch
from safetensors.torch import save_file

import diffusers
import transformers
from diffusers import StableDiffusionPipeline
from diffusers.pipelines.stable_diffusion.safety_checker import StableDiffusionSafetyChecker, cosine_distance

OUT = os.path.join(os.path.dirname(__file__), "..", "..", "crates", "engine", "tests", "fixtures", "safety")

# (width, height) of each image; the first 4 also get their pixel values recorded.
# Resized to a shortest side of 56: up in both directions; down, height shrinking by over twice
# as many pixels as the width (Pillow 13 then runs its vertical pass first); down, horizontal pass
# first; unchanged. Then more shapes for the scores.
SIZES = [(64, 48), (60, 200), (150, 90), (56, 56), (130, 57), (17, 33), (240, 60), (40, 100)]


def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        h.update(f.read())
    return h.hexdigest()


def make_image(rng, width, height):
    """A gradient with blobs and strong noise, clipped: image-like, but with edges that make
    bicubic overshoot."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float64)
    base = np.stack(
        [
            255 * x / max(width - 1, 1),
            255 * y / max(height - 1, 1),
            128 + 100 * np.sin(x / 5.0) * np.cos(y / 7.0),
        ],
        axis=-1,
    )
    noise = rng.normal(0, 60, size=(height, width, 3))
    return np.clip(np.round(base + noise), 0, 255).astype(np.uint8)


def scores(cos_special, cos_concept, special_thresholds, concept_thresholds):
    """diffusers' loop in StableDiffusionSafetyChecker.forward, keeping the scores it discards."""
    out = []
    for i in range(cos_special.shape[0]):
        adjustment = 0.0
        special = []
        for j in range(cos_special.shape[1]):
            s = round(cos_special[i][j] - special_thresholds[j] + adjustment, 3)
            special.append(float(s))
            if s > 0:
                adjustment = 0.01
        concept = []
        for j in range(cos_concept.shape[1]):
            concept.append(float(round(cos_concept[i][j] - concept_thresholds[j] + adjustment, 3)))
        out.append((special, concept, any(c > 0 for c in concept)))
    return out


def main():
    model_dir = sys.argv[1]
    os.makedirs(OUT, exist_ok=True)

    checker_dir = os.path.join(model_dir, "safety_checker")
    _, info = StableDiffusionSafetyChecker.from_pretrained(checker_dir, output_loading_info=True)
    bad = {k: v for k, v in info.items() if v}
    assert not bad, f"safety_checker: {bad}"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pipe = StableDiffusionPipeline.from_pretrained(model_dir)
    assert isinstance(pipe.safety_checker, StableDiffusionSafetyChecker), type(pipe.safety_checker)
    assert pipe.feature_extractor is not None
    checker, fe = pipe.safety_checker, pipe.feature_extractor
    print("pipeline loaded with", type(checker).__name__, "and", type(fe).__name__)

    rng = np.random.default_rng(7)
    images = [make_image(rng, w, h) for (w, h) in SIZES]
    tensors = {f"image_{i}": torch.from_numpy(img) for i, img in enumerate(images)}

    # The pipeline hands the feature extractor PIL images (numpy_to_pil of the uint8 images).
    pil = [PIL.Image.fromarray(img) for img in images]
    pixels = [fe(p, return_tensors="pt").pixel_values[0] for p in pil]
    for i in range(4):
        tensors[f"pixel_values_{i}"] = pixels[i].contiguous()
    clip_input = torch.stack(pixels)

    with torch.no_grad():
        pooled = checker.vision_model(clip_input)[1]
        embeds = checker.visual_projection(pooled)
        cos_special = cosine_distance(embeds, checker.special_care_embeds).cpu().float().numpy()
        cos_concept = cosine_distance(embeds, checker.concept_embeds).cpu().float().numpy()

    # Thresholds that make both outcomes happen (see the module docstring).
    special_t = np.full(cos_special.shape[1], 1.0, dtype=np.float32)
    special_t[1] = np.float32(np.median(cos_special[:, 1]))
    concept_t = np.full(cos_concept.shape[1], 1.0, dtype=np.float32)
    concept_t[4] = np.float32(np.median(cos_concept[:, 4]))
    adjusted = [i for i in range(len(images)) if round(cos_special[i][1] - float(special_t[1]), 3) > 0]
    assert adjusted, "no image gets the special-care adjustment; pick other thresholds"
    target = adjusted[0]
    concept_t[11] = np.float32(cos_concept[target][11] + 0.005)
    with torch.no_grad():
        checker.special_care_embeds_weights.copy_(torch.from_numpy(special_t))
        checker.concept_embeds_weights.copy_(torch.from_numpy(concept_t))
    # Python floats of the f32 thresholds, as `.item()` gives them to diffusers' loop.
    special_f = [checker.special_care_embeds_weights[j].item() for j in range(len(special_t))]
    concept_f = [checker.concept_embeds_weights[j].item() for j in range(len(concept_t))]
    expected = scores(cos_special, cos_concept, special_f, concept_f)

    # diffusers' own forward must agree on the flags, and black out exactly the flagged images.
    float_images = np.stack([np.zeros((4, 4, 3)) + 0.5 for _ in images])
    blacked, flags = checker(clip_input=clip_input, images=float_images.copy())
    assert flags == [e[2] for e in expected], (flags, expected)
    for img, flag in zip(blacked, flags):
        assert (img == 0).all() == flag
    assert any(flags) and not all(flags), f"thresholds must exercise both sides, got {flags}"
    # The image flagged only through the adjustment.
    assert expected[target][2] and round(cos_concept[target][11] - concept_f[11], 3) <= 0

    tensors["cos_special"] = torch.from_numpy(cos_special)
    tensors["cos_concept"] = torch.from_numpy(cos_concept)
    tensors["special_thresholds"] = torch.from_numpy(special_t)
    tensors["concept_thresholds"] = torch.from_numpy(concept_t)
    tensors["special_scores"] = torch.tensor([e[0] for e in expected], dtype=torch.float32)
    tensors["concept_scores"] = torch.tensor([e[1] for e in expected], dtype=torch.float32)
    tensors["flags"] = torch.tensor([e[2] for e in expected], dtype=torch.uint8)
    save_file({k: v.contiguous() for k, v in tensors.items()}, os.path.join(OUT, "checker.safetensors"))
    meta = {
        "sizes": SIZES,
        "pixel_values_recorded": 4,
        "adjusted_image": target,
        "weights_sha256": sha256(os.path.join(checker_dir, "model.safetensors")),
        "feature_extractor_class": type(fe).__name__,
        "diffusers": diffusers.__version__,
        "transformers": transformers.__version__,
        "torch": torch.__version__,
        "pillow": PIL.__version__,
        "numpy": np.__version__,
    }
    with open(os.path.join(OUT, "checker.json"), "w") as f:
        json.dump(meta, f, indent=1, sort_keys=True)
    print("flags", flags, "adjusted image", target)


if __name__ == "__main__":
    main()
