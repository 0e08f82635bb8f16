// The C++ interface of the GPU MaxSim store (late interaction). Plain C++, no
// CUDA types, so the pybind11 bindings compile with the host compiler alone;
// every pointer is a raw device or host address the caller keeps alive for
// the call (the bindings check every array first: see arrays.hpp).
//
// Semantics are those of flatcoat::search_maxsim (cpp/include/flatcoat/
// maxsim_search.hpp): MaxSim(q, d) = sum over query tokens t of
// w_t * max over document tokens j of <q_t, d_j>, summed in float64 in token
// order and rounded to float32; results best first, ties by the smaller id,
// padded with id -1 and -inf. int8 storage uses the CPU's scheme exactly:
// per-token document codes c + 128 with a float32 scale, queries quantized per
// token to [-64, 64] with scale max|q| / 64, products summed in int32.
//
// Storages (flatcoat::codec_t; binary_k is not a MaxSim codec): f32_k, float32
// tokens, tensor cores in three TF32 products (float32-grade); f16_k, half
// tokens, tensor cores with the query in two f16 terms (float32-grade);
// int8_k, uint8 codes c + 128 and a float32 scale per token, int8 tensor
// cores, exact integers.
#pragma once

#include <cstddef>  // size_t
#include <cstdint>  // int64_t, uint32_t, uintptr_t
#include <memory>   // std::unique_ptr (pimpl)
#include <string>

#include "api.cuh"  // cuda_error, max_k, flatcoat::error, codec_t

namespace flatcoat {
namespace cuda {

/// One MaxSim search. Query tokens are `offsets[nq]` x dim float32,
/// C-contiguous, on the device when `on_device` (else host); `offsets` and the
/// subset are always host arrays.
struct maxsim_search_t {
    const float* tokens = nullptr;
    const int64_t* offsets = nullptr;  ///< host, nq + 1: 0, then strictly increasing
    size_t nq = 0;
    const float* weights = nullptr;    ///< offsets[nq] per-token weights on the tokens' side, or null
    bool on_device = false;
    size_t k = 0;
    /// Restricted search when non-null: query i scores only the document positions
    /// subset[subset_offsets[i] .. subset_offsets[i + 1]) (host; see flatcoat::normalize_subset).
    const int64_t* subset = nullptr;
    const int64_t* subset_offsets = nullptr;
    float* out_scores = nullptr;  ///< nq x k, on the tokens' side
    int64_t* out_ids = nullptr;   ///< nq x k, on the tokens' side
    uintptr_t stream = 0;         ///< cudaStream_t to run on (0: the legacy default stream)
};

/// A MultiVectorIndex's arrays in device memory (RAII). Token rows are padded
/// with zeros to 16 bytes; nothing is padded to a document length.
class maxsim_store_t {
   public:
    /// Allocates (zeroed) arrays for `docs` documents of `tokens` token rows in
    /// all. `has_ranks`: ids are not ascending in document order, so a rank per
    /// document (its place in ascending id order) breaks ties; else the
    /// document position does.
    maxsim_store_t(int device, codec_t codec, size_t dim, size_t docs, size_t tokens, bool has_ranks);
    ~maxsim_store_t();
    maxsim_store_t(const maxsim_store_t&) = delete;
    maxsim_store_t& operator=(const maxsim_store_t&) = delete;

    /// Copies `n` entries of `field` from host or device memory at `src` to
    /// entries row_begin.. of the store (synchronous). Fields: "tokens" (rows of
    /// dim codes, `src_pitch` bytes apart), "scales" (float32, int8 only),
    /// "offsets" (int64, docs + 1 entries), "ids" (int64 in rank order: the
    /// ascending ids), "ranks" (uint32 per document, with has_ranks).
    void upload(const std::string& field, size_t row_begin, const void* src, size_t n, size_t src_pitch);

    /// Writes nq x k results (see the file comment). Synchronises the stream
    /// before returning; NaN/inf query tokens or weights throw flatcoat::error
    /// naming the token row, as do offsets or a subset that do not fit.
    void search(const maxsim_search_t& args) const;

    int device() const;
    codec_t codec() const;
    size_t dim() const;
    size_t docs() const;
    size_t tokens() const;
    size_t nbytes() const;  ///< device bytes held

   private:
    struct impl_t;
    std::unique_ptr<impl_t> impl_;
};

}  // namespace cuda
}  // namespace flatcoat
