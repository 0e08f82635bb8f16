// Dense search: walks the rows in cache-sized tiles, scores a tile for a block
// of queries with the active ISA's kernel, and feeds per-thread, per-query
// top-k selectors; they are merged at the end. No nq x rows matrix is built.
#include "flatcoat/dense_search.hpp"

#include <algorithm>  // std::min, std::max
#include <cmath>      // std::isfinite, std::fabs, std::lrint
#include <cstring>    // std::memset, std::memcpy
#include <limits>
#include <vector>

#include "flatcoat/dense_kernels.hpp"
#include "flatcoat/filter.hpp"
#include "flatcoat/isa.hpp"
#include "flatcoat/thread_pool.hpp"
#include "flatcoat/tile_emulation.hpp"
#include "flatcoat/topk.hpp"

namespace flatcoat {

namespace {

constexpr size_t tile_bytes_k = 128 * 1024;  // a tile of rows stays in L2 while a query block scores it
constexpr size_t query_block_k = 256;         // queries scored against a tile before moving on
constexpr size_t widen_batch_k = 8;           // from this many queries on, f16 and bf16 tiles are widened once

size_t row_bytes(const dense_data_t& data) {
    switch (data.codec) {
        case codec_t::f32_k: return data.dim * sizeof(float);
        case codec_t::f16_k: return data.dim * sizeof(uint16_t);
        case codec_t::int8_k: return data.dim;
        case codec_t::binary_k: return binary_words(data.dim) * sizeof(uint64_t);
        case codec_t::bf16_k: return data.dim * sizeof(bf16_t);
    }
    return 0;
}

void check(const dense_data_t& data, const dense_query_t& query) {
    if (data.dim == 0) throw error("dim must be positive");
    if (data.rows > 0 && (data.codes == nullptr || data.ids == nullptr)) throw error("index arrays are missing");
    if (query.nq > 0 && query.queries == nullptr) throw error("queries are missing");
    if (query.k == 0) throw error("k: must be positive");
    if (data.codec == codec_t::int8_k && (data.scale == nullptr || data.offset == nullptr))
        throw error("int8 storage needs the rows' scales and offsets");
    if (data.codec == codec_t::int8_k && data.dim > max_int8_dim)
        throw error("dim: int8 storage takes at most " + std::to_string(max_int8_dim) +
                    " dimensions (its int32 sums would overflow); use f16 or f32");
    if (query.metric == metric_t::l2_k && data.codec != codec_t::binary_k && data.sq_norms == nullptr &&
        data.rows > 0)
        throw error("l2 search needs the rows' squared norms");
    if (query.rerank != 0) {
        if (query.rerank < query.k) throw error("rerank: must be at least k");
        if (data.float_rows == nullptr && data.rows > 0)
            throw error("rerank: needs the float32 copy of the rows (build the index with keep_float=True)");
        if (query.metric == metric_t::l2_k && data.float_sq_norms == nullptr && data.rows > 0)
            throw error("rerank: l2 re-ranking needs the float copy's squared norms");
    }
}

/// Query codes (nq x dim) as the panels of the panel kernels: per panel of
/// `width` queries, ceil(dim / lane) steps of width words of `lane` elements
/// (4 int8 or 2 bf16: 32 bits), zero past dim and past the last query.
template <class element_t>
std::vector<element_t> pack_query_panels(const element_t* codes, size_t nq, size_t dim, size_t width,
                                         size_t lane) {
    const size_t steps = (dim + lane - 1) / lane, n_panels = (nq + width - 1) / width;
    std::vector<element_t> panels(n_panels * steps * width * lane, element_t{});
    for (size_t i = 0; i < nq; ++i) {
        element_t* panel = panels.data() + (i / width) * steps * width * lane + (i % width) * lane;
        for (size_t d = 0; d < dim; ++d) panel[(d / lane) * width * lane + d % lane] = codes[i * dim + d];
    }
    return panels;
}

/// The crossover of a filtered scan (see dense_query_t::filter): GATHER when
/// at most half the rows are allowed, or three quarters for a batch of 8
/// queries or more (the gather is then paid once per tile for many queries).
/// Measured at 1,000,000 x 384, ip, 1 and 64 queries (f32 / int8 / binary, ms,
/// gather vs mask): allowed 1/2, 1 query: 52.8/53.4, 20.3/21.7, 5.1/4.8;
/// 3/4, 1 query: 79.8/53.6, 28.7/21.8, 7.0/5.1; 3/4, 64 queries:
/// 363/460, 338/1200, 160/167.
bool gather_filtered(size_t allowed, size_t rows, size_t nq) {
    return 2 * allowed <= rows || (nq >= widen_batch_k && 4 * allowed <= 3 * rows);
}

/// Which rows a scan visits: all of them, the tiles of the filter (MASK), or
/// only the allowed rows, gathered (GATHER); see dense_query_t::filter.
struct visit_t {
    const filter_t* filter = nullptr;     ///< MASK: skip empty tiles, push allowed rows only; null: all rows
    const int64_t* gathered = nullptr;    ///< GATHER: the allowed rows, ascending; null: rows in place
    size_t n = 0;                         ///< rows visited: data.rows, or the allowed count for GATHER
};

/// Per-thread scratch of a scan.
struct scan_scratch_t {
    std::vector<float> scores, widened;
    std::vector<uint32_t> distances;
    std::vector<int32_t> dots;          // int8: exact integer dot products
    std::vector<float> values, bars;    // query panels: one row's values for every query, and their bars
    std::vector<unsigned char> codes;   // GATHER: the tile's codes, contiguous
    std::vector<float> scale, offset, norms;  // GATHER: the tile's per-row values
};

/// The shortlist a scan with a rounded query (int8's s8 query, bf16's bf16
/// query on vdpbf16ps) keeps per query before refine_shortlist: twice the
/// wanted depth plus 8. Measured on clustered 384-d unit vectors, the top 10
/// by the float query all lie within the top 12 by the s8 query in 99.9% of
/// cases and within the top 15 always; by the bf16 query within the top 20.
size_t rounded_query_shortlist(size_t keep) { return 2 * keep + 8; }

/// Whether the scan ranks by a rounded query and refines (see refine_shortlist).
bool scans_rounded_query(codec_t codec, const dense_kernels_t& kernels) {
    return codec == codec_t::int8_k || (codec == codec_t::bf16_k && kernels.dot_bf16_pairs != nullptr);
}

/// Re-scores each query's shortlist with the float query against the same
/// codes (int8: scale * <q, code> + offset * sum(q); bf16: <q, x> widened)
/// and keeps the `keep` best. The rounded query (s8: 127 steps; bf16: 8
/// significant bits) costs about half a point of recall@10 on its own; the
/// float query is what the codes were meant for, while the scan stays on the
/// fast kernel (vpdpbusd: 4x the float32 rate; vdpbf16ps: 2x). Every query is
/// re-scored one row at a time, so the result does not depend on the batch.
void refine_shortlist(const dense_data_t& data, const dense_query_t& query, const float* queries, size_t nq,
                      const std::vector<float>& query_sums, size_t keep, const dense_kernels_t& kernels,
                      std::vector<topk_t>& found) {
    const size_t dim = data.dim;
    const bool l2 = query.metric == metric_t::l2_k;
    const bool u8 = data.codec == codec_t::int8_k;
    parallel_for(nq, num_threads(), [&](size_t i, size_t) {
        topk_t refined(keep, data.ids);
        const float* qi = queries + i * dim;
        for (const topk_t::entry_t& e : found[i].sorted()) {
            const size_t row = size_t(e.row);
            float value;
            if (u8) {
                kernels.dot_u8(qi, 1, static_cast<const uint8_t*>(data.codes) + row * dim, 1, dim, &value, 1);
                value = data.scale[row] * value + data.offset[row] * query_sums[i];
            } else {
                kernels.dot_bf16(qi, 1, static_cast<const bf16_t*>(data.codes) + row * dim, 1, dim, &value, 1);
            }
            if (l2) value = 2.0f * value - data.sq_norms[row];
            refined.push(value, e.row);
        }
        found[i] = std::move(refined);
    });
}

/// One scan over the visited rows for a block of queries; returns per-query selectors of `keep` entries.
std::vector<topk_t> scan(const dense_data_t& data, const dense_query_t& query, const visit_t& visit,
                         const float* queries, size_t nq, size_t keep, const dense_kernels_t& kernels) {
    const size_t dim = data.dim;
    const bool l2 = query.metric == metric_t::l2_k;
    const bool binary = data.codec == codec_t::binary_k;
    const bool u8 = data.codec == codec_t::int8_k;
    const bool rounded_query = scans_rounded_query(data.codec, kernels);
    const bool bf16_pairs = rounded_query && data.codec == codec_t::bf16_k;
    const bool widen_tiles = nq >= widen_batch_k && !rounded_query &&
                             (data.codec == codec_t::f16_k || data.codec == codec_t::bf16_k);
    const size_t stored_bytes = row_bytes(data);
    const size_t bytes = widen_tiles ? dim * sizeof(float) : stored_bytes;
    const size_t tile = std::max<size_t>(16, std::min<size_t>(4096, tile_bytes_k / std::max<size_t>(bytes, 1)));
    const size_t n_tiles = (visit.n + tile - 1) / tile;
    const size_t slots = std::max<size_t>(1, std::min(num_threads(), n_tiles));
    const size_t words = binary_words(dim);

    // Per-query preparation: int8 needs each query's sum (the rows' offsets
    // multiply it) and its s8 codes and scale; binary turns the query into sign bits.
    std::vector<float> query_sums, query_scales;
    std::vector<uint64_t> query_bits;
    std::vector<int8_t> query_codes;
    std::vector<bf16_t> query_bf16;
    const float* q = queries;
    prepare_queries(data.codec, queries, nq, dim, query_sums, query_bits);
    if (u8) quantize_queries(queries, nq, dim, query_codes, query_scales);
    if (bf16_pairs) {
        query_bf16.resize(nq * dim);
        to_bfloat16(queries, nq * dim, query_bf16.data());
    }
    // int8 batches on levels with VNNI, bf16 batches with AVX512_BF16: queries
    // packed into panels, scored rows by queries.
    const bool panels = nq >= widen_batch_k && ((u8 && kernels.dot_u8s8_panels != nullptr) ||
                                                (bf16_pairs && kernels.dot_bf16_panels != nullptr));
    std::vector<int8_t> query_panels;
    std::vector<bf16_t> query_panels_bf16;
    const size_t n_panels = panels ? (nq + kernels.panel_queries - 1) / kernels.panel_queries : 0;
    const size_t padded_nq = n_panels * kernels.panel_queries;
    if (panels && u8) query_panels = pack_query_panels(query_codes.data(), nq, dim, kernels.panel_queries, 4);
    if (panels && !u8) query_panels_bf16 = pack_query_panels(query_bf16.data(), nq, dim, kernels.panel_queries, 2);

    // int8 (and bf16 on vdpbf16ps) rank by a rounded query first and keep a
    // deeper shortlist, which refine_shortlist re-scores with the float query.
    const size_t scan_keep = rounded_query ? rounded_query_shortlist(keep) : keep;
    std::vector<std::vector<topk_t>> selectors(slots, std::vector<topk_t>(nq, topk_t(scan_keep, data.ids)));
    std::vector<scan_scratch_t> scratch(slots);

    parallel_for(n_tiles, slots, [&](size_t t, size_t slot) {
        const size_t begin = t * tile;
        const size_t rows = std::min(tile, visit.n - begin);
        if (visit.filter != nullptr && !visit.filter->any(begin, begin + rows)) return;  // MASK: nothing allowed
        std::vector<topk_t>& mine = selectors[slot];
        scan_scratch_t& s = scratch[slot];

        // The tile's codes and per-row values: in place, or gathered into
        // contiguous buffers so that the same kernels score them.
        const unsigned char* codes = static_cast<const unsigned char*>(data.codes) + begin * stored_bytes;
        const float* scale = u8 ? data.scale + begin : nullptr;
        const float* offset = u8 ? data.offset + begin : nullptr;
        const float* norms = l2 && !binary ? data.sq_norms + begin : nullptr;
        const int64_t* rowmap = visit.gathered != nullptr ? visit.gathered + begin : nullptr;
        if (rowmap != nullptr) {
            s.codes.resize(rows * stored_bytes);
            const unsigned char* all = static_cast<const unsigned char*>(data.codes);
            for (size_t j = 0; j < rows; ++j)
                std::memcpy(s.codes.data() + j * stored_bytes, all + size_t(rowmap[j]) * stored_bytes, stored_bytes);
            codes = s.codes.data();
            if (u8) {
                s.scale.resize(rows);
                s.offset.resize(rows);
                for (size_t j = 0; j < rows; ++j) {
                    s.scale[j] = data.scale[rowmap[j]];
                    s.offset[j] = data.offset[rowmap[j]];
                }
                scale = s.scale.data();
                offset = s.offset.data();
            }
            if (norms != nullptr) {
                s.norms.resize(rows);
                for (size_t j = 0; j < rows; ++j) s.norms[j] = data.sq_norms[rowmap[j]];
                norms = s.norms.data();
            }
        }
        // The row a tile entry stands for, and whether it may enter.
        auto row_of = [&](size_t j) { return rowmap != nullptr ? rowmap[j] : int64_t(begin + j); };
        const filter_t* mask = visit.filter;

        if (panels) {
            // Rows by queries: each row's values for every query at once, and
            // one vectorised test against the queries' bars before any push.
            if (u8) {
                s.dots.resize(rows * padded_nq);
                kernels.dot_u8s8_panels(query_panels.data(), n_panels, codes, rows, dim, s.dots.data(), padded_nq);
            } else {
                s.scores.resize(rows * padded_nq);
                kernels.dot_bf16_panels(query_panels_bf16.data(), n_panels, reinterpret_cast<const bf16_t*>(codes),
                                        rows, dim, s.scores.data(), padded_nq);
            }
            s.values.resize(nq);
            s.bars.resize(nq);
            for (size_t i = 0; i < nq; ++i) s.bars[i] = mine[i].threshold();
            for (size_t j = 0; j < rows; ++j) {
                if (u8) {
                    const int32_t* dots = s.dots.data() + j * padded_nq;
                    for (size_t i = 0; i < nq; ++i)
                        s.values[i] = scale[j] * (query_scales[i] * float(dots[i])) + offset[j] * query_sums[i];
                } else {
                    std::memcpy(s.values.data(), s.scores.data() + j * padded_nq, nq * sizeof(float));
                }
                unsigned reach = 0;
                for (size_t i = 0; i < nq; ++i) {
                    float value = s.values[i];
                    if (l2) value = 2.0f * value - norms[j];
                    s.values[i] = value;
                    reach |= unsigned(value >= s.bars[i]);
                }
                if (reach == 0 || (mask != nullptr && !mask->allowed(begin + j))) continue;
                for (size_t i = 0; i < nq; ++i)
                    if (s.values[i] >= s.bars[i]) {
                        mine[i].push(s.values[i], row_of(j));
                        s.bars[i] = mine[i].threshold();
                    }
            }
            return;
        }
        if (binary) {
            s.distances.resize(nq * rows);
            kernels.hamming(query_bits.data(), nq, reinterpret_cast<const uint64_t*>(codes), rows, words,
                            s.distances.data(), rows);
            for (size_t i = 0; i < nq; ++i) {
                topk_t& top = mine[i];
                const uint32_t* row = s.distances.data() + i * rows;
                for (size_t j0 = 0; j0 < rows; j0 += 16) {  // blocks with no distance at the bar: one test
                    const size_t j1 = std::min(rows, j0 + 16);
                    const float bar = top.threshold();
                    unsigned reach = 0;
                    for (size_t j = j0; j < j1; ++j) reach |= unsigned(-float(row[j]) >= bar);
                    if (reach == 0) continue;
                    for (size_t j = j0; j < j1; ++j) {
                        const float value = -float(row[j]);
                        if (value >= top.threshold() && (mask == nullptr || mask->allowed(begin + j)))
                            top.push(value, row_of(j));
                    }
                }
            }
            return;
        }
        s.scores.resize(nq * rows);
        if (u8) {
            s.dots.resize(nq * rows);
            kernels.dot_u8s8(query_codes.data(), nq, codes, rows, dim, s.dots.data(), rows);
        } else if (widen_tiles) {
            // Convert the tile once instead of once per 4 queries; the float32
            // kernel then gives the very same sums as the direct kernel.
            s.widened.resize(rows * dim);
            if (data.codec == codec_t::f16_k)
                kernels.widen_f16(reinterpret_cast<const uint16_t*>(codes), rows * dim, s.widened.data());
            else
                kernels.widen_bf16(reinterpret_cast<const bf16_t*>(codes), rows * dim, s.widened.data());
            kernels.dot_f32(q, nq, s.widened.data(), rows, dim, s.scores.data(), rows);
        } else if (data.codec == codec_t::f32_k) {
            kernels.dot_f32(q, nq, reinterpret_cast<const float*>(codes), rows, dim, s.scores.data(), rows);
        } else if (bf16_pairs) {
            kernels.dot_bf16_pairs(query_bf16.data(), nq, reinterpret_cast<const bf16_t*>(codes), rows, dim,
                                   s.scores.data(), rows);
        } else if (data.codec == codec_t::bf16_k) {
            kernels.dot_bf16(q, nq, reinterpret_cast<const bf16_t*>(codes), rows, dim, s.scores.data(), rows);
        } else {
            kernels.dot_f16(q, nq, reinterpret_cast<const uint16_t*>(codes), rows, dim, s.scores.data(), rows);
        }
        // Turn dot products into ranking values: int8 rows decode as
        // offset + scale * code and queries as q_scale * q_code, so
        // <q, x> ~ scale * q_scale * <q_code, code> + offset * sum(q);
        // l2 ranks by 2<q, x> - |x|^2, which orders like -|q - x|^2.
        for (size_t i = 0; i < nq; ++i) {
            topk_t& top = mine[i];
            float* row = s.scores.data() + i * rows;
            if (u8) {
                const int32_t* dots = s.dots.data() + i * rows;
                const float q_scale = query_scales[i], q_sum = query_sums[i];
                for (size_t j = 0; j < rows; ++j) row[j] = scale[j] * (q_scale * float(dots[j])) + offset[j] * q_sum;
            }
            if (l2)
                for (size_t j = 0; j < rows; ++j) row[j] = 2.0f * row[j] - norms[j];
            // Blocks of 16 with no value at the bar are skipped by one vectorised
            // test: past the first tile nearly every block is (k << rows).
            for (size_t j0 = 0; j0 < rows; j0 += 16) {
                const size_t j1 = std::min(rows, j0 + 16);
                const float bar = top.threshold();
                unsigned reach = 0;
                for (size_t j = j0; j < j1; ++j) reach |= unsigned(row[j] >= bar);
                if (reach == 0) continue;
                for (size_t j = j0; j < j1; ++j)
                    if (row[j] >= top.threshold() && (mask == nullptr || mask->allowed(begin + j)))
                        top.push(row[j], row_of(j));
            }
        }
    });

    std::vector<topk_t>& merged = selectors[0];
    for (size_t s = 1; s < slots; ++s)
        for (size_t i = 0; i < nq; ++i) merged[i].merge(selectors[s][i]);
    if (rounded_query) refine_shortlist(data, query, queries, nq, query_sums, keep, kernels, merged);
    return std::move(merged);
}

}  // namespace

void prepare_queries(codec_t codec, const float* queries, size_t nq, size_t dim, std::vector<float>& sums,
                     std::vector<uint64_t>& bits) {
    sums.assign(codec == codec_t::int8_k ? nq : 0, 0.0f);
    bits.assign(codec == codec_t::binary_k ? nq * binary_words(dim) : 0, 0);
    if (codec == codec_t::int8_k) {
        for (size_t i = 0; i < nq; ++i) {
            double sum = 0.0;
            for (size_t j = 0; j < dim; ++j) sum += queries[i * dim + j];
            sums[i] = float(sum);
        }
    } else if (codec == codec_t::binary_k) {
        binarize(queries, nq, dim, bits.data());
    }
}

void quantize_queries(const float* queries, size_t nq, size_t dim, std::vector<int8_t>& codes,
                      std::vector<float>& scales) {
    codes.assign(nq * dim, 0);
    scales.assign(nq, 0.0f);
    for (size_t i = 0; i < nq; ++i) {
        const float* qi = queries + i * dim;
        float largest = 0.0f;
        for (size_t j = 0; j < dim; ++j) largest = std::max(largest, std::fabs(qi[j]));
        if (!(largest > 0.0f)) continue;  // a zero query: codes and scale 0, every score offset * sum(q)
        const float inverse = 127.0f / largest;
        scales[i] = largest / 127.0f;
        for (size_t j = 0; j < dim; ++j) {
            const long code = std::lrint(qi[j] * inverse);
            codes[i * dim + j] = int8_t(std::max(-127L, std::min(127L, code)));
        }
    }
}

void require_tile_emulation() {
#if defined(FLATCOAT_TILE_EMULATION)
    if (!cpu_supports(isa_t::genoa_k))
        throw error("emulate_tiles: the tile emulation runs with the genoa level's kernels, which this CPU lacks");
#else
    throw error("emulate_tiles: this build has no tile emulation (it needs the genoa level compiled in)");
#endif
}

/// The panel kernels `*_dots` test with: the active level's, or (emulate_tiles)
/// the tile kernels on emulated tiles.
static const dense_kernels_t& dots_kernels(bool emulate_tiles, dense_kernels_t& emulated) {
    if (!emulate_tiles) return kernels_for<dense_kernels_t>(active_isa());
    require_tile_emulation();
#if defined(FLATCOAT_TILE_EMULATION)
    emulated = kernels_for<dense_kernels_t>(isa_t::genoa_k);
    const tile_emulation_t& tiles = emulated_tile_kernels();
    emulated.dot_u8s8_panels = tiles.dot_u8s8_panels;
    emulated.dot_bf16_panels = tiles.dot_bf16_panels;
    emulated.panel_queries = tiles.panel_queries;
#endif
    return emulated;
}

/// out (nq x nx) = q (nq x dim) times x (nx x dim) transposed through `panels_fn`
/// (query panels; `lane` elements per 32-bit word) from `batch` queries on,
/// else through `direct(q, nq, x, rows, dim, block, ldo)`; threads split the rows.
template <class q_t, class x_t, class out_t, class panels_fn_t, class direct_t>
static void panel_dots(const q_t* q, size_t nq, const x_t* x, size_t nx, size_t dim, out_t* out,
                       panels_fn_t panels_fn, size_t width, size_t lane, size_t batch, const direct_t& direct) {
    const bool panels = panels_fn != nullptr && nq >= batch;
    const size_t padded_nq = panels ? (nq + width - 1) / width * width : 0;
    const std::vector<q_t> packed = panels ? pack_query_panels(q, nq, dim, width, lane) : std::vector<q_t>();
    constexpr size_t chunk = 256;
    parallel_for((nx + chunk - 1) / chunk, num_threads(), [&](size_t c, size_t) {
        const size_t begin = c * chunk, rows = std::min(chunk, nx - begin);
        std::vector<out_t> block(std::max(nq, padded_nq) * rows);
        if (panels) {
            panels_fn(packed.data(), padded_nq / width, x + begin * dim, rows, dim, block.data(), padded_nq);
            for (size_t j = 0; j < rows; ++j)
                for (size_t i = 0; i < nq; ++i) out[i * nx + begin + j] = block[j * padded_nq + i];
            return;
        }
        direct(q, nq, x + begin * dim, rows, dim, block.data(), rows);
        for (size_t i = 0; i < nq; ++i)
            std::memcpy(out + i * nx + begin, block.data() + i * rows, rows * sizeof(out_t));
    });
}

void int8_dots(const int8_t* q, size_t nq, const uint8_t* x, size_t nx, size_t dim, int32_t* out,
               bool emulate_tiles) {
    if (dim > max_int8_dim) throw error("dim: the int8 kernel takes at most " + std::to_string(max_int8_dim));
    for (size_t i = 0; i < nq * dim; ++i)
        if (q[i] == -128) throw error("query codes: -128 is outside the kernel's range [-127, 127]");
    dense_kernels_t emulated;
    const dense_kernels_t& kernels = dots_kernels(emulate_tiles, emulated);
    // The kernel the scan would use: query panels for batches where the level has them.
    panel_dots(q, nq, x, nx, dim, out, kernels.dot_u8s8_panels, kernels.panel_queries, 4,
               emulate_tiles ? 1 : widen_batch_k, kernels.dot_u8s8);
}

void bf16_dots(const bf16_t* q, size_t nq, const bf16_t* x, size_t nx, size_t dim, float* out, bool emulate_tiles) {
    dense_kernels_t emulated;
    const dense_kernels_t& kernels = dots_kernels(emulate_tiles, emulated);
    // As the bf16 scan: query panels for batches, bf16 pairs for fewer queries,
    // and on levels without AVX512_BF16 the float32 kernel on widened queries.
    const auto direct = [&](const bf16_t* qb, size_t n, const bf16_t* rows, size_t count, size_t d, float* block,
                            size_t ldo) {
        if (kernels.dot_bf16_pairs != nullptr) return kernels.dot_bf16_pairs(qb, n, rows, count, d, block, ldo);
        std::vector<float> wide(n * d);
        kernels.widen_bf16(qb, n * d, wide.data());
        kernels.dot_bf16(wide.data(), n, rows, count, d, block, ldo);
    };
    panel_dots(q, nq, x, nx, dim, out, kernels.dot_bf16_panels, kernels.panel_queries, 2,
               emulate_tiles ? 1 : widen_batch_k, direct);
}

void to_bfloat16(const float* x, size_t n, bf16_t* out) {
    for (size_t i = 0; i < n; ++i) {
        uint32_t bits;
        std::memcpy(&bits, &x[i], sizeof bits);
        out[i].bits = uint16_t((bits + 0x7FFFu + ((bits >> 16) & 1u)) >> 16);  // nearest, ties to even
    }
}

void binarize(const float* x, size_t n, size_t dim, uint64_t* out) {
    const size_t words = binary_words(dim);
    for (size_t i = 0; i < n; ++i) {
        const float* xi = x + i * dim;
        for (size_t w = 0; w < words; ++w) {
            // Branch-free: a sign test per element mispredicts half the time on real data.
            uint64_t word = 0;
            const size_t end = std::min(dim, (w + 1) * 64);
            for (size_t j = w * 64; j < end; ++j) word |= uint64_t(xi[j] > 0.0f) << (j % 64);
            out[i * words + w] = word;
        }
    }
}

void search_dense(const dense_data_t& data, const dense_query_t& query, float* out_scores, int64_t* out_ids) {
    check(data, query);
    const size_t dim = data.dim;
    const size_t k = query.k;
    const bool l2 = query.metric == metric_t::l2_k;
    const bool binary = data.codec == codec_t::binary_k;
    const float missing = l2 ? std::numeric_limits<float>::infinity() : -std::numeric_limits<float>::infinity();
    for (size_t i = 0; i < query.nq * k; ++i) {
        out_scores[i] = missing;
        out_ids[i] = -1;
    }
    if (data.rows == 0 || query.nq == 0) return;

    // Rows visited: all, or by the filter's rule (see dense_query_t::filter).
    visit_t visit;
    visit.n = data.rows;
    std::vector<int64_t> gathered;
    size_t allowed = data.rows;
    const filter_t filter{query.filter.words, data.rows};
    if (filter.active()) {
        allowed = filter.count();
        if (allowed == 0) return;
        if (allowed < data.rows) {
            if (gather_filtered(allowed, data.rows, query.nq)) {
                gathered = filter.positions();
                visit.gathered = gathered.data();
                visit.n = allowed;
            } else {
                visit.filter = &filter;
            }
        }
    }

    const dense_kernels_t& kernels = kernels_for<dense_kernels_t>(active_isa());
    const size_t keep = query.rerank != 0 ? std::min(query.rerank, allowed) : k;

    for (size_t q0 = 0; q0 < query.nq; q0 += query_block_k) {
        const size_t nq = std::min(query_block_k, query.nq - q0);
        const float* queries = query.queries + q0 * dim;
        std::vector<topk_t> found = scan(data, query, visit, queries, nq, keep, kernels);

        if (query.rerank != 0) {
            // Exact second stage over the shortlists. A long shortlist of a
            // small batch is split into parts so every thread has work; the
            // parts' selectors are merged per query.
            std::vector<std::vector<topk_t::entry_t>> shortlists(nq);
            for (size_t i = 0; i < nq; ++i) shortlists[i] = found[i].sorted();
            const size_t threads = num_threads();
            const size_t parts = nq >= threads || keep < 1024 ? 1 : (threads + nq - 1) / nq;
            std::vector<topk_t> exact(nq * parts, topk_t(k, data.ids));
            const size_t row_bytes = dim * sizeof(float);
            parallel_for(nq * parts, threads, [&](size_t task, size_t) {
                const size_t i = task / parts, part = task % parts;
                const std::vector<topk_t::entry_t>& shortlist = shortlists[i];
                const size_t per_part = (shortlist.size() + parts - 1) / parts;
                const size_t begin = std::min(shortlist.size(), part * per_part);
                const size_t end = std::min(shortlist.size(), begin + per_part);
                const float* qi = queries + i * dim;
                for (size_t c = begin; c < end; ++c) {
                    // The shortlist's rows are scattered: fetch a few ahead so DRAM latency overlaps.
                    constexpr size_t ahead = 4;
                    if (c + ahead < end) {
                        const char* next =
                            reinterpret_cast<const char*>(data.float_rows + size_t(shortlist[c + ahead].row) * dim);
                        for (size_t b = 0; b < row_bytes; b += 64) __builtin_prefetch(next + b);
                    }
                    const topk_t::entry_t& e = shortlist[c];
                    float dot;
                    kernels.dot_f32(qi, 1, data.float_rows + size_t(e.row) * dim, 1, dim, &dot, 1);
                    exact[task].push(l2 ? 2.0f * dot - data.float_sq_norms[e.row] : dot, e.row);
                }
            });
            for (size_t i = 0; i < nq; ++i) {
                for (size_t part = 1; part < parts; ++part) exact[i * parts].merge(exact[i * parts + part]);
                found[i] = std::move(exact[i * parts]);
            }
        }

        for (size_t i = 0; i < nq; ++i) {
            double q_sq_norm = 0.0;
            if (l2)
                for (size_t j = 0; j < dim; ++j) q_sq_norm += double(queries[i * dim + j]) * queries[i * dim + j];
            const size_t at = (q0 + i) * k;
            size_t r = 0;
            for (const topk_t::entry_t& e : found[i].sorted()) {
                if (r == k) break;
                out_scores[at + r] = reported_score(e.value, binary && query.rerank == 0, l2, dim, q_sq_norm);
                out_ids[at + r] = data.ids[e.row];
                ++r;
            }
        }
    }
}

}  // namespace flatcoat
