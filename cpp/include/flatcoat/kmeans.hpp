// k-means, the one clustering routine of the core: it trains the IVF coarse
// centroids and the product quantizer's codebooks, and any other index that
// needs centroids (the multi-vector index) reuses it.
#pragma once

#include <cstddef>  // size_t
#include <cstdint>  // int64_t, uint64_t
#include <vector>   // centroid_groups_t

#include "flatcoat/common.hpp"

namespace flatcoat {

struct kmeans_params_t {
    size_t iterations = 10;  ///< Lloyd iterations after the initialisation (0: the initial centroids)
    uint64_t seed = 0;       ///< seeds the sample, the initialisation and the empty-cluster splits
    /// Spherical k-means (for ip/cosine): assignment by the largest inner
    /// product and centroids normalised to unit length after each update.
    /// Otherwise assignment by the smallest squared distance, plain means.
    bool spherical = false;
    /// The training set is a random sample of at most k * this many points
    /// (0: every point). FAISS's default; beyond it extra points barely move
    /// the centroids and cost linear time.
    size_t max_points_per_centroid = 256;
    /// With k above this (0: never), each iteration assigns through two levels
    /// (group_centroids() then assign_two_level(), below) instead of scanning
    /// all k centroids: about 2 sqrt(k) instead of k dot products per point
    /// (at k = 2^16, 512 instead of 65,536). A point near a group boundary may
    /// join its second-nearest centroid; Lloyd's iterations still decrease
    /// the error in practice, and the result stays the same for every thread count.
    size_t two_level_above = 0;
};

/// Lloyd's k-means over `x` (n x d float32, row-major), n >= k >= 1; writes
/// the k x d centroids to `centroids`.
///
/// - Sample: when n > k * max_points_per_centroid, that many distinct points
///   drawn with std::mt19937_64(seed), kept in their original order.
/// - Initialisation: k distinct sample points drawn with the same generator.
/// - Each iteration: assignment (assign(), below, on the thread pool), then each centroid is the float64 mean of its points,
///   summed in point order (one task per centroid), so the result is the same
///   for every thread count.
/// - Empty clusters are re-seeded by splitting a donor, as FAISS does: donor j
///   drawn with probability proportional to size_j - 1, its centroid copied and
///   the pair pushed apart symmetrically (coordinates scaled by 1 +- 1/1024,
///   alternating signs); the donor's points are shared between the two.
/// Throws flatcoat::error for k == 0, d == 0 or n < k.
void kmeans(const float* x, size_t n, size_t d, size_t k, const kmeans_params_t& params, float* centroids);

/// The nearest centroid of each of the n points: metric ip, the largest inner
/// product; l2, the smallest squared distance (ranked as 2<x, c> - |c|^2);
/// ties go to the smaller centroid index. `labels` gets n entries; `values`,
/// when not null, each point's best ranking value (ip: <x, c>; l2: 2<x, c> - |c|^2).
/// Scores come from the active ISA's panel kernel (pq4_kernels_t::score_panel,
/// an outer-product GEMM over the centroids packed transposed), on the thread
/// pool; fewer than 8 dimensions (PQ sub-spaces) use a direct loop.
void assign(const float* x, size_t n, size_t d, const float* centroids, size_t k, metric_t metric, int64_t* labels,
            float* values = nullptr);

/// A two-level quantizer over k centroids: `n_groups` group centroids
/// (`coarse`, n_groups x d) and each group's member centroids,
/// members[offsets[g] .. offsets[g + 1]), ascending. Built by
/// group_centroids(); read by assign_two_level().
struct centroid_groups_t {
    size_t n_groups = 0;
    std::vector<float> coarse;      ///< n_groups x d
    std::vector<int64_t> offsets;   ///< n_groups + 1
    std::vector<int64_t> members;   ///< k centroid indices, grouped, ascending within a group
};

/// Groups the k centroids (k x d) by a seeded k-means of their own (10
/// iterations; spherical for metric ip) into `n_groups` groups, each centroid
/// in the group it is nearest to (a group may stay empty). n_groups <= k.
centroid_groups_t group_centroids(const float* centroids, size_t k, size_t d, size_t n_groups, uint64_t seed,
                                  metric_t metric);

/// The default group count of a two-level quantizer: 2^ceil(log2(sqrt(k))).
size_t default_groups(size_t k);

/// Two-level assignment: each point goes to its best group (the coarse
/// centroids, by `metric`) and takes the best centroid among that group's
/// members (ties to the smaller centroid index); a point whose group has no
/// member is assigned exactly over all k. Cost about (n_groups + k / n_groups)
/// dot products per point instead of k. Threads split the groups; the result
/// does not depend on the thread count. `labels` gets n entries.
void assign_two_level(const float* x, size_t n, size_t d, const float* centroids, size_t k,
                      const centroid_groups_t& groups, metric_t metric, int64_t* labels);

}  // namespace flatcoat
