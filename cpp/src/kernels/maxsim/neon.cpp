// MaxSim kernels for the "neon" level (arm64 Advanced SIMD, baseline flags).
// Instructions: float path: vdupq_n_f32 of a document element, vfmaq_f32 into 4
// query tokens per q register, vmaxq_f32 for the maxima; int8 path: vmovl
// widening, vmull_s16 and two vpaddq_s32 per 4-dimension step (no dotprod
// extension assumed); fcvtl widens f16 rows. Accumulation: 4 panels (16 query
// tokens) x 6 document tokens = 24 float accumulators of the 32 registers.
#include "kernels/maxsim/maxsim.hpp"
#include "simd/neon.hpp"

namespace flatcoat {

template <>
const maxsim_kernels_t& kernel_table<maxsim_kernels_t, isa_t::neon_k>() {
    static const maxsim_kernels_t table = kernels::make_maxsim_kernels<simd::neon_t>();
    return table;
}

}  // namespace flatcoat
