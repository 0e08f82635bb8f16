// Helpers shared by every ISA's kernels; templated on the SIMD type so each
// ISA's translation unit gets its own instantiation (no ODR mixing of flags).
#pragma once

#include <cstddef>
#include <cstdint>

#include "flatcoat/common.hpp"  // bf16_t

namespace flatcoat {
namespace simd {

/// popcount(a[w] xor b[w]) summed over w < words with the scalar popcount
/// (popcnt where the level's flags allow it): the Hamming distance of every
/// level without a vector popcount. Templated on the SIMD type like every
/// helper here, so each ISA's translation unit has its own copy.
template <class S>
inline uint32_t popcount_xor_words(const uint64_t* a, const uint64_t* b, size_t words) {
    uint32_t distance = 0;
    for (size_t w = 0; w < words; ++w) {
        distance += uint32_t(__builtin_popcountll(a[w] ^ b[w]));
        // Kept scalar (the sum must sit in a register each word): with AVX-512
        // flags GCC vectorises this loop into a vpshufb popcount slower than
        // popcnt per word (binary scan, 1M x 384, one query: 2.2 ms on skylake
        // against 1.5 on haswell). An empty asm, so the function still inlines.
        __asm__("" : "+r"(distance));
    }
    return distance;
}

/// Loads the first n < S::width elements of p, zero elsewhere (row tails).
template <class S, class element_t>
inline typename S::vf load_partial(const element_t* p, size_t n) {
    element_t buffer[S::width] = {};
    for (size_t i = 0; i < n; ++i) buffer[i] = p[i];
    return S::load(buffer);
}

/// Widens n elements to float32 (f16 and bf16 exactly, u8 codes to their integer value),
/// so a tile is converted once and scored with the float32 kernel.
template <class S, class element_t>
void widen(const element_t* x, size_t n, float* out) {
    size_t i = 0;
    for (; i + S::width <= n; i += S::width) S::store(out + i, S::load(x + i));
    if (i < n) {
        float tail[S::width];
        S::store(tail, load_partial<S>(x + i, n - i));
        for (size_t t = 0; i + t < n; ++t) out[i + t] = tail[t];
    }
}

}  // namespace simd
}  // namespace flatcoat
