#!/usr/bin/env bash
# Installs a CUDA 13.0 toolkit from PyPI wheels into PREFIX, for building `sie` with the
# `cuda` feature on a machine without a GPU (and without NVIDIA's installer).
#
# Why 13.0 and these pins: the H200 machines run driver 580 (CUDA 13.0), and PTX from a
# newer compiler does not load there; the libraries are those PyTorch 2.11+cu130 ships,
# which ran on those machines. The wheels share one prefix (nvidia/cu13: bin, include, lib,
# nvvm), which is a CUDA_HOME as nvcc expects it, except that they ship only versioned
# shared objects (libcublas.so.13), so the unversioned names a linker looks for are made
# here, and a stub stands in for the driver's libcuda (the real one comes with the driver on
# the GPU machine).
#
# Usage: tools/gpu/toolkit.sh PREFIX   (about 1.5 GB; prints the environment to export)
set -euo pipefail
prefix=${1:?usage: tools/gpu/toolkit.sh PREFIX}
mkdir -p "$prefix"
prefix=$(cd "$prefix" && pwd)

wheels=(
  nvidia-cuda-nvcc==13.0.88     # nvcc, ptxas, fatbinary
  nvidia-cuda-crt==13.0.88      # nvcc's crt headers
  nvidia-nvvm==13.0.88          # cicc and libdevice
  nvidia-cuda-runtime==13.0.96  # cudart and the CUDA headers
  nvidia-cuda-cccl==13.0.85     # CUB/Thrust/libcu++ headers
  nvidia-cuda-nvrtc==13.0.88    # run-time compilation (cudarc links it)
  nvidia-cublas==13.0.2.14      # cuBLAS and cuBLASLt
  nvidia-curand==10.4.0.35      # cuRAND (CUDA 13.0's)
  nvidia-cudnn-cu13==9.13.0.50  # cuDNN 9 for CUDA 13 (convolutions, attention)
)
# cuDNN's frontend: the header-only C++ graph API the engine's scaled-dot-product attention
# shim is built on (src/kernels/cuda/sdpa.cpp). 1.14.1 is the release of cuDNN 9.13's month,
# and it checks the backend's version at run time. Its wheels also carry a Python module,
# one per Python version (unused here), so the wheel is picked for a fixed CPython rather
# than this machine's: the headers are the same in all of them.
frontend=nvidia-cudnn-frontend==1.14.1
if [ ! -x "$prefix/nvidia/cu13/bin/nvcc" ] || [ ! -f "$prefix/.installed" ] \
   || [ "$(cat "$prefix/.installed")" != "${wheels[*]} $frontend" ]; then
  python3 -m pip install --quiet --disable-pip-version-check --no-deps --upgrade \
    --target "$prefix" "${wheels[@]}"
  python3 -m pip install --quiet --disable-pip-version-check --no-deps --upgrade \
    --only-binary :all: --implementation cp --python-version 3.12 \
    --platform manylinux_2_28_x86_64 --target "$prefix" "$frontend"
  echo "${wheels[*]} $frontend" > "$prefix/.installed"
fi

cuda=$prefix/nvidia/cu13
cudnn=$prefix/nvidia/cudnn
chmod +x "$cuda"/bin/* "$cuda"/nvvm/bin/* 2>/dev/null || true

# The unversioned names the linker looks for (-lcublas finds libcublas.so, not .so.13).
for lib in "$cuda"/lib/lib*.so.* "$cudnn"/lib/lib*.so.*; do
  [ -e "$lib" ] || continue
  base=${lib%%.so.*}.so
  [ -e "$base" ] || ln -s "$(basename "$lib")" "$base"
done
# nvcc looks for lib64 beside include.
[ -e "$cuda/lib64" ] || ln -s lib "$cuda/lib64"
# cuDNN's headers and libraries where a CUDA_HOME build looks for them.
for h in "$cudnn"/include/*.h; do
  [ -e "$cuda/include/$(basename "$h")" ] || ln -s "$h" "$cuda/include/$(basename "$h")"
done
for l in "$cudnn"/lib/lib*; do
  [ -e "$cuda/lib/$(basename "$l")" ] || ln -s "$l" "$cuda/lib/$(basename "$l")"
done
# The frontend's headers (cudnn_frontend.h and what it includes: cudnn_frontend_*.h,
# cudnn_backend_base.h, cudnn_frontend/) are all PREFIX/include holds; linked beside cudnn.h
# so the engine's build finds them in CUDA_HOME too.
for h in "$prefix"/include/*; do
  [ -e "$cuda/include/$(basename "$h")" ] || ln -s "$h" "$cuda/include/$(basename "$h")"
done

# A link stub for the driver API: every cu* symbol cudarc and candle name, defined as a
# function that is never called here (the binary loads the driver's real libcuda.so.1 on a
# GPU machine). Made from the symbols the CUDA headers declare.
stub=$cuda/lib/stubs
if [ ! -f "$stub/libcuda.so" ]; then
  mkdir -p "$stub"
  grep -hoE '^(CUresult|CUDAAPI)?[^;()]*\bcu[A-Z][A-Za-z0-9_]*\s*\(' "$cuda/include/cuda.h" \
    | grep -oE 'cu[A-Z][A-Za-z0-9_]*\s*\($' | tr -d '( ' | sort -u \
    | awk '{print "void " $1 "(void) {}"}' > "$stub/cuda_stub.c"
  # The versioned entry points cuda.h maps names to (cuMemAlloc -> cuMemAlloc_v2, ...).
  grep -hoE '#define +cu[A-Za-z0-9_]+ +cu[A-Za-z0-9_]+' "$cuda/include/cuda.h" \
    | awk '{print "void " $3 "(void) {}"}' | sort -u >> "$stub/cuda_stub.c"
  sort -u -o "$stub/cuda_stub.c" "$stub/cuda_stub.c"
  cc -shared -fPIC -Wl,-soname,libcuda.so.1 -o "$stub/libcuda.so" "$stub/cuda_stub.c"
  ln -sf libcuda.so "$stub/libcuda.so.1"
fi

"$cuda/bin/nvcc" --version | tail -n 2 >&2
cat <<ENV
export CUDA_HOME=$cuda
export CUDA_PATH=$cuda
export CUDA_ROOT=$cuda
export CUDNN_LIB=$cudnn/lib
export PATH=$cuda/bin:\$PATH
export LIBRARY_PATH=$cuda/lib:$cuda/lib/stubs:$cudnn/lib\${LIBRARY_PATH:+:\$LIBRARY_PATH}
export LD_LIBRARY_PATH=$cuda/lib:$cudnn/lib\${LD_LIBRARY_PATH:+:\$LD_LIBRARY_PATH}
ENV
