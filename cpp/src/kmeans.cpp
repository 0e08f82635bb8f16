// k-means (see flatcoat/kmeans.hpp): seeded sampling and initialisation,
// assignment through the dense kernels, per-centroid float64 means, FAISS-style
// splitting of empty clusters.
#include "flatcoat/kmeans.hpp"

#include <algorithm>  // std::min, std::sort
#include <cmath>      // std::sqrt
#include <cstring>    // std::memcpy
#include <limits>
#include <random>  // std::mt19937_64
#include <vector>

#include "flatcoat/pq.hpp"  // pq4_kernels_t: the panel scoring kernel
#include "flatcoat/isa.hpp"
#include "flatcoat/thread_pool.hpp"

namespace flatcoat {

namespace {

constexpr size_t assign_points_k = 240;      // points scored together against a centroid tile (a multiple of 12)

/// A uniform integer in [0, n) from the generator; the same on every platform
/// (std::uniform_int_distribution is not specified bit for bit).
uint64_t draw(std::mt19937_64& rng, uint64_t n) {
    // Rejection sampling removes the modulo bias.
    const uint64_t limit = std::numeric_limits<uint64_t>::max() - std::numeric_limits<uint64_t>::max() % n;
    uint64_t r;
    do r = rng();
    while (r >= limit);
    return r % n;
}

/// `count` distinct indices of [0, n) by a partial Fisher-Yates shuffle.
std::vector<size_t> distinct_indices(std::mt19937_64& rng, size_t n, size_t count) {
    std::vector<size_t> order(n);
    for (size_t i = 0; i < n; ++i) order[i] = i;
    for (size_t i = 0; i < count; ++i) std::swap(order[i], order[i + size_t(draw(rng, n - i))]);
    order.resize(count);
    return order;
}

void normalise(float* v, size_t d) {
    double sq = 0.0;
    for (size_t j = 0; j < d; ++j) sq += double(v[j]) * v[j];
    if (sq == 0.0) return;
    const float inv = float(1.0 / std::sqrt(sq));
    for (size_t j = 0; j < d; ++j) v[j] *= inv;
}

// Few dimensions (PQ sub-spaces): a direct loop beats padding each row to a vector.
void assign_small(const float* x, size_t n, size_t d, const float* c, size_t k, metric_t metric, int64_t* labels,
                  float* values) {
    const bool l2 = metric == metric_t::l2_k;
    std::vector<float> norms(k, 0.0f);
    if (l2)
        for (size_t j = 0; j < k; ++j)
            for (size_t t = 0; t < d; ++t) norms[j] += c[j * d + t] * c[j * d + t];
    for (size_t i = 0; i < n; ++i) {
        const float* xi = x + i * d;
        float best = -std::numeric_limits<float>::infinity();
        int64_t label = 0;
        for (size_t j = 0; j < k; ++j) {
            float dot = 0.0f;
            for (size_t t = 0; t < d; ++t) dot += xi[t] * c[j * d + t];
            const float value = l2 ? 2.0f * dot - norms[j] : dot;
            if (value > best) {
                best = value;
                label = int64_t(j);
            }
        }
        labels[i] = label;
        if (values) values[i] = best;
    }
}

}  // namespace

namespace {

/// Rows `ids` (or 0..k-1 when null) of `centroids` transposed into panels of P, zero-padded.
void pack_panels(const float* centroids, size_t k, size_t d, size_t P, const int64_t* ids, std::vector<float>& packed) {
    const size_t panels = (k + P - 1) / P;
    packed.assign(panels * P * d, 0.0f);
    for (size_t j = 0; j < k; ++j) {
        const float* row = centroids + size_t(ids ? ids[j] : int64_t(j)) * d;
        for (size_t t = 0; t < d; ++t) packed[(j / P) * P * d + t * P + j % P] = row[t];
    }
}

void sq_norms(const float* centroids, size_t k, size_t d, const int64_t* ids, std::vector<float>& norms) {
    norms.resize(k);
    for (size_t j = 0; j < k; ++j) {
        const float* row = centroids + size_t(ids ? ids[j] : int64_t(j)) * d;
        double sq = 0.0;
        for (size_t t = 0; t < d; ++t) sq += double(row[t]) * row[t];
        norms[j] = float(sq);
    }
}

/// The best of k packed centroids for `rows` <= assign_points_k contiguous points: label[i] is
/// ids[j] (or j when ids is null) of the best j, ties to the first; best[i] its ranking value.
void scan_panels(const pq4_kernels_t& kernels, const float* x, size_t rows, size_t d, const float* packed, size_t k,
                 const float* norms, bool l2, const int64_t* ids, float* scores, float* best, int64_t* label) {
    const size_t P = kernels.panel_width, panels = (k + P - 1) / P;
    for (size_t i = 0; i < rows; ++i) {
        best[i] = -std::numeric_limits<float>::infinity();
        label[i] = ids ? ids[0] : 0;
    }
    for (size_t p = 0; p < panels; ++p) {
        const size_t c0 = p * P, nc = std::min(P, k - c0);
        kernels.score_panel(x, rows, packed + p * P * d, d, scores, P);
        for (size_t i = 0; i < rows; ++i) {
            const float* row = scores + i * P;
            for (size_t j = 0; j < nc; ++j) {
                const float value = l2 ? 2.0f * row[j] - norms[c0 + j] : row[j];
                if (value > best[i]) {  // strict: ties keep the smaller index
                    best[i] = value;
                    label[i] = ids ? ids[c0 + j] : int64_t(c0 + j);
                }
            }
        }
    }
}

}  // namespace

void assign(const float* x, size_t n, size_t d, const float* centroids, size_t k, metric_t metric, int64_t* labels,
            float* values) {
    if (d == 0) throw error("dim must be positive");
    if (k == 0) throw error("assign: needs at least one centroid");
    if (n == 0) return;
    const size_t tasks = (n + assign_points_k - 1) / assign_points_k;
    if (d < 8) {
        parallel_for(tasks, num_threads(), [&](size_t t, size_t) {
            const size_t begin = t * assign_points_k, rows = std::min(assign_points_k, n - begin);
            assign_small(x + begin * d, rows, d, centroids, k, metric, labels + begin,
                         values ? values + begin : nullptr);
        });
        return;
    }
    const pq4_kernels_t& kernels = kernels_for<pq4_kernels_t>(active_isa());
    const bool l2 = metric == metric_t::l2_k;
    const size_t P = kernels.panel_width;
    std::vector<float> packed, norms;
    pack_panels(centroids, k, d, P, nullptr, packed);  // once per call
    if (l2) sq_norms(centroids, k, d, nullptr, norms);
    const size_t slots = std::max<size_t>(1, std::min(num_threads(), tasks));
    std::vector<std::vector<float>> buffers(slots);
    parallel_for(tasks, slots, [&](size_t t, size_t slot) {
        const size_t begin = t * assign_points_k, rows = std::min(assign_points_k, n - begin);
        std::vector<float>& scores = buffers[slot];
        scores.resize(assign_points_k * P);
        float best[assign_points_k];
        int64_t label[assign_points_k];
        scan_panels(kernels, x + begin * d, rows, d, packed.data(), k, norms.data(), l2, nullptr, scores.data(), best,
                    label);
        for (size_t i = 0; i < rows; ++i) {
            labels[begin + i] = label[i];
            if (values) values[begin + i] = best[i];
        }
    });
}

size_t default_groups(size_t k) {
    size_t g = 1;
    while (g * g < k) g *= 2;  // 2^ceil(log2(sqrt(k)))
    return g;
}

centroid_groups_t group_centroids(const float* centroids, size_t k, size_t d, size_t n_groups, uint64_t seed,
                                  metric_t metric) {
    if (k == 0 || d == 0) throw error("group_centroids: needs centroids");
    centroid_groups_t groups;
    groups.n_groups = std::max<size_t>(1, std::min(n_groups, k));
    const size_t G = groups.n_groups;
    groups.coarse.resize(G * d);
    kmeans_params_t params;
    params.iterations = 10;
    params.seed = seed;
    params.spherical = metric == metric_t::ip_k;
    kmeans(centroids, k, d, G, params, groups.coarse.data());
    std::vector<int64_t> owner(k);
    assign(centroids, k, d, groups.coarse.data(), G, metric, owner.data());
    groups.offsets.assign(G + 1, 0);
    for (size_t j = 0; j < k; ++j) ++groups.offsets[size_t(owner[j]) + 1];
    for (size_t g = 0; g < G; ++g) groups.offsets[g + 1] += groups.offsets[g];
    groups.members.resize(k);
    std::vector<int64_t> fill(groups.offsets.begin(), groups.offsets.end() - 1);
    for (size_t j = 0; j < k; ++j) groups.members[size_t(fill[size_t(owner[j])]++)] = int64_t(j);  // ascending
    return groups;
}

void assign_two_level(const float* x, size_t n, size_t d, const float* centroids, size_t k,
                      const centroid_groups_t& groups, metric_t metric, int64_t* labels) {
    if (d == 0) throw error("dim must be positive");
    if (k == 0) throw error("assign: needs at least one centroid");
    const size_t G = groups.n_groups;
    if (G == 0 || groups.coarse.size() != G * d || groups.offsets.size() != G + 1 ||
        groups.members.size() != size_t(groups.offsets[G]))
        throw error("assign_two_level: inconsistent groups");
    for (int64_t m : groups.members)
        if (m < 0 || size_t(m) >= k) throw error("assign_two_level: a group member is not a centroid index");
    if (n == 0) return;
    if (d < 8) {  // PQ sub-spaces: the flat scan is cheap
        assign(x, n, d, centroids, k, metric, labels);
        return;
    }
    std::vector<int64_t> group(n);
    assign(x, n, d, groups.coarse.data(), G, metric, group.data());
    // Points by group, in point order (a counting sort).
    std::vector<size_t> start(G + 1, 0), order(n);
    for (size_t i = 0; i < n; ++i) ++start[size_t(group[i]) + 1];
    for (size_t g = 0; g < G; ++g) start[g + 1] += start[g];
    {
        std::vector<size_t> fill(start.begin(), start.end() - 1);
        for (size_t i = 0; i < n; ++i) order[fill[size_t(group[i])]++] = i;
    }
    const pq4_kernels_t& kernels = kernels_for<pq4_kernels_t>(active_isa());
    const bool l2 = metric == metric_t::l2_k;
    const size_t P = kernels.panel_width;
    struct scratch_t {
        std::vector<float> packed, norms, rows, scores;
    };
    const size_t slots = std::max<size_t>(1, std::min(num_threads(), G));
    std::vector<scratch_t> scratch(slots);
    std::vector<uint8_t> orphan(G, 0);  // groups no centroid joined: their points are assigned exactly below
    parallel_for(G, slots, [&](size_t g, size_t slot) {
        const size_t a = start[g], b = start[g + 1];
        const size_t m0 = size_t(groups.offsets[g]), m = size_t(groups.offsets[g + 1]) - m0;
        if (a == b) return;
        if (m == 0) {
            orphan[g] = 1;
            return;
        }
        scratch_t& sc = scratch[slot];
        const int64_t* ids = groups.members.data() + m0;
        pack_panels(centroids, m, d, P, ids, sc.packed);
        if (l2) sq_norms(centroids, m, d, ids, sc.norms);
        sc.rows.resize(assign_points_k * d);
        sc.scores.resize(assign_points_k * P);
        float best[assign_points_k];
        int64_t label[assign_points_k];
        for (size_t p = a; p < b; p += assign_points_k) {
            const size_t rows = std::min(assign_points_k, b - p);
            for (size_t i = 0; i < rows; ++i)
                std::memcpy(sc.rows.data() + i * d, x + order[p + i] * d, d * sizeof(float));
            scan_panels(kernels, sc.rows.data(), rows, d, sc.packed.data(), m, sc.norms.data(), l2, ids,
                        sc.scores.data(), best, label);
            for (size_t i = 0; i < rows; ++i) labels[order[p + i]] = label[i];
        }
    });
    std::vector<size_t> rest;
    for (size_t g = 0; g < G; ++g)
        if (orphan[g])
            for (size_t p = start[g]; p < start[g + 1]; ++p) rest.push_back(order[p]);
    if (!rest.empty()) {
        std::sort(rest.begin(), rest.end());
        std::vector<float> rows(rest.size() * d);
        for (size_t i = 0; i < rest.size(); ++i) std::memcpy(&rows[i * d], x + rest[i] * d, d * sizeof(float));
        std::vector<int64_t> exact(rest.size());
        assign(rows.data(), rest.size(), d, centroids, k, metric, exact.data());
        for (size_t i = 0; i < rest.size(); ++i) labels[rest[i]] = exact[i];
    }
}

void kmeans(const float* x, size_t n, size_t d, size_t k, const kmeans_params_t& params, float* centroids) {
    if (d == 0) throw error("kmeans: dim must be positive");
    if (k == 0) throw error("kmeans: k must be positive");
    if (n < k)
        throw error("kmeans: needs at least k (" + std::to_string(k) + ") points, got " + std::to_string(n));
    std::mt19937_64 rng(params.seed);

    // The training sample, in the points' original order.
    const float* sample = x;
    size_t ns = n;
    std::vector<float> sampled;
    if (params.max_points_per_centroid != 0 && n / params.max_points_per_centroid >= k &&
        n > k * params.max_points_per_centroid) {
        ns = k * params.max_points_per_centroid;
        std::vector<size_t> chosen = distinct_indices(rng, n, ns);
        std::sort(chosen.begin(), chosen.end());
        sampled.resize(ns * d);
        for (size_t i = 0; i < ns; ++i) std::memcpy(&sampled[i * d], x + chosen[i] * d, d * sizeof(float));
        sample = sampled.data();
    }

    const std::vector<size_t> init = distinct_indices(rng, ns, k);
    for (size_t j = 0; j < k; ++j) {
        std::memcpy(centroids + j * d, sample + init[j] * d, d * sizeof(float));
        if (params.spherical) normalise(centroids + j * d, d);
    }

    const metric_t metric = params.spherical ? metric_t::ip_k : metric_t::l2_k;
    std::vector<int64_t> labels(ns);
    std::vector<size_t> sizes(k), starts(k + 1), members(ns);
    const bool two_level = params.two_level_above != 0 && k > params.two_level_above;
    for (size_t it = 0; it < params.iterations; ++it) {
        if (two_level) {
            const centroid_groups_t groups =
                group_centroids(centroids, k, d, default_groups(k), params.seed + 1 + it, metric);
            assign_two_level(sample, ns, d, centroids, k, groups, metric, labels.data());
        } else {
            assign(sample, ns, d, centroids, k, metric, labels.data());
        }

        // Members of each cluster in point order (a counting sort).
        std::fill(sizes.begin(), sizes.end(), 0);
        for (size_t i = 0; i < ns; ++i) ++sizes[size_t(labels[i])];
        starts[0] = 0;
        for (size_t j = 0; j < k; ++j) starts[j + 1] = starts[j] + sizes[j];
        {
            std::vector<size_t> fill(starts.begin(), starts.end() - 1);
            for (size_t i = 0; i < ns; ++i) members[fill[size_t(labels[i])]++] = i;
        }
        const size_t tasks = std::min<size_t>(k, 4 * num_threads());
        parallel_for(tasks, num_threads(), [&](size_t t, size_t) {
            std::vector<double> sum(d);
            for (size_t j = t; j < k; j += tasks) {
                if (sizes[j] == 0) continue;
                std::fill(sum.begin(), sum.end(), 0.0);
                for (size_t p = starts[j]; p < starts[j + 1]; ++p) {
                    const float* xi = sample + members[p] * d;
                    for (size_t c = 0; c < d; ++c) sum[c] += xi[c];
                }
                const double inv = 1.0 / double(sizes[j]);
                for (size_t c = 0; c < d; ++c) centroids[j * d + c] = float(sum[c] * inv);
            }
        });

        // Empty clusters: split a donor drawn in proportion to size - 1.
        for (size_t j = 0; j < k; ++j) {
            if (sizes[j] != 0) continue;
            uint64_t total = 0;
            for (size_t c = 0; c < k; ++c) total += sizes[c] > 1 ? sizes[c] - 1 : 0;
            if (total == 0) break;  // every cluster holds one point: nothing to split
            uint64_t r = draw(rng, total);
            size_t donor = 0;
            for (;; ++donor) {
                const uint64_t weight = sizes[donor] > 1 ? sizes[donor] - 1 : 0;
                if (r < weight) break;
                r -= weight;
            }
            float* a = centroids + j * d;
            float* b = centroids + donor * d;
            constexpr float eps = 1.0f / 1024.0f;
            for (size_t c = 0; c < d; ++c) {
                const float v = b[c];
                a[c] = c % 2 == 0 ? v * (1.0f + eps) : v * (1.0f - eps);
                b[c] = c % 2 == 0 ? v * (1.0f - eps) : v * (1.0f + eps);
            }
            sizes[j] = sizes[donor] / 2;
            sizes[donor] -= sizes[j];
        }
        if (params.spherical)
            for (size_t j = 0; j < k; ++j) normalise(centroids + j * d, d);
    }
}

}  // namespace flatcoat
