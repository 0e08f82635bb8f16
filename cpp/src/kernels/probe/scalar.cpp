// Ceiling probes for the "scalar" level; compiled with that ISA's flags only.
#include "kernels/probe/probe.hpp"
#include "simd/scalar.hpp"

namespace flatcoat {

template <>
const probe_kernels_t& kernel_table<probe_kernels_t, isa_t::scalar_k>() {
    static const probe_kernels_t table = kernels::make_probe_kernels<simd::scalar_t>();
    return table;
}

}  // namespace flatcoat
