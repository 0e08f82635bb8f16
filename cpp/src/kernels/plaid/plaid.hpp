// The PLAID kernels, written once over a SIMD type from cpp/src/simd/ and
// instantiated per ISA by the files beside this one:
//
// - centroid_scores: query panels (maxsim_kernels.hpp's float layout: one
//   register = one dimension of `width` query tokens) times centroid rows,
//   register-blocked like the MaxSim micro-kernel (QV panels x J rows, the
//   same register budget, maxsim_tokens_per_step), but each finished dot
//   product is stored (centroid-major, out[r * Tp + t]) instead of maxed;
// - centroid_max: the running max over a document's tokens of their
//   centroids' score rows (vertical max, up to 4 panels held in registers);
// - decompress: centroid row plus, per code byte, the 8 / nbits decoded
//   residuals looked up in the byte table (plaid_byte_table), nbits a
//   compile-time constant of the inner loop; optionally each row rescaled to
//   unit norm (its squared norm summed in vector lanes, then the tail).
// Every dot product walks dimensions 0..dim-1 in order: a score never
// depends on the blocking, the batch or the thread.
#pragma once

#include <cmath>  // std::sqrt
#include <cstddef>
#include <cstdint>

#include "flatcoat/plaid.hpp"
#include "kernels/maxsim/maxsim.hpp"  // maxsim_tokens_per_step: the same register budget

namespace flatcoat {
namespace kernels {

/// QV panels x J rows from row r0; out[(r0 + j) * Tp + v * width + lane].
template <class S, size_t QV, size_t J>
inline void scores_micro(const float* q, size_t panel, const float* rows, size_t r0, size_t dim, float* out,
                         size_t Tp) {
    using vf = typename S::vf;
    vf acc[QV][J];
    for (size_t v = 0; v < QV; ++v)
        for (size_t j = 0; j < J; ++j) acc[v][j] = S::zero();
    const float* x = rows + r0 * dim;
    for (size_t d = 0; d < dim; ++d) {
        vf xb[J];
        for (size_t j = 0; j < J; ++j) xb[j] = S::set1(x[j * dim + d]);
        for (size_t v = 0; v < QV; ++v) {
            const vf qv = S::load(q + v * panel + d * S::width);
            for (size_t j = 0; j < J; ++j) acc[v][j] = S::fma(qv, xb[j], acc[v][j]);
        }
    }
    for (size_t j = 0; j < J; ++j)
        for (size_t v = 0; v < QV; ++v) S::store(out + (r0 + j) * Tp + v * S::width, acc[v][j]);
}

template <class S, size_t QV>
inline void scores_panels(const float* q, size_t panel, const float* rows, size_t n_rows, size_t dim, float* out,
                          size_t Tp) {
    constexpr size_t J = maxsim_tokens_per_step(S::registers, 1, QV, f32_path_t<S>::max_tokens);
    size_t r = 0;
    for (; r + J <= n_rows; r += J) scores_micro<S, QV, J>(q, panel, rows, r, dim, out, Tp);
    for (; r < n_rows; ++r) scores_micro<S, QV, 1>(q, panel, rows, r, dim, out, Tp);
}

template <class S>
void centroid_scores(const float* q, size_t n_panels, const float* rows, size_t n_rows, size_t dim, float* out) {
    const size_t panel = dim * S::width, Tp = n_panels * S::width;
    for (size_t v = 0; v < n_panels; v += 4) {
        const float* qv = q + v * panel;
        float* o = out + v * S::width;
        switch (n_panels - v) {
            case 1: scores_panels<S, 1>(qv, panel, rows, n_rows, dim, o, Tp); break;
            case 2: scores_panels<S, 2>(qv, panel, rows, n_rows, dim, o, Tp); break;
            case 3: scores_panels<S, 3>(qv, panel, rows, n_rows, dim, o, Tp); break;
            default: scores_panels<S, 4>(qv, panel, rows, n_rows, dim, o, Tp); break;
        }
    }
}

template <class S, size_t QV>
inline void max_panels(const float* s, size_t Tp, const int32_t* cids, size_t n, const uint8_t* keep, float* maxima) {
    using vf = typename S::vf;
    vf m[QV];
    for (size_t v = 0; v < QV; ++v) m[v] = S::load(maxima + v * S::width);
    for (size_t j = 0; j < n; ++j) {
        const size_t c = size_t(cids[j]);
        if (keep != nullptr && keep[c] == 0) continue;
        const float* row = s + c * Tp;
        for (size_t v = 0; v < QV; ++v) m[v] = S::max(m[v], S::load(row + v * S::width));
    }
    for (size_t v = 0; v < QV; ++v) S::store(maxima + v * S::width, m[v]);
}

template <class S>
void centroid_max(const float* s, size_t Tp, const int32_t* cids, size_t n, const uint8_t* keep, float* maxima) {
    const size_t n_panels = Tp / S::width;
    for (size_t v = 0; v < n_panels; v += 4) {
        const float* sv = s + v * S::width;
        float* mv = maxima + v * S::width;
        switch (n_panels - v) {
            case 1: max_panels<S, 1>(sv, Tp, cids, n, keep, mv); break;
            case 2: max_panels<S, 2>(sv, Tp, cids, n, keep, mv); break;
            case 3: max_panels<S, 3>(sv, Tp, cids, n, keep, mv); break;
            default: max_panels<S, 4>(sv, Tp, cids, n, keep, mv); break;
        }
    }
}

/// Each code byte looks up its PER_BYTE decoded residuals in the byte table (one 16-byte load for
/// 2 bits, 32 for 1 bit) and adds them to the centroid's; no per-dimension shifts or masks.
template <size_t NBITS>
inline void decompress_bits(const uint8_t* codes, const int32_t* cids, size_t n, const float* centroids,
                            const float* lut, size_t dim, float* out) {
    constexpr size_t per_byte = 8 / NBITS;
    const size_t bytes = (dim * NBITS + 7) / 8, full = dim / per_byte;
    for (size_t j = 0; j < n; ++j) {
        const float* c = centroids + size_t(cids[j]) * dim;
        const uint8_t* code = codes + j * bytes;
        float* o = out + j * dim;
        for (size_t b = 0; b < full; ++b) {
            const float* e = lut + (b * 256 + code[b]) * per_byte;
            for (size_t i = 0; i < per_byte; ++i) o[b * per_byte + i] = c[b * per_byte + i] + e[i];
        }
        if (full < bytes) {  // the last byte holds fewer than per_byte dimensions
            const float* e = lut + (full * 256 + code[full]) * per_byte;
            for (size_t d = full * per_byte; d < dim; ++d) o[d] = c[d] + e[d - full * per_byte];
        }
    }
}

/// Each of the n rows (dim floats) divided by its L2 norm; a zero row is left as it is.
template <class S>
inline void normalize_rows(float* out, size_t n, size_t dim) {
    using vf = typename S::vf;
    const size_t full = dim - dim % S::width;
    for (size_t j = 0; j < n; ++j) {
        float* o = out + j * dim;
        vf acc = S::zero();
        for (size_t d = 0; d < full; d += S::width) {
            const vf x = S::load(o + d);
            acc = S::fma(x, x, acc);
        }
        float squares = S::reduce_add(acc);
        for (size_t d = full; d < dim; ++d) squares += o[d] * o[d];
        if (!(squares > 0.0f)) continue;
        const float scale = 1.0f / std::sqrt(squares);
        for (size_t d = 0; d < dim; ++d) o[d] *= scale;
    }
}

template <class S>
void decompress(const uint8_t* codes, const int32_t* cids, size_t n, const float* centroids, const float* lut,
                size_t dim, size_t nbits, bool normalize, float* out) {
    switch (nbits) {
        case 1: decompress_bits<1>(codes, cids, n, centroids, lut, dim, out); break;
        case 2: decompress_bits<2>(codes, cids, n, centroids, lut, dim, out); break;
        default: decompress_bits<4>(codes, cids, n, centroids, lut, dim, out); break;
    }
    if (normalize) normalize_rows<S>(out, n, dim);
}

template <class S>
plaid_kernels_t make_plaid_kernels() {
    plaid_kernels_t table;
    table.width = S::width;
    table.centroid_scores = &centroid_scores<S>;
    table.centroid_max = &centroid_max<S>;
    table.decompress = &decompress<S>;
    return table;
}

}  // namespace kernels
}  // namespace flatcoat
