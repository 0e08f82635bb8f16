// MaxSim kernels for the "sapphirerapids" level (genoa + AMX), compiled with
// its flags only: the icelake kernels (vpdpbusd for int8; no tiles yet).
#include "kernels/maxsim/maxsim.hpp"
#include "simd/sapphirerapids.hpp"

namespace flatcoat {

template <>
const maxsim_kernels_t& kernel_table<maxsim_kernels_t, isa_t::sapphirerapids_k>() {
    static const maxsim_kernels_t table = kernels::make_maxsim_kernels<simd::sapphirerapids_t>();
    return table;
}

}  // namespace flatcoat
