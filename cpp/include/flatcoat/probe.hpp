// Probes of the machine's ceilings, used by `flatcoat bench` to say how close
// the kernels come to the hardware: memory read bandwidth, float32 FMA
// throughput, int8 dot throughput and popcount throughput, each with the
// active ISA's instructions (the ones its kernels use) and on as many threads
// as asked.
#pragma once

#include <cstddef>
#include <cstdint>

#include "flatcoat/isa.hpp"

namespace flatcoat {

/// Per-ISA probe loops (cpp/src/kernels/probe/<isa>.cpp, reached through
/// kernels_for<probe_kernels_t>(isa)); each returns a value that depends on all its work so
/// the compiler cannot drop it.
struct probe_kernels_t {
    /// Sum of n floats (streams x once with independent accumulators).
    float (*read_sum)(const float* x, size_t n);
    /// `rounds` x (independent FMA chains x width) fused multiply-adds.
    float (*fma_loop)(size_t rounds, float seed);
    size_t fma_per_round;  ///< multiply-adds per round (chains x lanes)
    /// `rounds` x (chains x lanes x 4) int8 multiply-adds (u8 x s8 -> i32), with
    /// the level's dot instruction (the one its int8 kernels use).
    int64_t (*int8_loop)(size_t rounds, uint8_t seed);
    size_t int8_per_round;
    /// `rounds` x popcount_per_round words of xor + popcount + add (a Hamming
    /// distance) with the level's popcount, the one its binary kernels use;
    /// x holds popcount_input_words words.
    /// `rounds` x (chains x lanes x 2) bfloat16 products summed in float32
    /// (vdpbf16ps); null on levels without AVX512_BF16.
    float (*bf16_loop)(size_t rounds, float seed) = nullptr;
    size_t bf16_per_round = 0;
    uint64_t (*popcount_loop)(const uint64_t* x, size_t rounds);
    size_t popcount_per_round;  ///< 64-bit words per round
    size_t popcount_input_words;
};

FLATCOAT_KERNEL_FAMILY(probe_kernels_t)

/// Result of one timed probe.
struct probe_result_t {
    double seconds;  ///< wall time, every thread
    double work;     ///< bytes read, or operations (an FMA or a multiply-add counts 2)
    /// Work per second. Arithmetic probes: each thread times its rounds in 16
    /// slices on its own clock and the rate sums each thread's best slice, so
    /// a thread that another process delays does not lower the figure: the
    /// peak of `threads` cores (the units are per core). Read bandwidth: every
    /// thread reads each 64 MiB slice together (the memory is shared) and the
    /// rate is the best slice's bytes per second of wall time.
    double rate;
};

probe_result_t probe_read_bandwidth(const float* x, size_t n, size_t threads);
probe_result_t probe_fma(size_t rounds_per_thread, size_t threads);
probe_result_t probe_int8(size_t rounds_per_thread, size_t threads);
probe_result_t probe_popcount(size_t rounds_per_thread, size_t threads);
/// bfloat16 pair products (vdpbf16ps); throws flatcoat::error on a level without AVX512_BF16.
probe_result_t probe_bf16(size_t rounds_per_thread, size_t threads);

/// Top-k of each row of a (rows x n) score matrix: values and column indices,
/// best first, ties by smaller index; threads split the rows, or the columns
/// of a single row.
void select_topk(const float* scores, size_t rows, size_t n, size_t k, float* out_values, int64_t* out_indices);

}  // namespace flatcoat
