// Runtime instruction-set detection and the process-wide choice of kernels.
#pragma once

#include <string>
#include <vector>

namespace flatcoat {

/// Kernel families are compiled once per ISA; `isa_t` names them by CPU generation.
enum class isa_t { scalar_k = 0, haswell_k = 1, skylake_k = 2, neon_k = 3 };

const char* isa_name(isa_t isa);
/// Parses "scalar", "haswell", "skylake", "neon"; throws flatcoat::error otherwise.
isa_t isa_from_name(const std::string& name);

/// ISAs whose kernels are compiled into this build.
std::vector<isa_t> compiled_isas();
/// The best ISA that this CPU supports among the compiled ones.
isa_t detected_isa();
/// Whether the running CPU can execute `isa`'s kernels.
bool cpu_supports(isa_t isa);

/// The ISA whose kernels searches use. Chosen once: FLATCOAT_ISA if set, else detected.
isa_t active_isa();
/// Forces a level (tests, benchmarking); throws if not compiled in or unsupported by the CPU.
void set_active_isa(isa_t isa);

}  // namespace flatcoat
