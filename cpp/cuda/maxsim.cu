// Fused MaxSim on the GPU: the multi-vector store and its search pipeline
//   prepare queries -> score documents (tensor cores) with the running max in
//   registers and per-block top-k lists -> merge the lists per query.
//
// Kernel (maxsim_kernel): a block holds up to 32 queries' tokens in shared
// memory; each of its 8 warps takes whole documents from a shared counter and
// walks them in tiles of 16 token rows straight from the packed (tokens,
// offsets) layout (rows past the document's end are masked to no-ops, never
// stored). A tile is the A operand of warp-level mma.sync (rows = document
// tokens, columns = query tokens), read once from global memory with 16-byte
// loads; the accumulators are folded into a running max per (query token,
// thread) after every tile, and reduced over the warp when the document ends.
// Then one lane per query sums w_t * max_t in float64 in token order (as the
// CPU does) and offers the score to the block's top-k (topk.cuh); merge_kernel
// (select.cu) merges the blocks' lists.
//
// Instructions and accumulation, per storage:
//   f16:  mma m16n8k16 f16 x f16 -> f32; the float32 query is scaled by a power
//         of two per token and split into two f16 terms (about 22 bits).
//   f32:  mma m16n8k8 tf32 x tf32 -> f32, three products (lo*hi + hi*lo + hi*hi,
//         "3xTF32") of operands split into tf32 high and low parts.
//   int8: mma m16n8k32 u8 x s8 -> s32: document codes c + 128 against query
//         codes in [-64, 64], exact; the accumulator plus -128 * sum(q) is
//         <q, c - 128>, scaled by the token's scale before the max: the CPU's
//         arithmetic bit for bit.
// The dimension order inside a 16-byte chunk is permuted identically for the
// document and the query operands (a sum does not care), so every thread
// feeds its fragments from whole 16-byte loads of a row.
#include <cuda_fp16.h>

#include <algorithm>  // std::min, std::max
#include <cmath>      // INFINITY
#include <string>

#include "common.cuh"
#include "flatcoat/maxsim_search.hpp"  // maxsim_codec, normalize_subset: the CPU's rules
#include "kernels.cuh"                 // lists_args_t, merge, fill_missing
#include "maxsim_api.cuh"
#include "store.cuh"  // zeroed_buffer, upload_rows, device_input, call_outputs_t
#include "topk.cuh"

namespace flatcoat {
namespace cuda {

namespace {

constexpr int mv_threads = 256;
constexpr int mv_warps = mv_threads / 32;
constexpr int mv_round = 128;  ///< documents per block between top-k maintenance steps
constexpr int mv_slots = 32;   ///< queries per block at most
constexpr size_t mv_smem_target = 100 * 1024;  // two blocks per SM
constexpr size_t mv_list_budget = size_t(1) << 30;

size_t elem_bytes(codec_t codec) { return codec == codec_t::f32_k ? 4 : codec == codec_t::f16_k ? 2 : 1; }
int query_terms(codec_t codec) { return codec == codec_t::int8_k ? 1 : 2; }

/// Shared-memory row stride (16-byte chunks) of a query token: at least Wp and
/// = 4 (mod 8), so the 8 lanes of a quarter warp (two rows, four chunks each) hit distinct banks.
int query_stride(int wp) { return wp % 8 == 4 ? wp : wp + (4 - wp % 8 + 8) % 8; }

struct mv_args_t {
    const uint4* tokens = nullptr;  ///< document token rows, W chunks each
    int W = 0;                      ///< 16-byte chunks per row
    int Wp = 0;                     ///< W rounded up to 4 (the query rows' length; the rest is zeros)
    int S = 0;                      ///< query rows' stride in shared memory
    const float* scales = nullptr;  ///< u8: per token
    const int64_t* offsets = nullptr;
    const uint32_t* ranks = nullptr;  ///< null: the position is the rank
    size_t docs = 0;
    const uint4* qa = nullptr;      ///< prepared query rows (Wp chunks): f32/f16 high term, u8 codes
    const uint4* qb = nullptr;      ///< low term (f32, f16)
    const float* factor = nullptr;  ///< per query token: weight (x query scale for u8, x 2^-e for f16)
    const int* bias = nullptr;      ///< u8: -128 * sum of the token's codes
    const int64_t* q_offsets = nullptr;  ///< all queries, nq_total + 1
    size_t q0 = 0, nq = 0;          ///< this batch
    int per_group = 1;              ///< queries per block
    int t_pad = 0;                  ///< query rows per block in shared memory
    size_t per_block = 0;           ///< documents (or subset entries) per block, a multiple of mv_round
    const int64_t* subset = nullptr;  ///< restricted: positions, per query from subset_offsets[q]
    const int64_t* subset_offsets = nullptr;
    lists_args_t out;
};

// --------------------------------------------------------------------- mma per storage

struct frag_t {
    uint32_t r[4];  ///< row g k-lo, row g+8 k-lo, row g k-hi, row g+8 k-hi
};

__device__ __forceinline__ uint32_t to_tf32(uint32_t x) {
    uint32_t y;
    asm("cvt.rna.tf32.f32 %0, %1;" : "=r"(y) : "f"(__uint_as_float(x)));
    return y;
}

struct f16_mma_t {
    static constexpr int terms = 2;
    using acc_t = float;
    struct a_t {
        frag_t f;
    };
    __device__ static a_t make(uint32_t x0, uint32_t y0, uint32_t x1, uint32_t y1) { return {{{x0, y0, x1, y1}}}; }
    __device__ static void mma1(float (&d)[4], const frag_t& a, uint32_t b0, uint32_t b1) {
        asm("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
            "{%0,%1,%2,%3};"
            : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
            : "r"(a.r[0]), "r"(a.r[1]), "r"(a.r[2]), "r"(a.r[3]), "r"(b0), "r"(b1));
    }
    /// b[term] holds two steps: words (0, 1) for h = 0, (2, 3) for h = 1.
    __device__ static void mma(float (&d)[4], const a_t& a, const uint4 (&b)[2], int h) {
        mma1(d, a.f, h ? b[1].z : b[1].x, h ? b[1].w : b[1].y);  // the low term first
        mma1(d, a.f, h ? b[0].z : b[0].x, h ? b[0].w : b[0].y);
    }
    __device__ static float value(float acc, int, float) { return acc; }
};

struct f32_mma_t {
    static constexpr int terms = 2;
    using acc_t = float;
    struct a_t {
        frag_t hi, lo;
    };
    __device__ static a_t make(uint32_t x0, uint32_t y0, uint32_t x1, uint32_t y1) {
        a_t a;
        const uint32_t v[4] = {x0, y0, x1, y1};
#pragma unroll
        for (int i = 0; i < 4; ++i) {
            a.hi.r[i] = to_tf32(v[i]);
            a.lo.r[i] = to_tf32(__float_as_uint(__uint_as_float(v[i]) - __uint_as_float(a.hi.r[i])));
        }
        return a;
    }
    __device__ static void mma1(float (&d)[4], const frag_t& a, uint32_t b0, uint32_t b1) {
        asm("mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
            "{%0,%1,%2,%3};"
            : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
            : "r"(a.r[0]), "r"(a.r[1]), "r"(a.r[2]), "r"(a.r[3]), "r"(b0), "r"(b1));
    }
    __device__ static void mma(float (&d)[4], const a_t& a, const uint4 (&b)[2], int h) {
        const uint32_t hi0 = h ? b[0].z : b[0].x, hi1 = h ? b[0].w : b[0].y;
        const uint32_t lo0 = h ? b[1].z : b[1].x, lo1 = h ? b[1].w : b[1].y;
        mma1(d, a.lo, hi0, hi1);
        mma1(d, a.hi, lo0, lo1);
        mma1(d, a.hi, hi0, hi1);
    }
    __device__ static float value(float acc, int, float) { return acc; }
};

struct u8_mma_t {
    static constexpr int terms = 1;
    using acc_t = int;
    struct a_t {
        frag_t f;
    };
    __device__ static a_t make(uint32_t x0, uint32_t y0, uint32_t x1, uint32_t y1) { return {{{x0, y0, x1, y1}}}; }
    __device__ static void mma(int (&d)[4], const a_t& a, const uint4 (&b)[1], int h) {
        asm("mma.sync.aligned.m16n8k32.row.col.s32.u8.s8.s32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
            "{%0,%1,%2,%3};"
            : "+r"(d[0]), "+r"(d[1]), "+r"(d[2]), "+r"(d[3])
            : "r"(a.f.r[0]), "r"(a.f.r[1]), "r"(a.f.r[2]), "r"(a.f.r[3]), "r"(h ? b[0].z : b[0].x),
              "r"(h ? b[0].w : b[0].y));
    }
    /// The CPU's u8 path: float(<q, c - 128>) * token scale (no contraction: one multiply).
    __device__ static float value(int acc, int bias, float scale) { return __fmul_rn(__int2float_rn(acc + bias), scale); }
};

// --------------------------------------------------------------------- one document

/// mw[t] = max over the document's tokens j of <q_t, d_j> (u8: scaled by the token's scale),
/// for the block's t_pad query rows; called by a whole warp.
template <class C, int NT>
__device__ __forceinline__ void document_maxima(const mv_args_t& a, const uint4* qs, const int* bias, size_t doc,
                                                float* mw) {
    const int lane = threadIdx.x & 31;
    const int g = lane >> 2, c = lane & 3;
    const size_t t0 = size_t(a.offsets[doc]), t1 = size_t(a.offsets[doc + 1]);
    const int passes = a.t_pad / (NT * 8);
    for (int pass = 0; pass < passes; ++pass) {
        const int col0 = pass * NT * 8;
        float mx[NT][2];
#pragma unroll
        for (int nt = 0; nt < NT; ++nt) mx[nt][0] = mx[nt][1] = -INFINITY;
        for (size_t r = t0; r < t1; r += 16) {
            const size_t ra = r + g, rb = r + g + 8;
            const bool va = ra < t1, vb = rb < t1;
            typename C::acc_t acc[NT][4];
#pragma unroll
            for (int nt = 0; nt < NT; ++nt)
#pragma unroll
                for (int i = 0; i < 4; ++i) acc[nt][i] = 0;
            for (int k0 = 0; k0 < a.Wp; k0 += 8) {  // 8 chunks per step: two per thread and row
                uint4 X[2], Y[2];
#pragma unroll
                for (int m = 0; m < 2; ++m) {  // loads first: four 16-byte loads in flight
                    const int p = k0 + 4 * m + c;
                    const bool in_row = p < a.W;
                    X[m] = va && in_row ? __ldg(a.tokens + ra * a.W + p) : make_uint4(0, 0, 0, 0);
                    Y[m] = vb && in_row ? __ldg(a.tokens + rb * a.W + p) : make_uint4(0, 0, 0, 0);
                }
#pragma unroll
                for (int m = 0; m < 2; ++m) {
                    if (k0 + 4 * m >= a.Wp) break;  // uniform over the warp
                    const int p = k0 + 4 * m + c;
                    const typename C::a_t A0 = C::make(X[m].x, Y[m].x, X[m].y, Y[m].y);
                    const typename C::a_t A1 = C::make(X[m].z, Y[m].z, X[m].w, Y[m].w);
#pragma unroll
                    for (int nt = 0; nt < NT; ++nt) {
                        const int row = col0 + nt * 8 + g;
                        uint4 B[C::terms];
#pragma unroll
                        for (int term = 0; term < C::terms; ++term) B[term] = qs[(term * a.t_pad + row) * a.S + p];
                        C::mma(acc[nt], A0, B, 0);
                        C::mma(acc[nt], A1, B, 1);
                    }
                }
            }
            const float sa = a.scales && va ? __ldg(a.scales + ra) : 1.0f;
            const float sb = a.scales && vb ? __ldg(a.scales + rb) : 1.0f;
#pragma unroll
            for (int nt = 0; nt < NT; ++nt)
#pragma unroll
                for (int j = 0; j < 2; ++j) {
                    const int b = bias[col0 + nt * 8 + 2 * c + j];
                    if (va) mx[nt][j] = fmaxf(mx[nt][j], C::value(acc[nt][j], b, sa));
                    if (vb) mx[nt][j] = fmaxf(mx[nt][j], C::value(acc[nt][2 + j], b, sb));
                }
        }
#pragma unroll
        for (int nt = 0; nt < NT; ++nt)
#pragma unroll
            for (int j = 0; j < 2; ++j) {
                float v = mx[nt][j];
                v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, 4));
                v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, 8));
                v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, 16));
                if (g == 0) mw[col0 + nt * 8 + 2 * c + j] = v;
            }
    }
}

template <class C, int NT>
__global__ void __launch_bounds__(mv_threads, 2) maxsim_kernel(const mv_args_t a) {
    extern __shared__ uint4 mv_smem[];
    __shared__ topk_state_t<mv_slots> state;
    __shared__ unsigned next[2];
    const int t_pad = a.t_pad;
    uint4* qs = mv_smem;  // terms x t_pad x S chunks
    uint64_t* scratch = reinterpret_cast<uint64_t*>(qs + size_t(C::terms) * t_pad * a.S);
    float* maxima = reinterpret_cast<float*>(scratch + a.out.cap);  // per warp: t_pad
    float* factor = maxima + mv_warps * t_pad;
    int* bias = reinterpret_cast<int*>(factor + t_pad);
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;

    const size_t qb = a.q0 + size_t(blockIdx.x) * a.per_group;
    const size_t qe = min(a.q0 + a.nq, qb + size_t(a.per_group));
    const int nqb = int(qe - qb);
    const size_t t_begin = size_t(a.q_offsets[qb]);
    const int T = int(size_t(a.q_offsets[qe]) - t_begin);
    for (int i = threadIdx.x; i < C::terms * t_pad * a.S; i += blockDim.x) {
        const int term = i / (t_pad * a.S), row = (i / a.S) % t_pad, p = i % a.S;
        uint4 v = make_uint4(0, 0, 0, 0);
        if (row < T && p < a.Wp) v = (term ? a.qb : a.qa)[(t_begin + row) * a.Wp + p];
        qs[i] = v;
    }
    for (int i = threadIdx.x; i < t_pad; i += blockDim.x) {
        factor[i] = i < T ? a.factor[t_begin + i] : 0.0f;
        bias[i] = i < T && a.bias ? a.bias[t_begin + i] : 0;
    }
    if (threadIdx.x == 0) next[0] = next[1] = 0;
    const size_t list_block = size_t(blockIdx.x) * gridDim.y + blockIdx.y;
    block_topk_t<mv_slots> top(state, a.out.lists + list_block * a.per_group * a.out.cap, scratch, a.out.cap,
                               a.per_group, a.out.k, a.out.cap, mv_round);
    top.init();  // its barrier also publishes the queries

    const int64_t* list = nullptr;
    size_t count = a.docs;
    if (a.subset) {
        list = a.subset + a.subset_offsets[qb];
        count = size_t(a.subset_offsets[qb + 1] - a.subset_offsets[qb]);
    }
    const size_t begin = min(count, size_t(blockIdx.y) * a.per_block);
    const size_t end = min(count, begin + a.per_block);
    float* mw = maxima + warp * t_pad;
    int parity = 0;
    for (size_t r0 = begin; r0 < end; r0 += mv_round, parity ^= 1) {
        const size_t r1 = min(end, r0 + mv_round);
        if (threadIdx.x == 0) next[parity ^ 1] = 0;  // for the next round; nobody uses it in this one
        for (;;) {
            unsigned i = 0;
            if (lane == 0) i = atomicAdd(&next[parity], 1u);
            i = __shfl_sync(0xffffffffu, i, 0);
            if (r0 + i >= r1) break;
            const size_t doc = list ? size_t(list[r0 + i]) : r0 + i;
            document_maxima<C, NT>(a, qs, bias, doc, mw);
            __syncwarp();
            const uint32_t rank = a.ranks ? a.ranks[doc] : uint32_t(doc);
            for (int q = lane; q < nqb; q += 32) {
                const int tb = int(size_t(a.q_offsets[qb + q]) - t_begin);
                const int te = int(size_t(a.q_offsets[qb + q + 1]) - t_begin);
                double s = 0.0;  // the CPU's sum: float64, token order, no fused multiply-add
                for (int t = tb; t < te; ++t) s = __dadd_rn(s, __dmul_rn(double(factor[t]), double(mw[t])));
                top.offer(q, make_key(float(s), rank));
            }
            __syncwarp();  // mw is rewritten by the next document
        }
        top.maintain();
    }
    top.finish();
}

// --------------------------------------------------------------------- query preparation

struct mv_prepare_args_t {
    const float* tokens = nullptr;  ///< rows x dim
    const float* weights = nullptr;
    size_t rows = 0, dim = 0;
    int Wp = 0;
    codec_t codec = codec_t::f32_k;
    uint4* qa = nullptr;
    uint4* qb = nullptr;
    float* factor = nullptr;
    int* bias = nullptr;
    int* bad = nullptr;  ///< first token row with NaN/inf (in the token or its weight)
};

__device__ __forceinline__ float warp_max(float v) {
    for (int off = 16; off > 0; off >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, off));
    return v;
}

/// One warp per query token row; mirrors maxsim_search.cpp's prepare() for u8.
__global__ void __launch_bounds__(256) mv_prepare_kernel(const mv_prepare_args_t a) {
    const int lane = threadIdx.x & 31;
    const size_t t = size_t(blockIdx.x) * 8 + (threadIdx.x >> 5);
    if (t >= a.rows) return;  // whole warps only
    const float* x = a.tokens + t * a.dim;
    float amax = 0.0f;
    bool finite = true;
    for (size_t j = lane; j < a.dim; j += 32) {
        const float v = x[j];
        finite = finite && isfinite(v);
        amax = fmaxf(amax, fabsf(v));
    }
    const float w = a.weights ? a.weights[t] : 1.0f;
    if (!__all_sync(0xffffffffu, finite && isfinite(w))) {
        if (lane == 0) atomicMin(a.bad, int(min(t, size_t(0x7FFFFFFE))));
        return;
    }
    amax = warp_max(amax);
    const size_t n = size_t(a.Wp) * 16 / (a.codec == codec_t::f32_k ? 4 : a.codec == codec_t::f16_k ? 2 : 1);
    if (a.codec == codec_t::f32_k) {
        uint32_t* hi = reinterpret_cast<uint32_t*>(a.qa) + t * n;
        uint32_t* lo = reinterpret_cast<uint32_t*>(a.qb) + t * n;
        for (size_t j = lane; j < n; j += 32) {
            const float v = j < a.dim ? x[j] : 0.0f;
            const uint32_t h = to_tf32(__float_as_uint(v));
            hi[j] = h;
            lo[j] = to_tf32(__float_as_uint(v - __uint_as_float(h)));
        }
        if (lane == 0) a.factor[t] = w;
    } else if (a.codec == codec_t::f16_k) {
        // A power of two, so scaling is exact: max |q| lands in [2^13, 2^14).
        int e = 0;
        if (amax > 0.0f) frexpf(amax, &e);
        const float s = amax > 0.0f ? ldexpf(1.0f, 14 - e) : 1.0f;
        __half* hi = reinterpret_cast<__half*>(a.qa) + t * n;
        __half* lo = reinterpret_cast<__half*>(a.qb) + t * n;
        for (size_t j = lane; j < n; j += 32) {
            const float v = j < a.dim ? x[j] * s : 0.0f;
            const __half h = __float2half_rn(v);
            hi[j] = h;
            lo[j] = __float2half_rn(v - __half2float(h));
        }
        if (lane == 0) a.factor[t] = __fmul_rn(w, amax > 0.0f ? ldexpf(1.0f, e - 14) : 1.0f);
    } else {
        // Symmetric per-token quantization to [-64, 64], as the CPU: scale = max|q| / 64, lround(q / scale).
        const float scale = amax > 0.0f ? __fdiv_rn(amax, 64.0f) : 1.0f;
        int8_t* codes = reinterpret_cast<int8_t*>(a.qa) + t * n;
        int sum = 0;
        for (size_t j = lane; j < n; j += 32) {
            int code = 0;
            if (j < a.dim) {
                code = int(lroundf(__fdiv_rn(x[j], scale)));
                code = max(-64, min(64, code));
            }
            sum += code;
            codes[j] = int8_t(code);
        }
        for (int off = 16; off > 0; off >>= 1) sum += __shfl_xor_sync(0xffffffffu, sum, off);
        if (lane == 0) {
            a.bias[t] = -128 * sum;
            a.factor[t] = __fmul_rn(w, scale);
        }
    }
}

// --------------------------------------------------------------------- launch helpers

template <class C, int NT>
const void* kernel_of() {
    return reinterpret_cast<const void*>(maxsim_kernel<C, NT>);
}

const void* pick_kernel(codec_t codec, int nt) {
    switch (codec) {
        case codec_t::f32_k: return kernel_of<f32_mma_t, 4>();
        case codec_t::f16_k: return nt == 4 ? kernel_of<f16_mma_t, 4>() : kernel_of<f16_mma_t, 8>();
        case codec_t::int8_k: return nt == 4 ? kernel_of<u8_mma_t, 4>() : kernel_of<u8_mma_t, 8>();
        case codec_t::binary_k:
        case codec_t::bf16_k: break;  // refused by the store's constructor
    }
    return nullptr;
}

void launch_kernel(codec_t codec, int nt, dim3 grid, size_t smem, cudaStream_t stream, const mv_args_t& a) {
    auto go = [&](auto kernel) {
        kernel<<<grid, mv_threads, smem, stream>>>(a);
        FC_CUDA_LAUNCHED(maxsim_kernel);
    };
    switch (codec) {
        case codec_t::f32_k: go(maxsim_kernel<f32_mma_t, 4>); break;
        case codec_t::f16_k: nt == 4 ? go(maxsim_kernel<f16_mma_t, 4>) : go(maxsim_kernel<f16_mma_t, 8>); break;
        case codec_t::int8_k: nt == 4 ? go(maxsim_kernel<u8_mma_t, 4>) : go(maxsim_kernel<u8_mma_t, 8>); break;
        case codec_t::binary_k:
        case codec_t::bf16_k: break;  // refused by the store's constructor
    }
}

/// Dynamic shared memory of a block with t_pad query rows.
size_t kernel_smem(codec_t codec, int S, int t_pad, int cap) {
    return size_t(query_terms(codec)) * t_pad * S * 16 + size_t(cap) * 8 + size_t(mv_warps) * t_pad * 4 +
           size_t(t_pad) * 8;
}

/// Query rows per pass: 32 (four n-tiles) for short groups, else 64; f32 always 32
/// (its split operands need the registers: 64 spills).
int tiles_for(codec_t codec, size_t tokens) { return codec == codec_t::f32_k || tokens <= 32 ? 4 : 8; }

}  // namespace

// --------------------------------------------------------------------- the store

struct maxsim_store_t::impl_t {
    int device = 0;
    codec_t codec = codec_t::f32_k;
    size_t dim = 0, docs = 0, tokens = 0;
    size_t W = 0;  // 16-byte chunks per token row
    device_buffer_t<uint4> rows;
    device_buffer_t<float> scales;
    device_buffer_t<int64_t> offsets, ids;
    device_buffer_t<uint32_t> ranks;

    /// A field by name ("tokens", "scales", "offsets", "ids", "ranks"); flatcoat::error for an unknown name.
    field_t field(const std::string& name) {
        auto scalars = [](void* base, size_t width, size_t n) { return field_t{static_cast<char*>(base), width, width, n}; };
        if (name == "tokens") return field_t{reinterpret_cast<char*>(rows.get()), W * 16, dim * elem_bytes(codec), tokens};
        if (name == "scales") return scalars(scales.get(), 4, tokens);
        if (name == "offsets") return scalars(offsets.get(), 8, docs + 1);
        if (name == "ids") return scalars(ids.get(), 8, docs);
        if (name == "ranks") return scalars(ranks.get(), 4, docs);
        throw error("field: unknown '" + name + "'");
    }
};

maxsim_store_t::maxsim_store_t(int device, codec_t codec, size_t dim, size_t docs, size_t tokens, bool has_ranks)
    : impl_(new impl_t) {
    if (dim == 0) throw error("dim: must be positive");
    if (docs >= 0xFFFFFFFFull)
        throw error("docs: a GPU multi-vector store holds at most 4294967294 documents; shard the index");
    if (tokens < docs) throw error("tokens: every document needs at least one token");
    impl_t& s = *impl_;
    s.codec = maxsim_codec(codec);
    device_guard_t guard(device);
    s.device = device;
    s.dim = dim;
    s.docs = docs;
    s.tokens = tokens;
    s.W = ceil_div(dim * elem_bytes(codec), 16);
    s.rows = zeroed_buffer<uint4>(tokens * s.W);
    if (codec == codec_t::int8_k) s.scales = device_buffer_t<float>(tokens);
    s.offsets = zeroed_buffer<int64_t>(docs + 1);
    s.ids = device_buffer_t<int64_t>(docs);
    if (has_ranks) s.ranks = device_buffer_t<uint32_t>(docs);
    FC_CUDA_CHECK(cudaDeviceSynchronize());
}

maxsim_store_t::~maxsim_store_t() {
    if (impl_) release_on_device(impl_, impl_->device);
}

int maxsim_store_t::device() const { return impl_->device; }
codec_t maxsim_store_t::codec() const { return impl_->codec; }
size_t maxsim_store_t::dim() const { return impl_->dim; }
size_t maxsim_store_t::docs() const { return impl_->docs; }
size_t maxsim_store_t::tokens() const { return impl_->tokens; }
size_t maxsim_store_t::nbytes() const {
    const impl_t& s = *impl_;
    return s.rows.bytes() + s.scales.bytes() + s.offsets.bytes() + s.ids.bytes() + s.ranks.bytes();
}

void maxsim_store_t::upload(const std::string& field, size_t row_begin, const void* src, size_t n, size_t src_pitch) {
    upload_rows(impl_->device, field, impl_->field(field), row_begin, src, n, src_pitch);
}

void maxsim_store_t::search(const maxsim_search_t& a) const {
    const impl_t& s = *impl_;
    if (a.k == 0) throw error("k: must be positive");
    if (a.k > max_k) throw error("k: at most " + std::to_string(max_k) + " on the GPU, got " + std::to_string(a.k));
    if (a.nq == 0) return;
    if (a.offsets == nullptr || a.tokens == nullptr || a.out_scores == nullptr || a.out_ids == nullptr)
        throw error("queries: the query tokens, offsets or outputs are missing");
    if (a.offsets[0] != 0) throw error("queries: offsets must start at 0");
    for (size_t i = 0; i < a.nq; ++i)
        if (a.offsets[i + 1] <= a.offsets[i])
            throw error("queries: offsets must be strictly increasing: query " + std::to_string(i) + " has " +
                        std::to_string(a.offsets[i + 1] - a.offsets[i]) + " tokens");
    const size_t nq = a.nq, k = a.k, dim = s.dim;
    const size_t q_rows = size_t(a.offsets[nq]);
    if (q_rows >= 0x7FFFFFFFull) throw error("queries: at most 2147483646 query tokens per call");

    // A restricted search scores sorted, distinct positions per query, as the CPU does.
    const bool restricted = a.subset != nullptr;
    subset_t subset;
    if (restricted) subset = normalize_subset(a.subset, a.subset_offsets, nq, s.docs);

    device_guard_t guard(s.device);
    const cudaStream_t stream = reinterpret_cast<cudaStream_t>(a.stream);
    // One flag: the first query token row with NaN/inf in the token or its weight.
    call_outputs_t outputs(a.out_scores, a.out_ids, nq * k, a.on_device, 1, stream);
    float* out_scores = outputs.scores();
    int64_t* out_ids = outputs.ids();
    device_buffer_t<float> staged_tokens, staged_weights;
    device_buffer_t<int64_t> q_offsets, subset_rows, subset_offsets;
    device_buffer_t<uint4> qa, qb;
    device_buffer_t<float> factor;
    device_buffer_t<int> bias;
    device_buffer_t<uint64_t> lists, merged;

    const size_t keep = std::min(k, restricted ? subset.longest : s.docs);
    if (keep == 0) {
        launch_fill_missing(out_scores, out_ids, nq * k, false, stream);
    } else {
        const float* tokens = device_input(a.tokens, q_rows * dim, a.on_device, staged_tokens, stream);
        const float* weights = a.weights ? device_input(a.weights, q_rows, a.on_device, staged_weights, stream) : nullptr;
        // The host arrays below (offsets, the subset) outlive their copies: all end at the final synchronisation.
        const int64_t* d_offsets = device_input(a.offsets, nq + 1, false, q_offsets, stream);
        const int64_t* d_subset = nullptr;
        const int64_t* d_subset_offsets = nullptr;
        if (restricted) {
            d_subset = device_input(subset.positions.data(), subset.positions.size(), false, subset_rows, stream);
            d_subset_offsets = device_input(subset.offsets.data(), nq + 1, false, subset_offsets, stream);
        }

        // Prepared query rows.
        const int W = int(s.W);
        const int Wp = int(round_up(s.W, 4));
        const int S = query_stride(Wp);
        qa = device_buffer_t<uint4>(q_rows * Wp, stream);
        if (query_terms(s.codec) == 2) qb = device_buffer_t<uint4>(q_rows * Wp, stream);
        factor = device_buffer_t<float>(q_rows, stream);
        if (s.codec == codec_t::int8_k) bias = device_buffer_t<int>(q_rows, stream);
        mv_prepare_args_t p;
        p.tokens = tokens;
        p.weights = weights;
        p.rows = q_rows;
        p.dim = dim;
        p.Wp = Wp;
        p.codec = s.codec;
        p.qa = qa.get();
        p.qb = qb.get();
        p.factor = factor.get();
        p.bias = bias.get();
        p.bad = outputs.flags();
        mv_prepare_kernel<<<unsigned(ceil_div(q_rows, 8)), 256, 0, stream>>>(p);
        FC_CUDA_LAUNCHED(mv_prepare_kernel);

        // Queries per block: as many as fit the shared-memory target (one per block when restricted).
        const device_info_t info = current_device_info();
        const size_t cap = topk_capacity(keep, mv_round);
        auto most_tokens = [&](size_t group) {
            size_t most = 0;
            for (size_t q = 0; q < nq; q += group)
                most = std::max(most, size_t(a.offsets[std::min(nq, q + group)] - a.offsets[q]));
            return most;
        };
        size_t group = restricted ? 1 : std::min<size_t>(mv_slots, nq);
        size_t t_max = most_tokens(group);
        auto smem_of = [&](size_t tokens_) {
            const int nt = tiles_for(s.codec, tokens_);
            return kernel_smem(s.codec, S, int(round_up(tokens_, size_t(nt) * 8)), int(cap));
        };
        while (group > 1 && smem_of(t_max) > std::min(info.max_smem, mv_smem_target)) {
            group = std::max<size_t>(1, group / 2);
            t_max = most_tokens(group);
        }
        const size_t smem = smem_of(t_max);
        if (smem > info.max_smem)
            throw error("a query of " + std::to_string(t_max) + " tokens at dim " + std::to_string(dim) +
                        " with k " + std::to_string(keep) + " needs " + std::to_string(smem) +
                        " bytes of shared memory; this GPU has " + std::to_string(info.max_smem) +
                        " per block: split the query");
        const int nt = tiles_for(s.codec, t_max);
        const int t_pad = int(round_up(t_max, size_t(nt) * 8));
        const void* kernel = pick_kernel(s.codec, nt);
        allow_smem(kernel, smem);
        int per_sm = 0;
        FC_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, mv_threads, smem));
        const size_t concurrent = size_t(std::max(1, per_sm)) * size_t(info.sms);

        // Documents per block: about four waves of blocks, whole rounds each.
        const size_t count = restricted ? subset.longest : s.docs;
        const size_t rounds = ceil_div(count, mv_round);
        const size_t groups_all = ceil_div(nq, group);
        const size_t wanted = std::max<size_t>(1, ceil_div(concurrent * 4, groups_all));
        size_t per_block = std::max<size_t>(1, ceil_div(rounds, wanted)) * mv_round;
        while (ceil_div(count, per_block) > 65535) per_block *= 2;
        const size_t row_blocks = ceil_div(count, per_block);

        // Query groups per launch, so that the block lists stay within the budget.
        const size_t group_bytes = row_blocks * group * cap * sizeof(uint64_t);
        const size_t batch_groups = std::max<size_t>(1, std::min(groups_all, mv_list_budget / group_bytes));
        const size_t batch = batch_groups * group;
        const size_t merge_cap = topk_capacity(keep, merge_round);
        lists = device_buffer_t<uint64_t>(batch_groups * row_blocks * group * cap, stream);
        merged = device_buffer_t<uint64_t>(std::min(batch, nq) * merge_cap, stream);

        for (size_t b0 = 0; b0 < nq; b0 += batch) {
            const size_t nb = std::min(batch, nq - b0);
            mv_args_t m;
            m.tokens = s.rows.get();
            m.W = W;
            m.Wp = Wp;
            m.S = S;
            m.scales = s.scales.get();
            m.offsets = s.offsets.get();
            m.ranks = s.ranks.get();
            m.docs = s.docs;
            m.qa = qa.get();
            m.qb = qb.get();
            m.factor = factor.get();
            m.bias = bias.get();
            m.q_offsets = d_offsets;
            m.q0 = b0;
            m.nq = nb;
            m.per_group = int(group);
            m.t_pad = t_pad;
            m.per_block = per_block;
            m.subset = d_subset;
            m.subset_offsets = d_subset_offsets;
            m.out.lists = lists.get();
            m.out.k = int(keep);
            m.out.cap = int(cap);
            launch_kernel(s.codec, nt, dim3(unsigned(ceil_div(nb, group)), unsigned(row_blocks)), smem, stream, m);

            merge_args_t mg = merge_lists(lists.get(), int(group), row_blocks, int(cap), int(keep), nb, merged.get(),
                                          int(merge_cap));
            mg.emit.scores = out_scores + b0 * k;
            mg.emit.ids_out = out_ids + b0 * k;
            mg.emit.k = k;
            mg.emit.ids = s.ids.get();  // in rank order: key rows are ranks
            launch_merge(mg, stream);
        }
    }

    const int flag = outputs.finish()[0];
    if (size_t(flag) < q_rows)
        throw error("queries: token row " + std::to_string(flag) +
                    " (or its weight) contains NaN or inf; remove or fix it");
}

}  // namespace cuda
}  // namespace flatcoat
