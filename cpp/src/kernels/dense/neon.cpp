// Dense kernels for the "neon" level; compiled with that ISA's flags only
// (see CMakeLists.txt). The instructions used are described in simd/neon.hpp.
#include "kernels/dense/dense.hpp"
#include "simd/neon.hpp"

namespace flatcoat {

template <>
const dense_kernels_t& kernel_table<dense_kernels_t, isa_t::neon_k>() {
    static const dense_kernels_t table = kernels::make_dense_kernels<simd::neon_t>();
    return table;
}

}  // namespace flatcoat
