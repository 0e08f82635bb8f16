// Ceiling probes for the "skylake" level; compiled with that ISA's flags only.
#include "kernels/probe/probe.hpp"
#include "simd/skylake.hpp"

namespace flatcoat {
namespace kernels {

const probe_kernels_t& probe_kernels_skylake() {
    static const probe_kernels_t table = make_probe_kernels<simd::skylake_t>();
    return table;
}

}  // namespace kernels
}  // namespace flatcoat
