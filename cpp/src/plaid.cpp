// PLAID search orchestration (see flatcoat/plaid.hpp): per query, the
// centroid score matrix and the probed centroids (threads split the
// centroids), the candidate union from the inverted file, centroid
// interaction and exact MaxSim on decompressed tokens (threads split the
// documents); per-thread top-k selectors merged at the end of each stage.
#include "flatcoat/plaid.hpp"

#include <algorithm>  // std::min, std::max, std::sort
#include <chrono>     // std::chrono::steady_clock: per-stage timings
#include <limits>
#include <string>
#include <vector>

#include "flatcoat/isa.hpp"
#include "flatcoat/maxsim_kernels.hpp"  // max_f32: the exact stage
#include "flatcoat/thread_pool.hpp"      // parallel_for
#include "flatcoat/topk.hpp"

namespace flatcoat {

namespace {

constexpr size_t centroid_chunk_k = 512;  // centroids per task of stage 1 (the chunk's scores stay in L2)
constexpr size_t doc_chunk_k = 64;         // documents per task of stages 2 and 3
constexpr size_t exact_chunk_k = 4;        // documents per task of stage 4
constexpr size_t block_tokens_k = 256;     // tokens decompressed at a time (128 KiB at dim 128)
constexpr float neg_inf_k = -std::numeric_limits<float>::infinity();

using clock_t_ = std::chrono::steady_clock;

double seconds_since(clock_t_::time_point t0) {
    return std::chrono::duration<double>(clock_t_::now() - t0).count();
}

void check(const plaid_index_t& index, const maxsim_query_t& query, const plaid_params_t& params) {
    if (index.dim == 0) throw error("dim must be positive");
    if (index.nbits != 1 && index.nbits != 2 && index.nbits != 4)
        throw error("nbits: must be 1, 2 or 4, got " + std::to_string(index.nbits));
    if (params.k == 0) throw error("k: must be positive");
    if (params.nprobe == 0) throw error("nprobe: must be positive");
    if (params.ndocs < params.k) throw error("ndocs: must be at least k");
    if (params.ncandidates < params.ndocs) throw error("ncandidates: must be at least ndocs");
    if (index.docs > 0) {
        if (index.n_centroids == 0 || index.centroids == nullptr || index.weights == nullptr)
            throw error("the index has documents but no centroids or weights");
        if ((index.centroid_ids == nullptr) == (index.centroid_ids16 == nullptr))
            throw error("exactly one of the int32 and uint16 centroid id arrays must be given");
        if (index.codes == nullptr || index.offsets == nullptr ||
            index.ids == nullptr || index.ivf_offsets == nullptr || index.ivf_docs == nullptr)
            throw error("index arrays are missing");
        if (index.offsets[0] != 0) throw error("document offsets must start at 0");
        for (size_t i = 0; i < index.docs; ++i)
            if (index.offsets[i + 1] <= index.offsets[i])
                throw error("document offsets must be strictly increasing: document " + std::to_string(i) +
                            " has no tokens");
        if (index.ivf_offsets[0] != 0) throw error("inverted file offsets must start at 0");
        for (size_t c = 0; c < index.n_centroids; ++c)
            if (index.ivf_offsets[c + 1] < index.ivf_offsets[c]) throw error("inverted file offsets must not decrease");
    }
    if (query.nq > 0) {
        if (query.offsets == nullptr || query.tokens == nullptr || query.offsets[0] != 0)
            throw error("query offsets must start at 0");
        for (size_t i = 0; i < query.nq; ++i)
            if (query.offsets[i + 1] <= query.offsets[i])
                throw error("query offsets must be strictly increasing: query " + std::to_string(i) + " has no tokens");
    }
}

/// Per-thread state of the document stages.
struct scratch_t {
    std::vector<float> maxima;
    std::vector<float> decoded;
    std::vector<int32_t> cids;  ///< uint16 centroid ids widened for the kernels
};

/// The centroid ids of tokens [t0, t0 + n) as int32: the stored array itself, or uint16 ids widened
/// into `buffer` (a few hundred tokens at a time: the kernels keep one signature).
const int32_t* centroid_ids_of(const plaid_index_t& index, size_t t0, size_t n, std::vector<int32_t>& buffer) {
    if (index.centroid_ids != nullptr) return index.centroid_ids + t0;
    buffer.resize(n);
    for (size_t j = 0; j < n; ++j) buffer[j] = int32_t(index.centroid_ids16[t0 + j]);
    return buffer.data();
}

/// sum over the query's tokens of factor[t] * maxima[t], in token order.
float weighted_sum(const float* maxima, const std::vector<float>& factor) {
    double score = 0.0;
    for (size_t t = 0; t < factor.size(); ++t) score += double(factor[t]) * double(maxima[t]);
    return float(score);
}

/// The best `keep` of `docs` (positions) by centroid interaction, best first.
std::vector<int64_t> interact(const plaid_index_t& index, const plaid_kernels_t& kernels, const std::vector<float>& s,
                              size_t Tp, const std::vector<float>& factor, const std::vector<int64_t>& docs,
                              size_t keep, const uint8_t* keep_centroids, size_t slots,
                              std::vector<scratch_t>& scratch) {
    std::vector<topk_t> selectors(slots, topk_t(keep, index.ids));
    const float start = keep_centroids != nullptr ? 0.0f : neg_inf_k;  // pruned tokens count as 0, as in PLAID
    const size_t n_tasks = (docs.size() + doc_chunk_k - 1) / doc_chunk_k;
    parallel_for(n_tasks, slots, [&](size_t task, size_t slot) {
        std::vector<float>& maxima = scratch[slot].maxima;
        topk_t& top = selectors[slot];
        const size_t end = std::min(docs.size(), (task + 1) * doc_chunk_k);
        for (size_t c = task * doc_chunk_k; c < end; ++c) {
            const size_t doc = size_t(docs[c]);
            const size_t t0 = size_t(index.offsets[doc]), t1 = size_t(index.offsets[doc + 1]);
            maxima.assign(Tp, start);
            kernels.centroid_max(s.data(), Tp, centroid_ids_of(index, t0, t1 - t0, scratch[slot].cids), t1 - t0,
                                 keep_centroids, maxima.data());
            const float score = weighted_sum(maxima.data(), factor);
            if (score >= top.threshold()) top.push(score, int64_t(doc));
        }
    });
    for (size_t slot = 1; slot < slots; ++slot) selectors[0].merge(selectors[slot]);
    std::vector<int64_t> out;
    for (const topk_t::entry_t& e : selectors[0].sorted()) out.push_back(e.row);
    return out;
}

}  // namespace

std::vector<float> plaid_byte_table(const float* weights, size_t dim, size_t nbits) {
    const size_t per_byte = 8 / nbits, bytes = plaid_code_bytes(dim, nbits), buckets = size_t(1) << nbits;
    std::vector<float> lut(bytes * 256 * per_byte, 0.0f);
    for (size_t b = 0; b < bytes; ++b)
        for (size_t v = 0; v < 256; ++v)
            for (size_t i = 0; i < per_byte; ++i) {
                const size_t d = b * per_byte + i;
                if (d < dim) lut[(b * 256 + v) * per_byte + i] = weights[d * buckets + ((v >> (i * nbits)) & (buckets - 1))];
            }
    return lut;
}

void search_plaid(const plaid_index_t& index, const maxsim_query_t& query, const plaid_params_t& params,
                  float* out_scores, int64_t* out_ids, plaid_stats_t* stats) {
    check(index, query, params);
    const size_t k = params.k;
    for (size_t i = 0; i < query.nq * k; ++i) {
        out_scores[i] = neg_inf_k;
        out_ids[i] = -1;
    }
    if (index.docs == 0 || query.nq == 0) return;

    const isa_t isa = active_isa();
    const plaid_kernels_t& kernels = kernels_for<plaid_kernels_t>(isa);
    const maxsim_kernels_t& maxsim = kernels_for<maxsim_kernels_t>(isa);
    const size_t width = kernels.width, dim = index.dim, C = index.n_centroids;
    const size_t slots = std::max<size_t>(1, num_threads());
    const filter_t filter{query.filter.words, index.docs};
    // A filter that leaves few documents: they are the candidates (no probing can miss them).
    const bool direct = filter.active() && filter.count() <= params.ncandidates;
    std::vector<int64_t> allowed;
    if (direct) allowed = filter.positions();

    const std::vector<float> lut = plaid_byte_table(index.weights, dim, index.nbits);
    std::vector<float> s;                 // C x Tp centroid scores
    std::vector<uint8_t> keep;            // pruning: centroids scoring >= threshold for some query token
    std::vector<uint8_t> seen(direct ? 0 : index.docs, 0);
    std::vector<scratch_t> scratch(slots);
    plaid_stats_t total;

    for (size_t i = 0; i < query.nq; ++i) {
        // The query as float panels (maxsim_kernels.hpp's layout) and its per-token factors.
        const size_t first = size_t(query.offsets[i]), T = size_t(query.offsets[i + 1]) - first;
        const size_t n_panels = (T + width - 1) / width, Tp = n_panels * width;
        std::vector<float> panels(n_panels * dim * width, 0.0f);
        const float* q = query.tokens + first * dim;
        for (size_t t = 0; t < T; ++t)
            for (size_t d = 0; d < dim; ++d) panels[((t / width) * dim + d) * width + t % width] = q[t * dim + d];
        std::vector<float> factor(T);
        for (size_t t = 0; t < T; ++t) factor[t] = query.weights ? query.weights[first + t] : 1.0f;

        // Stage 1: every centroid's scores, each token's nprobe best, the pruning mask.
        auto t0 = clock_t_::now();
        s.resize(C * Tp);
        if (params.prune) keep.assign(C, 0);
        const size_t nprobe = std::min(params.nprobe, C);
        std::vector<std::vector<topk_t>> probes(slots, std::vector<topk_t>(direct ? 0 : T, topk_t(nprobe, nullptr)));
        parallel_for((C + centroid_chunk_k - 1) / centroid_chunk_k, slots, [&](size_t task, size_t slot) {
            const size_t c0 = task * centroid_chunk_k, c1 = std::min(C, c0 + centroid_chunk_k);
            float* out = s.data() + c0 * Tp;
            kernels.centroid_scores(panels.data(), n_panels, index.centroids + c0 * dim, c1 - c0, dim, out);
            std::vector<topk_t>& top = probes[slot];
            for (size_t c = c0; c < c1; ++c) {
                const float* row = s.data() + c * Tp;
                float best = neg_inf_k;
                for (size_t t = 0; t < T; ++t) {
                    best = std::max(best, row[t]);
                    if (!direct && row[t] >= top[t].threshold()) top[t].push(row[t], int64_t(c));
                }
                if (params.prune) keep[c] = best >= params.centroid_threshold ? 1 : 0;
            }
        });
        total.seconds[0] += seconds_since(t0);

        // The candidates: the union of the probed centroids' documents, filtered, ascending.
        t0 = clock_t_::now();
        std::vector<int64_t> candidates;
        if (direct) {
            candidates = allowed;
        } else {
            for (size_t t = 0; t < T; ++t) {
                for (size_t slot = 1; slot < slots; ++slot) probes[0][t].merge(probes[slot][t]);
                for (const topk_t::entry_t& e : probes[0][t].sorted()) {
                    const size_t c = size_t(e.row);
                    for (int64_t p = index.ivf_offsets[c]; p < index.ivf_offsets[c + 1]; ++p) {
                        const size_t doc = size_t(index.ivf_docs[p]);
                        if (seen[doc] == 0 && filter.allowed(doc)) {
                            seen[doc] = 1;
                            candidates.push_back(int64_t(doc));
                        }
                    }
                }
            }
            for (int64_t doc : candidates) seen[size_t(doc)] = 0;
            std::sort(candidates.begin(), candidates.end());
        }
        total.candidates += candidates.size();
        total.seconds[1] += seconds_since(t0);

        // Stages 2 and 3: centroid interaction (pruned, then full) down to ndocs.
        t0 = clock_t_::now();
        std::vector<int64_t> finalists;
        if (params.prune) {
            std::vector<int64_t> kept = interact(index, kernels, s, Tp, factor, candidates, params.ncandidates,
                                                 keep.data(), slots, scratch);
            std::sort(kept.begin(), kept.end());  // memory order for the second pass
            finalists = interact(index, kernels, s, Tp, factor, kept, params.ndocs, nullptr, slots, scratch);
        } else if (candidates.size() > params.ndocs) {
            finalists = interact(index, kernels, s, Tp, factor, candidates, params.ndocs, nullptr, slots, scratch);
        } else {
            finalists = candidates;
        }
        std::sort(finalists.begin(), finalists.end());
        total.interacted += finalists.size();
        total.seconds[2] += seconds_since(t0);

        // Stage 4: exact MaxSim over the decompressed tokens of the finalists.
        t0 = clock_t_::now();
        const size_t code_bytes = plaid_code_bytes(dim, index.nbits);
        std::vector<topk_t> selectors(slots, topk_t(k, index.ids));
        parallel_for((finalists.size() + exact_chunk_k - 1) / exact_chunk_k, slots, [&](size_t task, size_t slot) {
            scratch_t& sc = scratch[slot];
            sc.decoded.resize(block_tokens_k * dim);
            topk_t& top = selectors[slot];
            const size_t end = std::min(finalists.size(), (task + 1) * exact_chunk_k);
            for (size_t f = task * exact_chunk_k; f < end; ++f) {
                const size_t doc = size_t(finalists[f]);
                const size_t b0 = size_t(index.offsets[doc]), b1 = size_t(index.offsets[doc + 1]);
                sc.maxima.assign(Tp, neg_inf_k);
                for (size_t b = b0; b < b1; b += block_tokens_k) {
                    const size_t n = std::min(block_tokens_k, b1 - b);
                    kernels.decompress(index.codes + b * code_bytes, centroid_ids_of(index, b, n, sc.cids), n,
                                       index.centroids,
                                       lut.data(), dim, index.nbits, index.normalize, sc.decoded.data());
                    maxsim.max_f32(panels.data(), n_panels, sc.decoded.data(), n, dim, sc.maxima.data());
                }
                const float score = weighted_sum(sc.maxima.data(), factor);
                if (score >= top.threshold()) top.push(score, int64_t(doc));
            }
        });
        for (size_t slot = 1; slot < slots; ++slot) selectors[0].merge(selectors[slot]);
        size_t r = 0;
        for (const topk_t::entry_t& e : selectors[0].sorted()) {
            out_scores[i * k + r] = e.value;
            out_ids[i * k + r] = index.ids[e.row];
            ++r;
        }
        total.scored += finalists.size();
        total.seconds[3] += seconds_since(t0);
    }
    if (stats != nullptr) *stats = total;
}

namespace {

template <class id_t>
size_t ivf_size(const id_t* cids, const int64_t* offsets, size_t n_docs, size_t n_centroids) {
    std::vector<int64_t> last(n_centroids, -1);  // the last document counted in each list
    size_t size = 0;
    for (size_t doc = 0; doc < n_docs; ++doc)
        for (int64_t j = offsets[doc]; j < offsets[doc + 1]; ++j) {
            const int64_t c = int64_t(cids[j]);
            if (c < 0 || size_t(c) >= n_centroids)
                throw error("centroid_ids: token " + std::to_string(j) + " has centroid " + std::to_string(c) +
                            ", outside [0, " + std::to_string(n_centroids) + ")");
            if (last[size_t(c)] != int64_t(doc)) {
                last[size_t(c)] = int64_t(doc);
                ++size;
            }
        }
    return size;
}

template <class id_t>
void build_ivf(const id_t* cids, const int64_t* offsets, size_t n_docs, size_t n_centroids, int64_t* ivf_offsets,
               int32_t* ivf_docs) {
    std::vector<int64_t> last(n_centroids, -1);
    std::vector<int64_t> counts(n_centroids, 0);
    for (size_t doc = 0; doc < n_docs; ++doc)
        for (int64_t j = offsets[doc]; j < offsets[doc + 1]; ++j) {
            const size_t c = size_t(cids[j]);
            if (last[c] != int64_t(doc)) {
                last[c] = int64_t(doc);
                ++counts[c];
            }
        }
    ivf_offsets[0] = 0;
    for (size_t c = 0; c < n_centroids; ++c) ivf_offsets[c + 1] = ivf_offsets[c] + counts[c];
    std::vector<int64_t> fill(ivf_offsets, ivf_offsets + n_centroids);
    std::fill(last.begin(), last.end(), -1);
    for (size_t doc = 0; doc < n_docs; ++doc)  // documents in order: every list comes out ascending
        for (int64_t j = offsets[doc]; j < offsets[doc + 1]; ++j) {
            const size_t c = size_t(cids[j]);
            if (last[c] != int64_t(doc)) {
                last[c] = int64_t(doc);
                ivf_docs[fill[c]++] = int32_t(doc);
            }
        }
}

}  // namespace

size_t plaid_ivf_size(const int32_t* cids, const int64_t* offsets, size_t n_docs, size_t n_centroids) {
    return ivf_size(cids, offsets, n_docs, n_centroids);
}
size_t plaid_ivf_size(const uint16_t* cids, const int64_t* offsets, size_t n_docs, size_t n_centroids) {
    return ivf_size(cids, offsets, n_docs, n_centroids);
}
void plaid_build_ivf(const int32_t* cids, const int64_t* offsets, size_t n_docs, size_t n_centroids,
                     int64_t* ivf_offsets, int32_t* ivf_docs) {
    build_ivf(cids, offsets, n_docs, n_centroids, ivf_offsets, ivf_docs);
}
void plaid_build_ivf(const uint16_t* cids, const int64_t* offsets, size_t n_docs, size_t n_centroids,
                     int64_t* ivf_offsets, int32_t* ivf_docs) {
    build_ivf(cids, offsets, n_docs, n_centroids, ivf_offsets, ivf_docs);
}

void plaid_encode(const float* x, size_t n, size_t dim, const float* centroids, size_t n_centroids,
                  const int64_t* labels, const float* cutoffs, size_t nbits, uint8_t* codes) {
    if (nbits != 1 && nbits != 2 && nbits != 4) throw error("nbits: must be 1, 2 or 4, got " + std::to_string(nbits));
    for (size_t j = 0; j < n; ++j)
        if (labels[j] < 0 || size_t(labels[j]) >= n_centroids)
            throw error("labels: token " + std::to_string(j) + " has centroid " + std::to_string(labels[j]) +
                        ", outside [0, " + std::to_string(n_centroids) + ")");
    const size_t cuts = (size_t(1) << nbits) - 1, bytes = plaid_code_bytes(dim, nbits), per_byte = 8 / nbits;
    constexpr size_t tokens_per_task = 1024;
    parallel_for((n + tokens_per_task - 1) / tokens_per_task, num_threads(), [&](size_t task, size_t) {
        std::vector<uint8_t> code(bytes * per_byte);
        const size_t end = std::min(n, (task + 1) * tokens_per_task);
        for (size_t j = task * tokens_per_task; j < end; ++j) {
            const float* xj = x + j * dim;
            const float* c = centroids + size_t(labels[j]) * dim;
            std::fill(code.begin(), code.end(), uint8_t(0));
            for (size_t d = 0; d < dim; ++d) {
                const float r = xj[d] - c[d];
                const float* cut = cutoffs + d * cuts;
                uint8_t v = 0;
                for (size_t i = 0; i < cuts; ++i) v += r > cut[i] ? 1 : 0;
                code[d] = v;
            }
            uint8_t* out = codes + j * bytes;
            for (size_t b = 0; b < bytes; ++b) {
                uint8_t packed = 0;
                for (size_t i = 0; i < per_byte; ++i) packed |= uint8_t(code[b * per_byte + i] << (i * nbits));
                out[b] = packed;
            }
        }
    });
}

void plaid_decompress(const uint8_t* codes, const int32_t* cids, size_t n, const float* centroids,
                      size_t n_centroids, const float* weights, size_t dim, size_t nbits, bool normalize,
                      float* out) {
    if (nbits != 1 && nbits != 2 && nbits != 4) throw error("nbits: must be 1, 2 or 4, got " + std::to_string(nbits));
    for (size_t j = 0; j < n; ++j)
        if (cids[j] < 0 || size_t(cids[j]) >= n_centroids)
            throw error("centroid_ids: token " + std::to_string(j) + " has centroid " + std::to_string(cids[j]) +
                        ", outside [0, " + std::to_string(n_centroids) + ")");
    const std::vector<float> lut = plaid_byte_table(weights, dim, nbits);
    kernels_for<plaid_kernels_t>(active_isa()).decompress(codes, cids, n, centroids, lut.data(), dim, nbits, normalize,
                                                              out);
}

}  // namespace flatcoat
