// Names of the shared enums; the one place a name becomes an enum.
#include "flatcoat/common.hpp"

namespace flatcoat {

namespace {

constexpr codec_t codecs_k[] = {codec_t::f32_k, codec_t::f16_k, codec_t::int8_k, codec_t::binary_k, codec_t::bf16_k};
constexpr metric_t metrics_k[] = {metric_t::ip_k, metric_t::l2_k};

/// `argument`: unknown 'name'; expected one of a, b, ...
template <class enum_t, size_t n>
enum_t parse(const std::string& name, const enum_t (&values)[n], const char* (*name_of)(enum_t),
             const char* argument) {
    std::string expected;
    for (enum_t value : values) {
        if (name == name_of(value)) return value;
        expected += (expected.empty() ? "" : ", ") + std::string(name_of(value));
    }
    throw error(std::string(argument) + ": unknown '" + name + "'; expected one of " + expected);
}

}  // namespace

const char* codec_name(codec_t codec) {
    switch (codec) {
        case codec_t::f32_k: return "f32";
        case codec_t::f16_k: return "f16";
        case codec_t::int8_k: return "int8";
        case codec_t::binary_k: return "binary";
        case codec_t::bf16_k: return "bf16";
    }
    return "unknown";
}

const char* metric_name(metric_t metric) {
    switch (metric) {
        case metric_t::ip_k: return "ip";
        case metric_t::l2_k: return "l2";
    }
    return "unknown";
}

codec_t codec_from_name(const std::string& name) { return parse(name, codecs_k, codec_name, "storage"); }

metric_t metric_from_name(const std::string& name) { return parse(name, metrics_k, metric_name, "metric"); }

}  // namespace flatcoat
