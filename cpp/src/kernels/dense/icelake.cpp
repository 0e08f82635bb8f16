// Dense kernels for the "icelake" level (skylake + VNNI, VPOPCNTDQ, VBMI,
// VBMI2, BITALG); compiled with those flags only (see CMakeLists.txt).
// Instructions: as skylake, with vpdpbusd for int8 dot products and vpopcntq
// for Hamming distances (simd/icelake.hpp), and int8 query panels for batches.
#include "kernels/dense/dense.hpp"
#include "simd/icelake.hpp"

namespace flatcoat {

template <>
const dense_kernels_t& kernel_table<dense_kernels_t, isa_t::icelake_k>() {
    static const dense_kernels_t table = [] {
        dense_kernels_t t = kernels::make_dense_kernels<simd::icelake_t>();
        kernels::add_vnni_kernels<simd::icelake_t>(t);
        return t;
    }();
    return table;
}

}  // namespace flatcoat
