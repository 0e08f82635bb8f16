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

/// Prefetches the `bytes` starting `ahead` bytes past p, a line at a time: the
/// single-query scans read rows once, from DRAM, and the hardware prefetchers
/// alone leave them below the read bandwidth. An address past the end of the
/// array is harmless to prefetch (it never faults); it is formed as an integer.
/// Templated on the SIMD type like every helper (one instantiation per ISA file).
template <class S>
inline void prefetch_ahead(const void* p, size_t ahead, size_t bytes) {
    const uintptr_t start = reinterpret_cast<uintptr_t>(p) + ahead;
    for (size_t b = 0; b < bytes; b += 64) __builtin_prefetch(reinterpret_cast<const void*>(start + b));
}

/// The element paths of the dot-form kernels: what a step loads, multiplies
/// and adds, how an accumulator is reduced, and the blocking (queries QB x
/// rows XB for batches, 1 x XB1 for a single query, QL1 queries kept in L1
/// while a tile's rows stream past).
///  - float32 queries x f32/f16/bf16/u8 rows widened to float32, FMA; 4 x 3
///    with 16 vector registers (12 accumulators and 3 rows), 4 x 4 with 32;
template <class S, class element_t>
struct float_dot_path_t {
    using q_t = float;
    using x_t = element_t;
    using out_t = float;
    using acc_t = typename S::vf;
    using row_t = typename S::vf;
    using query_t = typename S::vf;
    static constexpr size_t step = S::width;
    static constexpr bool wide = S::registers >= 32;
    // A single query's 16-bit rows (f16, bf16) come 4 at a time at every width, as on haswell: with
    // their software prefetch a group of 8 kept twice the bytes in flight, and `flatcoat bench --isa all`
    // (Zen 4, 200k x 384 f16 from memory) found skylake 1.09x haswell in 2 runs of 2; with 4, 0.95x in 2 of 2.
    static constexpr size_t QB = 4, XB = wide ? 4 : 3, XB1 = wide && sizeof(element_t) != 2 ? 8 : 4, QL1 = 12;
    // Measured (Zen 4, 1M x 384, one query): f32 66-70 ms without, 73-76 with.
    static constexpr bool prefetch = sizeof(element_t) < sizeof(float);
    static acc_t zero() { return S::zero(); }
    static row_t load_row(const x_t* p) { return S::load(p); }
    static query_t load_query(const q_t* p) { return S::load(p); }
    static acc_t mac(acc_t acc, row_t x, query_t q) { return S::fma(q, x, acc); }
    static void reduce4(acc_t a, acc_t b, acc_t c, acc_t d, out_t* out) { S::reduce4(a, b, c, d, out); }
    static out_t reduce(acc_t a) { return S::reduce_add(a); }
};

///  - s8 queries x u8 rows, exact int32 (vpdpbusd on icelake, int16 vpmaddwd
///    below; integer sums, so every ISA and blocking gives the same result).
///    Measured on Zen 4 (icelake, 384 dimensions, rows in L2, one thread):
///    4 x 4 about 140 GOP/s, 5 x 4 the same, 3 x 8 and 6 x 4 (spilling) 95-150;
template <class S>
struct u8s8_dot_path_t {
    using q_t = int8_t;
    using x_t = uint8_t;
    using out_t = int32_t;
    using acc_t = typename S::vi;
    using row_t = typename S::vw;
    using query_t = typename S::vw;
    static constexpr size_t step = S::u8s8_step;
    static constexpr bool wide = S::registers >= 32;
    static constexpr size_t QB = wide ? 4 : 2, XB = 4, XB1 = 8, QL1 = 4 * QB;
    static constexpr bool prefetch = true;  // 20.9 -> 16.1 ms (Zen 4, 1M x 384, one query)
    static acc_t zero() { return S::zero_i(); }
    static row_t load_row(const x_t* p) { return S::load_u8s8_row(p); }
    static query_t load_query(const q_t* p) { return S::load_u8s8_query(p); }
    static acc_t mac(acc_t acc, row_t x, query_t q) { return S::dot_u8s8(acc, x, q); }
    static void reduce4(acc_t a, acc_t b, acc_t c, acc_t d, out_t* out) { S::reduce4_i(a, b, c, d, out); }
    static out_t reduce(acc_t a) { return S::reduce_add_i(a); }
};

///  - bf16 queries x bf16 rows in pairs into float32 (vdpbf16ps; levels with
///    AVX512_BF16 only).
template <class S>
struct bf16_pairs_dot_path_t {
    using q_t = bf16_t;
    using x_t = bf16_t;
    using out_t = float;
    using acc_t = typename S::vf;
    using row_t = typename S::vbh;
    using query_t = typename S::vbh;
    static constexpr size_t step = S::bf16_step;
    static constexpr size_t QB = 4, XB = 4, XB1 = 8, QL1 = 16;
    static constexpr bool prefetch = true;  // 41.8 -> 38.7 ms (Zen 4, 1M x 384, one query)
    static acc_t zero() { return S::zero(); }
    static row_t load_row(const x_t* p) { return S::load_bf16(p); }
    static query_t load_query(const q_t* p) { return S::load_bf16(p); }
    static acc_t mac(acc_t acc, row_t x, query_t q) { return S::dpbf16(acc, x, q); }
    static void reduce4(acc_t a, acc_t b, acc_t c, acc_t d, out_t* out) { S::reduce4(a, b, c, d, out); }
    static out_t reduce(acc_t a) { return S::reduce_add(a); }
};

/// The first n < P::step elements at p, zero above (row tails); zero products
/// add nothing, so the sums are those of the elements alone.
template <class P, class element_t, class loaded_t>
inline loaded_t load_tail(const element_t* p, size_t n, loaded_t (*load)(const element_t*)) {
    element_t buffer[P::step] = {};
    for (size_t i = 0; i < n; ++i) buffer[i] = p[i];
    return load(buffer);
}

/// QB queries x XB rows with one accumulator per pair, P::step elements per
/// step, the row tail through a zero-padded copy, four pairs reduced at once
/// (for float paths S::reduce4 adds the same lanes in the same order as
/// S::reduce_add). Every pair walks the dimensions in one order whatever the
/// shape, so a score does not depend on how the batch was blocked.
template <class S, class P, size_t QB, size_t XB>
inline void dot_micro(const typename P::q_t* q, const typename P::x_t* x, size_t dim, typename P::out_t* out,
                      size_t ldo) {
    typename P::acc_t acc[QB][XB];
    for (size_t a = 0; a < QB; ++a)
        for (size_t b = 0; b < XB; ++b) acc[a][b] = P::zero();
    size_t d = 0;
    for (; d + P::step <= dim; d += P::step) {
        typename P::row_t xv[XB];
        for (size_t b = 0; b < XB; ++b) xv[b] = P::load_row(x + b * dim + d);
        for (size_t a = 0; a < QB; ++a) {
            const typename P::query_t qv = P::load_query(q + a * dim + d);
            for (size_t b = 0; b < XB; ++b) acc[a][b] = P::mac(acc[a][b], xv[b], qv);
        }
    }
    if (d < dim) {
        const size_t rest = dim - d;
        typename P::row_t xv[XB];
        for (size_t b = 0; b < XB; ++b) xv[b] = load_tail<P>(x + b * dim + d, rest, &P::load_row);
        for (size_t a = 0; a < QB; ++a) {
            const typename P::query_t qv = load_tail<P>(q + a * dim + d, rest, &P::load_query);
            for (size_t b = 0; b < XB; ++b) acc[a][b] = P::mac(acc[a][b], xv[b], qv);
        }
    }
    for (size_t a = 0; a < QB; ++a) {
        size_t b = 0;
        for (; b + 4 <= XB; b += 4) P::reduce4(acc[a][b], acc[a][b + 1], acc[a][b + 2], acc[a][b + 3], out + a * ldo + b);
        for (; b < XB; ++b) out[a * ldo + b] = P::reduce(acc[a][b]);
    }
}

/// out[i * ldo + j] for nq queries x nx rows: batches in P::QB x P::XB blocks,
/// queries in groups of P::QL1 that stay in L1 while rows stream past (each
/// row is fetched from L2 once per group), a single query 1 x P::XB1 with the
/// next rows prefetched where the path asks for it (P::prefetch).
template <class S, class P>
void dot_block(const typename P::q_t* q, size_t nq, const typename P::x_t* x, size_t nx, size_t dim,
               typename P::out_t* out, size_t ldo) {
    constexpr size_t QB = P::QB, XB = P::XB, XB1 = P::XB1, QL1 = P::QL1;
    const size_t full = nq - nq % QB;
    for (size_t i0 = 0; i0 < full; i0 += QL1) {
        const size_t i1 = i0 + QL1 < full ? i0 + QL1 : full;
        size_t j = 0;
        for (; j + XB <= nx; j += XB)
            for (size_t i = i0; i < i1; i += QB)
                dot_micro<S, P, QB, XB>(q + i * dim, x + j * dim, dim, out + i * ldo + j, ldo);
        for (; j < nx; ++j)
            for (size_t i = i0; i < i1; i += QB)
                dot_micro<S, P, QB, 1>(q + i * dim, x + j * dim, dim, out + i * ldo + j, ldo);
    }
    for (size_t i = full; i < nq; ++i) {
        size_t j = 0;
        for (; j + XB1 <= nx; j += XB1) {
            if (P::prefetch && nq == 1) {  // the next group of rows
                const size_t group = XB1 * dim * sizeof(typename P::x_t);
                prefetch_ahead<S>(x + j * dim, group, group);
            }
            dot_micro<S, P, 1, XB1>(q + i * dim, x + j * dim, dim, out + i * ldo + j, ldo);
        }
        for (; j < nx; ++j) dot_micro<S, P, 1, 1>(q + i * dim, x + j * dim, dim, out + i * ldo + j, ldo);
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
            if (nq == 1) prefetch_ahead<S>(x + j * words, 64 * words * sizeof(uint64_t), 4 * words * sizeof(uint64_t));
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
    table.dot_f32 = &dot_block<S, float_dot_path_t<S, float>>;
    table.dot_f16 = &dot_block<S, float_dot_path_t<S, uint16_t>>;
    table.dot_bf16 = &dot_block<S, float_dot_path_t<S, bf16_t>>;
    table.dot_u8 = &dot_block<S, float_dot_path_t<S, uint8_t>>;
    table.dot_u8s8 = &dot_block<S, u8s8_dot_path_t<S>>;
    table.hamming = &hamming_block<S>;
    table.widen_f16 = &simd::widen<S, uint16_t>;
    table.widen_bf16 = &simd::widen<S, bf16_t>;
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
