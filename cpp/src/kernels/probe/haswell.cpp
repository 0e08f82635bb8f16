// Ceiling probes for the "haswell" level; compiled with that ISA's flags only.
// FMA on ymm, int8 on vpmaddubsw + vpmaddwd, popcount on scalar popcnt.
#include "kernels/probe/probe.hpp"
#include "simd/haswell.hpp"

namespace flatcoat {

template <>
const probe_kernels_t& kernel_table<probe_kernels_t, isa_t::haswell_k>() {
    static const probe_kernels_t table = kernels::make_probe_kernels<simd::haswell_t>();
    return table;
}

}  // namespace flatcoat
