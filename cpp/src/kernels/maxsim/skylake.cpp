// MaxSim kernels for the "skylake" level (AVX-512 F/BW/VL/DQ), compiled with those flags only.
// Instructions: as haswell at 16 lanes: vbroadcastss + vfmadd231ps zmm; int8:
// vpbroadcastd + vpmaddubsw + vpmaddwd + vpaddd zmm; vcvtph2ps zmm for f16.
// Accumulation: 4 panels (64 query tokens) x 6 document tokens = 24 zmm
// accumulators for float, up to 20 for int8, out of 32 registers.
#include "kernels/maxsim/maxsim.hpp"
#include "simd/skylake.hpp"

namespace flatcoat {
namespace kernels {

const maxsim_kernels_t& maxsim_kernels_skylake() {
    static const maxsim_kernels_t table = make_maxsim_kernels<simd::skylake_t>();
    return table;
}

}  // namespace kernels
}  // namespace flatcoat
