// Dense scoring on tensor cores for query batches, fused with per-block top-k.
//
// A block scores 64 queries against its rows in tiles of 128 rows: a GEMM over
// the dimension in stages of 32, with WMMA 16x16x16 f16 x f16 -> f32 (HMMA;
// mma.sync rather than Hopper's wgmma, so sm_80 and sm_90 share one kernel).
// The next stage's global loads are issued before the current stage's
// products, so memory and tensor cores overlap. The 64 x 128 score tile goes to
// shared memory and straight into the block's top-k lists; no score matrix
// reaches global memory.
//
// Exactness: f16 codes are f16 already and u8 codes (0..255) widen to f16
// exactly, so only the float32 query needs care. It is scaled by a power of two
// (max |q| -> [2^13, 2^14)) and split into q_hi = f16(q) and q_lo = f16(q - q_hi);
// two products per tile then carry about 22 bits of the query, as close to the
// CPU's float32 sums as a different summation order allows. `ql == nullptr`
// uses q_hi alone (half the tensor work, about 11 bits of the query).
#include <mma.h>  // nvcuda::wmma

#include "common.cuh"
#include "kernels.cuh"
#include "topk.cuh"

namespace flatcoat {
namespace cuda {

namespace {

constexpr int BM = mma_queries;
constexpr int BN = mma_rows;
constexpr int BK = mma_depth;
constexpr int LDA = BK + 8;  // halves per tile row: 16-byte rows, padded against bank conflicts
constexpr int LDC = BN + 4;  // floats per score-tile row

constexpr size_t tile_a_bytes = size_t(2) * BM * LDA * sizeof(__half);
constexpr size_t tile_b_bytes = size_t(BN) * LDA * sizeof(__half);
inline __host__ __device__ size_t scratch_bytes(int cap) {
    const size_t scores = size_t(BM) * LDC * sizeof(float);
    const size_t keys = size_t(cap) * sizeof(uint64_t);
    return scores > keys ? scores : keys;
}

/// f16 codes: a 128 x 32 tile is 512 16-byte chunks, two per thread, copied as they are.
struct f16_tile_t {
    static constexpr int per_thread = BN * BK / 8 / mma_threads;
    uint4 reg[per_thread];
    __device__ void load(const mma_args_t& a, size_t row0, size_t end, int k0) {
#pragma unroll
        for (int i = 0; i < per_thread; ++i) {
            const int idx = threadIdx.x + i * mma_threads;
            const size_t row = row0 + idx / (BK / 8);
            const int col = k0 + (idx % (BK / 8)) * 8;
            reg[i] = row < end && col < a.depth
                         ? __ldg(reinterpret_cast<const uint4*>(a.codes + row * a.pitch + size_t(col) * 2))
                         : make_uint4(0, 0, 0, 0);
        }
    }
    __device__ void store(__half* tile) const {
#pragma unroll
        for (int i = 0; i < per_thread; ++i) {
            const int idx = threadIdx.x + i * mma_threads;
            *reinterpret_cast<uint4*>(tile + (idx / (BK / 8)) * LDA + (idx % (BK / 8)) * 8) = reg[i];
        }
    }
};

/// u8 codes: a 128 x 32 tile is 256 chunks of 16 codes, one per thread, widened to f16 on the way in.
struct u8_tile_t {
    static constexpr int per_thread = BN * BK / 16 / mma_threads;
    uint4 reg[per_thread];
    __device__ void load(const mma_args_t& a, size_t row0, size_t end, int k0) {
#pragma unroll
        for (int i = 0; i < per_thread; ++i) {
            const int idx = threadIdx.x + i * mma_threads;
            const size_t row = row0 + idx / (BK / 16);
            const int col = k0 + (idx % (BK / 16)) * 16;
            reg[i] = row < end && col < a.depth
                         ? __ldg(reinterpret_cast<const uint4*>(a.codes + row * a.pitch + size_t(col)))
                         : make_uint4(0, 0, 0, 0);
        }
    }
    /// Two codes -> half2 exactly: 0x64bb is the half 1024 + bb (PRMT), minus 1024 (HSUB2).
    __device__ static uint32_t widen_pair(uint32_t word, uint32_t selector) {
        uint32_t bits = __byte_perm(word, 0x64u, selector);
        __half2 h = *reinterpret_cast<__half2*>(&bits);
        h = __hsub2(h, __float2half2_rn(1024.0f));
        return *reinterpret_cast<uint32_t*>(&h);
    }
    __device__ void store(__half* tile) const {
#pragma unroll
        for (int i = 0; i < per_thread; ++i) {
            const int idx = threadIdx.x + i * mma_threads;
            const uint32_t w[4] = {reg[i].x, reg[i].y, reg[i].z, reg[i].w};
            uint4 lo, hi;
            lo.x = widen_pair(w[0], 0x4140u);
            lo.y = widen_pair(w[0], 0x4342u);
            lo.z = widen_pair(w[1], 0x4140u);
            lo.w = widen_pair(w[1], 0x4342u);
            hi.x = widen_pair(w[2], 0x4140u);
            hi.y = widen_pair(w[2], 0x4342u);
            hi.z = widen_pair(w[3], 0x4140u);
            hi.w = widen_pair(w[3], 0x4342u);
            __half* at = tile + (idx / (BK / 16)) * LDA + (idx % (BK / 16)) * 16;
            *reinterpret_cast<uint4*>(at) = lo;
            *reinterpret_cast<uint4*>(at + 8) = hi;
        }
    }
};

template <class tile_t, bool SPLIT>
__global__ void __launch_bounds__(mma_threads) dense_mma_kernel(const mma_args_t a) {
    using namespace nvcuda;
    extern __shared__ __align__(128) unsigned char smem[];
    __half* As = reinterpret_cast<__half*>(smem);                  // [2][BM][LDA]: q_hi, q_lo
    __half* Bs = reinterpret_cast<__half*>(smem + tile_a_bytes);   // [BN][LDA]: rows
    float* Cs = reinterpret_cast<float*>(smem + tile_a_bytes + tile_b_bytes);  // [BM][LDC], then top-k scratch
    __shared__ topk_state_t<BM> state;
    __shared__ float inv_scale[BM];
    __shared__ float constant[BM];

    const size_t q0 = size_t(blockIdx.x) * BM;
    const size_t begin = size_t(blockIdx.y) * a.rows_per_block;
    const size_t end = min(a.n, begin + a.rows_per_block);
    for (int i = threadIdx.x; i < BM; i += blockDim.x) {
        const size_t q = q0 + i;
        inv_scale[i] = q < a.nq ? a.inv_scale[q] : 0.0f;
        constant[i] = (a.constants && q < a.nq) ? a.constants[q] : 0.0f;
    }
    const size_t list_block = size_t(blockIdx.x) * gridDim.y + blockIdx.y;
    block_topk_t<BM> top(state, a.out.lists + list_block * BM * a.out.cap, reinterpret_cast<uint64_t*>(Cs),
                         int(scratch_bytes(a.out.cap) / sizeof(uint64_t)), BM, a.out.k, a.out.cap, BN);
    top.init();

    const int warp = threadIdx.x / 32;
    const int m0 = (warp / 4) * 32;  // 2 x 4 warps, 32 x 32 outputs each
    const int n0 = (warp % 4) * 32;
    const int a_row = threadIdx.x / (BK / 8);  // one 16-byte chunk of each query term per thread
    const int a_col = (threadIdx.x % (BK / 8)) * 8;
    const size_t qa = q0 + a_row;

    for (size_t row0 = begin; row0 < end; row0 += BN) {
        wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc[2][2];
#pragma unroll
        for (int i = 0; i < 2; ++i)
#pragma unroll
            for (int j = 0; j < 2; ++j) wmma::fill_fragment(acc[i][j], 0.0f);

        tile_t b;
        uint4 a_hi = make_uint4(0, 0, 0, 0), a_lo = make_uint4(0, 0, 0, 0);
        auto load = [&](int k0) {
            b.load(a, row0, end, k0);
            const int col = k0 + a_col;
            const bool ok = qa < a.nq && col < a.depth;
            a_hi = ok ? __ldg(reinterpret_cast<const uint4*>(a.qh + qa * a.depth + col)) : make_uint4(0, 0, 0, 0);
            if (SPLIT)
                a_lo = ok ? __ldg(reinterpret_cast<const uint4*>(a.ql + qa * a.depth + col)) : make_uint4(0, 0, 0, 0);
        };
        auto store = [&]() {
            b.store(Bs);
            *reinterpret_cast<uint4*>(As + a_row * LDA + a_col) = a_hi;
            if (SPLIT) *reinterpret_cast<uint4*>(As + BM * LDA + a_row * LDA + a_col) = a_lo;
        };

        load(0);
        store();
        __syncthreads();
        for (int k0 = 0; k0 < a.depth; k0 += BK) {
            const bool more = k0 + BK < a.depth;
            if (more) load(k0 + BK);  // in flight while the tensor cores work on this stage
#pragma unroll
            for (int kk = 0; kk < BK; kk += 16) {
                wmma::fragment<wmma::matrix_b, 16, 16, 16, __half, wmma::col_major> fb[2];
#pragma unroll
                for (int j = 0; j < 2; ++j) wmma::load_matrix_sync(fb[j], Bs + (n0 + 16 * j) * LDA + kk, LDA);
#pragma unroll
                for (int i = 0; i < 2; ++i) {
                    wmma::fragment<wmma::matrix_a, 16, 16, 16, __half, wmma::row_major> fa;
                    wmma::load_matrix_sync(fa, As + (m0 + 16 * i) * LDA + kk, LDA);
#pragma unroll
                    for (int j = 0; j < 2; ++j) wmma::mma_sync(acc[i][j], fa, fb[j], acc[i][j]);
                    if (SPLIT) {
                        wmma::load_matrix_sync(fa, As + BM * LDA + (m0 + 16 * i) * LDA + kk, LDA);
#pragma unroll
                        for (int j = 0; j < 2; ++j) wmma::mma_sync(acc[i][j], fa, fb[j], acc[i][j]);
                    }
                }
            }
            __syncthreads();
            if (more) {
                store();
                __syncthreads();
            }
        }
#pragma unroll
        for (int i = 0; i < 2; ++i)
#pragma unroll
            for (int j = 0; j < 2; ++j)
                wmma::store_matrix_sync(Cs + (m0 + 16 * i) * LDC + n0 + 16 * j, acc[i][j], LDC, wmma::mem_row_major);
        __syncthreads();

        for (int e = threadIdx.x; e < BM * BN; e += blockDim.x) {
            const int qi = e / BN;
            const int r = e % BN;
            const size_t row = row0 + r;
            if (row < end && q0 + qi < a.nq) {
                float value = Cs[qi * LDC + r] * inv_scale[qi];
                if (a.row_scale) value = a.row_scale[row] * value + a.row_offset[row] * constant[qi];  // u8
                if (a.l2) value = 2.0f * value - a.sq_norms[row];
                top.offer(qi, make_key(value, uint32_t(row)));
            }
        }
        top.maintain();  // starts with a barrier: the scratch it sorts in is the score tile
    }
    top.finish();
}

template <class tile_t>
void launch_tiles(const mma_args_t& a, size_t smem, cudaStream_t stream) {
    const dim3 grid(unsigned((a.nq + BM - 1) / BM), unsigned(a.row_blocks));
    auto go = [&](auto kernel) {
        allow_smem(reinterpret_cast<const void*>(kernel), smem);
        kernel<<<grid, mma_threads, smem, stream>>>(a);
        FC_CUDA_LAUNCHED(dense_mma_kernel);
    };
    if (a.ql != nullptr)
        go(dense_mma_kernel<tile_t, true>);
    else
        go(dense_mma_kernel<tile_t, false>);
}

}  // namespace

size_t mma_smem_bytes(int cap) { return tile_a_bytes + tile_b_bytes + scratch_bytes(cap); }

void launch_mma(const mma_args_t& a, cudaStream_t stream) {
    const size_t smem = mma_smem_bytes(a.out.cap);
    if (a.codec == codec_t::int8_k)
        launch_tiles<u8_tile_t>(a, smem, stream);
    else
        launch_tiles<f16_tile_t>(a, smem, stream);
}

}  // namespace cuda
}  // namespace flatcoat
