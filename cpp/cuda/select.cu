// The small kernels around the scans: query preparation, the merge of the
// per-block lists, exact re-ranking of a shortlist, top-k of given scores, and
// turning keys into reported (score, id) pairs.
#include <cmath>  // INFINITY

#include "common.cuh"
#include "kernels.cuh"
#include "topk.cuh"

namespace flatcoat {
namespace cuda {

namespace {

constexpr int prepare_threads = 128;

/// Sum over the block, the same order in every thread (so every thread gets the same bits).
__device__ double block_sum(double v, double* shared) {
    for (int off = 16; off > 0; off >>= 1) v += __shfl_xor_sync(0xffffffffu, v, off);
    if ((threadIdx.x & 31) == 0) shared[threadIdx.x / 32] = v;
    __syncthreads();
    double total = 0.0;
    for (int w = 0; w < int(blockDim.x / 32); ++w) total += shared[w];
    __syncthreads();  // the shared slots are reused by the next reduction
    return total;
}

__device__ float block_max(float v, float* shared) {
    for (int off = 16; off > 0; off >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, off));
    if ((threadIdx.x & 31) == 0) shared[threadIdx.x / 32] = v;
    __syncthreads();
    float best = 0.0f;
    for (int w = 0; w < int(blockDim.x / 32); ++w) best = fmaxf(best, shared[w]);
    __syncthreads();
    return best;
}

/// One block per query; mirrors the CPU's preparation (search_dense, normalize_rows) term by term.
__global__ void __launch_bounds__(prepare_threads) prepare_kernel(const prepare_args_t a) {
    __shared__ double red_d[prepare_threads / 32];
    __shared__ float red_f[prepare_threads / 32];
    const size_t q = blockIdx.x;
    const float* x = a.queries + q * a.dim;

    double ss = 0.0;
    bool finite = true;
    for (size_t j = threadIdx.x; j < a.dim; j += blockDim.x) {
        const float v = x[j];
        finite = finite && isfinite(v);
        ss += double(v) * double(v);
    }
    if (__syncthreads_or(!finite)) {
        if (threadIdx.x == 0) atomicMin(&a.bad[0], int(q));
        return;
    }
    ss = block_sum(ss, red_d);
    double norm = 1.0;
    if (a.normalize) {
        norm = sqrt(ss);
        if (norm == 0.0) {
            if (threadIdx.x == 0) atomicMin(&a.bad[1], int(q));
            return;
        }
    }
    // numpy's normalize_rows: float64 division, then rounding to float32.
    auto value = [&](size_t j) { return a.normalize ? float(double(x[j]) / norm) : x[j]; };
    const bool u8 = a.codec == codec_t::int8_k;
    auto prepared = [&](size_t j) { return value(j); };

    if (a.q_sq_norms) {
        double qn = ss;
        if (a.normalize) {
            qn = 0.0;
            for (size_t j = threadIdx.x; j < a.dim; j += blockDim.x) qn += double(value(j)) * double(value(j));
            qn = block_sum(qn, red_d);
        }
        if (threadIdx.x == 0) a.q_sq_norms[q] = qn;
    }
    if (u8) {
        double c = 0.0;
        for (size_t j = threadIdx.x; j < a.dim; j += blockDim.x) c += double(value(j));
        c = block_sum(c, red_d);
        if (threadIdx.x == 0) a.constants[q] = float(c);
    }
    if (a.qf) {
        if (a.codec == codec_t::binary_k) {
            uint32_t* bits = reinterpret_cast<uint32_t*>(a.qf) + q * a.qf_stride;
            for (size_t w = threadIdx.x; w < a.qf_stride; w += blockDim.x) {
                uint32_t word = 0;
                for (int b = 0; b < 32; ++b) {
                    const size_t j = w * 32 + b;
                    if (j < a.dim && value(j) > 0.0f) word |= 1u << b;
                }
                bits[w] = word;
            }
        } else {
            float* out = a.qf + q * a.qf_stride;
            for (size_t j = threadIdx.x; j < a.qf_stride; j += blockDim.x) out[j] = j < a.dim ? prepared(j) : 0.0f;
        }
    }
    if (a.qh) {
        float m = 0.0f;
        for (size_t j = threadIdx.x; j < a.dim; j += blockDim.x) m = fmaxf(m, fabsf(prepared(j)));
        m = block_max(m, red_f);
        // A power of two, so scaling and unscaling are exact: max |q| lands in [2^13, 2^14).
        int e = 0;
        if (m > 0.0f) frexpf(m, &e);
        const float s = m > 0.0f ? ldexpf(1.0f, 14 - e) : 1.0f;
        __half* hi = a.qh + q * a.qh_stride;
        __half* lo = a.ql ? a.ql + q * a.qh_stride : nullptr;
        for (size_t j = threadIdx.x; j < a.qh_stride; j += blockDim.x) {
            const float v = j < a.dim ? prepared(j) * s : 0.0f;
            const __half h = __float2half_rn(v);
            hi[j] = h;
            if (lo) lo[j] = __float2half_rn(v - __half2float(h));
        }
        if (threadIdx.x == 0) a.inv_scale[q] = m > 0.0f ? ldexpf(1.0f, e - 14) : 1.0f;
    }
    if (a.qx) {
        float* out = a.qx + q * a.qx_stride;
        for (size_t j = threadIdx.x; j < a.qx_stride; j += blockDim.x) out[j] = j < a.dim ? value(j) : 0.0f;
    }
}

/// Reported results of query q from its best keys (flatcoat::search_dense's conventions).
__device__ void emit_results(const emit_args_t& e, size_t q, const uint64_t* keys, int n_keys) {
    for (size_t j = threadIdx.x; j < e.k; j += blockDim.x) {
        const uint64_t key = j < size_t(n_keys) ? keys[j] : 0;
        float score;
        int64_t id;
        if (key == 0) {
            score = e.l2 ? INFINITY : -INFINITY;
            id = -1;
        } else {
            const float value = key_value(key);
            const uint32_t row = key_row(key);
            if (e.hamming) {
                const float hamming = 0.0f - value;
                score = e.l2 ? hamming : e.dim - 2.0f * hamming;
            } else if (e.l2) {
                score = fmaxf(0.0f, float(e.q_sq_norms[q] - double(value)));
            } else {
                score = value;
            }
            id = e.ids ? e.ids[row] : int64_t(row);
        }
        e.scores[q * e.k + j] = score;
        e.ids_out[q * e.k + j] = id;
    }
}

__global__ void __launch_bounds__(merge_threads) merge_kernel(const merge_args_t a) {
    extern __shared__ uint64_t merge_scratch[];
    __shared__ topk_state_t<1> state;
    const size_t q = blockIdx.x;
    const size_t group = q / a.group;
    const size_t slot = q % a.group;
    block_topk_t<1> top(state, a.work + q * a.cap, merge_scratch, a.cap, 1, a.k, a.cap, merge_round);
    top.init();
    const size_t total = a.row_blocks * a.list_k;
    for (size_t f0 = 0; f0 < total; f0 += merge_round) {
        const size_t f = f0 + threadIdx.x;
        if (f < total) {
            const size_t block = f / a.list_k;
            const size_t j = f % a.list_k;
            const uint64_t key = a.lists[((group * a.row_blocks + block) * a.group + slot) * a.list_cap + j];
            top.offer(0, key);  // 0 keys (empty places) never pass the threshold
        }
        top.maintain();
    }
    top.finish();
    const uint64_t* best = top.list(0);
    if (a.keys_out) {
        for (int j = threadIdx.x; j < a.k; j += blockDim.x) a.keys_out[q * a.k + j] = best[j];
    } else {
        emit_results(a.emit, q, best, a.k);
    }
}

/// One block per query; each warp scores one candidate at a time against the float rows.
__global__ void __launch_bounds__(rerank_threads) rerank_kernel(const rerank_args_t a) {
    extern __shared__ uint64_t rerank_smem[];
    __shared__ topk_state_t<1> state;
    uint64_t* scratch = rerank_smem;
    float* q_s = reinterpret_cast<float*>(rerank_smem + a.cap);
    const size_t q = blockIdx.x;
    for (int i = threadIdx.x; i < a.stride; i += blockDim.x) q_s[i] = a.qx[q * a.stride + i];
    block_topk_t<1> top(state, a.work + q * a.cap, scratch, a.cap, 1, a.k, a.cap, rerank_round);
    top.init();

    const int lane = threadIdx.x & 31;
    const int warp = threadIdx.x / 32;
    const int per_warp = rerank_round / (rerank_threads / 32);
    const float4* q4 = reinterpret_cast<const float4*>(q_s);
    const int words = a.stride / 4;
    for (int c0 = 0; c0 < a.depth; c0 += rerank_round) {
        for (int i = 0; i < per_warp; ++i) {
            const int c = c0 + warp * per_warp + i;
            const uint64_t key = c < a.depth ? a.candidates[q * a.depth + c] : 0;  // the same in the whole warp
            if (key == 0) continue;
            const uint32_t row = key_row(key);
            const float4* x = reinterpret_cast<const float4*>(a.float_rows + size_t(row) * a.stride);
            float acc = 0.0f;
            for (int w = lane; w < words; w += 32) {
                const float4 v = __ldg(x + w);
                const float4 u = q4[w];
                acc = fmaf(u.x, v.x, acc);
                acc = fmaf(u.y, v.y, acc);
                acc = fmaf(u.z, v.z, acc);
                acc = fmaf(u.w, v.w, acc);
            }
            for (int off = 16; off > 0; off >>= 1) acc += __shfl_xor_sync(0xffffffffu, acc, off);
            if (lane == 0) {
                const float value = a.l2 ? 2.0f * acc - a.float_sq_norms[row] : acc;
                top.offer(0, make_key(value, row));
            }
        }
        top.maintain();
    }
    top.finish();
    emit_results(a.emit, q, top.list(0), a.k);
}

__global__ void __launch_bounds__(select_threads) select_kernel(const select_args_t a) {
    extern __shared__ uint64_t select_scratch[];
    __shared__ topk_state_t<1> state;
    constexpr int per_thread = select_round / select_threads;
    const size_t q = blockIdx.x;
    const size_t begin = size_t(blockIdx.y) * a.per_block;
    const size_t end = min(a.n, begin + a.per_block);
    const float* x = a.x + q * a.n;
    const size_t list_block = size_t(blockIdx.x) * gridDim.y + blockIdx.y;
    block_topk_t<1> top(state, a.out.lists + list_block * a.out.cap, select_scratch, a.out.cap, 1, a.out.k,
                        a.out.cap, select_round);
    top.init();
    for (size_t r0 = begin; r0 < end; r0 += select_round) {
        float v[per_thread];
#pragma unroll
        for (int i = 0; i < per_thread; ++i) {  // all loads first, then the compares
            const size_t idx = r0 + size_t(i) * select_threads + threadIdx.x;
            v[i] = idx < end ? __ldg(x + idx) : 0.0f;
        }
#pragma unroll
        for (int i = 0; i < per_thread; ++i) {
            const size_t idx = r0 + size_t(i) * select_threads + threadIdx.x;
            if (idx < end) top.offer(0, make_key(v[i], uint32_t(idx)));
        }
        top.maintain();
    }
    top.finish();
}

__global__ void fill_missing_kernel(float* scores, int64_t* ids, size_t count, float missing) {
    for (size_t i = size_t(blockIdx.x) * blockDim.x + threadIdx.x; i < count; i += size_t(gridDim.x) * blockDim.x) {
        scores[i] = missing;
        ids[i] = -1;
    }
}

}  // namespace

void launch_prepare(const prepare_args_t& a, cudaStream_t stream) {
    if (a.nq == 0) return;
    prepare_kernel<<<unsigned(a.nq), prepare_threads, 0, stream>>>(a);
    FC_CUDA_LAUNCHED(prepare_kernel);
}

void launch_merge(const merge_args_t& a, cudaStream_t stream) {
    if (a.nq == 0) return;
    const size_t smem = size_t(a.cap) * sizeof(uint64_t);
    allow_smem(reinterpret_cast<const void*>(merge_kernel), smem);
    merge_kernel<<<unsigned(a.nq), merge_threads, smem, stream>>>(a);
    FC_CUDA_LAUNCHED(merge_kernel);
}

void launch_rerank(const rerank_args_t& a, cudaStream_t stream) {
    if (a.nq == 0) return;
    const size_t smem = size_t(a.cap) * sizeof(uint64_t) + size_t(a.stride) * sizeof(float);
    allow_smem(reinterpret_cast<const void*>(rerank_kernel), smem);
    rerank_kernel<<<unsigned(a.nq), rerank_threads, smem, stream>>>(a);
    FC_CUDA_LAUNCHED(rerank_kernel);
}

void launch_select(const select_args_t& a, cudaStream_t stream) {
    if (a.m == 0) return;
    const size_t smem = size_t(a.out.cap) * sizeof(uint64_t);
    allow_smem(reinterpret_cast<const void*>(select_kernel), smem);
    select_kernel<<<dim3(unsigned(a.m), unsigned(a.row_blocks)), select_threads, smem, stream>>>(a);
    FC_CUDA_LAUNCHED(select_kernel);
}

void launch_fill_missing(float* scores, int64_t* ids, size_t count, bool l2, cudaStream_t stream) {
    if (count == 0) return;
    const unsigned blocks = unsigned(count < 256 * 1024 ? (count + 255) / 256 : 1024);
    fill_missing_kernel<<<blocks, 256, 0, stream>>>(scores, ids, count, l2 ? INFINITY : -INFINITY);
    FC_CUDA_LAUNCHED(fill_missing_kernel);
}

}  // namespace cuda
}  // namespace flatcoat
