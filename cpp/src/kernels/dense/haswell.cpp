// Dense kernels for the "haswell" level; compiled with that ISA's flags only
// (see CMakeLists.txt). The instructions used are described in simd/haswell.hpp.
#include "kernels/dense/dense.hpp"
#include "simd/haswell.hpp"

namespace flatcoat {
namespace kernels {

const dense_kernels_t& dense_kernels_haswell() {
    static const dense_kernels_t table = make_dense_kernels<simd::haswell_t>();
    return table;
}

}  // namespace kernels
}  // namespace flatcoat
