// Our CUDA kernels, compiled to PTX by build.rs and loaded by kernels/cuda/*.rs.
//
// Each kernel is instantiated for the three network dtypes (float, __half, __nv_bfloat16)
// under a name with a suffix (_f32, _f16, _bf16); arithmetic is always in float, as
// PyTorch's own kernels do it for half inputs.

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <stdint.h>

__device__ __forceinline__ float to_float(float x) { return x; }
__device__ __forceinline__ float to_float(__half x) { return __half2float(x); }
__device__ __forceinline__ float to_float(__nv_bfloat16 x) { return __bfloat162float(x); }

template <typename T> __device__ __forceinline__ T from_float(float x);
template <> __device__ __forceinline__ float from_float<float>(float x) { return x; }
template <> __device__ __forceinline__ __half from_float<__half>(float x) { return __float2half(x); }
template <> __device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float x) {
    return __float2bfloat16(x);
}

// ---- Reductions within a block ----------------------------------------------------------

// Welford's running statistics: count, mean, and the sum of squared deviations.
struct Welford {
    float n, mean, m2;
};

__device__ __forceinline__ Welford welford_merge(Welford a, Welford b) {
    if (b.n == 0.f) return a;
    if (a.n == 0.f) return b;
    float n = a.n + b.n;
    float d = b.mean - a.mean;
    return Welford{n, a.mean + d * (b.n / n), a.m2 + b.m2 + d * d * (a.n * b.n / n)};
}

__device__ __forceinline__ Welford warp_merge(Welford w) {
    for (int offset = 16; offset > 0; offset /= 2) {
        Welford o{__shfl_down_sync(0xffffffff, w.n, offset),
                  __shfl_down_sync(0xffffffff, w.mean, offset),
                  __shfl_down_sync(0xffffffff, w.m2, offset)};
        w = welford_merge(w, o);
    }
    return w;
}

// The block's merged statistics, in thread 0. blockDim.x is a multiple of 32, at most 1024.
__device__ Welford block_merge(Welford w) {
    __shared__ Welford per_warp[32];
    int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
    w = warp_merge(w);
    if (lane == 0) per_warp[warp] = w;
    __syncthreads();
    if (warp == 0) {
        w = lane < blockDim.x / 32 ? per_warp[lane] : Welford{0.f, 0.f, 0.f};
        w = warp_merge(w);
    }
    return w;
}

__device__ __forceinline__ float warp_max(float x) {
    for (int offset = 16; offset > 0; offset /= 2) x = fmaxf(x, __shfl_down_sync(0xffffffff, x, offset));
    return x;
}

__device__ __forceinline__ float warp_sum(float x) {
    for (int offset = 16; offset > 0; offset /= 2) x += __shfl_down_sync(0xffffffff, x, offset);
    return x;
}

// `x` reduced over the block with `op` (max or sum), broadcast to every thread.
template <bool MAX>
__device__ float block_all(float x) {
    __shared__ float per_warp[32];
    __shared__ float result;
    int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
    x = MAX ? warp_max(x) : warp_sum(x);
    if (lane == 0) per_warp[warp] = x;
    __syncthreads();
    if (warp == 0) {
        float identity = MAX ? -INFINITY : 0.f;
        x = lane < blockDim.x / 32 ? per_warp[lane] : identity;
        x = MAX ? warp_max(x) : warp_sum(x);
        if (lane == 0) result = x;
    }
    __syncthreads();
    return result;
}

// ---- GroupNorm (+ SiLU) -----------------------------------------------------------------
//
// x is (batch, channels, pixels...) contiguous, so group g of batch n is one contiguous run
// of `group_len` = channels_per_group * pixels elements, run number n * groups + g. Each
// group is split into `splits` chunks so that small batches still fill the GPU: the first
// kernel writes each chunk's Welford statistics, the second merges a group's chunks and
// normalises its own chunk, scales and shifts per channel, and applies SiLU when asked.

template <typename T>
__device__ void group_stats(const T* x, float* partial, int64_t group_len, int splits) {
    int64_t group = blockIdx.x, split = blockIdx.y;
    int64_t chunk = (group_len + splits - 1) / splits;
    int64_t start = split * chunk;
    int64_t end = min(start + chunk, group_len);
    const T* g = x + group * group_len;
    Welford w{0.f, 0.f, 0.f};
    for (int64_t i = start + threadIdx.x; i < end; i += blockDim.x) {
        float v = to_float(g[i]);
        w.n += 1.f;
        float d = v - w.mean;
        w.mean += d / w.n;
        w.m2 += d * (v - w.mean);
    }
    w = block_merge(w);
    if (threadIdx.x == 0) {
        float* out = partial + 3 * (group * splits + split);
        out[0] = w.n;
        out[1] = w.mean;
        out[2] = w.m2;
    }
}

template <typename T>
__device__ void group_apply(const T* x, T* y, const T* weight, const T* bias, const float* partial,
                            int64_t group_len, int64_t pixels, int channels_per_group, int groups,
                            int splits, float eps, int silu) {
    __shared__ float mean, rstd;
    int64_t group = blockIdx.x, split = blockIdx.y;
    if (threadIdx.x == 0) {
        Welford w{0.f, 0.f, 0.f};
        for (int s = 0; s < splits; s++) {
            const float* p = partial + 3 * (group * splits + s);
            w = welford_merge(w, Welford{p[0], p[1], p[2]});
        }
        mean = w.mean;
        rstd = rsqrtf(w.m2 / w.n + eps);
    }
    __syncthreads();
    int64_t chunk = (group_len + splits - 1) / splits;
    int64_t start = split * chunk;
    int64_t end = min(start + chunk, group_len);
    int first_channel = (int)(group % groups) * channels_per_group;
    const T* g = x + group * group_len;
    T* out = y + group * group_len;
    for (int64_t i = start + threadIdx.x; i < end; i += blockDim.x) {
        int c = first_channel + (int)(i / pixels);
        float v = (to_float(g[i]) - mean) * rstd * to_float(weight[c]) + to_float(bias[c]);
        if (silu) v = v / (1.f + __expf(-v));
        out[i] = from_float<T>(v);
    }
}

// ---- Softmax of float scores into the network's dtype ----------------------------------
//
// One block per row of `cols` scores: the row's maximum, the sum of exponentials, then
// each probability written in T. Scores stay float until here, so large ones cannot
// overflow a half (SD 2.1's attention at 768 would).

template <typename T>
__device__ void softmax_rows(const float* scores, T* probs, int64_t cols) {
    const float* row = scores + blockIdx.x * cols;
    T* out = probs + blockIdx.x * cols;
    float m = -INFINITY;
    for (int64_t i = threadIdx.x; i < cols; i += blockDim.x) m = fmaxf(m, row[i]);
    m = block_all<true>(m);
    float s = 0.f;
    for (int64_t i = threadIdx.x; i < cols; i += blockDim.x) s += __expf(row[i] - m);
    s = block_all<false>(s);
    float inv = 1.f / s;
    for (int64_t i = threadIdx.x; i < cols; i += blockDim.x) out[i] = from_float<T>(__expf(row[i] - m) * inv);
}

// ---- GEGLU -----------------------------------------------------------------------------
//
// x is (rows, 2n) contiguous; out[r, j] = x[r, j] * gelu(x[r, n + j]) with the exact (erf)
// GELU, x * Phi(x), as candle's gelu_erf computes it. Threads run along a row (x), blocks
// over rows (y, striding when there are more rows than blocks), so no index is divided.

template <typename T>
__device__ void geglu(const T* x, T* out, int64_t rows, int64_t n) {
    int64_t j = blockIdx.x * (int64_t)blockDim.x + threadIdx.x;
    if (j >= n) return;
    for (int64_t r = blockIdx.y; r < rows; r += gridDim.y) {
        const T* row = x + r * 2 * n;
        float a = to_float(row[j]);
        float g = to_float(row[n + j]);
        out[r * n + j] = from_float<T>(a * (g * normcdff(g)));
    }
}

// ---- A layer's bias and a residual, added to its output in one pass ---------------------
//
// y is `lines` lines of `width` contiguous elements. The bias runs along a line (a linear
// layer's output: lines are rows, the bias is indexed by the column) or is one value per
// line (a convolution's (batch, channels, pixels): line b * channels + c takes bias[c]).
// The residual is shaped like y, or is one value per line (a resnet's time embedding,
// (batch, channels)). out = (y + bias) + residual in float, rounded once.

template <typename T>
__device__ void bias_residual(const T* y, const T* bias, const T* residual, T* out, int64_t lines,
                              int64_t width, int channels, int bias_per_line, int residual_per_line) {
    int64_t pos = blockIdx.x * (int64_t)blockDim.x + threadIdx.x;
    if (pos >= width) return;
    for (int64_t line = blockIdx.y; line < lines; line += gridDim.y) {
        int64_t i = line * width + pos;
        float b = to_float(bias[bias_per_line ? (int)(line % channels) : pos]);
        float r = to_float(residual[residual_per_line ? line : i]);
        out[i] = from_float<T>((to_float(y[i]) + b) + r);
    }
}

// A linear layer's output over an image's tokens, y (batch, pixels, channels), plus its
// bias, turned into the image (batch, channels, pixels) and added to residual (the same
// shape): the transformer's proj_out and its skip in one pass. A 32x32 tile of pixels by
// channels goes through shared memory so that both the reads of y (along channels) and
// the reads of residual and writes of out (along pixels) are coalesced. Block (32, 8),
// grid (pixel tiles, channel tiles, batch).

constexpr int TILE = 32;

template <typename T>
__device__ void tokens_to_image_residual(const T* y, const T* bias, const T* residual, T* out,
                                         int64_t pixels, int channels) {
    __shared__ float tile[TILE][TILE + 1];
    int64_t p0 = (int64_t)blockIdx.x * TILE;
    int c0 = blockIdx.y * TILE;
    int64_t batch = blockIdx.z;
    const T* yb = y + batch * pixels * channels;
    for (int k = threadIdx.y; k < TILE; k += blockDim.y) {
        int64_t p = p0 + k;
        int c = c0 + threadIdx.x;
        if (p < pixels && c < channels) tile[k][threadIdx.x] = to_float(yb[p * channels + c]) + to_float(bias[c]);
    }
    __syncthreads();
    for (int k = threadIdx.y; k < TILE; k += blockDim.y) {
        int c = c0 + k;
        int64_t p = p0 + threadIdx.x;
        if (p < pixels && c < channels) {
            int64_t o = (batch * channels + c) * pixels + p;
            out[o] = from_float<T>(tile[threadIdx.x][k] + to_float(residual[o]));
        }
    }
}

// ---- The sinusoidal timestep embedding --------------------------------------------------
//
// diffusers' get_timestep_embedding: row r, column i < half is sin(t_r * freq_i) and column
// half + i is cos(t_r * freq_i) (swapped when flip), freq_i = exp(-ln(10000) * i / denom).
// The timesteps come by value (a kernel parameter, no upload): one for every row when
// count is 1, else one per row. The exponent is formed in float as torch forms it; exp,
// sin and cos are evaluated in double and rounded, so the values are the correctly rounded
// ones the host's libm computes for the CPU path. One block per row.

constexpr int MAX_TIMESTEPS = 256;

struct Timesteps {
    float t[MAX_TIMESTEPS];
};

template <typename T>
__device__ void timestep_embedding(Timesteps ts, int count, T* out, int half, float ln_period,
                                   float denom, int flip) {
    int64_t row = blockIdx.x;
    float t = ts.t[count == 1 ? 0 : row];
    T* o = out + row * 2 * half;
    for (int i = threadIdx.x; i < half; i += blockDim.x) {
        float freq = (float)exp((double)(ln_period * (float)i / denom));
        double arg = (double)(t * freq);
        T s = from_float<T>((float)sin(arg));
        T c = from_float<T>((float)cos(arg));
        o[i] = flip ? c : s;
        o[half + i] = flip ? s : c;
    }
}

#define INSTANTIATE(T, SUFFIX)                                                                   \
    extern "C" __global__ void group_stats_##SUFFIX(const T* x, float* partial, int64_t group_len, \
                                                    int splits) {                                  \
        group_stats<T>(x, partial, group_len, splits);                                             \
    }                                                                                              \
    extern "C" __global__ void group_apply_##SUFFIX(                                               \
        const T* x, T* y, const T* weight, const T* bias, const float* partial, int64_t group_len, \
        int64_t pixels, int channels_per_group, int groups, int splits, float eps, int silu) {     \
        group_apply<T>(x, y, weight, bias, partial, group_len, pixels, channels_per_group, groups, \
                       splits, eps, silu);                                                         \
    }                                                                                              \
    extern "C" __global__ void softmax_rows_##SUFFIX(const float* scores, T* probs, int64_t cols) { \
        softmax_rows<T>(scores, probs, cols);                                                      \
    }                                                                                              \
    extern "C" __global__ void geglu_##SUFFIX(const T* x, T* out, int64_t rows, int64_t n) {       \
        geglu<T>(x, out, rows, n);                                                                 \
    }                                                                                              \
    extern "C" __global__ void bias_residual_##SUFFIX(                                             \
        const T* y, const T* bias, const T* residual, T* out, int64_t lines, int64_t width,        \
        int channels, int bias_per_line, int residual_per_line) {                                  \
        bias_residual<T>(y, bias, residual, out, lines, width, channels, bias_per_line,            \
                         residual_per_line);                                                       \
    }                                                                                              \
    extern "C" __global__ void tokens_to_image_residual_##SUFFIX(                                  \
        const T* y, const T* bias, const T* residual, T* out, int64_t pixels, int channels) {      \
        tokens_to_image_residual<T>(y, bias, residual, out, pixels, channels);                     \
    }                                                                                              \
    extern "C" __global__ void timestep_embedding_##SUFFIX(Timesteps ts, int count, T* out,        \
                                                           int half, float ln_period, float denom, \
                                                           int flip) {                             \
        timestep_embedding<T>(ts, count, out, half, ln_period, denom, flip);                       \
    }

INSTANTIATE(float, f32)
INSTANTIATE(__half, f16)
INSTANTIATE(__nv_bfloat16, bf16)
