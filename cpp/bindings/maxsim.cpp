// Bindings of MaxSim search over packed multi-vector documents. The Python
// layer (python/flatcoat/multivector.py) validates user input and prepares
// the arrays; these functions check buffers and sizes, never copy or cast.
#include <algorithm>  // std::min
#include <string>

#include "common.hpp"
#include "flatcoat/maxsim_search.hpp"

namespace flatcoat {
namespace bindings {

namespace {

/// Checks a packed offsets array (n + 1 entries ending at `rows` of `unit`); returns its pointer.
const int64_t* packed_offsets(const py::handle& offsets_obj, const char* name, size_t rows,
                              const char* unit = "token rows") {
    const int64_t* p = checked<int64_t>(offsets_obj, name, 1);
    const py::array offsets = array_arg(offsets_obj, name);
    if (offsets.shape(0) < 1) throw py::value_error(std::string(name) + ": needs at least one entry (0)");
    if (p[offsets.shape(0) - 1] != int64_t(rows))
        throw py::value_error(std::string(name) + ": last offset is " + std::to_string(p[offsets.shape(0) - 1]) +
                              " but there are " + std::to_string(rows) + " " + unit);
    return p;
}

maxsim_data_t make_data(const std::string& storage, size_t dim, const py::object& tokens_obj,
                        const py::object& offsets, const py::object& token_scales) {
    const py::array tokens = array_arg(tokens_obj, "tokens");
    maxsim_data_t data;
    data.codec = maxsim_codec(codec_from_name(storage));
    data.dim = dim;
    switch (data.codec) {
        case codec_t::f32_k: data.tokens = checked<float>(tokens, "tokens", 2); break;
        case codec_t::f16_k: data.tokens = checked<uint16_t>(tokens, "tokens", 2); break;
        case codec_t::int8_k: data.tokens = checked<uint8_t>(tokens, "tokens", 2); break;
        case codec_t::binary_k: break;  // refused by maxsim_codec()
    }
    expect_extent(tokens, "tokens", 1, dim, "columns");
    const size_t rows = size_t(tokens.shape(0));
    data.offsets = packed_offsets(offsets, "offsets", rows);
    data.docs = length(offsets) - 1;
    data.token_scales = checked_or_null<float>(token_scales, "token_scales", 1, rows);
    return data;
}

maxsim_query_t make_query(size_t dim, const py::object& queries_obj, const py::object& query_offsets,
                          const py::object& weights) {
    const py::array queries = array_arg(queries_obj, "queries");
    maxsim_query_t query;
    query.tokens = checked<float>(queries, "queries", 2);
    expect_extent(queries, "queries", 1, dim, "columns");
    const size_t rows = size_t(queries.shape(0));
    query.offsets = packed_offsets(query_offsets, "query_offsets", rows);
    query.nq = length(query_offsets) - 1;
    query.weights = checked_or_null<float>(weights, "weights", 1, rows);
    return query;
}

py::tuple search_maxsim_py(const std::string& storage, int64_t dim_arg, const py::object& tokens,
                           const py::object& offsets, const py::object& token_scales, const py::object& ids,
                           const py::object& queries, const py::object& query_offsets, const py::object& weights,
                           int64_t k_arg, const py::object& subset, const py::object& subset_offsets_obj,
                           const py::object& filter) {
    const size_t dim = count(dim_arg, "dim", 1);
    size_t k = count(k_arg, "k", 1);
    maxsim_data_t data = make_data(storage, dim, tokens, offsets, token_scales);
    data.ids = checked<int64_t>(ids, "ids", 1);
    expect_extent(array_arg(ids, "ids"), "ids", 0, data.docs, "entries");
    maxsim_query_t query = make_query(dim, queries, query_offsets, weights);
    query.filter = checked_filter(filter, data.docs, "documents");

    const int64_t* subset_positions = nullptr;
    const int64_t* subset_offsets = nullptr;
    if (!subset.is_none()) {
        subset_positions = checked<int64_t>(subset, "subset", 1);
        if (subset_offsets_obj.is_none()) throw py::value_error("subset: needs subset_offsets");
        subset_offsets = packed_offsets(subset_offsets_obj, "subset_offsets", length(subset), "subset entries");
        expect_extent(array_arg(subset_offsets_obj, "subset_offsets"), "subset_offsets", 0, query.nq + 1, "entries");
    }

    // The result rule: never more columns than documents, so memory is bounded by the index.
    k = std::min(k, data.docs);
    py::array_t<float> out_scores({query.nq, k});
    py::array_t<int64_t> out_ids({query.nq, k});
    if (k == 0) {
        if (subset_positions != nullptr) normalize_subset(subset_positions, subset_offsets, query.nq, data.docs);
        return py::make_tuple(out_scores, out_ids);
    }
    float* scores_ptr = out_scores.mutable_data();
    int64_t* ids_ptr = out_ids.mutable_data();
    {
        py::gil_scoped_release release;
        search_maxsim(data, query, k, subset_positions, subset_offsets, scores_ptr, ids_ptr);
    }
    return py::make_tuple(out_scores, out_ids);
}

py::array_t<float> maxsim_scores_py(const std::string& storage, int64_t dim_arg, const py::object& tokens,
                                    const py::object& offsets, const py::object& token_scales,
                                    const py::object& queries, const py::object& query_offsets,
                                    const py::object& weights, bool emulate_tiles) {
    const size_t dim = count(dim_arg, "dim", 1);
    maxsim_data_t data = make_data(storage, dim, tokens, offsets, token_scales);
    maxsim_query_t query = make_query(dim, queries, query_offsets, weights);
    py::array_t<float> out({query.nq, data.docs});
    float* out_ptr = out.mutable_data();
    {
        py::gil_scoped_release release;
        maxsim_scores(data, query, out_ptr, emulate_tiles);
    }
    return out;
}

}  // namespace

void bind_maxsim(py::module_& m) {
    m.def("search_maxsim", &search_maxsim_py, py::arg("storage"), py::arg("dim"), py::arg("tokens"),
          py::arg("offsets"), py::arg("token_scales"), py::arg("ids"), py::arg("queries"), py::arg("query_offsets"),
          py::arg("weights"), py::arg("k"), py::arg("subset") = py::none(), py::arg("subset_offsets") = py::none(),
          py::kw_only(), py::arg("filter") = py::none(),
          "Exact MaxSim over packed documents with fused top-k; returns (scores float32 (nq, k'), ids int64\n"
          "(nq, k')), k' = min(k, docs). subset: document positions each query is restricted to, split per\n"
          "query by subset_offsets (nq + 1); rows with fewer are padded with id -1 and score -inf.\n"
          "filter: None or uint64 (ceil(docs / 64),) bits over the document positions (LSB first), ANDed\n"
          "with the subset; masked documents are never scored.");
    m.def("maxsim_scores", &maxsim_scores_py, py::arg("storage"), py::arg("dim"), py::arg("tokens"),
          py::arg("offsets"), py::arg("token_scales"), py::arg("queries"), py::arg("query_offsets"),
          py::arg("weights"), py::kw_only(), py::arg("emulate_tiles") = false,
          "All MaxSim scores, float32 (nq, docs); emulate_tiles: int8 on the AMX tile kernel, emulated.");
}

}  // namespace bindings
}  // namespace flatcoat
