// AVX-512 F/BW/VL/DQ ("skylake"): 16 float32 lanes in a zmm register.
// Same strategy as haswell at twice the width: widen f16/u8/i8 to float32, FMA.
#pragma once

#include <immintrin.h>

#include <cstddef>
#include <cstdint>

namespace flatcoat {
namespace simd {

struct skylake_t {
    static constexpr size_t width = 16;
    using vf = __m512;

    static vf zero() { return _mm512_setzero_ps(); }
    static vf set1(float x) { return _mm512_set1_ps(x); }
    static vf load(const float* p) { return _mm512_loadu_ps(p); }
    static vf load(const uint16_t* p) {
        return _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
    }
    static vf load(const uint8_t* p) {
        return _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))));
    }
    static vf load(const int8_t* p) {
        return _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))));
    }
    static void store(float* p, vf a) { _mm512_storeu_ps(p, a); }
    static vf fma(vf a, vf b, vf acc) { return _mm512_fmadd_ps(a, b, acc); }
    static vf add(vf a, vf b) { return _mm512_add_ps(a, b); }
    static vf max(vf a, vf b) { return _mm512_max_ps(a, b); }
    static float reduce_add(vf a) {
        __m256 s8 = _mm256_add_ps(_mm512_castps512_ps256(a),
                                  _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(a), 1)));
        __m128 s = _mm_add_ps(_mm256_castps256_ps128(s8), _mm256_extractf128_ps(s8, 1));
        s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
        return _mm_cvtss_f32(s);
    }
    static float reduce_max(vf a) { return _mm512_reduce_max_ps(a); }
};

}  // namespace simd
}  // namespace flatcoat
