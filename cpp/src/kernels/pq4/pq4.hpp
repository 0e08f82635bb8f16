// The 4-bit fast-scan kernel, written once over the SIMD byte type and
// instantiated per ISA by the files beside this one.
//
// One register holds S::byte_lanes consecutive sub-quantizers of a block
// (16 bytes each: vectors 0..15 in the low nibbles, 16..31 in the high ones)
// and, loaded from the same offset of the u8 table, their 16-entry look-up
// tables. The in-lane byte shuffle (pshufb / vpshufb / tbl) looks up all of
// them at once. The looked-up bytes are summed as u16 words (FAISS's trick):
// a word holds vector 2i's byte plus 256 x vector 2i+1's, so adding whole
// words accumulates the even vectors (mod 2^16) while a second accumulator
// adds the words shifted right by 8 (the odd vectors); at the end
// even = words - (odd << 8). Four accumulators (even/odd x low/high nibbles),
// no widening in the loop, no saturation: the caller's table scale keeps every
// true sum below 65536, so every ISA produces the same exact integers. The
// sums are stored in position order, without the interleave back to vector
// order, and compared with the caller's bar in the same pass.
#pragma once

#include <cstddef>
#include <cstdint>

#include "flatcoat/pq.hpp"

namespace flatcoat {
namespace kernels {

template <class S>
void pq4_accumulate(const uint8_t* codes, size_t n_blocks, size_t m, const uint8_t* lut, uint16_t bar,
                    uint16_t* out, uint32_t* masks) {
    using vb = typename S::vb;
    constexpr size_t L = S::byte_lanes;
    const size_t block_bytes = pq4_block_bytes(m);
    const size_t full = m - m % L;
    for (size_t b = 0; b < n_blocks; ++b) {
        const uint8_t* c = codes + b * block_bytes;
        vb even_lo = S::zero_b(), odd_lo = S::zero_b(), even_hi = S::zero_b(), odd_hi = S::zero_b();
        auto step = [&](vb code, vb table) {
            const vb lo = S::lookup16(table, S::low_nibbles(code));
            const vb hi = S::lookup16(table, S::high_nibbles(code));
            even_lo = S::add_u16(even_lo, lo);
            odd_lo = S::add_u16(odd_lo, S::shr8_u16(lo));
            even_hi = S::add_u16(even_hi, hi);
            odd_hi = S::add_u16(odd_hi, S::shr8_u16(hi));
        };
        size_t s = 0;
        for (; s < full; s += L) step(S::load_b(c + 16 * s), S::load_b(lut + 16 * s));
        if (s < m) step(S::load_b_partial(c + 16 * s, 16 * (m - s)), S::load_b_partial(lut + 16 * s, 16 * (m - s)));
        even_lo = S::sub_u16(even_lo, S::shl8_u16(odd_lo));
        even_hi = S::sub_u16(even_hi, S::shl8_u16(odd_hi));
        // Position order (pq4_position_vector): even then odd vectors of each half.
        uint16_t* o = out + b * pq4_block_k;
        S::sum_lanes_u16(even_lo, o);
        S::sum_lanes_u16(odd_lo, o + 8);
        S::sum_lanes_u16(even_hi, o + 16);
        S::sum_lanes_u16(odd_hi, o + 24);
        masks[b] = S::ge_mask8_u16(o, bar) | S::ge_mask8_u16(o + 8, bar) << 8 | S::ge_mask8_u16(o + 16, bar) << 16 |
                   S::ge_mask8_u16(o + 24, bar) << 24;
    }
}

/// Scores of QR queries against one panel of 2 x S::width centroids stored
/// transposed (panel[t * P + j]): 2 * QR accumulators, each query element
/// broadcast once, two panel loads and 2 * QR FMAs per dimension. Every score
/// sums its dimensions in order, whatever QR.
template <class S, size_t QR>
inline void panel_micro(const float* q, const float* panel, size_t dim, float* out, size_t ldo) {
    using vf = typename S::vf;
    constexpr size_t W = S::width, P = 2 * W;
    vf acc[QR][2];
    for (size_t a = 0; a < QR; ++a) acc[a][0] = acc[a][1] = S::zero();
    for (size_t t = 0; t < dim; ++t) {
        const vf b0 = S::load(panel + t * P), b1 = S::load(panel + t * P + W);
        for (size_t a = 0; a < QR; ++a) {
            const vf qa = S::set1(q[a * dim + t]);
            acc[a][0] = S::fma(qa, b0, acc[a][0]);
            acc[a][1] = S::fma(qa, b1, acc[a][1]);
        }
    }
    for (size_t a = 0; a < QR; ++a) {
        S::store(out + a * ldo, acc[a][0]);
        S::store(out + a * ldo + W, acc[a][1]);
    }
}

template <class S>
void score_panel(const float* q, size_t nq, const float* panel, size_t dim, float* out, size_t ldo) {
    constexpr size_t QR = S::registers >= 32 ? 8 : 4;  // 2 * QR accumulators + 3 registers in flight
    size_t i = 0;
    for (; i + QR <= nq; i += QR) panel_micro<S, QR>(q + i * dim, panel, dim, out + i * ldo, ldo);
    for (; i < nq; ++i) panel_micro<S, 1>(q + i * dim, panel, dim, out + i * ldo, ldo);
}

template <class S>
pq4_kernels_t make_pq4_kernels() {
    pq4_kernels_t table;
    table.accumulate = &pq4_accumulate<S>;
    table.score_panel = &score_panel<S>;
    table.panel_width = 2 * S::width;
    return table;
}

}  // namespace kernels
}  // namespace flatcoat
