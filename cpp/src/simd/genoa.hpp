// AVX-512 with BF16 ("genoa": Zen 4 and later, Sapphire Rapids, Cooper Lake's
// BF16 on top of icelake's VNNI and VPOPCNTDQ): the icelake level plus
//  - vdpbf16ps: pairs of bfloat16 multiplied and summed into float32 lanes,
//    32 products per instruction where vfmadd231ps does 16.
#pragma once

#include <immintrin.h>

#include <cstddef>
#include <cstdint>

#include "simd/icelake.hpp"

namespace flatcoat {
namespace simd {

struct genoa_t : icelake_t {
    /// 32 bfloat16 per step, as raw bits (vdpbf16ps reads them in pairs).
    using vbh = __m512i;
    static constexpr size_t bf16_step = 32;
    static vbh load_bf16(const bf16_t* p) { return _mm512_loadu_si512(p); }
    static vbh set1_bf16(uint16_t bits) { return _mm512_set1_epi16(short(bits)); }
    /// acc[l] += a[2l] * b[2l] + a[2l + 1] * b[2l + 1], bfloat16 products in float32 (vdpbf16ps).
    /// In place by inline asm, as icelake_t::dot_u8s8 (GCC copies the
    /// accumulator around the intrinsic's destructive form).
    static vf dpbf16(vf acc, vbh a, vbh b) {
        __asm__("vdpbf16ps %2, %1, %0" : "+v"(acc) : "v"(a), "v"(b));
        return acc;
    }
};

}  // namespace simd
}  // namespace flatcoat
