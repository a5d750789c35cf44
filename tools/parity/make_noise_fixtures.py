"""Noise fixtures from torch's CPU generator, for crates/engine/tests/noise.rs.

For a few seeds this makes one `torch.Generator("cpu").manual_seed(seed)` and records a
sequence of `torch.randn(shape, generator=g, dtype=torch.float32)` calls on it, in order, so
the Rust side is checked both on the first draw and on how the stream continues (diffusers'
ancestral schedulers keep drawing from the generator after the initial latents). The shapes
cover every path of torch's normal kernel:

- a latent shape whose size is a multiple of 16 (plain blocks of 16),
- a shape whose size is not (the last 16 values are redrawn and recomputed),
- sizes below 16 (per-element double Box-Muller, whose cached second sample survives
  across calls, including across a large call in between),
- 16 and 17 exactly.

Which float kernel torch runs depends on the CPU (torch.backends.cpu.get_cpu_capability()):
AVX2 and AVX512 run the AVX2 block, `default` the scalar one. The main fixtures must come from
an AVX2/AVX512 run; the script also reruns itself with ATEN_CPU_CAPABILITY=default to record
the scalar kernel, and refuses to write either set from the wrong kernel.

Each file is `<kernel>_seed_<seed>.safetensors`; tensors are named `call_NN` in call order and
have the shape of that call.

Run: /work/venv-parity/bin/python tools/parity/make_noise_fixtures.py
"""

import os
import subprocess
import sys

import torch
from safetensors.torch import save_file

OUT = os.path.join(os.path.dirname(__file__), "..", "..", "crates", "engine", "tests", "fixtures", "noise")

CALLS = [
    (1, 4, 8, 8),  # latents: 256 values
    (1, 4, 8, 8),  # the same generator, continued
    (2, 4, 9, 7),  # 504 = 31 * 16 + 8: tail recomputed
    (2, 4, 9, 7),
    (5,),  # small path, leaves a cached sample
    (1, 4, 8, 8),  # large path ignores the cache...
    (3,),  # ...which the next small call consumes first
    (16,),
    (17,),
    (15,),
]

KERNELS = {
    # kernel name -> (ATEN_CPU_CAPABILITY to force, capabilities that run that kernel, seeds)
    "avx2": (None, {"AVX2", "AVX512"}, [0, 42, 2**63 - 1]),
    "scalar": ("default", {"DEFAULT"}, [42]),
}


def record(kernel):
    _, capabilities, seeds = KERNELS[kernel]
    capability = torch.backends.cpu.get_cpu_capability()
    if capability not in capabilities:
        sys.exit(f"{kernel} fixtures need a CPU capability in {sorted(capabilities)}, torch runs {capability}")
    os.makedirs(OUT, exist_ok=True)
    for seed in seeds:
        g = torch.Generator("cpu").manual_seed(seed)
        tensors = {
            f"call_{i:02}": torch.randn(shape, generator=g, dtype=torch.float32).contiguous()
            for i, shape in enumerate(CALLS)
        }
        path = os.path.join(OUT, f"{kernel}_seed_{seed}.safetensors")
        save_file(tensors, path, metadata={"seed": str(seed), "torch": torch.__version__, "capability": capability})
        print(f"wrote {os.path.normpath(path)} ({capability}, torch {torch.__version__})")


def main():
    if len(sys.argv) == 2:
        record(sys.argv[1])
        return
    for kernel, (force, _, _) in KERNELS.items():
        env = dict(os.environ)
        env.pop("ATEN_CPU_CAPABILITY", None)
        if force is not None:
            env["ATEN_CPU_CAPABILITY"] = force
        # The capability is fixed when torch loads, so each kernel needs its own process.
        subprocess.run([sys.executable, __file__, kernel], env=env, check=True)


if __name__ == "__main__":
    main()
