// CPU detection and the process-wide kernel choice.
#include "flatcoat/isa.hpp"

#include <atomic>   // std::atomic
#include <cstdlib>  // std::getenv
#include <cstring>  // std::strncmp
#include <mutex>    // std::once_flag

#if defined(__x86_64__) && defined(__linux__)
#include <sys/syscall.h>  // SYS_arch_prctl
#include <unistd.h>       // syscall
#endif

namespace flatcoat {

const char* isa_name(isa_t isa) {
#define FLATCOAT_ISA_NAME_CASE_(name, arg) \
    case isa_t::name##_k: return #name;
    switch (isa) { FLATCOAT_FOR_EACH_ISA(FLATCOAT_ISA_NAME_CASE_, ) }
#undef FLATCOAT_ISA_NAME_CASE_
    return "unknown";
}

std::vector<isa_t> compiled_isas() {
#define FLATCOAT_ISA_VALUE_(name, arg) isa_t::name##_k,
    return {FLATCOAT_FOR_EACH_COMPILED_ISA(FLATCOAT_ISA_VALUE_, )};
#undef FLATCOAT_ISA_VALUE_
}

static std::string compiled_isa_list() {
    std::string names;
    for (isa_t isa : compiled_isas()) names += (names.empty() ? "" : ", ") + std::string(isa_name(isa));
    return names;
}

isa_t isa_from_name(const std::string& name) {
#define FLATCOAT_ISA_FROM_NAME_(isa, arg) \
    if (name == #isa) return isa_t::isa##_k;
    FLATCOAT_FOR_EACH_ISA(FLATCOAT_ISA_FROM_NAME_, )
#undef FLATCOAT_ISA_FROM_NAME_
    throw error("unknown ISA '" + name + "': expected one of " + compiled_isa_list());
}

// The x86 levels' features, each level listing what it adds to the one below
// (the compile flags of its files in CMakeLists.txt); none implies another.
#define FLATCOAT_X86_FEATURES_(X)                                                                              \
    X(haswell, "avx2") X(haswell, "fma") X(haswell, "f16c") X(haswell, "popcnt") X(haswell, "bmi2")             \
    X(skylake, "avx512f") X(skylake, "avx512bw") X(skylake, "avx512vl") X(skylake, "avx512dq")                  \
    X(skylake, "avx512cd")                                                                                      \
    X(icelake, "avx512vnni") X(icelake, "avx512vpopcntdq") X(icelake, "avx512vbmi") X(icelake, "avx512vbmi2") \
    X(icelake, "avx512bitalg")                                                                                  \
    X(genoa, "avx512bf16")                                                                                      \
    X(sapphirerapids, "amx-tile") X(sapphirerapids, "amx-int8") X(sapphirerapids, "amx-bf16")

#if defined(__x86_64__) && defined(__linux__)
// Linux hands out the tile registers' 8 KiB of state only to a process that
// asks (arch_prctl ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA; kernel 5.16 on):
// without it the first tile instruction is a SIGILL. Asked once.
static bool os_grants_tiles() {
    static const bool granted = syscall(SYS_arch_prctl, 0x1023 /* ARCH_REQ_XCOMP_PERM */, 18 /* XTILEDATA */) == 0;
    return granted;
}
#else
static bool os_grants_tiles() { return false; }
#endif

/// Whether the OS lets this process use a feature the CPU reports (the AMX
/// ones need the permission above; __builtin_cpu_supports already checks that
/// the OS saves the vector registers' state).
static bool os_allows(const char* feature) {
    return std::strncmp(feature, "amx-", 4) != 0 || os_grants_tiles();
}

std::vector<cpu_feature_t> cpu_features() {
    std::vector<cpu_feature_t> features;
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define FLATCOAT_X86_FEATURE_(isa, name) features.push_back({isa_t::isa##_k, name, __builtin_cpu_supports(name) && os_allows(name)});
    FLATCOAT_X86_FEATURES_(FLATCOAT_X86_FEATURE_)
#undef FLATCOAT_X86_FEATURE_
#elif defined(__aarch64__)
    features.push_back({isa_t::neon_k, "asimd", true});  // Advanced SIMD is mandatory on arm64
#endif
    return features;
}

bool cpu_supports(isa_t isa) {
    if (isa == isa_t::scalar_k) return true;
    // The levels of one architecture are listed in order: `isa` needs its own
    // features (at least one, or it is another architecture's) and those before.
    bool own = false;
    for (const cpu_feature_t& feature : cpu_features()) {
        if (feature.isa != isa && own) break;  // past `isa`'s own: the levels above do not matter
        if (!feature.present) return false;
        own |= feature.isa == isa;
    }
    return own;
}

isa_t detected_isa() {
    isa_t best = isa_t::scalar_k;
    for (isa_t isa : compiled_isas())
        if (cpu_supports(isa)) best = isa;  // compiled_isas() is ordered from least to most capable
    return best;
}

static std::atomic<int> g_active{-1};
static std::once_flag g_active_once;

static void check_usable(isa_t isa) {
    bool compiled = false;
    for (isa_t c : compiled_isas()) compiled |= (c == isa);
    if (!compiled)
        throw error(std::string("ISA '") + isa_name(isa) + "' is not compiled into this build (compiled: " +
                    compiled_isa_list() + ")");
    if (!cpu_supports(isa))
        throw error(std::string("ISA '") + isa_name(isa) + "' is not supported by this CPU (best: " +
                    isa_name(detected_isa()) + ")");
}

isa_t active_isa() {
    std::call_once(g_active_once, [] {
        const char* forced = std::getenv("FLATCOAT_ISA");
        isa_t isa = detected_isa();
        if (forced != nullptr && *forced != '\0') {
            isa = isa_from_name(forced);
            check_usable(isa);
        }
        int expected = -1;
        g_active.compare_exchange_strong(expected, int(isa));
    });
    return isa_t(g_active.load());
}

void set_active_isa(isa_t isa) {
    check_usable(isa);
    active_isa();  // settle the one-time initialisation first
    g_active.store(int(isa));
}

}  // namespace flatcoat
