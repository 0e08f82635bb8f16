// The dense scoring kernels, written once and instantiated per ISA by the
// files beside this one. `S` is a SIMD type from cpp/src/simd/.
//
// Register blocking: a micro-kernel scores QB queries x XB rows at once with
// QB * XB independent accumulators, so each loaded row is reused QB times and
// each query vector XB times. Every (query, row) pair owns one accumulator
// that walks the dimensions in the same order in every micro-kernel shape,
// so a score does not depend on how the batch was blocked.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>  // std::memcpy

#include "flatcoat/dense_kernels.hpp"
#include "simd/common.hpp"




















namespace flatcoat {
namespace kernels {

template <class S, size_t QB, size_t XB, class element_t>
inline void dot_micro(const float* q, const element_t* x, size_t dim, float* out, size_t ldo) {
    using vf = typename S::vf;
    vf acc[QB][XB];
    for (size_t a = 0; a < QB; ++a)
        for (size_t b = 0; b < XB; ++b) acc[a][b] = S::zero();
    size_t d = 0;
    for (; d + S::width <= dim; d += S::width) {
        vf xv[XB];
        for (size_t b = 0; b < XB; ++b) xv[b] = S::load(x + b * dim + d);
        for (size_t a = 0; a < QB; ++a) {
            vf qv = S::load(q + a * dim + d);
            for (size_t b = 0; b < XB; ++b) acc[a][b] = S::fma(qv, xv[b], acc[a][b]);
        }
    }
    if (d < dim) {
        size_t rest = dim - d;
        vf xv[XB];
        for (size_t b = 0; b < XB; ++b) xv[b] = simd::load_partial<S>(x + b * dim + d, rest);
        for (size_t a = 0; a < QB; ++a) {
            vf qv = simd::load_partial<S>(q + a * dim + d, rest);
            for (size_t b = 0; b < XB; ++b) acc[a][b] = S::fma(qv, xv[b], acc[a][b]);
        }
    }
    // Four pairs at once where XB allows; S::reduce4 gives reduce_add's sums bit for bit.
    for (size_t a = 0; a < QB; ++a) {
        size_t b = 0;
        for (; b + 4 <= XB; b += 4) S::reduce4(acc[a][b], acc[a][b + 1], acc[a][b + 2], acc[a][b + 3], out + a * ldo + b);
        for (; b < XB; ++b) out[a * ldo + b] = S::reduce_add(acc[a][b]);
    }
}

/// Batches use 4 queries x 3 rows (12 accumulators + 3 rows fit the 16 ymm
/// registers of AVX2); a single query uses 1 x 4 to keep several loads in flight.
/// Queries are taken in groups of 12 that stay in L1 while rows stream past,
/// so each row is fetched from L2 once per 12 queries rather than once per 4.
template <class S, class element_t>
void dot_block(const float* q, size_t nq, const element_t* x, size_t nx, size_t dim, float* out,
               size_t ldo) {
    constexpr bool wide = S::registers >= 32;
    constexpr size_t QB = 4, XB = wide ? 4 : 3, XB1 = wide ? 8 : 4, QL1 = 12;
    size_t full = nq - nq % QB;
    for (size_t i0 = 0; i0 < full; i0 += QL1) {
        const size_t i1 = i0 + QL1 < full ? i0 + QL1 : full;
        size_t j = 0;
        for (; j + XB <= nx; j += XB)
            for (size_t i = i0; i < i1; i += QB)
                dot_micro<S, QB, XB>(q + i * dim, x + j * dim, dim, out + i * ldo + j, ldo);
        for (; j < nx; ++j)
            for (size_t i = i0; i < i1; i += QB)
                dot_micro<S, QB, 1>(q + i * dim, x + j * dim, dim, out + i * ldo + j, ldo);
    }
    for (size_t i = full; i < nq; ++i) {
        size_t j = 0;
        for (; j + XB1 <= nx; j += XB1)
            dot_micro<S, 1, XB1>(q + i * dim, x + j * dim, dim, out + i * ldo + j, ldo);
        for (; j < nx; ++j) dot_micro<S, 1, 1>(q + i * dim, x + j * dim, dim, out + i * ldo + j, ldo);
    }
}

/// Exact int8 dot products: QB s8 queries x XB u8 rows, one int32
/// accumulator per pair, S::u8s8_step bytes per step (vpdpbusd on icelake,
/// int16 vpmaddwd elsewhere); the last dim % step bytes in scalar code. Integer
/// sums are exact, so the result is the same on every ISA and blocking.
/// Prefetches the `bytes` starting `ahead` bytes past p, a line at a time: the
/// single-query scans read rows once, from DRAM, and the hardware prefetchers
/// alone leave them below the read bandwidth. An address past the end of the
/// array is harmless to prefetch (it never faults); it is formed as an integer.
inline void prefetch_ahead(const void* p, size_t ahead, size_t bytes) {
    const uintptr_t start = reinterpret_cast<uintptr_t>(p) + ahead;
    for (size_t b = 0; b < bytes; b += 64) __builtin_prefetch(reinterpret_cast<const void*>(start + b));
}

template <class S, size_t QB, size_t XB>
inline void dot_u8s8_micro(const int8_t* q, const uint8_t* x, size_t dim, int32_t* out, size_t ldo) {
    using vi = typename S::vi;
    using vw = typename S::vw;
    vi acc[QB][XB];
    for (size_t a = 0; a < QB; ++a)
        for (size_t b = 0; b < XB; ++b) acc[a][b] = S::zero_i();
    size_t d = 0;
    for (; d + S::u8s8_step <= dim; d += S::u8s8_step) {
        vw xv[XB];
        for (size_t b = 0; b < XB; ++b) xv[b] = S::load_u8s8_row(x + b * dim + d);
        for (size_t a = 0; a < QB; ++a) {
            const vw qv = S::load_u8s8_query(q + a * dim + d);
            for (size_t b = 0; b < XB; ++b) acc[a][b] = S::dot_u8s8(acc[a][b], xv[b], qv);
        }
    }
    // Four rows' sums at once where XB allows (S::reduce4_i); the reduction
    // costs about as much as the products at 384 dimensions otherwise.
    for (size_t a = 0; a < QB; ++a) {
        int32_t* row = out + a * ldo;
        size_t b = 0;
        for (; b + 4 <= XB; b += 4) S::reduce4_i(acc[a][b], acc[a][b + 1], acc[a][b + 2], acc[a][b + 3], row + b);
        for (; b < XB; ++b) row[b] = S::reduce_add_i(acc[a][b]);
        for (b = 0; d < dim && b < XB; ++b)
            for (size_t t = d; t < dim; ++t) row[b] += int32_t(x[b * dim + t]) * int32_t(q[a * dim + t]);
    }
}

/// Batches: 4 queries x 4 rows with 32 vector registers, 2 x 4 with 16; a
/// single query 1 x 8, to keep loads in flight. Measured on Zen 4 (icelake
/// level, 384 dimensions, rows in L2, one thread, back to back): 4 x 4 about
/// 140 GOP/s, 5 x 4 the same, 3 x 8 and 6 x 4 (spilling) 95-150.
template <class S>
void dot_u8s8_block(const int8_t* q, size_t nq, const uint8_t* x, size_t nx, size_t dim, int32_t* out,
                    size_t ldo) {
    constexpr bool wide = S::registers >= 32;
    constexpr size_t QB = wide ? 4 : 2, XB = 4, XB1 = 8, QL1 = 4 * QB;
    const size_t full = nq - nq % QB;
    for (size_t i0 = 0; i0 < full; i0 += QL1) {
        const size_t i1 = i0 + QL1 < full ? i0 + QL1 : full;
        size_t j = 0;
        for (; j + XB <= nx; j += XB)
            for (size_t i = i0; i < i1; i += QB)
                dot_u8s8_micro<S, QB, XB>(q + i * dim, x + j * dim, dim, out + i * ldo + j, ldo);
        for (; j < nx; ++j)
            for (size_t i = i0; i < i1; i += QB)
                dot_u8s8_micro<S, QB, 1>(q + i * dim, x + j * dim, dim, out + i * ldo + j, ldo);
    }
    for (size_t i = full; i < nq; ++i) {
        size_t j = 0;
        for (; j + XB1 <= nx; j += XB1) {
            if (nq == 1) prefetch_ahead(x + j * dim, XB1 * dim, XB1 * dim);  // the next group
            dot_u8s8_micro<S, 1, XB1>(q + i * dim, x + j * dim, dim, out + i * ldo + j, ldo);
        }
        for (; j < nx; ++j) dot_u8s8_micro<S, 1, 1>(q + i * dim, x + j * dim, dim, out + i * ldo + j, ldo);
    }
}

/// The element paths of the panel kernels: int8 (u8 rows x s8 queries, four
/// per 32-bit word, exact int32 sums by vpdpbusd) and bf16 (two per word,
/// float32 sums by vdpbf16ps). Only levels with those instructions use them.
template <class S>
struct u8s8_panel_path_t {
    using x_t = uint8_t;
    using out_t = int32_t;
    using acc_t = typename S::vi;
    static constexpr size_t lane = 4;  // elements per 32-bit word
    static acc_t zero() { return S::zero_i(); }
    static acc_t mac(acc_t acc, typename S::vi x, typename S::vi q) { return S::dpbusd(acc, x, q); }
    static void store(int32_t* out, acc_t acc) { S::store_i(out, acc); }
};

template <class S>
struct bf16_panel_path_t {
    using x_t = bf16_t;
    using out_t = float;
    using acc_t = typename S::vf;
    static constexpr size_t lane = 2;
    static acc_t zero() { return S::zero(); }
    static acc_t mac(acc_t acc, typename S::vi x, typename S::vi q) { return S::dpbf16(acc, x, q); }
    static void store(float* out, acc_t acc) { S::store(out, acc); }
};

/// J rows x QV query panels: per step one broadcast of each row's next 32-bit
/// word (4 int8 or 2 bf16 elements) is multiplied into QV panel registers, so
/// every accumulator lane ends as a finished dot product and nothing is
/// reduced (the dot form's reduction costs about as much as its products at
/// 384 dimensions). Stored rows by queries.
template <class S, class P, size_t QV, size_t J>
inline void panel_micro(const void* panels, size_t panel_bytes, const typename P::x_t* x, size_t dim,
                        typename P::out_t* out, size_t ldo) {
    using vi = typename S::vi;
    using acc_t = typename P::acc_t;
    const unsigned char* bytes = static_cast<const unsigned char*>(panels);
    acc_t acc[QV][J];
    for (size_t v = 0; v < QV; ++v)
        for (size_t j = 0; j < J; ++j) acc[v][j] = P::zero();
    const size_t full = dim / P::lane;
    for (size_t s = 0; s < full; ++s) {
        vi xb[J];
        for (size_t j = 0; j < J; ++j) xb[j] = S::set1_u32(reinterpret_cast<const uint8_t*>(x + j * dim + P::lane * s));
        for (size_t v = 0; v < QV; ++v) {
            const vi qv = S::load_i(bytes + v * panel_bytes + s * 4 * S::width);
            for (size_t j = 0; j < J; ++j) acc[v][j] = P::mac(acc[v][j], xb[j], qv);
        }
    }
    if (full * P::lane < dim) {  // the last elements of a word, without reading past the row
        const size_t rest = (dim - full * P::lane) * sizeof(typename P::x_t);
        vi xb[J];
        for (size_t j = 0; j < J; ++j) {
            uint8_t word[4] = {0, 0, 0, 0};  // the panels' padding is zero: any value works
            std::memcpy(word, x + j * dim + full * P::lane, rest);
            xb[j] = S::set1_u32(word);
        }
        for (size_t v = 0; v < QV; ++v) {
            const vi qv = S::load_i(bytes + v * panel_bytes + full * 4 * S::width);
            for (size_t j = 0; j < J; ++j) acc[v][j] = P::mac(acc[v][j], xb[j], qv);
        }
    }
    for (size_t j = 0; j < J; ++j)
        for (size_t v = 0; v < QV; ++v) P::store(out + j * ldo + v * S::width, acc[v][j]);
}

/// Panels in groups of 4 (their 4 x 64 bytes per step stay in L1 while the
/// tile's rows stream from L2), rows 5 at a time (20 accumulators, 5
/// broadcasts: no spill with 32 registers).
template <class S, class P>
void panels_block(const void* panels, size_t n_panels, const typename P::x_t* x, size_t nx, size_t dim,
                  typename P::out_t* out, size_t ldo) {
    constexpr size_t QV = 4, J = 5;
    const size_t panel_bytes = (dim + P::lane - 1) / P::lane * 4 * S::width;
    for (size_t v = 0; v < n_panels; v += QV) {
        const void* pv = static_cast<const unsigned char*>(panels) + v * panel_bytes;
        typename P::out_t* ov = out + v * S::width;
        const size_t left = n_panels - v;
        for (size_t j = 0; j < nx;) {
            const size_t step = j + J <= nx ? J : 1;
            const typename P::x_t* xj = x + j * dim;
            if (step == J) {
                if (left >= QV) panel_micro<S, P, QV, J>(pv, panel_bytes, xj, dim, ov + j * ldo, ldo);
                else if (left == 3) panel_micro<S, P, 3, J>(pv, panel_bytes, xj, dim, ov + j * ldo, ldo);
                else if (left == 2) panel_micro<S, P, 2, J>(pv, panel_bytes, xj, dim, ov + j * ldo, ldo);
                else panel_micro<S, P, 1, J>(pv, panel_bytes, xj, dim, ov + j * ldo, ldo);
            } else {
                if (left >= QV) panel_micro<S, P, QV, 1>(pv, panel_bytes, xj, dim, ov + j * ldo, ldo);
                else if (left == 3) panel_micro<S, P, 3, 1>(pv, panel_bytes, xj, dim, ov + j * ldo, ldo);
                else if (left == 2) panel_micro<S, P, 2, 1>(pv, panel_bytes, xj, dim, ov + j * ldo, ldo);
                else panel_micro<S, P, 1, 1>(pv, panel_bytes, xj, dim, ov + j * ldo, ldo);
            }
            j += step;
        }
    }
}

template <class S>
void dot_u8s8_panels_block(const int8_t* panels, size_t n_panels, const uint8_t* x, size_t nx, size_t dim,
                           int32_t* out, size_t ldo) {
    panels_block<S, u8s8_panel_path_t<S>>(panels, n_panels, x, nx, dim, out, ldo);
}

template <class S>
void dot_bf16_panels_block(const bf16_t* panels, size_t n_panels, const bf16_t* x, size_t nx, size_t dim,
                           float* out, size_t ldo) {
    panels_block<S, bf16_panel_path_t<S>>(panels, n_panels, x, nx, dim, out, ldo);
}

/// bfloat16 queries x bfloat16 rows, QB x XB float32 accumulators, 32
/// elements per step by S::dpbf16 (vdpbf16ps), the row tail by masked loads;
/// four pairs reduced at once. For levels with AVX512_BF16 only (S::dpbf16).
template <class S, size_t QB, size_t XB>
inline void dot_bf16_pairs_micro(const bf16_t* q, const bf16_t* x, size_t dim, float* out, size_t ldo) {
    using vf = typename S::vf;
    using vbh = typename S::vbh;
    vf acc[QB][XB];
    for (size_t a = 0; a < QB; ++a)
        for (size_t b = 0; b < XB; ++b) acc[a][b] = S::zero();
    size_t d = 0;
    for (; d + S::bf16_step <= dim; d += S::bf16_step) {
        vbh xv[XB];
        for (size_t b = 0; b < XB; ++b) xv[b] = S::load_bf16(x + b * dim + d);
        for (size_t a = 0; a < QB; ++a) {
            const vbh qv = S::load_bf16(q + a * dim + d);
            for (size_t b = 0; b < XB; ++b) acc[a][b] = S::dpbf16(acc[a][b], xv[b], qv);
        }
    }
    if (d < dim) {
        vbh xv[XB];
        for (size_t b = 0; b < XB; ++b) xv[b] = S::load_bf16_partial(x + b * dim + d, dim - d);
        for (size_t a = 0; a < QB; ++a) {
            const vbh qv = S::load_bf16_partial(q + a * dim + d, dim - d);
            for (size_t b = 0; b < XB; ++b) acc[a][b] = S::dpbf16(acc[a][b], xv[b], qv);
        }
    }
    for (size_t a = 0; a < QB; ++a) {
        size_t b = 0;
        for (; b + 4 <= XB; b += 4) S::reduce4(acc[a][b], acc[a][b + 1], acc[a][b + 2], acc[a][b + 3], out + a * ldo + b);
        for (; b < XB; ++b) out[a * ldo + b] = S::reduce_add(acc[a][b]);
    }
}

/// 4 queries x 4 rows for batches, 1 x 8 for the rest (32 registers).
template <class S>
void dot_bf16_pairs_block(const bf16_t* q, size_t nq, const bf16_t* x, size_t nx, size_t dim, float* out,
                          size_t ldo) {
    constexpr size_t QB = 4, XB = 4, XB1 = 8, QL1 = 16;
    const size_t full = nq - nq % QB;
    for (size_t i0 = 0; i0 < full; i0 += QL1) {
        const size_t i1 = i0 + QL1 < full ? i0 + QL1 : full;
        size_t j = 0;
        for (; j + XB <= nx; j += XB)
            for (size_t i = i0; i < i1; i += QB)
                dot_bf16_pairs_micro<S, QB, XB>(q + i * dim, x + j * dim, dim, out + i * ldo + j, ldo);
        for (; j < nx; ++j)
            for (size_t i = i0; i < i1; i += QB)
                dot_bf16_pairs_micro<S, QB, 1>(q + i * dim, x + j * dim, dim, out + i * ldo + j, ldo);
    }
    for (size_t i = full; i < nq; ++i) {
        size_t j = 0;
        for (; j + XB1 <= nx; j += XB1) {
            if (nq == 1) prefetch_ahead(x + j * dim, XB1 * dim * sizeof(bf16_t), XB1 * dim * sizeof(bf16_t));
            dot_bf16_pairs_micro<S, 1, XB1>(q + i * dim, x + j * dim, dim, out + i * ldo + j, ldo);
        }
        for (; j < nx; ++j) dot_bf16_pairs_micro<S, 1, 1>(q + i * dim, x + j * dim, dim, out + i * ldo + j, ldo);
    }
}

/// Hamming distances between sign-bit codes. The per-ISA difference is the
/// popcount: S::popcount_xor (popcnt per word, or vpopcntq on 8 words at once
/// on icelake). Common code lengths get a compile-time length (WORDS > 0) so
/// the loop unrolls; 4 rows at a time keep several popcounts in flight.
template <class S, size_t WORDS>
inline uint32_t hamming_words(const uint64_t* a, const uint64_t* b, size_t words) {
    return S::popcount_xor(a, b, WORDS ? WORDS : words);
}

template <class S, size_t WORDS>
void hamming_rows(const uint64_t* q, size_t nq, const uint64_t* x, size_t nx, size_t words, uint32_t* out,
                  size_t ldo) {
    for (size_t i = 0; i < nq; ++i) {
        const uint64_t* qi = q + i * words;
        uint32_t* row = out + i * ldo;
        size_t j = 0;
        for (; j + 4 <= nx; j += 4) {
            if (nq == 1) prefetch_ahead(x + j * words, 64 * words * sizeof(uint64_t), 4 * words * sizeof(uint64_t));
            row[j] = hamming_words<S, WORDS>(qi, x + j * words, words);
            row[j + 1] = hamming_words<S, WORDS>(qi, x + (j + 1) * words, words);
            row[j + 2] = hamming_words<S, WORDS>(qi, x + (j + 2) * words, words);
            row[j + 3] = hamming_words<S, WORDS>(qi, x + (j + 3) * words, words);
        }
        for (; j < nx; ++j) row[j] = hamming_words<S, WORDS>(qi, x + j * words, words);
    }
}

template <class S>
void hamming_block(const uint64_t* q, size_t nq, const uint64_t* x, size_t nx, size_t words, uint32_t* out,
                   size_t ldo) {
    switch (words) {  // 64, 128, 256, 384, 512, 768, 1024 dimensions
        case 1: return hamming_rows<S, 1>(q, nq, x, nx, words, out, ldo);
        case 2: return hamming_rows<S, 2>(q, nq, x, nx, words, out, ldo);
        case 4: return hamming_rows<S, 4>(q, nq, x, nx, words, out, ldo);
        case 6: return hamming_rows<S, 6>(q, nq, x, nx, words, out, ldo);
        case 8: return hamming_rows<S, 8>(q, nq, x, nx, words, out, ldo);
        case 12: return hamming_rows<S, 12>(q, nq, x, nx, words, out, ldo);
        case 16: return hamming_rows<S, 16>(q, nq, x, nx, words, out, ldo);
        default: return hamming_rows<S, 0>(q, nq, x, nx, words, out, ldo);
    }
}

template <class S>
dense_kernels_t make_dense_kernels() {
    dense_kernels_t table;
    table.dot_f32 = &dot_block<S, float>;
    table.dot_f16 = &dot_block<S, uint16_t>;
    table.dot_bf16 = &dot_block<S, bf16_t>;
    table.dot_u8 = &dot_block<S, uint8_t>;
    table.dot_u8s8 = &dot_u8s8_block<S>;
    table.hamming = &hamming_block<S>;
    table.widen_f16 = &simd::widen<S, uint16_t>;
    table.widen_bf16 = &simd::widen<S, bf16_t>;
    table.widen_u8 = &simd::widen<S, uint8_t>;
    return table;
}

/// The kernels of levels with an exact vpdpbusd (VNNI): int8 query panels.
template <class S>
void add_vnni_kernels(dense_kernels_t& table) {
    table.dot_u8s8_panels = &dot_u8s8_panels_block<S>;
    table.panel_queries = S::width;
}

}  // namespace kernels
}  // namespace flatcoat
