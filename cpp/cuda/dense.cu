// The dense store on the device and the search pipeline:
//   prepare queries -> scan (CUDA cores) or mma (tensor cores), each block
//   keeping its own top-k lists -> merge the lists per query -> [re-rank the
//   best `rerank` exactly against the float rows] -> reported scores and ids.
// Everything runs on the caller's stream; the call returns after it finished.
#include <algorithm>  // std::min, std::max
#include <string>
#include <vector>

#include "common.cuh"
#include "kernels.cuh"
#include "store.cuh"  // zeroed_buffer, upload_rows, device_input, call_outputs_t
#include "topk.cuh"

namespace flatcoat {
namespace cuda {

namespace {

constexpr size_t mma_min_batch = 16;                   // from this many queries, f16/u8 use tensor cores
constexpr size_t list_budget_bytes = size_t(1) << 30;  // per-block lists of one batch of queries
constexpr size_t scan_smem_target = 100 * 1024;        // keep two scan blocks per SM when queries share a block

size_t row_bytes(codec_t codec, size_t dim) {
    switch (codec) {
        case codec_t::f32_k: return dim * 4;
        case codec_t::f16_k: return dim * 2;
        case codec_t::int8_k: return dim;
        case codec_t::binary_k: return binary_words(dim) * 8;
        case codec_t::bf16_k: break;  // refused by the store's constructor
    }
    return 0;
}

/// Lanes per row: the largest of 32, 16, 8, 4 that leaves the fewest lanes idle on the last chunk.
int choose_lanes(size_t chunks) {
    int best = 32;
    size_t best_idle = ~size_t(0);
    for (int lanes = 32; lanes >= 4; lanes /= 2) {
        const size_t idle = round_up(chunks, size_t(lanes)) - chunks;
        if (idle < best_idle) {
            best = lanes;
            best_idle = idle;
        }
    }
    return best;
}

/// Splits `rows` into about `wanted` blocks of whole rounds.
void split_rows(size_t rows, size_t wanted, size_t round, size_t& per_block, size_t& blocks) {
    wanted = std::max<size_t>(1, std::min(wanted, ceil_div(rows, round)));
    per_block = round_up(ceil_div(rows, wanted), round);
    blocks = ceil_div(rows, per_block);
}

/// Queries per batch so that the per-block lists stay within the budget.
size_t batch_size(size_t nq, size_t per_group, size_t row_blocks, size_t cap) {
    const size_t per_query = std::max<size_t>(1, row_blocks * cap * sizeof(uint64_t));
    size_t n = list_budget_bytes / per_query / per_group * per_group;
    return std::max(per_group, std::min(n, round_up(nq, per_group)));
}

}  // namespace

struct dense_store_t::impl_t {
    int device = 0;
    codec_t codec = codec_t::f32_k;
    size_t dim = 0, rows = 0;
    size_t chunks = 0;        // 16-byte chunks per padded row of codes
    size_t float_stride = 0;  // floats per padded float row
    device_buffer_t<uint4> codes;
    device_buffer_t<int64_t> ids;
    device_buffer_t<float> sq_norms, scale, offset, float_rows, float_sq_norms;

    /// A field by name ("codes", "ids", ...); flatcoat::error for an unknown name.
    field_t field(const std::string& name) {
        auto vectors = [&](void* base, size_t pitch, size_t width) {
            return field_t{static_cast<char*>(base), pitch, width, rows};
        };
        auto scalars = [&](void* base, size_t width) { return field_t{static_cast<char*>(base), width, width, rows}; };
        if (name == "codes") return vectors(codes.get(), chunks * 16, row_bytes(codec, dim));
        if (name == "float_rows") return vectors(float_rows.get(), float_stride * 4, dim * 4);
        if (name == "ids") return scalars(ids.get(), 8);
        if (name == "sq_norms") return scalars(sq_norms.get(), 4);
        if (name == "float_sq_norms") return scalars(float_sq_norms.get(), 4);
        if (name == "scale") return scalars(scale.get(), 4);
        if (name == "offset") return scalars(offset.get(), 4);
        throw error("field: unknown '" + name + "'");
    }
};

dense_store_t::dense_store_t(int device, codec_t codec, size_t dim, size_t rows, bool has_sq_norms,
                             bool has_float_rows, bool has_float_sq_norms)
    : impl_(new impl_t) {
    if (dim == 0) throw error("dim: must be positive");
    if (codec == codec_t::bf16_k) throw error("storage: bf16 has no CUDA kernels yet; use f16 on the GPU");
    // A candidate key holds ~row in 32 bits; all ones is kept free.
    if (rows >= 0xFFFFFFFFull) throw error("rows: a GPU store holds at most 4294967294 rows; shard the index");
    device_guard_t guard(device);
    impl_t& s = *impl_;
    s.device = device;
    s.codec = codec;
    s.dim = dim;
    s.rows = rows;
    s.chunks = ceil_div(row_bytes(codec, dim), 16);
    s.codes = zeroed_buffer<uint4>(rows * s.chunks);
    s.ids = device_buffer_t<int64_t>(rows);
    if (has_sq_norms) s.sq_norms = device_buffer_t<float>(rows);
    if (codec == codec_t::int8_k) {
        s.scale = device_buffer_t<float>(rows);
        s.offset = device_buffer_t<float>(rows);
    }
    if (has_float_rows) {
        s.float_stride = round_up(dim, 4);
        s.float_rows = zeroed_buffer<float>(rows * s.float_stride);
    }
    if (has_float_sq_norms) s.float_sq_norms = device_buffer_t<float>(rows);
    FC_CUDA_CHECK(cudaDeviceSynchronize());  // the memsets are done before any upload on another stream
}

dense_store_t::~dense_store_t() {
    if (impl_) release_on_device(impl_, impl_->device);
}

int dense_store_t::device() const { return impl_->device; }
codec_t dense_store_t::codec() const { return impl_->codec; }
size_t dense_store_t::dim() const { return impl_->dim; }
size_t dense_store_t::rows() const { return impl_->rows; }
size_t dense_store_t::nbytes() const {
    const impl_t& s = *impl_;
    return s.codes.bytes() + s.ids.bytes() + s.sq_norms.bytes() + s.scale.bytes() + s.offset.bytes() +
           s.float_rows.bytes() + s.float_sq_norms.bytes();
}

void dense_store_t::upload(const std::string& field, size_t row_begin, const void* src, size_t n,
                           size_t src_pitch) {
    upload_rows(impl_->device, field, impl_->field(field), row_begin, src, n, src_pitch);
}

void dense_store_t::search(const dense_search_t& a) const {
    const impl_t& s = *impl_;
    const bool l2 = a.metric == metric_t::l2_k;
    const bool binary = s.codec == codec_t::binary_k;
    if (a.k == 0) throw error("k: must be positive");
    if (a.k > max_k) throw error("k: at most " + std::to_string(max_k) + " on the GPU, got " + std::to_string(a.k));
    if (a.rerank != 0) {
        if (a.rerank < a.k)
            throw error("rerank: must be at least k (" + std::to_string(a.k) + "), got " + std::to_string(a.rerank));
        if (a.rerank > max_k)
            throw error("rerank: at most " + std::to_string(max_k) + " on the GPU, got " + std::to_string(a.rerank));
        if (!s.float_rows.get() && s.rows > 0)
            throw error("rerank: needs the float32 copy of the rows (build the index with keep_float=True)");
        if (l2 && !s.float_sq_norms.get() && s.rows > 0)
            throw error("rerank: l2 re-ranking needs the float copy's squared norms");
    }
    if (l2 && !binary && !s.sq_norms.get() && s.rows > 0) throw error("l2 search needs the rows' squared norms");
    if (a.nq == 0) return;
    if (a.queries == nullptr || a.out_scores == nullptr || a.out_ids == nullptr) throw error("queries or outputs are missing");
    const bool mma_codec = s.codec == codec_t::f16_k || s.codec == codec_t::int8_k;
    if (a.path == dense_path_t::mma_k && !mma_codec) throw error("path: the tensor-core path takes f16 or int8 storage");

    device_guard_t guard(s.device);
    const cudaStream_t stream = reinterpret_cast<cudaStream_t>(a.stream);
    const size_t nq = a.nq, k = a.k, dim = s.dim;

    // Flags: [0] the first query row with NaN/inf, [1] the first zero row under normalize.
    call_outputs_t outputs(a.out_scores, a.out_ids, nq * k, a.on_device, 2, stream);
    float* out_scores = outputs.scores();
    int64_t* out_ids = outputs.ids();

    // Kept alive until the stream is synchronised below.
    device_buffer_t<float> staged_queries, qf, constants, inv_scale, qx;
    device_buffer_t<__half> qh, ql;
    device_buffer_t<double> q_sq_norms;
    device_buffer_t<uint64_t> lists, merged, reranked, shortlist;

    if (s.rows == 0) {
        launch_fill_missing(out_scores, out_ids, nq * k, l2, stream);
    } else {
        const float* queries = device_input(a.queries, nq * dim, a.on_device, staged_queries, stream);
        const bool mma = mma_codec && (a.path == dense_path_t::mma_k ||
                                       (a.path == dense_path_t::auto_k && nq >= mma_min_batch));
        const size_t keep = a.rerank != 0 ? std::min(a.rerank, s.rows) : std::min(k, s.rows);
        const size_t round = mma ? mma_rows : scan_round;
        const size_t cap = topk_capacity(keep, round);
        const device_info_t info = current_device_info();

        // Queries per block: as many as the batch fills, while shared memory allows.
        size_t group = mma_queries;
        size_t smem = 0;
        if (mma) {
            smem = mma_smem_bytes(int(cap));
        } else {
            group = std::min<size_t>(8, pow2_ceil(nq));
            while (group > 1 && scan_smem_bytes(s.codec, int(s.chunks), int(group), int(cap)) >
                                    std::min(info.max_smem, scan_smem_target))
                group /= 2;
            smem = scan_smem_bytes(s.codec, int(s.chunks), int(group), int(cap));
        }
        if (smem > info.max_smem)
            throw error("dim " + std::to_string(dim) + " with k " + std::to_string(keep) +
                        " needs more shared memory than this GPU has per block");

        // Prepared queries, for all queries at once.
        const size_t words = s.chunks * query_words_per_chunk(s.codec);  // 16-byte words per query
        const size_t depth = s.chunks * chunk_elements(s.codec);          // mma: elements per padded row
        prepare_args_t p;
        p.queries = queries;
        p.nq = nq;
        p.dim = dim;
        p.codec = s.codec;
        p.normalize = a.normalize;
        p.l2 = l2;
        p.bad = outputs.flags();
        if (mma) {
            qh = device_buffer_t<__half>(nq * depth, stream);
            if (!a.half_queries) ql = device_buffer_t<__half>(nq * depth, stream);
            inv_scale = device_buffer_t<float>(nq, stream);
            p.qh = qh.get();
            p.ql = ql.get();
            p.qh_stride = depth;
            p.inv_scale = inv_scale.get();
        } else {
            qf = device_buffer_t<float>(nq * words * 4, stream);
            p.qf = qf.get();
            p.qf_stride = words * 4;  // floats, or 32-bit words of sign bits
        }
        if (s.codec == codec_t::int8_k) {
            constants = device_buffer_t<float>(nq, stream);
            p.constants = constants.get();
        }
        if (l2) {
            q_sq_norms = device_buffer_t<double>(nq, stream);
            p.q_sq_norms = q_sq_norms.get();
        }
        if (a.rerank != 0) {
            qx = device_buffer_t<float>(nq * s.float_stride, stream);
            p.qx = qx.get();
            p.qx_stride = s.float_stride;
        }
        launch_prepare(p, stream);

        // Row blocks: enough blocks to fill the GPU a few times over.
        const size_t wanted_blocks = size_t(info.sms) * (mma ? 2 : 4);
        size_t per_block = 0, row_blocks = 0;
        split_rows(s.rows, ceil_div(wanted_blocks, ceil_div(nq, group)), round, per_block, row_blocks);
        const size_t batch = batch_size(nq, group, row_blocks, cap);
        if (batch < nq) split_rows(s.rows, ceil_div(wanted_blocks, ceil_div(batch, group)), round, per_block, row_blocks);
        const size_t groups = ceil_div(std::min(batch, nq), group);

        lists = device_buffer_t<uint64_t>(groups * row_blocks * group * cap, stream);
        const size_t merge_cap = topk_capacity(keep, merge_round);
        merged = device_buffer_t<uint64_t>(std::min(batch, nq) * merge_cap, stream);
        const size_t final_k = std::min(k, keep);
        const size_t rerank_cap = topk_capacity(final_k, rerank_round);
        if (a.rerank != 0) {
            shortlist = device_buffer_t<uint64_t>(std::min(batch, nq) * keep, stream);
            reranked = device_buffer_t<uint64_t>(std::min(batch, nq) * rerank_cap, stream);
        }

        for (size_t b0 = 0; b0 < nq; b0 += batch) {
            const size_t nb = std::min(batch, nq - b0);
            lists_args_t out;
            out.lists = lists.get();
            out.k = int(keep);
            out.cap = int(cap);
            if (mma) {
                mma_args_t m;
                m.codec = s.codec;
                m.codes = reinterpret_cast<const unsigned char*>(s.codes.get());
                m.pitch = s.chunks * 16;
                m.depth = int(depth);
                m.n = s.rows;
                m.qh = qh.get() + b0 * depth;
                m.ql = ql.get() ? ql.get() + b0 * depth : nullptr;
                m.inv_scale = inv_scale.get() + b0;
                m.constants = constants.get() ? constants.get() + b0 : nullptr;
                m.row_scale = s.scale.get();
                m.row_offset = s.offset.get();
                m.nq = nb;
                m.sq_norms = s.sq_norms.get();
                m.l2 = l2;
                m.rows_per_block = per_block;
                m.row_blocks = row_blocks;
                m.out = out;
                launch_mma(m, stream);
            } else {
                scan_args_t c;
                c.codec = s.codec;
                c.codes = s.codes.get();
                c.chunks = int(s.chunks);
                c.n = s.rows;
                c.sq_norms = s.sq_norms.get();
                c.l2 = l2;
                c.queries = reinterpret_cast<const uint4*>(qf.get()) + b0 * words;
                c.constants = constants.get() ? constants.get() + b0 : nullptr;
                c.row_scale = s.scale.get();
                c.row_offset = s.offset.get();
                c.nq = nb;
                c.lanes = choose_lanes(s.chunks);
                c.queries_per_block = int(group);
                c.rows_per_block = per_block;
                c.row_blocks = row_blocks;
                c.out = out;
                launch_scan(c, stream);
            }

            emit_args_t e;
            e.scores = out_scores + b0 * k;
            e.ids_out = out_ids + b0 * k;
            e.k = k;
            e.ids = s.ids.get();
            e.q_sq_norms = q_sq_norms.get() ? q_sq_norms.get() + b0 : nullptr;
            e.l2 = l2;
            e.hamming = binary && a.rerank == 0;
            e.dim = float(dim);

            merge_args_t mg = merge_lists(lists.get(), int(group), row_blocks, int(cap), int(keep), nb, merged.get(),
                                          int(merge_cap));
            mg.keys_out = a.rerank != 0 ? shortlist.get() : nullptr;
            mg.emit = e;
            launch_merge(mg, stream);

            if (a.rerank != 0) {
                rerank_args_t r;
                r.candidates = shortlist.get();
                r.depth = int(keep);
                r.qx = qx.get() + b0 * s.float_stride;
                r.float_rows = s.float_rows.get();
                r.stride = int(s.float_stride);
                r.float_sq_norms = s.float_sq_norms.get();
                r.l2 = l2;
                r.nq = nb;
                r.work = reranked.get();
                r.k = int(final_k);
                r.cap = int(rerank_cap);
                r.emit = e;
                launch_rerank(r, stream);
            }
        }
    }

    const std::vector<int> flags = outputs.finish();
    if (size_t(flags[0]) < nq)
        throw error("queries: row " + std::to_string(flags[0]) + " contains NaN or inf; remove or fix it");
    if (size_t(flags[1]) < nq)
        throw error("queries: row " + std::to_string(flags[1]) +
                    " is all zeros and has no direction under metric='cosine'");
}

void topk(int device, const float* scores, size_t m, size_t n, bool on_device, size_t k, float* out_values,
          int64_t* out_indices, uintptr_t stream_handle) {
    if (k == 0) throw error("k: must be positive");
    if (k > max_k) throw error("k: at most " + std::to_string(max_k) + " on the GPU, got " + std::to_string(k));
    if (n >= 0xFFFFFFFFull) throw error("scores: rows of at most 4294967294 scores");
    if (m == 0) return;
    if (out_values == nullptr || out_indices == nullptr || (n > 0 && scores == nullptr))
        throw error("scores or outputs are missing");
    device_guard_t guard(device);
    const cudaStream_t stream = reinterpret_cast<cudaStream_t>(stream_handle);

    call_outputs_t outputs(out_values, out_indices, m * k, on_device, 0, stream);
    float* values = outputs.scores();
    int64_t* indices = outputs.ids();
    device_buffer_t<float> staged_scores;
    device_buffer_t<uint64_t> lists, merged;
    if (n == 0) {
        launch_fill_missing(values, indices, m * k, false, stream);
    } else {
        const float* x = device_input(scores, m * n, on_device, staged_scores, stream);
        const size_t keep = std::min(k, n);
        const size_t cap = topk_capacity(keep, select_round);
        const device_info_t info = current_device_info();
        if (cap * sizeof(uint64_t) > info.max_smem) throw error("k too large for this GPU's shared memory");
        const size_t wanted_blocks = size_t(info.sms) * 4;
        size_t per_block = 0, row_blocks = 0;
        split_rows(n, ceil_div(wanted_blocks, m), select_round, per_block, row_blocks);
        const size_t batch = batch_size(m, 1, row_blocks, cap);
        const size_t merge_cap = topk_capacity(keep, merge_round);
        lists = device_buffer_t<uint64_t>(std::min(batch, m) * row_blocks * cap, stream);
        merged = device_buffer_t<uint64_t>(std::min(batch, m) * merge_cap, stream);
        for (size_t b0 = 0; b0 < m; b0 += batch) {
            const size_t nb = std::min(batch, m - b0);
            select_args_t sa;
            sa.x = x + b0 * n;
            sa.m = nb;
            sa.n = n;
            sa.per_block = per_block;
            sa.row_blocks = row_blocks;
            sa.out.lists = lists.get();
            sa.out.k = int(keep);
            sa.out.cap = int(cap);
            launch_select(sa, stream);

            merge_args_t mg = merge_lists(lists.get(), 1, row_blocks, int(cap), int(keep), nb, merged.get(),
                                          int(merge_cap));
            mg.emit.scores = values + b0 * k;
            mg.emit.ids_out = indices + b0 * k;
            mg.emit.k = k;
            launch_merge(mg, stream);
        }
    }
    outputs.finish();
}

}  // namespace cuda
}  // namespace flatcoat
