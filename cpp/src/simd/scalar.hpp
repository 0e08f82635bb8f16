// Portable baseline: an 8-lane "vector" of plain floats. No intrinsics; the
// compiler may vectorise it with the baseline ISA (SSE2 on x86-64).
// Accumulation: eight independent float32 partial sums, reduced pairwise.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>  // std::memcpy

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
    static vf to_float(vi a) {
        vf r;
        for (size_t i = 0; i < width; ++i) r.v[i] = float(a.v[i]);
        return r;
    }
    static vf mul(vf a, vf b) {
        for (size_t i = 0; i < width; ++i) a.v[i] *= b.v[i];
        return a;
    }
};

}  // namespace simd
}  // namespace flatcoat
