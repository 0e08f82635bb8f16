// Exhaustive dense search with fused top-k, over any codec.
#pragma once

#include <algorithm>  // std::max
#include <cstddef>
#include <cstdint>
#include <vector>

#include "flatcoat/common.hpp"
#include "flatcoat/filter.hpp"  // filter_t

namespace flatcoat {

/// A read-only view of a dense index's arrays; nothing here is owned.
///
/// Codecs: `f32_k`, `f16_k`; `int8_k`, per-vector affine uint8: row x decodes
/// as x[j] ~ offset + scale * code[j], code in 0..255; `binary_k`, sign bits.
struct dense_data_t {
    codec_t codec = codec_t::f32_k;
    size_t rows = 0;
    size_t dim = 0;
    const void* codes = nullptr;       ///< rows x (dim floats | dim halves | dim u8 | binary_words(dim) uint64)
    const int64_t* ids = nullptr;      ///< rows user ids, all distinct
    const float* sq_norms = nullptr;   ///< rows: |decode(x)|^2, needed for l2 (not binary)
    const float* scale = nullptr;      ///< rows: int8 only, each row's step
    const float* offset = nullptr;     ///< rows: int8 only, each row's value of code 0
    const float* float_rows = nullptr;      ///< rows x dim float32 copy for re-ranking, or null
    const float* float_sq_norms = nullptr;  ///< rows: |x|^2 of the float copy, needed for l2 re-ranking
};

struct dense_query_t {
    const float* queries = nullptr;  ///< nq x dim float32, already normalised for cosine
    size_t nq = 0;
    size_t k = 0;
    metric_t metric = metric_t::ip_k;
    /// 0: return the codec's own scores. R >= k: keep the R best by the codec,
    /// then re-rank them exactly against float_rows.
    size_t rerank = 0;
    /// Rows the search may return (filter.words: ceil(rows / 64) words; null:
    /// all); `bits` is taken as data.rows. A filtered search returns exactly
    /// what the unfiltered search of an index holding only the allowed rows
    /// returns (same codec scores, same tie order; the shortlist of `rerank`
    /// holds allowed rows only). How rows are visited, by the allowed count a:
    ///  - a == 0: nothing is scored, every result is missing;
    ///  - 2a <= rows, or 4a <= 3 rows for a batch of 8 queries or more
    ///    (GATHER): only the allowed rows are read; their codes (and scales,
    ///    offsets, norms) are copied tile by tile into contiguous buffers and
    ///    scored by the same kernels; masked rows are never touched. (Measured
    ///    at 1,000,000 x 384 for f32, int8 and binary: gathering half the rows
    ///    costs about what the full scan does for one query, and much less for
    ///    a batch, which scores fewer rows per gathered tile.)
    ///  - otherwise (MASK): the usual tile scan; tiles whose bits are all 0 are
    ///    skipped, masked rows are scored but never pushed;
    ///  - a == rows: the unfiltered scan.
    filter_t filter;
};

/// Writes nq x k results, best first: scores (ip: inner product; l2: squared
/// distance; binary without re-ranking: dim - 2 * hamming for ip, hamming for l2)
/// and ids. Missing results are id -1 with score -inf (ip) or +inf (l2).
/// Validates sizes and throws flatcoat::error; never reads past the views.
void search_dense(const dense_data_t& data, const dense_query_t& query, float* out_scores, int64_t* out_ids);

/// bfloat16 of n finite float32 values: the high half, rounded to nearest, ties to even.
void to_bfloat16(const float* x, size_t n, bf16_t* out);

/// Sign bits of n float32 rows: bit j of a row is x[j] > 0; out is n x binary_words(dim).
void binarize(const float* x, size_t n, size_t dim, uint64_t* out);

/// The s8 codes of `nq` queries (nq x dim floats) for the exact int8 kernel:
/// per query, scale = max |q| / 127 and code = round(q / scale) in [-127, 127],
/// so q ~ scale * code; a zero query gets scale 0 and zero codes.
void quantize_queries(const float* queries, size_t nq, size_t dim, std::vector<int8_t>& codes,
                      std::vector<float>& scales);

/// The active ISA's exact int8 kernel over whole arrays: out (nq x nx) int32
/// = q (nq x dim s8, |q| <= 127) times x (nx x dim u8) transposed; threads split
/// the rows. For tests and benchmarks of the kernel the int8 scan runs on (query
/// panels for 8 queries or more where the level has them). emulate_tiles: the
/// sapphirerapids level's tile kernel on emulated tiles instead, for every
/// nq (tests on machines without AMX; throws if the CPU lacks genoa's features).
void int8_dots(const int8_t* q, size_t nq, const uint8_t* x, size_t nx, size_t dim, int32_t* out,
               bool emulate_tiles = false);

/// The bf16 scan's kernels over whole arrays: out (nq x nx) float32 = q (nq x
/// dim bf16) times x (nx x dim bf16) transposed, products summed in float32;
/// query panels from 8 queries where the level has them, as int8_dots.
void bf16_dots(const bf16_t* q, size_t nq, const bf16_t* x, size_t nx, size_t dim, float* out,
               bool emulate_tiles = false);

/// What the dense codecs need of each of `nq` queries (n x dim floats): int8
/// each query's sum (the rows' offsets multiply it) into `sums` (nq), binary
/// the query's sign bits into `bits` (nq x binary_words(dim)); other codecs
/// nothing. Shared by the exhaustive and the partitioned scans.
void prepare_queries(codec_t codec, const float* queries, size_t nq, size_t dim, std::vector<float>& sums,
                     std::vector<uint64_t>& bits);

/// The score a search reports for a value its top-k kept: a Hamming ranking
/// value (-hamming) as dim - 2 * hamming for ip or the distance for l2; an l2
/// ranking value 2<q, x> - |x|^2 as |q|^2 minus it, clamped at 0; an ip value
/// as it is. Shared by the exhaustive and the partitioned scans.
inline float reported_score(float value, bool hamming, bool l2, size_t dim, double q_sq_norm) {
    if (hamming) return l2 ? -value : float(dim) + 2.0f * value;
    if (l2) return std::max(0.0f, float(q_sq_norm - double(value)));
    return value;
}

}  // namespace flatcoat
