// Portable baseline: an 8-lane "vector" of plain floats. No intrinsics; the
// compiler may vectorise it with the baseline ISA (SSE2 on x86-64).
// Accumulation: eight independent float32 partial sums, reduced pairwise.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>  // std::memcpy

#include "simd/common.hpp"

namespace flatcoat {
namespace simd {

struct scalar_t {
    static constexpr size_t width = 8;
    static constexpr size_t registers = 16;  // as for AVX2: the compiler vectorises with the baseline ISA
    struct vf {
        float v[width];
    };

    static float half_to_float(uint16_t h) {
        // IEEE 754 binary16 -> binary32, exact for every input (subnormals, inf, NaN).
        uint32_t sign = uint32_t(h & 0x8000u) << 16;
        uint32_t exponent = (h >> 10) & 0x1fu;
        uint32_t mantissa = h & 0x3ffu;
        uint32_t bits;
        if (exponent == 0x1f) {
            bits = sign | 0x7f800000u | (mantissa << 13);
        } else if (exponent != 0) {
            bits = sign | ((exponent + 112u) << 23) | (mantissa << 13);
        } else if (mantissa == 0) {
            bits = sign;
        } else {  // subnormal half: normalise
            exponent = 113;
            while ((mantissa & 0x400u) == 0) {
                mantissa <<= 1;
                --exponent;
            }
            bits = sign | (exponent << 23) | ((mantissa & 0x3ffu) << 13);
        }
        float f;
        std::memcpy(&f, &bits, sizeof f);
        return f;
    }

    static vf zero() { return set1(0.0f); }
    static vf set1(float x) {
        vf r;
        for (size_t i = 0; i < width; ++i) r.v[i] = x;
        return r;
    }
    static vf load(const float* p) {
        vf r;
        for (size_t i = 0; i < width; ++i) r.v[i] = p[i];
        return r;
    }
    static vf load(const uint16_t* p) {
        vf r;
        for (size_t i = 0; i < width; ++i) r.v[i] = half_to_float(p[i]);
        return r;
    }
    static vf load(const uint8_t* p) {
        vf r;
        for (size_t i = 0; i < width; ++i) r.v[i] = float(p[i]);
        return r;
    }
    static vf load(const bf16_t* p) {  // bfloat16: its bits are a float32's high half
        vf r;
        for (size_t i = 0; i < width; ++i) {
            const uint32_t bits = uint32_t(p[i].bits) << 16;
            std::memcpy(&r.v[i], &bits, sizeof bits);
        }
        return r;
    }
    static void store(float* p, vf a) {
        for (size_t i = 0; i < width; ++i) p[i] = a.v[i];
    }
    static vf fma(vf a, vf b, vf acc) {
        // Separate multiply and add: without -mfma a fused call would go through libm.
        for (size_t i = 0; i < width; ++i) acc.v[i] += a.v[i] * b.v[i];
        return acc;
    }
    static vf add(vf a, vf b) {
        for (size_t i = 0; i < width; ++i) a.v[i] += b.v[i];
        return a;
    }
    static vf max(vf a, vf b) {
        for (size_t i = 0; i < width; ++i) a.v[i] = a.v[i] > b.v[i] ? a.v[i] : b.v[i];
        return a;
    }
    static float reduce_add(vf a) {
        float s0 = (a.v[0] + a.v[4]) + (a.v[2] + a.v[6]);
        float s1 = (a.v[1] + a.v[5]) + (a.v[3] + a.v[7]);
        return s0 + s1;
    }
    static void reduce4(vf a, vf b, vf c, vf d, float* out) {
        out[0] = reduce_add(a);
        out[1] = reduce_add(b);
        out[2] = reduce_add(c);
        out[3] = reduce_add(d);
    }

    // Integer path (int8 MaxSim): 8 int32 lanes, each holding 4 bytes of a code vector.
    struct vi {
        int32_t v[width];
    };
    static vi zero_i() {
        vi r;
        for (size_t i = 0; i < width; ++i) r.v[i] = 0;
        return r;
    }
    static vi load_i(const void* p) {
        vi r;
        std::memcpy(r.v, p, sizeof r.v);
        return r;
    }
    static vi set1_u32(const uint8_t* p) {
        vi r;
        for (size_t i = 0; i < width; ++i) std::memcpy(&r.v[i], p, 4);
        return r;
    }
    /// acc[l] += sum over k < 4 of u8(u[4l + k]) * s8(s[4l + k]); exact integer arithmetic.
    static vi dpbusd(vi acc, vi u, vi s) {
        for (size_t i = 0; i < width; ++i) {
            uint8_t ub[4];
            int8_t sb[4];
            std::memcpy(ub, &u.v[i], 4);
            std::memcpy(sb, &s.v[i], 4);
            for (size_t k = 0; k < 4; ++k) acc.v[i] += int32_t(ub[k]) * int32_t(sb[k]);
        }
        return acc;
    }

    // Exact int8 dot products (dense int8 storage: u8 codes x s8 query codes):
    // 8 bytes per step, widened to int32 lanes.
    using vw = vi;
    static constexpr size_t u8s8_step = width;
    static vw load_u8s8_row(const uint8_t* p) {
        vw r;
        for (size_t i = 0; i < width; ++i) r.v[i] = p[i];
        return r;
    }
    static vw load_u8s8_query(const int8_t* p) {
        vw r;
        for (size_t i = 0; i < width; ++i) r.v[i] = p[i];
        return r;
    }
    static vi dot_u8s8(vi acc, vw row, vw query) {
        for (size_t i = 0; i < width; ++i) acc.v[i] += row.v[i] * query.v[i];
        return acc;
    }
    static int32_t reduce_add_i(vi a) {
        int32_t s = 0;
        for (size_t i = 0; i < width; ++i) s += a.v[i];
        return s;
    }
    static void reduce4_i(vi a, vi b, vi c, vi d, int32_t* out) {
        out[0] = reduce_add_i(a);
        out[1] = reduce_add_i(b);
        out[2] = reduce_add_i(c);
        out[3] = reduce_add_i(d);
    }
    /// Hamming distance of two `words`-word bit strings (simd/common.hpp).
    static uint32_t popcount_xor(const uint64_t* a, const uint64_t* b, size_t words) {
        return popcount_xor_words<scalar_t>(a, b, words);
    }
    static vf to_float(vi a) {
        vf r;
        for (size_t i = 0; i < width; ++i) r.v[i] = float(a.v[i]);
        return r;
    }
    static vf mul(vf a, vf b) {
        for (size_t i = 0; i < width; ++i) a.v[i] *= b.v[i];
        return a;
    }

    // Byte path (4-bit fast-scan): one 16-byte "register" of plain bytes, one
    // 16-entry table; u16 words are pairs of bytes, little-endian, wrapping.
    struct vb {
        uint8_t v[16];
    };
    static constexpr size_t byte_lanes = 1;
    static vb zero_b() { return vb{}; }
    static vb load_b(const uint8_t* p) {
        vb r;
        std::memcpy(r.v, p, 16);
        return r;
    }
    static vb load_b_partial(const uint8_t* p, size_t bytes) {
        vb r{};
        std::memcpy(r.v, p, bytes);
        return r;
    }
    static vb lookup16(vb table, vb index) {
        vb r;
        for (size_t i = 0; i < 16; ++i) r.v[i] = (index.v[i] & 0x80) ? 0 : table.v[index.v[i] & 0x0f];
        return r;
    }
    static vb low_nibbles(vb a) {
        for (size_t i = 0; i < 16; ++i) a.v[i] &= 0x0f;
        return a;
    }
    static vb high_nibbles(vb a) {
        for (size_t i = 0; i < 16; ++i) a.v[i] = uint8_t(a.v[i] >> 4);
        return a;
    }
    static uint16_t word(const vb& a, size_t i) { return uint16_t(a.v[2 * i] | (a.v[2 * i + 1] << 8)); }
    static void set_word(vb& a, size_t i, uint16_t w) {
        a.v[2 * i] = uint8_t(w & 0xff);
        a.v[2 * i + 1] = uint8_t(w >> 8);
    }
    static vb add_u16(vb a, vb b) {
        for (size_t i = 0; i < 8; ++i) set_word(a, i, uint16_t(word(a, i) + word(b, i)));
        return a;
    }
    static vb sub_u16(vb a, vb b) {
        for (size_t i = 0; i < 8; ++i) set_word(a, i, uint16_t(word(a, i) - word(b, i)));
        return a;
    }
    static vb shr8_u16(vb a) {
        for (size_t i = 0; i < 8; ++i) set_word(a, i, uint16_t(word(a, i) >> 8));
        return a;
    }
    static vb shl8_u16(vb a) {
        for (size_t i = 0; i < 8; ++i) set_word(a, i, uint16_t(word(a, i) << 8));
        return a;
    }
    static void sum_lanes_u16(vb a, uint16_t* out) {
        for (size_t i = 0; i < 8; ++i) out[i] = word(a, i);
    }
    /// Bit i set where word i of the 8 u16 at p is >= bar.
    static uint32_t ge_mask8_u16(const uint16_t* p, uint16_t bar) {
        uint32_t mask = 0;
        for (size_t i = 0; i < 8; ++i) mask |= uint32_t(p[i] >= bar) << i;
        return mask;
    }
};

}  // namespace simd
}  // namespace flatcoat
