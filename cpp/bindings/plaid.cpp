// Bindings of the PLAID index (python/flatcoat/plaid.py prepares every array;
// these functions check buffers and sizes, never copy or cast).
#include <cmath>  // std::isfinite
#include <string>

#include "common.hpp"
#include "flatcoat/plaid.hpp"

namespace flatcoat {
namespace bindings {

namespace {

size_t rows_of(const py::handle& a) { return size_t(py::reinterpret_borrow<py::array>(a).shape(0)); }

/// Checks a CSR offsets array of `n + 1` entries whose last one is `total`.
const int64_t* checked_offsets(const py::handle& o, const char* name, size_t total, const char* unit) {
    const int64_t* p = checked<int64_t>(o, name, 1);
    const size_t n = length(o);
    if (n < 1) throw py::value_error(std::string(name) + ": needs at least one entry (0)");
    if (p[n - 1] != int64_t(total))
        throw py::value_error(std::string(name) + ": last offset is " + std::to_string(p[n - 1]) + " but there are " +
                              std::to_string(total) + " " + unit);
    return p;
}

/// True for a uint16 array (the compact centroid ids); anything else is checked as int32.
bool uint16_ids(const py::handle& a) {
    return py::isinstance<py::array>(a) &&
           same_dtype(py::reinterpret_borrow<py::array>(a).dtype(), py::dtype::of<uint16_t>());
}

size_t checked_nbits(int64_t nbits) {
    if (nbits != 1 && nbits != 2 && nbits != 4)
        throw py::value_error("nbits: must be 1, 2 or 4, got " + std::to_string(nbits));
    return size_t(nbits);
}

/// The centroid table (n_centroids x dim float32) every PLAID binding reads, checked once.
struct centroid_table_t {
    const float* data;
    size_t n, dim;
};

centroid_table_t checked_centroids(const py::object& centroids) {
    const float* data = checked<float>(centroids, "centroids", 2);
    const py::array c = array_arg(centroids, "centroids");
    return {data, size_t(c.shape(0)), size_t(c.shape(1))};
}

/// The index view: centroids (C, dim) f32, weights (dim, 2^nbits) f32, codes (tokens, code_bytes) u8,
/// centroid_ids (tokens,) i32, offsets (docs + 1,), ids (docs,), ivf_offsets (C + 1,), ivf_docs i32.
plaid_index_t make_index(int64_t nbits, const py::object& centroids, const py::object& weights,
                         const py::object& codes, const py::object& centroid_ids, const py::object& offsets,
                         const py::object& ids, const py::object& ivf_offsets, const py::object& ivf_docs) {
    plaid_index_t index;
    index.nbits = checked_nbits(nbits);
    const centroid_table_t table = checked_centroids(centroids);
    index.centroids = table.data;
    index.n_centroids = table.n;
    index.dim = table.dim;
    if (index.dim == 0) throw py::value_error("centroids: needs at least one column");
    index.weights = checked<float>(weights, "weights", 2);
    expect_extent(array_arg(weights, "weights"), "weights", 0, index.dim, "rows");
    expect_extent(array_arg(weights, "weights"), "weights", 1, size_t(1) << index.nbits, "columns");
    index.codes = checked<uint8_t>(codes, "codes", 2);
    const size_t tokens = rows_of(codes);
    expect_extent(array_arg(codes, "codes"), "codes", 1, plaid_code_bytes(index.dim, index.nbits), "columns");
    if (uint16_ids(centroid_ids))
        index.centroid_ids16 = checked<uint16_t>(centroid_ids, "centroid_ids", 1);
    else
        index.centroid_ids = checked<int32_t>(centroid_ids, "centroid_ids", 1);
    expect_extent(array_arg(centroid_ids, "centroid_ids"), "centroid_ids", 0, tokens, "entries");
    index.offsets = checked_offsets(offsets, "offsets", tokens, "token rows");
    index.docs = length(offsets) - 1;
    index.ids = checked<int64_t>(ids, "ids", 1);
    expect_extent(array_arg(ids, "ids"), "ids", 0, index.docs, "entries");
    index.ivf_docs = checked<int32_t>(ivf_docs, "ivf_docs", 1);
    index.ivf_offsets = checked_offsets(ivf_offsets, "ivf_offsets", length(ivf_docs), "inverted file entries");
    expect_extent(array_arg(ivf_offsets, "ivf_offsets"), "ivf_offsets", 0, index.n_centroids + 1, "entries");
    return index;
}

py::object search_plaid_py(int64_t nbits, const py::object& centroids, const py::object& weights,
                           const py::object& codes, const py::object& centroid_ids, const py::object& offsets,
                           const py::object& ids, const py::object& ivf_offsets, const py::object& ivf_docs,
                           const py::object& queries_obj, const py::object& query_offsets,
                           const py::object& query_weights, int64_t k_arg, int64_t nprobe, int64_t ncandidates,
                           int64_t ndocs, const py::object& centroid_threshold, const py::object& filter,
                           bool stats, bool normalize) {
    plaid_index_t index = make_index(nbits, centroids, weights, codes, centroid_ids, offsets, ids, ivf_offsets,
                                     ivf_docs);
    index.normalize = normalize;
    maxsim_query_t query;
    query.tokens = checked<float>(queries_obj, "queries", 2);
    expect_extent(array_arg(queries_obj, "queries"), "queries", 1, index.dim, "columns");
    const size_t q_rows = rows_of(queries_obj);
    query.offsets = checked_offsets(query_offsets, "query_offsets", q_rows, "query token rows");
    query.nq = length(query_offsets) - 1;
    query.weights = checked_or_null<float>(query_weights, "query_weights", 1, q_rows);
    query.filter = checked_filter(filter, index.docs, "documents");

    plaid_params_t params;
    params.k = count(k_arg, "k", 1);
    params.nprobe = count(nprobe, "nprobe", 1);
    params.ndocs = count(ndocs, "ndocs", 1);
    params.ncandidates = count(ncandidates, "ncandidates", 1);
    if (params.ndocs < params.k)
        throw py::value_error("ndocs: must be at least k (" + std::to_string(params.k) + "), got " +
                              std::to_string(params.ndocs));
    if (params.ncandidates < params.ndocs)
        throw py::value_error("ncandidates: must be at least ndocs (" + std::to_string(params.ndocs) + "), got " +
                              std::to_string(params.ncandidates));
    if (!centroid_threshold.is_none()) {
        const double t = centroid_threshold.cast<double>();
        if (!std::isfinite(t)) throw py::value_error("centroid_threshold: must be finite");
        params.prune = true;
        params.centroid_threshold = float(t);
    }
    plaid_stats_t st;
    py::tuple result = search_results(query.nq, params.k, [&](float* s, int64_t* i) {
        search_plaid(index, query, params, s, i, &st);
    });
    if (!stats) return std::move(result);
    py::dict d;
    d["centroid_scores_s"] = st.seconds[0];
    d["candidates_s"] = st.seconds[1];
    d["interaction_s"] = st.seconds[2];
    d["exact_s"] = st.seconds[3];
    d["candidates"] = st.candidates;
    d["interacted"] = st.interacted;
    d["scored"] = st.scored;
    return py::make_tuple(result[0], result[1], d);
}

py::tuple build_ivf_py(const py::object& centroid_ids, const py::object& offsets, int64_t n_centroids_arg) {
    const bool narrow = uint16_ids(centroid_ids);
    const uint16_t* cids16 = narrow ? checked<uint16_t>(centroid_ids, "centroid_ids", 1) : nullptr;
    const int32_t* cids = narrow ? nullptr : checked<int32_t>(centroid_ids, "centroid_ids", 1);
    const int64_t* off = checked_offsets(offsets, "offsets", length(centroid_ids), "tokens");
    const size_t docs = length(offsets) - 1;
    const size_t n_centroids = count(n_centroids_arg, "n_centroids", 1);
    if (docs > size_t(INT32_MAX)) throw py::value_error("offsets: at most 2**31 - 1 documents");
    for (size_t i = 0; i < docs; ++i)
        if (off[i + 1] < off[i]) throw py::value_error("offsets: must not decrease");
    if (off[0] != 0) throw py::value_error("offsets: must start at 0");
    size_t size = 0;
    {
        py::gil_scoped_release release;
        size = narrow ? plaid_ivf_size(cids16, off, docs, n_centroids) : plaid_ivf_size(cids, off, docs, n_centroids);
    }
    py::array_t<int64_t> ivf_offsets(n_centroids + 1);
    py::array_t<int32_t> ivf_docs(size);
    int64_t* o = ivf_offsets.mutable_data();
    int32_t* d = ivf_docs.mutable_data();
    {
        py::gil_scoped_release release;
        if (narrow)
            plaid_build_ivf(cids16, off, docs, n_centroids, o, d);
        else
            plaid_build_ivf(cids, off, docs, n_centroids, o, d);
    }
    return py::make_tuple(ivf_offsets, ivf_docs);
}

py::array_t<float> decompress_py(int64_t nbits_arg, const py::object& codes, const py::object& centroid_ids,
                                 const py::object& centroids, const py::object& weights, bool normalize) {
    const size_t nbits = checked_nbits(nbits_arg);
    const auto [c, n_centroids, dim] = checked_centroids(centroids);
    const float* w = checked<float>(weights, "weights", 2);
    expect_extent(array_arg(weights, "weights"), "weights", 0, dim, "rows");
    expect_extent(array_arg(weights, "weights"), "weights", 1, size_t(1) << nbits, "columns");
    const uint8_t* x = checked<uint8_t>(codes, "codes", 2);
    const size_t n = rows_of(codes);
    expect_extent(array_arg(codes, "codes"), "codes", 1, plaid_code_bytes(dim, nbits), "columns");
    const int32_t* cids = checked<int32_t>(centroid_ids, "centroid_ids", 1);
    expect_extent(array_arg(centroid_ids, "centroid_ids"), "centroid_ids", 0, n, "entries");
    py::array_t<float> out({n, dim});
    float* out_ptr = out.mutable_data();
    {
        py::gil_scoped_release release;
        plaid_decompress(x, cids, n, c, n_centroids, w, dim, nbits, normalize, out_ptr);
    }
    return out;
}

py::array_t<uint8_t> encode_py(int64_t nbits_arg, const py::object& x_obj, const py::object& centroids,
                               const py::object& labels, const py::object& cutoffs) {
    const size_t nbits = checked_nbits(nbits_arg);
    const auto [c, n_centroids, dim] = checked_centroids(centroids);
    const float* x = checked<float>(x_obj, "x", 2);
    const size_t n = rows_of(x_obj);
    expect_extent(array_arg(x_obj, "x"), "x", 1, dim, "columns");
    const int64_t* l = checked<int64_t>(labels, "labels", 1);
    expect_extent(array_arg(labels, "labels"), "labels", 0, n, "entries");
    const float* cut = checked<float>(cutoffs, "cutoffs", 2);
    expect_extent(array_arg(cutoffs, "cutoffs"), "cutoffs", 0, dim, "rows");
    expect_extent(array_arg(cutoffs, "cutoffs"), "cutoffs", 1, (size_t(1) << nbits) - 1, "columns");
    py::array_t<uint8_t> out({n, plaid_code_bytes(dim, nbits)});
    uint8_t* out_ptr = out.mutable_data();
    {
        py::gil_scoped_release release;
        plaid_encode(x, n, dim, c, n_centroids, l, cut, nbits, out_ptr);
    }
    return out;
}

}  // namespace

void bind_plaid(py::module_& m) {
    m.def("search_plaid", &search_plaid_py, py::arg("nbits"), py::arg("centroids"), py::arg("weights"),
          py::arg("codes"), py::arg("centroid_ids"), py::arg("offsets"), py::arg("ids"), py::arg("ivf_offsets"),
          py::arg("ivf_docs"), py::arg("queries"), py::arg("query_offsets"), py::arg("query_weights"), py::arg("k"),
          py::arg("nprobe"), py::arg("ncandidates"), py::arg("ndocs"), py::kw_only(),
          py::arg("centroid_threshold") = py::none(), py::arg("filter") = py::none(), py::arg("stats") = false,
          py::arg("normalize") = false,
          "PLAID search (flatcoat/plaid.hpp): (scores float32 (nq, k), ids int64 (nq, k)), padded with -1/-inf;\n"
          "normalize=True rescales every decompressed token to unit norm (an index of unit-norm tokens);\n"
          "with stats=True a third item, a dict of per-stage seconds and sizes summed over the queries.\n"
          "The caller clamps k to the document count (the result rule).");
    m.def("plaid_build_ivf", &build_ivf_py, py::arg("centroid_ids"), py::arg("offsets"), py::arg("n_centroids"),
          "The inverted file (ivf_offsets int64 (n_centroids + 1,), ivf_docs int32) of int32 or uint16 centroid\n"
          "ids: each centroid's distinct\n"
          "document positions, ascending.");
    m.def("plaid_encode", &encode_py, py::arg("nbits"), py::arg("x"), py::arg("centroids"), py::arg("labels"),
          py::arg("cutoffs"),
          "Packed residual codes uint8 (n, ceil(dim * nbits / 8)) of float32 tokens x (n, dim) assigned to\n"
          "centroids labels (int64 (n,)): each dimension's code counts its cutoffs (dim, 2^nbits - 1) below\n"
          "the residual x - centroids[label].");
    m.def("plaid_decompress", &decompress_py, py::arg("nbits"), py::arg("codes"), py::arg("centroid_ids"),
          py::arg("centroids"), py::arg("weights"), py::kw_only(), py::arg("normalize") = false,
          "Decompressed tokens float32 (n, dim): centroids[id] + weights[d, code_d]; with normalize=True each\n"
          "row rescaled to unit norm.");
}

}  // namespace bindings
}  // namespace flatcoat
