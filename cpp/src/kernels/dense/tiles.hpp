// The tile kernels of the dense scan (sapphirerapids): query panels times rows
// as tile matrix products. Written once over a tile type `T`:
//  - simd::amx_tiles_t (simd/sapphirerapids.hpp) runs the AMX instructions;
//  - emulated_tiles_t (below) does the same operations in plain code, as the
//    Intel SDM defines them, so a machine without AMX tests the blocking, the
//    layouts and the tails (tests/test_int8_kernel.py).
// and the level's SIMD type `S` for what tiles do not cover.
//
// The panel layout of the VNNI kernels (dense_kernels.hpp, dot_u8s8_panels_fn)
// is already AMX's B layout: a panel's step holds 4 bytes of each of its 16
// queries, so 16 steps are one 16 x 64-byte B tile, and 16 rows of codes
// (64 bytes each, read in place with the row stride) are an A tile. A 2 x 2
// block keeps four accumulator tiles: 32 rows x 32 queries.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>  // std::memcpy, std::memset
#include <type_traits>  // std::is_same

#include "kernels/dense/dense.hpp"

namespace flatcoat {
namespace kernels {

constexpr size_t tile_rows = 16, tile_row_bytes = 64;

/// The tile operations in plain code: eight 16 x 64-byte tiles per thread;
/// dpbusd and dpbf16ps follow the SDM's pseudocode for tdpbusd and tdpbf16ps
/// (products of each 4-byte group, or bfloat16 pair, added in order into the
/// accumulator's int32 or float32 lane).
struct emulated_tiles_t {
    struct tile_t {
        alignas(64) unsigned char row[tile_rows][tile_row_bytes];
    };
    static tile_t* tiles() {
        thread_local tile_t t[8];
        return t;
    }
    static void configure() {}
    static void release() {}
    template <int t>
    static void zero() {
        std::memset(&tiles()[t], 0, sizeof(tile_t));
    }
    template <int t>
    static void load(const void* p, size_t stride) {
        for (size_t r = 0; r < tile_rows; ++r)
            std::memcpy(tiles()[t].row[r], static_cast<const unsigned char*>(p) + r * stride, tile_row_bytes);
    }
    template <int t>
    static void store(void* p, size_t stride) {
        for (size_t r = 0; r < tile_rows; ++r)
            std::memcpy(static_cast<unsigned char*>(p) + r * stride, tiles()[t].row[r], tile_row_bytes);
    }
    template <int c, int a, int b>
    static void dpbusd() {
        tile_t &C = tiles()[c], &A = tiles()[a], &B = tiles()[b];
        for (size_t m = 0; m < tile_rows; ++m)
            for (size_t n = 0; n < 16; ++n) {
                int32_t acc;
                std::memcpy(&acc, C.row[m] + 4 * n, 4);
                for (size_t k = 0; k < 16; ++k)
                    for (size_t i = 0; i < 4; ++i)
                        acc += int32_t(A.row[m][4 * k + i]) * int32_t(int8_t(B.row[k][4 * n + i]));
                std::memcpy(C.row[m] + 4 * n, &acc, 4);
            }
    }
    template <int c, int a, int b>
    static void dpbf16ps() {
        tile_t &C = tiles()[c], &A = tiles()[a], &B = tiles()[b];
        auto widen = [](const unsigned char* p) {
            uint16_t h;
            std::memcpy(&h, p, 2);
            const uint32_t bits = uint32_t(h) << 16;
            float f;
            std::memcpy(&f, &bits, 4);
            return f;
        };
        for (size_t m = 0; m < tile_rows; ++m)
            for (size_t n = 0; n < 16; ++n) {
                float acc;
                std::memcpy(&acc, C.row[m] + 4 * n, 4);
                for (size_t k = 0; k < 16; ++k) {
                    acc += widen(A.row[m] + 4 * k) * widen(B.row[k] + 4 * n);
                    acc += widen(A.row[m] + 4 * k + 2) * widen(B.row[k] + 4 * n + 2);
                }
                std::memcpy(C.row[m] + 4 * n, &acc, 4);
            }
    }
};

/// C[c] += A[a] x B[b] with the path's instruction: tdpbusd for int8, tdpbf16ps for bf16.
template <class T, class P, int c, int a, int b>
inline void tile_dot() {
    if constexpr (std::is_same<typename P::out_t, int32_t>::value) T::template dpbusd<c, a, b>();
    else T::template dpbf16ps<c, a, b>();
}

/// RA x QB tiles of RA * 16 rows by QB panels (1 or 2 each) over the whole
/// dimension, `steps` tile steps of 64 bytes: A tiles 4, 5 (rows), B tiles 6,
/// 7 (panels), accumulators 0 = 4 x 6, 1 = 4 x 7, 2 = 5 x 6, 3 = 5 x 7.
template <class T, class P, int RA, int QB>
inline void tile_micro(const unsigned char* panels, size_t panel_bytes, const unsigned char* rows, size_t row_bytes,
                       size_t steps, unsigned char* out, size_t out_stride) {
    constexpr size_t c_bytes = 16 * sizeof(typename P::out_t);  // one accumulator tile's row: 16 queries
    constexpr size_t b_step = tile_rows * tile_row_bytes;       // 16 panel steps
    T::template zero<0>();
    if constexpr (QB > 1) T::template zero<1>();
    if constexpr (RA > 1) T::template zero<2>();
    if constexpr (RA > 1 && QB > 1) T::template zero<3>();
    for (size_t s = 0; s < steps; ++s) {
        T::template load<4>(rows + s * tile_row_bytes, row_bytes);
        if constexpr (RA > 1) T::template load<5>(rows + tile_rows * row_bytes + s * tile_row_bytes, row_bytes);
        T::template load<6>(panels + s * b_step, tile_row_bytes);
        if constexpr (QB > 1) T::template load<7>(panels + panel_bytes + s * b_step, tile_row_bytes);
        tile_dot<T, P, 0, 4, 6>();
        if constexpr (QB > 1) tile_dot<T, P, 1, 4, 7>();
        if constexpr (RA > 1) tile_dot<T, P, 2, 5, 6>();
        if constexpr (RA > 1 && QB > 1) tile_dot<T, P, 3, 5, 7>();
    }
    T::template store<0>(out, out_stride);
    if constexpr (QB > 1) T::template store<1>(out + c_bytes, out_stride);
    if constexpr (RA > 1) T::template store<2>(out + tile_rows * out_stride, out_stride);
    if constexpr (RA > 1 && QB > 1) T::template store<3>(out + tile_rows * out_stride + c_bytes, out_stride);
}

/// One band of RA * 16 rows by every panel, two at a time, then one.
template <class T, class P, int RA>
inline void tile_band(const unsigned char* panels, size_t n_panels, size_t panel_bytes, const unsigned char* rows,
                      size_t row_bytes, size_t steps, unsigned char* out, size_t out_stride) {
    constexpr size_t c_bytes = 16 * sizeof(typename P::out_t);
    size_t v = 0;
    for (; v + 2 <= n_panels; v += 2)
        tile_micro<T, P, RA, 2>(panels + v * panel_bytes, panel_bytes, rows, row_bytes, steps, out + v * c_bytes,
                                out_stride);
    if (v < n_panels)
        tile_micro<T, P, RA, 1>(panels + v * panel_bytes, panel_bytes, rows, row_bytes, steps, out + v * c_bytes,
                                out_stride);
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
    if (dim % step_elements != 0) return panels_block<S, P>(panels, n_panels, x, nx, dim, out, ldo);
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
