// PLAID kernels for the "genoa" level: as icelake (its float32 paths use no
// BF16 instruction); compiled with the level's flags only (CMakeLists.txt).
#include "kernels/plaid/plaid.hpp"
#include "simd/genoa.hpp"

namespace flatcoat {

template <>
const plaid_kernels_t& kernel_table<plaid_kernels_t, isa_t::genoa_k>() {
    static const plaid_kernels_t table = kernels::make_plaid_kernels<simd::genoa_t>();
    return table;
}

}  // namespace flatcoat
