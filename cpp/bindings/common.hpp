// Buffer checks shared by the binding files: they never copy or cast; the
// Python layer prepares arrays, and anything else is a clear error.
#pragma once

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <cstdint>  // int64_t
#include <string>

#include "flatcoat/common.hpp"  // codec_t, binary_words
#include "flatcoat/filter.hpp"  // filter_t

namespace flatcoat {
namespace bindings {

namespace py = pybind11;

/// An array argument. Bindings take arrays as plain objects so that nothing
/// converts them on the way in: a list stays a list and is refused by name.
inline py::array array_arg(const py::handle& a, const char* name, const char* expected = "") {
    if (!py::isinstance<py::array>(a))
        throw py::type_error(std::string(name) + ": expected a numpy array" + expected + ", got " +
                             std::string(py::str(py::type::of(a).attr("__name__"))));
    return py::reinterpret_borrow<py::array>(a);
}

/// Whether `a` is the dtype `b` in native byte order. Identity first (the
/// common case, no call into numpy); an equal but distinct descriptor, as
/// unpickled arrays carry, is compared by type number and byte order.
inline bool same_dtype(const py::dtype& a, const py::dtype& b) {
    if (a.is(b)) return true;
    if (a.normalized_num() != b.normalized_num()) return false;
    const char order = a.byteorder();
    const uint16_t probe = 1;
    const bool little = *reinterpret_cast<const unsigned char*>(&probe) == 1;
    return order == '=' || order == '|' || order == (little ? '<' : '>');
}

/// The data of `a` after checking its dtype (T exactly), ndim and C-contiguity.
/// Messages are formatted only on failure: formatting a dtype calls back into
/// numpy's Python code, a few microseconds that every search would pay.
template <class T>
const T* checked(const py::handle& a, const char* name, py::ssize_t ndim) {
    if (!py::isinstance<py::array>(a)) array_arg(a, name, (" of " + std::string(py::str(py::dtype::of<T>()))).c_str());
    const py::array array = py::reinterpret_borrow<py::array>(a);
    if (!same_dtype(array.dtype(), py::dtype::of<T>()))
        throw py::type_error(std::string(name) + ": expected dtype " + std::string(py::str(py::dtype::of<T>())) +
                             ", got " + std::string(py::str(array.dtype())));
    if (array.ndim() != ndim)
        throw py::value_error(std::string(name) + ": expected a " + std::to_string(ndim) + "-d array, got " +
                              std::to_string(array.ndim()) + "-d");
    if (!(array.flags() & py::array::c_style))
        throw py::value_error(std::string(name) + ": array is not C-contiguous; pass numpy.ascontiguousarray(...)");
    return static_cast<const T*>(array.data());
}

/// Entries along axis 0 of an array argument that checked() accepted.
inline size_t length(const py::handle& a) { return size_t(py::reinterpret_borrow<py::array>(a).shape(0)); }

/// Checks a.shape(axis) == n; `what` names the unit ("rows", "columns", "entries").
inline void expect_extent(const py::array& a, const char* name, py::ssize_t axis, size_t n, const char* what) {
    if (size_t(a.shape(axis)) != n)
        throw py::value_error(std::string(name) + ": expected " + std::to_string(n) + " " + what + ", got " +
                              std::to_string(a.shape(axis)));
}

/// The codes of `rows` dense rows stored as `codec` (the layout of _storage.dense_code_layout):
/// dtype, rank, contiguity and both extents checked.
inline const void* checked_codes(codec_t codec, const py::handle& codes, size_t dim, size_t rows) {
    const void* data = nullptr;
    size_t columns = dim;
    switch (codec) {
        case codec_t::f32_k: data = checked<float>(codes, "codes", 2); break;
        case codec_t::f16_k:
        case codec_t::bf16_k: data = checked<uint16_t>(codes, "codes", 2); break;
        case codec_t::int8_k: data = checked<uint8_t>(codes, "codes", 2); break;
        case codec_t::binary_k:
            data = checked<uint64_t>(codes, "codes", 2);
            columns = binary_words(dim);
            break;
    }
    const py::array array = py::reinterpret_borrow<py::array>(codes);
    expect_extent(array, "codes", 0, rows, "rows");
    expect_extent(array, "codes", 1, columns, "columns");
    return data;
}

/// The (nq, k) scores and ids of a search: allocated here, filled by `run(scores, ids)`
/// with the GIL released (nothing runs for k = 0).
template <class run_t>
py::tuple search_results(size_t nq, size_t k, run_t&& run) {
    py::array_t<float> scores({nq, k});
    py::array_t<int64_t> ids({nq, k});
    if (k == 0) return py::make_tuple(scores, ids);
    float* scores_ptr = scores.mutable_data();
    int64_t* ids_ptr = ids.mutable_data();
    {
        py::gil_scoped_release release;
        run(scores_ptr, ids_ptr);
    }
    return py::make_tuple(scores, ids);
}

/// Like checked(), for an optional argument of `length` entries along axis 0: None gives nullptr.
template <class T>
const T* checked_or_null(const py::object& o, const char* name, py::ssize_t ndim, size_t length) {
    if (o.is_none()) return nullptr;
    const T* data = checked<T>(o, name, ndim);
    expect_extent(py::reinterpret_borrow<py::array>(o), name, 0, length, ndim == 1 ? "entries" : "rows");
    return data;
}

/// Like checked_or_null, for an output the core writes into: also refuses a read-only array.
template <class T>
T* writable_or_null(const py::object& o, const char* name, py::ssize_t ndim, size_t length) {
    const T* data = checked_or_null<T>(o, name, ndim, length);
    if (data && !py::reinterpret_borrow<py::array>(o).writeable())
        throw py::value_error(std::string(name) + ": array is read-only; pass a writable array");
    return const_cast<T*>(data);
}

/// The optional `filter` bitset over `n` positions (`unit` names them:
/// "rows", "slots", "documents"): None gives an inactive filter_t; else a 1-d
/// C-contiguous uint64 array of exactly ceil(n / 64) words. Every refusal
/// starts with "filter:" and says the expected length.
inline filter_t checked_filter(const py::object& o, size_t n, const char* unit) {
    filter_t filter;
    filter.bits = n;
    if (o.is_none()) return filter;
    const size_t words = (n + 63) / 64;
    const std::string expected = "a 1-d C-contiguous uint64 array of " + std::to_string(words) +
                                 " words (ceil(" + std::to_string(n) + " " + unit + " / 64), bit p % 64 of word p // 64" +
                                 " allows position p)";
    if (!py::isinstance<py::array>(o))
        throw py::type_error("filter: expected " + expected + ", got " +
                             std::string(py::str(py::type::of(o).attr("__name__"))));
    const py::array array = py::reinterpret_borrow<py::array>(o);
    if (!same_dtype(array.dtype(), py::dtype::of<uint64_t>()))
        throw py::type_error("filter: expected " + expected + ", got dtype " + std::string(py::str(array.dtype())));
    if (array.ndim() != 1)
        throw py::value_error("filter: expected " + expected + ", got a " + std::to_string(array.ndim()) + "-d array");
    if (!(array.flags() & py::array::c_style))
        throw py::value_error("filter: expected " + expected +
                              ", got a non-contiguous array; pass numpy.ascontiguousarray(...)");
    if (size_t(array.shape(0)) != words)
        throw py::value_error("filter: expected " + expected + ", got " + std::to_string(array.shape(0)) + " words");
    filter.words = static_cast<const uint64_t*>(array.data());
    return filter;
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
