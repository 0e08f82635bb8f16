// PLAID kernels for NEON (AArch64): fmla on 4-lane float32 registers, fmax over score rows.
// Compiled with that ISA's flags only (CMakeLists.txt); accumulation as in plaid.hpp.
#include "kernels/plaid/plaid.hpp"
#include "simd/neon.hpp"

namespace flatcoat {

template <>
const plaid_kernels_t& kernel_table<plaid_kernels_t, isa_t::neon_k>() {
    static const plaid_kernels_t table = kernels::make_plaid_kernels<simd::neon_t>();
    return table;
}

}  // namespace flatcoat
