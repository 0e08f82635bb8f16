// Bindings of the ceiling probes and plain top-k selection.
#include <algorithm>  // std::min

#include "common.hpp"
#include "flatcoat/probe.hpp"

namespace flatcoat {
namespace bindings {

void bind_probe(py::module_& m) {
    auto as_tuple = [](probe_result_t r) { return py::make_tuple(r.seconds, r.work); };
    m.def(
        "probe_read_bandwidth",
        [](const py::object& x, int64_t threads) {
            const float* p = checked<float>(x, "x", 1);
            const size_t n = length(x), t = count(threads, "threads", 1);
            py::gil_scoped_release release;
            return probe_read_bandwidth(p, n, t);
        },
        py::arg("x"), py::arg("threads"), "Reads x once on `threads` threads; returns (seconds, bytes).");
    // The timed loops: `rounds` per thread on `threads` threads.
    const struct {
        const char* name;
        probe_result_t (*probe)(size_t, size_t);
        const char* doc;
    } loops[] = {
        {"probe_fma", &probe_fma, "float32 FMA loop; returns (seconds, flops)."},
        {"probe_int8", &probe_int8, "u8 x s8 dot loop; returns (seconds, integer ops)."},
        {"probe_popcount", &probe_popcount, "64-bit popcount loop; returns (seconds, popcounts)."},
        {"probe_bf16", &probe_bf16, "bfloat16 pair-product loop (vdpbf16ps); returns (seconds, flops). ValueError\n"
                                    "on a level without AVX512_BF16."},
    };
    for (const auto& loop : loops) {
        auto probe = loop.probe;
        m.def(
            loop.name,
            [probe](int64_t rounds, int64_t threads) {
                const size_t r = count(rounds, "rounds", 1), t = count(threads, "threads", 1);
                py::gil_scoped_release release;
                return probe(r, t);
            },
            py::arg("rounds"), py::arg("threads"), loop.doc);
    }
    m.def(
        "topk",
        [](const py::object& scores_obj, int64_t k_arg) {
            const float* p = checked<float>(scores_obj, "scores", 2);
            const py::array scores = array_arg(scores_obj, "scores");
            size_t rows = size_t(scores.shape(0)), n = size_t(scores.shape(1));
            const size_t k = std::min(count(k_arg, "k", 1), n);  // never more columns than scores
            py::array_t<float> values({rows, k});
            py::array_t<int64_t> indices({rows, k});
            float* v = values.mutable_data();
            int64_t* i = indices.mutable_data();
            if (k > 0) {
                py::gil_scoped_release release;
                select_topk(p, rows, n, k, v, i);
            }
            return py::make_tuple(values, indices);
        },
        py::arg("scores"), py::arg("k"),
        "Top-k of each row: (values float32 (rows, k'), indices int64 (rows, k')), k' = min(k, n),\n"
        "largest first, ties by smaller index.");
    py::class_<probe_result_t>(m, "ProbeResult")
        .def_readonly("seconds", &probe_result_t::seconds)
        .def_readonly("work", &probe_result_t::work)
        .def_readonly("rate", &probe_result_t::rate)
        .def("__iter__", [as_tuple](const probe_result_t& r) { return py::iter(as_tuple(r)); });
}

}  // namespace bindings
}  // namespace flatcoat
