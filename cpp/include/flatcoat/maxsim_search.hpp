// Exact late-interaction (MaxSim) scoring over packed multi-vector documents.
//
// MaxSim(q, d) = sum over query tokens t of w_t * max over document tokens j
// of <q_t, d_j>. Documents are packed: all their token rows in one array, and
// offsets[i] .. offsets[i + 1] are document i's rows. Nothing is ever padded.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

#include "flatcoat/common.hpp"
#include "flatcoat/filter.hpp"  // filter_t

namespace flatcoat {

/// A read-only view of packed documents; nothing here is owned.
///
/// Codecs: `f32_k`, dim floats per token; `f16_k`, dim uint16 per token,
/// widened to float32 before the products; `int8_k`, one scale per token:
/// token ~ scale * (code - 128), codes uint8 in [1, 255] (signed codes in
/// [-127, 127] stored with a +128 offset); queries are then quantized per
/// token to [-64, 64] and scored in integers. `binary_k` is not a MaxSim
/// codec (flatcoat::error).
struct maxsim_data_t {
    codec_t codec = codec_t::f32_k;
    size_t docs = 0;
    size_t dim = 0;
    const void* tokens = nullptr;        ///< offsets[docs] x dim elements of the codec
    const int64_t* offsets = nullptr;    ///< docs + 1 entries: 0, then strictly increasing (no empty document)
    const float* token_scales = nullptr; ///< offsets[docs] scales, int8_k only
    const int64_t* ids = nullptr;        ///< docs user ids (ties are broken by the smaller id); search only
};

/// Returns `codec` if MaxSim stores tokens that way (f32, f16, int8); throws
/// flatcoat::error naming `storage` for binary_k.
codec_t maxsim_codec(codec_t codec);

/// A batch of queries, packed the same way.
struct maxsim_query_t {
    const float* tokens = nullptr;     ///< offsets[nq] x dim float32
    const int64_t* offsets = nullptr;  ///< nq + 1 entries: 0, then strictly increasing (no empty query)
    size_t nq = 0;
    const float* weights = nullptr;    ///< offsets[nq] per-token weights, or null for all ones
    /// Document positions a search may return (ceil(docs / 64) words; null:
    /// all; `bits` is taken as docs), ANDed with a subset. A masked document
    /// is never scored: one bit test per document against MaxSim's cost of a
    /// whole token matrix. search_maxsim only; maxsim_scores ignores it.
    filter_t filter;
};

/// Per query, the document positions a search is restricted to, normalised:
/// each query's list sorted ascending (memory is then read in order) with
/// repeats removed, packed as positions[offsets[i] .. offsets[i + 1]).
struct subset_t {
    std::vector<int64_t> positions;
    std::vector<int64_t> offsets;  ///< nq + 1 entries
    size_t longest = 0;            ///< the longest list, after removing repeats
};

/// Checks and normalises a packed subset: `positions` holds document positions
/// (rows of the view, not user ids) and `offsets` nq + 1 entries, starting at 0
/// and non-decreasing; query i's list is positions[offsets[i] .. offsets[i + 1]).
/// Throws flatcoat::error naming `subset` for a position outside [0, docs) or
/// inconsistent offsets. Used by the CPU search and the CUDA store alike.
subset_t normalize_subset(const int64_t* positions, const int64_t* offsets, size_t nq, size_t docs);

/// Exhaustive MaxSim with fused top-k. Writes nq x k results, best first:
/// scores and user ids; missing results are id -1 with score -inf. Equal scores
/// are ordered by the smaller id, whatever the thread count.
///
/// Restricted mode: with `subset` non-null, query i scores only the document
/// positions subset[subset_offsets[i] .. subset_offsets[i + 1]) (see
/// normalize_subset); repeated positions count once. With `query.filter`
/// active only its allowed documents are scored (in a subset too): the
/// result equals the search of an index holding only those documents.
/// Throws flatcoat::error on inconsistent views.
void search_maxsim(const maxsim_data_t& data, const maxsim_query_t& query, size_t k, const int64_t* subset,
                   const int64_t* subset_offsets, float* out_scores, int64_t* out_ids);

/// Every score: out[i * docs + d] = MaxSim(query i, document d). No top-k.
/// emulate_tiles: int8 through the sapphirerapids tile kernel on emulated
/// tiles (flatcoat/tile_emulation.hpp), for tests on machines without AMX.
void maxsim_scores(const maxsim_data_t& data, const maxsim_query_t& query, float* out, bool emulate_tiles = false);

}  // namespace flatcoat
