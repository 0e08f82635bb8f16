// Dense kernels for the "haswell" level; compiled with that ISA's flags only
// (see CMakeLists.txt). The instructions used are described in simd/haswell.hpp.
#include "kernels/dense/dense.hpp"
#include "simd/haswell.hpp"

namespace flatcoat {

template <>
const dense_kernels_t& kernel_table<dense_kernels_t, isa_t::haswell_k>() {
    static const dense_kernels_t table = kernels::make_dense_kernels<simd::haswell_t>();
    return table;
}

}  // namespace flatcoat
