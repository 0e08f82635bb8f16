// The MaxSim kernel, written once and instantiated per ISA (the files beside
// this one) and per element path: float32 (f32 storage, and f16 after
// widening) and int8 x int8 (int8 storage with quantized queries).
// `S` is a SIMD type from cpp/src/simd/, `P` an element path below.
//
// Register blocking: a micro-kernel runs QV query panels (QV * width query
// tokens) against J document tokens with QV * J accumulators. Per step it
// broadcasts one element (or 4 int8 codes) of each of the J document tokens and
// multiplies it into QV query registers: each document element is loaded once
// per QV panels, each query register is reused J times. After the last step
// every accumulator lane holds a finished dot product, so the J tokens are
// folded into the QV running maxima by vertical max. The maxima start at -inf
// (set by the caller): a document has no padding, and nothing else can win.
// Every dot product walks the dimensions in order 0..dim-1 whatever the
// blocking, so a score never depends on the batch or the thread.
#pragma once

#include <cstddef>
#include <cstdint>

#include "flatcoat/maxsim_kernels.hpp"
#include "simd/common.hpp"

namespace flatcoat {
namespace kernels {

constexpr size_t prefetch_groups_k = 2;  // measured best of 1, 2, 4, 8 (f32 and int8, 180-token documents)

/// float32 queries x float32 document rows: one dimension per step, FMA.
template <class S>
struct f32_path_t {
    using q_t = float;
    using x_t = float;
    using acc_t = typename S::vf;
    static constexpr size_t lane = 1;  // dimensions per step
    static constexpr size_t reserved = 1;  // registers besides accumulators and broadcasts: a query step
    static constexpr size_t max_tokens = 6;  // see maxsim_tokens_per_step

    static acc_t init(const int32_t*) { return S::zero(); }
    static acc_t broadcast(const float* x) { return S::set1(*x); }
    static acc_t broadcast_partial(const float* x, size_t) { return S::set1(*x); }  // lane 1: never partial
    static acc_t load_q(const float* q) { return S::load(q); }
    static acc_t mac(acc_t acc, acc_t x, acc_t q) { return S::fma(q, x, acc); }
    static typename S::vf finish(acc_t acc, const float*, size_t) { return acc; }
};

/// int8 queries (codes in [-64, 64]) x uint8 document codes (c + 128): four
/// dimensions per step, u8 x s8 products summed into int32 lanes (dpbusd).
/// The accumulators start at the query's bias -128 * sum(q), so after the
/// last step a lane holds exactly <q, c - 128>; it is then scaled by the
/// document token's scale before the max (scales differ per token).
template <class S>
struct u8_path_t {
    using q_t = int8_t;
    using x_t = uint8_t;
    using acc_t = typename S::vi;
    static constexpr size_t lane = 4;
    static constexpr size_t reserved = 3;  // a query step, the int16 pairs, the ones of vpmaddwd
    static constexpr size_t max_tokens = 4;  // see maxsim_tokens_per_step

    static acc_t init(const int32_t* bias) { return S::load_i(bias); }
    static acc_t broadcast(const uint8_t* x) { return S::set1_u32(x); }
    static acc_t broadcast_partial(const uint8_t* x, size_t n) {
        uint8_t word[4] = {0, 0, 0, 0};  // the query's padding dimensions are zero: any value works
        for (size_t i = 0; i < n; ++i) word[i] = x[i];
        return S::set1_u32(word);
    }
    static acc_t load_q(const int8_t* q) { return S::load_i(q); }
    static acc_t mac(acc_t acc, acc_t x, acc_t q) { return S::dpbusd(acc, x, q); }
    static typename S::vf finish(acc_t acc, const float* x_scale, size_t j) {
        return S::mul(S::to_float(acc), S::set1(x_scale[j]));
    }
};

/// Document tokens per micro-kernel step for QV panels: the QV * J accumulators
/// and J broadcasts must fit the registers left after `reserved`, or the
/// compiler spills. Measured on AVX2 (16 registers), f32: 4 x 3 runs at 85-95%
/// of the FMA peak from L2 while 3 x 4 and 2 x 6 (spilling) run at 45%; int8:
/// 4 x 2 runs 1.8x faster than the f32 kernel, 4 x 3 (spilling) 1.5x.
/// At most 6: with 32 registers and 32 query tokens (2 zmm panels) the fit
/// gave 2 x 10, every register taken and 10 rows read as interleaved streams;
/// 2 x 6 keeps 12 accumulators, enough chains for two FMA pipes of latency 4.
/// Measured on Zen 4 (skylake level, f32 rows from memory, 3,000 documents of
/// 180 tokens): 47.2 ms at 2 x 10, 41.6 ms at 2 x 6 (haswell's 4 x 3: 40.6).
/// int8 stops at 4 (P::max_tokens): its chain is a 1-cycle add, so 2 x 4
/// accumulators are plenty, and at 2 x 6 skylake's vpmaddubsw + vpmaddwd
/// temporaries crowd the registers (Zen 4, the bench's 3,000 documents, 21
/// rounds: skylake/haswell 1.04-1.05 at 2 x 6, 0.97 at 2 x 4).
constexpr size_t maxsim_tokens_per_step(size_t registers, size_t reserved, size_t QV, size_t max_tokens) {
    size_t j = (registers - reserved) / (QV + 1);
    return j < 1 ? 1 : (j > max_tokens ? max_tokens : j);
}

/// QV panels x J document tokens; m[v] is the running max of panel v.
/// `panel` is the element stride between panels, `steps` the steps per panel.
template <class S, class P, size_t QV, size_t J>
inline void maxsim_micro(const typename P::q_t* q, size_t panel, const int32_t* bias,
                         const typename P::x_t* x, const float* x_scale, size_t j0, size_t dim,
                         typename S::vf* m) {
    using acc_t = typename P::acc_t;
    constexpr size_t L = S::width * P::lane;  // query elements per step of one panel
    acc_t acc[QV][J];
    for (size_t v = 0; v < QV; ++v) {
        acc_t start = P::init(bias ? bias + v * S::width : nullptr);
        for (size_t j = 0; j < J; ++j) acc[v][j] = start;
    }
    const typename P::x_t* xj = x + j0 * dim;
    const size_t full = dim / P::lane;
    // The J rows are J interleaved streams that the hardware prefetchers follow
    // poorly (measured: f32 from DRAM at 45% of the FMA peak without this, 80%
    // with it). Each cache line of this group is matched by a prefetch of the
    // same line prefetch_groups_k full groups ahead; past the end it is harmless.
    // The distance is in full groups even when this is a shorter last group
    // (maxsim_rest), so the prefetched lines run on without a gap across
    // blocks and documents: at 2 x its own size, a last group of R tokens
    // left R rows of the next document never prefetched (measured on Zen 4,
    // skylake level, f32 rows from memory: 4% slower than haswell with the
    // gap, level without it).
    constexpr size_t line_steps = 64 / (P::lane * sizeof(typename P::x_t));
    constexpr size_t full_group = maxsim_tokens_per_step(S::registers, P::reserved, QV, P::max_tokens);
    // Addresses as integers: a pointer past the end of the array would be undefined.
    const uintptr_t ahead = reinterpret_cast<uintptr_t>(xj) + prefetch_groups_k * full_group * dim * sizeof(*xj);
    for (size_t s0 = 0; s0 < full; s0 += line_steps) {
        for (size_t j = 0; j < J; ++j)
            __builtin_prefetch(reinterpret_cast<const void*>(ahead + (j * dim + s0 * P::lane) * sizeof(*xj)));
        const size_t s1 = s0 + line_steps < full ? s0 + line_steps : full;
        for (size_t s = s0; s < s1; ++s) {
            acc_t xb[J];
            for (size_t j = 0; j < J; ++j) xb[j] = P::broadcast(xj + j * dim + s * P::lane);
            for (size_t v = 0; v < QV; ++v) {
                acc_t qv = P::load_q(q + v * panel + s * L);
                for (size_t j = 0; j < J; ++j) acc[v][j] = P::mac(acc[v][j], xb[j], qv);
            }
        }
    }
    if (full * P::lane < dim) {  // int8 only: the last 1..3 dimensions, without reading past the row
        const size_t rest = dim - full * P::lane;
        acc_t xb[J];
        for (size_t j = 0; j < J; ++j) xb[j] = P::broadcast_partial(xj + j * dim + full * P::lane, rest);
        for (size_t v = 0; v < QV; ++v) {
            acc_t qv = P::load_q(q + v * panel + full * L);
            for (size_t j = 0; j < J; ++j) acc[v][j] = P::mac(acc[v][j], xb[j], qv);
        }
    }
    for (size_t v = 0; v < QV; ++v)
        for (size_t j = 0; j < J; ++j) m[v] = S::max(m[v], P::finish(acc[v][j], x_scale, j0 + j));
}

/// The last `rest` (< R + 1) tokens from j0 as one micro-kernel of exactly that many.
/// One by one they would each run only QV accumulator chains, too few to cover
/// the FMA latency (2 on AVX-512 with 32 query tokens). Measured on Zen 4
/// (skylake level, f32, 3,000 documents, 2 x 10 blocks): 179-token documents
/// took 58.4 ms against 50.1 for 180 one by one, 47.9 against 47.2 in one block.
template <class S, class P, size_t QV, size_t R>
inline void maxsim_rest(const typename P::q_t* q, size_t panel, const int32_t* bias, const typename P::x_t* x,
                        const float* x_scale, size_t j0, size_t rest, size_t dim, typename S::vf* m) {
    if constexpr (R > 0) {
        if (rest == R) return maxsim_micro<S, P, QV, R>(q, panel, bias, x, x_scale, j0, dim, m);
        maxsim_rest<S, P, QV, R - 1>(q, panel, bias, x, x_scale, j0, rest, dim, m);
    }
}

/// All n_tok document tokens against QV panels: J tokens at a time, then the rest in one block.
template <class S, class P, size_t QV>
inline void maxsim_panels(const typename P::q_t* q, size_t panel, const int32_t* bias, const typename P::x_t* x,
                          const float* x_scale, size_t n_tok, size_t dim, float* maxima) {
    constexpr size_t J = maxsim_tokens_per_step(S::registers, P::reserved, QV, P::max_tokens);
    typename S::vf m[QV];
    for (size_t v = 0; v < QV; ++v) m[v] = S::load(maxima + v * S::width);
    size_t j = 0;
    for (; j + J <= n_tok; j += J) maxsim_micro<S, P, QV, J>(q, panel, bias, x, x_scale, j, dim, m);
    maxsim_rest<S, P, QV, J - 1>(q, panel, bias, x, x_scale, j, n_tok - j, dim, m);
    for (size_t v = 0; v < QV; ++v) S::store(maxima + v * S::width, m[v]);
}

/// Up to 4 panels per pass over the document tokens (32 query tokens on AVX2,
/// 64 on AVX-512): longer queries re-read the tokens, from L1/L2.
template <class S, class P>
void maxsim_max(const typename P::q_t* q, size_t n_panels, const int32_t* bias, const typename P::x_t* x,
                const float* x_scale, size_t n_tok, size_t dim, float* maxima) {
    constexpr size_t QV = 4;
    const size_t panel = (dim + P::lane - 1) / P::lane * S::width * P::lane;
    for (size_t v = 0; v < n_panels; v += QV) {
        const typename P::q_t* qv = q + v * panel;
        const int32_t* bv = bias ? bias + v * S::width : nullptr;
        float* mv = maxima + v * S::width;
        switch (n_panels - v) {
            case 1: maxsim_panels<S, P, 1>(qv, panel, bv, x, x_scale, n_tok, dim, mv); break;
            case 2: maxsim_panels<S, P, 2>(qv, panel, bv, x, x_scale, n_tok, dim, mv); break;
            case 3: maxsim_panels<S, P, 3>(qv, panel, bv, x, x_scale, n_tok, dim, mv); break;
            default: maxsim_panels<S, P, QV>(qv, panel, bv, x, x_scale, n_tok, dim, mv); break;
        }
    }
}

template <class S>
void maxsim_max_f32(const float* q, size_t n_panels, const float* x, size_t n_tok, size_t dim, float* maxima) {
    maxsim_max<S, f32_path_t<S>>(q, n_panels, nullptr, x, nullptr, n_tok, dim, maxima);
}

template <class S>
void maxsim_max_u8(const int8_t* q, size_t n_panels, const int32_t* q_bias, const uint8_t* x,
                   const float* x_scale, size_t n_tok, size_t dim, float* maxima) {
    maxsim_max<S, u8_path_t<S>>(q, n_panels, q_bias, x, x_scale, n_tok, dim, maxima);
}

template <class S>
maxsim_kernels_t make_maxsim_kernels() {
    maxsim_kernels_t table;
    table.width = S::width;
    table.max_f32 = &maxsim_max_f32<S>;
    table.max_u8 = &maxsim_max_u8<S>;
    table.widen_f16 = &simd::widen<S, uint16_t>;
    return table;
}

}  // namespace kernels
}  // namespace flatcoat
