// Dense kernels for the "neon" level; compiled with that ISA's flags only
// (see CMakeLists.txt). The instructions used are described in simd/neon.hpp.
#include "kernels/dense/dense.hpp"
#include "simd/neon.hpp"

namespace flatcoat {
namespace kernels {

const dense_kernels_t& dense_kernels_neon() {
    static const dense_kernels_t table = make_dense_kernels<simd::neon_t>();
    return table;
}

}  // namespace kernels
}  // namespace flatcoat
