// Dense kernels for the "sapphirerapids" level (genoa + AMX-TILE, AMX-INT8,
// AMX-BF16); compiled with those flags only (see CMakeLists.txt). As genoa,
// with the batched int8 and bf16 scans' query panels on tiles
// (kernels/dense/tiles.hpp: tdpbusd, tdpbf16ps); single queries keep
// vpdpbusd and vdpbf16ps, which read each row once either way.
#include "kernels/dense/dense.hpp"
#include "kernels/dense/tiles.hpp"
#include "simd/sapphirerapids.hpp"

namespace flatcoat {

template <>
const dense_kernels_t& kernel_table<dense_kernels_t, isa_t::sapphirerapids_k>() {
    static const dense_kernels_t table = [] {
        using S = simd::sapphirerapids_t;
        dense_kernels_t t = kernels::make_dense_kernels<S>();
        kernels::add_vnni_kernels<S>(t);
        t.dot_bf16_pairs = &kernels::dot_block<S, kernels::bf16_pairs_dot_path_t<S>>;
        kernels::add_tile_kernels<S, simd::amx_tiles_t>(t);
        return t;
    }();
    return table;
}

}  // namespace flatcoat
