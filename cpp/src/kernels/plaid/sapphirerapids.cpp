// PLAID kernels for the "sapphirerapids" level: as icelake (its float32 paths
// use no BF16 or AMX instruction); compiled with the level's flags only.
#include "kernels/plaid/plaid.hpp"
#include "simd/sapphirerapids.hpp"

namespace flatcoat {

template <>
const plaid_kernels_t& kernel_table<plaid_kernels_t, isa_t::sapphirerapids_k>() {
    static const plaid_kernels_t table = kernels::make_plaid_kernels<simd::sapphirerapids_t>();
    return table;
}

}  // namespace flatcoat
