// IVF search (see flatcoat/ivf_search.hpp): coarse step, probes grouped by
// list, one task per probed list on the thread pool, per-thread per-query
// top-k selectors merged at the end, then the optional exact re-ranking.
#include "flatcoat/ivf_search.hpp"

#include <algorithm>  // std::min, std::max, std::nth_element, std::sort
#include <limits>
#include <string>
#include <vector>

#include "flatcoat/dense_kernels.hpp"
#include "flatcoat/dense_search.hpp"  // prepare_queries, reported_score
#include "flatcoat/filter.hpp"
#include "flatcoat/isa.hpp"
#include "flatcoat/pq.hpp"
#include "flatcoat/thread_pool.hpp"
#include "flatcoat/topk.hpp"

namespace flatcoat {

namespace {

constexpr size_t query_block_k = 4096;  // queries per pass (bounds the selectors' memory)
constexpr size_t coarse_queries_k = 256;    // queries scored together in the coarse step
constexpr size_t coarse_centroids_k = 128;  // centroids per coarse task (192 KiB at 384 dims: stays in L2)
constexpr size_t lut_queries_k = 64;     // queries per table-building task
constexpr size_t scan_blocks_k = 32;     // pq4 blocks summed before their candidates are looked at
constexpr size_t scan_chunk_bytes_k = 24 * 1024;  // codes scanned by every query of a list in turn (L1)
constexpr size_t row_tile_k = 512;       // rows of a dense list scored at once
// The filtered search's cost estimate (brute_force_cheaper), in multiply-adds of streamed float32,
// measured at 200,000 x 384 (pq4 m = 192, 894 lists): a fast-scanned pq4 slot about 10 ns
// (0.375 per sub-quantizer), a streamed float 0.135 ns, a float of a scattered row (or of a
// slot scored on its own from its codes) about 0.33 ns.
constexpr double pq4_slot_cost_k = 0.375;      // per sub-quantizer of a fast-scanned pq4 slot
constexpr double scattered_row_cost_k = 2.5;   // per element of a scattered row

size_t row_bytes(codec_t codec, size_t dim) {
    switch (codec) {
        case codec_t::f32_k: return dim * sizeof(float);
        case codec_t::f16_k: return dim * sizeof(uint16_t);
        case codec_t::int8_k: return dim;
        case codec_t::binary_k: return binary_words(dim) * sizeof(uint64_t);
        case codec_t::bf16_k: return dim * sizeof(uint16_t);  // refused by check()
    }
    return 0;
}

void check(const ivf_data_t& data, const ivf_query_t& query) {
    if (data.dim == 0) throw error("dim must be positive");
    if (data.nlist == 0 || data.centroids == nullptr) throw error("centroids: the index has no lists (train it first)");
    if (data.list_offsets == nullptr) throw error("list_offsets are missing");
    if (query.k == 0) throw error("k: must be positive");
    if (query.nprobe == 0) throw error("nprobe: must be positive");
    if (query.nq > 0 && query.queries == nullptr) throw error("queries are missing");
    if (data.list_offsets[0] != 0) throw error("list_offsets: must start at 0");
    for (size_t l = 0; l < data.nlist; ++l) {
        const int64_t size = data.list_offsets[l + 1] - data.list_offsets[l];
        if (size < 0) throw error("list_offsets: must not decrease (list " + std::to_string(l) + ")");
        if (data.pq4 && size % int64_t(pq4_block_k) != 0)
            throw error("list_offsets: pq4 list " + std::to_string(l) + " holds " + std::to_string(size) +
                        " slots, not a multiple of 32");
    }
    if (size_t(data.list_offsets[data.nlist]) != data.total_slots)
        throw error("list_offsets: must end at the number of slots (" + std::to_string(data.total_slots) + "), got " +
                    std::to_string(data.list_offsets[data.nlist]));
    if (data.total_slots > 0 && (data.codes == nullptr || data.slot_ids == nullptr))
        throw error("codes and slot_ids are missing");
    if (data.pq4) {
        if (data.m == 0 || data.dim % data.m != 0) throw error("codebooks: m must divide dim");
        if (data.codebooks == nullptr) throw error("codebooks are missing");
    } else {
        if (data.codec == codec_t::bf16_k) throw error("storage: bf16 is not an IVF list storage; use f16");
        if (data.codec == codec_t::int8_k && data.total_slots > 0 && (data.scale == nullptr || data.offset == nullptr))
            throw error("int8 lists need the slots' scales and offsets");
        if (query.metric == metric_t::l2_k && data.codec != codec_t::binary_k && data.total_slots > 0 &&
            data.sq_norms == nullptr)
            throw error("l2 search needs the slots' squared norms");
    }
    if (query.rerank != 0) {
        if (query.rerank < query.k) throw error("rerank: must be at least k");
        if (data.float_rows == nullptr || data.slot_rows == nullptr)
            throw error("rerank: needs the float32 copy and slot_rows (build the index with keep_float=True)");
        if (query.metric == metric_t::l2_k && data.float_sq_norms == nullptr)
            throw error("rerank: l2 re-ranking needs the float copy's squared norms");
    }
}

/// Quantizes an m x 16 float table (higher is better) to u8 (see search_ivf in
/// the header). Returns the table's base (sum of the minima) and writes 1 / a.
float quantize_table(const float* table, size_t m, uint8_t* lut, float* scale_out, float* inv_scale_out) {
    float max_span = 0.0f;
    double sum_span = 0.0, sum_min = 0.0;
    for (size_t s = 0; s < m; ++s) {
        const float* row = table + s * pq4_centroids_k;
        float lo = row[0], hi = row[0];
        for (size_t c = 1; c < pq4_centroids_k; ++c) {
            lo = std::min(lo, row[c]);
            hi = std::max(hi, row[c]);
        }
        max_span = std::max(max_span, hi - lo);
        sum_span += double(hi - lo);
        sum_min += double(lo);
    }
    // Rounding adds at most 1/2 per sub-space: keep the rounded sum <= 65535.
    float a = 1.0f;
    if (max_span > 0.0f) a = float(std::min(255.0 / double(max_span), (65535.0 - 0.5 * double(m)) / sum_span));
    for (size_t s = 0; s < m; ++s) {
        const float* row = table + s * pq4_centroids_k;
        float lo = row[0];
        for (size_t c = 1; c < pq4_centroids_k; ++c) lo = std::min(lo, row[c]);
        for (size_t c = 0; c < pq4_centroids_k; ++c) {
            // (row - lo) * a + 0.5 >= 0: truncation is the floor (no libm call at the baseline ISA).
            const int v = int((row[c] - lo) * a + 0.5f);
            lut[s * pq4_centroids_k + c] = uint8_t(v < 0 ? 0 : v > 255 ? 255 : v);
        }
    }
    *scale_out = a;
    *inv_scale_out = 1.0f / a;
    return float(sum_min);
}

/// Each sub-space's codebook transposed, books_t[(s * ds + t) * 16 + c], so
/// that the table loops below run over the 16 codewords contiguously (the
/// compiler vectorises them).
std::vector<float> transpose_books(const float* books, size_t dim, size_t m) {
    const size_t ds = dim / m;
    std::vector<float> out(dim * pq4_centroids_k);
    for (size_t s = 0; s < m; ++s)
        for (size_t c = 0; c < pq4_centroids_k; ++c)
            for (size_t t = 0; t < ds; ++t)
                out[(s * ds + t) * pq4_centroids_k + c] = books[(s * pq4_centroids_k + c) * ds + t];
    return out;
}

/// ip table of one query: T[s][c] = <q_s, codebook[s][c]>.
void ip_table(const float* q, const float* books_t, size_t dim, size_t m, float* table) {
    const size_t ds = dim / m;
    for (size_t s = 0; s < m; ++s) {
        float* row = table + s * pq4_centroids_k;
        for (size_t c = 0; c < pq4_centroids_k; ++c) row[c] = 0.0f;
        for (size_t t = 0; t < ds; ++t) {
            const float qt = q[s * ds + t];
            const float* w = books_t + (s * ds + t) * pq4_centroids_k;
            for (size_t c = 0; c < pq4_centroids_k; ++c) row[c] += qt * w[c];
        }
    }
}

/// l2 table of one query for one list: T[s][c] = -|r_s - codebook[s][c]|^2 with r = q - centroid.
void l2_table(const float* r, const float* books_t, size_t dim, size_t m, float* table) {
    const size_t ds = dim / m;
    for (size_t s = 0; s < m; ++s) {
        float* row = table + s * pq4_centroids_k;
        for (size_t c = 0; c < pq4_centroids_k; ++c) row[c] = 0.0f;
        for (size_t t = 0; t < ds; ++t) {
            const float rt = r[s * ds + t];
            const float* w = books_t + (s * ds + t) * pq4_centroids_k;
            for (size_t c = 0; c < pq4_centroids_k; ++c) {
                const float diff = rt - w[c];
                row[c] -= diff * diff;
            }
        }
    }
}

struct scratch_t {
    std::vector<uint16_t> sums;
    std::vector<uint32_t> masks;
    std::vector<const uint8_t*> probe_luts;  // per query of the list: its table, scale, 1 / scale, base
    std::vector<float> probe_scale, probe_inv, probe_base;
    std::vector<float> table, residual, queries, scores;
    std::vector<uint8_t> lut;
    std::vector<uint64_t> bits;
    std::vector<uint32_t> distances;
};

/// The cost estimate that picks brute force for a filtered search (see
/// ivf_query_t::filter), per query, in float32 multiply-adds over streamed
/// rows. Probing: the coarse step (nlist x dim), the slots of the lists it
/// scans, for an uncorrelated filter need x total_slots / allowed of them at
/// the codec's cost per slot, and the re-ranking of `rerank` scattered float
/// rows. Brute force: every allowed slot, a scattered float row each with the
/// float copy, else its codes.
bool brute_force_cheaper(const ivf_data_t& data, const ivf_query_t& query, size_t need,
                         size_t allowed) {
    const double dim = double(data.dim), slots = double(data.total_slots);
    const bool exact = data.float_rows != nullptr && data.slot_rows != nullptr;
    double per_slot = dim;  // a dense list row, streamed
    if (data.pq4) per_slot = pq4_slot_cost_k * double(data.m);
    else if (data.codec == codec_t::binary_k) per_slot = double(binary_words(data.dim));
    const double scanned = std::min(slots, double(need) * slots / double(allowed));
    const double probe = double(data.nlist) * dim + scanned * per_slot +
                         (query.rerank != 0 ? double(query.rerank) * dim * scattered_row_cost_k : 0.0);
    const double each = (exact || data.pq4 ? dim : per_slot) * scattered_row_cost_k;
    return double(allowed) * each < probe;
}

/// The allowed live slots of a filtered search, ascending, with their lists.
struct allowed_slots_t {
    std::vector<int64_t> slots;
    std::vector<uint32_t> lists;
};

/// Brute force over the allowed slots (see ivf_query_t::filter): with the
/// float copy the exact top-k by float32 dot products on the slots' rows;
/// without it each slot scored from its list codes (dense codecs: the list
/// scan's very values; pq4: ip from the query's float table plus <q,
/// centroid>, l2 as -|q - decoded|^2). Writes the results like search_ivf.
void search_allowed(const ivf_data_t& data, const ivf_query_t& query, const allowed_slots_t& allowed,
                    const std::vector<float>& books_t, float* out_scores, int64_t* out_ids) {
    const size_t dim = data.dim, k = query.k, m = data.m;
    const bool l2 = query.metric == metric_t::l2_k;
    const bool exact = data.float_rows != nullptr && data.slot_rows != nullptr;
    const bool binary = !data.pq4 && data.codec == codec_t::binary_k;
    const isa_t isa = active_isa();
    const dense_kernels_t& dense = kernels_for<dense_kernels_t>(isa);
    const size_t threads = num_threads();
    const size_t words = binary_words(dim);
    const size_t stored = data.pq4 ? 0 : row_bytes(data.codec, dim);
    const size_t n = allowed.slots.size();
    constexpr size_t chunk = 1024;  // allowed slots per task
    const size_t chunks = (n + chunk - 1) / chunk;

    for (size_t q0 = 0; q0 < query.nq; q0 += query_block_k) {
        const size_t nq = std::min(query_block_k, query.nq - q0);
        const float* queries = query.queries + q0 * dim;
        std::vector<float> query_sums, tables;
        std::vector<uint64_t> query_bits;
        if (!exact && !data.pq4) prepare_queries(data.codec, queries, nq, dim, query_sums, query_bits);
        if (!exact && data.pq4 && !l2) {
            tables.resize(nq * m * pq4_centroids_k);
            parallel_for(nq, threads, [&](size_t i, size_t) {
                ip_table(queries + i * dim, books_t.data(), dim, m, tables.data() + i * m * pq4_centroids_k);
            });
        }
        const size_t slots = std::max<size_t>(1, std::min(threads, nq * chunks));
        std::vector<std::vector<topk_t>> selectors(slots, std::vector<topk_t>(nq, topk_t(k, data.slot_ids)));
        std::vector<std::vector<float>> decoded(slots);
        parallel_for(nq * chunks, slots, [&](size_t task, size_t slot) {
            const size_t i = task / chunks, c0 = (task % chunks) * chunk, c1 = std::min(n, c0 + chunk);
            const float* qi = queries + i * dim;
            topk_t& top = selectors[slot][i];
            std::vector<float>& x = decoded[slot];
            size_t bias_list = data.nlist;
            float bias = 0.0f;
            for (size_t c = c0; c < c1; ++c) {
                const size_t s = size_t(allowed.slots[c]);
                float value;
                if (exact) {
                    const int64_t row = data.slot_rows[s];
                    if (row < 0 || size_t(row) >= data.n_rows)
                        throw error("slot_rows: slot " + std::to_string(s) + " names row " + std::to_string(row) +
                                    ", outside the float copy's " + std::to_string(data.n_rows));
                    float dot;
                    dense.dot_f32(qi, 1, data.float_rows + size_t(row) * dim, 1, dim, &dot, 1);
                    value = l2 ? 2.0f * dot - data.float_sq_norms[row] : dot;
                } else if (data.pq4) {
                    const size_t l = allowed.lists[c];
                    const uint8_t* block =
                        static_cast<const uint8_t*>(data.codes) + (s / pq4_block_k) * pq4_block_bytes(m);
                    const size_t v = s % pq4_block_k;
                    auto code = [&](size_t sq) {
                        const uint8_t byte = block[sq * 16 + (v & 15)];
                        return size_t(v < 16 ? byte & 15 : byte >> 4);
                    };
                    if (!l2) {
                        if (l != bias_list) {  // <q, centroid>, once per run of slots of a list
                            dense.dot_f32(qi, 1, data.centroids + l * dim, 1, dim, &bias, 1);
                            bias_list = l;
                        }
                        const float* table = tables.data() + i * m * pq4_centroids_k;
                        float sum = 0.0f;
                        for (size_t sq = 0; sq < m; ++sq) sum += table[sq * pq4_centroids_k + code(sq)];
                        value = bias + sum;
                    } else {
                        const size_t ds = dim / m;
                        x.resize(dim);
                        const float* centroid = data.centroids + l * dim;
                        for (size_t sq = 0; sq < m; ++sq) {
                            const float* w = data.codebooks + (sq * pq4_centroids_k + code(sq)) * ds;
                            for (size_t t = 0; t < ds; ++t) x[sq * ds + t] = centroid[sq * ds + t] + w[t];
                        }
                        float sum = 0.0f;
                        for (size_t t = 0; t < dim; ++t) sum += (qi[t] - x[t]) * (qi[t] - x[t]);
                        value = -sum;
                    }
                } else if (binary) {
                    uint32_t distance;
                    dense.hamming(query_bits.data() + i * words, 1, static_cast<const uint64_t*>(data.codes) + s * words,
                                  1, words, &distance, 1);
                    value = -float(distance);
                } else {
                    const unsigned char* row = static_cast<const unsigned char*>(data.codes) + s * stored;
                    switch (data.codec) {
                        case codec_t::f32_k:
                            dense.dot_f32(qi, 1, reinterpret_cast<const float*>(row), 1, dim, &value, 1);
                            break;
                        case codec_t::f16_k:
                            dense.dot_f16(qi, 1, reinterpret_cast<const uint16_t*>(row), 1, dim, &value, 1);
                            break;
                        default: dense.dot_u8(qi, 1, row, 1, dim, &value, 1); break;
                    }
                    if (data.codec == codec_t::int8_k) value = data.scale[s] * value + data.offset[s] * query_sums[i];
                    if (l2) value = 2.0f * value - data.sq_norms[s];
                }
                if (value >= top.threshold()) top.push(value, int64_t(s));
            }
        });
        for (size_t i = 0; i < nq; ++i) {
            topk_t& found = selectors[0][i];
            for (size_t t = 1; t < slots; ++t) found.merge(selectors[t][i]);
            double q_sq_norm = 0.0;
            if (l2)
                for (size_t j = 0; j < dim; ++j) q_sq_norm += double(queries[i * dim + j]) * queries[i * dim + j];
            const size_t at = (q0 + i) * k;
            size_t r = 0;
            for (const topk_t::entry_t& e : found.sorted()) {
                out_scores[at + r] = !exact && data.pq4 ? (l2 ? std::max(0.0f, -e.value) : e.value)
                                                        : reported_score(e.value, binary && !exact, l2, dim, q_sq_norm);
                out_ids[at + r] = data.slot_ids[e.row];
                ++r;
            }
        }
    }
}

}  // namespace

void search_ivf(const ivf_data_t& data, const ivf_query_t& query, float* out_scores, int64_t* out_ids) {
    check(data, query);
    const size_t dim = data.dim, k = query.k, nlist = data.nlist, m = data.m;
    const bool l2 = query.metric == metric_t::l2_k;
    const bool binary = !data.pq4 && data.codec == codec_t::binary_k;
    const float missing = l2 ? std::numeric_limits<float>::infinity() : -std::numeric_limits<float>::infinity();
    for (size_t i = 0; i < query.nq * k; ++i) {
        out_scores[i] = missing;
        out_ids[i] = -1;
    }
    if (data.total_slots == 0 || query.nq == 0) return;

    const isa_t isa = active_isa();
    const dense_kernels_t& dense = kernels_for<dense_kernels_t>(isa);
    const pq4_kernels_t& fast_scan = kernels_for<pq4_kernels_t>(isa);
    const size_t nprobe = std::min(query.nprobe, nlist);
    const size_t keep = query.rerank != 0 ? query.rerank : k;
    const size_t threads = num_threads();
    const size_t block_bytes = data.pq4 ? pq4_block_bytes(m) : row_bytes(data.codec, dim);
    const size_t words = binary_words(dim);

    const std::vector<float> books_t = data.pq4 ? transpose_books(data.codebooks, dim, m) : std::vector<float>();
    std::vector<float> centroid_norms(l2 ? nlist : 0);
    if (l2)
        for (size_t l = 0; l < nlist; ++l) {
            double sq = 0.0;
            for (size_t t = 0; t < dim; ++t) sq += double(data.centroids[l * dim + t]) * data.centroids[l * dim + t];
            centroid_norms[l] = float(sq);
        }

    // The filter (see ivf_query_t::filter): each list's allowed live slots,
    // what a query must see, and whether brute force over them is cheaper.
    const filter_t filter{query.filter.words, data.total_slots};
    std::vector<uint32_t> list_allowed;
    size_t need = 0, first_want = 0, useful_lists = 0;
    if (filter.active()) {
        list_allowed.assign(nlist, 0);
        std::vector<uint32_t> list_live(nlist, 0);
        parallel_for((nlist + 63) / 64, threads, [&](size_t t, size_t) {
            for (size_t l = t * 64; l < std::min(nlist, t * 64 + 64); ++l) {
                const size_t begin = size_t(data.list_offsets[l]), end = size_t(data.list_offsets[l + 1]);
                uint32_t live = 0, allowed = 0;
                for (size_t p = begin; p < end; ++p) live += data.slot_ids[p] >= 0;
                filter.for_each(begin, end, [&](size_t p) { allowed += data.slot_ids[p] >= 0; });
                list_live[l] = live;
                list_allowed[l] = allowed;
            }
        });
        size_t total_live = 0, total_allowed = 0;
        for (size_t l = 0; l < nlist; ++l) {
            total_live += list_live[l];
            total_allowed += list_allowed[l];
            useful_lists += list_allowed[l] != 0;
        }
        if (total_allowed == 0) return;
        const size_t target = (nprobe * total_live + nlist - 1) / nlist;
        need = std::min(total_allowed, std::max(target, keep));
        first_want = std::min(useful_lists, std::max<size_t>(1, (need * useful_lists + total_allowed - 1) / total_allowed));

        if (brute_force_cheaper(data, query, need, total_allowed)) {
            allowed_slots_t allowed;
            allowed.slots.reserve(total_allowed);
            allowed.lists.reserve(total_allowed);
            for (size_t l = 0; l < nlist; ++l)
                filter.for_each(size_t(data.list_offsets[l]), size_t(data.list_offsets[l + 1]), [&](size_t p) {
                    if (data.slot_ids[p] < 0) return;
                    allowed.slots.push_back(int64_t(p));
                    allowed.lists.push_back(uint32_t(l));
                });
            search_allowed(data, query, allowed, books_t, out_scores, out_ids);
            return;
        }
    }

    for (size_t q0 = 0; q0 < query.nq; q0 += query_block_k) {
        const size_t nq = std::min(query_block_k, query.nq - q0);
        const float* queries = query.queries + q0 * dim;

        // Coarse step: each query's nprobe best lists and their ranking values.
        // Scores are computed in (query block x centroid tile) tasks, so a
        // tile stays in L2 while a whole block of queries is scored against it
        // (and a single query's scan of the centroids is shared by the threads);
        // then each query's best lists are selected.
        // With a filter each query takes lists in centroid order, skipping those
        // without an allowed live slot, until the allowed entries reach `need`
        // (see ivf_query_t::filter): a variable count, so probes are a CSR.
        std::vector<std::vector<int64_t>> query_lists(nq);
        std::vector<std::vector<float>> query_values(nq);
        {
            const size_t q_blocks = (nq + coarse_queries_k - 1) / coarse_queries_k;
            const size_t c_tiles = (nlist + coarse_centroids_k - 1) / coarse_centroids_k;
            std::vector<float> scores(std::min(nq, coarse_queries_k) * nlist);
            for (size_t qb = 0; qb < q_blocks; ++qb) {
                const size_t i0 = qb * coarse_queries_k, rows = std::min(coarse_queries_k, nq - i0);
                parallel_for(c_tiles, threads, [&](size_t t, size_t) {
                    const size_t c0 = t * coarse_centroids_k, nc = std::min(coarse_centroids_k, nlist - c0);
                    dense.dot_f32(queries + i0 * dim, rows, data.centroids + c0 * dim, nc, dim, scores.data() + c0,
                                  nlist);
                    if (l2)
                        for (size_t i = 0; i < rows; ++i)
                            for (size_t l = c0; l < c0 + nc; ++l)
                                scores[i * nlist + l] = 2.0f * scores[i * nlist + l] - centroid_norms[l];
                });
                // Each query's nprobe best lists: a running threshold rejects most
                // centroids with one compare; ties go to the smaller list.
                parallel_for(rows, threads, [&](size_t i, size_t) {
                    const float* row = scores.data() + i * nlist;
                    std::vector<int64_t>& lists = query_lists[i0 + i];
                    std::vector<float>& values = query_values[i0 + i];
                    if (!filter.active()) {
                        topk_t best(nprobe, nullptr);
                        for (size_t l = 0; l < nlist; ++l)
                            if (row[l] >= best.threshold()) best.push(row[l], int64_t(l));
                        for (const topk_t::entry_t& e : best.sorted()) {
                            lists.push_back(e.row);
                            values.push_back(e.value);
                        }
                        return;
                    }
                    // The best `want` lists holding allowed slots; twice as many
                    // while they hold fewer than `need` allowed entries.
                    for (size_t want = first_want;; want = std::min(useful_lists, 2 * want)) {
                        topk_t best(want, nullptr);
                        for (size_t l = 0; l < nlist; ++l)
                            if (list_allowed[l] != 0 && row[l] >= best.threshold()) best.push(row[l], int64_t(l));
                        lists.clear();
                        values.clear();
                        size_t seen = 0;
                        for (const topk_t::entry_t& e : best.sorted()) {
                            lists.push_back(e.row);
                            values.push_back(e.value);
                            seen += list_allowed[size_t(e.row)];
                            if (seen >= need) break;
                        }
                        if (seen >= need || want >= useful_lists) break;
                    }
                });
            }
        }

        // Probes grouped by list, in query order within a list.
        std::vector<size_t> group_start(nlist + 1, 0);
        size_t n_probes = 0;
        for (size_t i = 0; i < nq; ++i) {
            n_probes += query_lists[i].size();
            for (int64_t l : query_lists[i]) ++group_start[size_t(l) + 1];
        }
        for (size_t l = 0; l < nlist; ++l) group_start[l + 1] += group_start[l];
        std::vector<uint32_t> group_query(n_probes);
        std::vector<float> group_value(n_probes);
        // Lists that are some query's best probes first (see below): each list's best rank.
        std::vector<uint32_t> first_rank(nlist, std::numeric_limits<uint32_t>::max());
        {
            std::vector<size_t> fill(group_start.begin(), group_start.end() - 1);
            for (size_t i = 0; i < nq; ++i)
                for (size_t r = 0; r < query_lists[i].size(); ++r) {
                    const size_t l = size_t(query_lists[i][r]);
                    const size_t at = fill[l]++;
                    group_query[at] = uint32_t(i);
                    group_value[at] = query_values[i][r];
                    first_rank[l] = std::min(first_rank[l], uint32_t(r));
                }
        }
        std::vector<uint32_t> tasks;
        for (size_t l = 0; l < nlist; ++l)
            if (group_start[l + 1] > group_start[l] && data.list_offsets[l + 1] > data.list_offsets[l])
                tasks.push_back(uint32_t(l));
        // Lists that are some query's best probes first (their results raise the
        // thresholds early, so later lists push fewer candidates), then the
        // largest work first, for balance; the order never changes results.
        auto work = [&](uint32_t l) {
            return uint64_t(group_start[l + 1] - group_start[l]) *
                   uint64_t(data.list_offsets[l + 1] - data.list_offsets[l]);
        };
        std::sort(tasks.begin(), tasks.end(), [&](uint32_t a, uint32_t b) {
            if (first_rank[a] != first_rank[b]) return first_rank[a] < first_rank[b];
            return work(a) > work(b) || (work(a) == work(b) && a < b);
        });

        // ip pq4: one table per query, shared by every list it probes.
        std::vector<uint8_t> luts;
        std::vector<float> lut_scale, lut_inv, lut_base;
        if (data.pq4 && !l2) {
            luts.resize(nq * m * pq4_centroids_k);
            lut_scale.resize(nq);
            lut_inv.resize(nq);
            lut_base.resize(nq);
            const size_t lut_tasks = (nq + lut_queries_k - 1) / lut_queries_k;
            parallel_for(lut_tasks, threads, [&](size_t t, size_t) {
                std::vector<float> table(m * pq4_centroids_k);
                for (size_t i = t * lut_queries_k; i < std::min(nq, (t + 1) * lut_queries_k); ++i) {
                    ip_table(queries + i * dim, books_t.data(), dim, m, table.data());
                    lut_base[i] = quantize_table(table.data(), m, luts.data() + i * m * pq4_centroids_k, &lut_scale[i],
                                                 &lut_inv[i]);
                }
            });
        }
        // Per-query values needed by the dense codecs.
        std::vector<float> query_sums;
        std::vector<uint64_t> query_bits;
        if (!data.pq4) prepare_queries(data.codec, queries, nq, dim, query_sums, query_bits);

        const size_t slots = std::max<size_t>(1, std::min(threads, tasks.size()));
        std::vector<std::vector<topk_t>> selectors(slots, std::vector<topk_t>(nq, topk_t(keep, data.slot_ids)));
        std::vector<scratch_t> scratch(slots);

        parallel_for(tasks.size(), slots, [&](size_t task, size_t slot) {
            const size_t l = tasks[task];
            const size_t begin = size_t(data.list_offsets[l]), end = size_t(data.list_offsets[l + 1]);
            std::vector<topk_t>& mine = selectors[slot];
            scratch_t& s = scratch[slot];
            if (data.pq4) {
                const size_t n_blocks = (end - begin) / pq4_block_k;
                const uint8_t* codes = static_cast<const uint8_t*>(data.codes) + (begin / pq4_block_k) * block_bytes;
                // Block-chunk-major: a chunk of the list's codes stays in L1 while
                // every query probing the list scans it with its own table.
                const size_t chunk = std::max<size_t>(1, std::min(scan_blocks_k, scan_chunk_bytes_k / block_bytes));
                s.sums.resize(chunk * pq4_block_k);
                s.masks.resize(chunk);
                const size_t g0 = group_start[l], ng = group_start[l + 1] - g0;
                s.probe_luts.resize(ng);
                s.probe_scale.resize(ng);
                s.probe_inv.resize(ng);
                s.probe_base.resize(ng);
                if (l2) {
                    s.table.resize(m * pq4_centroids_k);
                    s.lut.resize(ng * m * pq4_centroids_k);
                    s.residual.resize(dim);
                }
                for (size_t g = 0; g < ng; ++g) {
                    const size_t i = group_query[g0 + g];
                    if (l2) {
                        const float* q = queries + i * dim;
                        const float* c = data.centroids + l * dim;
                        for (size_t t = 0; t < dim; ++t) s.residual[t] = q[t] - c[t];
                        l2_table(s.residual.data(), books_t.data(), dim, m, s.table.data());
                        uint8_t* lut = s.lut.data() + g * m * pq4_centroids_k;
                        s.probe_base[g] = quantize_table(s.table.data(), m, lut, &s.probe_scale[g], &s.probe_inv[g]);
                        s.probe_luts[g] = lut;
                    } else {
                        s.probe_luts[g] = luts.data() + i * m * pq4_centroids_k;
                        s.probe_scale[g] = lut_scale[i];
                        s.probe_inv[g] = lut_inv[i];
                        s.probe_base[g] = lut_base[i] + group_value[g0 + g];  // + <q, centroid>
                    }
                }
                for (size_t b0 = 0; b0 < n_blocks; b0 += chunk) {
                    const size_t nb = std::min(chunk, n_blocks - b0);
                    const size_t chunk_begin = begin + b0 * pq4_block_k;
                    if (!filter.any(chunk_begin, chunk_begin + nb * pq4_block_k)) continue;  // nothing allowed
                    for (size_t g = 0; g < ng; ++g) {
                        topk_t& top = mine[group_query[g0 + g]];
                        const float a = s.probe_scale[g], inv_a = s.probe_inv[g], base = s.probe_base[g];
                        // The smallest u16 sum that may still enter, one unit low for rounding.
                        auto limit = [&]() -> uint32_t {
                            const float threshold = top.threshold();
                            if (!(threshold > -std::numeric_limits<float>::infinity())) return 0;
                            const float t = (threshold - base) * a;
                            if (!(t > 1.0f)) return 0;
                            if (t >= 65537.0f) return 65536;
                            return uint32_t(t) - 1;
                        };
                        uint32_t bar = limit();
                        if (bar > 65535) continue;  // nothing in this list can enter any more
                        fast_scan.accumulate(codes + b0 * block_bytes, nb, m, s.probe_luts[g], uint16_t(bar),
                                             s.sums.data(), s.masks.data());
                        for (size_t b = 0; b < nb; ++b) {
                            const uint16_t* sums = s.sums.data() + b * pq4_block_k;
                            uint32_t mask = s.masks[b];
                            while (mask != 0) {
                                const unsigned p = unsigned(__builtin_ctz(mask));
                                mask &= mask - 1;
                                if (sums[p] < bar) continue;  // the bar rose within this chunk
                                const size_t slot_index = begin + (b0 + b) * pq4_block_k + pq4_position_vector(p);
                                if (data.slot_ids[slot_index] < 0 || !filter.allowed(slot_index)) continue;
                                const float value = base + float(sums[p]) * inv_a;
                                if (value >= top.threshold()) {
                                    top.push(value, int64_t(slot_index));
                                    bar = limit();
                                }
                            }
                        }
                    }
                }
                return;
            }

            // Dense list storage: the list's queries gathered, scored tile by tile.
            const size_t nql = group_start[l + 1] - group_start[l];
            if (binary) {
                s.bits.resize(nql * words);
                for (size_t g = 0; g < nql; ++g)
                    std::copy(query_bits.begin() + std::ptrdiff_t(group_query[group_start[l] + g] * words),
                              query_bits.begin() + std::ptrdiff_t((group_query[group_start[l] + g] + 1) * words),
                              s.bits.begin() + std::ptrdiff_t(g * words));
            } else {
                s.queries.resize(nql * dim);
                for (size_t g = 0; g < nql; ++g) {
                    const float* q = queries + group_query[group_start[l] + g] * dim;
                    std::copy(q, q + dim, s.queries.begin() + std::ptrdiff_t(g * dim));
                }
            }
            for (size_t r0 = begin; r0 < end; r0 += row_tile_k) {
                const size_t rows = std::min(row_tile_k, end - r0);
                if (!filter.any(r0, r0 + rows)) continue;  // nothing allowed in this tile
                if (binary) {
                    s.distances.resize(nql * rows);
                    dense.hamming(s.bits.data(), nql, static_cast<const uint64_t*>(data.codes) + r0 * words, rows,
                                  words, s.distances.data(), rows);
                } else {
                    s.scores.resize(nql * rows);
                    switch (data.codec) {
                        case codec_t::f32_k:
                            dense.dot_f32(s.queries.data(), nql, static_cast<const float*>(data.codes) + r0 * dim, rows,
                                          dim, s.scores.data(), rows);
                            break;
                        case codec_t::f16_k:
                            dense.dot_f16(s.queries.data(), nql, static_cast<const uint16_t*>(data.codes) + r0 * dim,
                                          rows, dim, s.scores.data(), rows);
                            break;
                        default:
                            dense.dot_u8(s.queries.data(), nql, static_cast<const uint8_t*>(data.codes) + r0 * dim,
                                         rows, dim, s.scores.data(), rows);
                            break;
                    }
                }
                for (size_t g = 0; g < nql; ++g) {
                    const size_t i = group_query[group_start[l] + g];
                    topk_t& top = mine[i];
                    for (size_t j = 0; j < rows; ++j) {
                        const size_t slot_index = r0 + j;
                        float value;
                        if (binary) {
                            value = -float(s.distances[g * rows + j]);
                        } else {
                            value = s.scores[g * rows + j];
                            if (data.codec == codec_t::int8_k)
                                value = data.scale[slot_index] * value + data.offset[slot_index] * query_sums[i];
                            if (l2) value = 2.0f * value - data.sq_norms[slot_index];
                        }
                        if (value >= top.threshold() && data.slot_ids[slot_index] >= 0 && filter.allowed(slot_index))
                            top.push(value, int64_t(slot_index));
                    }
                }
            }
        });

        std::vector<topk_t>& found = selectors[0];
        for (size_t t = 1; t < slots; ++t)
            for (size_t i = 0; i < nq; ++i) found[i].merge(selectors[t][i]);

        if (query.rerank != 0) {
            std::vector<topk_t> exact(nq, topk_t(k, data.slot_ids));
            const size_t row_size = dim * sizeof(float);
            parallel_for(nq, threads, [&](size_t i, size_t) {
                const std::vector<topk_t::entry_t> shortlist = found[i].sorted();
                const float* qi = queries + i * dim;
                for (size_t c = 0; c < shortlist.size(); ++c) {
                    constexpr size_t ahead = 4;  // the shortlist's rows are scattered: fetch ahead
                    if (c + ahead < shortlist.size()) {
                        const int64_t next = data.slot_rows[shortlist[c + ahead].row];
                        if (next >= 0 && size_t(next) < data.n_rows) {
                            const char* p = reinterpret_cast<const char*>(data.float_rows + size_t(next) * dim);
                            for (size_t b = 0; b < row_size; b += 64) __builtin_prefetch(p + b);
                        }
                    }
                    const int64_t row = data.slot_rows[shortlist[c].row];
                    if (row < 0 || size_t(row) >= data.n_rows)
                        throw error("slot_rows: slot " + std::to_string(shortlist[c].row) + " names row " +
                                    std::to_string(row) + ", outside the float copy's " + std::to_string(data.n_rows));
                    float dot;
                    dense.dot_f32(qi, 1, data.float_rows + size_t(row) * dim, 1, dim, &dot, 1);
                    exact[i].push(l2 ? 2.0f * dot - data.float_sq_norms[row] : dot, shortlist[c].row);
                }
            });
            for (size_t i = 0; i < nq; ++i) found[i] = std::move(exact[i]);
        }

        for (size_t i = 0; i < nq; ++i) {
            double q_sq_norm = 0.0;
            if (l2)
                for (size_t j = 0; j < dim; ++j) q_sq_norm += double(queries[i * dim + j]) * queries[i * dim + j];
            const size_t at = (q0 + i) * k;
            size_t r = 0;
            for (const topk_t::entry_t& e : found[i].sorted()) {
                if (r == k) break;
                // pq4 without re-ranking ranks by the approximate score itself (l2: its negation).
                out_scores[at + r] = query.rerank == 0 && data.pq4
                                         ? (l2 ? std::max(0.0f, -e.value) : e.value)
                                         : reported_score(e.value, binary && query.rerank == 0, l2, dim, q_sq_norm);
                out_ids[at + r] = data.slot_ids[e.row];
                ++r;
            }
        }
    }
}

}  // namespace flatcoat
