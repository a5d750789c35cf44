#!/usr/bin/env bash
# sie against diffusers on one GPU, float16: each row is `sie bench PART --device cuda
# --torch PYTHON --json` (ours, then tools/parity/bench_diffusers.py with the same settings),
# written to OUTDIR/ROW.json, with nvidia-smi's memory trace in OUTDIR/gpumem.csv (device
# memory per process is read off its humps: ours first, then PyTorch's). With MODEL (a
# diffusers SD 2.1-base directory) the last row is a whole 50-step 512x512 generation
# (median of 3, no warm-up on either side), then 8 such requests at once through the queue
# (`sie bench throughput`, step-level batching) beside diffusers running them serially.
# Run from the repository root.
# Usage: tools/bench/gpu.sh path/to/sie-built-with-cuda path/to/python OUTDIR [MODEL]
set -u
sie=$1 python=$2 out=$3 model=${4:-}
mkdir -p "$out"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
"$python" -c "import diffusers, torch; print('diffusers', diffusers.__version__, 'torch', torch.__version__)"
nvidia-smi --query-gpu=timestamp,memory.used,utilization.gpu --format=csv,noheader -lms 250 \
  > "$out/gpumem.csv" &
trap 'kill %1 2>/dev/null' EXIT
row() {
  name=$1 limit=$2; shift 2
  echo "== $(date +%T.%N) $name: $*"
  timeout "$limit" "$sie" bench "$@" --device cuda --dtype float16 --torch "$python" --json \
    > "$out/$name.json" 2> "$out/$name.err"
  echo "   rc=$? $(date +%T.%N)"
  tail -c 600 "$out/$name.json"
}
row unet512_f16 90 unet --size 512 --steps 10
row unet768_f16 90 unet --variant 2-1 --size 768 --steps 10
row vae512_f16 90 vae --size 512 --steps 5
row vae768_f16 90 vae --size 768 --steps 5
row text_f16 60 text --steps 10
if [ -n "$model" ]; then
  row pipeline512_f16 150 pipeline --model "$model" --size 512 --steps 50 --runs 3
  # 8 concurrent 50-step 512x512 requests through the queue, batched, beside diffusers
  # running them one after another (issue 17's throughput row).
  row throughput512_c8_f16 240 throughput --model "$model" --concurrency 8 --size 512 --steps 50
fi
