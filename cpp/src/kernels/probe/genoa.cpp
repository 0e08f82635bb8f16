// Ceiling probes for the "genoa" level; compiled with its flags only. As
// icelake: the int8 probe runs vpdpbusd, the popcount probe vpopcntq.
#include "kernels/probe/probe.hpp"
#include "simd/genoa.hpp"

namespace flatcoat {

template <>
const probe_kernels_t& kernel_table<probe_kernels_t, isa_t::genoa_k>() {
    static const probe_kernels_t table = kernels::make_probe_kernels<simd::genoa_t>();
    return table;
}

}  // namespace flatcoat
