#!/usr/bin/env bash
# The one prepared device run (issue 12): on a GPU machine, with what tools/gpu/pack.sh put
# in PACK (the release binary and the CUDA kernel tests, gzipped, and diffusers' wheel), check
# that sie generates on the GPU, matches diffusers there, and how fast it is; every raw
# output goes under OUT.
#
#   0. The CUDA kernel tests (cuDNN convolution, GroupNorm+SiLU, whole-matrix attention,
#      GEGLU, bias + residual, proj_out's transpose + residual, the timestep embedding
#      against candle's own ops on the same card, every dtype; cuDNN's fused attention
#      against the whole-matrix path), then the two attention paths' timings.
#   1. `sie serve --model tiny --device cuda` answers the seed's example (a 512x512 PNG).
#   2. Full-size random-weight SD 2.1-base (512) and 2.1 (768, v-prediction), made by
#      diffusers from the published configs, generate in float16 without NaN or black.
#   3. Parity on 2.1-base at 512: ours against diffusers in float32 (at least 99% of values
#      within 2/255) and float16 (reported), same seed, scheduler and CPU generator.
#   4. Every row of tools/bench/gpu.sh, the last a whole 50-step 512x512 generation, each
#      beside diffusers + PyTorch (eager, SDPA) on the same card, with nvidia-smi's memory.
#
# Usage (from the repository root on the GPU machine; about 7 minutes on an H200):
#   tools/gpu/check.sh PACK OUT [PYTHON]
# With this project's device tool: tools/gpu/pack.sh here, then run
#   tools/gpu/check.sh .gpu $OUT/check     carrying .gpu, with a timeout of about 540 s,
# and commit $OUT/check under docs/gpu/ with the commit in its commit.txt.
# The CUDA libraries come from PyTorch's wheels there (nvidia/*/lib); diffusers from the
# wheel in PACK when the machine's Python lacks it. Each step has its own time limit, and a
# failed step is recorded and the next one still runs.
set -u
pack=$(realpath "$1") out=$2 python=${3:-python3}
mkdir -p "$out"
exec > >(tee "$out/check.log") 2>&1
start=$(date +%s)
step() { echo "== $(( $(date +%s) - start ))s $*"; }
bin=$(mktemp -d)
gunzip -c "$pack/sie.gz" > "$bin/sie" && gunzip -c "$pack/kernel-tests.gz" > "$bin/kernel-tests"
chmod +x "$bin/sie" "$bin/kernel-tests"
sie=$bin/sie

step "environment"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
if ! "$python" -c "import diffusers" 2>/dev/null && ls "$pack"/*.whl >/dev/null 2>&1; then
  "$python" -m pip install -q --no-index --no-deps --no-compile --target /tmp/site "$pack"/*.whl
  export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
"$python" -c "import diffusers, torch; print('diffusers', diffusers.__version__, 'torch', torch.__version__)"
libs=$("$python" -c "
import glob, os, nvidia
roots = [os.path.dirname(p) for p in nvidia.__path__]
print(':'.join(sorted({os.path.dirname(l) for r in roots for l in glob.glob(r + '/nvidia/*/lib/lib*.so*')})))")
export LD_LIBRARY_PATH=$libs${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
ldd "$sie" | grep -E "cuda|cublas|curand|cudnn|nvrtc" | tee "$out/ldd.txt"
cp "$pack/commit.txt" "$out/commit.txt" 2>/dev/null || git rev-parse HEAD > "$out/commit.txt"

step "0. the CUDA kernel tests"
timeout 150 "$bin/kernel-tests" kernels::cuda --test-threads 1 > "$out/kernel-tests.log" 2>&1
echo "rc=$?"; tail -n 8 "$out/kernel-tests.log"
# cuDNN's fused attention against the whole-matrix path, milliseconds per shape (issue 17).
timeout 60 "$bin/kernel-tests" kernels::cuda::tests::attention_timings --ignored --nocapture \
  --test-threads 1 > "$out/attention-timings.log" 2>&1
echo "rc=$?"; grep -E "ms|cudnn|whole" "$out/attention-timings.log" | tail -n 12

step "1. sie serve --model tiny --device cuda, the seed's example"
data=$(mktemp -d)
"$sie" serve --model tiny --device cuda --data-dir "$data" --listen 127.0.0.1:18080 \
  > "$out/serve.out" 2> "$out/serve.err" &
serve=$!
for _ in $(seq 1 60); do grep -q "^api key: " "$out/serve.out" && break; sleep 0.5; done
key=$(sed -n 's/^api key: //p' "$out/serve.out")
base=http://127.0.0.1:18080/api/beta/organizations/default/inference-endpoints/stable-diffusion-2-1
seed_example='{"modelInputs": {"prompt": "An oil painting of a salad", "num_inference_steps": 50, "guidance_scale": 20, "width": 512, "height": 512}, "callInputs": {"PIPELINE": "StableDiffusionPipeline", "SCHEDULER": "LMSDiscreteScheduler", "safety_checker": "true"}}'
url=$(curl -s -X POST "$base" -H "Salad-Api-Key: $key" -H 'Content-Type: application/json' \
  -d "$seed_example" | "$python" -c "import json,sys; print(json.load(sys.stdin)['resultUrl'])")
for _ in $(seq 1 120); do
  curl -s -H "Salad-Api-Key: $key" "$url" > "$out/seed-example.json"
  grep -q '"status":"pending"' "$out/seed-example.json" || break
  sleep 0.5
done
"$python" - "$out/seed-example.json" <<'PY'
import base64, io, json, sys
from PIL import Image
v = json.load(open(sys.argv[1]))
out = v.get("modelOutputs", {})
img = Image.open(io.BytesIO(base64.b64decode(out["images"][0])))
print(json.dumps({"status": v["status"], "format": img.format, "size": img.size,
                  "meta": out.get("$meta"), "timings": out.get("$timings")}))
PY
kill $serve; wait $serve 2>/dev/null

models=/tmp/published-models
step "2. full-size random-weight SD 2.1-base and 2.1, float16"
timeout 150 "$python" tools/parity/make_published_random_models.py "$models" --only sd21-base --no-verify > "$out/models.log" 2>&1
timeout 150 "$python" tools/parity/make_published_random_models.py "$models" --only sd21 --no-verify >> "$out/models.log" 2>&1
for m in "sd21-base 512" "sd21 768"; do
  set -- $m
  timeout 60 "$sie" model run --model "$models/$1" --device cuda --dtype float16 --steps 20 \
    --width "$2" --height "$2" --seed 7 --prompt "An oil painting of a salad" \
    --out "$out/$1-f16.png" > "$out/$1-f16.log" 2>&1
  "$python" -c "
import numpy as np, sys, json
from PIL import Image
a = np.asarray(Image.open('$out/$1-f16.png').convert('RGB'))
print(json.dumps({'model': '$1', 'size': a.shape[:2], 'black': bool(a.max() == 0),
                  'mean': float(a.mean()), 'std': float(a.std())}))" | tee "$out/$1-f16.json"
done

step "3. parity against diffusers on 2.1-base, 512, float32 and float16"
timeout 150 "$python" tools/parity/gpu_parity.py --sie "$sie" --model "$models/sd21-base" \
  --out "$out/parity" --size 512 --steps 20 --scheduler DDIMScheduler > "$out/parity.json"
cat "$out/parity.json"

step "4. speed beside diffusers"
timeout 600 tools/bench/gpu.sh "$sie" "$python" "$out/bench" "$models/sd21-base"
step "done"
