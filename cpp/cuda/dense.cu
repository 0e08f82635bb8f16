// The dense store on the device and the search pipeline:
//   prepare queries -> scan (CUDA cores) or mma (tensor cores), each block
//   keeping its own top-k lists -> merge the lists per query -> [rescore the
//   shortlist against the float rows] -> reported scores and ids.
// Everything runs on the caller's stream; the call returns after it finished.
#include <algorithm>  // std::min, std::max
#include <string>

#include "common.cuh"
#include "kernels.cuh"
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
        case codec_t::u8_k: return dim;
        case codec_t::binary_k: return binary_words(dim) * 8;
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
};

dense_store_t::dense_store_t(int device, codec_t codec, size_t dim, size_t rows, bool has_sq_norms,
                             bool has_float_rows, bool has_float_sq_norms)
    : impl_(new impl_t) {
    if (dim == 0) throw error("dim must be positive");
    // A candidate key holds ~row in 32 bits; all ones is kept free.
    if (rows >= 0xFFFFFFFFull) throw error("a GPU store holds at most 4294967294 rows; shard the index");
    device_guard_t guard(device);
    impl_t& s = *impl_;
    s.device = device;
    s.codec = codec;
    s.dim = dim;
    s.rows = rows;
    s.chunks = ceil_div(row_bytes(codec, dim), 16);
    s.codes = device_buffer_t<uint4>(rows * s.chunks);
    if (s.codes.bytes()) FC_CUDA_CHECK(cudaMemset(s.codes.get(), 0, s.codes.bytes()));  // the padding must be 0
    s.ids = device_buffer_t<int64_t>(rows);
    if (has_sq_norms) s.sq_norms = device_buffer_t<float>(rows);
    if (codec == codec_t::u8_k) {
        s.scale = device_buffer_t<float>(rows);
        s.offset = device_buffer_t<float>(rows);
    }
    if (has_float_rows) {
        s.float_stride = round_up(dim, 4);
        s.float_rows = device_buffer_t<float>(rows * s.float_stride);
        if (s.float_rows.bytes()) FC_CUDA_CHECK(cudaMemset(s.float_rows.get(), 0, s.float_rows.bytes()));
    }
    if (has_float_sq_norms) s.float_sq_norms = device_buffer_t<float>(rows);
    FC_CUDA_CHECK(cudaDeviceSynchronize());  // the memsets are done before any upload on another stream
}

dense_store_t::~dense_store_t() {
    if (!impl_) return;
    // Free on the store's device, whatever device the caller has current.
    int current = -1;
    if (cudaGetDevice(&current) == cudaSuccess && current != impl_->device) {
        (void)cudaSetDevice(impl_->device);
        impl_.reset();
        (void)cudaSetDevice(current);
    }
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
    impl_t& s = *impl_;
    if (n == 0) return;
    if (src == nullptr) throw error(field + ": no data");
    char* base = nullptr;  // the field's device array, null when the store was created without it
    size_t dst_pitch = 0, width = 0, limit = s.rows;
    bool rows_of_vectors = false;
    if (field == "codes") {
        base = reinterpret_cast<char*>(s.codes.get());
        dst_pitch = s.chunks * 16;
        width = row_bytes(s.codec, s.dim);
        rows_of_vectors = true;
    } else if (field == "float_rows") {
        base = reinterpret_cast<char*>(s.float_rows.get());
        dst_pitch = s.float_stride * 4;
        width = s.dim * 4;
        rows_of_vectors = true;
    } else if (field == "ids") {
        base = reinterpret_cast<char*>(s.ids.get());
        width = 8;
    } else if (field == "sq_norms") {
        base = reinterpret_cast<char*>(s.sq_norms.get());
        width = 4;
    } else if (field == "float_sq_norms") {
        base = reinterpret_cast<char*>(s.float_sq_norms.get());
        width = 4;
    } else if (field == "scale" || field == "offset") {
        base = reinterpret_cast<char*>(field == "scale" ? s.scale.get() : s.offset.get());
        width = 4;
    } else {
        throw error("unknown field '" + field + "'");
    }
    if (!rows_of_vectors) {
        dst_pitch = width;
        if (n > 1 && src_pitch != width) throw error(field + ": expected a contiguous array");
    }
    if (row_begin > limit || n > limit - row_begin)
        throw error(field + ": rows " + std::to_string(row_begin) + ".." + std::to_string(row_begin + n) +
                    " are outside the store's " + std::to_string(limit));
    if (base == nullptr) throw error(field + ": this store was created without it");
    if (n > 1 && src_pitch < width) throw error(field + ": rows overlap (row pitch below the row size)");
    device_guard_t guard(s.device);
    // cudaMemcpyDefault: the source may be host (pageable or pinned) or device memory.
    FC_CUDA_CHECK(cudaMemcpy2D(base + row_begin * dst_pitch, dst_pitch, src, n > 1 ? src_pitch : width, width, n,
                               cudaMemcpyDefault));
}

void dense_store_t::search(const dense_search_t& a) const {
    const impl_t& s = *impl_;
    const bool l2 = a.metric == metric_t::l2_k;
    const bool binary = s.codec == codec_t::binary_k;
    if (a.k == 0) throw error("k must be positive");
    if (a.k > max_k) throw error("k: at most " + std::to_string(max_k) + " on the GPU, got " + std::to_string(a.k));
    if (a.rescore != 0) {
        if (a.rescore < a.k) throw error("rescore must be at least k");
        if (a.rescore > max_k)
            throw error("rescore: at most " + std::to_string(max_k) + " on the GPU, got " + std::to_string(a.rescore));
        if (!s.float_rows.get() && s.rows > 0)
            throw error("rescore needs the float32 copy of the rows (build the index with keep_float=True)");
        if (l2 && !s.float_sq_norms.get() && s.rows > 0) throw error("l2 rescoring needs the float copy's squared norms");
    }
    if (l2 && !binary && !s.sq_norms.get() && s.rows > 0) throw error("l2 search needs the rows' squared norms");
    if (a.nq == 0) return;
    if (a.queries == nullptr || a.out_scores == nullptr || a.out_ids == nullptr) throw error("queries or outputs are missing");
    const bool mma_codec = s.codec == codec_t::f16_k || s.codec == codec_t::u8_k;
    if (a.path == dense_path_t::mma_k && !mma_codec) throw error("the tensor-core path takes f16 or int8 storage");

    device_guard_t guard(s.device);
    const cudaStream_t stream = reinterpret_cast<cudaStream_t>(a.stream);
    const size_t nq = a.nq, k = a.k, dim = s.dim;

    float* out_scores = a.out_scores;
    int64_t* out_ids = a.out_ids;
    device_buffer_t<float> staged_scores;
    device_buffer_t<int64_t> staged_ids;
    if (!a.on_device) {
        staged_scores = device_buffer_t<float>(nq * k, stream);
        staged_ids = device_buffer_t<int64_t>(nq * k, stream);
        out_scores = staged_scores.get();
        out_ids = staged_ids.get();
    }
    device_buffer_t<int> bad(2, stream);
    FC_CUDA_CHECK(cudaMemsetAsync(bad.get(), 0x7F, 2 * sizeof(int), stream));  // 0x7F7F7F7F: no bad row

    // Kept alive until the stream is synchronised below.
    device_buffer_t<float> staged_queries, qf, constants, inv_scale, qx;
    device_buffer_t<__half> qh, ql;
    device_buffer_t<double> q_sq_norms;
    device_buffer_t<uint64_t> lists, merged, rescored, shortlist;

    if (s.rows == 0) {
        launch_fill_missing(out_scores, out_ids, nq * k, l2, stream);
    } else {
        const float* queries = a.queries;
        if (!a.on_device) {
            staged_queries = device_buffer_t<float>(nq * dim, stream);
            FC_CUDA_CHECK(cudaMemcpyAsync(staged_queries.get(), a.queries, nq * dim * sizeof(float),
                                          cudaMemcpyHostToDevice, stream));
            queries = staged_queries.get();
        }
        const bool mma = mma_codec && (a.path == dense_path_t::mma_k ||
                                       (a.path == dense_path_t::auto_k && nq >= mma_min_batch));
        const size_t keep = a.rescore != 0 ? std::min(a.rescore, s.rows) : std::min(k, s.rows);
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
        p.bad = bad.get();
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
        if (s.codec == codec_t::u8_k) {
            constants = device_buffer_t<float>(nq, stream);
            p.constants = constants.get();
        }
        if (l2) {
            q_sq_norms = device_buffer_t<double>(nq, stream);
            p.q_sq_norms = q_sq_norms.get();
        }
        if (a.rescore != 0) {
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
        const size_t rescore_cap = topk_capacity(final_k, rescore_round);
        if (a.rescore != 0) {
            shortlist = device_buffer_t<uint64_t>(std::min(batch, nq) * keep, stream);
            rescored = device_buffer_t<uint64_t>(std::min(batch, nq) * rescore_cap, stream);
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
            e.hamming = binary && a.rescore == 0;
            e.dim = float(dim);

            merge_args_t mg;
            mg.lists = lists.get();
            mg.group = int(group);
            mg.row_blocks = row_blocks;
            mg.list_cap = int(cap);
            mg.list_k = int(keep);
            mg.nq = nb;
            mg.work = merged.get();
            mg.k = int(keep);
            mg.cap = int(merge_cap);
            mg.keys_out = a.rescore != 0 ? shortlist.get() : nullptr;
            mg.emit = e;
            launch_merge(mg, stream);

            if (a.rescore != 0) {
                rescore_args_t r;
                r.candidates = shortlist.get();
                r.depth = int(keep);
                r.qx = qx.get() + b0 * s.float_stride;
                r.float_rows = s.float_rows.get();
                r.stride = int(s.float_stride);
                r.float_sq_norms = s.float_sq_norms.get();
                r.l2 = l2;
                r.nq = nb;
                r.work = rescored.get();
                r.k = int(final_k);
                r.cap = int(rescore_cap);
                r.emit = e;
                launch_rescore(r, stream);
            }
        }
    }

    if (!a.on_device) {
        FC_CUDA_CHECK(cudaMemcpyAsync(a.out_scores, out_scores, nq * k * sizeof(float), cudaMemcpyDeviceToHost, stream));
        FC_CUDA_CHECK(cudaMemcpyAsync(a.out_ids, out_ids, nq * k * sizeof(int64_t), cudaMemcpyDeviceToHost, stream));
    }
    int flags[2];
    FC_CUDA_CHECK(cudaMemcpyAsync(flags, bad.get(), sizeof(flags), cudaMemcpyDeviceToHost, stream));
    FC_CUDA_CHECK(cudaStreamSynchronize(stream));
    if (size_t(flags[0]) < nq)
        throw error("queries: row " + std::to_string(flags[0]) + " contains NaN or inf; remove or fix it");
    if (size_t(flags[1]) < nq)
        throw error("queries: row " + std::to_string(flags[1]) +
                    " is all zeros and has no direction under metric='cosine'");
}

void topk(int device, const float* scores, size_t m, size_t n, bool on_device, size_t k, float* out_values,
          int64_t* out_indices, uintptr_t stream_handle) {
    if (k == 0) throw error("k must be positive");
    if (k > max_k) throw error("k: at most " + std::to_string(max_k) + " on the GPU, got " + std::to_string(k));
    if (n >= 0xFFFFFFFFull) throw error("topk: rows of at most 4294967294 scores");
    if (m == 0) return;
    if (out_values == nullptr || out_indices == nullptr || (n > 0 && scores == nullptr))
        throw error("scores or outputs are missing");
    device_guard_t guard(device);
    const cudaStream_t stream = reinterpret_cast<cudaStream_t>(stream_handle);

    float* values = out_values;
    int64_t* indices = out_indices;
    device_buffer_t<float> staged_values, staged_scores;
    device_buffer_t<int64_t> staged_indices;
    device_buffer_t<uint64_t> lists, merged;
    if (!on_device) {
        staged_values = device_buffer_t<float>(m * k, stream);
        staged_indices = device_buffer_t<int64_t>(m * k, stream);
        values = staged_values.get();
        indices = staged_indices.get();
    }
    if (n == 0) {
        launch_fill_missing(values, indices, m * k, false, stream);
    } else {
        const float* x = scores;
        if (!on_device) {
            staged_scores = device_buffer_t<float>(m * n, stream);
            FC_CUDA_CHECK(cudaMemcpyAsync(staged_scores.get(), scores, m * n * sizeof(float), cudaMemcpyHostToDevice,
                                          stream));
            x = staged_scores.get();
        }
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

            merge_args_t mg;
            mg.lists = lists.get();
            mg.group = 1;
            mg.row_blocks = row_blocks;
            mg.list_cap = int(cap);
            mg.list_k = int(keep);
            mg.nq = nb;
            mg.work = merged.get();
            mg.k = int(keep);
            mg.cap = int(merge_cap);
            mg.emit.scores = values + b0 * k;
            mg.emit.ids_out = indices + b0 * k;
            mg.emit.k = k;
            launch_merge(mg, stream);
        }
    }
    if (!on_device) {
        FC_CUDA_CHECK(cudaMemcpyAsync(out_values, values, m * k * sizeof(float), cudaMemcpyDeviceToHost, stream));
        FC_CUDA_CHECK(cudaMemcpyAsync(out_indices, indices, m * k * sizeof(int64_t), cudaMemcpyDeviceToHost, stream));
    }
    FC_CUDA_CHECK(cudaStreamSynchronize(stream));
}

}  // namespace cuda
}  // namespace flatcoat
