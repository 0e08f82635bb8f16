// MaxSim kernels for the "icelake" level, compiled with its flags only.
// As skylake (4 panels x 6 document tokens in zmm accumulators), with the int8
// path's vpmaddubsw + vpmaddwd + vpaddd replaced by one vpdpbusd.
#include "kernels/maxsim/maxsim.hpp"
#include "simd/icelake.hpp"

namespace flatcoat {

template <>
const maxsim_kernels_t& kernel_table<maxsim_kernels_t, isa_t::icelake_k>() {
    static const maxsim_kernels_t table = kernels::make_maxsim_kernels<simd::icelake_t>();
    return table;
}

}  // namespace flatcoat
