// PLAID kernels for the "haswell" level (AVX2 + FMA): vfmadd231ps of broadcast centroid elements into 8 query tokens per ymm, vmaxps over score rows.
// Compiled with that ISA's flags only (CMakeLists.txt); accumulation as in plaid.hpp.
#include "kernels/plaid/plaid.hpp"
#include "simd/haswell.hpp"

namespace flatcoat {

template <>
const plaid_kernels_t& kernel_table<plaid_kernels_t, isa_t::haswell_k>() {
    static const plaid_kernels_t table = kernels::make_plaid_kernels<simd::haswell_t>();
    return table;
}

}  // namespace flatcoat
