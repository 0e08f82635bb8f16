// 4-bit fast-scan kernel for the "neon" level; compiled with that ISA's flags
// only. Instructions: tbl (vqtbl1q_u8) on 128 bits: one sub-quantizer per register
// (see simd/neon.hpp and pq4.hpp).
#include "kernels/pq4/pq4.hpp"
#include "simd/neon.hpp"

namespace flatcoat {

template <>
const pq4_kernels_t& kernel_table<pq4_kernels_t, isa_t::neon_k>() {
    static const pq4_kernels_t table = kernels::make_pq4_kernels<simd::neon_t>();
    return table;
}

}  // namespace flatcoat
