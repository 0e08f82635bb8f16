// Per-ISA dense kernel tables. Each table is filled by one translation unit compiled
// with that ISA's flags (cpp/src/kernels/dense/<isa>.cpp) and reached through
// kernels_for<dense_kernels_t>(isa); only plain pointers cross translation
// units, never SIMD types.
#pragma once

#include <cstddef>
#include <cstdint>

#include "flatcoat/isa.hpp"

namespace flatcoat {

/// Dense block scoring: out[i * ldo + j] = <q_i, decode(x_j)> for i < nq, j < nx.
/// `q` is nq x dim float32 (row-major, contiguous), `x` is nx rows of the codec's
/// element type with `dim` elements each. Every dot product is accumulated in
/// the same order whatever nq and nx are, so a query's scores do not depend on
/// the batch it came in.
template <class element_t>
using dot_block_fn = void (*)(const float* q, size_t nq, const element_t* x, size_t nx, size_t dim,
                              float* out, size_t ldo);

/// Binary block scoring: out[i * ldo + j] = popcount(q_i xor x_j) over `words` uint64 words.
using hamming_block_fn = void (*)(const uint64_t* q, size_t nq, const uint64_t* x, size_t nx,
                                  size_t words, uint32_t* out, size_t ldo);

/// int8 block scoring with quantized queries: out[i * ldo + j] = sum over d
/// of q_i[d] * x_j[d] exactly in int32, for s8 query codes (|q| <= 127) and u8
/// row codes; dim <= max_int8_dim, so no sum can overflow.
using dot_u8s8_fn = void (*)(const int8_t* q, size_t nq, const uint8_t* x, size_t nx, size_t dim, int32_t* out,
                             size_t ldo);
constexpr size_t max_int8_dim = 65536;  // 65536 * 255 * 127 < 2^31

/// bfloat16 block scoring with bfloat16 queries: out[i * ldo + j] = sum over d
/// of q_i[d] * x_j[d], products of bfloat16 pairs summed in float32
/// (vdpbf16ps). Only levels with AVX512_BF16 have it (null elsewhere).
using dot_bf16_pairs_fn = void (*)(const bf16_t* q, size_t nq, const bf16_t* x, size_t nx, size_t dim, float* out,
                                   size_t ldo);

/// int8 scoring of query panels: `panels` holds n_panels panels of
/// `panel_queries` s8 queries, each panel ceil(dim / 4) steps of
/// panel_queries x 4 bytes (query l's dimensions 4s..4s+3 at bytes 4l..4l+3 of
/// step s, zero past dim). out[j * ldo + p * panel_queries + l] = exact int32
/// dot of row j with query l of panel p: rows by queries, no reduction.
using dot_u8s8_panels_fn = void (*)(const int8_t* panels, size_t n_panels, const uint8_t* x, size_t nx,
                                    size_t dim, int32_t* out, size_t ldo);

/// bf16 scoring of query panels, as dot_u8s8_panels_fn with two bfloat16 per
/// 32-bit word (query l's elements 2s, 2s + 1 at elements 2l, 2l + 1 of step s)
/// and float32 sums (vdpbf16ps).
using dot_bf16_panels_fn = void (*)(const bf16_t* panels, size_t n_panels, const bf16_t* x, size_t nx,
                                    size_t dim, float* out, size_t ldo);

struct dense_kernels_t {
    dot_block_fn<float> dot_f32;
    dot_block_fn<uint16_t> dot_f16;
    dot_block_fn<bf16_t> dot_bf16;
    dot_block_fn<uint8_t> dot_u8;  ///< float queries x u8 codes (IVF int8 lists)
    dot_u8s8_fn dot_u8s8;          ///< quantized queries x u8 codes (dense int8)
    dot_bf16_pairs_fn dot_bf16_pairs = nullptr;  ///< bf16 queries x bf16 rows; null without AVX512_BF16
    dot_u8s8_panels_fn dot_u8s8_panels = nullptr;  ///< int8 query panels; null without an exact vpdpbusd (VNNI)
    dot_bf16_panels_fn dot_bf16_panels = nullptr;  ///< bf16 query panels; null without AVX512_BF16
    size_t panel_queries = 0;                      ///< queries per panel of dot_u8s8_panels
    hamming_block_fn hamming;
    widen_fn<uint16_t> widen_f16;
    widen_fn<bf16_t> widen_bf16;
};

FLATCOAT_KERNEL_FAMILY(dense_kernels_t)

}  // namespace flatcoat
