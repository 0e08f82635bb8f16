// Helpers shared by every ISA's kernels; templated on the SIMD type so each
// ISA's translation unit gets its own instantiation (no ODR mixing of flags).
#pragma once

#include <cstddef>

namespace flatcoat {
namespace simd {

/// Loads the first n < S::width elements of p, zero elsewhere (row tails).
template <class S, class element_t>
inline typename S::vf load_partial(const element_t* p, size_t n) {
    element_t buffer[S::width] = {};
    for (size_t i = 0; i < n; ++i) buffer[i] = p[i];
    return S::load(buffer);
}

}  // namespace simd
}  // namespace flatcoat
