// MaxSim kernels for the "genoa" level (icelake + AVX512_BF16), compiled with
// its flags only: the icelake kernels (MaxSim has no bfloat16 storage).
#include "kernels/maxsim/maxsim.hpp"
#include "simd/genoa.hpp"

namespace flatcoat {

template <>
const maxsim_kernels_t& kernel_table<maxsim_kernels_t, isa_t::genoa_k>() {
    static const maxsim_kernels_t table = kernels::make_maxsim_kernels<simd::genoa_t>();
    return table;
}

}  // namespace flatcoat
