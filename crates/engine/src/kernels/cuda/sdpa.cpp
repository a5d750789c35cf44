// Fused attention, softmax(q kᵀ · scale) v in one kernel, through cuDNN's scaled-dot-product
// attention (the cudnn_frontend graph API): the C side of `sdpa.rs`.
//
// Why a C++ shim: the graph API is a header-only C++ library over cuDNN's backend
// descriptors, with no C interface, so this file, compiled by `build.rs` with the host's
// C++ compiler (no nvcc: it launches nothing itself), turns it into the few C calls Rust
// needs. It is shaped around what the engine does with it:
//
// - A context (`SieSdpa`) is one cudnnHandle_t bound to the caller's CUDA stream (candle's),
//   so cuDNN's kernels are ordered with candle's own work and need no synchronisation, and
//   the plans made on that handle. Nothing here locks: a context is used by one thread at a
//   time (the Rust side keeps one per thread and device, as `conv.rs` keeps its handles).
// - A plan is one built graph per shape: dtype, sizes, every tensor's strides and the scale
//   (a graph bakes its scale in), kept for the context's life, so each attention shape of a
//   UNet (a handful) is planned once: heuristics and plan building are slow, while a run
//   only fills a variant pack and queues the kernel. A shape cuDNN refuses is remembered
//   too, with its reason, so it costs no heuristics query after the first.
// - The workspace comes from the caller: Rust allocates it through candle's allocator
//   (cudarc, stream-ordered, with its use tracked by events) and reuses it, as the cuDNN
//   convolutions do, so this file allocates no device memory at all.
// - Nothing is thrown across the C boundary: every entry point catches everything and
//   returns a code; the message of the last failure on this thread is `sie_sdpa_last_error`.
//
// Numerics: cuDNN's SDPA takes q, k, v in half (f16 or bf16), computes q kᵀ with float32
// accumulation, keeps the scaled scores and the softmax in float32 (the graph's intermediate
// and compute types below) and accumulates probs · v in float32, writing only o in half. So
// scores are never rounded to half: what diffusers' `upcast_attention` (which SD 2.1 at 768
// needs, or its scores overflow f16) asks for.

#include <cudnn.h>

#include <array>
#include <cstdint>
#include <cstring>
#include <exception>
#include <map>
#include <memory>
#include <stdexcept>
#include <string>
#include <unordered_map>
#include <utility>

#include <cudnn_frontend.h>

namespace fe = cudnn_frontend;

namespace {

// The tensors' ids in a graph's variant pack.
constexpr int64_t Q_UID = 1;
constexpr int64_t K_UID = 2;
constexpr int64_t V_UID = 3;
constexpr int64_t O_UID = 4;

thread_local std::string last_error;

int fail(int code, std::string message) {
    last_error = std::move(message);
    return code;
}

}  // namespace

extern "C" {

// The return codes; `sdpa.rs` mirrors them.
enum : int {
    SIE_SDPA_OK = 0,
    // Anything that went wrong: bad arguments, a CUDA or cuDNN failure, an exception.
    SIE_SDPA_ERROR = 1,
    // cuDNN has no plan for this shape (on this card, with this cuDNN); the reason is in
    // `sie_sdpa_last_error`. Not an error for the caller, who can compute it another way.
    SIE_SDPA_UNSUPPORTED = 2,
};

// The element type of q, k, v and o.
enum : int32_t {
    SIE_SDPA_F16 = 0,
    SIE_SDPA_BF16 = 1,
};

// One attention shape. Each tensor is [batch, heads, rows, head dim] with the head dim
// contiguous; its strides, in elements, are given for the other three axes, so q, k and v
// can be read where a projection wrote them ((batch, rows, heads · d) needs no transpose)
// and o written in the layout the caller wants. Mirrored by `SdpaShape` in `sdpa.rs`.
struct SieSdpaShape {
    int32_t dtype;
    float scale;
    int64_t batch;
    int64_t heads;
    int64_t s_q;
    int64_t s_kv;
    int64_t d_qk;
    int64_t d_v;
    // batch, head, row
    int64_t q_stride[3];
    int64_t k_stride[3];
    int64_t v_stride[3];
    int64_t o_stride[3];
};

}  // extern "C"

// A planned shape: the built graph and its workspace size, or why cuDNN refused it.
struct SieSdpaPlan {
    std::shared_ptr<fe::graph::Graph> graph;
    int64_t workspace = 0;
    std::string refusal;
};

struct SieSdpa {
    cudnnHandle_t handle = nullptr;
    // Keyed by every field of a `SieSdpaShape` (the scale by its bits). A std::map keeps the
    // plans where they were made, so the pointers handed out stay valid as it grows.
    std::map<std::array<int64_t, 20>, std::unique_ptr<SieSdpaPlan>> plans;

    ~SieSdpa() {
        // The graphs hold backend descriptors made on the handle: they go first.
        plans.clear();
        if (handle != nullptr) {
            cudnnDestroy(handle);
        }
    }
};

namespace {

std::array<int64_t, 20> key_of(const SieSdpaShape &s) {
    uint32_t scale_bits = 0;
    static_assert(sizeof scale_bits == sizeof s.scale, "f32 is 32 bits");
    std::memcpy(&scale_bits, &s.scale, sizeof scale_bits);
    return {s.dtype,       scale_bits,    s.batch,       s.heads,       s.s_q,
            s.s_kv,        s.d_qk,        s.d_v,         s.q_stride[0], s.q_stride[1],
            s.q_stride[2], s.k_stride[0], s.k_stride[1], s.k_stride[2], s.v_stride[0],
            s.v_stride[1], s.v_stride[2], s.o_stride[0], s.o_stride[1], s.o_stride[2]};
}

// Why a shape cannot be described at all (sizes that are not sizes), or "".
std::string malformed(const SieSdpaShape &s) {
    if (s.dtype != SIE_SDPA_F16 && s.dtype != SIE_SDPA_BF16) {
        return "unknown dtype " + std::to_string(s.dtype) + " (0 is f16, 1 is bf16)";
    }
    if (s.batch <= 0 || s.heads <= 0 || s.s_q <= 0 || s.s_kv <= 0 || s.d_qk <= 0 || s.d_v <= 0) {
        return "sizes must be positive: batch " + std::to_string(s.batch) + ", heads " +
               std::to_string(s.heads) + ", s_q " + std::to_string(s.s_q) + ", s_kv " +
               std::to_string(s.s_kv) + ", d_qk " + std::to_string(s.d_qk) + ", d_v " +
               std::to_string(s.d_v);
    }
    return "";
}

std::shared_ptr<fe::graph::Tensor_attributes> input(fe::graph::Graph &graph, const char *name,
                                                    int64_t uid, const SieSdpaShape &s,
                                                    int64_t rows, int64_t d,
                                                    const int64_t stride[3]) {
    return graph.tensor(fe::graph::Tensor_attributes()
                            .set_name(name)
                            .set_uid(uid)
                            .set_dim({s.batch, s.heads, rows, d})
                            .set_stride({stride[0], stride[1], stride[2], 1}));
}

// Plans `s` on `handle`: the graph, validated, lowered to cuDNN's operation graph, the
// engines heuristics mode A ranks (with the fallback list behind them), checked and built,
// the first that builds kept. A refusal is recorded in the plan, not returned as a failure.
std::unique_ptr<SieSdpaPlan> make_plan(cudnnHandle_t handle, const SieSdpaShape &s) {
    auto plan = std::make_unique<SieSdpaPlan>();
    auto graph = std::make_shared<fe::graph::Graph>();
    const auto io = s.dtype == SIE_SDPA_F16 ? fe::DataType_t::HALF : fe::DataType_t::BFLOAT16;
    graph->set_io_data_type(io)
        .set_intermediate_data_type(fe::DataType_t::FLOAT)
        .set_compute_data_type(fe::DataType_t::FLOAT);
    auto q = input(*graph, "q", Q_UID, s, s.s_q, s.d_qk, s.q_stride);
    auto k = input(*graph, "k", K_UID, s, s.s_kv, s.d_qk, s.k_stride);
    auto v = input(*graph, "v", V_UID, s, s.s_kv, s.d_v, s.v_stride);
    // Inference: no softmax statistics (they are for a backward pass), no mask, no dropout.
    // The composite implementation, as the frontend's samples run it: with every option left
    // to it, frontend 1.14 picks its newer single-op "unified" one on cuDNN 9.13.0 exactly,
    // which frontend 1.15 stopped doing (it wants 9.13.1).
    auto options = fe::graph::SDPA_attributes()
                       .set_name("sdpa")
                       .set_implementation(fe::AttentionImplementation_t::COMPOSITE)
                       .set_generate_stats(false)
                       .set_attn_scale(s.scale);
    std::array<std::shared_ptr<fe::graph::Tensor_attributes>, 2> outputs;
    try {
        outputs = graph->sdpa(q, k, v, options);
    } catch (const std::exception &e) {
        // The frontend throws when no implementation takes the graph: a refusal.
        plan->refusal = std::string("sdpa: ") + e.what();
        return plan;
    }
    outputs[0]
        ->set_output(true)
        .set_uid(O_UID)
        .set_dim({s.batch, s.heads, s.s_q, s.d_v})
        .set_stride({s.o_stride[0], s.o_stride[1], s.o_stride[2], 1});

    // A step that fails because cuDNN has no engine for the graph is a refusal, kept so the
    // shape is not planned again and the caller falls back; any other failure (a CUDA or
    // cuDNN API error, an invalid value) is an error, thrown to the caller and not kept.
    auto step = [&plan](const char *what, fe::error_t status) {
        if (status.is_good()) {
            return true;
        }
        const std::string message = std::string(what) + ": " + status.get_message();
        switch (status.get_code()) {
            case fe::error_code_t::GRAPH_NOT_SUPPORTED:
            case fe::error_code_t::GRAPH_EXECUTION_PLAN_CREATION_FAILED:
            case fe::error_code_t::HEURISTIC_QUERY_FAILED:
                plan->refusal = message;
                return false;
            default:
                throw std::runtime_error(message);
        }
    };
    const bool built =
        step("validate", graph->validate()) &&
        step("build_operation_graph", graph->build_operation_graph(handle)) &&
        step("create_execution_plans",
             graph->create_execution_plans({fe::HeurMode_t::A, fe::HeurMode_t::FALLBACK})) &&
        step("check_support", graph->check_support()) &&
        step("build_plans", graph->build_plans(fe::BuildPlanPolicy_t::HEURISTICS_CHOICE)) &&
        step("get_workspace_size", graph->get_workspace_size(plan->workspace));
    if (built) {
        plan->graph = std::move(graph);
    }
    return plan;
}

}  // namespace

extern "C" {

// A context on `stream` (a cudaStream_t / CUstream; the CUDA context that owns it must be
// current on this thread). On success `*out` is the context, freed by `sie_sdpa_destroy`.
int sie_sdpa_create(void *stream, SieSdpa **out) {
    try {
        if (out == nullptr) {
            return fail(SIE_SDPA_ERROR, "sie_sdpa_create: no place for the context");
        }
        *out = nullptr;
        auto ctx = std::make_unique<SieSdpa>();
        cudnnStatus_t status = cudnnCreate(&ctx->handle);
        if (status != CUDNN_STATUS_SUCCESS) {
            ctx->handle = nullptr;
            return fail(SIE_SDPA_ERROR,
                        std::string("cudnnCreate: ") + cudnnGetErrorString(status));
        }
        status = cudnnSetStream(ctx->handle, static_cast<cudaStream_t>(stream));
        if (status != CUDNN_STATUS_SUCCESS) {
            return fail(SIE_SDPA_ERROR,
                        std::string("cudnnSetStream: ") + cudnnGetErrorString(status));
        }
        *out = ctx.release();
        return SIE_SDPA_OK;
    } catch (const std::exception &e) {
        return fail(SIE_SDPA_ERROR, std::string("sie_sdpa_create: ") + e.what());
    } catch (...) {
        return fail(SIE_SDPA_ERROR, "sie_sdpa_create: an unknown exception");
    }
}

// Frees a context and its plans (null is allowed). Its stream's work must not need them.
void sie_sdpa_destroy(SieSdpa *ctx) {
    try {
        delete ctx;
    } catch (...) {
        // A destructor that throws has nothing left to clean up; nothing to report to.
    }
}

// The plan for `shape`, made on first use and kept in `ctx`: on SIE_SDPA_OK, `*plan` (valid
// until `ctx` is destroyed) and `*workspace`, the bytes of device memory its runs need.
// SIE_SDPA_UNSUPPORTED, every time, for a shape cuDNN has no plan for.
int sie_sdpa_plan(SieSdpa *ctx, const SieSdpaShape *shape, const SieSdpaPlan **plan,
                  int64_t *workspace) {
    try {
        if (ctx == nullptr || shape == nullptr || plan == nullptr || workspace == nullptr) {
            return fail(SIE_SDPA_ERROR, "sie_sdpa_plan: a null argument");
        }
        *plan = nullptr;
        *workspace = 0;
        const std::string bad = malformed(*shape);
        if (!bad.empty()) {
            return fail(SIE_SDPA_ERROR, "sie_sdpa_plan: " + bad);
        }
        auto &kept = ctx->plans[key_of(*shape)];
        if (!kept) {
            kept = make_plan(ctx->handle, *shape);
        }
        if (!kept->graph) {
            return fail(SIE_SDPA_UNSUPPORTED, kept->refusal);
        }
        *plan = kept.get();
        *workspace = kept->workspace;
        return SIE_SDPA_OK;
    } catch (const std::exception &e) {
        return fail(SIE_SDPA_ERROR, std::string("sie_sdpa_plan: ") + e.what());
    } catch (...) {
        return fail(SIE_SDPA_ERROR, "sie_sdpa_plan: an unknown exception");
    }
}

// Queues `plan` on the context's stream: o = softmax(q kᵀ · scale) v, with device pointers
// laid out as the plan's shape says and `workspace` of at least its workspace bytes (null
// when that is 0).
int sie_sdpa_run(SieSdpa *ctx, const SieSdpaPlan *plan, const void *q, const void *k,
                 const void *v, void *o, void *workspace) {
    try {
        if (ctx == nullptr || plan == nullptr || !plan->graph) {
            return fail(SIE_SDPA_ERROR, "sie_sdpa_run: no context or no built plan");
        }
        if (q == nullptr || k == nullptr || v == nullptr || o == nullptr ||
            (plan->workspace > 0 && workspace == nullptr)) {
            return fail(SIE_SDPA_ERROR, "sie_sdpa_run: a null device pointer");
        }
        // The variant pack names buffers by uid; cuDNN only reads q, k and v.
        std::unordered_map<fe::graph::Tensor_attributes::uid_t, void *> pack = {
            {Q_UID, const_cast<void *>(q)},
            {K_UID, const_cast<void *>(k)},
            {V_UID, const_cast<void *>(v)},
            {O_UID, o},
        };
        fe::error_t status = plan->graph->execute(ctx->handle, pack, workspace);
        if (status.is_bad()) {
            return fail(SIE_SDPA_ERROR, "sie_sdpa_run: execute: " + status.get_message());
        }
        return SIE_SDPA_OK;
    } catch (const std::exception &e) {
        return fail(SIE_SDPA_ERROR, std::string("sie_sdpa_run: ") + e.what());
    } catch (...) {
        return fail(SIE_SDPA_ERROR, "sie_sdpa_run: an unknown exception");
    }
}

// The message of the last failed call on this thread ("" if none); valid until the next
// call on this thread.
const char *sie_sdpa_last_error(void) { return last_error.c_str(); }

}  // extern "C"
