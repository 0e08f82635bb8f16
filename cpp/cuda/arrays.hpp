// Array arguments of the CUDA bindings, checked in C++ before any CUDA call.
//
// An argument is a numpy array (host memory) or any object with
// __cuda_array_interface__ (CuPy, PyTorch, Numba, ...: device memory). Like
// the CPU bindings (cpp/bindings/common.hpp), nothing is copied or cast: the
// dtype, rank, shape, C order and (for outputs) writability are checked, and
// a mismatch is a TypeError (wrong kind of object or dtype) or ValueError
// (wrong shape, order, side or device) that names the argument and says the
// fix. Only check_device() makes a CUDA call, so a binding checks every
// argument's form first and the devices after. DLPack-only objects are
// turned into CuPy arrays by flatcoat.cuda before they get here.
#pragma once

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <cstddef>  // size_t
#include <cstdint>  // uintptr_t
#include <string>
#include <vector>

#include "api.cuh"  // pointer_device

namespace flatcoat {
namespace cuda {

namespace py = pybind11;

/// One checked array argument; `owner` keeps the Python object alive for the call.
struct array_arg_t {
    std::string name;
    void* data = nullptr;
    bool on_device = false;
    std::vector<size_t> shape;
    py::object owner;

    size_t size() const {
        size_t n = 1;
        for (size_t extent : shape) n *= extent;
        return n;
    }
    template <class T>
    T* as() const {
        return static_cast<T*>(data);
    }
};

namespace detail {

inline std::string dtype_name(const py::dtype& dtype) { return std::string(py::str(dtype)); }

/// The dtype a __cuda_array_interface__ typestr ("<f4") names, for messages.
inline std::string typestr_name(const std::string& typestr) {
    try {
        return dtype_name(py::dtype(typestr));
    } catch (const py::error_already_set&) {
        return "'" + typestr + "'";
    }
}

/// The __cuda_array_interface__ dict of `obj`, or None (a CPU torch tensor raises on access: not a device array).
inline py::object cuda_interface(const py::handle& obj) {
    try {
        return py::getattr(obj, "__cuda_array_interface__", py::none());
    } catch (const py::error_already_set&) {
        return py::none();
    }
}

inline std::string shape_text(const std::vector<size_t>& shape) {
    std::string s = "(";
    for (size_t i = 0; i < shape.size(); ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
    return s + (shape.size() == 1 ? ",)" : ")");
}

}  // namespace detail

/// Checks `obj` as a `ndim`-d C-contiguous array of `dtype` (writable when
/// `writable`), in host or device memory.
inline array_arg_t array_arg(const py::handle& obj, const std::string& name, const py::dtype& dtype, size_t ndim,
                             bool writable = false) {
    array_arg_t arg;
    arg.name = name;
    arg.owner = py::reinterpret_borrow<py::object>(obj);
    const std::string wanted = detail::dtype_name(dtype);
    if (py::isinstance<py::array>(obj)) {
        const auto a = py::reinterpret_borrow<py::array>(obj);
        // numpy's equality, not identity: int64 and longlong are one dtype on LP64 systems.
        if (!a.dtype().attr("__eq__")(dtype).cast<bool>())
            throw py::type_error(name + ": expected dtype " + wanted + ", got " + detail::dtype_name(a.dtype()) +
                                 "; convert it first (e.g. .astype(numpy." + wanted + "))");
        if (size_t(a.ndim()) != ndim)
            throw py::value_error(name + ": expected a " + std::to_string(ndim) + "-d array, got " +
                                  std::to_string(a.ndim()) + "-d");
        if (!(a.flags() & py::array::c_style))
            throw py::value_error(name + ": array is not C-contiguous; pass numpy.ascontiguousarray(...)");
        if (writable && !a.writeable()) throw py::value_error(name + ": the output array is read-only");
        for (py::ssize_t i = 0; i < a.ndim(); ++i) arg.shape.push_back(size_t(a.shape(i)));
        arg.data = const_cast<void*>(a.data());
        return arg;
    }
    const py::object iface = detail::cuda_interface(obj);
    if (iface.is_none() || !py::isinstance<py::dict>(iface))
        throw py::type_error(name + ": expected a numpy array or a CUDA device array (CuPy, a torch CUDA tensor, "
                                    "anything with __cuda_array_interface__), got " +
                             std::string(py::str(py::type::handle_of(obj).attr("__name__"))));
    const auto d = py::reinterpret_borrow<py::dict>(iface);
    try {
        const std::string typestr = py::str(d["typestr"]);
        if (typestr != std::string(py::str(dtype.attr("str"))))
            throw py::type_error(name + ": expected dtype " + wanted + ", got " + detail::typestr_name(typestr) +
                                 "; convert it first (e.g. .astype('" + wanted + "'))");
        for (const py::handle extent : py::reinterpret_borrow<py::tuple>(d["shape"])) {
            const py::ssize_t e = extent.cast<py::ssize_t>();
            if (e < 0) throw py::value_error(name + ": the __cuda_array_interface__ has a negative extent");
            arg.shape.push_back(size_t(e));
        }
        if (arg.shape.size() != ndim)
            throw py::value_error(name + ": expected a " + std::to_string(ndim) + "-d array, got " +
                                  std::to_string(arg.shape.size()) + "-d");
        if (d.contains("mask") && !d["mask"].is_none())
            throw py::value_error(name + ": masked device arrays are not supported");
        if (d.contains("strides") && !d["strides"].is_none()) {
            // C order: each extent's stride is the product of the later extents (any stride for extent 1).
            const auto strides = py::reinterpret_borrow<py::tuple>(d["strides"]);
            if (strides.size() != ndim) throw py::value_error(name + ": the strides do not match the shape");
            py::ssize_t expected = py::ssize_t(dtype.itemsize());
            for (size_t i = ndim; i-- > 0;) {
                if (arg.shape[i] > 1 && strides[i].cast<py::ssize_t>() != expected && arg.size() > 0)
                    throw py::value_error(name + ": array is not C-contiguous; pass cupy.ascontiguousarray(...) "
                                                 "(or .contiguous() for torch)");
                expected *= py::ssize_t(arg.shape[i]);
            }
        }
        const auto data = py::reinterpret_borrow<py::tuple>(d["data"]);
        if (data.size() != 2) throw py::value_error(name + ": __cuda_array_interface__ 'data' is not (pointer, read-only)");
        arg.data = reinterpret_cast<void*>(data[0].cast<uintptr_t>());
        if (writable && data[1].cast<bool>()) throw py::value_error(name + ": the output array is read-only");
    } catch (const py::cast_error&) {
        throw py::type_error(name + ": its __cuda_array_interface__ is malformed");
    } catch (const py::error_already_set&) {  // a missing key
        throw py::type_error(name + ": its __cuda_array_interface__ is malformed");
    }
    if (arg.data == nullptr && arg.size() > 0) throw py::value_error(name + ": a device array with a null pointer");
    arg.on_device = true;
    return arg;
}

/// Like array_arg(), for an optional argument: None gives an argument with null data.
inline array_arg_t optional_array_arg(const py::handle& obj, const std::string& name, const py::dtype& dtype,
                                      size_t ndim) {
    if (obj.is_none()) {
        array_arg_t none;
        none.name = name;
        return none;
    }
    return array_arg(obj, name, dtype, ndim);
}

/// Checks that extent `axis` of `arg` is `value` (`what` says what it counts).
inline void expect_extent(const array_arg_t& arg, size_t axis, size_t value, const std::string& what) {
    if (arg.shape[axis] != value)
        throw py::value_error(arg.name + ": expected shape with " + std::to_string(value) + " " + what + " along axis " +
                              std::to_string(axis) + ", got shape " + detail::shape_text(arg.shape));
}

/// Checks that `arg` is in host memory (what the API reads on the host: offsets, subsets).
inline void expect_host(const array_arg_t& arg) {
    if (arg.on_device) throw py::value_error(arg.name + ": expected a numpy (host) array, got a device array");
}

/// Checks that `arg` is on the same side (host or device) as `reference`.
inline void expect_side(const array_arg_t& arg, const array_arg_t& reference) {
    if (arg.data != nullptr && arg.on_device != reference.on_device)
        throw py::value_error(arg.name + ": must be " + (reference.on_device ? "a device" : "a numpy (host)") +
                              " array, like " + reference.name);
}

/// Checks that a device argument lives on cuda:`device` (a CUDA call: after every other check).
inline void check_device(const array_arg_t& arg, int device) {
    if (!arg.on_device || arg.data == nullptr) return;
    const int owner = pointer_device(arg.data, arg.name);
    if (owner != device)
        throw py::value_error(arg.name + ": the array is on cuda:" + std::to_string(owner) + " but the work runs on cuda:" +
                              std::to_string(device) + "; move it there first");
}

}  // namespace cuda
}  // namespace flatcoat
