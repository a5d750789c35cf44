#!/usr/bin/env bash
# Everything tools/gpu/check.sh needs on the GPU machine that is not in the repository, in
# one folder small enough to carry there (a device call carries at most 64 MiB): the
# release `sie` built with `cuda` (tools/gpu/build.sh) and the engine's CUDA kernel tests,
# both stripped and gzipped, diffusers' wheel (the GPU machine has PyTorch but no network),
# and the commit they were built from.
#
# Usage: tools/gpu/pack.sh [PACK] [COMPUTE_CAP] [TOOLKIT_PREFIX]
#   PACK defaults to .gpu (ignored by git); the other two are build.sh's.
# Then, on the GPU machine: tools/gpu/check.sh PACK OUT
set -euo pipefail
cd "$(dirname "$0")/../.."
pack=${1:-.gpu} cap=${2:-90}
prefix=${3:-$(cd .. && pwd)/cuda-toolkit}
tools/gpu/build.sh "$cap" "$prefix"
eval "$(tools/gpu/toolkit.sh "$prefix")"
export CUDA_COMPUTE_CAP=$cap
tests=$(cargo test --release -j"${JOBS:-2}" -p sie-engine --features cuda --lib --no-run \
  --message-format=json 2>/dev/null \
  | sed -n 's/.*"executable":"\([^"]*\)".*/\1/p' | tail -n 1)
[ -x "$tests" ] || { echo "pack.sh: the engine's test binary was not built" >&2; exit 1; }
mkdir -p "$pack"
rm -f "$pack"/*.whl
for pair in "target/release/sie:sie" "$tests:kernel-tests"; do
  strip -o "$pack/${pair#*:}" "${pair%%:*}"
  gzip -f -9 "$pack/${pair#*:}"
done
python3 -m pip download -q --no-deps --only-binary :all: -d "$pack" "diffusers==0.42.1"
git rev-parse HEAD > "$pack/commit.txt"
git diff --quiet HEAD || echo "pack.sh: note: the working tree differs from $(cat "$pack/commit.txt")" >&2
du -b "$pack"/* | awk '{ total += $1; print } END { printf "total %.1f MiB (the limit is 64)\n", total / 1048576 }'
