// Ceiling probes for the "icelake" level; compiled with its flags only.
// FMA on zmm, int8 on vpdpbusd (icelake_t::dpbusd), popcount on vpopcntq.
#include "kernels/probe/probe.hpp"
#include "kernels/probe/vpopcntq.hpp"
#include "simd/icelake.hpp"

namespace flatcoat {

template <>
const probe_kernels_t& kernel_table<probe_kernels_t, isa_t::icelake_k>() {
    static const probe_kernels_t table =
        kernels::make_probe_kernels<simd::icelake_t, kernels::vpopcntq_step_t<simd::icelake_t>>();
    return table;
}

}  // namespace flatcoat
