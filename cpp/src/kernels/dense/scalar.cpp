// Dense kernels for the "scalar" level; compiled with that ISA's flags only
// (see CMakeLists.txt). The instructions used are described in simd/scalar.hpp.
#include "kernels/dense/dense.hpp"
#include "simd/scalar.hpp"

namespace flatcoat {
namespace kernels {

const dense_kernels_t& dense_kernels_scalar() {
    static const dense_kernels_t table = make_dense_kernels<simd::scalar_t>();
    return table;
}

}  // namespace kernels
}  // namespace flatcoat
