"""Full-size SD 2.1 model directories with random weights, made by diffusers itself.

For stabilityai/stable-diffusion-2-1 and -2-1-base this builds every component from the
published config files (tools/parity/published_configs.py) with diffusers' / transformers' own
classes and random weights, wraps them in a StableDiffusionPipeline and saves it with
`save_pretrained(safe_serialization=True)`, then rewrites every config file so the directory
carries the published files byte for byte. Four directories come out of it:

  OUT_DIR/sd21            fp32 weights, *.safetensors
  OUT_DIR/sd21-fp16       the same weights .half()'d, saved with variant="fp16" (*.fp16.safetensors)
  OUT_DIR/sd21-base       fp32, other random weights
  OUT_DIR/sd21-base-fp16  the same .half()'d, variant="fp16"

How each piece is made:

* unet:        UNet2DConditionModel.from_config(<published unet/config.json>)
* vae:         AutoencoderKL.from_config(<published vae/config.json>)
* text_encoder: CLIPTextModel(CLIPTextConfig(**<published text_encoder/config.json>))
* scheduler:   <_class_name>.from_config(<published scheduler_config.json>) (DDIM / PNDM)
* tokenizer:   vocab.json / merges.txt derived from OpenAI's merge list
               (crates/engine/assets/bpe_simple_vocab_16e6.txt.gz) by
               make_tokenizer_fixtures.clip_vocabulary_files() - the same bytes the tokenizer
               fixtures and the Rust side use - plus the published tokenizer_config.json and
               special_tokens_map.json. vocab.json is compact JSON (862 KB), so it is not
               byte-identical to the published 1.06 MB file, but it maps the same 49408 tokens.
* feature_extractor: only the published preprocessor_config.json (the published model_index
               names a CLIPImageProcessor, so from_pretrained loads one); no safety checker.

Seeds: torch.manual_seed(21) before building sd21's components, 2101 for sd21-base, so the two
models have different weights. The fp16 directories hold exactly the fp32 weights rounded to
fp16 (Tensor.half()).

After saving, model_index.json, */config.json, scheduler/scheduler_config.json, tokenizer/*.json
and feature_extractor/preprocessor_config.json are replaced by the published texts
(`published_configs.dumps`), and the tokenizer folder is reduced to the four published files.
What diffusers/transformers had written instead is recorded in OUT_DIR/manifest.json.

Finally every directory is loaded back with StableDiffusionPipeline.from_pretrained (variant
"fp16" for the fp16 ones) while log records and Python warnings are captured, and each loaded
module's state_dict is compared key by key and value by value with the safetensors files.

Run: /work/venv-parity/bin/python tools/parity/make_published_random_models.py OUT_DIR
     [--only sd21|sd21-base] [--no-verify] [--force]
"""

import argparse
import gc
import hashlib
import json
import logging
import os
import shutil
import sys
import time
import warnings

import torch
from safetensors import safe_open

import diffusers
import transformers
from diffusers import AutoencoderKL, StableDiffusionPipeline, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from make_tokenizer_fixtures import clip_vocabulary_files  # noqa: E402
from published_configs import SD21, SD21_BASE, dumps  # noqa: E402

MODELS = {
    "sd21": {"repo": "stabilityai/stable-diffusion-2-1", "configs": SD21, "seed": 21},
    "sd21-base": {"repo": "stabilityai/stable-diffusion-2-1-base", "configs": SD21_BASE, "seed": 2101},
}

TOKENIZER_FILES = ["merges.txt", "special_tokens_map.json", "tokenizer_config.json", "vocab.json"]


def log(msg):
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def write_text(path, text):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        f.write(text)


def write_tokenizer_dir(path, configs, vocab_json, merges_txt):
    if os.path.isdir(path):
        shutil.rmtree(path)
    os.makedirs(path)
    write_text(os.path.join(path, "vocab.json"), vocab_json)
    write_text(os.path.join(path, "merges.txt"), merges_txt)
    write_text(os.path.join(path, "tokenizer_config.json"), dumps(configs["tokenizer/tokenizer_config.json"]))
    write_text(os.path.join(path, "special_tokens_map.json"), dumps(configs["tokenizer/special_tokens_map.json"]))


def build_pipeline(configs, seed, tokenizer_dir):
    torch.manual_seed(seed)
    t0 = time.time()
    unet = UNet2DConditionModel.from_config(configs["unet/config.json"])
    log(f"  unet built ({sum(p.numel() for p in unet.parameters()) / 1e6:.1f}M params, {time.time() - t0:.1f}s)")
    t0 = time.time()
    vae = AutoencoderKL.from_config(configs["vae/config.json"])
    log(f"  vae built ({sum(p.numel() for p in vae.parameters()) / 1e6:.1f}M params, {time.time() - t0:.1f}s)")
    t0 = time.time()
    text_encoder = CLIPTextModel(CLIPTextConfig(**configs["text_encoder/config.json"]))
    log(f"  text_encoder built ({sum(p.numel() for p in text_encoder.parameters()) / 1e6:.1f}M params, {time.time() - t0:.1f}s)")
    sched_cfg = configs["scheduler/scheduler_config.json"]
    scheduler = getattr(diffusers, sched_cfg["_class_name"]).from_config(sched_cfg)
    tokenizer = CLIPTokenizer.from_pretrained(tokenizer_dir)
    for m in (unet, vae, text_encoder):
        m.eval()
    return StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


def read_json(path):
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def diff_config(saved, published):
    """What save_pretrained wrote that differs from the published file."""
    added = sorted(k for k in saved if k not in published)
    dropped = sorted(k for k in published if k not in saved)
    changed = {k: [published[k], saved[k]] for k in published if k in saved and saved[k] != published[k]}
    return {"added": added, "dropped": dropped, "changed": changed}


def finalize_dir(path, configs, vocab_json, merges_txt):
    """Replace what save_pretrained wrote by the published config files; return the differences."""
    differences = {}
    for name, cfg in configs.items():
        target = os.path.join(path, name)
        if name.startswith("tokenizer/") or name.startswith("feature_extractor/"):
            continue
        if os.path.exists(target):
            differences[name] = diff_config(read_json(target), cfg)
        else:
            differences[name] = "not written by save_pretrained"
        write_text(target, dumps(cfg))
    tok_dir = os.path.join(path, "tokenizer")
    differences["tokenizer/"] = {"saved_files": sorted(os.listdir(tok_dir)) if os.path.isdir(tok_dir) else []}
    write_tokenizer_dir(tok_dir, configs, vocab_json, merges_txt)
    fe = "feature_extractor/preprocessor_config.json"
    if os.path.isdir(os.path.join(path, "feature_extractor")):
        shutil.rmtree(os.path.join(path, "feature_extractor"))
    write_text(os.path.join(path, fe), dumps(configs[fe]))
    # Byte check of every config file against the published text.
    for name, cfg in configs.items():
        with open(os.path.join(path, name), encoding="utf-8") as f:
            assert f.read() == dumps(cfg), f"{path}/{name} is not the published text"
    return differences


def dir_listing(path):
    out = {}
    for root, _, files in os.walk(path):
        for fn in sorted(files):
            p = os.path.join(root, fn)
            out[os.path.relpath(p, path)] = os.path.getsize(p)
    return dict(sorted(out.items()))


class Capture(logging.Handler):
    def __init__(self):
        super().__init__(level=logging.WARNING)
        self.records = []

    def emit(self, record):
        self.records.append(f"{record.name}: {record.levelname}: {record.getMessage()}")


def verify_dir(path, variant, configs):
    """Load the directory back as diffusers would and compare it with the files."""
    handler = Capture()
    loggers = [logging.getLogger("diffusers"), logging.getLogger("transformers")]
    for lg in loggers:
        lg.addHandler(handler)
    diffusers.utils.logging.set_verbosity_warning()
    transformers.utils.logging.set_verbosity_warning()
    dtype = torch.float16 if variant == "fp16" else torch.float32
    t0 = time.time()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        pipe = StableDiffusionPipeline.from_pretrained(path, variant=variant, dtype=dtype)
    load_s = time.time() - t0
    for lg in loggers:
        lg.removeHandler(handler)
    messages = handler.records + [f"python warning: {w.category.__name__}: {w.message}" for w in caught]

    result = {"load_seconds": round(load_s, 1), "messages": messages, "components": {}}
    suffix = f".{variant}.safetensors" if variant else ".safetensors"
    files = {
        "unet": os.path.join(path, "unet", "diffusion_pytorch_model" + suffix),
        "vae": os.path.join(path, "vae", "diffusion_pytorch_model" + suffix),
        "text_encoder": os.path.join(path, "text_encoder", "model" + suffix),
    }
    problems = []
    for name, fn in files.items():
        module = getattr(pipe, name)
        sd = module.state_dict()
        with safe_open(fn, framework="pt") as f:
            keys = set(f.keys())
            missing = sorted(set(sd) - keys)
            unexpected = sorted(keys - set(sd))
            mismatched = []
            for k in sorted(keys & set(sd)):
                t = f.get_tensor(k)
                if t.dtype != dtype or sd[k].dtype != dtype or not torch.equal(t, sd[k]):
                    mismatched.append(k)
        result["components"][name] = {
            "file": os.path.relpath(fn, path),
            "tensors": len(keys),
            "missing_from_file": missing,
            "unexpected_in_file": unexpected,
            "value_or_dtype_mismatch": mismatched[:20],
        }
        if missing or unexpected or mismatched:
            problems.append(f"{name}: {len(missing)} missing, {len(unexpected)} unexpected, {len(mismatched)} mismatched")

    sched = pipe.scheduler
    want_sched = configs["scheduler/scheduler_config.json"]
    if type(sched).__name__ != want_sched["_class_name"] or sched.config.prediction_type != want_sched["prediction_type"]:
        problems.append(f"scheduler is {type(sched).__name__}/{sched.config.prediction_type}")
    unet_cfg = configs["unet/config.json"]
    if pipe.unet.config.upcast_attention != unet_cfg.get("upcast_attention", False):
        problems.append("unet upcast_attention differs")
    if pipe.unet.config.sample_size != unet_cfg["sample_size"]:
        problems.append("unet sample_size differs")
    ids = pipe.tokenizer(
        "a photo of an astronaut riding a horse on mars",
        padding="max_length",
        max_length=pipe.tokenizer.model_max_length,
        truncation=True,
    ).input_ids
    result["tokenizer"] = {
        "class": type(pipe.tokenizer).__name__,
        "pad_token": pipe.tokenizer.pad_token,
        "pad_token_id": pipe.tokenizer.pad_token_id,
        "ids": ids,
    }
    if pipe.tokenizer.pad_token_id != 0 or ids[12] != 0:
        problems.append(f"tokenizer pads with {pipe.tokenizer.pad_token_id}, not 0")
    result["feature_extractor"] = type(pipe.feature_extractor).__name__ if pipe.feature_extractor is not None else None
    result["safety_checker"] = None if pipe.safety_checker is None else type(pipe.safety_checker).__name__
    result["problems"] = problems
    del pipe
    gc.collect()
    return result


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out_dir")
    ap.add_argument("--only", choices=sorted(MODELS), action="append")
    ap.add_argument("--no-verify", action="store_true")
    ap.add_argument("--force", action="store_true", help="replace existing output directories")
    args = ap.parse_args()

    torch.set_grad_enabled(False)
    out_dir = os.path.abspath(args.out_dir)
    os.makedirs(out_dir, exist_ok=True)
    vocab_json, merges_txt = clip_vocabulary_files()
    manifest_path = os.path.join(out_dir, "manifest.json")
    manifest = read_json(manifest_path) if os.path.exists(manifest_path) else {}
    manifest.update(
        {
            "made_by": "tools/parity/make_published_random_models.py",
            "torch": torch.__version__,
            "diffusers": diffusers.__version__,
            "transformers": transformers.__version__,
            "vocab_json_md5": hashlib.md5(vocab_json.encode("utf-8")).hexdigest(),
            "merges_txt_md5": hashlib.md5(merges_txt.encode("utf-8")).hexdigest(),
        }
    )
    manifest.setdefault("models", {})
    t_all = time.time()
    failures = []

    for key in args.only or list(MODELS):
        spec = MODELS[key]
        configs = spec["configs"]
        d32 = os.path.join(out_dir, key)
        d16 = os.path.join(out_dir, key + "-fp16")
        for d in (d32, d16):
            if os.path.exists(d):
                if not args.force:
                    raise SystemExit(f"{d} exists (use --force to replace it)")
                shutil.rmtree(d)
        entry = {"repo": spec["repo"], "seed": spec["seed"], "timings_s": {}}
        log(f"{key}: building from the published configs of {spec['repo']} (seed {spec['seed']})")
        tok_tmp = os.path.join(out_dir, f".tokenizer-{key}")
        write_tokenizer_dir(tok_tmp, configs, vocab_json, merges_txt)
        t0 = time.time()
        pipe = build_pipeline(configs, spec["seed"], tok_tmp)
        entry["timings_s"]["build"] = round(time.time() - t0, 1)

        t0 = time.time()
        pipe.save_pretrained(d32, safe_serialization=True)
        entry["timings_s"]["save_fp32"] = round(time.time() - t0, 1)
        entry["rewritten_fp32"] = finalize_dir(d32, configs, vocab_json, merges_txt)
        log(f"  saved {d32} ({entry['timings_s']['save_fp32']}s)")

        t0 = time.time()
        for m in (pipe.unet, pipe.vae, pipe.text_encoder):
            m.half()
        pipe.save_pretrained(d16, safe_serialization=True, variant="fp16")
        entry["timings_s"]["save_fp16"] = round(time.time() - t0, 1)
        entry["rewritten_fp16"] = finalize_dir(d16, configs, vocab_json, merges_txt)
        log(f"  saved {d16} ({entry['timings_s']['save_fp16']}s)")
        del pipe
        gc.collect()
        shutil.rmtree(tok_tmp)

        entry["files"] = {key: dir_listing(d32), key + "-fp16": dir_listing(d16)}
        if not args.no_verify:
            for d, variant in ((d32, None), (d16, "fp16")):
                t0 = time.time()
                res = verify_dir(d, variant, configs)
                entry["timings_s"][f"verify_{os.path.basename(d)}"] = round(time.time() - t0, 1)
                entry[f"verify_{os.path.basename(d)}"] = res
                log(f"  verified {d}: load {res['load_seconds']}s, problems: {res['problems'] or 'none'}")
                for m in res["messages"]:
                    log(f"    load message: {m}")
                failures += [f"{d}: {p}" for p in res["problems"]]
        manifest["models"][key] = entry
        with open(manifest_path, "w", encoding="utf-8") as f:
            json.dump(manifest, f, indent=2, ensure_ascii=False)
            f.write("\n")

    log(f"done in {time.time() - t_all:.0f}s; manifest: {manifest_path}")
    if failures:
        raise SystemExit("verification failed:\n" + "\n".join(failures))


if __name__ == "__main__":
    main()
