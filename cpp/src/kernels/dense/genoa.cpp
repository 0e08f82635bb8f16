// Dense kernels for the "genoa" level (icelake + AVX512_BF16); compiled with
// those flags only (see CMakeLists.txt). As icelake, plus the bfloat16 scan on
// vdpbf16ps (dot_bf16_pairs, simd/genoa.hpp), which only this level has.
#include "kernels/dense/dense.hpp"
#include "simd/genoa.hpp"

namespace flatcoat {

template <>
const dense_kernels_t& kernel_table<dense_kernels_t, isa_t::genoa_k>() {
    static const dense_kernels_t table = [] {
        dense_kernels_t t = kernels::make_dense_kernels<simd::genoa_t>();
        kernels::add_vnni_kernels<simd::genoa_t>(t);
        t.dot_bf16_pairs = &kernels::dot_block<simd::genoa_t, kernels::bf16_pairs_dot_path_t<simd::genoa_t>>;
        t.dot_bf16_panels = &kernels::dot_bf16_panels_block<simd::genoa_t>;
        return t;
    }();
    return table;
}

}  // namespace flatcoat
