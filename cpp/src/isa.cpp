// CPU detection and the process-wide kernel choice.
#include "flatcoat/isa.hpp"

#include <atomic>   // std::atomic
#include <cerrno>   // errno
#include <cstdlib>  // std::getenv
#include <cstring>  // std::strncmp, std::strerror
#include <mutex>    // std::once_flag
#include <string>

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <cpuid.h>  // __get_cpuid, __get_cpuid_count
#endif
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
    X(genoa, "avx512bf16")
// AMX, by its bit in CPUID leaf 7's EDX: __builtin_cpu_supports knows these
// names only from GCC 11 and Clang 18, and a build without the level must
// still compile on older ones.
#define FLATCOAT_X86_AMX_FEATURES_(X) X(sapphirerapids, "amx-tile", 24) X(sapphirerapids, "amx-int8", 25) \
    X(sapphirerapids, "amx-bf16", 22)

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
/// CPUID.7.0:EDX[bit], and the OS saving the tile state (XCR0 bits 17-18).
static bool cpu_has_amx(unsigned bit) {
    unsigned a, b, c, d;
    if (!__get_cpuid_count(7, 0, &a, &b, &c, &d) || !((d >> bit) & 1u)) return false;
    if (!__get_cpuid(1, &a, &b, &c, &d) || !((c >> 27) & 1u)) return false;  // OSXSAVE: xgetbv is there
    unsigned lo, hi;
    __asm__("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0u));
    return (lo & 0x60000u) == 0x60000u;
}

static bool compiled_in(isa_t isa) {
    for (isa_t c : compiled_isas())
        if (c == isa) return true;
    return false;
}

static int g_tile_grant_errno = 0;

#if defined(__x86_64__) && defined(__linux__)
// Linux hands out the tile registers' 8 KiB of state only to a process that
// asks (arch_prctl ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA; kernel 5.16 on):
// without it the first tile instruction is a SIGILL. Asked once, and only by
// a build that has the tile level (the grant makes the kernel refuse
// alternate signal stacks too small for the larger state).
static bool os_grants_tiles() {
    static const bool granted = [] {
        if (syscall(SYS_arch_prctl, 0x1023 /* ARCH_REQ_XCOMP_PERM */, 18 /* XTILEDATA */) == 0) return true;
        g_tile_grant_errno = errno;
        return false;
    }();
    return granted;
}
#else
static bool os_grants_tiles() { return false; }
#endif
#endif  // x86-64

std::vector<cpu_feature_t> cpu_features() {
    std::vector<cpu_feature_t> features;
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define FLATCOAT_X86_FEATURE_(isa, name) features.push_back({isa_t::isa##_k, name, bool(__builtin_cpu_supports(name))});
    FLATCOAT_X86_FEATURES_(FLATCOAT_X86_FEATURE_)
#undef FLATCOAT_X86_FEATURE_
    const bool tile_level = compiled_in(isa_t::sapphirerapids_k);
#define FLATCOAT_X86_AMX_FEATURE_(isa, name, bit) \
    features.push_back({isa_t::isa##_k, name, cpu_has_amx(bit) && (!tile_level || os_grants_tiles())});
    FLATCOAT_X86_AMX_FEATURES_(FLATCOAT_X86_AMX_FEATURE_)
#undef FLATCOAT_X86_AMX_FEATURE_
#elif defined(__aarch64__)
    features.push_back({isa_t::neon_k, "asimd", true});  // Advanced SIMD is mandatory on arm64
#endif
    return features;
}

/// The features `isa` needs (its own and those below) that are missing, for
/// the error that refuses it; an AMX feature the CPU has but Linux did not
/// grant says why.
static std::string missing_features(isa_t isa) {
    std::string out;
    bool own = false;
    for (const cpu_feature_t& feature : cpu_features()) {
        if (feature.isa != isa && own) break;
        own |= feature.isa == isa;
        if (feature.present) continue;
        out += (out.empty() ? "" : ", ") + std::string(feature.name);
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
        if (std::strncmp(feature.name, "amx-", 4) == 0 && g_tile_grant_errno != 0 && cpu_has_amx(24))
            out += std::string(" (Linux refused the tile state: ") + std::strerror(g_tile_grant_errno) + ")";
#endif
    }
    return out;
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
    if (!cpu_supports(isa)) {
        const std::string missing = missing_features(isa);
        throw error(std::string("ISA '") + isa_name(isa) + "' is not supported by this CPU (" +
                    (missing.empty() ? std::string("another architecture's") : "missing " + missing) +
                    "; best: " + isa_name(detected_isa()) + ")");
    }
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
