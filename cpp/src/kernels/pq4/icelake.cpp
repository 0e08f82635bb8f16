// 4-bit fast-scan kernel for the "icelake" level; compiled with its flags
// only. As skylake: vpshufb on 512 bits, masked tail loads (pq4.hpp).
#include "kernels/pq4/pq4.hpp"
#include "simd/icelake.hpp"

namespace flatcoat {

template <>
const pq4_kernels_t& kernel_table<pq4_kernels_t, isa_t::icelake_k>() {
    static const pq4_kernels_t table = kernels::make_pq4_kernels<simd::icelake_t>();
    return table;
}

}  // namespace flatcoat
