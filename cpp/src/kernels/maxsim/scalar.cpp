// MaxSim kernels for the "scalar" level (no intrinsics; compiled at the baseline ISA).
// Instructions: whatever the compiler makes of simd::scalar_t's 8-lane loops
// (SSE2 on x86-64). Accumulation: float32 per (query token, document token)
// lane, products added in dimension order; the int8 path sums exact int32
// products (no saturation), then scales by the document token's scale.
#include "kernels/maxsim/maxsim.hpp"
#include "simd/scalar.hpp"

namespace flatcoat {

template <>
const maxsim_kernels_t& kernel_table<maxsim_kernels_t, isa_t::scalar_k>() {
    static const maxsim_kernels_t table = kernels::make_maxsim_kernels<simd::scalar_t>();
    return table;
}

}  // namespace flatcoat
