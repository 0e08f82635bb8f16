// The tile kernels on emulated tiles (see flatcoat/dense_kernels.hpp,
// tile_emulation_t); compiled with the genoa level's flags, whose vector
// kernels do the tails, as they do for sapphirerapids' real tiles.
#include "kernels/dense/tiles.hpp"
#include "simd/genoa.hpp"

namespace flatcoat {

const tile_emulation_t& emulated_tile_kernels() {
    using S = simd::genoa_t;
    static const tile_emulation_t table = {&kernels::tile_u8s8_panels_block<S, kernels::emulated_tiles_t>,
                                           &kernels::tile_bf16_panels_block<S, kernels::emulated_tiles_t>,
                                           S::width};
    return table;
}

}  // namespace flatcoat
