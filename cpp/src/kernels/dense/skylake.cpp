// Dense kernels for the "skylake" level; compiled with that ISA's flags only
// (see CMakeLists.txt). The instructions used are described in simd/skylake.hpp.
#include "kernels/dense/dense.hpp"
#include "simd/skylake.hpp"

namespace flatcoat {

template <>
const dense_kernels_t& kernel_table<dense_kernels_t, isa_t::skylake_k>() {
    static const dense_kernels_t table = kernels::make_dense_kernels<simd::skylake_t>();
    return table;
}

}  // namespace flatcoat
