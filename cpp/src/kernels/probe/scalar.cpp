// Ceiling probes for the "scalar" level; compiled with that ISA's flags only.
#include "kernels/probe/probe.hpp"
#include "simd/scalar.hpp"

namespace flatcoat {
namespace kernels {

const probe_kernels_t& probe_kernels_scalar() {
    static const probe_kernels_t table = make_probe_kernels<simd::scalar_t>();
    return table;
}

}  // namespace kernels
}  // namespace flatcoat
