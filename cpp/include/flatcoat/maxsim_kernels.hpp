// Per-ISA MaxSim kernel tables. Each table is filled by one translation unit
// compiled with that ISA's flags (cpp/src/kernels/maxsim/<isa>.cpp) and reached
// through kernels_for<maxsim_kernels_t>(isa); only plain pointers cross
// translation units, never SIMD types.
//
// Query layout ("panels"). A query of T tokens is cut into ceil(T / width)
// groups of `width` tokens; group v is one panel, a (steps x width x lane)
// block where step s holds, for each of the group's tokens, the `lane`
// consecutive dimensions [s * lane, s * lane + lane) of that token:
//   float queries: lane = 1, steps = dim,            panel = dim * width floats
//   int8 queries:  lane = 4, steps = ceil(dim / 4),  panel = steps * width * 4 int8
// Tokens past T and dimensions past dim are zero. With this layout one SIMD
// register holds one step of `width` query tokens, so a document token's
// element (or 4 int8 elements) is broadcast and multiplied into all of them:
// each register lane is one (query token, document token) dot product, and the
// running max over document tokens is a vertical max, never a reduction.
#pragma once

#include <cstddef>
#include <cstdint>

#include "flatcoat/isa.hpp"

namespace flatcoat {

/// maxima[t] = max(maxima[t], max over j < n_tok of <q_t, x_j>) for the
/// n_panels * width padded query tokens t of float panels `q`; `x` is n_tok
/// float32 rows of `dim` elements. Padding tokens get max(maxima, 0).
using maxsim_max_f32_fn = void (*)(const float* q, size_t n_panels, const float* x, size_t n_tok, size_t dim,
                                   float* maxima);

/// The int8 x int8 form: x holds n_tok rows of `dim` uint8 codes c (token j is
/// x_scale[j] * (c - 128)), q int8 panels with codes in [-64, 64] (the range
/// keeps vpmaddubsw's int16 pair sums exact), and q_bias[t] = -128 * sum of
/// query token t's codes, which cancels the +128 offset of the codes. Updates
/// maxima[t] with max over j of x_scale[j] * <q_t, c_j - 128> (query scale not applied).
using maxsim_max_u8_fn = void (*)(const int8_t* q, size_t n_panels, const int32_t* q_bias, const uint8_t* x,
                                  const float* x_scale, size_t n_tok, size_t dim, float* maxima);

struct maxsim_kernels_t {
    size_t width;  ///< query tokens per panel (the ISA's float32 lanes)
    maxsim_max_f32_fn max_f32;
    maxsim_max_u8_fn max_u8;
    widen_fn<uint16_t> widen_f16;
};

FLATCOAT_KERNEL_FAMILY(maxsim_kernels_t)

}  // namespace flatcoat
