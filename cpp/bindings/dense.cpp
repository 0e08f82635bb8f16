// Bindings of dense search and the id map.
#include <algorithm>  // std::min
#include <string>
#include <vector>

#if defined(__linux__)
#include <sys/mman.h>  // madvise
#include <unistd.h>    // sysconf
#endif

#include "common.hpp"
#include "flatcoat/dense_search.hpp"
#include "flatcoat/encode.hpp"
#include "flatcoat/id_map.hpp"

namespace flatcoat {
namespace bindings {

static py::tuple search_dense_py(const std::string& storage, const std::string& metric, int64_t dim_arg,
                                 const py::object& codes_obj, const py::object& ids_obj, const py::object& sq_norms,
                                 const py::object& scale, const py::object& offset, const py::object& float_rows,
                                 const py::object& float_sq_norms, const py::object& queries_obj, int64_t k_arg,
                                 int64_t rerank_arg, const py::object& filter) {
    const py::array codes = array_arg(codes_obj, "codes"), ids = array_arg(ids_obj, "ids"),
                    queries = array_arg(queries_obj, "queries");
    const size_t dim = count(dim_arg, "dim", 1), k = count(k_arg, "k", 1), rerank = count(rerank_arg, "rerank", 0);
    dense_data_t data;
    data.codec = codec_from_name(storage);
    data.dim = dim;
    data.ids = checked<int64_t>(ids, "ids", 1);
    data.rows = size_t(ids.shape(0));
    data.codes = checked_codes(data.codec, codes, dim, data.rows);
    data.sq_norms = checked_or_null<float>(sq_norms, "sq_norms", 1, data.rows);
    data.scale = checked_or_null<float>(scale, "scale", 1, data.rows);
    data.offset = checked_or_null<float>(offset, "offset", 1, data.rows);
    data.float_rows = checked_or_null<float>(float_rows, "float_rows", 2, data.rows);
    if (data.float_rows) expect_extent(py::reinterpret_borrow<py::array>(float_rows), "float_rows", 1, dim, "columns");
    data.float_sq_norms = checked_or_null<float>(float_sq_norms, "float_sq_norms", 1, data.rows);

    dense_query_t query;
    query.queries = checked<float>(queries, "queries", 2);
    expect_extent(queries, "queries", 1, dim, "columns");
    query.nq = size_t(queries.shape(0));
    if (rerank != 0 && rerank < k)
        throw py::value_error("rerank: must be at least k (" + std::to_string(k) + "), got " + std::to_string(rerank));
    // The result rule: never more columns than rows, so memory is bounded by the index.
    query.k = std::min(k, data.rows);
    query.metric = metric_from_name(metric);
    query.rerank = rerank;
    query.filter = checked_filter(filter, data.rows, "rows");

    return search_results(query.nq, query.k,
                          [&](float* scores, int64_t* ids) { search_dense(data, query, scores, ids); });
}

static py::array_t<uint64_t> binarize_py(const py::object& x_obj) {
    const float* data = checked<float>(x_obj, "x", 2);
    const py::array x = array_arg(x_obj, "x");
    size_t n = size_t(x.shape(0)), dim = size_t(x.shape(1));
    py::array_t<uint64_t> out({n, binary_words(dim)});
    uint64_t* out_ptr = out.mutable_data();
    {
        py::gil_scoped_release release;
        binarize(data, n, dim, out_ptr);
    }
    return out;
}

static py::tuple quantize_queries_py(const py::object& queries_obj) {
    const float* data = checked<float>(queries_obj, "queries", 2);
    const py::array queries = array_arg(queries_obj, "queries");
    const size_t nq = size_t(queries.shape(0)), dim = size_t(queries.shape(1));
    std::vector<int8_t> codes;
    std::vector<float> scales;
    {
        py::gil_scoped_release release;
        quantize_queries(data, nq, dim, codes, scales);
    }
    py::array_t<int8_t> codes_out({nq, dim});
    py::array_t<float> scales_out(nq);
    std::copy(codes.begin(), codes.end(), codes_out.mutable_data());
    std::copy(scales.begin(), scales.end(), scales_out.mutable_data());
    return py::make_tuple(codes_out, scales_out);
}

/// out (q, n) = queries (q, dim) x rows (n, dim)^T through `dots` (the core's
/// int8_dots or bf16_dots); `arg_t`: the element types as numpy holds them.
template <class q_arg_t, class x_arg_t, class out_t, class q_t, class x_t>
static py::array_t<out_t> dots_py(const py::object& q_obj, const py::object& x_obj, const char* q_name,
                                  const char* x_name, bool emulate_tiles,
                                  void (*dots)(const q_t*, size_t, const x_t*, size_t, size_t, out_t*, bool)) {
    const q_t* q = reinterpret_cast<const q_t*>(checked<q_arg_t>(q_obj, q_name, 2));
    const x_t* x = reinterpret_cast<const x_t*>(checked<x_arg_t>(x_obj, x_name, 2));
    const py::array qa = array_arg(q_obj, q_name), xa = array_arg(x_obj, x_name);
    const size_t nq = size_t(qa.shape(0)), nx = size_t(xa.shape(0)), dim = size_t(qa.shape(1));
    expect_extent(xa, x_name, 1, dim, "columns");
    py::array_t<out_t> out({nq, nx});
    out_t* out_ptr = out.mutable_data();
    {
        py::gil_scoped_release release;
        dots(q, nq, x, nx, dim, out_ptr, emulate_tiles);
    }
    return out;
}

static py::array_t<int32_t> int8_dots_py(const py::object& q, const py::object& x, bool emulate_tiles) {
    return dots_py<int8_t, uint8_t>(q, x, "query_codes", "codes", emulate_tiles, &int8_dots);
}

/// bfloat16 arrays travel as uint16 (their bits): numpy has no bfloat16.
static py::array_t<float> bf16_dots_py(const py::object& q, const py::object& x, bool emulate_tiles) {
    return dots_py<uint16_t, uint16_t>(q, x, "queries", "rows", emulate_tiles, &bf16_dots);
}

static void encode_dense_py(const std::string& storage, const py::object& x_obj, const py::object& codes,
                            const py::object& scale, const py::object& offset, const py::object& sq_norms,
                            const py::object& float_rows, const py::object& float_sq_norms, bool normalize) {
    const float* x = checked<float>(x_obj, "x", 2);
    const py::array x_array = array_arg(x_obj, "x");
    const size_t n = size_t(x_array.shape(0)), dim = size_t(x_array.shape(1));
    if (dim == 0) throw py::value_error("x: expected at least one column");
    const codec_t codec = codec_from_name(storage);
    dense_encode_out_t out;
    out.codes = const_cast<void*>(checked_codes(codec, codes, dim, n));
    if (!py::reinterpret_borrow<py::array>(codes).writeable())
        throw py::value_error("codes: array is read-only; pass a writable array");
    out.scale = writable_or_null<float>(scale, "scale", 1, n);
    out.offset = writable_or_null<float>(offset, "offset", 1, n);
    if (codec == codec_t::int8_k && !(out.scale && out.offset))
        throw py::value_error("scale, offset: int8 codes need both (float32 arrays of one entry per row)");
    out.sq_norms = writable_or_null<float>(sq_norms, "sq_norms", 1, n);
    if (codec == codec_t::binary_k && out.sq_norms) throw py::value_error("sq_norms: binary codes have none; pass None");
    out.float_rows = writable_or_null<float>(float_rows, "float_rows", 2, n);
    if (out.float_rows)
        expect_extent(py::reinterpret_borrow<py::array>(float_rows), "float_rows", 1, dim, "columns");
    out.float_sq_norms = writable_or_null<float>(float_sq_norms, "float_sq_norms", 1, n);
    py::gil_scoped_release release;
    encode_dense(codec, x, n, dim, normalize, out);
}

/// Asks the kernel to back an array's pages with transparent huge pages (where
/// THP is in "madvise" mode): fewer TLB misses when a scan streams gigabytes.
static bool advise_hugepages(const py::object& array) {
    const py::array a = array_arg(array, "array");
#if defined(__linux__) && defined(MADV_HUGEPAGE)
    const uintptr_t page = uintptr_t(sysconf(_SC_PAGESIZE));
    const uintptr_t begin = (reinterpret_cast<uintptr_t>(a.data()) + page - 1) & ~(page - 1);
    const uintptr_t end = (reinterpret_cast<uintptr_t>(a.data()) + size_t(a.nbytes())) & ~(page - 1);
    if (end > begin + (uintptr_t(2) << 20)) return madvise(reinterpret_cast<void*>(begin), end - begin, MADV_HUGEPAGE) == 0;
#endif
    (void)a;
    return false;
}

void bind_dense(py::module_& m) {
    m.def("advise_hugepages", &advise_hugepages, py::arg("array"),
          "madvise(MADV_HUGEPAGE) over the array's whole pages; True if advised.");
    m.def("search_dense", &search_dense_py, py::arg("storage"), py::arg("metric"), py::arg("dim"),
          py::arg("codes"), py::arg("ids"), py::arg("sq_norms"), py::arg("scale"), py::arg("offset"),
          py::arg("float_rows"), py::arg("float_sq_norms"), py::arg("queries"), py::arg("k"),
          py::arg("rerank") = 0, py::kw_only(), py::arg("filter") = py::none(),
          "Exhaustive search with fused top-k; returns (scores float32 (q, k'), ids int64 (q, k')),\n"
          "k' = min(k, rows). rerank=R >= k re-ranks the R best exactly against float_rows (0: none).\n"
          "filter: None or uint64 (ceil(rows / 64),) bits over the rows (LSB first); only allowed rows are\n"
          "returned, missing results padded with id -1 and score -inf (+inf for l2).");
    m.def("quantize_queries", &quantize_queries_py, py::arg("queries"),
          "The int8 scan's query codes: (codes int8 (q, dim), scales float32 (q,)), q ~ scale * code.");
    m.def("int8_dots", &int8_dots_py, py::arg("query_codes"), py::arg("codes"), py::kw_only(),
          py::arg("emulate_tiles") = false,
          "Exact int32 dot products of int8 query codes (q, dim) with uint8 row codes (n, dim): (q, n),\n"
          "with the active ISA's kernel; emulate_tiles: the AMX tile kernel on emulated tiles.");
    m.def("bf16_dots", &bf16_dots_py, py::arg("queries"), py::arg("rows"), py::kw_only(),
          py::arg("emulate_tiles") = false,
          "float32 (q, n) dot products of bfloat16 queries (q, dim) with bfloat16 rows (n, dim), both as\n"
          "uint16 bits, with the active ISA's bf16 scan kernels; emulate_tiles: the AMX tile kernel on\n"
          "emulated tiles.");
    m.def("encode_dense", &encode_dense_py, py::arg("storage"), py::arg("x"), py::arg("codes"), py::kw_only(),
          py::arg("scale") = py::none(), py::arg("offset") = py::none(), py::arg("sq_norms") = py::none(),
          py::arg("float_rows") = py::none(), py::arg("float_sq_norms") = py::none(), py::arg("normalize") = false,
          "Encodes float32 rows x (n, dim) as `storage` into the given arrays of n rows (codes in the layout of\n"
          "_storage.dense_code_layout; int8 also scale and offset; optional: sq_norms of the decoded rows,\n"
          "float_rows and float_sq_norms), in the core's threads. normalize: L2-normalise each row first\n"
          "(cosine). A ValueError names the first row with NaN or inf, else an all-zero row under normalize,\n"
          "else an f16 or bf16 row beyond its range; the outputs are then partly written.");
    m.def("binarize", &binarize_py, py::arg("x"), "Sign bits of float32 rows as uint64 words (bit j: x[j] > 0).");

    py::class_<id_map_t>(m, "IdMap", "Hash map from int64 ids to row positions.")
        .def(py::init<>())
        .def("__len__", &id_map_t::size)
        .def("clear", &id_map_t::clear)
        .def("reserve", [](id_map_t& self, int64_t n) { self.reserve(count(n, "n", 0)); }, py::arg("n"))
        .def(
            "insert_new",
            [](id_map_t& self, const py::object& ids, int64_t first_position) {
                const int64_t* p = checked<int64_t>(ids, "ids", 1);
                return self.insert_new(p, length(ids), first_position);
            },
            py::arg("ids"), py::arg("first_position"),
            "Inserts ids -> first_position + i, all or nothing; returns the index of the first duplicate or -1.")
        .def(
            "find",
            [](const id_map_t& self, const py::object& ids) {
                const int64_t* p = checked<int64_t>(ids, "ids", 1);
                py::array_t<int64_t> out(length(ids));
                self.find(p, length(ids), out.mutable_data());
                return out;
            },
            py::arg("ids"), "Positions of ids, -1 where absent.")
        .def(
            "assign",
            [](id_map_t& self, const py::object& ids, const py::object& positions) {
                const int64_t* i = checked<int64_t>(ids, "ids", 1);
                const int64_t* p = checked<int64_t>(positions, "positions", 1);
                if (length(ids) != length(positions)) throw py::value_error("positions: not as long as ids");
                self.assign(i, p, length(ids));
            },
            py::arg("ids"), py::arg("positions"), "Sets the positions of the ids that are present.")
        .def(
            "erase",
            [](id_map_t& self, const py::object& ids) {
                self.erase(checked<int64_t>(ids, "ids", 1), length(ids));
            },
            py::arg("ids"), "Removes the ids that are present.");
}

}  // namespace bindings
}  // namespace flatcoat
