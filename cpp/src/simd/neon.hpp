// Advanced SIMD on arm64 ("neon"): 4 float32 lanes in a q register.
// f16 rows widen with fcvtl, u8 codes through uxtl + scvtf; vfmaq_f32 accumulates.
#pragma once

#include <arm_neon.h>

#include <cstddef>
#include <cstdint>
#include <cstring>  // std::memcpy

#include "simd/common.hpp"

namespace flatcoat {
namespace simd {

struct neon_t {
    static constexpr size_t width = 4;
    static constexpr size_t registers = 32;  // architectural vector registers, for register blocking
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
    /// bfloat16 widens exactly: its bits become a float32's high half.
    static vf load(const bf16_t* p) { return vreinterpretq_f32_u32(vshll_n_u16(vld1_u16(&p->bits), 16)); }
    static void store(float* p, vf a) { vst1q_f32(p, a); }
    static vf fma(vf a, vf b, vf acc) { return vfmaq_f32(acc, a, b); }
    static vf add(vf a, vf b) { return vaddq_f32(a, b); }
    static vf max(vf a, vf b) { return vmaxq_f32(a, b); }
    static float reduce_add(vf a) { return vaddvq_f32(a); }
    static void reduce4(vf a, vf b, vf c, vf d, float* out) {
        out[0] = reduce_add(a);
        out[1] = reduce_add(b);
        out[2] = reduce_add(c);
        out[3] = reduce_add(d);
    }

    // Integer path (int8 MaxSim): 4 int32 lanes, each holding 4 bytes of a code vector.
    // Baseline arm64 has no u8 x s8 dot instruction: widen to int16, vmull to int32,
    // then two pairwise adds (vpaddq) sum each lane's 4 products. Exact.
    using vi = int32x4_t;
    static vi zero_i() { return vdupq_n_s32(0); }
    static vi load_i(const void* p) { return vreinterpretq_s32_u8(vld1q_u8(static_cast<const uint8_t*>(p))); }
    static vi set1_u32(const uint8_t* p) {
        int32_t word;
        std::memcpy(&word, p, 4);
        return vdupq_n_s32(word);
    }
    static vi dpbusd(vi acc, vi u, vi s) {
        uint8x16_t ub = vreinterpretq_u8_s32(u);
        int8x16_t sb = vreinterpretq_s8_s32(s);
        int16x8_t u_lo = vreinterpretq_s16_u16(vmovl_u8(vget_low_u8(ub)));
        int16x8_t u_hi = vreinterpretq_s16_u16(vmovl_u8(vget_high_u8(ub)));
        int16x8_t s_lo = vmovl_s8(vget_low_s8(sb));
        int16x8_t s_hi = vmovl_s8(vget_high_s8(sb));
        int32x4_t p0 = vmull_s16(vget_low_s16(u_lo), vget_low_s16(s_lo));    // bytes 0..3: lane 0
        int32x4_t p1 = vmull_s16(vget_high_s16(u_lo), vget_high_s16(s_lo));  // bytes 4..7: lane 1
        int32x4_t p2 = vmull_s16(vget_low_s16(u_hi), vget_low_s16(s_hi));    // lane 2
        int32x4_t p3 = vmull_s16(vget_high_s16(u_hi), vget_high_s16(s_hi));  // lane 3
        return vaddq_s32(acc, vpaddq_s32(vpaddq_s32(p0, p1), vpaddq_s32(p2, p3)));
    }

    // Exact int8 dot products (dense int8 storage: u8 codes x s8 query codes):
    // 8 bytes per step widened to int16, vmlal into int32.
    using vw = int16x8_t;
    static constexpr size_t u8s8_step = 8;
    static vw load_u8s8_row(const uint8_t* p) { return vreinterpretq_s16_u16(vmovl_u8(vld1_u8(p))); }
    static vw load_u8s8_query(const int8_t* p) { return vmovl_s8(vld1_s8(p)); }
    static vi dot_u8s8(vi acc, vw row, vw query) {
        return vmlal_high_s16(vmlal_s16(acc, vget_low_s16(row), vget_low_s16(query)), row, query);
    }
    static int32_t reduce_add_i(vi a) { return vaddvq_s32(a); }
    static void reduce4_i(vi a, vi b, vi c, vi d, int32_t* out) {
        vst1q_s32(out, vpaddq_s32(vpaddq_s32(a, b), vpaddq_s32(c, d)));
    }
    /// Hamming distance of two `words`-word bit strings (simd/common.hpp).
    static uint32_t popcount_xor(const uint64_t* a, const uint64_t* b, size_t words) {
        return popcount_xor_words<neon_t>(a, b, words);
    }
    static vf to_float(vi a) { return vcvtq_f32_s32(a); }
    static vf mul(vf a, vf b) { return vmulq_f32(a, b); }

    // Byte path (4-bit fast-scan): one 16-byte register, one 16-entry table
    // looked up with vqtbl1q_u8; u16 sums with vaddq_u16 (wrapping: callers keep
    // every true sum below 65536).
    using vb = uint8x16_t;
    static constexpr size_t byte_lanes = 1;
    static vb zero_b() { return vdupq_n_u8(0); }
    static vb load_b(const uint8_t* p) { return vld1q_u8(p); }
    static vb load_b_partial(const uint8_t* p, size_t bytes) {
        uint8_t buffer[16] = {};
        std::memcpy(buffer, p, bytes);
        return vld1q_u8(buffer);
    }
    static vb lookup16(vb table, vb index) { return vqtbl1q_u8(table, index); }
    static vb low_nibbles(vb v) { return vandq_u8(v, vdupq_n_u8(0x0f)); }
    static vb high_nibbles(vb v) { return vshrq_n_u8(v, 4); }
    static vb add_u16(vb a, vb b) {
        return vreinterpretq_u8_u16(vaddq_u16(vreinterpretq_u16_u8(a), vreinterpretq_u16_u8(b)));
    }
    static vb sub_u16(vb a, vb b) {
        return vreinterpretq_u8_u16(vsubq_u16(vreinterpretq_u16_u8(a), vreinterpretq_u16_u8(b)));
    }
    static vb shr8_u16(vb a) { return vreinterpretq_u8_u16(vshrq_n_u16(vreinterpretq_u16_u8(a), 8)); }
    static vb shl8_u16(vb a) { return vreinterpretq_u8_u16(vshlq_n_u16(vreinterpretq_u16_u8(a), 8)); }
    static void sum_lanes_u16(vb a, uint16_t* out) { vst1q_u16(out, vreinterpretq_u16_u8(a)); }
    /// Bit i set where word i of the 8 u16 at p is >= bar.
    static uint32_t ge_mask8_u16(const uint16_t* p, uint16_t bar) {
        uint32_t mask = 0;
        for (size_t i = 0; i < 8; ++i) mask |= uint32_t(p[i] >= bar) << i;
        return mask;
    }
};

}  // namespace simd
}  // namespace flatcoat
