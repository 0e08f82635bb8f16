// PLAID kernels for the "skylake" level (AVX-512F/BW/VL/DQ): as haswell on 16-lane zmm registers, 32 of them.
// Compiled with that ISA's flags only (CMakeLists.txt); accumulation as in plaid.hpp.
#include "kernels/plaid/plaid.hpp"
#include "simd/skylake.hpp"

namespace flatcoat {

template <>
const plaid_kernels_t& kernel_table<plaid_kernels_t, isa_t::skylake_k>() {
    static const plaid_kernels_t table = kernels::make_plaid_kernels<simd::skylake_t>();
    return table;
}

}  // namespace flatcoat
