// Exact late-interaction (MaxSim) scoring over packed multi-vector documents.
//
// MaxSim(q, d) = sum over query tokens t of w_t * max over document tokens j
// of <q_t, d_j>. Documents are packed: all their token rows in one array, and
// offsets[i] .. offsets[i + 1] are document i's rows. Nothing is ever padded.
#pragma once

#include <cstddef>
#include <cstdint>

#include "flatcoat/common.hpp"

namespace flatcoat {

/// How document tokens are stored.
enum class maxsim_codec_t {
    f32_k,  ///< float32, dim floats per token
    f16_k,  ///< IEEE half, dim uint16 per token, widened to float32 before the products
    /// int8 with one scale per token: token ~ scale * (code - 128), codes uint8 in
    /// [1, 255] (that is, signed codes in [-127, 127] stored with a +128 offset).
    /// Queries are quantized per token to [-64, 64] and scored in integers.
    i8_k,
};

/// A read-only view of packed documents; nothing here is owned.
struct maxsim_data_t {
    maxsim_codec_t codec = maxsim_codec_t::f32_k;
    size_t docs = 0;
    size_t dim = 0;
    const void* tokens = nullptr;        ///< offsets[docs] x dim elements of the codec
    const int64_t* offsets = nullptr;    ///< docs + 1 entries: 0, then strictly increasing (no empty document)
    const float* token_scales = nullptr; ///< offsets[docs] scales, i8_k only
    const int64_t* ids = nullptr;        ///< docs user ids (ties are broken by the smaller id); search only
};

/// A batch of queries, packed the same way.
struct maxsim_query_t {
    const float* tokens = nullptr;     ///< offsets[nq] x dim float32
    const int64_t* offsets = nullptr;  ///< nq + 1 entries: 0, then strictly increasing (no empty query)
    size_t nq = 0;
    const float* weights = nullptr;    ///< offsets[nq] per-token weights, or null for all ones
};

/// Exhaustive MaxSim with fused top-k. Writes nq x k results, best first:
/// scores and user ids; missing results are id -1 with score -inf. Equal scores
/// are ordered by the smaller id, whatever the thread count.
///
/// Rerank mode: with `candidates` non-null, query i scores only the document
/// positions (rows of the view, not user ids) candidates[candidate_offsets[i]
/// .. candidate_offsets[i + 1]); repeated positions count once.
/// Throws flatcoat::error on inconsistent views.
void search_maxsim(const maxsim_data_t& data, const maxsim_query_t& query, size_t k, const int64_t* candidates,
                   const int64_t* candidate_offsets, float* out_scores, int64_t* out_ids);

/// Every score: out[i * docs + d] = MaxSim(query i, document d). No top-k.
void maxsim_scores(const maxsim_data_t& data, const maxsim_query_t& query, float* out);

}  // namespace flatcoat
