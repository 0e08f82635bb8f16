// Ceiling probes for the "neon" level; compiled with that ISA's flags only.
#include "kernels/probe/probe.hpp"
#include "simd/neon.hpp"

namespace flatcoat {
namespace kernels {

const probe_kernels_t& probe_kernels_neon() {
    static const probe_kernels_t table = make_probe_kernels<simd::neon_t>();
    return table;
}

}  // namespace kernels
}  // namespace flatcoat
