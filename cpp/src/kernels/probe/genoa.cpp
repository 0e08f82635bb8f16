// Ceiling probes for the "genoa" level; compiled with its flags only.
// As icelake (FMA on zmm, int8 on vpdpbusd, popcount on vpopcntq), plus the
// bfloat16 probe on vdpbf16ps.
#include "kernels/probe/probe.hpp"
#include "kernels/probe/vpopcntq.hpp"
#include "simd/genoa.hpp"

namespace flatcoat {

template <>
const probe_kernels_t& kernel_table<probe_kernels_t, isa_t::genoa_k>() {
    static const probe_kernels_t table = [] {
        probe_kernels_t t = kernels::make_probe_kernels<simd::genoa_t, kernels::vpopcntq_step_t<simd::genoa_t>>();
        kernels::add_bf16_probe<simd::genoa_t>(t);
        return t;
    }();
    return table;
}

}  // namespace flatcoat
