// Ceiling probes for the "icelake" level; compiled with its flags only. The
// int8 probe runs vpdpbusd, the popcount probe vpopcntq.
#include "kernels/probe/probe.hpp"
#include "simd/icelake.hpp"

namespace flatcoat {

template <>
const probe_kernels_t& kernel_table<probe_kernels_t, isa_t::icelake_k>() {
    static const probe_kernels_t table = kernels::make_probe_kernels<simd::icelake_t>();
    return table;
}

}  // namespace flatcoat
