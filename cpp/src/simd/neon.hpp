// Advanced SIMD on arm64 ("neon"): 4 float32 lanes in a q register.
// f16 rows widen with fcvtl, u8/i8 codes through uxtl/sxtl + scvtf; vfmaq_f32 accumulates.
#pragma once

#include <arm_neon.h>

#include <cstddef>
#include <cstdint>
#include <cstring>  // std::memcpy

namespace flatcoat {
namespace simd {

struct neon_t {
    static constexpr size_t width = 4;
    using vf = float32x4_t;

    static vf zero() { return vdupq_n_f32(0.0f); }
    static vf set1(float x) { return vdupq_n_f32(x); }
    static vf load(const float* p) { return vld1q_f32(p); }
    static vf load(const uint16_t* p) { return vcvt_f32_f16(vreinterpret_f16_u16(vld1_u16(p))); }
    static vf load(const uint8_t* p) {
        uint32_t word;
        std::memcpy(&word, p, 4);
        uint16x8_t wide = vmovl_u8(vreinterpret_u8_u32(vdup_n_u32(word)));
        return vcvtq_f32_u32(vmovl_u16(vget_low_u16(wide)));
    }
    static vf load(const int8_t* p) {
        uint32_t word;
        std::memcpy(&word, p, 4);
        int16x8_t wide = vmovl_s8(vreinterpret_s8_u32(vdup_n_u32(word)));
        return vcvtq_f32_s32(vmovl_s16(vget_low_s16(wide)));
    }
    static void store(float* p, vf a) { vst1q_f32(p, a); }
    static vf fma(vf a, vf b, vf acc) { return vfmaq_f32(acc, a, b); }
    static vf add(vf a, vf b) { return vaddq_f32(a, b); }
    static vf max(vf a, vf b) { return vmaxq_f32(a, b); }
    static float reduce_add(vf a) { return vaddvq_f32(a); }
    static float reduce_max(vf a) { return vmaxvq_f32(a); }
};

}  // namespace simd
}  // namespace flatcoat
