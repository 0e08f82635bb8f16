// Shared vocabulary of the core: error type, metrics, storage codecs, and the
// only name-to-enum parsing (used by the CPU and the CUDA bindings alike).
// The core never sees Python: it takes plain pointers and sizes, writes into
// caller-owned buffers and reports bad input as flatcoat::error.
#pragma once

#include <cstddef>    // size_t
#include <cstdint>    // int64_t, uint8_t
#include <stdexcept>  // std::invalid_argument
#include <string>

namespace flatcoat {

/// Raised for input the core cannot work with; the bindings turn it into ValueError.
struct error : std::invalid_argument {
    using std::invalid_argument::invalid_argument;
};

/// How a query is compared with a stored vector. Cosine is `ip_k` over vectors
/// that the Python layer normalised; `l2_k` ranks by squared Euclidean distance.
enum class metric_t { ip_k, l2_k };

/// How stored vectors (dense rows or multi-vector tokens) are encoded. One
/// vocabulary for every kernel family, CPU and CUDA; each family documents how
/// it reads `int8_k` and throws flatcoat::error for a codec it lacks.
enum class codec_t {
    f32_k,     ///< float32, `dim` floats per vector
    f16_k,     ///< IEEE half, `dim` uint16 per vector, widened to float32 to accumulate
    int8_k,    ///< one byte per element plus per-vector parameters (dense: affine u8; MaxSim: symmetric +128)
    binary_k,  ///< sign bits, ceil(dim / 64) little-endian uint64 words per vector (dense only)
    bf16_k,    ///< bfloat16, `dim` uint16 per vector (a float32's high half), widened by a shift (dense only)
};

/// A bfloat16 element: the high 16 bits of a float32. Its own type so that the
/// kernels' per-element overloads tell it from IEEE half (also 16 bits).
struct bf16_t {
    uint16_t bits;
};

/// Parses a storage name ("f32", "f16", "int8", "binary", "bf16"); throws flatcoat::error
/// "storage: unknown 'x'; expected one of f32, f16, int8, binary, bf16" otherwise.
codec_t codec_from_name(const std::string& name);
/// The storage name of a codec ("f32", "f16", "int8", "binary", "bf16").
const char* codec_name(codec_t codec);
/// Parses a kernel metric name ("ip", "l2"); throws flatcoat::error naming `metric` otherwise.
metric_t metric_from_name(const std::string& name);
/// The name of a metric ("ip", "l2").
const char* metric_name(metric_t metric);

inline size_t binary_words(size_t dim) { return (dim + 63) / 64; }

}  // namespace flatcoat
