// Buffer checks shared by the binding files: they never copy or cast; the
// Python layer prepares arrays, and anything else is a clear error.
#pragma once

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <cstdint>  // int64_t
#include <string>

namespace flatcoat {
namespace bindings {

namespace py = pybind11;

template <class T>
const T* checked(const py::array& a, const char* name, py::ssize_t ndim) {
    if (!py::isinstance<py::array_t<T>>(a) || !a.dtype().is(py::dtype::of<T>()))
        throw py::type_error(std::string(name) + ": expected dtype " + std::string(py::str(py::dtype::of<T>())) +
                             ", got " + std::string(py::str(a.dtype())));
    if (a.ndim() != ndim)
        throw py::value_error(std::string(name) + ": expected a " + std::to_string(ndim) + "-d array, got " +
                              std::to_string(a.ndim()) + "-d");
    if (!(a.flags() & py::array::c_style))
        throw py::value_error(std::string(name) + ": array is not C-contiguous; pass numpy.ascontiguousarray(...)");
    return static_cast<const T*>(a.data());
}

/// Like checked(), for an optional argument: None gives nullptr.
template <class T>
const T* checked_or_null(const py::object& o, const char* name, py::ssize_t ndim) {
    if (o.is_none()) return nullptr;
    return checked<T>(py::reinterpret_borrow<py::array>(o), name, ndim);
}

/// A count argument, taken as int64 so that a negative value gets a message
/// naming it (pybind11 alone would say "incompatible function arguments").
inline size_t count(int64_t value, const char* name, int64_t minimum) {
    if (value < minimum)
        throw py::value_error(std::string(name) + ": must be at least " + std::to_string(minimum) + ", got " +
                              std::to_string(value));
    return size_t(value);
}

void bind_dense(py::module_& m);
void bind_maxsim(py::module_& m);
void bind_probe(py::module_& m);

}  // namespace bindings
}  // namespace flatcoat
