// MaxSim orchestration: lays queries out as kernel panels (quantizing them for
// int8 storage), splits documents across threads, walks each document in
// token blocks that stay in L2 while every query of the batch scores them, and
// feeds per-thread, per-query top-k selectors that are merged at the end.
#include "flatcoat/maxsim_search.hpp"

#include <algorithm>  // std::min, std::max, std::sort, std::unique
#include <cmath>      // std::lround, std::fabs
#include <limits>
#include <string>
#include <vector>

#include "flatcoat/isa.hpp"
#include "flatcoat/maxsim_kernels.hpp"
#include "flatcoat/thread_pool.hpp"
#include "flatcoat/tile_emulation.hpp"
#include "flatcoat/topk.hpp"

namespace flatcoat {

namespace {

constexpr size_t block_tokens_k = 256;  // a block (128 KiB of f32 at dim 128) stays in L2 while the batch scores it
constexpr size_t query_batch_k = 32;    // queries sharing one pass over the documents
constexpr int query_code_max_k = 64;    // int8 queries: |code| <= 64 keeps vpmaddubsw's pair sums exact

/// One query in kernel layout, plus what turns its maxima into a score.
struct prepared_query_t {
    size_t tokens = 0;
    size_t panels = 0;
    std::vector<float> panel_f32;    // float path
    std::vector<int8_t> panel_i8;    // int8 path
    std::vector<int32_t> bias;       // int8 path: -128 * sum of each token's codes
    std::vector<float> factor;       // per token: weight (times the query scale for int8)
};

void check_offsets(const int64_t* offsets, size_t n, const char* what, const char* item) {
    if (offsets == nullptr) throw error(std::string(what) + " offsets are missing");
    if (offsets[0] != 0) throw error(std::string(what) + " offsets must start at 0");
    for (size_t i = 0; i < n; ++i)
        if (offsets[i + 1] <= offsets[i])
            throw error(std::string(what) + " offsets must be strictly increasing: " + item + " " +
                        std::to_string(i) + " has " + std::to_string(offsets[i + 1] - offsets[i]) + " tokens");
}

void check(const maxsim_data_t& data, const maxsim_query_t& query) {
    maxsim_codec(data.codec);
    if (data.dim == 0) throw error("dim must be positive");
    if (data.docs > 0) {
        check_offsets(data.offsets, data.docs, "document", "document");
        if (data.tokens == nullptr) throw error("document tokens are missing");
        if (data.codec == codec_t::int8_k && data.token_scales == nullptr)
            throw error("int8 storage needs its per-token scales");
    }
    if (query.nq > 0) {
        check_offsets(query.offsets, query.nq, "query", "query");
        if (query.tokens == nullptr) throw error("query tokens are missing");
    }
}

prepared_query_t prepare(const maxsim_query_t& query, size_t i, size_t dim, codec_t codec, size_t width) {
    prepared_query_t p;
    const size_t first = size_t(query.offsets[i]);
    p.tokens = size_t(query.offsets[i + 1]) - first;
    p.panels = (p.tokens + width - 1) / width;
    const float* q = query.tokens + first * dim;
    p.factor.resize(p.tokens);
    for (size_t t = 0; t < p.tokens; ++t) p.factor[t] = query.weights ? query.weights[first + t] : 1.0f;

    if (codec != codec_t::int8_k) {
        // panel v, step d, lane l = q[v * width + l][d]
        p.panel_f32.assign(p.panels * dim * width, 0.0f);
        for (size_t t = 0; t < p.tokens; ++t)
            for (size_t d = 0; d < dim; ++d) p.panel_f32[((t / width) * dim + d) * width + t % width] = q[t * dim + d];
        return p;
    }
    // Symmetric per-token quantization to [-64, 64]; the scale joins the weight.
    const size_t steps = (dim + 3) / 4;
    p.panel_i8.assign(p.panels * steps * width * 4, 0);
    p.bias.assign(p.panels * width, 0);
    for (size_t t = 0; t < p.tokens; ++t) {
        float amax = 0.0f;
        for (size_t d = 0; d < dim; ++d) amax = std::max(amax, std::fabs(q[t * dim + d]));
        const float scale = amax > 0.0f ? amax / float(query_code_max_k) : 1.0f;
        int32_t sum = 0;
        for (size_t d = 0; d < dim; ++d) {
            long code = std::lround(q[t * dim + d] / scale);
            code = std::max<long>(-query_code_max_k, std::min<long>(query_code_max_k, code));
            sum += int32_t(code);
            // panel v, step s, lane l, byte b = code of token v * width + l, dimension 4 s + b
            p.panel_i8[(((t / width) * steps + d / 4) * width + t % width) * 4 + d % 4] = int8_t(code);
        }
        p.bias[t] = -128 * sum;
        p.factor[t] *= scale;
    }
    return p;
}

/// Per-thread state: maxima for a batch of queries and a scratch block for f16.
struct scratch_t {
    std::vector<float> maxima;
    std::vector<float> decoded;
};

/// Scores one document against queries [q0, q1) of `prepared`; writes scores[i - q0].
void score_document(const maxsim_data_t& data, const maxsim_kernels_t& kernels,
                    const std::vector<prepared_query_t>& prepared, size_t q0, size_t q1, size_t doc,
                    scratch_t& scratch, double* scores) {
    const size_t dim = data.dim;
    const size_t width = kernels.width;
    size_t maxima_size = 0;
    for (size_t i = q0; i < q1; ++i) maxima_size += prepared[i].panels * width;
    scratch.maxima.assign(maxima_size, -std::numeric_limits<float>::infinity());

    const size_t begin = size_t(data.offsets[doc]), end = size_t(data.offsets[doc + 1]);
    for (size_t b = begin; b < end; b += block_tokens_k) {
        const size_t n = std::min(block_tokens_k, end - b);
        const float* rows = nullptr;
        if (data.codec == codec_t::f32_k) {
            rows = static_cast<const float*>(data.tokens) + b * dim;
        } else if (data.codec == codec_t::f16_k) {
            scratch.decoded.resize(block_tokens_k * dim);
            kernels.widen_f16(static_cast<const uint16_t*>(data.tokens) + b * dim, n * dim, scratch.decoded.data());
            rows = scratch.decoded.data();
        }
        float* maxima = scratch.maxima.data();
        for (size_t i = q0; i < q1; ++i) {
            const prepared_query_t& p = prepared[i];
            if (data.codec == codec_t::int8_k)
                kernels.max_u8(p.panel_i8.data(), p.panels, p.bias.data(),
                               static_cast<const uint8_t*>(data.tokens) + b * dim, data.token_scales + b, n, dim,
                               maxima);
            else
                kernels.max_f32(p.panel_f32.data(), p.panels, rows, n, dim, maxima);
            maxima += p.panels * width;
        }
    }
    const float* maxima = scratch.maxima.data();
    for (size_t i = q0; i < q1; ++i) {
        const prepared_query_t& p = prepared[i];
        double score = 0.0;
        for (size_t t = 0; t < p.tokens; ++t) score += double(p.factor[t]) * double(maxima[t]);
        scores[i - q0] = score;
        maxima += p.panels * width;
    }
}

std::vector<prepared_query_t> prepare_all(const maxsim_data_t& data, const maxsim_query_t& query,
                                          const maxsim_kernels_t& kernels) {
    std::vector<prepared_query_t> prepared(query.nq);
    for (size_t i = 0; i < query.nq; ++i) prepared[i] = prepare(query, i, data.dim, data.codec, kernels.width);
    return prepared;
}

/// Calls emit(query, doc, score, slot) for every document (or only those of
/// `docs_list`, ascending, when it is not null) and every query, with threads
/// splitting the documents and each batch of queries sharing a pass.
template <class emit_t>
void scan_all(const maxsim_data_t& data, const std::vector<prepared_query_t>& prepared,
              const maxsim_kernels_t& kernels, size_t slots, const std::vector<int64_t>* docs_list, emit_t&& emit) {
    const size_t n_docs = docs_list != nullptr ? docs_list->size() : data.docs;
    const size_t docs_per_task = std::max<size_t>(1, std::min<size_t>(32, n_docs / (slots * 16)));
    const size_t n_tasks = (n_docs + docs_per_task - 1) / docs_per_task;
    std::vector<scratch_t> scratch(slots);
    for (size_t q0 = 0; q0 < prepared.size(); q0 += query_batch_k) {
        const size_t q1 = std::min(prepared.size(), q0 + query_batch_k);
        parallel_for(n_tasks, slots, [&](size_t task, size_t slot) {
            double scores[query_batch_k];
            const size_t end = std::min(n_docs, (task + 1) * docs_per_task);
            for (size_t c = task * docs_per_task; c < end; ++c) {
                const size_t doc = docs_list != nullptr ? size_t((*docs_list)[c]) : c;
                score_document(data, kernels, prepared, q0, q1, doc, scratch[slot], scores);
                for (size_t i = q0; i < q1; ++i) emit(i, doc, float(scores[i - q0]), slot);
            }
        });
    }
}

}  // namespace

codec_t maxsim_codec(codec_t codec) {
    if (codec == codec_t::binary_k || codec == codec_t::bf16_k)
        throw error(std::string("storage: ") + codec_name(codec) +
                    " is not a multi-vector storage; expected one of f32, f16, int8");
    return codec;
}

subset_t normalize_subset(const int64_t* positions, const int64_t* offsets, size_t nq, size_t docs) {
    if (offsets == nullptr || offsets[0] != 0) throw error("subset: offsets must start at 0");
    if (positions == nullptr) throw error("subset: positions are missing");
    // Every offset is checked before any position is read: the last offset is the only bound the
    // caller verified against the positions' length, so a decreasing one could point past it.
    for (size_t i = 0; i < nq; ++i)
        if (offsets[i + 1] < offsets[i]) throw error("subset: offsets must be non-decreasing");
    subset_t subset;
    subset.offsets.assign(1, 0);
    for (size_t i = 0; i < nq; ++i) {
        const size_t begin = subset.positions.size();
        subset.positions.insert(subset.positions.end(), positions + offsets[i], positions + offsets[i + 1]);
        for (size_t c = begin; c < subset.positions.size(); ++c) {
            const int64_t row = subset.positions[c];
            if (row < 0 || size_t(row) >= docs)
                throw error("subset: position " + std::to_string(row) + " is outside the " + std::to_string(docs) +
                            " documents");
        }
        std::sort(subset.positions.begin() + std::ptrdiff_t(begin), subset.positions.end());
        subset.positions.erase(std::unique(subset.positions.begin() + std::ptrdiff_t(begin), subset.positions.end()),
                               subset.positions.end());
        subset.offsets.push_back(int64_t(subset.positions.size()));
        subset.longest = std::max(subset.longest, subset.positions.size() - begin);
    }
    return subset;
}

void search_maxsim(const maxsim_data_t& data, const maxsim_query_t& query, size_t k, const int64_t* subset_positions,
                   const int64_t* subset_offsets, float* out_scores, int64_t* out_ids) {
    check(data, query);
    if (k == 0) throw error("k: must be positive");
    if (data.docs > 0 && data.ids == nullptr) throw error("document ids are missing");
    for (size_t i = 0; i < query.nq * k; ++i) {
        out_scores[i] = -std::numeric_limits<float>::infinity();
        out_ids[i] = -1;
    }
    const bool restricted = subset_positions != nullptr;
    subset_t subset;
    if (restricted) subset = normalize_subset(subset_positions, subset_offsets, query.nq, data.docs);
    if (data.docs == 0 || query.nq == 0) return;

    const maxsim_kernels_t& kernels = kernels_for<maxsim_kernels_t>(active_isa());
    const std::vector<prepared_query_t> prepared = prepare_all(data, query, kernels);
    const size_t slots = std::max<size_t>(1, num_threads());
    std::vector<std::vector<topk_t>> selectors(slots, std::vector<topk_t>(query.nq, topk_t(k, data.ids)));

    const filter_t filter{query.filter.words, data.docs};
    if (!restricted) {
        // A filter is a list of the allowed documents: masked ones are never read.
        std::vector<int64_t> allowed;
        if (filter.active()) allowed = filter.positions();
        scan_all(data, prepared, kernels, slots, filter.active() ? &allowed : nullptr,
                 [&](size_t i, size_t doc, float score, size_t slot) {
            topk_t& top = selectors[slot][i];
            if (score >= top.threshold()) top.push(score, int64_t(doc));
        });
    } else {
        // Restricted: tasks are chunks of one query's subset; the query has its own pass.
        constexpr size_t chunk = 16;
        std::vector<std::pair<size_t, int64_t>> tasks;  // (query, first index into subset.positions)
        for (size_t i = 0; i < query.nq; ++i)
            for (int64_t c = subset.offsets[i]; c < subset.offsets[i + 1]; c += chunk) tasks.emplace_back(i, c);
        std::vector<scratch_t> scratch(slots);
        parallel_for(tasks.size(), slots, [&](size_t task, size_t slot) {
            const size_t i = tasks[task].first;
            topk_t& top = selectors[slot][i];
            const int64_t end = std::min(subset.offsets[i + 1], tasks[task].second + int64_t(chunk));
            for (int64_t c = tasks[task].second; c < end; ++c) {
                const int64_t doc = subset.positions[size_t(c)];
                if (!filter.allowed(size_t(doc))) continue;
                double score;
                score_document(data, kernels, prepared, i, i + 1, size_t(doc), scratch[slot], &score);
                if (float(score) >= top.threshold()) top.push(float(score), doc);
            }
        });
    }

    for (size_t i = 0; i < query.nq; ++i) {
        topk_t& merged = selectors[0][i];
        for (size_t s = 1; s < slots; ++s) merged.merge(selectors[s][i]);
        size_t r = 0;
        for (const topk_t::entry_t& e : merged.sorted()) {
            out_scores[i * k + r] = e.value;
            out_ids[i * k + r] = data.ids[e.row];
            ++r;
        }
    }
}

void maxsim_scores(const maxsim_data_t& data, const maxsim_query_t& query, float* out, bool emulate_tiles) {
    check(data, query);
    maxsim_kernels_t emulated;
    if (emulate_tiles) {
        require_tile_emulation();
#if defined(FLATCOAT_TILE_EMULATION)
        emulated = kernels_for<maxsim_kernels_t>(isa_t::genoa_k);
        emulated.max_u8 = emulated_tile_kernels().maxsim_max_u8;
#endif
    }
    if (data.docs == 0 || query.nq == 0) return;
    const maxsim_kernels_t& kernels = emulate_tiles ? emulated : kernels_for<maxsim_kernels_t>(active_isa());
    const std::vector<prepared_query_t> prepared = prepare_all(data, query, kernels);
    const size_t slots = std::max<size_t>(1, num_threads());
    scan_all(data, prepared, kernels, slots, nullptr,
             [&](size_t i, size_t doc, float score, size_t) { out[i * data.docs + doc] = score; });
}

}  // namespace flatcoat
