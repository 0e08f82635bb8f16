// AVX2 + FMA + F16C ("haswell"): 8 float32 lanes in a ymm register.
// f16 rows widen with vcvtph2ps, u8/i8 codes with vpmovzxbd/vpmovsxbd + vcvtdq2ps;
// every product is a vfmadd231ps into float32 accumulators.
#pragma once

#include <immintrin.h>

#include <cstddef>
#include <cstdint>

namespace flatcoat {
namespace simd {

struct haswell_t {
    static constexpr size_t width = 8;
    using vf = __m256;

    static vf zero() { return _mm256_setzero_ps(); }
    static vf set1(float x) { return _mm256_set1_ps(x); }
    static vf load(const float* p) { return _mm256_loadu_ps(p); }
    static vf load(const uint16_t* p) {
        return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
    }
    static vf load(const uint8_t* p) {
        return _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p))));
    }
    static vf load(const int8_t* p) {
        return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p))));
    }
    static void store(float* p, vf a) { _mm256_storeu_ps(p, a); }
    static vf fma(vf a, vf b, vf acc) { return _mm256_fmadd_ps(a, b, acc); }
    static vf add(vf a, vf b) { return _mm256_add_ps(a, b); }
    static vf max(vf a, vf b) { return _mm256_max_ps(a, b); }
    static float reduce_add(vf a) {
        __m128 s = _mm_add_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
        s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
        return _mm_cvtss_f32(s);
    }
    static float reduce_max(vf a) {
        __m128 s = _mm_max_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
        s = _mm_max_ps(s, _mm_movehl_ps(s, s));
        s = _mm_max_ss(s, _mm_shuffle_ps(s, s, 1));
        return _mm_cvtss_f32(s);
    }
};

}  // namespace simd
}  // namespace flatcoat
