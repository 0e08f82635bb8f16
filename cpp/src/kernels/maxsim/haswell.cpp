// MaxSim kernels for the "haswell" level (AVX2 + FMA + F16C), compiled with those flags only.
// Instructions: float path: vbroadcastss of a document element, vfmadd231ps
// into 8 query tokens per ymm; vmaxps folds finished dot products into the
// running maxima. int8 path: vpbroadcastd of 4 document codes (u8),
// vpmaddubsw against 4 dims x 8 query tokens (s8, |q| <= 64 so the int16 pair
// sums are exact), vpmaddwd with ones to int32, vpaddd; vcvtdq2ps + vmulps by
// the token's scale before the max. f16 rows are widened by vcvtph2ps first.
// Accumulation: 4 panels (32 query tokens) x 3 document tokens = 12 ymm
// accumulators for float, 4 x 2 = 8 for int8 (plus pair temporaries).
#include "kernels/maxsim/maxsim.hpp"
#include "simd/haswell.hpp"

namespace flatcoat {

template <>
const maxsim_kernels_t& kernel_table<maxsim_kernels_t, isa_t::haswell_k>() {
    static const maxsim_kernels_t table = kernels::make_maxsim_kernels<simd::haswell_t>();
    return table;
}

}  // namespace flatcoat
