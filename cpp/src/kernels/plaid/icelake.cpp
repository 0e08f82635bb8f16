// PLAID kernels for the "icelake" level: as skylake (its float32 paths use no
// VNNI instruction); compiled with the level's flags only (CMakeLists.txt).
#include "kernels/plaid/plaid.hpp"
#include "simd/icelake.hpp"

namespace flatcoat {

template <>
const plaid_kernels_t& kernel_table<plaid_kernels_t, isa_t::icelake_k>() {
    static const plaid_kernels_t table = kernels::make_plaid_kernels<simd::icelake_t>();
    return table;
}

}  // namespace flatcoat
