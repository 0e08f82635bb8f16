// The extension module flatcoat._cuda, imported lazily by flatcoat.cuda.
//
// It takes raw addresses: the Python layer reads them from numpy's
// __array_interface__ or __cuda_array_interface__ after checking dtype, shape
// and contiguity, allocates the outputs, and keeps every array alive for the
// call. Errors: flatcoat::error -> ValueError, cuda_error -> RuntimeError with
// the CUDA error string. The GIL is released for every call that touches the
// device.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cstdint>
#include <string>

#include "api.cuh"
#include "maxsim_api.cuh"  // MaxSimStore (issue 6)

namespace py = pybind11;
using namespace flatcoat;

namespace {

codec_t codec_from_name(const std::string& name) {
    if (name == "f32") return codec_t::f32_k;
    if (name == "f16") return codec_t::f16_k;
    if (name == "int8") return codec_t::u8_k;
    if (name == "binary") return codec_t::binary_k;
    throw error("unknown storage '" + name + "'");
}

const char* codec_name(codec_t codec) {
    switch (codec) {
        case codec_t::f32_k: return "f32";
        case codec_t::f16_k: return "f16";
        case codec_t::u8_k: return "int8";
        case codec_t::binary_k: return "binary";
    }
    return "?";
}

metric_t metric_from_name(const std::string& name) {
    if (name == "ip") return metric_t::ip_k;
    if (name == "l2") return metric_t::l2_k;
    throw error("unknown kernel metric '" + name + "'");
}

cuda::dense_path_t path_from_name(const std::string& name) {
    if (name == "auto") return cuda::dense_path_t::auto_k;
    if (name == "scan") return cuda::dense_path_t::scan_k;
    if (name == "mma") return cuda::dense_path_t::mma_k;
    throw error("path: expected 'auto', 'scan' or 'mma', got '" + name + "'");
}

cuda::mv_codec_t mv_codec_from_name(const std::string& name) {
    if (name == "f32") return cuda::mv_codec_t::f32_k;
    if (name == "f16") return cuda::mv_codec_t::f16_k;
    if (name == "int8") return cuda::mv_codec_t::u8_k;
    throw error("unknown multi-vector storage '" + name + "' (expected 'f32', 'f16' or 'int8')");
}

const char* mv_codec_name(cuda::mv_codec_t codec) {
    switch (codec) {
        case cuda::mv_codec_t::f32_k: return "f32";
        case cuda::mv_codec_t::f16_k: return "f16";
        case cuda::mv_codec_t::u8_k: return "int8";
    }
    return "?";
}

template <class T>
T* address(uintptr_t p) {
    return reinterpret_cast<T*>(p);
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
    m.def("device_name", &cuda::device_name, py::arg("device"));
    m.def("runtime_version", &cuda::runtime_version);
    m.def("driver_version", &cuda::driver_version);

    py::class_<cuda::dense_store_t>(m, "DenseStore", "A dense index's arrays in device memory.")
        .def(py::init([](int device, const std::string& storage, size_t dim, size_t rows, bool has_sq_norms,
                         bool has_float_rows, bool has_float_sq_norms) {
                 const codec_t codec = codec_from_name(storage);
                 py::gil_scoped_release release;
                 return new cuda::dense_store_t(device, codec, dim, rows, has_sq_norms, has_float_rows,
                                                has_float_sq_norms);
             }),
             py::arg("device"), py::arg("storage"), py::arg("dim"), py::arg("rows"), py::arg("has_sq_norms"),
             py::arg("has_float_rows"), py::arg("has_float_sq_norms"))
        .def(
            "upload",
            [](cuda::dense_store_t& self, const std::string& field, size_t row_begin, uintptr_t src, size_t n,
               size_t src_pitch) {
                py::gil_scoped_release release;
                self.upload(field, row_begin, address<const void>(src), n, src_pitch);
            },
            py::arg("field"), py::arg("row_begin"), py::arg("src"), py::arg("n"), py::arg("src_pitch"),
            "Copies n rows from host or device address src (rows src_pitch bytes apart).")
        .def(
            "search",
            [](const cuda::dense_store_t& self, uintptr_t queries, size_t nq, bool on_device, size_t k,
               const std::string& metric, size_t rescore, bool normalize, bool half_queries, const std::string& path,
               uintptr_t out_scores, uintptr_t out_ids, uintptr_t stream) {
                cuda::dense_search_t a;
                a.queries = address<const float>(queries);
                a.nq = nq;
                a.on_device = on_device;
                a.k = k;
                a.metric = metric_from_name(metric);
                a.rescore = rescore;
                a.normalize = normalize;
                a.half_queries = half_queries;
                a.path = path_from_name(path);
                a.out_scores = address<float>(out_scores);
                a.out_ids = address<int64_t>(out_ids);
                a.stream = stream;
                py::gil_scoped_release release;
                self.search(a);
            },
            py::arg("queries"), py::arg("nq"), py::arg("on_device"), py::arg("k"), py::arg("metric"),
            py::arg("rescore"), py::arg("normalize"), py::arg("half_queries"), py::arg("path"), py::arg("out_scores"),
            py::arg("out_ids"), py::arg("stream"),
            "Searches nq float32 queries at `queries`; writes nq x k float32 scores and int64 ids.")
        .def_property_readonly("device", &cuda::dense_store_t::device)
        .def_property_readonly("storage", [](const cuda::dense_store_t& self) { return codec_name(self.codec()); })
        .def_property_readonly("dim", &cuda::dense_store_t::dim)
        .def_property_readonly("rows", &cuda::dense_store_t::rows)
        .def_property_readonly("nbytes", &cuda::dense_store_t::nbytes);

    m.def(
        "topk",
        [](int device, uintptr_t scores, size_t m_rows, size_t n, bool on_device, size_t k, uintptr_t out_values,
           uintptr_t out_indices, uintptr_t stream) {
            py::gil_scoped_release release;
            cuda::topk(device, address<const float>(scores), m_rows, n, on_device, k, address<float>(out_values),
                       address<int64_t>(out_indices), stream);
        },
        py::arg("device"), py::arg("scores"), py::arg("m"), py::arg("n"), py::arg("on_device"), py::arg("k"),
        py::arg("out_values"), py::arg("out_indices"), py::arg("stream"),
        "Top-k of each row of an m x n float32 matrix: largest first, ties by the smaller column.");

    py::class_<cuda::maxsim_store_t>(m, "MaxSimStore", "A MultiVectorIndex's arrays in device memory.")
        .def(py::init([](int device, const std::string& storage, size_t dim, size_t docs, size_t tokens,
                         bool has_ranks) {
                 const cuda::mv_codec_t codec = mv_codec_from_name(storage);
                 py::gil_scoped_release release;
                 return new cuda::maxsim_store_t(device, codec, dim, docs, tokens, has_ranks);
             }),
             py::arg("device"), py::arg("storage"), py::arg("dim"), py::arg("docs"), py::arg("tokens"),
             py::arg("has_ranks"))
        .def(
            "upload",
            [](cuda::maxsim_store_t& self, const std::string& field, size_t row_begin, uintptr_t src, size_t n,
               size_t src_pitch) {
                py::gil_scoped_release release;
                self.upload(field, row_begin, address<const void>(src), n, src_pitch);
            },
            py::arg("field"), py::arg("row_begin"), py::arg("src"), py::arg("n"), py::arg("src_pitch"),
            "Copies n entries of a field (tokens, scales, offsets, ids, ranks) from host or device address src.")
        .def(
            "search",
            [](const cuda::maxsim_store_t& self, uintptr_t tokens, uintptr_t offsets, size_t nq, uintptr_t weights,
               bool on_device, size_t k, uintptr_t candidates, uintptr_t candidate_offsets, uintptr_t out_scores,
               uintptr_t out_ids, uintptr_t stream) {
                cuda::maxsim_search_t a;
                a.tokens = address<const float>(tokens);
                a.offsets = address<const int64_t>(offsets);
                a.nq = nq;
                a.weights = address<const float>(weights);
                a.on_device = on_device;
                a.k = k;
                a.candidates = address<const int64_t>(candidates);
                a.candidate_offsets = address<const int64_t>(candidate_offsets);
                a.out_scores = address<float>(out_scores);
                a.out_ids = address<int64_t>(out_ids);
                a.stream = stream;
                py::gil_scoped_release release;
                self.search(a);
            },
            py::arg("tokens"), py::arg("offsets"), py::arg("nq"), py::arg("weights"), py::arg("on_device"),
            py::arg("k"), py::arg("candidates"), py::arg("candidate_offsets"), py::arg("out_scores"),
            py::arg("out_ids"), py::arg("stream"),
            "MaxSim of nq packed float32 queries (host offsets); writes nq x k float32 scores and int64 ids.")
        .def_property_readonly("device", &cuda::maxsim_store_t::device)
        .def_property_readonly("storage", [](const cuda::maxsim_store_t& self) { return mv_codec_name(self.codec()); })
        .def_property_readonly("dim", &cuda::maxsim_store_t::dim)
        .def_property_readonly("docs", &cuda::maxsim_store_t::docs)
        .def_property_readonly("tokens", &cuda::maxsim_store_t::tokens)
        .def_property_readonly("nbytes", &cuda::maxsim_store_t::nbytes);
}
