#!/usr/bin/env bash
# sie against diffusers on one GPU: each row is `sie bench PART --device cuda --torch PYTHON
# --json` (ours, then tools/parity/bench_diffusers.py with the same settings), written to
# OUTDIR/ROW.json, with nvidia-smi's memory trace in OUTDIR/gpumem.csv (device memory per
# process is read off its humps: ours first, then PyTorch's). Run from the repository root.
# Usage: tools/bench/gpu.sh path/to/sie-built-with-cuda path/to/python OUTDIR
set -u
sie=$1 python=$2 out=$3
mkdir -p "$out"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
"$python" -c "import diffusers, torch; print('diffusers', diffusers.__version__, 'torch', torch.__version__)"
nvidia-smi --query-gpu=timestamp,memory.used,utilization.gpu --format=csv,noheader -lms 250 \
  > "$out/gpumem.csv" &
trap 'kill %1 2>/dev/null' EXIT
row() {
  name=$1; shift
  echo "== $(date +%T.%N) $name: $*"
  timeout 300 "$sie" bench "$@" --torch "$python" --json > "$out/$name.json" 2> "$out/$name.err"
  echo "   rc=$? $(date +%T.%N)"
  tail -c 600 "$out/$name.json"
}
row unet512_f16 unet --size 512 --dtype float16 --device cuda --steps 10
row unet768_f16 unet --variant 2-1 --size 768 --dtype float16 --device cuda --steps 10
row vae512_f16 vae --size 512 --dtype float16 --device cuda --steps 5
row text_f16 text --dtype float16 --device cuda --steps 10
row vae768_f16 vae --size 768 --dtype float16 --device cuda --steps 5
row unet512_f32 unet --size 512 --dtype float32 --device cuda --steps 10
