// AVX-512 with VNNI, VPOPCNTDQ, VBMI, VBMI2 and BITALG ("icelake"; also Zen 4
// and later): the skylake level plus two instructions its kernels lean on.
//  - vpdpbusd: u8 x s8 products summed in fours straight into int32 lanes,
//    one instruction for skylake's vpmaddubsw + vpmaddwd + vpaddd and with no
//    int16 saturation (so results equal skylake's wherever those are exact);
//  - vpopcntq: popcount of eight 64-bit words per instruction.
#pragma once

#include <immintrin.h>

#include <cstddef>
#include <cstdint>

#include "simd/skylake.hpp"

namespace flatcoat {
namespace simd {

struct icelake_t : skylake_t {
    /// acc[l] += sum over k < 4 of u8(u[4l + k]) * s8(s[4l + k]), exact (vpdpbusd).
    static vi dpbusd(vi acc, vi u, vi s) {
        __asm__("vpdpbusd %2, %1, %0" : "+v"(acc) : "v"(u), "v"(s));  // in place: see dot_u8s8
        return acc;
    }


    /// Exact int8 dot products on raw bytes, 64 per step: one vpdpbusd (u8 x s8,
    /// summed in fours into int32 without saturation).
    using vw = __m512i;
    static constexpr size_t u8s8_step = 64;
    static vw load_u8s8_row(const uint8_t* p) { return _mm512_loadu_si512(p); }
    static vw load_u8s8_query(const int8_t* p) { return _mm512_loadu_si512(p); }
    /// In place by inline asm: with the intrinsic, GCC 12 copies each
    /// accumulator out and back around the destructive vpdpbusd (two extra
    /// moves per product instruction in the 4 x 4 kernel).
    static vi dot_u8s8(vi acc, vw row, vw query) {
        __asm__("vpdpbusd %2, %1, %0" : "+v"(acc) : "v"(row), "v"(query));
        return acc;
    }
    /// popcount(a[w] xor b[w]) summed over w < words: eight words per vpopcntq,
    /// the tail with a zero-masked load.
    /// Below eight words (384-d codes are six) a masked load, vpopcntq and the
    /// 8-lane reduction cost more than scalar popcnt per word (measured: the
    /// 64-query binary scan 342 ms against 290 on skylake), so those take popcnt.
    static uint32_t popcount_xor(const uint64_t* a, const uint64_t* b, size_t words) {
        if (words < 8) return popcount_xor_words<icelake_t>(a, b, words);
        __m512i acc = _mm512_setzero_si512();
        size_t w = 0;
        for (; w + 8 <= words; w += 8)
            acc = _mm512_add_epi64(acc, _mm512_popcnt_epi64(_mm512_xor_si512(_mm512_loadu_si512(a + w),
                                                                              _mm512_loadu_si512(b + w))));
        if (w < words) {
            const __mmask8 m = __mmask8((1u << (words - w)) - 1);
            acc = _mm512_add_epi64(acc, _mm512_popcnt_epi64(_mm512_xor_si512(_mm512_maskz_loadu_epi64(m, a + w),
                                                                              _mm512_maskz_loadu_epi64(m, b + w))));
        }
        return uint32_t(_mm512_reduce_add_epi64(acc));
    }
};

}  // namespace simd
}  // namespace flatcoat
