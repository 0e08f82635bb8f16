// Ceiling probes for the "neon" level; compiled with that ISA's flags only.
#include "kernels/probe/probe.hpp"
#include "simd/neon.hpp"

namespace flatcoat {

template <>
const probe_kernels_t& kernel_table<probe_kernels_t, isa_t::neon_k>() {
    static const probe_kernels_t table = kernels::make_probe_kernels<simd::neon_t>();
    return table;
}

}  // namespace flatcoat
