// The extension module flatcoat._core: the only C++ that knows Python exists.
// One error-translation point: flatcoat::error -> ValueError, std::bad_alloc ->
// MemoryError (pybind11's default), anything else -> RuntimeError.
#include <pybind11/stl.h>

#include "common.hpp"
#include "flatcoat/common.hpp"
#include "flatcoat/isa.hpp"
#include "flatcoat/thread_pool.hpp"

namespace py = pybind11;
using namespace flatcoat;

namespace flatcoat {
namespace bindings {
void bind_ivf(py::module_& m);  // cpp/bindings/ivf.cpp
void bind_plaid(py::module_& m);  // cpp/bindings/plaid.cpp
}  // namespace bindings
}  // namespace flatcoat

PYBIND11_MODULE(_core, m, py::mod_gil_not_used()) {
    m.doc() = "flatcoat native core";
    py::register_exception_translator([](std::exception_ptr p) {
        try {
            if (p) std::rethrow_exception(p);
        } catch (const flatcoat::error& e) {
            PyErr_SetString(PyExc_ValueError, e.what());
        }
    });

    active_isa();  // FLATCOAT_ISA is read now, so a bad value fails the import with its reason

    m.attr("__version__") = FLATCOAT_VERSION;
#ifdef FLATCOAT_CUDA_COMPILED
    m.attr("cuda_compiled") = true;
#else
    m.attr("cuda_compiled") = false;
#endif
    m.def("compiled_isas", [] {
        std::vector<std::string> names;
        for (isa_t isa : compiled_isas()) names.push_back(isa_name(isa));
        return names;
    });
    m.def("detected_isa", [] { return std::string(isa_name(detected_isa())); });
    m.def("active_isa", [] { return std::string(isa_name(active_isa())); });
    m.def("set_active_isa", [](const std::string& name) { set_active_isa(isa_from_name(name)); }, py::arg("name"));
    m.def("cpu_supports", [](const std::string& name) { return cpu_supports(isa_from_name(name)); }, py::arg("name"));
    m.def("cpu_features", [] {
        std::vector<py::tuple> features;
        for (const cpu_feature_t& f : cpu_features()) features.push_back(py::make_tuple(isa_name(f.isa), f.name, f.present));
        return features;
    });
    m.def("num_threads", [] { return num_threads(); });
    m.def("set_num_threads", [](int64_t n) { set_num_threads(bindings::count(n, "n", 0)); }, py::arg("n"));
    m.def("hardware_threads", [] { return hardware_threads(); });

    bindings::bind_dense(m);
    bindings::bind_maxsim(m);
    bindings::bind_probe(m);
    bindings::bind_ivf(m);
    bindings::bind_plaid(m);
}
