// Product quantizer training, encoding and the fast-scan packing (see flatcoat/pq.hpp).
#include "flatcoat/pq.hpp"

#include <algorithm>  // std::sort, std::min
#include <cmath>      // std::sqrt
#include <cstring>    // std::memset
#include <limits>
#include <random>  // std::mt19937_64
#include <vector>

#include "flatcoat/common.hpp"
#include "flatcoat/kmeans.hpp"
#include "flatcoat/thread_pool.hpp"

namespace flatcoat {

namespace {

constexpr size_t pq_train_points_k = pq4_centroids_k * 256;  // FAISS's 256 points per centroid
constexpr size_t encode_chunk_k = 256;                       // vectors per encoding task
constexpr size_t max_rounds_k = 10;                          // coordinate-descent rounds (ScaNN's kMaxRounds)

void check_pq(size_t d, size_t m) {
    if (d == 0) throw error("dim must be positive");
    if (m == 0 || d % m != 0)
        throw error("m: must divide dim (" + std::to_string(d) + "), got " + std::to_string(m));
}

/// Squared distances of sub-vector `x` (ds floats) to the 16 codewords of a
/// transposed book (`book_t[t * 16 + c]`): the loop over the codewords is
/// contiguous, so the compiler vectorises it; each sum runs over t in order.
inline void sub_distances(const float* x, const float* book_t, size_t ds, float* out) {
    for (size_t c = 0; c < pq4_centroids_k; ++c) out[c] = 0.0f;
    for (size_t t = 0; t < ds; ++t)
        for (size_t c = 0; c < pq4_centroids_k; ++c) {
            const float diff = x[t] - book_t[t * pq4_centroids_k + c];
            out[c] += diff * diff;
        }
}

/// Each sub-space's book transposed: out[(s * ds + t) * 16 + c] = books[(s * 16 + c) * ds + t].
std::vector<float> transposed_books(const float* books, size_t m, size_t ds) {
    std::vector<float> out(m * ds * pq4_centroids_k);
    for (size_t s = 0; s < m; ++s)
        for (size_t c = 0; c < pq4_centroids_k; ++c)
            for (size_t t = 0; t < ds; ++t)
                out[(s * ds + t) * pq4_centroids_k + c] = books[(s * pq4_centroids_k + c) * ds + t];
    return out;
}

inline uint8_t argmin16(const float* v) {
    uint8_t best = 0;
    for (uint8_t c = 1; c < pq4_centroids_k; ++c)
        if (v[c] < v[best]) best = c;
    return best;
}

// Anisotropic coordinate descent for one vector (see pq_encode in the header).
void encode_anisotropic(const float* x, const float* o, size_t d, const float* books_t, size_t m, float eta,
                        uint8_t* code, float* residual_norm, float* parallel) {
    const size_t ds = d / m;
    double o_sq = 0.0;
    for (size_t t = 0; t < d; ++t) o_sq += double(o[t]) * o[t];
    if (o_sq == 0.0) return;
    const float inv_norm = float(1.0 / std::sqrt(o_sq));
    // residual_norm[s][c] = |x_s - c|^2, parallel[s][c] = <x_s - c, o_s> / |o|:
    // both add up over sub-spaces to the whole error's.
    for (size_t s = 0; s < m; ++s) {
        const float* xs = x + s * ds;
        const float* os = o + s * ds;
        const float* book_t = books_t + s * ds * pq4_centroids_k;
        sub_distances(xs, book_t, ds, residual_norm + s * pq4_centroids_k);
        float* pa = parallel + s * pq4_centroids_k;
        for (size_t c = 0; c < pq4_centroids_k; ++c) pa[c] = 0.0f;
        for (size_t t = 0; t < ds; ++t)
            for (size_t c = 0; c < pq4_centroids_k; ++c) pa[c] += (xs[t] - book_t[t * pq4_centroids_k + c]) * os[t];
        for (size_t c = 0; c < pq4_centroids_k; ++c) pa[c] *= inv_norm;
    }
    float par = 0.0f;
    std::vector<size_t> order(m);
    for (size_t s = 0; s < m; ++s) {
        par += parallel[s * pq4_centroids_k + code[s]];
        order[s] = s;
    }
    std::sort(order.begin(), order.end(), [&](size_t a, size_t b) {
        const float ea = residual_norm[a * pq4_centroids_k + code[a]];
        const float eb = residual_norm[b * pq4_centroids_k + code[b]];
        return ea > eb || (ea == eb && a < b);
    });
    // cost = eta * d_par + d_perp with d_perp = d_res - d_par, i.e. (eta - 1) * d_par + d_res;
    // the 16 candidates of a sub-space are costed in one vectorisable loop.
    const float eta_minus_one = eta - 1.0f;
    float cost[pq4_centroids_k];
    for (size_t round = 0; round < max_rounds_k; ++round) {
        bool changed = false;
        for (size_t s : order) {
            const float* rn = residual_norm + s * pq4_centroids_k;
            const float* pa = parallel + s * pq4_centroids_k;
            const uint8_t old = code[s];
            const float rest = par - pa[old], par_sq = par * par, rn_old = rn[old];
            for (size_t c = 0; c < pq4_centroids_k; ++c) {
                const float moved = rest + pa[c];
                const float d_par = moved * moved - par_sq;
                const float value = eta_minus_one * d_par + (rn[c] - rn_old);
                cost[c] = d_par > 0.0f ? 0.0f : value;  // never increase the parallel error
            }
            cost[old] = 0.0f;
            int best = -1;
            float best_cost = 0.0f;
            for (size_t c = 0; c < pq4_centroids_k; ++c)
                if (cost[c] < best_cost) {
                    best_cost = cost[c];
                    best = int(c);
                }
            if (best >= 0) {
                par = rest + pa[best];
                code[s] = uint8_t(best);
                changed = true;
            }
        }
        if (!changed) break;
    }
}

}  // namespace

void pq_train(const float* x, size_t n, size_t d, size_t m, size_t iterations, uint64_t seed, float* codebooks) {
    check_pq(d, m);
    if (n < pq4_centroids_k)
        throw error("pq_train: needs at least 16 points, got " + std::to_string(n));
    const size_t ds = d / m;
    std::mt19937_64 rng(seed);
    // One sample for every sub-space (distinct points, original order).
    std::vector<size_t> rows;
    if (n > pq_train_points_k) {
        std::vector<size_t> order(n);
        for (size_t i = 0; i < n; ++i) order[i] = i;
        for (size_t i = 0; i < pq_train_points_k; ++i) {
            const uint64_t span = n - i;
            const uint64_t limit = std::numeric_limits<uint64_t>::max() - std::numeric_limits<uint64_t>::max() % span;
            uint64_t r;
            do r = rng();
            while (r >= limit);
            std::swap(order[i], order[i + size_t(r % span)]);
        }
        order.resize(pq_train_points_k);
        std::sort(order.begin(), order.end());
        rows = std::move(order);
    } else {
        rows.resize(n);
        for (size_t i = 0; i < n; ++i) rows[i] = i;
    }
    const size_t ns = rows.size();
    parallel_for(m, num_threads(), [&](size_t s, size_t) {
        std::vector<float> sub(ns * ds);
        for (size_t i = 0; i < ns; ++i)
            for (size_t t = 0; t < ds; ++t) sub[i * ds + t] = x[rows[i] * d + s * ds + t];
        kmeans_params_t params;
        params.iterations = iterations;
        params.seed = seed + 1 + s;
        params.spherical = false;
        params.max_points_per_centroid = 0;  // already sampled
        kmeans(sub.data(), ns, ds, pq4_centroids_k, params, codebooks + s * pq4_centroids_k * ds);
    });
}

void pq_encode(const float* x, size_t n, size_t d, const float* codebooks, size_t m, const float* originals,
               const float* eta, size_t eta_count, uint8_t* codes) {
    check_pq(d, m);
    if (originals != nullptr && eta == nullptr) throw error("pq_encode: originals need eta");
    if (eta != nullptr && eta_count != 1 && eta_count != n)
        throw error("pq_encode: eta must hold 1 or n (" + std::to_string(n) + ") values");
    const size_t ds = d / m;
    const std::vector<float> books_t = transposed_books(codebooks, m, ds);
    const size_t tasks = (n + encode_chunk_k - 1) / encode_chunk_k;
    parallel_for(tasks, num_threads(), [&](size_t t, size_t) {
        std::vector<float> distances(m * pq4_centroids_k), parallel(m * pq4_centroids_k);
        const size_t end = std::min(n, (t + 1) * encode_chunk_k);
        for (size_t i = t * encode_chunk_k; i < end; ++i) {
            const float* xi = x + i * d;
            uint8_t* code = codes + i * m;
            for (size_t s = 0; s < m; ++s) {
                float* dist = distances.data() + s * pq4_centroids_k;
                sub_distances(xi + s * ds, books_t.data() + s * ds * pq4_centroids_k, ds, dist);
                code[s] = argmin16(dist);
            }
            if (originals != nullptr) {
                const float e = eta[eta_count == 1 ? 0 : i];
                if (e > 0.0f)
                    encode_anisotropic(xi, originals + i * d, d, books_t.data(), m, e, code, distances.data(),
                                       parallel.data());
            }
        }
    });
}

void pq4_pack(const uint8_t* codes, size_t n, size_t m, uint8_t* packed) {
    const size_t blocks = (n + pq4_block_k - 1) / pq4_block_k;
    const size_t bytes = pq4_block_bytes(m);
    std::memset(packed, 0, blocks * bytes);
    for (size_t i = 0; i < n; ++i) {
        uint8_t* block = packed + (i / pq4_block_k) * bytes;
        const size_t v = i % pq4_block_k;
        const unsigned shift = v < 16 ? 0 : 4;
        for (size_t s = 0; s < m; ++s) block[s * 16 + v % 16] |= uint8_t((codes[i * m + s] & 0x0f) << shift);
    }
}

void pq4_unpack(const uint8_t* packed, size_t n, size_t m, uint8_t* codes) {
    const size_t bytes = pq4_block_bytes(m);
    for (size_t i = 0; i < n; ++i) {
        const uint8_t* block = packed + (i / pq4_block_k) * bytes;
        const size_t v = i % pq4_block_k;
        const unsigned shift = v < 16 ? 0 : 4;
        for (size_t s = 0; s < m; ++s) codes[i * m + s] = uint8_t((block[s * 16 + v % 16] >> shift) & 0x0f);
    }
}

}  // namespace flatcoat
