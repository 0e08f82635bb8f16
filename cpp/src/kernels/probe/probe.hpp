// Ceiling probes, written once over the SIMD types and instantiated per ISA.
// Each loop keeps enough independent chains in registers to cover the
// instruction latency, so it runs at the core's throughput, not its latency.
#pragma once

#include <cstddef>
#include <cstdint>

#include "flatcoat/probe.hpp"

namespace flatcoat {
namespace kernels {

template <class S>
float probe_read_sum(const float* x, size_t n) {
    using vf = typename S::vf;
    vf a0 = S::zero(), a1 = S::zero(), a2 = S::zero(), a3 = S::zero();
    size_t i = 0;
    for (; i + 4 * S::width <= n; i += 4 * S::width) {
        a0 = S::add(a0, S::load(x + i));
        a1 = S::add(a1, S::load(x + i + S::width));
        a2 = S::add(a2, S::load(x + i + 2 * S::width));
        a3 = S::add(a3, S::load(x + i + 3 * S::width));
    }
    float sum = S::reduce_add(S::add(S::add(a0, a1), S::add(a2, a3)));
    for (; i < n; ++i) sum += x[i];
    return sum;
}

constexpr size_t probe_chains_k = 10;  // > FMA latency (4-5 cycles) x FMA pipes (2)

template <class S>
float probe_fma_loop(size_t rounds, float seed) {
    using vf = typename S::vf;
    vf acc[probe_chains_k];
    for (size_t c = 0; c < probe_chains_k; ++c) acc[c] = S::set1(seed + float(c));
    const vf m = S::set1(0.999999f), a = S::set1(1e-7f);
    for (size_t r = 0; r < rounds; ++r)
        for (size_t c = 0; c < probe_chains_k; ++c) acc[c] = S::fma(acc[c], m, a);
    vf sum = acc[0];
    for (size_t c = 1; c < probe_chains_k; ++c) sum = S::add(sum, acc[c]);
    return S::reduce_add(sum);
}

template <class S>
int64_t probe_int8_loop(size_t rounds, uint8_t seed) {
    using vi = typename S::vi;
    alignas(64) uint8_t u[64 * 4], s[64 * 4];
    for (size_t i = 0; i < sizeof u; ++i) {
        u[i] = uint8_t(seed + i);
        s[i] = uint8_t((i * 7) & 0x3f);  // |s| <= 63 keeps the int16 pair sums exact
    }
    vi acc[probe_chains_k];
    for (size_t c = 0; c < probe_chains_k; ++c) acc[c] = S::zero_i();
    const vi uv = S::load_i(u), sv = S::load_i(s);
    for (size_t r = 0; r < rounds; ++r)
        for (size_t c = 0; c < probe_chains_k; ++c) acc[c] = S::dpbusd(acc[c], uv, sv);
    float total = 0.0f;
    for (size_t c = 0; c < probe_chains_k; ++c) total += S::reduce_add(S::to_float(acc[c]));
    return int64_t(total);
}

template <class S>
uint64_t probe_popcount_loop(const uint64_t* x, size_t words, size_t rounds) {
    uint64_t c0 = 0, c1 = 0, c2 = 0, c3 = 0;
    for (size_t r = 0; r < rounds; ++r) {
        size_t w = 0;
        for (; w + 4 <= words; w += 4) {
            c0 += uint64_t(__builtin_popcountll(x[w] ^ r));
            c1 += uint64_t(__builtin_popcountll(x[w + 1] ^ r));
            c2 += uint64_t(__builtin_popcountll(x[w + 2] ^ r));
            c3 += uint64_t(__builtin_popcountll(x[w + 3] ^ r));
        }
        for (; w < words; ++w) c0 += uint64_t(__builtin_popcountll(x[w] ^ r));
    }
    return c0 + c1 + c2 + c3;
}

template <class S>
probe_kernels_t make_probe_kernels() {
    probe_kernels_t table;
    table.read_sum = &probe_read_sum<S>;
    table.fma_loop = &probe_fma_loop<S>;
    table.fma_per_round = probe_chains_k * S::width;
    table.int8_loop = &probe_int8_loop<S>;
    table.int8_per_round = probe_chains_k * S::width * 4;
    table.popcount_loop = &probe_popcount_loop<S>;
    return table;
}

}  // namespace kernels
}  // namespace flatcoat
