// Ceiling probes, written once and instantiated per ISA with that level's own
// instructions, the ones its kernels issue:
//  - FMA: S::fma, vfmadd231ps on ymm (haswell) or zmm (skylake, icelake);
//  - int8: S::dpbusd, vpmaddubsw + vpmaddwd + vpaddd on haswell/skylake,
//    vpdpbusd on icelake (the int8 MaxSim kernel's dot);
//  - popcount: a popcount step chosen by the ISA file, popcnt on 64-bit words
//    by default, vpopcntq on eight words at once on icelake (the binary
//    kernel's Hamming distance).
// Each loop runs from registers with enough independent chains to cover
// latency x pipes, so it times the instruction's throughput: a kernel, which
// also loads its data, cannot beat it.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>  // std::memcpy
#include <type_traits>  // std::is_class, std::is_integral

#include "flatcoat/probe.hpp"

namespace flatcoat {
namespace kernels {

/// Independent accumulator chains: at least latency x pipes of every current
/// core (FMA: 4 cycles x 2 pipes on AVX-512 Intel and Zen 4, 5 x 2 on Haswell;
/// vpdpbusd 5 x 2), leaving registers for the operands.
template <class S>
constexpr size_t probe_chains() {
    return S::registers >= 32 ? 12 : 10;
}

/// Chains of the int8 probe, each with its own operand register. vpdpbusd has
/// its accumulator in the chain, as FMA; below icelake the chain is only the
/// vpaddd after vpmaddubsw + vpmaddwd, so 6 chains keep the pipes busy and
/// fit 16 registers with their operands. The scalar level's vector is already
/// `width` independent integer accumulators: one keeps them in registers.
template <class S>
constexpr size_t probe_int8_chains() {
    if (std::is_class<typename S::vi>::value) return 1;
    return S::registers >= 32 ? 12 : 6;
}

/// `v`, hidden from the optimiser without emitting an instruction: work on the
/// result cannot be hoisted out of a loop (each round's value is the output of
/// the previous round's asm), and it stays in a register (a plain struct, the
/// scalar level's vector, goes through memory). Not volatile, and on a local
/// copy rather than an array element, so the accumulators stay in registers.
/// Templated on S like every helper, so each ISA's instantiation is its own.
template <class S, class V>
inline V probe_opaque(V v) {
    if constexpr (std::is_class<V>::value) {
        __asm__("" : "+m"(v));
    } else if constexpr (std::is_integral<V>::value) {
        __asm__("" : "+r"(v));
    } else {
#if defined(__aarch64__)
        __asm__("" : "+w"(v));
#else
        __asm__("" : "+v"(v));
#endif
    }
    return v;
}

/// The default popcount step: __builtin_popcountll on one 64-bit word (popcnt
/// where the level's flags allow it, cnt + addv on arm64), as
/// simd::popcount_xor_words runs it.
template <class S>
struct popcount_u64_t {
    using bits_t = uint64_t;
    static constexpr size_t words = 1;
    static constexpr size_t chains = 4;  // the chain is a 1-cycle add: 4 cover the integer pipes
    static bits_t zero() { return 0; }
    static bits_t load(const uint64_t* p) { return *p; }
    static bits_t xor_popcount_add(bits_t acc, bits_t x, bits_t key) {
        return acc + uint64_t(__builtin_popcountll(x ^ key));
    }
    static uint64_t total(bits_t acc) { return acc; }
};

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

template <class S>
float probe_fma_loop(size_t rounds, float seed) {
    using vf = typename S::vf;
    constexpr size_t chains = probe_chains<S>();
    vf acc[chains];
    for (size_t c = 0; c < chains; ++c) acc[c] = S::set1(seed + float(c));
    const vf m = S::set1(0.999999f), a = S::set1(1e-7f);  // converges to 0.1: no overflow, no denormals
    for (size_t r = 0; r < rounds; ++r)
        for (size_t c = 0; c < chains; ++c) acc[c] = S::fma(acc[c], m, a);
    vf sum = acc[0];
    for (size_t c = 1; c < chains; ++c) sum = S::add(sum, acc[c]);
    return S::reduce_add(sum);
}

template <class S>
int64_t probe_int8_loop(size_t rounds, uint8_t seed) {
    using vi = typename S::vi;
    constexpr size_t chains = probe_int8_chains<S>();
    alignas(64) uint8_t u[chains][sizeof(vi)];
    alignas(64) uint8_t s[sizeof(vi)];
    for (size_t i = 0; i < sizeof u; ++i) u[i / sizeof(vi)][i % sizeof(vi)] = uint8_t(seed + i);
    for (size_t i = 0; i < sizeof s; ++i) s[i] = uint8_t((i * 7) & 0x3f);  // |s| <= 63: int16 pair sums exact
    vi acc[chains], uv[chains];
    for (size_t c = 0; c < chains; ++c) {
        acc[c] = S::zero_i();
        uv[c] = S::load_i(u[c]);  // an operand per chain: no product shared by two chains
    }
    vi sv = S::load_i(s);
    for (size_t r = 0; r < rounds; ++r) {
        // Operands known not to change would let the compiler hoist vpmaddubsw +
        // vpmaddwd out of the loop and time vpaddd alone.
        sv = probe_opaque<S>(sv);
        for (size_t c = 0; c < chains; ++c) acc[c] = S::dpbusd(acc[c], uv[c], sv);
    }
    float total = 0.0f;
    for (size_t c = 0; c < chains; ++c) total += S::reduce_add(S::to_float(acc[c]));
    return int64_t(total);
}

/// bfloat16 pairs into float32 lanes (S::dpbf16, vdpbf16ps) on probe_chains
/// chains: the instruction the genoa level's bf16 scan runs. The products are
/// 2^-10 x 2^-10 each, so the sums stay far from overflow and denormals.
template <class S>
float probe_bf16_loop(size_t rounds, float seed) {
    using vf = typename S::vf;
    constexpr size_t chains = probe_chains<S>();
    vf acc[chains];
    for (size_t c = 0; c < chains; ++c) acc[c] = S::set1(seed + float(c));
    const typename S::vbh a = S::set1_bf16(0x3a80);  // bfloat16 2^-10
    typename S::vbh b = a;
    for (size_t r = 0; r < rounds; ++r) {
        b = probe_opaque<S>(b);
        for (size_t c = 0; c < chains; ++c) acc[c] = S::dpbf16(acc[c], a, b);
    }
    vf sum = acc[0];
    for (size_t c = 1; c < chains; ++c) sum = S::add(sum, acc[c]);
    return S::reduce_add(sum);
}

/// Adds the bfloat16 probe to a level's table (levels with S::dpbf16 only).
template <class S>
void add_bf16_probe(probe_kernels_t& table) {
    table.bf16_loop = &probe_bf16_loop<S>;
    table.bf16_per_round = probe_chains<S>() * S::width * 2;  // two products per float32 lane
}

/// The tile unit's ceilings (levels with AMX): tdpbusd or tdpbf16ps into the
/// four accumulator tiles of the tile kernels' 2 x 2 block, from operand
/// tiles loaded once, so each round is four independent tile products (the
/// block the kernels issue). The int8 operands: u8 and s8 bytes of any value
/// (int32 sums wrap, the result only has to depend on the work); the bf16
/// ones 2^-10 each, far from overflow and denormals.
template <class S, class T, bool bf16>
double probe_tile_loop(size_t rounds) {
    alignas(64) uint8_t a[16 * 64], b[16 * 64];
    for (size_t i = 0; i < sizeof a; ++i) {
        a[i] = bf16 ? (i % 2 ? 0x3a : 0x80) : uint8_t(i * 13);
        b[i] = bf16 ? (i % 2 ? 0x3a : 0x80) : uint8_t(i * 7);
    }
    T::configure();
    T::template zero<0>();
    T::template zero<1>();
    T::template zero<2>();
    T::template zero<3>();
    T::template load<4>(a, 64);
    T::template load<5>(a, 64);
    T::template load<6>(b, 64);
    T::template load<7>(b, 64);
    for (size_t r = 0; r < rounds; ++r) {
        if constexpr (bf16) {
            T::template dpbf16ps<0, 4, 6>();
            T::template dpbf16ps<1, 4, 7>();
            T::template dpbf16ps<2, 5, 6>();
            T::template dpbf16ps<3, 5, 7>();
        } else {
            T::template dpbusd<0, 4, 6>();
            T::template dpbusd<1, 4, 7>();
            T::template dpbusd<2, 5, 6>();
            T::template dpbusd<3, 5, 7>();
        }
    }
    alignas(64) uint8_t c[4][16 * 64];
    T::template store<0>(c[0], 64);
    T::template store<1>(c[1], 64);
    T::template store<2>(c[2], 64);
    T::template store<3>(c[3], 64);
    T::release();
    double total = 0;
    for (size_t t = 0; t < 4; ++t)
        for (size_t i = 0; i < 16 * 16; ++i) {
            if (bf16) {
                float f;
                std::memcpy(&f, c[t] + 4 * i, 4);
                total += f;
            } else {
                int32_t v;
                std::memcpy(&v, c[t] + 4 * i, 4);
                total += v;
            }
        }
    return total;
}

template <class S, class T>
int64_t probe_tile_int8_loop(size_t rounds, uint8_t) {
    return int64_t(probe_tile_loop<S, T, false>(rounds));
}

template <class S, class T>
float probe_tile_bf16_loop(size_t rounds, float) {
    return float(probe_tile_loop<S, T, true>(rounds));
}

/// A level with tiles: its int8 and bf16 ceilings are the tile unit's (its
/// batched scans run there; the single-query scans are bound by memory).
template <class S, class T>
void add_tile_probes(probe_kernels_t& table) {
    table.int8_loop = &probe_tile_int8_loop<S, T>;
    table.int8_per_round = 4 * 16 * 16 * 64;  // four tiles of 16 x 16 lanes, 64 multiply-adds each
    table.bf16_loop = &probe_tile_bf16_loop<S, T>;
    table.bf16_per_round = 4 * 16 * 16 * 32;  // 32 bfloat16 products per lane
}

/// popcount(x[c] xor key) into P::chains accumulators, `rounds` times, the key
/// opaque each round: the xor + popcount + add of a Hamming distance, from
/// registers. x holds (P::chains + 1) x P::words words.
template <class S, class P>
uint64_t probe_popcount_loop(const uint64_t* x, size_t rounds) {
    using bits_t = typename P::bits_t;
    constexpr size_t chains = P::chains;
    bits_t acc[chains], operand[chains];
    for (size_t c = 0; c < chains; ++c) {
        acc[c] = P::zero();
        operand[c] = P::load(x + c * P::words);
    }
    bits_t key = P::load(x + chains * P::words);
    for (size_t r = 0; r < rounds; ++r) {
        key = probe_opaque<S>(key);
        for (size_t c = 0; c < chains; ++c) acc[c] = P::xor_popcount_add(acc[c], operand[c], key);
    }
    uint64_t total = 0;
    for (size_t c = 0; c < chains; ++c) total += P::total(acc[c]);
    return total;
}

/// The table for SIMD type S; `popcount_step_t` is the level's popcount
/// (default: popcnt on 64-bit words).
template <class S, class popcount_step_t = popcount_u64_t<S>>
probe_kernels_t make_probe_kernels() {
    probe_kernels_t table;
    table.read_sum = &probe_read_sum<S>;
    table.fma_loop = &probe_fma_loop<S>;
    table.fma_per_round = probe_chains<S>() * S::width;
    table.int8_loop = &probe_int8_loop<S>;
    table.int8_per_round = probe_int8_chains<S>() * sizeof(typename S::vi);  // one multiply-add per byte
    table.popcount_loop = &probe_popcount_loop<S, popcount_step_t>;
    table.popcount_per_round = popcount_step_t::chains * popcount_step_t::words;
    table.popcount_input_words = (popcount_step_t::chains + 1) * popcount_step_t::words;
    return table;
}

}  // namespace kernels
}  // namespace flatcoat
