// Ceiling probes for the "skylake" level; compiled with that ISA's flags only.
// FMA on zmm, int8 on vpmaddubsw + vpmaddwd, popcount on scalar popcnt.
#include "kernels/probe/probe.hpp"
#include "simd/skylake.hpp"

namespace flatcoat {

template <>
const probe_kernels_t& kernel_table<probe_kernels_t, isa_t::skylake_k>() {
    static const probe_kernels_t table = kernels::make_probe_kernels<simd::skylake_t>();
    return table;
}

}  // namespace flatcoat
