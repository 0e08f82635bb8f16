// Dense kernels for the "scalar" level; compiled with that ISA's flags only
// (see CMakeLists.txt). The instructions used are described in simd/scalar.hpp.
#include "kernels/dense/dense.hpp"
#include "simd/scalar.hpp"

namespace flatcoat {

template <>
const dense_kernels_t& kernel_table<dense_kernels_t, isa_t::scalar_k>() {
    static const dense_kernels_t table = kernels::make_dense_kernels<simd::scalar_t>();
    return table;
}

}  // namespace flatcoat
