// The sapphirerapids level's tile kernels on emulated tiles
// (cpp/src/kernels/tiles.hpp), with genoa's vector kernels for what tiles do
// not cover: tests of the tile kernels' blocking, layouts and tails on
// machines without AMX. Defined only in builds with the genoa level
// (FLATCOAT_TILE_EMULATION); runs only on CPUs with its features.
#pragma once

#include <cstddef>

#include "flatcoat/dense_kernels.hpp"
#include "flatcoat/maxsim_kernels.hpp"

namespace flatcoat {

struct tile_emulation_t {
    dot_u8s8_panels_fn dot_u8s8_panels;
    dot_bf16_panels_fn dot_bf16_panels;
    size_t panel_queries;
    maxsim_max_u8_fn maxsim_max_u8;
};
const tile_emulation_t& emulated_tile_kernels();

/// Throws flatcoat::error saying why where the emulation cannot run (not
/// built, or the CPU lacks genoa's features).
void require_tile_emulation();

}  // namespace flatcoat
