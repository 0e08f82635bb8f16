// The tile kernels on emulated tiles (flatcoat/tile_emulation.hpp); compiled
// with the genoa level's flags, whose vector kernels do the tails, as they do
// for sapphirerapids' real tiles.
#include "flatcoat/tile_emulation.hpp"

#include "kernels/dense/tiles.hpp"
#include "kernels/maxsim/tiles.hpp"
#include "simd/genoa.hpp"

namespace flatcoat {

const tile_emulation_t& emulated_tile_kernels() {
    using S = simd::genoa_t;
    using T = kernels::emulated_tiles_t;
    static const tile_emulation_t table = {&kernels::tile_u8s8_panels_block<S, T>,
                                           &kernels::tile_bf16_panels_block<S, T>, S::width,
                                           &kernels::tile_maxsim_max_u8<S, T>};
    return table;
}

}  // namespace flatcoat
