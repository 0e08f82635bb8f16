// PLAID-style compressed multi-vector search (Santhanam et al., CIKM 2022;
// residual compression of ColBERTv2).
//
// Every document token x is stored as its nearest centroid c (a token
// centroid id) plus the residual x - c quantized per dimension to nbits in
// {1, 2, 4}: dimension d's code b selects weights[d * 2^nbits + b], the mean
// residual of bucket b of that dimension (buckets cut at quantiles of the
// residuals, trained in the Python layer). Decompressed, the token is
// centroids[c] + weights[d * 2^nbits + code_d] for every d; an index of
// unit-norm tokens (ColBERT's) rescales it to unit norm, as ColBERTv2 does: the
// rescaling removes the part of the quantization error along the token, which
// is the part a query token close to it sees most.
//
// Search runs in stages, every size an argument of the call:
//   1. scores of every query token against every centroid (one GEMM-like
//      pass, the S matrix, centroid-major); each query token's `nprobe` best
//      centroids; the candidate documents are the union of their inverted
//      lists (centroid -> document positions), masked by the filter;
//   2. centroid interaction: approximate MaxSim of each candidate from its
//      tokens' centroid ids alone, sum_t w_t max_j S[c_j][t]; with a
//      `centroid_threshold` only tokens whose centroid scores at least that
//      for some query token take part (PLAID's centroid pruning; maxima then
//      start at 0): the best `ncandidates` are kept;
//   3. with pruning, the full centroid interaction of those; the best `ndocs` kept;
//   4. exact MaxSim over the decompressed tokens of the `ndocs` (one document
//      at a time, decompressed into a per-thread block that stays in L1/L2,
//      scored by the MaxSim kernel of maxsim_kernels.hpp): the top k.
// Ties are broken by the smaller id at every stage and every score sums in a
// fixed order, so results do not depend on the thread count.
#pragma once

#include <cstddef>  // size_t
#include <cstdint>  // int64_t, int32_t, uint16_t, uint8_t
#include <vector>   // plaid_byte_table

#include "flatcoat/filter.hpp"          // filter_t
#include "flatcoat/isa.hpp"             // FLATCOAT_KERNEL_FAMILY
#include "flatcoat/maxsim_search.hpp"   // maxsim_query_t

namespace flatcoat {

/// Bytes of one token's packed residual codes: ceil(dim * nbits / 8). Code of
/// dimension d is bits [(d * nbits) % 8, +nbits) of byte (d * nbits) / 8 (least
/// significant first); nbits divides 8, so no code straddles two bytes.
inline size_t plaid_code_bytes(size_t dim, size_t nbits) { return (dim * nbits + 7) / 8; }

/// Per-ISA kernels of the PLAID family (cpp/src/kernels/plaid/<isa>.cpp).
/// Query panels are those of maxsim_kernels.hpp (float, lane 1): `n_panels`
/// panels of `width` tokens, dim-major; Tp = n_panels * width padded tokens.
struct plaid_kernels_t {
    size_t width;  ///< query tokens per panel (the ISA's float32 lanes)
    /// out[r * Tp + t] = <q_t, rows[r]> for r < n_rows (rows: n_rows x dim float32), every t < Tp.
    void (*centroid_scores)(const float* q, size_t n_panels, const float* rows, size_t n_rows, size_t dim,
                            float* out);
    /// maxima[t] = max(maxima[t], s[cids[j] * Tp + t]) for j < n and t < Tp; with `keep` non-null only
    /// the tokens j with keep[cids[j]] != 0.
    void (*centroid_max)(const float* s, size_t Tp, const int32_t* cids, size_t n, const uint8_t* keep,
                         float* maxima);
    /// out (n x dim float32) = centroids[cids[j]] + weights[d * 2^nbits + code_d] for the n tokens
    /// whose packed codes are `codes` (n x plaid_code_bytes(dim, nbits)), read through the byte
    /// table `lut` of plaid_byte_table(); with `normalize` each row then divided by its L2 norm
    /// (a zero row stays zero).
    void (*decompress)(const uint8_t* codes, const int32_t* cids, size_t n, const float* centroids,
                       const float* lut, size_t dim, size_t nbits, bool normalize, float* out);
};

FLATCOAT_KERNEL_FAMILY(plaid_kernels_t)

/// The decompression table of `weights` (dim x 2^nbits): for code byte position b and byte value
/// v, the 8 / nbits residuals it encodes, lut[(b * 256 + v) * (8 / nbits) + i] = weights of
/// dimension b * (8 / nbits) + i (0 past dim). plaid_code_bytes(dim, nbits) * 256 * (8 / nbits)
/// floats, about 256 * dim (128 KiB at dim 128, whatever nbits): it stays in L2.
std::vector<float> plaid_byte_table(const float* weights, size_t dim, size_t nbits);

/// A read-only view of a PLAID index; nothing here is owned.
struct plaid_index_t {
    size_t dim = 0;
    size_t nbits = 2;                    ///< 1, 2 or 4
    bool normalize = false;              ///< decompressed tokens rescaled to unit norm (unit-norm tokens)
    size_t n_centroids = 0;
    size_t docs = 0;
    const float* centroids = nullptr;    ///< n_centroids x dim
    const float* weights = nullptr;      ///< dim x 2^nbits bucket values (the decompressed residuals)
    const uint8_t* codes = nullptr;      ///< offsets[docs] x plaid_code_bytes(dim, nbits)
    /// offsets[docs] token centroid ids, each < n_centroids: exactly one of the two is set, uint16
    /// (2 bytes per token, any n_centroids <= 65,536) or int32.
    const int32_t* centroid_ids = nullptr;
    const uint16_t* centroid_ids16 = nullptr;
    const int64_t* offsets = nullptr;    ///< docs + 1: 0, then strictly increasing
    const int64_t* ids = nullptr;        ///< docs user ids (ties go to the smaller)
    const int64_t* ivf_offsets = nullptr;  ///< n_centroids + 1: centroid c's documents are
    const int32_t* ivf_docs = nullptr;     ///< ivf_docs[ivf_offsets[c] .. ivf_offsets[c + 1]), ascending, distinct
};

/// The stage sizes of one search (arguments of the call, never index state).
struct plaid_params_t {
    size_t k = 10;
    size_t nprobe = 2;          ///< centroids probed per query token (stage 1)
    size_t ncandidates = 256;   ///< documents kept by the (pruned) centroid interaction (stage 2)
    size_t ndocs = 64;          ///< documents scored exactly on decompressed tokens (stage 4), >= k
    bool prune = false;         ///< stage 2 only counts tokens whose centroid scores >= centroid_threshold
    float centroid_threshold = 0.0f;
};

/// Wall-clock seconds per stage summed over the queries of a call, and the
/// stage sizes summed over the queries.
struct plaid_stats_t {
    double seconds[4] = {0, 0, 0, 0};  ///< centroid scores + probing, candidate union, interaction, exact
    size_t candidates = 0;             ///< documents after stage 1 (the union, filtered)
    size_t interacted = 0;             ///< documents kept by stage 2 (and 3)
    size_t scored = 0;                 ///< documents scored exactly
};

/// The PLAID search of `query.nq` queries (query.filter: document positions
/// that may be returned; query.weights: per-token weights). Writes nq x k
/// results, best first (missing: id -1, score -inf). A filter allowing at
/// most `ncandidates` documents skips stage 1: the allowed documents are the
/// candidates. Throws flatcoat::error on inconsistent views or parameters.
void search_plaid(const plaid_index_t& index, const maxsim_query_t& query, const plaid_params_t& params,
                  float* out_scores, int64_t* out_ids, plaid_stats_t* stats = nullptr);

/// Entries of the inverted file of `n_docs` documents (offsets: n_docs + 1)
/// whose tokens have centroid ids `cids`: the distinct (centroid, document)
/// pairs. Throws flatcoat::error for an id outside [0, n_centroids).
size_t plaid_ivf_size(const int32_t* cids, const int64_t* offsets, size_t n_docs, size_t n_centroids);
size_t plaid_ivf_size(const uint16_t* cids, const int64_t* offsets, size_t n_docs, size_t n_centroids);

/// Fills the inverted file: ivf_offsets (n_centroids + 1) and ivf_docs
/// (plaid_ivf_size entries), each list's document positions ascending.
/// Linear time (a counting sort by centroid).
void plaid_build_ivf(const int32_t* cids, const int64_t* offsets, size_t n_docs, size_t n_centroids,
                     int64_t* ivf_offsets, int32_t* ivf_docs);
void plaid_build_ivf(const uint16_t* cids, const int64_t* offsets, size_t n_docs, size_t n_centroids,
                     int64_t* ivf_offsets, int32_t* ivf_docs);

/// Residual codes of n tokens `x` (n x dim float32) assigned to centroids `labels` (each <
/// n_centroids): the residual r = x[j] - centroids[labels[j]] (float32), dimension d's code the
/// number of its cut-offs cutoffs[d * (2^nbits - 1) + i] strictly below r_d, packed as
/// plaid_code_bytes() says into `codes` (n x plaid_code_bytes(dim, nbits)). Threads split the tokens.
void plaid_encode(const float* x, size_t n, size_t dim, const float* centroids, size_t n_centroids,
                  const int64_t* labels, const float* cutoffs, size_t nbits, uint8_t* codes);

/// Decompresses n tokens (see plaid_kernels_t::decompress) with the active ISA.
void plaid_decompress(const uint8_t* codes, const int32_t* cids, size_t n, const float* centroids,
                      size_t n_centroids, const float* weights, size_t dim, size_t nbits, bool normalize,
                      float* out);

}  // namespace flatcoat
