// Dense row encoding (see flatcoat/encode.hpp). Compiled at the baseline ISA
// with -ffp-contract=off: the int8 formula must round after every operation,
// as numpy does, so no multiply-add may be fused; and -fno-trapping-math, so
// the compiler may turn the clipping and f16 branches into vector selects
// (no result changes; FP exception flags are never read). Plain loops the
// compiler vectorises; the float64 sums and the int8 ranges use fixed
// interleaved lanes instead of relying on reassociation, so they vectorise and
// stay deterministic.
#include "flatcoat/encode.hpp"

#include <algorithm>  // std::min
#include <atomic>     // std::atomic
#include <cmath>      // std::sqrt
#include <cstring>    // std::memcpy
#include <limits>     // std::numeric_limits
#include <string>
#include <vector>

#if defined(__SSE2__)
#include <emmintrin.h>  // _mm_cmpgt_ps, _mm_movemask_ps: SSE2 is part of x86-64 itself, no dispatch needed
#endif

#include "flatcoat/dense_search.hpp"  // binarize
#include "flatcoat/thread_pool.hpp"   // parallel_for, num_threads

namespace flatcoat {

namespace {

// Rows per task: about 100-400 KiB of input at usual dims, enough to amortise
// the task hand-out, small enough to balance two to dozens of threads.
constexpr size_t block_rows_k = 256;
constexpr size_t sum_lanes_k = 8;

inline uint32_t bits_of(float value) {
    uint32_t bits;
    std::memcpy(&bits, &value, sizeof bits);
    return bits;
}

inline float float_of(uint32_t bits) {
    float value;
    std::memcpy(&value, &bits, sizeof value);
    return value;
}

bool all_finite(const float* row, size_t dim) {
    uint32_t special = 0;  // an exponent of all ones: inf or NaN
    for (size_t j = 0; j < dim; ++j) special |= uint32_t((bits_of(row[j]) & 0x7f800000u) == 0x7f800000u);
    return special == 0;
}

// Sum of squares in float64 (each square is exact), in sum_lanes_k interleaved
// partial sums combined pairwise: one fixed order whatever the thread count.
double sum_squares(const float* row, size_t dim) {
    double lanes[sum_lanes_k] = {};
    size_t j = 0;
    for (; j + sum_lanes_k <= dim; j += sum_lanes_k)
        for (size_t l = 0; l < sum_lanes_k; ++l) lanes[l] += double(row[j + l]) * double(row[j + l]);
    for (size_t l = 0; j < dim; ++j, ++l) lanes[l] += double(row[j]) * double(row[j]);
    return ((lanes[0] + lanes[1]) + (lanes[2] + lanes[3])) + ((lanes[4] + lanes[5]) + (lanes[6] + lanes[7]));
}

// Sign bits of one row, the bits binarize gives (bit j % 64 of word j / 64 is
// x[j] > 0, NaN and -0 clear): on x86-64 four at a time by compare and
// movemask (SSE2), binarize's loop of one shift per element for the rest.
// Measured on Zen 4, 1,000,000 x 384, 2 threads: the binary encode took
// 0.13-0.17 s one element at a time, 0.06-0.09 s this way (3 runs each).
void sign_bits(const float* row, size_t dim, uint64_t* words) {
    size_t j = 0;
#if defined(__SSE2__)
    const __m128 zero = _mm_setzero_ps();
    for (; j + 64 <= dim; j += 64) {
        uint64_t word = 0;
        for (size_t k = 0; k < 64; k += 4)
            word |= uint64_t(unsigned(_mm_movemask_ps(_mm_cmpgt_ps(_mm_loadu_ps(row + j + k), zero)))) << k;
        words[j / 64] = word;
    }
#endif
    if (j < dim) binarize(row + j, 1, dim - j, words + j / 64);
}

// Lowest offending row seen by any thread, per kind of error.
struct first_row_t {
    std::atomic<size_t> row{std::numeric_limits<size_t>::max()};
    void note(size_t i) {
        size_t seen = row.load();
        while (i < seen && !row.compare_exchange_weak(seen, i)) {
        }
    }
    bool any() const { return row.load() != std::numeric_limits<size_t>::max(); }
};

struct errors_t {
    first_row_t non_finite, zero, beyond_f16, beyond_bf16;
};

// Encodes one row `row` (already normalised if asked) as int8; writes the
// decoded values to `decoded` (dim floats) for the squared norm.
void encode_int8(const float* row, size_t dim, uint8_t* codes, float& scale_out, float& offset_out, float* decoded) {
    // Lane-wise minima and maxima (vectorisable, unlike one running pair); the
    // order does not matter for min and max.
    float lows[sum_lanes_k], highs[sum_lanes_k];
    for (size_t l = 0; l < sum_lanes_k; ++l) lows[l] = highs[l] = row[0];
    size_t j = 0;
    for (; j + sum_lanes_k <= dim; j += sum_lanes_k)
        for (size_t l = 0; l < sum_lanes_k; ++l) {
            lows[l] = row[j + l] < lows[l] ? row[j + l] : lows[l];
            highs[l] = row[j + l] > highs[l] ? row[j + l] : highs[l];
        }
    for (; j < dim; ++j) {
        lows[0] = row[j] < lows[0] ? row[j] : lows[0];
        highs[0] = row[j] > highs[0] ? row[j] : highs[0];
    }
    float low = lows[0], high = highs[0];
    for (size_t l = 1; l < sum_lanes_k; ++l) {
        low = lows[l] < low ? lows[l] : low;
        high = highs[l] > high ? highs[l] : high;
    }
    const float range = high - low;
    const float scale = (range > 1e-30f ? range : 1e-30f) / 255.0f;
    const float offset = low + 0.5f * scale;
    for (j = 0; j < dim; ++j) {
        const float steps = (row[j] - offset) / scale + 0.5f;
        // floor then clip to [0, 255]: below 0 is 0, from 255 on is 255, and in
        // between floor is truncation (a vector conversion, no libm call).
        const float clipped = steps < 0.0f ? 0.0f : (steps >= 255.0f ? 255.0f : steps);
        codes[j] = uint8_t(int32_t(clipped));
        decoded[j] = offset + scale * float(codes[j]);
    }
    scale_out = scale;
    offset_out = offset;
}

// f16 codes of one row; returns false if a value rounds beyond the float16 range.
bool encode_f16(const float* row, size_t dim, uint16_t* codes, float* decoded) {
    uint32_t overflow = 0;
    for (size_t j = 0; j < dim; ++j) {
        const uint16_t half = float_to_half(row[j]);
        overflow |= uint32_t((half & 0x7fffu) == 0x7c00u);
        codes[j] = half;
        decoded[j] = half_to_float(half);
    }
    return overflow == 0;
}

// bfloat16 codes of one row (nearest, ties to even: to_bfloat16); returns false
// if a value rounds to infinity (|x| above the largest bfloat16, about 3.39e38).
bool encode_bf16(const float* row, size_t dim, bf16_t* codes, float* decoded) {
    to_bfloat16(row, dim, codes);
    uint32_t overflow = 0;
    for (size_t j = 0; j < dim; ++j) {
        overflow |= uint32_t((codes[j].bits & 0x7fffu) == 0x7f80u);
        decoded[j] = float_of(uint32_t(codes[j].bits) << 16);
    }
    return overflow == 0;
}

}  // namespace

uint16_t float_to_half(float value) {
    // Round to nearest even by integer arithmetic on the bits (F. Giesen's
    // float_to_half_fast3_rtne); subnormal results round in a float addition.
    uint32_t x = bits_of(value);
    const uint32_t sign = x & 0x80000000u;
    x ^= sign;
    uint32_t half;
    if (x >= (127u + 16u) << 23) {  // |value| >= 65536, inf or NaN
        half = x > 0x7f800000u ? 0x7e00u : 0x7c00u;
    } else if (x < (127u - 14u) << 23) {  // below 2^-14: a subnormal half or zero
        const float magic = 0.5f;  // aligns the half's subnormal ulp with float's last mantissa bit
        half = bits_of(float_of(x) + magic) - bits_of(magic);
    } else {
        const uint32_t mantissa_odd = (x >> 13) & 1u;
        x += (uint32_t(15 - 127) << 23) + 0xfffu + mantissa_odd;  // rebias; carries round up
        half = x >> 13;  // 65520 and above carry into the infinity exponent
    }
    return uint16_t(half | (sign >> 16));
}

float half_to_float(uint16_t bits) {
    const uint32_t sign = uint32_t(bits & 0x8000u) << 16;
    const uint32_t magnitude = bits & 0x7fffu;
    if (magnitude >= 0x7c00u) return float_of(sign | 0x7f800000u | ((magnitude & 0x3ffu) << 13));
    // Normal and subnormal halves alike: shift into place, then rescale by
    // 2^(127 - 15), exactly (a power of two).
    return float_of(sign | bits_of(float_of(magnitude << 13) * float_of(uint32_t(127 + 127 - 15) << 23)));
}

void encode_dense(codec_t codec, const float* x, size_t n, size_t dim, bool normalize, const dense_encode_out_t& out) {
    if (dim == 0) throw error("encode_dense: dim must be positive");
    if (n == 0) return;
    if (!out.codes) throw error("encode_dense: codes output missing");
    if (codec == codec_t::int8_k && !(out.scale && out.offset)) throw error("encode_dense: int8 needs scale and offset outputs");
    if (codec == codec_t::binary_k && out.sq_norms) throw error("encode_dense: binary codes have no squared norms");

    float* const f32_codes = codec == codec_t::f32_k ? static_cast<float*>(out.codes) : nullptr;
    const size_t tasks = (n + block_rows_k - 1) / block_rows_k;
    const size_t slots = std::min(num_threads(), tasks);
    // Per thread: one decoded row (squared norms of f16 / int8), and where no
    // float output receives the normalised row, room for it (used at once).
    const bool needs_scratch = normalize && !f32_codes && !out.float_rows;
    std::vector<std::vector<float>> scratch(slots);
    errors_t errors;

    parallel_for(tasks, slots, [&](size_t task, size_t slot) {
        std::vector<float>& buffer = scratch[slot];
        if (buffer.empty()) buffer.resize(dim * (needs_scratch ? 2 : 1));
        float* decoded = buffer.data();
        const size_t begin = task * block_rows_k, end = std::min(n, begin + block_rows_k);
        for (size_t i = begin; i < end; ++i) {
            const float* row = x + i * dim;
            if (!all_finite(row, dim)) {
                errors.non_finite.note(i);
                continue;
            }
            if (normalize) {
                const double sq = sum_squares(row, dim);
                if (sq == 0.0) {
                    errors.zero.note(i);
                    continue;
                }
                float* normalised = f32_codes ? f32_codes + i * dim
                                    : out.float_rows ? out.float_rows + i * dim
                                                     : buffer.data() + dim;
                const double norm = std::sqrt(sq);
                for (size_t j = 0; j < dim; ++j) normalised[j] = float(double(row[j]) / norm);
                row = normalised;
            }
            switch (codec) {
                case codec_t::f32_k:
                    if (row != f32_codes + i * dim) std::memcpy(f32_codes + i * dim, row, dim * sizeof(float));
                    if (out.sq_norms) out.sq_norms[i] = float(sum_squares(row, dim));
                    break;
                case codec_t::f16_k:
                    if (!encode_f16(row, dim, static_cast<uint16_t*>(out.codes) + i * dim, decoded))
                        errors.beyond_f16.note(i);
                    if (out.sq_norms) out.sq_norms[i] = float(sum_squares(decoded, dim));
                    break;
                case codec_t::bf16_k:
                    if (!encode_bf16(row, dim, static_cast<bf16_t*>(out.codes) + i * dim, decoded))
                        errors.beyond_bf16.note(i);
                    if (out.sq_norms) out.sq_norms[i] = float(sum_squares(decoded, dim));
                    break;
                case codec_t::int8_k:
                    encode_int8(row, dim, static_cast<uint8_t*>(out.codes) + i * dim, out.scale[i], out.offset[i],
                                decoded);
                    if (out.sq_norms) out.sq_norms[i] = float(sum_squares(decoded, dim));
                    break;
                case codec_t::binary_k:
                    sign_bits(row, dim, static_cast<uint64_t*>(out.codes) + i * binary_words(dim));
                    break;
            }
            if (out.float_rows && row != out.float_rows + i * dim)
                std::memcpy(out.float_rows + i * dim, row, dim * sizeof(float));
            if (out.float_sq_norms) out.float_sq_norms[i] = float(sum_squares(row, dim));
        }
    });

    if (errors.non_finite.any())
        throw error("row " + std::to_string(errors.non_finite.row.load()) +
                    " contains NaN or inf (after conversion to float32); remove or fix it");
    if (errors.zero.any())
        throw error("row " + std::to_string(errors.zero.row.load()) +
                    " is all zeros and has no direction under metric='cosine'");
    if (errors.beyond_f16.any())
        throw error("row " + std::to_string(errors.beyond_f16.row.load()) +
                    " has values beyond the float16 range (|x| > 65504); use storage='f32'");
    if (errors.beyond_bf16.any())
        throw error("row " + std::to_string(errors.beyond_bf16.row.load()) +
                    " has values beyond the bfloat16 range (|x| > 3.39e38); use storage='f32'");
}

}  // namespace flatcoat
