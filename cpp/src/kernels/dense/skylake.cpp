// Dense kernels for the "skylake" level; compiled with that ISA's flags only
// (see CMakeLists.txt). The instructions used are described in simd/skylake.hpp.
#include "kernels/dense/dense.hpp"
#include "simd/skylake.hpp"

namespace flatcoat {
namespace kernels {

const dense_kernels_t& dense_kernels_skylake() {
    static const dense_kernels_t table = make_dense_kernels<simd::skylake_t>();
    return table;
}

}  // namespace kernels
}  // namespace flatcoat
