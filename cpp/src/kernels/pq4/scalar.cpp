// 4-bit fast-scan kernel for the "scalar" level; compiled with that ISA's flags
// only. Instructions: plain byte loops (the reference every other ISA must match)
// (see simd/scalar.hpp and pq4.hpp).
#include "kernels/pq4/pq4.hpp"
#include "simd/scalar.hpp"

namespace flatcoat {

template <>
const pq4_kernels_t& kernel_table<pq4_kernels_t, isa_t::scalar_k>() {
    static const pq4_kernels_t table = kernels::make_pq4_kernels<simd::scalar_t>();
    return table;
}

}  // namespace flatcoat
