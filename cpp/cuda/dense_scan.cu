// Dense scan: scoring fused with per-block top-k, for one to eight queries per
// block. Built for the memory-bound case (few queries): each row is read once
// per block with 16-byte loads, `lanes` threads share a row (each takes every
// lanes-th chunk), and a thread keeps four rows in flight.
//
// Instructions and accumulation: f32 FFMA; f16 widened with __half22float2
// then FFMA; u8 widened exactly with PRMT + FADD
// (0x4B000000 | byte is 2^23 + byte) then FFMA; binary LOP3 (XOR) + POPC. Each
// (query, row) sum is one float32 accumulator per lane walking its chunks in
// order, then a fixed xor-shuffle tree, so a score does not depend on the grid.
#include <type_traits>  // std::is_same

#include "common.cuh"
#include "kernels.cuh"
#include "topk.cuh"

namespace flatcoat {
namespace cuda {

namespace {

/// s + <4 * WORDS query floats at q (16-byte shared loads), v>, in element order.
template <int WORDS>
__device__ __forceinline__ float dot_words(const uint4* q, const float* v, float s) {
#pragma unroll
    for (int w = 0; w < WORDS; ++w) {
        const float4 a = *reinterpret_cast<const float4*>(q + w);
        s = fmaf(a.x, v[4 * w], s);
        s = fmaf(a.y, v[4 * w + 1], s);
        s = fmaf(a.z, v[4 * w + 2], s);
        s = fmaf(a.w, v[4 * w + 3], s);
    }
    return s;
}

// One trait per codec: acc[q] += <code chunk x, query words q[q * stride ..]>.
struct f32_codes_t {
    static constexpr int words = 1;  // query words per chunk
    template <int NQ>
    __device__ static void accumulate(const uint4& x, const uint4* q, int stride, float (&acc)[NQ]) {
        const float4 v = *reinterpret_cast<const float4*>(&x);
#pragma unroll
        for (int i = 0; i < NQ; ++i) {
            const float4 a = *reinterpret_cast<const float4*>(q + i * stride);
            float s = acc[i];
            s = fmaf(a.x, v.x, s);
            s = fmaf(a.y, v.y, s);
            s = fmaf(a.z, v.z, s);
            s = fmaf(a.w, v.w, s);
            acc[i] = s;
        }
    }
};

struct f16_codes_t {
    static constexpr int words = 2;
    template <int NQ>
    __device__ static void accumulate(const uint4& x, const uint4* q, int stride, float (&acc)[NQ]) {
        const __half2* h = reinterpret_cast<const __half2*>(&x);
        float v[8];
#pragma unroll
        for (int j = 0; j < 4; ++j) {
            const float2 f = __half22float2(h[j]);
            v[2 * j] = f.x;
            v[2 * j + 1] = f.y;
        }
#pragma unroll
        for (int i = 0; i < NQ; ++i) acc[i] = dot_words<2>(q + i * stride, v, acc[i]);
    }
};

struct u8_codes_t {
    static constexpr int words = 4;
    __device__ static float widen(uint32_t word, int byte) {
        // 0x4B0000bb is the float 2^23 + bb: one PRMT and one FADD, exact.
        return __uint_as_float(__byte_perm(word, 0x4B000000u, 0x7540u + byte)) - 8388608.0f;
    }
    template <int NQ>
    __device__ static void accumulate(const uint4& x, const uint4* q, int stride, float (&acc)[NQ]) {
        const uint32_t w[4] = {x.x, x.y, x.z, x.w};
        float v[16];
#pragma unroll
        for (int j = 0; j < 16; ++j) v[j] = widen(w[j / 4], j % 4);
#pragma unroll
        for (int i = 0; i < NQ; ++i) acc[i] = dot_words<4>(q + i * stride, v, acc[i]);
    }
};

struct binary_codes_t {
    static constexpr int words = 1;
    template <int NQ>
    __device__ static void accumulate(const uint4& x, const uint4* q, int stride, float (&acc)[NQ]) {
#pragma unroll
        for (int i = 0; i < NQ; ++i) {
            const uint4 a = q[i * stride];
            // Hamming counts up to 128 per chunk: exact in float32 for any dim < 2^24.
            acc[i] += float(__popc(x.x ^ a.x) + __popc(x.y ^ a.y) + __popc(x.z ^ a.z) + __popc(x.w ^ a.w));
        }
    }
};

template <class codes_t, int NQ>
__global__ void __launch_bounds__(scan_threads) dense_scan_kernel(const scan_args_t a) {
    extern __shared__ uint4 smem[];
    __shared__ topk_state_t<NQ> state;
    constexpr int RR = scan_rows_per_segment;
    const int W = a.chunks;
    const int QW = W * codes_t::words;  // query words per query
    uint4* q_s = smem;
    uint64_t* scratch = reinterpret_cast<uint64_t*>(q_s + NQ * QW);

    const size_t q0 = size_t(blockIdx.x) * NQ;
    const size_t begin = size_t(blockIdx.y) * a.rows_per_block;
    const size_t end = min(a.n, begin + a.rows_per_block);

    for (int i = threadIdx.x; i < NQ * QW; i += blockDim.x) {
        const size_t q = q0 + i / QW;
        q_s[i] = q < a.nq ? a.queries[q * QW + i % QW] : make_uint4(0, 0, 0, 0);
    }
    const size_t list_block = size_t(blockIdx.x) * gridDim.y + blockIdx.y;
    block_topk_t<NQ> top(state, a.out.lists + list_block * NQ * a.out.cap, scratch, a.out.cap, NQ, a.out.k,
                         a.out.cap, scan_round);
    top.init();  // its barrier also publishes q_s

    const int L = a.lanes;
    const int lane = threadIdx.x & 31;
    const int sub = lane & (L - 1);  // this thread's place within its row segment
    const int segments = (blockDim.x / 32) * (32 / L);
    const int segment = (threadIdx.x / 32) * (32 / L) + lane / L;
    const int steps = scan_round / (segments * RR);  // uniform, so shuffles see the whole warp

    float constant[NQ];
#pragma unroll
    for (int i = 0; i < NQ; ++i) constant[i] = (a.constants && q0 + i < a.nq) ? a.constants[q0 + i] : 0.0f;

    for (size_t r0 = begin; r0 < end; r0 += scan_round) {
        for (int step = 0; step < steps; ++step) {
            const size_t base = r0 + size_t(step * segments + segment) * RR;
            float acc[RR][NQ];
#pragma unroll
            for (int r = 0; r < RR; ++r)
#pragma unroll
                for (int i = 0; i < NQ; ++i) acc[r][i] = 0.0f;

            for (int c = sub; c < W; c += L) {
                uint4 x[RR];
#pragma unroll
                for (int r = 0; r < RR; ++r)  // all loads first: four rows in flight
                    x[r] = base + r < end ? __ldg(a.codes + (base + r) * W + c) : make_uint4(0, 0, 0, 0);
#pragma unroll
                for (int r = 0; r < RR; ++r) codes_t::template accumulate<NQ>(x[r], q_s + c * codes_t::words, QW, acc[r]);
            }
#pragma unroll
            for (int r = 0; r < RR; ++r)
#pragma unroll
                for (int i = 0; i < NQ; ++i)
                    for (int off = L >> 1; off > 0; off >>= 1) acc[r][i] += __shfl_xor_sync(0xffffffffu, acc[r][i], off);

            if (sub == 0) {
#pragma unroll
                for (int r = 0; r < RR; ++r) {
                    const size_t row = base + r;
                    if (row < end) {
                        const float norm = a.l2 ? a.sq_norms[row] : 0.0f;
#pragma unroll
                        for (int i = 0; i < NQ; ++i) {
                            float value;
                            if constexpr (std::is_same<codes_t, binary_codes_t>::value)
                                value = -acc[r][i];  // -hamming: fewer differing bits rank higher
                            else {
                                value = acc[r][i];
                                if constexpr (std::is_same<codes_t, u8_codes_t>::value)  // offset + scale * code
                                    value = a.row_scale[row] * value + a.row_offset[row] * constant[i];
                                if (a.l2) value = 2.0f * value - norm;  // orders like -|q - x|^2
                            }
                            if (q0 + i < a.nq) top.offer(i, make_key(value, uint32_t(row)));
                        }
                    }
                }
            }
        }
        top.maintain();
    }
    top.finish();
}

template <class codes_t>
void launch_codes(const scan_args_t& a, size_t smem, cudaStream_t stream) {
    const dim3 grid(unsigned((a.nq + a.queries_per_block - 1) / a.queries_per_block), unsigned(a.row_blocks));
    auto go = [&](auto kernel) {
        allow_smem(reinterpret_cast<const void*>(kernel), smem);
        kernel<<<grid, scan_threads, smem, stream>>>(a);
        FC_CUDA_LAUNCHED(dense_scan_kernel);
    };
    switch (a.queries_per_block) {
        case 1: go(dense_scan_kernel<codes_t, 1>); break;
        case 2: go(dense_scan_kernel<codes_t, 2>); break;
        case 4: go(dense_scan_kernel<codes_t, 4>); break;
        default: go(dense_scan_kernel<codes_t, 8>); break;
    }
}

}  // namespace

size_t scan_smem_bytes(codec_t codec, int chunks, int queries_per_block, int cap) {
    return size_t(queries_per_block) * chunks * query_words_per_chunk(codec) * 16 + size_t(cap) * 8;
}

void launch_scan(const scan_args_t& a, cudaStream_t stream) {
    const size_t smem = scan_smem_bytes(a.codec, a.chunks, a.queries_per_block, a.out.cap);
    switch (a.codec) {
        case codec_t::f32_k: launch_codes<f32_codes_t>(a, smem, stream); break;
        case codec_t::f16_k: launch_codes<f16_codes_t>(a, smem, stream); break;
        case codec_t::int8_k: launch_codes<u8_codes_t>(a, smem, stream); break;
        case codec_t::binary_k: launch_codes<binary_codes_t>(a, smem, stream); break;
        case codec_t::bf16_k: break;  // refused by the store's constructor
    }
}

}  // namespace cuda
}  // namespace flatcoat
