// MaxSim kernels for the "sapphirerapids" level (genoa + AMX), compiled with
// its flags only: as icelake, with int8 documents of 16 tokens or more on
// tiles (kernels/maxsim/tiles.hpp: tdpbusd); float32 stays on FMA.
#include "kernels/maxsim/maxsim.hpp"
#include "kernels/maxsim/tiles.hpp"
#include "simd/sapphirerapids.hpp"

namespace flatcoat {

template <>
const maxsim_kernels_t& kernel_table<maxsim_kernels_t, isa_t::sapphirerapids_k>() {
    static const maxsim_kernels_t table = [] {
        using S = simd::sapphirerapids_t;
        maxsim_kernels_t t = kernels::make_maxsim_kernels<S>();
        t.max_u8 = &kernels::tile_maxsim_max_u8<S, simd::amx_tiles_t>;
        return t;
    }();
    return table;
}

}  // namespace flatcoat
