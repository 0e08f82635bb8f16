// Internal interface between the CUDA launchers (dense.cu, select.cu) and the
// kernel files (dense_scan.cu, dense_mma.cu): argument blocks and launchers.
//
// Device layout of a dense store: every row of codes is padded with zeros to
// a multiple of 16 bytes ("chunks"), so kernels use aligned 16-byte loads and
// need no tail code; prepared queries are padded the same way, so the padding
// contributes nothing (0 * x, or XOR of two zero bits).
#pragma once

#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>

#include "flatcoat/common.hpp"

namespace flatcoat {
namespace cuda {

/// Elements of a codec in one 16-byte chunk (binary: bits).
inline size_t chunk_elements(codec_t codec) {
    switch (codec) {
        case codec_t::f32_k: return 4;
        case codec_t::f16_k: return 8;
        case codec_t::int8_k: return 16;
        case codec_t::binary_k: return 128;
        case codec_t::bf16_k: break;  // no CUDA kernels: refused by the store's constructor
    }
    return 1;
}

/// 16-byte words of prepared query per 16-byte chunk of codes: queries stay
/// float32 (4 per word) against f32/f16/u8 codes, and are sign bits for binary.
inline size_t query_words_per_chunk(codec_t codec) {
    return codec == codec_t::binary_k ? 1 : chunk_elements(codec) / 4;
}

/// How ranking values become reported scores (see flatcoat::search_dense).
struct emit_args_t {
    float* scores = nullptr;        ///< nq x k
    int64_t* ids_out = nullptr;     ///< nq x k
    size_t k = 0;
    const int64_t* ids = nullptr;   ///< row -> user id; null: the row is the id
    const double* q_sq_norms = nullptr;  ///< l2: |q|^2 per query
    bool l2 = false;
    bool hamming = false;           ///< binary without re-ranking: value is -hamming
    float dim = 0;
};

// ---------------------------------------------------------------- prepare

struct prepare_args_t {
    const float* queries = nullptr;  ///< nq x dim, as given
    size_t nq = 0, dim = 0;
    codec_t codec = codec_t::f32_k;
    bool normalize = false;
    bool l2 = false;
    float* qf = nullptr;            ///< scan path: nq x qf_stride floats (binary: uint32 bit words)
    size_t qf_stride = 0;
    __half* qh = nullptr;           ///< mma path: nq x qh_stride halves, high and low terms
    __half* ql = nullptr;
    size_t qh_stride = 0;
    float* inv_scale = nullptr;     ///< mma path: the power of two the halves were scaled by, inverted
    float* constants = nullptr;     ///< u8: sum of the query's elements (rows' offsets multiply it)
    double* q_sq_norms = nullptr;   ///< l2
    float* qx = nullptr;            ///< re-ranking: the (normalised) float query, qx_stride floats
    size_t qx_stride = 0;
    int* bad = nullptr;             ///< [0]: first row with NaN/inf, [1]: first zero row under normalize
};
void launch_prepare(const prepare_args_t& a, cudaStream_t stream);

// ---------------------------------------------------------------- scoring + per-block top-k

/// Block lists are laid out [query group][row block][slot][cap].
struct lists_args_t {
    uint64_t* lists = nullptr;
    int k = 0;    ///< kept per list
    int cap = 0;  ///< topk_capacity(k, round)
};

constexpr int scan_threads = 256;
constexpr int scan_round = 256;  ///< rows per block between top-k maintenance steps
constexpr int scan_rows_per_segment = 4;

struct scan_args_t {
    codec_t codec = codec_t::f32_k;
    const uint4* codes = nullptr;  ///< n x chunks
    int chunks = 0;
    size_t n = 0;
    const float* sq_norms = nullptr;  ///< l2 (not binary)
    bool l2 = false;
    const uint4* queries = nullptr;   ///< nq x (chunks * query_words_per_chunk)
    const float* constants = nullptr; ///< u8: per-query sums
    const float* row_scale = nullptr;  ///< u8: per-row step (rows decode as offset + scale * code)
    const float* row_offset = nullptr; ///< u8: per-row value of code 0
    size_t nq = 0;
    int lanes = 32;                   ///< lanes sharing one row: 4, 8, 16 or 32
    int queries_per_block = 1;        ///< 1, 2, 4 or 8
    size_t rows_per_block = 0;        ///< a multiple of scan_round
    size_t row_blocks = 0;
    lists_args_t out;
};
/// Dynamic shared memory of the scan kernel.
size_t scan_smem_bytes(codec_t codec, int chunks, int queries_per_block, int cap);
void launch_scan(const scan_args_t& a, cudaStream_t stream);

constexpr int mma_queries = 64;   ///< queries per block (tile M)
constexpr int mma_rows = 128;     ///< rows per tile (tile N) = top-k round
constexpr int mma_depth = 32;     ///< dimensions per stage (tile K)
constexpr int mma_threads = 256;

struct mma_args_t {
    codec_t codec = codec_t::f16_k;  ///< f16 or u8
    const unsigned char* codes = nullptr;
    size_t pitch = 0;   ///< bytes per row (chunks * 16)
    int depth = 0;      ///< elements per padded row: chunks * chunk_elements
    size_t n = 0;
    const __half* qh = nullptr;
    const __half* ql = nullptr;  ///< null: single-term queries
    const float* inv_scale = nullptr;
    const float* constants = nullptr;   ///< u8: per-query sums
    const float* row_scale = nullptr;   ///< u8: per-row step
    const float* row_offset = nullptr;  ///< u8: per-row value of code 0
    size_t nq = 0;
    const float* sq_norms = nullptr;
    bool l2 = false;
    size_t rows_per_block = 0;  ///< a multiple of mma_rows
    size_t row_blocks = 0;
    lists_args_t out;
};
size_t mma_smem_bytes(int cap);
void launch_mma(const mma_args_t& a, cudaStream_t stream);

// ---------------------------------------------------------------- standalone selection (top-k of given scores)

constexpr int select_threads = 256;
constexpr int select_round = 1024;  ///< 4 scores per thread between maintenance steps

struct select_args_t {
    const float* x = nullptr;  ///< m x n
    size_t m = 0, n = 0;
    size_t per_block = 0;      ///< a multiple of select_round
    size_t row_blocks = 0;
    lists_args_t out;
};
void launch_select(const select_args_t& a, cudaStream_t stream);

// ---------------------------------------------------------------- merge and re-ranking

constexpr int merge_threads = 256;
constexpr int merge_round = 256;

/// One block per query: the best k of its row blocks' lists; then either the
/// raw keys (keys_out, for re-ranking) or the reported results (emit).
struct merge_args_t {
    const uint64_t* lists = nullptr;  ///< [group][row block][slot][list_cap]
    int group = 1;                    ///< slots per query group
    size_t row_blocks = 1;
    int list_cap = 0;
    int list_k = 0;
    size_t nq = 0;
    uint64_t* work = nullptr;         ///< nq x cap
    int k = 0;
    int cap = 0;
    uint64_t* keys_out = nullptr;     ///< nq x k, or null to emit
    emit_args_t emit;
};
void launch_merge(const merge_args_t& a, cudaStream_t stream);

/// The merge of nq queries' block lists (`group` slots per block, `row_blocks`
/// blocks, lists of `list_cap` keys keeping `keep` each) into each query's best
/// `keep`, through `work` (nq x topk_capacity(keep, merge_round) = `cap` keys).
/// The caller then sets keys_out or emit.
inline merge_args_t merge_lists(const uint64_t* lists, int group, size_t row_blocks, int list_cap, int keep,
                                size_t nq, uint64_t* work, int cap) {
    merge_args_t mg;
    mg.lists = lists;
    mg.group = group;
    mg.row_blocks = row_blocks;
    mg.list_cap = list_cap;
    mg.list_k = keep;
    mg.nq = nq;
    mg.work = work;
    mg.k = keep;
    mg.cap = cap;
    return mg;
}

constexpr int rerank_threads = 256;
constexpr int rerank_round = 256;

struct rerank_args_t {
    const uint64_t* candidates = nullptr;  ///< nq x depth keys (0: none)
    int depth = 0;
    const float* qx = nullptr;             ///< nq x stride
    const float* float_rows = nullptr;     ///< rows x stride
    int stride = 0;                        ///< floats per row, a multiple of 4
    const float* float_sq_norms = nullptr;
    bool l2 = false;
    size_t nq = 0;
    uint64_t* work = nullptr;              ///< nq x cap
    int k = 0;
    int cap = 0;
    emit_args_t emit;
};
void launch_rerank(const rerank_args_t& a, cudaStream_t stream);

/// Writes "no result" (id -1, -inf or +inf) to nq x k outputs.
void launch_fill_missing(float* scores, int64_t* ids, size_t count, bool l2, cudaStream_t stream);

}  // namespace cuda
}  // namespace flatcoat
