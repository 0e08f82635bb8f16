// The extension module flatcoat._cuda, imported lazily by flatcoat.cuda.
//
// Every array argument is a numpy array (host) or an object with
// __cuda_array_interface__ (device), checked here before any CUDA call
// (arrays.hpp): dtype, rank, shape, C order, writable outputs, the same side
// for a call's inputs and outputs; then the devices of device arrays. Storage
// and metric names are parsed by the core (flatcoat/common.hpp). Errors:
// TypeError / ValueError for arguments, flatcoat::error -> ValueError,
// cuda_error -> RuntimeError with the CUDA error string. The GIL is released
// for every call that touches the device. `stream` is the producer's stream
// handle (the array interface's `stream`, torch's current stream), 0 for the
// legacy default stream.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <cstdint>
#include <string>

#include "api.cuh"
#include "arrays.hpp"
#include "flatcoat/maxsim_search.hpp"  // maxsim_codec
#include "maxsim_api.cuh"

namespace py = pybind11;
using namespace flatcoat;
using cuda::array_arg;
using cuda::array_arg_t;

namespace {

cuda::dense_path_t path_from_name(const std::string& name) {
    if (name == "auto") return cuda::dense_path_t::auto_k;
    if (name == "scan") return cuda::dense_path_t::scan_k;
    if (name == "mma") return cuda::dense_path_t::mma_k;
    throw error("path: expected 'auto', 'scan' or 'mma', got '" + name + "'");
}

int checked_device(int device) {
    if (device < 0) throw py::value_error("device: expected a CUDA device ordinal >= 0, got " + std::to_string(device));
    return device;
}

template <class T>
py::dtype dtype() {
    return py::dtype::of<T>();
}

/// The dtype of a storage's codes (f16 as its uint16 bits).
py::dtype code_dtype(codec_t codec) {
    switch (codec) {
        case codec_t::f32_k: return dtype<float>();
        case codec_t::f16_k: return dtype<uint16_t>();
        case codec_t::int8_k: return dtype<uint8_t>();
        case codec_t::binary_k: return dtype<uint64_t>();
        case codec_t::bf16_k: return dtype<uint16_t>();
    }
    return dtype<uint8_t>();
}

/// The (scores, ids) outputs of a call: float32 and int64 (rows x k), writable, on the side of `input`.
void check_outputs(const array_arg_t& scores, const array_arg_t& ids, const array_arg_t& input, size_t rows, size_t k) {
    for (const array_arg_t* out : {&scores, &ids}) {
        cuda::expect_side(*out, input);
        cuda::expect_extent(*out, 0, rows, "rows");
        cuda::expect_extent(*out, 1, k, "columns (k)");
    }
}

/// Checks `src` as rows of a dense store's `field`; returns the bytes per row.
size_t dense_field_rows(const cuda::dense_store_t& store, const std::string& field, const py::handle& obj,
                        array_arg_t& src) {
    const size_t dim = store.dim();
    if (field == "codes") {
        src = array_arg(obj, "codes", code_dtype(store.codec()), 2);
        const size_t width = store.codec() == codec_t::binary_k ? binary_words(dim) : dim;
        cuda::expect_extent(src, 1, width, store.codec() == codec_t::binary_k ? "words" : "columns (dim)");
        return width * size_t(code_dtype(store.codec()).itemsize());
    }
    if (field == "float_rows") {
        src = array_arg(obj, field, dtype<float>(), 2);
        cuda::expect_extent(src, 1, dim, "columns (dim)");
        return dim * 4;
    }
    if (field == "ids") {
        src = array_arg(obj, field, dtype<int64_t>(), 1);
        return 8;
    }
    if (field == "sq_norms" || field == "float_sq_norms" || field == "scale" || field == "offset") {
        src = array_arg(obj, field, dtype<float>(), 1);
        return 4;
    }
    throw py::value_error("field: unknown '" + field +
                          "'; expected codes, ids, sq_norms, scale, offset, float_rows or float_sq_norms");
}

/// Checks `src` as entries of a MaxSim store's `field`; returns the bytes per entry.
size_t maxsim_field_rows(const cuda::maxsim_store_t& store, const std::string& field, const py::handle& obj,
                         array_arg_t& src) {
    if (field == "tokens") {
        src = array_arg(obj, field, code_dtype(store.codec()), 2);
        cuda::expect_extent(src, 1, store.dim(), "columns (dim)");
        return store.dim() * size_t(code_dtype(store.codec()).itemsize());
    }
    if (field == "scales") {
        src = array_arg(obj, field, dtype<float>(), 1);
        return 4;
    }
    if (field == "offsets" || field == "ids") {
        src = array_arg(obj, field, dtype<int64_t>(), 1);
        return 8;
    }
    if (field == "ranks") {
        src = array_arg(obj, field, dtype<uint32_t>(), 1);
        return 4;
    }
    throw py::value_error("field: unknown '" + field + "'; expected tokens, scales, offsets, ids or ranks");
}

}  // namespace

PYBIND11_MODULE(_cuda, m, py::mod_gil_not_used()) {
    m.doc() = "flatcoat CUDA kernels (private; use flatcoat.cuda)";
    py::register_exception_translator([](std::exception_ptr p) {
        try {
            if (p) std::rethrow_exception(p);
        } catch (const flatcoat::error& e) {
            PyErr_SetString(PyExc_ValueError, e.what());
        } catch (const cuda::cuda_error& e) {
            PyErr_SetString(PyExc_RuntimeError, e.what());
        }
    });

    m.attr("max_k") = cuda::max_k;
    m.def("device_count", &cuda::device_count, "Visible CUDA devices; 0 without a driver or device.");
    m.def("device_status", &cuda::device_status, "Why no device is visible, or ''.");
    m.def("device_name", [](int device) { return cuda::device_name(checked_device(device)); }, py::arg("device"));
    m.def("runtime_version", &cuda::runtime_version);
    m.def("driver_version", &cuda::driver_version);

    py::class_<cuda::dense_store_t>(m, "DenseStore", "A dense index's arrays in device memory.")
        .def(py::init([](int device, const std::string& storage, size_t dim, size_t rows, bool has_sq_norms,
                         bool has_float_rows, bool has_float_sq_norms) {
                 const codec_t codec = codec_from_name(storage);
                 checked_device(device);
                 if (dim == 0) throw py::value_error("dim: must be positive");
                 py::gil_scoped_release release;
                 return new cuda::dense_store_t(device, codec, dim, rows, has_sq_norms, has_float_rows,
                                                has_float_sq_norms);
             }),
             py::arg("device"), py::arg("storage"), py::arg("dim"), py::arg("rows"), py::arg("has_sq_norms"),
             py::arg("has_float_rows"), py::arg("has_float_sq_norms"))
        .def(
            "upload",
            [](cuda::dense_store_t& self, const std::string& field, size_t row_begin, const py::handle& src) {
                array_arg_t a;
                const size_t row_bytes = dense_field_rows(self, field, src, a);
                cuda::check_device(a, self.device());
                py::gil_scoped_release release;
                self.upload(field, row_begin, a.data, a.shape[0], row_bytes);
            },
            py::arg("field"), py::arg("row_begin"), py::arg("src"),
            "Copies the rows of `src` (numpy or device, C-contiguous, the field's dtype) to rows row_begin.. of "
            "`field`.")
        .def(
            "search",
            [](const cuda::dense_store_t& self, const py::handle& queries, size_t k, const std::string& metric,
               size_t rerank, bool normalize, bool half_queries, const std::string& path, const py::handle& out_scores,
               const py::handle& out_ids, uintptr_t stream) {
                const array_arg_t q = array_arg(queries, "queries", dtype<float>(), 2);
                cuda::expect_extent(q, 1, self.dim(), "columns (dim)");
                const array_arg_t scores = array_arg(out_scores, "out_scores", dtype<float>(), 2, true);
                const array_arg_t ids = array_arg(out_ids, "out_ids", dtype<int64_t>(), 2, true);
                check_outputs(scores, ids, q, q.shape[0], k);
                cuda::dense_search_t a;
                a.metric = metric_from_name(metric);
                a.path = path_from_name(path);
                for (const array_arg_t* arg : {&q, &scores, &ids}) cuda::check_device(*arg, self.device());
                a.queries = q.as<const float>();
                a.nq = q.shape[0];
                a.on_device = q.on_device;
                a.k = k;
                a.rerank = rerank;
                a.normalize = normalize;
                a.half_queries = half_queries;
                a.out_scores = scores.as<float>();
                a.out_ids = ids.as<int64_t>();
                a.stream = stream;
                py::gil_scoped_release release;
                self.search(a);
            },
            py::arg("queries"), py::arg("k"), py::arg("metric"), py::arg("rerank"), py::arg("normalize"),
            py::arg("half_queries"), py::arg("path"), py::arg("out_scores"), py::arg("out_ids"), py::arg("stream") = 0,
            "Searches (nq, dim) float32 queries; writes (nq, k) float32 scores and int64 ids (same side).")
        .def_property_readonly("device", &cuda::dense_store_t::device)
        .def_property_readonly("storage", [](const cuda::dense_store_t& self) { return codec_name(self.codec()); })
        .def_property_readonly("dim", &cuda::dense_store_t::dim)
        .def_property_readonly("rows", &cuda::dense_store_t::rows)
        .def_property_readonly("nbytes", &cuda::dense_store_t::nbytes);

    m.def(
        "topk",
        [](int device, const py::handle& scores, size_t k, const py::handle& out_values, const py::handle& out_indices,
           uintptr_t stream) {
            checked_device(device);
            const array_arg_t x = array_arg(scores, "scores", dtype<float>(), 2);
            const array_arg_t values = array_arg(out_values, "out_values", dtype<float>(), 2, true);
            const array_arg_t indices = array_arg(out_indices, "out_indices", dtype<int64_t>(), 2, true);
            check_outputs(values, indices, x, x.shape[0], k);
            for (const array_arg_t* arg : {&x, &values, &indices}) cuda::check_device(*arg, device);
            py::gil_scoped_release release;
            cuda::topk(device, x.as<const float>(), x.shape[0], x.shape[1], x.on_device, k, values.as<float>(),
                       indices.as<int64_t>(), stream);
        },
        py::arg("device"), py::arg("scores"), py::arg("k"), py::arg("out_values"), py::arg("out_indices"),
        py::arg("stream") = 0,
        "Top-k of each row of an (m, n) float32 matrix into (m, k) outputs: largest first, ties by the smaller "
        "column.");

    py::class_<cuda::maxsim_store_t>(m, "MaxSimStore", "A MultiVectorIndex's arrays in device memory.")
        .def(py::init([](int device, const std::string& storage, size_t dim, size_t docs, size_t tokens,
                         bool has_ranks) {
                 const codec_t codec = maxsim_codec(codec_from_name(storage));
                 checked_device(device);
                 if (dim == 0) throw py::value_error("dim: must be positive");
                 py::gil_scoped_release release;
                 return new cuda::maxsim_store_t(device, codec, dim, docs, tokens, has_ranks);
             }),
             py::arg("device"), py::arg("storage"), py::arg("dim"), py::arg("docs"), py::arg("tokens"),
             py::arg("has_ranks"))
        .def(
            "upload",
            [](cuda::maxsim_store_t& self, const std::string& field, size_t row_begin, const py::handle& src) {
                array_arg_t a;
                const size_t row_bytes = maxsim_field_rows(self, field, src, a);
                cuda::check_device(a, self.device());
                py::gil_scoped_release release;
                self.upload(field, row_begin, a.data, a.shape[0], row_bytes);
            },
            py::arg("field"), py::arg("row_begin"), py::arg("src"),
            "Copies the entries of `src` (numpy or device, C-contiguous, the field's dtype) to entries row_begin.. "
            "of `field` (tokens, scales, offsets, ids, ranks).")
        .def(
            "search",
            [](const cuda::maxsim_store_t& self, const py::handle& tokens, const py::handle& offsets,
               const py::handle& weights, size_t k, const py::handle& subset, const py::handle& subset_offsets,
               const py::handle& out_scores, const py::handle& out_ids, uintptr_t stream) {
                const array_arg_t q = array_arg(tokens, "queries", dtype<float>(), 2);
                cuda::expect_extent(q, 1, self.dim(), "columns (dim)");
                const array_arg_t off = array_arg(offsets, "query_offsets", dtype<int64_t>(), 1);
                cuda::expect_host(off);
                if (off.shape[0] == 0) throw py::value_error("query_offsets: expected nq + 1 entries, got 0");
                const size_t nq = off.shape[0] - 1;
                const array_arg_t w = cuda::optional_array_arg(weights, "query_weights", dtype<float>(), 1);
                cuda::expect_side(w, q);
                if (w.data != nullptr) cuda::expect_extent(w, 0, q.shape[0], "weights (one per query token)");
                if (subset.is_none() != subset_offsets.is_none())
                    throw py::value_error("subset: pass the positions and their offsets together, or neither");
                const array_arg_t sub = cuda::optional_array_arg(subset, "subset", dtype<int64_t>(), 1);
                const array_arg_t sub_off = cuda::optional_array_arg(subset_offsets, "subset_offsets",
                                                                     dtype<int64_t>(), 1);
                if (!subset.is_none()) {
                    cuda::expect_host(sub);
                    cuda::expect_host(sub_off);
                    cuda::expect_extent(sub_off, 0, nq + 1, "entries (nq + 1)");
                }
                const array_arg_t scores = array_arg(out_scores, "out_scores", dtype<float>(), 2, true);
                const array_arg_t ids = array_arg(out_ids, "out_ids", dtype<int64_t>(), 2, true);
                check_outputs(scores, ids, q, nq, k);
                // The offsets are read on the host: they must fit the query tokens before anything else.
                const int64_t* o = off.as<const int64_t>();
                if (nq > 0 && (o[0] != 0 || o[nq] != int64_t(q.shape[0])))
                    throw py::value_error("query_offsets: must start at 0 and end at the " +
                                          std::to_string(q.shape[0]) + " query token rows");
                const int64_t* so = sub_off.as<const int64_t>();
                if (so != nullptr) {
                    // All of them before any is used: each query's list must lie inside the subset array.
                    bool ordered = so[0] == 0 && so[nq] == int64_t(sub.shape[0]);
                    for (size_t i = 0; ordered && i < nq; ++i) ordered = so[i] <= so[i + 1];
                    if (!ordered)
                        throw py::value_error("subset_offsets: must start at 0, never decrease and end at the " +
                                              std::to_string(sub.shape[0]) + " subset entries");
                }
                for (const array_arg_t* arg : {&q, &w, &scores, &ids}) cuda::check_device(*arg, self.device());
                cuda::maxsim_search_t a;
                a.tokens = q.as<const float>();
                a.offsets = o;
                a.nq = nq;
                a.weights = w.as<const float>();
                a.on_device = q.on_device;
                a.k = k;
                // An empty subset array still marks a restricted search.
                static const int64_t no_entries = 0;
                a.subset = subset.is_none() ? nullptr : sub.shape[0] ? sub.as<const int64_t>() : &no_entries;
                a.subset_offsets = so;
                a.out_scores = scores.as<float>();
                a.out_ids = ids.as<int64_t>();
                a.stream = stream;
                py::gil_scoped_release release;
                self.search(a);
            },
            py::arg("queries"), py::arg("query_offsets"), py::arg("query_weights"), py::arg("k"), py::arg("subset"),
            py::arg("subset_offsets"), py::arg("out_scores"), py::arg("out_ids"), py::arg("stream") = 0,
            "MaxSim of nq packed float32 queries (tokens (t, dim), host offsets (nq + 1,), optional weights (t,)), "
            "optionally restricted to host subset positions (with host offsets (nq + 1,)); writes (nq, k) float32 "
            "scores and int64 ids on the queries' side.")
        .def_property_readonly("device", &cuda::maxsim_store_t::device)
        .def_property_readonly("storage", [](const cuda::maxsim_store_t& self) { return codec_name(self.codec()); })
        .def_property_readonly("dim", &cuda::maxsim_store_t::dim)
        .def_property_readonly("docs", &cuda::maxsim_store_t::docs)
        .def_property_readonly("tokens", &cuda::maxsim_store_t::tokens)
        .def_property_readonly("nbytes", &cuda::maxsim_store_t::nbytes);
}
