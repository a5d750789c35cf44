"""Scheduler fixtures from diffusers, for crates/engine/tests/schedulers.rs.

For every scheduler of the contract, both prediction types and a few step
counts, this runs diffusers' own scheduler loop on small latents with a fake
model (a fixed function of the scaled input, so nothing depends on a UNet) and
records what the Rust scheduler must reproduce: the timesteps, the initial
noise sigma, every scaled model input, every model output, every noise tensor
the scheduler drew, and the latents after every step.

The scheduler is built exactly as a pipeline would build it from SD 2.1's
scheduler_config.json: `Cls.from_config(config)`.

Run: /path/to/venv/bin/python tools/parity/make_scheduler_fixtures.py
"""

import inspect
import json
import os
import sys

import torch
from safetensors.torch import save_file

import diffusers
from diffusers.utils import torch_utils

OUT = os.path.join(os.path.dirname(__file__), "..", "..", "crates", "engine", "tests", "fixtures", "schedulers")

# stabilityai/stable-diffusion-2-1 scheduler/scheduler_config.json (2-1-base is the
# same with PNDMScheduler and epsilon): see tools/parity/published_configs.py.
SD21_SCHEDULER = {
    "_class_name": "DDIMScheduler",
    "_diffusers_version": "0.8.0",
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "beta_start": 0.00085,
    "clip_sample": False,
    "num_train_timesteps": 1000,
    "set_alpha_to_one": False,
    "skip_prk_steps": True,
    "steps_offset": 1,
    "trained_betas": None,
}

CLASSES = [
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

def run(cls_name, prediction_type, steps, seed, eta=0.0, overrides=None, tag=""):
    config = dict(SD21_SCHEDULER, prediction_type=prediction_type, **(overrides or {}))
    cls = getattr(diffusers, cls_name)
    sched = cls.from_config(config)
    sched.set_timesteps(steps)

    gen = torch.Generator("cpu").manual_seed(seed)
    shape = (1, 4, 4, 4)
    init_noise = torch.randn(shape, generator=gen, dtype=torch.float32)
    base = torch.randn(shape, generator=gen, dtype=torch.float32)

    draws = []
    real_randn = torch_utils.randn_tensor

    def recording_randn(*args, **kwargs):
        t = real_randn(*args, **kwargs)
        draws[-1].append(t.clone())
        return t

    module = sys.modules[cls.__module__]
    saved = getattr(module, "randn_tensor", None)
    if saved is not None:
        module.randn_tensor = recording_randn

    tensors = {
        "init_noise": init_noise,
        "timesteps": sched.timesteps.to(torch.float64),
        "init_noise_sigma": torch.tensor([float(sched.init_noise_sigma)], dtype=torch.float64),
    }
    sample = init_noise * sched.init_noise_sigma
    accepted = inspect.signature(sched.step).parameters
    extra = {"generator": gen} if "generator" in accepted else {}
    if "eta" in accepted:
        extra["eta"] = eta
    try:
        for i, t in enumerate(sched.timesteps):
            draws.append([])
            scaled = sched.scale_model_input(sample, t)
            model_output = 0.5 * torch.tanh(scaled) + 0.3 * torch.cos(t.float() / 150.0) * base
            sample = sched.step(model_output, t, sample, **extra).prev_sample
            tensors[f"scaled_{i}"] = scaled.clone().contiguous()
            tensors[f"model_output_{i}"] = model_output.clone().contiguous()
            for k, d in enumerate(draws[-1]):
                tensors[f"noise_{i}_{k}"] = d.contiguous()
            tensors[f"sample_{i + 1}"] = sample.clone().contiguous()
    finally:
        if saved is not None:
            module.randn_tensor = saved

    name = f"{cls_name}-{prediction_type}-{steps}" + (f"-eta{eta:g}" if eta else "") + (f"-{tag}" if tag else "")
    save_file(tensors, os.path.join(OUT, name + ".safetensors"))
    meta = {
        "class": cls_name,
        "steps": steps,
        "eta": eta,
        "config": config,
        "noise_draws": [len(d) for d in draws],
        "diffusers": diffusers.__version__,
    }
    with open(os.path.join(OUT, name + ".json"), "w") as f:
        json.dump(meta, f, indent=1, sort_keys=True)
    print(name, "steps", len(draws), "draws", sum(len(d) for d in draws))


# Non-default configurations: (class, prediction_type, steps, tag, config overrides).
# The tag names the fixture file; the harness runs every fixture of a class.
VARIANTS = [
    ("EulerDiscreteScheduler", "epsilon", 10, "karras", {"use_karras_sigmas": True}),
    ("EulerDiscreteScheduler", "epsilon", 8, "exponential", {"use_exponential_sigmas": True}),
    ("EulerDiscreteScheduler", "v_prediction", 9, "trailing-zsnr",
     {"timestep_spacing": "trailing", "rescale_betas_zero_snr": True}),
    ("EulerDiscreteScheduler", "epsilon", 7, "leading", {"timestep_spacing": "leading"}),
    ("EulerDiscreteScheduler", "epsilon", 6, "loglinear-sigmamin",
     {"interpolation_type": "log_linear", "final_sigmas_type": "sigma_min"}),
    ("EulerDiscreteScheduler", "v_prediction", 6, "continuous", {"timestep_type": "continuous"}),
    ("EulerDiscreteScheduler", "sample", 6, "sample", {}),
    ("EulerAncestralDiscreteScheduler", "epsilon", 7, "leading", {"timestep_spacing": "leading"}),
    ("EulerAncestralDiscreteScheduler", "v_prediction", 9, "trailing-zsnr",
     {"timestep_spacing": "trailing", "rescale_betas_zero_snr": True}),
    ("DPMSolverMultistepScheduler", "epsilon", 10, "sde", {"algorithm_type": "sde-dpmsolver++"}),
    ("DPMSolverMultistepScheduler", "v_prediction", 9, "threshold",
     {"thresholding": True, "sample_max_value": 3.0, "dynamic_thresholding_ratio": 0.9}),
    ("DPMSolverMultistepScheduler", "epsilon", 8, "dpmsolver-threshold",
     {"algorithm_type": "dpmsolver", "final_sigmas_type": "sigma_min", "thresholding": True,
      "sample_max_value": 2.0}),
    ("DPMSolverMultistepScheduler", "v_prediction", 12, "sde-heun-order3",
     {"algorithm_type": "sde-dpmsolver++", "solver_type": "heun", "solver_order": 3}),
    ("DPMSolverMultistepScheduler", "epsilon", 20, "order3", {"solver_order": 3}),
    ("DPMSolverMultistepScheduler", "epsilon", 16, "heun-karras",
     {"solver_type": "heun", "use_karras_sigmas": True}),
    ("DPMSolverMultistepScheduler", "v_prediction", 9, "lu", {"use_lu_lambdas": True}),
    ("DPMSolverMultistepScheduler", "epsilon", 9, "exponential-trailing",
     {"use_exponential_sigmas": True, "timestep_spacing": "trailing"}),
    ("DPMSolverMultistepScheduler", "epsilon", 8, "dpmsolver-order3",
     {"algorithm_type": "dpmsolver", "final_sigmas_type": "sigma_min", "solver_order": 3}),
    ("DPMSolverMultistepScheduler", "v_prediction", 8, "sde-dpmsolver",
     {"algorithm_type": "sde-dpmsolver", "final_sigmas_type": "sigma_min", "solver_type": "heun"}),
    ("DPMSolverMultistepScheduler", "sample", 7, "leading-sample", {"timestep_spacing": "leading"}),
    ("DPMSolverMultistepScheduler", "epsilon", 7, "euler-final-sigmamin",
     {"euler_at_final": True, "final_sigmas_type": "sigma_min", "lower_order_final": False}),
    ("DPMSolverMultistepScheduler", "v_prediction", 9, "zsnr-trailing",
     {"rescale_betas_zero_snr": True, "timestep_spacing": "trailing"}),
    # bh1 and predict_x0=False end in NaN with final_sigmas_type "zero" in diffusers
    # itself (0 * inf on the step to sigma 0), so those run with "sigma_min".
    ("UniPCMultistepScheduler", "epsilon", 9, "threshold",
     {"thresholding": True, "sample_max_value": 3.0, "dynamic_thresholding_ratio": 0.9}),
    ("UniPCMultistepScheduler", "epsilon", 10, "bh1-sigmamin",
     {"solver_type": "bh1", "final_sigmas_type": "sigma_min"}),
    ("UniPCMultistepScheduler", "v_prediction", 20, "order3", {"solver_order": 3}),
    ("UniPCMultistepScheduler", "epsilon", 9, "noise-pred-sigmamin",
     {"predict_x0": False, "final_sigmas_type": "sigma_min"}),
    ("UniPCMultistepScheduler", "epsilon", 12, "karras-order3-bh1-sigmamin",
     {"use_karras_sigmas": True, "solver_order": 3, "solver_type": "bh1", "final_sigmas_type": "sigma_min"}),
    ("UniPCMultistepScheduler", "v_prediction", 8, "exponential-sigmamin",
     {"use_exponential_sigmas": True, "final_sigmas_type": "sigma_min"}),
    ("UniPCMultistepScheduler", "epsilon", 8, "no-corrector", {"disable_corrector": [0, 3]}),
    ("UniPCMultistepScheduler", "sample", 7, "leading-sample", {"timestep_spacing": "leading"}),
    ("UniPCMultistepScheduler", "v_prediction", 9, "trailing-zsnr",
     {"timestep_spacing": "trailing", "rescale_betas_zero_snr": True}),
    ("DDIMScheduler", "v_prediction", 10, "trailing-zsnr-alpha1",
     {"timestep_spacing": "trailing", "rescale_betas_zero_snr": True, "set_alpha_to_one": True}),
    ("DDIMScheduler", "epsilon", 9, "linspace-clip",
     {"timestep_spacing": "linspace", "clip_sample": True, "clip_sample_range": 1.5}),
    ("DDIMScheduler", "epsilon", 8, "threshold",
     {"thresholding": True, "sample_max_value": 1.5, "dynamic_thresholding_ratio": 0.9}),
    ("DDPMScheduler", "epsilon", 8, "smalllog-trailing",
     {"variance_type": "fixed_small_log", "timestep_spacing": "trailing"}),
    ("DDPMScheduler", "sample", 8, "large-sigmoid-linspace",
     {"variance_type": "fixed_large", "beta_schedule": "sigmoid", "timestep_spacing": "linspace"}),
    ("DDPMScheduler", "v_prediction", 6, "laplace-threshold", {"beta_schedule": "laplace", "thresholding": True}),
    ("PNDMScheduler", "epsilon", 10, "prk", {"skip_prk_steps": False}),
    ("PNDMScheduler", "v_prediction", 5, "prk-linspace", {"skip_prk_steps": False, "timestep_spacing": "linspace"}),
    ("PNDMScheduler", "epsilon", 6, "trailing-alpha1", {"timestep_spacing": "trailing", "set_alpha_to_one": True}),
    # LMS's Karras spacing ignores a config's sigma_min; Heun's honours it.
    ("LMSDiscreteScheduler", "epsilon", 12, "karras", {"use_karras_sigmas": True, "sigma_min": 0.5}),
    ("LMSDiscreteScheduler", "sample", 8, "leading", {"timestep_spacing": "leading"}),
    ("LMSDiscreteScheduler", "v_prediction", 8, "exponential-trailing",
     {"use_exponential_sigmas": True, "timestep_spacing": "trailing"}),
    ("HeunDiscreteScheduler", "epsilon", 8, "karras-clip",
     {"use_karras_sigmas": True, "clip_sample": True, "clip_sample_range": 2.0}),
    ("HeunDiscreteScheduler", "epsilon", 6, "karras-bounds",
     {"use_karras_sigmas": True, "sigma_min": 0.1, "sigma_max": 10.0}),
    ("HeunDiscreteScheduler", "v_prediction", 6, "leading-exp", {"timestep_spacing": "leading", "beta_schedule": "exp"}),
    ("HeunDiscreteScheduler", "sample", 5, "trailing", {"timestep_spacing": "trailing"}),
]


def main():
    os.makedirs(OUT, exist_ok=True)
    only = sys.argv[1:]
    for cls_name in CLASSES:
        if only and cls_name not in only:
            continue
        for prediction_type in ("epsilon", "v_prediction"):
            for steps in (10, 7):
                run(cls_name, prediction_type, steps, seed=1234 + steps)
    if not only or "DDIMScheduler" in only:
        for prediction_type in ("epsilon", "v_prediction"):
            run("DDIMScheduler", prediction_type, 10, seed=99, eta=1.0)
    for cls_name, prediction_type, steps, tag, overrides in VARIANTS:
        if only and cls_name not in only:
            continue
        run(cls_name, prediction_type, steps, seed=4321 + steps, overrides=overrides, tag=tag)


if __name__ == "__main__":
    main()
