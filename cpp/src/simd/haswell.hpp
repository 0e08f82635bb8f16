// AVX2 + FMA + F16C ("haswell"): 8 float32 lanes in a ymm register.
// f16 rows widen with vcvtph2ps, u8 codes with vpmovzxbd + vcvtdq2ps;
// every product is a vfmadd231ps into float32 accumulators.
#pragma once

#include <immintrin.h>

#include <cstddef>
#include <cstdint>
#include <cstring>  // std::memcpy

#include "simd/common.hpp"

namespace flatcoat {
namespace simd {

struct haswell_t {
    static constexpr size_t width = 8;
    static constexpr size_t registers = 16;  // architectural vector registers, for register blocking
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
    /// bfloat16 widens exactly: its bits become a float32's high half.
    static vf load(const bf16_t* p) {
        const __m256i wide = _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
        return _mm256_castsi256_ps(_mm256_slli_epi32(wide, 16));
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
    /// out[0..3] = reduce_add(a), (b), (c), (d), bit for bit (the same pairs in
    /// the same order), for four registers at once.
    static void reduce4(vf a, vf b, vf c, vf d, float* out) {
        const __m256 ab = _mm256_add_ps(_mm256_permute2f128_ps(a, b, 0x20), _mm256_permute2f128_ps(a, b, 0x31));
        const __m256 cd = _mm256_add_ps(_mm256_permute2f128_ps(c, d, 0x20), _mm256_permute2f128_ps(c, d, 0x31));
        __m256 s_ab = _mm256_add_ps(ab, _mm256_permute_ps(ab, _MM_SHUFFLE(3, 2, 3, 2)));
        __m256 s_cd = _mm256_add_ps(cd, _mm256_permute_ps(cd, _MM_SHUFFLE(3, 2, 3, 2)));
        s_ab = _mm256_add_ps(s_ab, _mm256_permute_ps(s_ab, _MM_SHUFFLE(1, 1, 1, 1)));
        s_cd = _mm256_add_ps(s_cd, _mm256_permute_ps(s_cd, _MM_SHUFFLE(1, 1, 1, 1)));
        // lane 0 of each 128-bit half: a, b in s_ab; c, d in s_cd
        const __m256 firsts = _mm256_permutevar8x32_ps(_mm256_shuffle_ps(s_ab, s_cd, _MM_SHUFFLE(0, 0, 0, 0)),
                                                       _mm256_setr_epi32(0, 4, 2, 6, 0, 0, 0, 0));
        _mm_storeu_ps(out, _mm256_castps256_ps128(firsts));
    }

    // Integer path (int8 MaxSim): 8 int32 lanes, each holding 4 bytes of a code vector.
    using vi = __m256i;
    static vi zero_i() { return _mm256_setzero_si256(); }
    static vi load_i(const void* p) { return _mm256_loadu_si256(static_cast<const __m256i*>(p)); }
    /// The 4 bytes at p repeated in every lane (vpbroadcastd).
    static vi set1_u32(const uint8_t* p) {
        int32_t word;
        std::memcpy(&word, p, 4);
        return _mm256_set1_epi32(word);
    }
    /// acc[l] += sum over k < 4 of u8(u[4l + k]) * s8(s[4l + k]) with vpmaddubsw + vpmaddwd.
    /// vpmaddubsw saturates each pair sum to int16: exact only if |u*s + u'*s'| <= 32767
    /// (e.g. u <= 255 and |s| <= 64), which callers guarantee.
    static vi dpbusd(vi acc, vi u, vi s) {
        __m256i pairs = _mm256_maddubs_epi16(u, s);
        return _mm256_add_epi32(acc, _mm256_madd_epi16(pairs, _mm256_set1_epi16(1)));
    }

    // Exact int8 dot products (dense int8 storage: u8 codes x s8 query codes in
    // [-127, 127]): 16 bytes per step zero/sign-extended to int16, vpmaddwd into
    // int32. No int16 pair sum is formed, so nothing saturates.
    using vw = __m256i;
    static constexpr size_t u8s8_step = 16;
    static vw load_u8s8_row(const uint8_t* p) {
        return _mm256_cvtepu8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
    }
    static vw load_u8s8_query(const int8_t* p) {
        return _mm256_cvtepi8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
    }
    static vi dot_u8s8(vi acc, vw row, vw query) { return _mm256_add_epi32(acc, _mm256_madd_epi16(row, query)); }
    static int32_t reduce_add_i(vi a) {
        __m128i s = _mm_add_epi32(_mm256_castsi256_si128(a), _mm256_extracti128_si256(a, 1));
        s = _mm_add_epi32(s, _mm_unpackhi_epi64(s, s));
        s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 1));
        return _mm_cvtsi128_si32(s);
    }
    /// out[0..3] = the lane sums of a, b, c, d: one transposing reduction (hadd)
    /// instead of four, the int8 kernel's per-pair overhead.
    static void reduce4_i(vi a, vi b, vi c, vi d, int32_t* out) {
        const __m256i abcd = _mm256_hadd_epi32(_mm256_hadd_epi32(a, b), _mm256_hadd_epi32(c, d));
        _mm_storeu_si128(reinterpret_cast<__m128i*>(out),
                         _mm_add_epi32(_mm256_castsi256_si128(abcd), _mm256_extracti128_si256(abcd, 1)));
    }
    /// Hamming distance of two `words`-word bit strings (simd/common.hpp).
    static uint32_t popcount_xor(const uint64_t* a, const uint64_t* b, size_t words) {
        return popcount_xor_words<haswell_t>(a, b, words);
    }
    static vf to_float(vi a) { return _mm256_cvtepi32_ps(a); }
    static vf mul(vf a, vf b) { return _mm256_mul_ps(a, b); }

    // Byte path (4-bit fast-scan): 32 bytes in two 16-byte lanes that vpshufb
    // indexes separately, so one register serves two 16-entry tables; u16 sums
    // with vpaddw (wrapping: callers keep every true sum below 65536).
    using vb = __m256i;
    static constexpr size_t byte_lanes = 2;
    static vb zero_b() { return _mm256_setzero_si256(); }
    static vb load_b(const uint8_t* p) { return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)); }
    /// The first `bytes` (< 32) bytes at p, zero above.
    static vb load_b_partial(const uint8_t* p, size_t bytes) {
        alignas(32) uint8_t buffer[32] = {};
        std::memcpy(buffer, p, bytes);
        return load_b(buffer);
    }
    static vb lookup16(vb table, vb index) { return _mm256_shuffle_epi8(table, index); }
    static vb low_nibbles(vb v) { return _mm256_and_si256(v, _mm256_set1_epi8(0x0f)); }
    static vb high_nibbles(vb v) { return _mm256_and_si256(_mm256_srli_epi16(v, 4), _mm256_set1_epi8(0x0f)); }
    static vb add_u16(vb a, vb b) { return _mm256_add_epi16(a, b); }
    static vb sub_u16(vb a, vb b) { return _mm256_sub_epi16(a, b); }
    static vb shr8_u16(vb a) { return _mm256_srli_epi16(a, 8); }
    static vb shl8_u16(vb a) { return _mm256_slli_epi16(a, 8); }
    /// out[i] = sum over the lanes of u16 word i (8 words, wrapping).
    static void sum_lanes_u16(vb a, uint16_t* out) {
        __m128i s = _mm_add_epi16(_mm256_castsi256_si128(a), _mm256_extracti128_si256(a, 1));
        _mm_storeu_si128(reinterpret_cast<__m128i*>(out), s);
    }
    /// Bit i set where word i of the 8 u16 at p is >= bar (vpmaxuw + vpcmpeqw + vpmovmskb).
    static uint32_t ge_mask8_u16(const uint16_t* p, uint16_t bar) {
        const __m128i v = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
        const __m128i ge = _mm_cmpeq_epi16(_mm_max_epu16(v, _mm_set1_epi16(short(bar))), v);
        return uint32_t(_mm_movemask_epi8(_mm_packs_epi16(ge, _mm_setzero_si128()))) & 0xffu;
    }
};

}  // namespace simd
}  // namespace flatcoat
