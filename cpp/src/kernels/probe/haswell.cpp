// Ceiling probes for the "haswell" level; compiled with that ISA's flags only.
#include "kernels/probe/probe.hpp"
#include "simd/haswell.hpp"

namespace flatcoat {
namespace kernels {

const probe_kernels_t& probe_kernels_haswell() {
    static const probe_kernels_t table = make_probe_kernels<simd::haswell_t>();
    return table;
}

}  // namespace kernels
}  // namespace flatcoat
