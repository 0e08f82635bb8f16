// Ceiling probes for the "sapphirerapids" level; compiled with its flags only.
// As genoa (FMA on zmm, popcount on vpopcntq), with the int8 and bfloat16
// ceilings of the tile unit (tdpbusd, tdpbf16ps), which its batched scans use.
#include "kernels/probe/probe.hpp"
#include "kernels/probe/vpopcntq.hpp"
#include "simd/sapphirerapids.hpp"

namespace flatcoat {

template <>
const probe_kernels_t& kernel_table<probe_kernels_t, isa_t::sapphirerapids_k>() {
    static const probe_kernels_t table = [] {
        using S = simd::sapphirerapids_t;
        probe_kernels_t t = kernels::make_probe_kernels<S, kernels::vpopcntq_step_t<S>>();
        kernels::add_tile_probes<S, simd::amx_tiles_t>(t);
        return t;
    }();
    return table;
}

}  // namespace flatcoat
