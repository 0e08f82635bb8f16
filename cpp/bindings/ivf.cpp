// Bindings of k-means, the product quantizer and IVF search.
#include <algorithm>  // std::min
#include <string>
#include <vector>

#include "common.hpp"
#include "flatcoat/ivf_search.hpp"
#include "flatcoat/kmeans.hpp"
#include "flatcoat/pq.hpp"

namespace flatcoat {
namespace bindings {

namespace {

/// (rows, columns) of a checked 2-d array.
std::pair<size_t, size_t> shape2(const py::handle& a) {
    const py::array array = py::reinterpret_borrow<py::array>(a);
    return {size_t(array.shape(0)), size_t(array.shape(1))};
}

py::array_t<float> kmeans_py(const py::object& x_obj, int64_t k_arg, int64_t iterations, int64_t seed, bool spherical,
                             int64_t max_points_per_centroid, int64_t two_level_above) {
    const float* x = checked<float>(x_obj, "x", 2);
    const auto [n, d] = shape2(x_obj);
    const size_t k = count(k_arg, "k", 1);
    if (d == 0) throw py::value_error("x: needs at least one column");
    if (n < k)
        throw py::value_error("x: k-means with k=" + std::to_string(k) + " needs at least k points, got " +
                              std::to_string(n));
    kmeans_params_t params;
    params.iterations = count(iterations, "iterations", 0);
    params.seed = uint64_t(count(seed, "seed", 0));
    params.spherical = spherical;
    params.max_points_per_centroid = count(max_points_per_centroid, "max_points_per_centroid", 0);
    params.two_level_above = count(two_level_above, "two_level_above", 0);
    py::array_t<float> out({k, d});
    float* out_ptr = out.mutable_data();
    {
        py::gil_scoped_release release;
        kmeans(x, n, d, k, params, out_ptr);
    }
    return out;
}

py::array_t<int64_t> assign_py(const py::object& x_obj, const py::object& c_obj, const std::string& metric) {
    const float* x = checked<float>(x_obj, "x", 2);
    const float* c = checked<float>(c_obj, "centroids", 2);
    const auto [n, d] = shape2(x_obj);
    const auto [k, dc] = shape2(c_obj);
    if (dc != d) expect_extent(py::reinterpret_borrow<py::array>(c_obj), "centroids", 1, d, "columns");
    if (k == 0) throw py::value_error("centroids: needs at least one row");
    if (d == 0) throw py::value_error("x: needs at least one column");
    const metric_t m = metric_from_name(metric);
    py::array_t<int64_t> out(n);
    int64_t* out_ptr = out.mutable_data();
    {
        py::gil_scoped_release release;
        assign(x, n, d, c, k, m, out_ptr);
    }
    return out;
}

py::tuple centroid_groups_py(const py::object& c_obj, int64_t n_groups_arg, int64_t seed, const std::string& metric) {
    const float* c = checked<float>(c_obj, "centroids", 2);
    const auto [k, d] = shape2(c_obj);
    if (k == 0 || d == 0) throw py::value_error("centroids: needs at least one row and one column");
    const size_t n_groups = n_groups_arg == 0 ? default_groups(k) : count(n_groups_arg, "n_groups", 1);
    const metric_t m = metric_from_name(metric);
    centroid_groups_t groups;
    {
        py::gil_scoped_release release;
        groups = group_centroids(c, k, d, n_groups, uint64_t(count(seed, "seed", 0)), m);
    }
    py::array_t<float> coarse({groups.n_groups, d});
    std::copy(groups.coarse.begin(), groups.coarse.end(), coarse.mutable_data());
    py::array_t<int64_t> offsets(groups.offsets.size()), members(groups.members.size());
    std::copy(groups.offsets.begin(), groups.offsets.end(), offsets.mutable_data());
    std::copy(groups.members.begin(), groups.members.end(), members.mutable_data());
    return py::make_tuple(coarse, offsets, members);
}

py::array_t<int64_t> assign_two_level_py(const py::object& x_obj, const py::object& c_obj, const py::object& coarse_obj,
                                         const py::object& offsets_obj, const py::object& members_obj,
                                         const std::string& metric) {
    const float* x = checked<float>(x_obj, "x", 2);
    const float* c = checked<float>(c_obj, "centroids", 2);
    const float* coarse = checked<float>(coarse_obj, "coarse", 2);
    const int64_t* offsets = checked<int64_t>(offsets_obj, "offsets", 1);
    const int64_t* members = checked<int64_t>(members_obj, "members", 1);
    const auto [n, d] = shape2(x_obj);
    const auto [k, dc] = shape2(c_obj);
    const auto [g, dg] = shape2(coarse_obj);
    if (dc != d) expect_extent(py::reinterpret_borrow<py::array>(c_obj), "centroids", 1, d, "columns");
    if (dg != d) expect_extent(py::reinterpret_borrow<py::array>(coarse_obj), "coarse", 1, d, "columns");
    if (k == 0 || g == 0) throw py::value_error("centroids, coarse: need at least one row each");
    if (d == 0) throw py::value_error("x: needs at least one column");
    expect_extent(py::reinterpret_borrow<py::array>(offsets_obj), "offsets", 0, g + 1, "entries");
    if (offsets[0] != 0 || offsets[g] != int64_t(length(members_obj)))
        throw py::value_error("offsets: must start at 0 and end at the number of members");
    for (size_t i = 0; i < g; ++i)
        if (offsets[i + 1] < offsets[i]) throw py::value_error("offsets: must not decrease");
    centroid_groups_t groups;
    groups.n_groups = g;
    groups.coarse.assign(coarse, coarse + g * d);
    groups.offsets.assign(offsets, offsets + g + 1);
    groups.members.assign(members, members + length(members_obj));
    const metric_t m = metric_from_name(metric);
    py::array_t<int64_t> out(n);
    int64_t* out_ptr = out.mutable_data();
    {
        py::gil_scoped_release release;
        assign_two_level(x, n, d, c, k, groups, m, out_ptr);
    }
    return out;
}

py::array_t<float> pq_train_py(const py::object& x_obj, int64_t m_arg, int64_t iterations, int64_t seed) {
    const float* x = checked<float>(x_obj, "x", 2);
    const auto [n, d] = shape2(x_obj);
    const size_t m = count(m_arg, "m", 1);
    if (d == 0 || d % m != 0)
        throw py::value_error("m: must divide the dimension (" + std::to_string(d) + "), got " + std::to_string(m));
    if (n < pq4_centroids_k) throw py::value_error("x: pq_train needs at least 16 points, got " + std::to_string(n));
    const size_t its = count(iterations, "iterations", 0), s = size_t(count(seed, "seed", 0));
    py::array_t<float> out({m, pq4_centroids_k, d / m});
    float* out_ptr = out.mutable_data();
    {
        py::gil_scoped_release release;
        pq_train(x, n, d, m, its, s, out_ptr);
    }
    return out;
}

py::array_t<uint8_t> pq_encode_py(const py::object& x_obj, const py::object& books_obj, const py::object& originals,
                                  const py::object& eta_obj) {
    const float* x = checked<float>(x_obj, "x", 2);
    const float* books = checked<float>(books_obj, "codebooks", 3);
    const auto [n, d] = shape2(x_obj);
    const py::array b = py::reinterpret_borrow<py::array>(books_obj);
    const size_t m = size_t(b.shape(0));
    if (m == 0 || d % m != 0)
        throw py::value_error("codebooks: " + std::to_string(m) + " sub-spaces do not divide the dimension " +
                              std::to_string(d));
    expect_extent(b, "codebooks", 1, pq4_centroids_k, "centroids");
    expect_extent(b, "codebooks", 2, d / m, "dimensions per sub-space");
    const float* orig = checked_or_null<float>(originals, "originals", 2, n);
    if (orig) expect_extent(py::reinterpret_borrow<py::array>(originals), "originals", 1, d, "columns");
    std::vector<float> eta_scalar;
    const float* eta = nullptr;
    size_t eta_count = 0;
    if (py::isinstance<py::array>(eta_obj)) {
        eta = checked_or_null<float>(eta_obj, "eta", 1, n);
        eta_count = n;
    } else {
        eta_scalar.push_back(py::cast<float>(eta_obj));
        if (!(eta_scalar[0] >= 0.0f)) throw py::value_error("eta: must be >= 0");
        eta = eta_scalar.data();
        eta_count = 1;
    }
    if (orig == nullptr) eta = nullptr;
    else if (eta_count == 1 && eta_scalar[0] == 0.0f) eta = eta_scalar.data();
    py::array_t<uint8_t> out({n, m});
    uint8_t* out_ptr = out.mutable_data();
    {
        py::gil_scoped_release release;
        pq_encode(x, n, d, books, m, orig, eta, eta_count, out_ptr);
    }
    return out;
}

py::array_t<uint8_t> pq4_pack_py(const py::object& codes_obj) {
    const uint8_t* codes = checked<uint8_t>(codes_obj, "codes", 2);
    const auto [n, m] = shape2(codes_obj);
    if (m == 0) throw py::value_error("codes: needs at least one column (sub-quantizer)");
    for (size_t i = 0; i < n * m; ++i)
        if (codes[i] > 15)
            throw py::value_error("codes: 4-bit codes must be 0..15, got " + std::to_string(codes[i]) + " at row " +
                                  std::to_string(i / m));
    const size_t blocks = (n + pq4_block_k - 1) / pq4_block_k;
    py::array_t<uint8_t> out({blocks, pq4_block_bytes(m)});
    uint8_t* out_ptr = out.mutable_data();
    {
        py::gil_scoped_release release;
        pq4_pack(codes, n, m, out_ptr);
    }
    return out;
}

py::array_t<uint8_t> pq4_unpack_py(const py::object& packed_obj, int64_t n_arg) {
    const uint8_t* packed = checked<uint8_t>(packed_obj, "packed", 2);
    const auto [blocks, bytes] = shape2(packed_obj);
    const size_t n = count(n_arg, "n", 0);
    if (bytes == 0 || bytes % 16 != 0)
        throw py::value_error("packed: a block holds 16 * m bytes, got " + std::to_string(bytes));
    if (n > blocks * pq4_block_k)
        throw py::value_error("n: " + std::to_string(blocks) + " blocks hold at most " +
                              std::to_string(blocks * pq4_block_k) + " vectors, got " + std::to_string(n));
    const size_t m = bytes / 16;
    py::array_t<uint8_t> out({n, m});
    uint8_t* out_ptr = out.mutable_data();
    {
        py::gil_scoped_release release;
        pq4_unpack(packed, n, m, out_ptr);
    }
    return out;
}

py::tuple search_ivf_py(const std::string& storage, const std::string& metric, int64_t dim_arg,
                        const py::object& centroids, const py::object& list_offsets, const py::object& codes,
                        const py::object& slot_ids, const py::object& codebooks, const py::object& scale,
                        const py::object& offset, const py::object& sq_norms, const py::object& float_rows,
                        const py::object& slot_rows, const py::object& float_sq_norms, const py::object& queries_obj,
                        int64_t k_arg, int64_t nprobe_arg, int64_t rerank_arg, const py::object& filter) {
    ivf_data_t data;
    data.dim = count(dim_arg, "dim", 1);
    const size_t dim = data.dim;
    data.pq4 = storage == "pq4";
    if (!data.pq4) data.codec = codec_from_name(storage);
    const size_t k = count(k_arg, "k", 1), nprobe = count(nprobe_arg, "nprobe", 1),
                 rerank = count(rerank_arg, "rerank", 0);

    data.centroids = checked<float>(centroids, "centroids", 2);
    data.nlist = length(centroids);
    if (data.nlist == 0) throw py::value_error("centroids: the index has no lists (train it first)");
    expect_extent(py::reinterpret_borrow<py::array>(centroids), "centroids", 1, dim, "columns");
    data.list_offsets = checked<int64_t>(list_offsets, "list_offsets", 1);
    expect_extent(py::reinterpret_borrow<py::array>(list_offsets), "list_offsets", 0, data.nlist + 1, "entries");
    data.slot_ids = checked<int64_t>(slot_ids, "slot_ids", 1);
    data.total_slots = length(slot_ids);
    const py::array codes_array = array_arg(codes, "codes");
    if (data.pq4) {
        data.codes = checked<uint8_t>(codes, "codes", 2);
        data.codebooks = checked<float>(codebooks, "codebooks", 3);
        const py::array b = py::reinterpret_borrow<py::array>(codebooks);
        data.m = size_t(b.shape(0));
        if (data.m == 0 || dim % data.m != 0)
            throw py::value_error("codebooks: " + std::to_string(data.m) + " sub-spaces do not divide dim " +
                                  std::to_string(dim));
        expect_extent(b, "codebooks", 1, pq4_centroids_k, "centroids");
        expect_extent(b, "codebooks", 2, dim / data.m, "dimensions per sub-space");
        if (data.total_slots % pq4_block_k != 0)
            throw py::value_error("slot_ids: pq4 slots come in blocks of 32, got " + std::to_string(data.total_slots));
        expect_extent(codes_array, "codes", 0, data.total_slots / pq4_block_k, "blocks");
        expect_extent(codes_array, "codes", 1, pq4_block_bytes(data.m), "bytes per block (16 * m)");
    } else {
        data.codes = checked_codes(data.codec, codes, dim, data.total_slots);
        data.scale = checked_or_null<float>(scale, "scale", 1, data.total_slots);
        data.offset = checked_or_null<float>(offset, "offset", 1, data.total_slots);
        data.sq_norms = checked_or_null<float>(sq_norms, "sq_norms", 1, data.total_slots);
    }
    if (!float_rows.is_none()) {
        data.float_rows = checked<float>(float_rows, "float_rows", 2);
        data.n_rows = length(float_rows);
        expect_extent(py::reinterpret_borrow<py::array>(float_rows), "float_rows", 1, dim, "columns");
    }
    data.slot_rows = checked_or_null<int64_t>(slot_rows, "slot_rows", 1, data.total_slots);
    data.float_sq_norms = checked_or_null<float>(float_sq_norms, "float_sq_norms", 1, data.n_rows);

    ivf_query_t query;
    query.queries = checked<float>(queries_obj, "queries", 2);
    expect_extent(py::reinterpret_borrow<py::array>(queries_obj), "queries", 1, dim, "columns");
    query.nq = length(queries_obj);
    if (rerank != 0 && rerank < k)
        throw py::value_error("rerank: must be at least k (" + std::to_string(k) + "), got " + std::to_string(rerank));
    if (rerank != 0 && (data.float_rows == nullptr || data.slot_rows == nullptr))
        throw py::value_error("rerank: needs float_rows and slot_rows (build the index with keep_float=True)");
    // The result rule: k' = min(k, live slots), counted only as far as k.
    size_t live = 0;
    for (size_t s = 0; s < data.total_slots && live < k; ++s) live += data.slot_ids[s] >= 0;
    query.k = std::min(k, live);
    query.nprobe = nprobe;
    query.metric = metric_from_name(metric);
    query.rerank = rerank;
    query.filter = checked_filter(filter, data.total_slots, "slots");

    return search_results(query.nq, query.k,
                          [&](float* scores, int64_t* ids) { search_ivf(data, query, scores, ids); });
}

}  // namespace

void bind_ivf(py::module_& m) {
    m.def("kmeans", &kmeans_py, py::arg("x"), py::arg("k"), py::arg("iterations") = 10,
          py::arg("seed") = 0, py::arg("spherical") = false, py::arg("max_points_per_centroid") = 256,
          py::arg("two_level_above") = 0,
          "k-means of float32 (n, d) rows, n >= k: float32 (k, d) centroids; deterministic in seed for any\n"
          "thread count. spherical: max inner product assignment, unit centroids. two_level_above: with k\n"
          "above it (0: never), iterations assign through a two-level quantizer (about 2 sqrt(k) dot\n"
          "products per point instead of k).");
    m.def("centroid_groups", &centroid_groups_py, py::arg("centroids"), py::arg("n_groups") = 0, py::arg("seed") = 0,
          py::arg("metric") = "l2",
          "A two-level quantizer over float32 (k, d) centroids: (coarse float32 (g, d), offsets int64 (g + 1,),\n"
          "members int64 (k,)), group j's centroids members[offsets[j]:offsets[j + 1]], ascending;\n"
          "n_groups 0: 2^ceil(log2(sqrt(k))).");
    m.def("assign_two_level", &assign_two_level_py, py::arg("x"), py::arg("centroids"), py::arg("coarse"),
          py::arg("offsets"), py::arg("members"), py::arg("metric"),
          "Each row's best centroid within its best group (centroid_groups' arrays): int64 (n,); ties to\n"
          "the smaller index; a row whose group is empty is assigned over all centroids.");
    m.def("assign", &assign_py, py::arg("x"), py::arg("centroids"), py::arg("metric"),
          "Nearest centroid of each row: int64 (n,); ip: max inner product, l2: min squared distance;\n"
          "ties to the smaller index.");
    m.def("pq_train", &pq_train_py, py::arg("x"), py::arg("m"), py::arg("iterations") = 10,
          py::arg("seed") = 0, "4-bit PQ codebooks of float32 (n, d) rows, n >= 16: float32 (m, 16, d / m).");
    m.def("pq_encode", &pq_encode_py, py::arg("x"), py::arg("codebooks"),
          py::arg("originals") = py::none(), py::arg("eta") = 0.0f,
          "4-bit PQ codes of float32 (n, d) rows (residuals): uint8 (n, m), one code 0..15 per byte.\n"
          "originals (n, d) and eta > 0 (a float, or float32 (n,) per vector) switch on anisotropic encoding.");
    m.def("pq4_pack", &pq4_pack_py, py::arg("codes"),
          "uint8 (n, m) codes 0..15 to the fast-scan layout: uint8 (ceil(n / 32), 16 * m).");
    m.def("pq4_unpack", &pq4_unpack_py, py::arg("packed"), py::arg("n"),
          "The fast-scan layout back to uint8 (n, m) codes.");
    m.def("search_ivf", &search_ivf_py, py::arg("storage"), py::arg("metric"), py::arg("dim"), py::arg("centroids"),
          py::arg("list_offsets"), py::arg("codes"), py::arg("slot_ids"), py::arg("codebooks"), py::arg("scale"),
          py::arg("offset"), py::arg("sq_norms"), py::arg("float_rows"), py::arg("slot_rows"),
          py::arg("float_sq_norms"), py::arg("queries"), py::arg("k"), py::arg("nprobe"), py::arg("rerank"),
          py::kw_only(), py::arg("filter") = py::none(),
          "IVF search: (scores float32 (q, k'), ids int64 (q, k')), k' = min(k, live slots).\n"
          "filter: None or uint64 (ceil(total_slots / 64),) bits over the slots (LSB first): a query probes\n"
          "lists in centroid order until it has seen enough allowed entries, or scores the allowed slots\n"
          "directly when that is cheaper; missing results are padded with id -1 and score -inf (+inf for l2).");
}

}  // namespace bindings
}  // namespace flatcoat
