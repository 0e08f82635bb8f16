// Shared vocabulary of the core: error type, metrics, storage codecs.
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

/// How a dense vector is stored.
enum class codec_t {
    f32_k,     ///< float32, `dim` floats per row
    f16_k,     ///< IEEE half, `dim` uint16 per row, widened to float32 to accumulate
    u8_k,      ///< per-vector scalar quantization: x[j] ~ offset + scale * code[j], code in 0..255
    binary_k,  ///< sign bits, ceil(dim / 64) little-endian uint64 words per row
};

inline size_t binary_words(size_t dim) { return (dim + 63) / 64; }

}  // namespace flatcoat
