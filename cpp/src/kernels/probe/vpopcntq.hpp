// The popcount step of the levels with AVX512_VPOPCNTDQ (icelake and above):
// vpopcntq on eight words at once, the popcount of icelake_t::popcount_xor.
// Templated on the SIMD type so that each level's translation unit has its own
// instantiation (no symbol shared between files compiled with different flags).
#pragma once

#include <immintrin.h>

#include <cstddef>
#include <cstdint>

namespace flatcoat {
namespace kernels {

template <class S>
struct vpopcntq_step_t {
    using bits_t = __m512i;
    static constexpr size_t words = 8;
    static constexpr size_t chains = 12;  // latency x pipes, as for FMA
    static bits_t zero() { return _mm512_setzero_si512(); }
    static bits_t load(const uint64_t* p) { return _mm512_loadu_si512(p); }
    static bits_t xor_popcount_add(bits_t acc, bits_t x, bits_t key) {
        return _mm512_add_epi64(acc, _mm512_popcnt_epi64(_mm512_xor_si512(x, key)));
    }
    static uint64_t total(bits_t acc) { return uint64_t(_mm512_reduce_add_epi64(acc)); }
};

}  // namespace kernels
}  // namespace flatcoat
