// The C++ interface of flatcoat's CUDA part. Plain C++ (no CUDA types), so the
// pybind11 bindings compile with the host compiler alone; every pointer is a
// raw device or host address that the caller keeps alive for the call (the
// bindings check every array before it gets here: see arrays.hpp).
#pragma once

#include <cstddef>    // size_t
#include <cstdint>    // int64_t, uintptr_t
#include <memory>     // std::unique_ptr (pimpl)
#include <stdexcept>  // std::runtime_error
#include <string>

#include "flatcoat/common.hpp"  // flatcoat::error, codec_t, metric_t

namespace flatcoat {
namespace cuda {

/// A failed CUDA call: the message names the call and carries cudaGetErrorString.
/// The bindings turn it into RuntimeError (flatcoat::error stays ValueError).
struct cuda_error : std::runtime_error {
    using std::runtime_error::runtime_error;
};

/// The largest k (and rerank depth) any search or top-k accepts.
constexpr size_t max_k = 4096;

/// Number of visible CUDA devices; 0 when there is no driver or device. Never throws.
int device_count();
/// Why device_count() is 0 ("no CUDA-capable device is detected", ...), or "" when devices exist.
std::string device_status();
/// "NVIDIA H100 80GB HBM3 (sm_90, 132 SMs, 79.1 GiB)"; throws cuda_error for a bad ordinal.
std::string device_name(int device);
/// CUDA runtime version this module was built with, and the driver's, as 13000-style integers.
int runtime_version();
int driver_version();
/// The ordinal of the device that owns `ptr`; throws flatcoat::error naming
/// `name` when `ptr` is not device (or managed) memory. Never dereferences it.
int pointer_device(const void* ptr, const std::string& name);

/// Which scoring kernel a dense search uses (auto picks by codec and batch size).
enum class dense_path_t { auto_k, scan_k, mma_k };

/// One dense search. Queries are nq x dim float32, C-contiguous; outputs are nq x k.
/// `on_device`: queries and outputs are device pointers (else host memory).
struct dense_search_t {
    const float* queries = nullptr;
    size_t nq = 0;
    bool on_device = false;
    size_t k = 0;
    metric_t metric = metric_t::ip_k;
    size_t rerank = 0;          ///< 0, or R >= k: re-rank the R best exactly against the float rows
    bool normalize = false;     ///< cosine: L2-normalise queries on the device first
    bool half_queries = false;  ///< tensor-core path: one f16 term per query value instead of two
    dense_path_t path = dense_path_t::auto_k;
    float* out_scores = nullptr;
    int64_t* out_ids = nullptr;
    uintptr_t stream = 0;  ///< cudaStream_t to run on (0: the legacy default stream)
};

/// A dense index's arrays held in device memory (RAII: freed with the object).
/// Rows must be uploaded in ascending id order: the kernels break score ties by
/// the smaller row, which is then the smaller id.
class dense_store_t {
   public:
    /// Allocates (zeroed) device arrays for `rows` rows; fields are filled by upload().
    dense_store_t(int device, codec_t codec, size_t dim, size_t rows, bool has_sq_norms, bool has_float_rows,
                  bool has_float_sq_norms);
    ~dense_store_t();
    dense_store_t(const dense_store_t&) = delete;
    dense_store_t& operator=(const dense_store_t&) = delete;

    /// Copies `n` rows of `field` ("codes", "ids", "sq_norms", "float_rows",
    /// "float_sq_norms", and for int8 the rows' "scale" and "offset") from
    /// host or device memory at `src`, rows `src_pitch` bytes apart, to rows
    /// row_begin.. of the store. Synchronous.
    void upload(const std::string& field, size_t row_begin, const void* src, size_t n, size_t src_pitch);

    /// Writes nq x k results, best first, ties by smaller id, padded with id -1
    /// and -inf (+inf for l2); the same semantics as flatcoat::search_dense.
    /// Synchronises the stream before returning; bad queries (NaN/inf, or a zero
    /// row under normalize) throw flatcoat::error naming the row.
    void search(const dense_search_t& args) const;

    int device() const;
    codec_t codec() const;
    size_t dim() const;
    size_t rows() const;
    size_t nbytes() const;  ///< device bytes held

   private:
    struct impl_t;
    std::unique_ptr<impl_t> impl_;
};

/// Top-k of each row of an m x n float32 matrix (host or device, C-contiguous):
/// largest first, ties by the smaller column; k <= max_k, results padded with
/// -inf / -1 when k > n. Synchronous.
void topk(int device, const float* scores, size_t m, size_t n, bool on_device, size_t k, float* out_values,
          int64_t* out_indices, uintptr_t stream);

}  // namespace cuda
}  // namespace flatcoat
