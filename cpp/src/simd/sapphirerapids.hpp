// AMX ("sapphirerapids": Intel Xeon 4th generation and later): the genoa
// level's vector instructions plus the tile unit.
//  - Eight tile registers of up to 16 rows x 64 bytes, loaded and stored with
//    a row stride (tileloadd/tilestored);
//  - tdpbusd: C (16 x 16 int32) += A (16 rows of 64 u8) x B (16 rows of 16
//    groups of 4 s8), exact: 16,384 multiply-adds per instruction where
//    vpdpbusd does 64;
//  - tdpbf16ps: the same with bfloat16 pairs into float32.
// The tile kernels (kernels/tiles.hpp) are written over a tile type;
// this is the one that runs the instructions. AVX512-FP16 has no level: it
// offers no float16 dot product that sums in float32 (that is AVX10.2's
// vdpphps), and a float16 sum of 384 products keeps about 3 digits.
#pragma once

#include <immintrin.h>

#include <cstddef>
#include <cstdint>

#include "simd/genoa.hpp"

namespace flatcoat {
namespace simd {

struct sapphirerapids_t : genoa_t {};

/// `op(c, a, b)` with literal tiles for the template's (c, a, b): the four
/// products of tile_micro's block.
#define FLATCOAT_TILE_BLOCK_(op)                                                                      \
    if constexpr (c == 0 && a == 4 && b == 6) op(0, 4, 6);                                           \
    else if constexpr (c == 1 && a == 4 && b == 7) op(1, 4, 7);                                      \
    else if constexpr (c == 2 && a == 5 && b == 6) op(2, 5, 6);                                      \
    else {                                                                                            \
        static_assert(c == 3 && a == 5 && b == 7, "tile_micro's block: 0=4x6 1=4x7 2=5x6 3=5x7");      \
        op(3, 5, 7);                                                                                  \
    }

/// The tile unit as kernels/tiles.hpp uses it: every tile 16 rows x 64
/// bytes (palette 1). The intrinsics take tile numbers as literals (GCC
/// stringifies them into the instruction), so each operation lists the ones
/// the kernels use.
struct amx_tiles_t {
    /// Every tile 16 rows x 64 bytes (palette 1): bytes per row as uint16 at
    /// 16 + 2t, rows at 48 + t, the rest zero.
    struct alignas(64) config_t {
        uint8_t bytes[64];
    };
    static constexpr config_t make_config() {
        config_t c{};
        c.bytes[0] = 1;
        for (int t = 0; t < 8; ++t) {
            c.bytes[16 + 2 * t] = 64;
            c.bytes[48 + t] = 16;
        }
        return c;
    }
    /// Loads the tile configuration: per thread, before the first tile
    /// instruction. The configuration lives in static storage: GCC's
    /// _tile_loadconfig tells the compiler it reads 8 bytes only, so a
    /// configuration built on the stack could lose its other stores.
    static void configure() {
        static constexpr config_t config = make_config();
        _tile_loadconfig(&config);
    }
    /// Frees the tile state (the OS then need not save it on a context switch).
    static void release() { _tile_release(); }

    template <int t>
    static void zero() {
        static_assert(t >= 0 && t < 4, "accumulator tiles are 0-3");
        if constexpr (t == 0) _tile_zero(0);
        else if constexpr (t == 1) _tile_zero(1);
        else if constexpr (t == 2) _tile_zero(2);
        else _tile_zero(3);
    }
    template <int t>
    static void load(const void* p, size_t stride) {
        static_assert(t >= 4 && t < 8, "operand tiles are 4-7");
        // GCC's tileloadd asm names no memory operand: the stores to what it reads must be done first.
        __asm__ volatile("" ::: "memory");
        if constexpr (t == 4) _tile_loadd(4, p, long(stride));
        else if constexpr (t == 5) _tile_loadd(5, p, long(stride));
        else if constexpr (t == 6) _tile_loadd(6, p, long(stride));
        else _tile_loadd(7, p, long(stride));
    }
    template <int t>
    static void store(void* p, size_t stride) {
        static_assert(t >= 0 && t < 4, "accumulator tiles are 0-3");
        if constexpr (t == 0) _tile_stored(0, p, long(stride));
        else if constexpr (t == 1) _tile_stored(1, p, long(stride));
        else if constexpr (t == 2) _tile_stored(2, p, long(stride));
        else _tile_stored(3, p, long(stride));
    }
    /// C[c] += A[a] x B[b]: accumulator c of rows a by queries b (tile_micro's
    /// 2 x 2 block: 0 = 4 x 6, 1 = 4 x 7, 2 = 5 x 6, 3 = 5 x 7).
    template <int c, int a, int b>
    static void dpbusd() {
        FLATCOAT_TILE_BLOCK_(_tile_dpbusd)
    }
    template <int c, int a, int b>
    static void dpbf16ps() {
        FLATCOAT_TILE_BLOCK_(_tile_dpbf16ps)
    }
};

}  // namespace simd
}  // namespace flatcoat

#undef FLATCOAT_TILE_BLOCK_
