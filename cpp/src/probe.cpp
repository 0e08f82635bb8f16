// Timed ceiling probes and plain top-k selection (for `flatcoat bench`).
#include "flatcoat/probe.hpp"

#include <algorithm>  // std::min
#include <atomic>     // std::atomic
#include <chrono>     // std::chrono::steady_clock
#include <limits>     // std::numeric_limits
#include <vector>

#include "flatcoat/common.hpp"
#include "flatcoat/thread_pool.hpp"
#include "flatcoat/topk.hpp"

namespace flatcoat {

namespace {

// Keeps results alive so the optimiser cannot drop the probe loops.
std::atomic<double> g_sink{0.0};

using steady_clock_t = std::chrono::steady_clock;

double seconds_since(steady_clock_t::time_point start) {
    return std::chrono::duration<double>(steady_clock_t::now() - start).count();
}

template <class body_t>
double timed_on_threads(size_t threads, const body_t& body) {
    threads = std::max<size_t>(1, threads);
    auto start = steady_clock_t::now();
    parallel_for(threads, threads, [&](size_t task, size_t) { body(task); });
    return seconds_since(start);
}

// Slices each thread times on its own: the best one is likeliest to have had
// the core to itself on a machine that other processes share.
constexpr size_t probe_slices_k = 16;

// Runs `loop(thread, rounds)` on every thread, `rounds` in all per thread, in
// probe_slices_k slices that each thread times on its own clock. The rate sums
// each thread's best slice (see probe_result_t::rate).
template <class loop_t>
probe_result_t per_core_probe(size_t threads, size_t rounds, double work_per_round, const loop_t& loop) {
    threads = std::max<size_t>(1, threads);
    const size_t slices = std::max<size_t>(1, std::min(rounds, probe_slices_k));
    std::vector<double> best_rate(threads, 0.0);
    const double wall = timed_on_threads(threads, [&](size_t t) {
        for (size_t slice = 0; slice < slices; ++slice) {
            const size_t slice_rounds = rounds / slices + (slice < rounds % slices ? 1 : 0);
            auto start = steady_clock_t::now();
            const double result = loop(t, slice_rounds);
            const double seconds = std::max(seconds_since(start), 1e-9);  // a clock tick at least
            best_rate[t] = std::max(best_rate[t], double(slice_rounds) * work_per_round / seconds);
            g_sink.store(g_sink.load() + result);
        }
    });
    double rate = 0.0;
    for (double r : best_rate) rate += r;
    return {wall, double(rounds) * work_per_round * double(threads), rate};
}

}  // namespace

probe_result_t probe_read_bandwidth(const float* x, size_t n, size_t threads) {
    const probe_kernels_t& k = kernels_for<probe_kernels_t>(active_isa());
    // 1 MiB chunks claimed by whichever thread is free: a thread that another
    // process delays reads fewer chunks instead of holding up the end.
    constexpr size_t chunk = (1 << 20) / sizeof(float);
    // Timed in slices of 64 MiB (beyond the last-level caches), each read by
    // every thread: the rate is the best slice's, the likeliest to have had
    // the memory to itself on a shared machine.
    constexpr size_t slice = 64 * chunk;
    const size_t chunks = (n + chunk - 1) / chunk;
    threads = std::max<size_t>(1, std::min(threads, chunks));
    double seconds = 0.0, rate = 0.0;
    for (size_t slice_begin = 0, slice_end = 0; slice_begin < n; slice_begin = slice_end) {
        // The last slice takes the remainder when it is under half a slice.
        slice_end = std::min(n, slice_begin + slice);
        if (n - slice_end < slice / 2) slice_end = n;
        const size_t slice_chunks = (slice_end - slice_begin + chunk - 1) / chunk;
        auto start = steady_clock_t::now();
        parallel_for(slice_chunks, threads, [&](size_t c, size_t) {
            const size_t begin = slice_begin + c * chunk, end = std::min(slice_end, begin + chunk);
            g_sink.store(g_sink.load() + double(k.read_sum(x + begin, end - begin)));
        });
        const double slice_seconds = std::max(seconds_since(start), 1e-9);
        seconds += slice_seconds;
        rate = std::max(rate, double(slice_end - slice_begin) * sizeof(float) / slice_seconds);
    }
    return {seconds, double(n) * sizeof(float), rate};
}

probe_result_t probe_fma(size_t rounds, size_t threads) {
    const probe_kernels_t& k = kernels_for<probe_kernels_t>(active_isa());
    return per_core_probe(threads, rounds, 2.0 * double(k.fma_per_round),
                          [&](size_t t, size_t r) { return double(k.fma_loop(r, float(t) * 1e-3f)); });
}

probe_result_t probe_int8(size_t rounds, size_t threads) {
    const probe_kernels_t& k = kernels_for<probe_kernels_t>(active_isa());
    return per_core_probe(threads, rounds, 2.0 * double(k.int8_per_round),
                          [&](size_t t, size_t r) { return double(k.int8_loop(r, uint8_t(t))); });
}

probe_result_t probe_bf16(size_t rounds, size_t threads) {
    const probe_kernels_t& k = kernels_for<probe_kernels_t>(active_isa());
    if (k.bf16_loop == nullptr)
        throw error(std::string("probe_bf16: the ") + isa_name(active_isa()) +
                    " level has no bfloat16 dot instruction (AVX512_BF16: the genoa level)");
    return per_core_probe(threads, rounds, 2.0 * double(k.bf16_per_round),
                          [&](size_t t, size_t r) { return double(k.bf16_loop(r, float(t) * 1e-3f)); });
}

probe_result_t probe_popcount(size_t rounds, size_t threads) {
    const probe_kernels_t& k = kernels_for<probe_kernels_t>(active_isa());
    std::vector<uint64_t> data(k.popcount_input_words);
    for (size_t i = 0; i < data.size(); ++i) data[i] = 0x9e3779b97f4a7c15ull * (i + 1);
    return per_core_probe(threads, rounds, double(k.popcount_per_round),
                          [&](size_t, size_t r) { return double(k.popcount_loop(data.data(), r)); });
}

void select_topk(const float* scores, size_t rows, size_t n, size_t k, float* out_values, int64_t* out_indices) {
    if (k == 0) throw error("k: must be positive");
    // A single row is split into column blocks, one selector per block, merged after.
    const size_t blocks = rows == 1 ? std::max<size_t>(1, std::min(num_threads() * 4, n / 65536 + 1)) : 1;
    const size_t block = (n + blocks - 1) / blocks;
    for (size_t i = 0; i < rows * k; ++i) {
        out_values[i] = -std::numeric_limits<float>::infinity();
        out_indices[i] = -1;
    }
    std::vector<topk_t> partial(rows * blocks);
    parallel_for(rows * blocks, num_threads(), [&](size_t task, size_t) {
        const size_t r = task / blocks, b = task % blocks;
        const float* row = scores + r * n;
        topk_t top(k, nullptr);
        for (size_t j = b * block, end = std::min(n, (b + 1) * block); j < end; ++j)
            if (row[j] >= top.threshold()) top.push(row[j], int64_t(j));
        partial[task] = std::move(top);
    });
    for (size_t r = 0; r < rows; ++r) {
        topk_t& merged = partial[r * blocks];
        for (size_t b = 1; b < blocks; ++b) merged.merge(partial[r * blocks + b]);
        size_t at = 0;
        for (const topk_t::entry_t& e : merged.sorted()) {
            out_values[r * k + at] = e.value;
            out_indices[r * k + at] = e.row;
            ++at;
        }
    }
}

}  // namespace flatcoat
