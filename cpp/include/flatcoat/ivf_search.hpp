// Search of the partitioned (IVF) dense index: a coarse step over the list
// centroids, then a list-major scan of the probed lists (4-bit PQ fast-scan
// codes or the dense codecs), fused top-k, optional exact re-ranking.
#pragma once

#include <cstddef>
#include <cstdint>

#include "flatcoat/common.hpp"
#include "flatcoat/filter.hpp"  // filter_t

namespace flatcoat {

/// A read-only view of an IVF index's arrays; nothing here is owned.
///
/// Lists are a CSR over "slots": list l owns slots [list_offsets[l],
/// list_offsets[l + 1]). slot_ids[slot] is the slot's user id, or -1 for
/// padding and removed entries, which the scan skips.
///
/// pq4 (`pq4` true): residual codes against the list centroid, m
/// sub-quantizers of dim / m dimensions, packed by pq4_pack (pq.hpp): `codes`
/// holds total_slots / 32 blocks of 16 * m bytes, and every list's slot count
/// is a multiple of 32. A slot decodes as centroid[l] + codebooks[s][code_s]
/// over the sub-spaces s.
/// Other storages (`codec`): one row per slot in the dense layout (f32, f16
/// bits, int8 affine u8 with scale/offset per slot, binary sign words), not
/// residual, no padding.
struct ivf_data_t {
    bool pq4 = true;
    codec_t codec = codec_t::f32_k;  ///< list storage when !pq4
    size_t dim = 0;
    size_t nlist = 0;
    size_t total_slots = 0;
    size_t m = 0;                           ///< pq4: sub-quantizers
    const float* centroids = nullptr;       ///< nlist x dim
    const int64_t* list_offsets = nullptr;  ///< nlist + 1, from 0 to total_slots, non-decreasing
    const void* codes = nullptr;            ///< see above
    const int64_t* slot_ids = nullptr;      ///< total_slots
    const float* codebooks = nullptr;       ///< pq4: m x 16 x (dim / m)
    const float* scale = nullptr;           ///< int8: total_slots
    const float* offset = nullptr;          ///< int8: total_slots
    const float* sq_norms = nullptr;        ///< l2 over f32/f16/int8 lists: |decode(slot)|^2 per slot
    size_t n_rows = 0;                      ///< rows of the float copy
    const float* float_rows = nullptr;      ///< n_rows x dim float32 copy, for re-ranking, or null
    const int64_t* slot_rows = nullptr;     ///< total_slots: each slot's row of float_rows (-1: padding)
    const float* float_sq_norms = nullptr;  ///< n_rows: |row|^2, for l2 re-ranking
};

struct ivf_query_t {
    const float* queries = nullptr;  ///< nq x dim float32, already normalised for cosine
    size_t nq = 0;
    size_t k = 0;       ///< results per query (the caller applies the result rule)
    size_t nprobe = 1;  ///< lists scanned per query, clamped to nlist
    metric_t metric = metric_t::ip_k;
    /// 0: return the codes' own (approximate) scores. R >= k: keep the R best
    /// by the codes, re-score them exactly from float_rows, return the k best.
    size_t rerank = 0;
    /// Slots the search may return (ceil(total_slots / 64) words; null: all;
    /// `bits` is taken as total_slots). Padding and removed slots stay skipped
    /// by their id -1. See search_ivf for how a filter changes the probes.
    filter_t filter;
};

/// Writes nq x k results, best first: scores (ip: inner product; l2: squared
/// distance; binary lists without re-ranking: dim - 2 * hamming for ip,
/// hamming for l2) and user ids; ties by the smaller id; missing results are
/// id -1 with score -inf (ip) or +inf (l2). Results are the same for every
/// thread count.
///
/// Coarse step: the queries' scores against the centroids (ip: <q, c>; l2:
/// ranked by 2<q, c> - |c|^2) with the dense f32 kernel; each query probes its
/// nprobe best lists (ties: smaller list); a single query's centroid scan is
/// split among the threads. The probed (query, list) pairs are grouped by list
/// and the lists shared among the threads (each query's best lists first, so
/// thresholds rise early), so a list's codes are read once for all the queries
/// of the batch that probe it: chunk by chunk (24 KiB, in L1), every query of
/// the list scanning the chunk with its own table.
///
/// pq4 scan: a float table T[s][c] per query (ip: <q_s, codebook[s][c]>,
/// shared by every list, plus the bias <q, centroid[l]>; l2: -|(q -
/// centroid[l])_s - codebook[s][c]|^2, per list) is quantized to u8 with one
/// scale a = min(255 / max_s span_s, 65535 / sum_s span_s) per table and one
/// offset min_s per sub-space: lut[s][c] = round((T[s][c] - min_s) * a). The
/// kernel's u16 sum thus never overflows, and the approximate score is
/// bias + sum_s min_s + sum / a, within m / (2a) of the score of the decoded
/// vector. The running top-k threshold is turned into the u16 domain of each
/// (query, list); the kernel compares the sums with it in the same pass, and
/// only the slots that reach it are looked at further (padding and removed
/// slots, id -1, are skipped there).
///
/// Filtered (`query.filter` active; allowed = allowed live slots):
///  - per list, its allowed live slots are counted (a popcount pass over the
///    list's bits, testing slot_ids only at set bits); none: every result missing;
///  - need = min(allowed, max(ceil(nprobe * live / nlist), keep)), keep = rerank
///    or k: each query takes lists in centroid order, skipping lists without an
///    allowed slot, until those lists hold `need` allowed entries (or none is
///    left). The probe count thus grows as 1 / selectivity for a filter
///    uncorrelated with the query and stays small for a correlated one, a
///    restrictive filter never pads while matches exist, and the choice
///    depends on counts only (the same for every thread count). In a probed
///    list, code chunks and row tiles without an allowed slot are skipped and
///    masked slots never enter the top-k or the re-ranking shortlist.
///  - brute force instead, for the whole call, when the cost estimate says it
///    is cheaper (in streamed float32 multiply-adds per query: probing costs
///    nlist * dim + need * total_slots / allowed slots at the codec's cost
///    (pq4 0.375 m, dense codecs dim, binary its words) + rerank * dim * 2.5;
///    brute force allowed * dim * 2.5, a scattered row per slot): every
///    allowed slot is scored, by float32 dot on its row of the float copy
///    when there is one (the exact filtered top-k, reported like re-ranked
///    results), else from its list codes (dense codecs: the scan's values;
///    pq4 ip: <q, centroid> plus the query's float table, l2: -|q - decoded|^2).
///    With 1000 x 384 pq4 lists at 200,000 vectors this picks brute force up to
///    about 3% allowed (one query: 1% allowed, 0.45 ms against 1.44 ms probing;
///    10%: 3.1 ms against 0.87 ms).
void search_ivf(const ivf_data_t& data, const ivf_query_t& query, float* out_scores, int64_t* out_ids);

}  // namespace flatcoat
