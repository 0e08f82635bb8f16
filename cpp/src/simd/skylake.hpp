// AVX-512 F/BW/VL/DQ ("skylake"): 16 float32 lanes in a zmm register.
// Same strategy as haswell at twice the width: widen f16/u8 to float32, FMA.
#pragma once

#include <immintrin.h>

#include <cstddef>
#include <cstdint>
#include <cstring>  // std::memcpy

#include "simd/common.hpp"

namespace flatcoat {
namespace simd {

struct skylake_t {
    static constexpr size_t width = 16;
    static constexpr size_t registers = 32;  // architectural vector registers, for register blocking
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
    /// bfloat16 widens exactly: its bits become a float32's high half.
    static vf load(const bf16_t* p) {
        const __m512i wide = _mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
        return _mm512_castsi512_ps(_mm512_slli_epi32(wide, 16));
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
    /// out[0..3] = reduce_add(a), (b), (c), (d), bit for bit: the same pairs
    /// added in the same order (lane i with i + 8, then i + 4, i + 2, i + 1),
    /// for four registers at once, so the per-pair cost of a 384-d dot product
    /// drops from 8 reduction instructions to about 4.
    static void reduce4(vf a, vf b, vf c, vf d, float* out) {
        const __m512 ab = _mm512_add_ps(_mm512_shuffle_f32x4(a, b, _MM_SHUFFLE(1, 0, 1, 0)),
                                        _mm512_shuffle_f32x4(a, b, _MM_SHUFFLE(3, 2, 3, 2)));
        const __m512 cd = _mm512_add_ps(_mm512_shuffle_f32x4(c, d, _MM_SHUFFLE(1, 0, 1, 0)),
                                        _mm512_shuffle_f32x4(c, d, _MM_SHUFFLE(3, 2, 3, 2)));
        // each 128-bit quarter now holds lanes i < 4 of a, b, c, d after their i + 4 fold
        __m512 s = _mm512_add_ps(_mm512_shuffle_f32x4(ab, cd, _MM_SHUFFLE(2, 0, 2, 0)),
                                 _mm512_shuffle_f32x4(ab, cd, _MM_SHUFFLE(3, 1, 3, 1)));
        s = _mm512_add_ps(s, _mm512_permute_ps(s, _MM_SHUFFLE(3, 2, 3, 2)));
        s = _mm512_add_ps(s, _mm512_permute_ps(s, _MM_SHUFFLE(1, 1, 1, 1)));
        const __m512 firsts = _mm512_permutexvar_ps(_mm512_setr_epi32(0, 4, 8, 12, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0), s);
        _mm_storeu_ps(out, _mm512_castps512_ps128(firsts));
    }

    // Integer path (int8 MaxSim): 16 int32 lanes, each holding 4 bytes of a code vector.
    using vi = __m512i;
    static vi zero_i() { return _mm512_setzero_si512(); }
    static vi load_i(const void* p) { return _mm512_loadu_si512(p); }
    static void store_i(void* p, vi a) { _mm512_storeu_si512(p, a); }
    /// The 4 bytes at p repeated in every lane (vpbroadcastd).
    static vi set1_u32(const uint8_t* p) {
        int32_t word;
        std::memcpy(&word, p, 4);
        return _mm512_set1_epi32(word);
    }
    /// acc[l] += sum over k < 4 of u8(u[4l + k]) * s8(s[4l + k]) with vpmaddubsw + vpmaddwd
    /// (AVX-512BW); exact only if every int16 pair sum fits, which callers guarantee.
    static vi dpbusd(vi acc, vi u, vi s) {
        __m512i pairs = _mm512_maddubs_epi16(u, s);
        return _mm512_add_epi32(acc, _mm512_madd_epi16(pairs, _mm512_set1_epi16(1)));
    }

    // Exact int8 dot products (dense int8 storage: u8 codes x s8 query codes in
    // [-127, 127]): 32 bytes per step zero/sign-extended to int16, vpmaddwd into
    // int32. No int16 pair sum is formed, so nothing saturates.
    using vw = __m512i;
    static constexpr size_t u8s8_step = 32;
    static vw load_u8s8_row(const uint8_t* p) {
        return _mm512_cvtepu8_epi16(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
    }
    static vw load_u8s8_query(const int8_t* p) {
        return _mm512_cvtepi8_epi16(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
    }
    static vi dot_u8s8(vi acc, vw row, vw query) { return _mm512_add_epi32(acc, _mm512_madd_epi16(row, query)); }
    static int32_t reduce_add_i(vi a) { return _mm512_reduce_add_epi32(a); }
    /// out[0..3] = the lane sums of a, b, c, d: one transposing reduction
    /// (unpack and add within 128-bit lanes, then fold the lanes) instead of four.
    static void reduce4_i(vi a, vi b, vi c, vi d, int32_t* out) {
        const __m512i ab = _mm512_add_epi32(_mm512_unpacklo_epi32(a, b), _mm512_unpackhi_epi32(a, b));
        const __m512i cd = _mm512_add_epi32(_mm512_unpacklo_epi32(c, d), _mm512_unpackhi_epi32(c, d));
        const __m512i abcd = _mm512_add_epi32(_mm512_unpacklo_epi64(ab, cd), _mm512_unpackhi_epi64(ab, cd));
        const __m256i half = _mm256_add_epi32(_mm512_castsi512_si256(abcd), _mm512_extracti64x4_epi64(abcd, 1));
        _mm_storeu_si128(reinterpret_cast<__m128i*>(out),
                         _mm_add_epi32(_mm256_castsi256_si128(half), _mm256_extracti128_si256(half, 1)));
    }
    /// Hamming distance of two `words`-word bit strings (simd/common.hpp).
    static uint32_t popcount_xor(const uint64_t* a, const uint64_t* b, size_t words) {
        return popcount_xor_words<skylake_t>(a, b, words);
    }
    static vf to_float(vi a) { return _mm512_cvtepi32_ps(a); }
    static vi add_i(vi a, vi b) { return _mm512_add_epi32(a, b); }
    static vf mul(vf a, vf b) { return _mm512_mul_ps(a, b); }

    // Byte path (4-bit fast-scan, AVX-512BW): 64 bytes in four 16-byte lanes
    // that vpshufb indexes separately (four 16-entry tables per register); tails
    // with a zero-masked vmovdqu8; u16 sums with vpaddw (wrapping: callers keep
    // every true sum below 65536).
    using vb = __m512i;
    static constexpr size_t byte_lanes = 4;
    static vb zero_b() { return _mm512_setzero_si512(); }
    static vb load_b(const uint8_t* p) { return _mm512_loadu_si512(p); }
    /// The first `bytes` (< 64) bytes at p, zero above.
    static vb load_b_partial(const uint8_t* p, size_t bytes) {
        return _mm512_maskz_loadu_epi8(__mmask64((uint64_t(1) << bytes) - 1), p);
    }
    static vb lookup16(vb table, vb index) { return _mm512_shuffle_epi8(table, index); }
    static vb low_nibbles(vb v) { return _mm512_and_si512(v, _mm512_set1_epi8(0x0f)); }
    static vb high_nibbles(vb v) { return _mm512_and_si512(_mm512_srli_epi16(v, 4), _mm512_set1_epi8(0x0f)); }
    static vb add_u16(vb a, vb b) { return _mm512_add_epi16(a, b); }
    static vb sub_u16(vb a, vb b) { return _mm512_sub_epi16(a, b); }
    static vb shr8_u16(vb a) { return _mm512_srli_epi16(a, 8); }
    static vb shl8_u16(vb a) { return _mm512_slli_epi16(a, 8); }
    /// out[i] = sum over the lanes of u16 word i (8 words, wrapping).
    static void sum_lanes_u16(vb a, uint16_t* out) {
        __m256i h = _mm256_add_epi16(_mm512_castsi512_si256(a), _mm512_extracti64x4_epi64(a, 1));
        __m128i s = _mm_add_epi16(_mm256_castsi256_si128(h), _mm256_extracti128_si256(h, 1));
        _mm_storeu_si128(reinterpret_cast<__m128i*>(out), s);
    }
    /// Bit i set where word i of the 8 u16 at p is >= bar (vpcmpuw into a mask register).
    static uint32_t ge_mask8_u16(const uint16_t* p, uint16_t bar) {
        const __m128i v = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
        return uint32_t(_mm_cmpge_epu16_mask(v, _mm_set1_epi16(short(bar))));
    }
};

}  // namespace simd
}  // namespace flatcoat
