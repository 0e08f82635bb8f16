// The tile machinery of the sapphirerapids level's kernels (AMX), written
// once over a tile type `T`:
//  - simd::amx_tiles_t (simd/sapphirerapids.hpp) runs the instructions;
//  - emulated_tiles_t (below) does the same operations in plain code, as the
//    Intel SDM defines them, so a machine without AMX tests the kernels'
//    blocking, layouts and tails (tests/test_int8_kernel.py, test_multivector.py).
//
// Every tile is 16 rows x 64 bytes. The query panels of the vector kernels
// (4 bytes of each of 16 queries per step: dense_kernels.hpp,
// maxsim_kernels.hpp) are already AMX's B layout, so 16 panel steps are one
// B tile as packed, and 16 rows of codes (64 bytes each, read in place with
// the row stride) are an A tile. A block of up to 2 x 2 accumulator tiles
// scores 32 rows by 32 queries.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>      // std::memcpy, std::memset
#include <type_traits>  // std::is_same

namespace flatcoat {
namespace kernels {

constexpr size_t tile_rows = 16, tile_row_bytes = 64;

/// The tile operations in plain code: eight 16 x 64-byte tiles per thread;
/// dpbusd and dpbf16ps follow the SDM's pseudocode for tdpbusd and tdpbf16ps
/// (products of each 4-byte group, or bfloat16 pair, added in order into the
/// accumulator's int32 or float32 lane; tdpbf16ps treats denormal inputs as
/// zero and flushes denormal results, whatever MXCSR says).
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
        auto flush = [](float f) {  // denormals to zero, keeping the sign
            uint32_t bits;
            std::memcpy(&bits, &f, 4);
            if ((bits & 0x7F800000u) == 0) bits &= 0x80000000u;
            std::memcpy(&f, &bits, 4);
            return f;
        };
        auto widen = [&](const unsigned char* p) {
            uint16_t h;
            std::memcpy(&h, p, 2);
            const uint32_t bits = uint32_t(h) << 16;
            float f;
            std::memcpy(&f, &bits, 4);
            return flush(f);
        };
        for (size_t m = 0; m < tile_rows; ++m)
            for (size_t n = 0; n < 16; ++n) {
                float acc;
                std::memcpy(&acc, C.row[m] + 4 * n, 4);
                for (size_t k = 0; k < 16; ++k) {
                    acc = flush(acc + widen(A.row[m] + 4 * k) * widen(B.row[k] + 4 * n));
                    acc = flush(acc + widen(A.row[m] + 4 * k + 2) * widen(B.row[k] + 4 * n + 2));
                }
                std::memcpy(C.row[m] + 4 * n, &acc, 4);
            }
    }
};

/// C[c] += A[a] x B[b] by the sums' type: tdpbusd into int32 (u8 rows x s8
/// queries), tdpbf16ps into float32 (bfloat16 pairs).
template <class T, class out_t, int c, int a, int b>
inline void tile_dot() {
    static_assert(std::is_same<out_t, int32_t>::value || std::is_same<out_t, float>::value, "int32 or float32 sums");
    if constexpr (std::is_same<out_t, int32_t>::value) T::template dpbusd<c, a, b>();
    else T::template dpbf16ps<c, a, b>();
}

/// RA x QB tiles of RA * 16 rows by QB panels (1 or 2 each) over the whole
/// dimension, `steps` tile steps of 64 bytes, the sums (int32 or float32)
/// stored at `out` with a row stride of `out_stride` bytes: A tiles 4, 5 (rows), B tiles 6,
/// 7 (panels), accumulators 0 = 4 x 6, 1 = 4 x 7, 2 = 5 x 6, 3 = 5 x 7.
template <class T, class out_t, int RA, int QB>
inline void tile_micro(const unsigned char* panels, size_t panel_bytes, const unsigned char* rows, size_t row_bytes,
                       size_t steps, unsigned char* out, size_t out_stride) {
    constexpr size_t c_bytes = 16 * sizeof(out_t);  // one accumulator tile's row: 16 queries
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
        tile_dot<T, out_t, 0, 4, 6>();
        if constexpr (QB > 1) tile_dot<T, out_t, 1, 4, 7>();
        if constexpr (RA > 1) tile_dot<T, out_t, 2, 5, 6>();
        if constexpr (RA > 1 && QB > 1) tile_dot<T, out_t, 3, 5, 7>();
    }
    T::template store<0>(out, out_stride);
    if constexpr (QB > 1) T::template store<1>(out + c_bytes, out_stride);
    if constexpr (RA > 1) T::template store<2>(out + tile_rows * out_stride, out_stride);
    if constexpr (RA > 1 && QB > 1) T::template store<3>(out + tile_rows * out_stride + c_bytes, out_stride);
}

}  // namespace kernels
}  // namespace flatcoat
