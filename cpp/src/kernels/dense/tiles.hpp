// The dense scan's tile kernels (sapphirerapids): the batched int8 and bf16
// scans' query panels times rows on tiles (kernels/tiles.hpp), with the
// level's SIMD type `S` for what tiles do not cover.
#pragma once

#include <cstddef>
#include <cstdint>

#include "kernels/dense/dense.hpp"
#include "kernels/tiles.hpp"

namespace flatcoat {
namespace kernels {

/// One band of RA * 16 rows by every panel, two at a time, then one.
template <class T, class P, int RA>
inline void tile_band(const unsigned char* panels, size_t n_panels, size_t panel_bytes, const unsigned char* rows,
                      size_t row_bytes, size_t steps, unsigned char* out, size_t out_stride) {
    using out_t = typename P::out_t;
    constexpr size_t c_bytes = 16 * sizeof(out_t);
    size_t v = 0;
    for (; v + 2 <= n_panels; v += 2)
        tile_micro<T, out_t, RA, 2>(panels + v * panel_bytes, panel_bytes, rows, row_bytes, steps,
                                    out + v * c_bytes, out_stride);
    if (v < n_panels)
        tile_micro<T, out_t, RA, 1>(panels + v * panel_bytes, panel_bytes, rows, row_bytes, steps,
                                    out + v * c_bytes, out_stride);
}

/// The panel kernel's contract (dot_u8s8_panels_fn, dot_bf16_panels_fn) on
/// tiles: rows 32 at a time, then 16. A dimension that is not a whole number
/// of 64-byte tile steps, and the last rows short of a tile, go to the level's
/// vector panel kernel (panels_block), whose int8 sums are the same integers
/// and whose bf16 sums agree to float32 rounding.
template <class S, class T, class P>
void tiles_block(const void* panels, size_t n_panels, const typename P::x_t* x, size_t nx, size_t dim,
                 typename P::out_t* out, size_t ldo) {
    static_assert(S::width == 16, "a panel is 16 queries: one tile's columns");
    constexpr size_t step_elements = tile_row_bytes / sizeof(typename P::x_t);
    if (dim % step_elements != 0 || nx < tile_rows) return panels_block<S, P>(panels, n_panels, x, nx, dim, out, ldo);
    const size_t steps = dim / step_elements, panel_bytes = steps * tile_rows * tile_row_bytes;
    const size_t row_bytes = dim * sizeof(typename P::x_t), out_stride = ldo * sizeof(typename P::out_t);
    const unsigned char* pb = static_cast<const unsigned char*>(panels);
    const unsigned char* xb = reinterpret_cast<const unsigned char*>(x);
    unsigned char* ob = reinterpret_cast<unsigned char*>(out);
    T::configure();
    size_t j = 0;
    for (; j + 2 * tile_rows <= nx; j += 2 * tile_rows)
        tile_band<T, P, 2>(pb, n_panels, panel_bytes, xb + j * row_bytes, row_bytes, steps, ob + j * out_stride,
                           out_stride);
    if (j + tile_rows <= nx) {
        tile_band<T, P, 1>(pb, n_panels, panel_bytes, xb + j * row_bytes, row_bytes, steps, ob + j * out_stride,
                           out_stride);
        j += tile_rows;
    }
    T::release();
    if (j < nx) panels_block<S, P>(panels, n_panels, x + j * dim, nx - j, dim, out + j * ldo, ldo);
}

template <class S, class T>
void tile_u8s8_panels_block(const int8_t* panels, size_t n_panels, const uint8_t* x, size_t nx, size_t dim,
                            int32_t* out, size_t ldo) {
    tiles_block<S, T, u8s8_panel_path_t<S>>(panels, n_panels, x, nx, dim, out, ldo);
}

template <class S, class T>
void tile_bf16_panels_block(const bf16_t* panels, size_t n_panels, const bf16_t* x, size_t nx, size_t dim,
                            float* out, size_t ldo) {
    tiles_block<S, T, bf16_panel_path_t<S>>(panels, n_panels, x, nx, dim, out, ldo);
}

/// The kernels of a level with tiles: the panel kernels on tiles of type T.
template <class S, class T>
void add_tile_kernels(dense_kernels_t& table) {
    table.dot_u8s8_panels = &tile_u8s8_panels_block<S, T>;
    table.dot_bf16_panels = &tile_bf16_panels_block<S, T>;
}

}  // namespace kernels
}  // namespace flatcoat
