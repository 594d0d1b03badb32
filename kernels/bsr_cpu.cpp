// Block-sparse (BSR) x dense on the CPU, fp32: Y (T, N) = X (T, K) @ W^T + bias, W (N, K) stored in
// square b x b blocks (b = 16, 32 or 64), the nn.Linear layout. Compiled ahead of time (at export) into
// a shared library with a C ABI; no compiler is needed where it runs.
//
// Layout of the stored blocks ("packed"): block p holds W[r*b + i, c*b + k] at vals[p*b*b + k*b + i]
// (each block transposed), so that for a fixed k the b outputs of a block row are one contiguous run.
// The micro-kernel keeps an MR tokens x 32 outputs tile of Y in registers across every stored block of
// its block row: per k it loads two 16-float vectors of W and broadcasts MR values of X.
// Work is split over (token chunk, block row) pairs with OpenMP; rows are independent, no atomics.
#include <algorithm>
#include <cstdint>
#include <cstring>
#include <omp.h>
#include <vector>

typedef float v16 __attribute__((vector_size(64), aligned(4)));   // one zmm, or two ymm on AVX2

#if defined(__AVX512F__)
static const int MR = 6;   // 6 x 2 zmm accumulators of 32 zmm registers
#else
static const int MR = 3;   // 3 x 2 x 2 ymm accumulators of 16 ymm registers
#endif
static const int TCHUNK = 96;  // tokens per work item: X rows reused across a block row's blocks

static inline v16 load(const float* p) { v16 v; std::memcpy(&v, p, sizeof v); return v; }
static inline void store(float* p, v16 v) { std::memcpy(p, &v, sizeof v); }

// Y[t0..t0+M) x [n0..n0+16*NV) for block row `br`, outputs j0..j0+16*NV of the block.
template <int M, int NV>
static inline void tile(const float* x, int64_t K, const float* vals, const int64_t* cols, int64_t p0,
                        int64_t p1, int64_t b, int64_t j0, const float* bias, float* y, int64_t ldy,
                        int64_t nvalid) {
    v16 acc[M][NV];
    for (int m = 0; m < M; m++)
        for (int v = 0; v < NV; v++) acc[m][v] = v16{} ;
    for (int64_t p = p0; p < p1; p++) {
        const int64_t c0 = cols[p] * b;
        const int64_t kmax = std::min<int64_t>(b, K - c0);
        const float* w = vals + p * b * b + j0;
        const float* xr = x + c0;
        for (int64_t k = 0; k < kmax; k++) {
            v16 wv[NV];
            for (int v = 0; v < NV; v++) wv[v] = load(w + k * b + 16 * v);
            for (int m = 0; m < M; m++) {
                const float a = xr[m * K + k];
                for (int v = 0; v < NV; v++) acc[m][v] += a * wv[v];
            }
        }
    }
    for (int m = 0; m < M; m++) {
        float out[16 * NV];
        for (int v = 0; v < NV; v++) {
            v16 r = acc[m][v];
            if (bias) r += load(bias + 16 * v);
            store(out + 16 * v, r);
        }
        std::memcpy(y + m * ldy, out, sizeof(float) * std::min<int64_t>(nvalid, 16 * NV));
    }
}

// the token remainder (fewer than MR rows), each count its own unrolled instance
template <int M, int NV>
static void rest(int64_t r, const float* x, int64_t K, const float* vals, const int64_t* cols, int64_t p0,
                 int64_t p1, int64_t b, int64_t j0, const float* bias, float* y, int64_t ldy, int64_t nvalid) {
    if (r == M) tile<M, NV>(x, K, vals, cols, p0, p1, b, j0, bias, y, ldy, nvalid);
    else if constexpr (M > 1) rest<M - 1, NV>(r, x, K, vals, cols, p0, p1, b, j0, bias, y, ldy, nvalid);
}

template <int NV>
static void tiles(int64_t M, const float* x, int64_t K, const float* vals, const int64_t* cols, int64_t p0,
                  int64_t p1, int64_t b, int64_t j0, const float* bias, float* y, int64_t ldy, int64_t nvalid) {
    int64_t t = 0;
    for (; t + MR <= M; t += MR)
        tile<MR, NV>(x + t * K, K, vals, cols, p0, p1, b, j0, bias, y + t * ldy, ldy, nvalid);
    if (M > t)
        rest<MR - 1, NV>(M - t, x + t * K, K, vals, cols, p0, p1, b, j0, bias, y + t * ldy, ldy, nvalid);
}

// One product: the work items are (token chunk, block row) pairs, independent of each other.
struct Problem {
    const float* x; int64_t T, K; const float* vals; const int64_t* rowptr; const int64_t* cols;
    int64_t nbr, b; const float* bias; float* y; int64_t N;
    int64_t items() const { return ((T + TCHUNK - 1) / TCHUNK) * nbr; }
};

static void run_item(const Problem& P, int64_t it) {
    const int64_t br = it % P.nbr, ch = it / P.nbr;
    const int64_t t0 = ch * TCHUNK, M = std::min<int64_t>(TCHUNK, P.T - t0);
    const int64_t n0 = br * P.b;
    for (int64_t j0 = 0; j0 < P.b; j0 += 32) {
        const int64_t nvalid = std::min<int64_t>(std::min<int64_t>(32, P.b - j0), P.N - n0 - j0);
        if (nvalid <= 0) break;
        const float* bj = P.bias ? P.bias + n0 + j0 : nullptr;
        float* yt = P.y + t0 * P.N + n0 + j0;
        const float* xt = P.x + t0 * P.K;
        if (P.b == 16)
            tiles<1>(M, xt, P.K, P.vals, P.cols, P.rowptr[br], P.rowptr[br + 1], P.b, j0, bj, yt, P.N, nvalid);
        else
            tiles<2>(M, xt, P.K, P.vals, P.cols, P.rowptr[br], P.rowptr[br + 1], P.b, j0, bj, yt, P.N, nvalid);
    }
}

static bool supported_block(int64_t b) { return b == 16 || b == 32 || b == 64; }

extern "C" {

int compress_bsr_abi_version() { return 1; }

int compress_bsr_mr() { return MR; }

// x (T, K) row-major; vals (nnzb, b, b) packed (see above); rowptr (nbr + 1); cols (nnzb) block columns;
// bias: nbr*b floats (padded) or null; y (T, N) row-major. Returns 0, or -1 for an unsupported block.
// Threads: OpenMP (`threads`, 0: OpenMP's default).
int compress_bsr_linear_f32(const float* x, int64_t T, int64_t K, const float* vals, const int64_t* rowptr,
                            const int64_t* cols, int64_t nbr, int64_t b, const float* bias, float* y,
                            int64_t N, int threads) {
    if (!supported_block(b)) return -1;
    const Problem P{x, T, K, vals, rowptr, cols, nbr, b, bias, y, N};
    const int64_t items = P.items();
    if (threads <= 0) threads = omp_get_max_threads();
#pragma omp parallel for schedule(dynamic, 1) num_threads(threads) if (items > 1 && threads > 1)
    for (int64_t it = 0; it < items; it++) run_item(P, it);
    return 0;
}

}  // extern "C"

// ------------------------------------------------------------------ onnxruntime custom op
// `ai.compress::BlockSparseLinear` for onnxruntime's CPU execution provider, registered by
// SessionOptions.register_custom_ops_library(path of this library). Inputs: X (..., K) float, values
// (nnzb, b, b) float (packed as above), rowptr (nbr + 1) int64, cols (nnzb) int64, bias (nbr * b) float;
// attributes block, out_features; output (..., out_features). The weights are initializers, read in place.
// The work items run on onnxruntime's intra-op thread pool (KernelContext_ParallelFor), so one --threads
// setting governs the whole session.
//
// onnxruntime's C API is a table of function pointers whose order never changes (new entries are appended;
// GetApi(version) returns it), so this file names the few entries it calls by their position in the table
// rather than including onnxruntime's headers (which no package on PyPI ships).
namespace ortabi {
typedef void Status;  // OrtStatus
typedef void Value;   // OrtValue
enum Slot : int {     // positions in the OrtApi table (onnxruntime_c_api.h, struct OrtApi)
    CreateCustomOpDomain = 26,
    CustomOpDomain_Add = 27,
    AddCustomOpDomain = 28,
    KernelInfoGetAttribute_int64 = 86,
    KernelContext_GetInput = 90,
    KernelContext_GetOutput = 91,
    GetTensorMutableData = 51,
    GetTensorTypeAndShape = 65,
    GetDimensionsCount = 61,
    GetDimensions = 62,
    ReleaseTensorTypeAndShapeInfo = 99,
    KernelContext_ParallelFor = 274,
};
const uint32_t API_VERSION = 17;  // onnxruntime >= 1.17: every entry above exists there (ParallelFor: 17)
const uint32_t OP_VERSION = 12;   // the CustomOp fields below (through the output characteristic; ORT reads more only above 12)
const int FLOAT = 1, INT64 = 7;   // ONNXTensorElementDataType
const char* const DOMAIN = "ai.compress";
}  // namespace ortabi

namespace {
using namespace ortabi;
const void* const* g_api = nullptr;   // the OrtApi table
template <class F> F api(Slot s) { return reinterpret_cast<F>(g_api[s]); }

struct OpKernel { int64_t block = 0, out_features = 0; };

// the custom op's description, laid out as onnxruntime's struct OrtCustomOp (fields in their fixed order)
struct CustomOp {
    uint32_t version;
    void* (*CreateKernel)(const CustomOp*, const void* api, const void* info);
    const char* (*GetName)(const CustomOp*);
    const char* (*GetExecutionProviderType)(const CustomOp*);
    int (*GetInputType)(const CustomOp*, size_t);
    size_t (*GetInputTypeCount)(const CustomOp*);
    int (*GetOutputType)(const CustomOp*, size_t);
    size_t (*GetOutputTypeCount)(const CustomOp*);
    void (*KernelCompute)(void* kernel, void* context);
    void (*KernelDestroy)(void* kernel);
    int (*GetInputCharacteristic)(const CustomOp*, size_t);
    int (*GetOutputCharacteristic)(const CustomOp*, size_t);
};

void* create_kernel(const CustomOp*, const void*, const void* info) {
    auto* k = new OpKernel;
    auto get = api<Status* (*)(const void*, const char*, int64_t*)>(KernelInfoGetAttribute_int64);
    if (get(info, "block", &k->block) || get(info, "out_features", &k->out_features)) {
        // a missing attribute: leave zeros; compute reports it (CreateKernel (v1) cannot return a status)
        k->block = k->out_features = 0;
    }
    return k;
}

const void* input(void* ctx, size_t i) {
    const void* v = nullptr;
    api<Status* (*)(void*, size_t, const void**)>(KernelContext_GetInput)(ctx, i, &v);
    return v;
}

void* data(const void* value) {
    void* p = nullptr;
    api<Status* (*)(const void*, void**)>(GetTensorMutableData)(value, &p);
    return p;
}

std::vector<int64_t> dims(const void* value) {
    void* info = nullptr;
    api<Status* (*)(const void*, void**)>(GetTensorTypeAndShape)(value, &info);
    size_t n = 0;
    api<Status* (*)(const void*, size_t*)>(GetDimensionsCount)(info, &n);
    std::vector<int64_t> d(n);
    api<Status* (*)(const void*, int64_t*, size_t)>(GetDimensions)(info, d.data(), n);
    api<void (*)(void*)>(ReleaseTensorTypeAndShapeInfo)(info);
    return d;
}

void parallel_item(void* problem, size_t it) { run_item(*static_cast<const Problem*>(problem), (int64_t)it); }

void compute(void* kernel, void* ctx) {
    const OpKernel& k = *static_cast<OpKernel*>(kernel);
    const void* xv = input(ctx, 0);
    std::vector<int64_t> xd = dims(xv), rd = dims(input(ctx, 2));
    if (xd.empty() || rd.size() != 1 || !supported_block(k.block)) return;   // shapes checked at export
    const int64_t K = xd.back();
    int64_t T = 1;
    for (size_t i = 0; i + 1 < xd.size(); i++) T *= xd[i];
    std::vector<int64_t> yd(xd);
    yd.back() = k.out_features;
    void* yv = nullptr;
    api<Status* (*)(void*, size_t, const int64_t*, size_t, void**)>(KernelContext_GetOutput)(
        ctx, 0, yd.data(), yd.size(), &yv);
    const Problem P{static_cast<const float*>(data(xv)), T, K, static_cast<const float*>(data(input(ctx, 1))),
                    static_cast<const int64_t*>(data(input(ctx, 2))), static_cast<const int64_t*>(data(input(ctx, 3))),
                    rd[0] - 1, k.block, static_cast<const float*>(data(input(ctx, 4))), static_cast<float*>(data(yv)),
                    k.out_features};
    const int64_t items = P.items();
    if (items <= 0) return;
    auto pfor = api<Status* (*)(void*, void (*)(void*, size_t), size_t, size_t, void*)>(KernelContext_ParallelFor);
    if (items == 1 || pfor(ctx, parallel_item, (size_t)items, 0, (void*)&P) != nullptr)
        for (int64_t it = 0; it < items; it++) run_item(P, it);
}

const CustomOp kOp = {
    OP_VERSION,
    create_kernel,
    [](const CustomOp*) -> const char* { return "BlockSparseLinear"; },
    [](const CustomOp*) -> const char* { return nullptr; },   // null: the CPU execution provider
    [](const CustomOp*, size_t i) -> int { return (i == 2 || i == 3) ? INT64 : FLOAT; },
    [](const CustomOp*) -> size_t { return 5; },
    [](const CustomOp*, size_t) -> int { return FLOAT; },
    [](const CustomOp*) -> size_t { return 1; },
    compute,
    [](void* kernel) { delete static_cast<OpKernel*>(kernel); },
    [](const CustomOp*, size_t) -> int { return 0; },   // INPUT_OUTPUT_REQUIRED
    [](const CustomOp*, size_t) -> int { return 0; },
};
}  // namespace

struct OrtApiBaseABI { const void* (*GetApi)(uint32_t); const char* (*GetVersionString)(); };

extern "C" __attribute__((visibility("default")))
void* RegisterCustomOps(void* session_options, const OrtApiBaseABI* base) {
    g_api = static_cast<const void* const*>(base->GetApi(API_VERSION));
    if (!g_api) return nullptr;   // onnxruntime older than 1.16 returns no table: nothing can be reported
    void* domain = nullptr;
    if (Status* s = api<Status* (*)(const char*, void**)>(CreateCustomOpDomain)(DOMAIN, &domain)) return s;
    if (Status* s = api<Status* (*)(void*, const CustomOp*)>(CustomOpDomain_Add)(domain, &kOp)) return s;
    return api<Status* (*)(void*, void*)>(AddCustomOpDomain)(session_options, domain);
}
