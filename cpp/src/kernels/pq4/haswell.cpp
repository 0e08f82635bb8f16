// 4-bit fast-scan kernel for the "haswell" level; compiled with that ISA's flags
// only. Instructions: vpshufb on 256 bits: two sub-quantizers per register, vpaddw u16 sums
// (see simd/haswell.hpp and pq4.hpp).
#include "kernels/pq4/pq4.hpp"
#include "simd/haswell.hpp"

namespace flatcoat {

template <>
const pq4_kernels_t& kernel_table<pq4_kernels_t, isa_t::haswell_k>() {
    static const pq4_kernels_t table = kernels::make_pq4_kernels<simd::haswell_t>();
    return table;
}

}  // namespace flatcoat
