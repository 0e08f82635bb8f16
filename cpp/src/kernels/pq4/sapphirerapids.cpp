// 4-bit fast-scan kernel for the "sapphirerapids" level; compiled with its
// flags only. As icelake: vpshufb on 512 bits, masked tail loads (pq4.hpp).
#include "kernels/pq4/pq4.hpp"
#include "simd/sapphirerapids.hpp"

namespace flatcoat {

template <>
const pq4_kernels_t& kernel_table<pq4_kernels_t, isa_t::sapphirerapids_k>() {
    static const pq4_kernels_t table = kernels::make_pq4_kernels<simd::sapphirerapids_t>();
    return table;
}

}  // namespace flatcoat
