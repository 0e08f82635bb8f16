// MaxSim kernels for the "skylake" level (AVX-512 F/BW/VL/DQ), compiled with those flags only.
// Instructions: as haswell at 16 lanes: vbroadcastss + vfmadd231ps zmm; int8:
// vpbroadcastd + vpmaddubsw + vpmaddwd + vpaddd zmm; vcvtph2ps zmm for f16.
// Accumulation: 4 panels (64 query tokens) x 6 document tokens = 24 zmm
// accumulators for float, up to 20 for int8, out of 32 registers.
#include "kernels/maxsim/maxsim.hpp"
#include "simd/skylake.hpp"

namespace flatcoat {

template <>
const maxsim_kernels_t& kernel_table<maxsim_kernels_t, isa_t::skylake_k>() {
    static const maxsim_kernels_t table = kernels::make_maxsim_kernels<simd::skylake_t>();
    return table;
}

}  // namespace flatcoat
