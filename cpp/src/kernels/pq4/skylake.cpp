// 4-bit fast-scan kernel for the "skylake" level; compiled with that ISA's flags
// only. Instructions: vpshufb on 512 bits (AVX-512BW): four sub-quantizers per register, masked tail loads
// (see simd/skylake.hpp and pq4.hpp).
#include "kernels/pq4/pq4.hpp"
#include "simd/skylake.hpp"

namespace flatcoat {

template <>
const pq4_kernels_t& kernel_table<pq4_kernels_t, isa_t::skylake_k>() {
    static const pq4_kernels_t table = kernels::make_pq4_kernels<simd::skylake_t>();
    return table;
}

}  // namespace flatcoat
