#!/usr/bin/env bash
# The release build of `sie` with the `cuda` feature (candle's CUDA backend, cuDNN, and our
# own kernels in crates/engine/src/kernels/cuda/), made on a machine without a GPU: nvcc and
# the libraries come from tools/gpu/toolkit.sh, and the driver's libcuda from its link stub
# (the real one is the GPU machine's). Prints where the binary is and what it links
# against; copy it to the GPU machine with those libraries on its library path.
#
# Usage: tools/gpu/build.sh [COMPUTE_CAP] [TOOLKIT_PREFIX]
#   COMPUTE_CAP     the card's compute capability: 90 for H100/H200 (the default), 89 for
#                   L4 and RTX 40xx, 86 for A10 and RTX 30xx, 80 for A100
#   TOOLKIT_PREFIX  where toolkit.sh installs (default: ../cuda-toolkit beside the checkout)
# PROFILE=dev builds the dev profile instead (target/debug/sie): its dependencies are
# already optimised and built by `cargo test`, so CI compiles and links the cuda build in
# less time (10 m against 14 m here); the binary for a GPU machine is the release one.
set -euo pipefail
cd "$(dirname "$0")/../.."
cap=${1:-90}
prefix=${2:-$(cd .. && pwd)/cuda-toolkit}
eval "$(tools/gpu/toolkit.sh "$prefix")"
export CUDA_COMPUTE_CAP=$cap
profile=${PROFILE:-release}
cargo build --profile "$profile" -j"${JOBS:-2}" -p sie --features cuda
bin=$(pwd)/target/$([ "$profile" = dev ] && echo debug || echo "$profile")/sie
echo "built $bin for compute capability $cap"
echo "it needs these shared libraries at run time:"
readelf -d "$bin" | sed -n 's/.*Shared library: \[\(.*\)\]/  \1/p'
