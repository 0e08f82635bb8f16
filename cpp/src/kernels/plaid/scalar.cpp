// PLAID kernels for the portable baseline (plain loops the compiler may vectorise with SSE2).
// Compiled with that ISA's flags only (CMakeLists.txt); accumulation as in plaid.hpp.
#include "kernels/plaid/plaid.hpp"
#include "simd/scalar.hpp"

namespace flatcoat {

template <>
const plaid_kernels_t& kernel_table<plaid_kernels_t, isa_t::scalar_k>() {
    static const plaid_kernels_t table = kernels::make_plaid_kernels<simd::scalar_t>();
    return table;
}

}  // namespace flatcoat
