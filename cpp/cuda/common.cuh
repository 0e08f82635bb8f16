// CUDA plumbing shared by the .cu files: status checks that throw, RAII device
// memory, the current-device guard and launch helpers.
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>
#include <string>
#include <utility>  // std::exchange

#include "api.cuh"

namespace flatcoat {
namespace cuda {

[[noreturn]] void throw_cuda(cudaError_t status, const char* call, const char* file, int line);

/// Every CUDA runtime call goes through this: a failure becomes cuda_error.
#define FC_CUDA_CHECK(call)                                                                 \
    do {                                                                                    \
        cudaError_t fc_status_ = (call);                                                    \
        if (fc_status_ != cudaSuccess) ::flatcoat::cuda::throw_cuda(fc_status_, #call, __FILE__, __LINE__); \
    } while (0)

/// After a kernel launch: a bad configuration is reported now, a fault in the
/// kernel at the next synchronisation (which is checked too).
#define FC_CUDA_LAUNCHED(kernel_name) FC_CUDA_CHECK(cudaGetLastError())

/// Makes `device` current for a scope and restores the previous one.
class device_guard_t {
   public:
    explicit device_guard_t(int device);
    ~device_guard_t();
    device_guard_t(const device_guard_t&) = delete;
    device_guard_t& operator=(const device_guard_t&) = delete;

   private:
    int previous_ = -1;
};

/// Owned device memory. Stream-ordered (cudaMallocAsync / cudaFreeAsync) when
/// given a stream, so per-search scratch needs no device-wide synchronisation.
template <class T>
class device_buffer_t {
   public:
    device_buffer_t() = default;
    explicit device_buffer_t(size_t n) : n_(n) {
        if (n) FC_CUDA_CHECK(cudaMalloc(reinterpret_cast<void**>(&ptr_), n * sizeof(T)));
    }
    device_buffer_t(size_t n, cudaStream_t stream) : n_(n), stream_(stream), async_(true) {
        if (n) FC_CUDA_CHECK(cudaMallocAsync(reinterpret_cast<void**>(&ptr_), n * sizeof(T), stream));
    }
    ~device_buffer_t() { release(); }
    device_buffer_t(device_buffer_t&& other) noexcept
        : ptr_(std::exchange(other.ptr_, nullptr)), n_(std::exchange(other.n_, 0)), stream_(other.stream_),
          async_(other.async_) {}
    device_buffer_t& operator=(device_buffer_t&& other) noexcept {
        if (this != &other) {
            release();
            ptr_ = std::exchange(other.ptr_, nullptr);
            n_ = std::exchange(other.n_, 0);
            stream_ = other.stream_;
            async_ = other.async_;
        }
        return *this;
    }
    device_buffer_t(const device_buffer_t&) = delete;
    device_buffer_t& operator=(const device_buffer_t&) = delete;

    T* get() const { return ptr_; }
    size_t size() const { return n_; }
    size_t bytes() const { return n_ * sizeof(T); }

   private:
    void release() noexcept {
        // A destructor cannot throw; a failed free here means the context is
        // already broken, and the next checked call reports that.
        if (ptr_ == nullptr) return;
        if (async_)
            (void)cudaFreeAsync(ptr_, stream_);
        else
            (void)cudaFree(ptr_);
        ptr_ = nullptr;
    }
    T* ptr_ = nullptr;
    size_t n_ = 0;
    cudaStream_t stream_ = nullptr;
    bool async_ = false;
};

/// What the launchers need to know about the current device, read once per call.
struct device_info_t {
    int sms = 1;
    size_t max_smem = 48 * 1024;  ///< dynamic shared memory a block may opt into
};
device_info_t current_device_info();

/// Raises a kernel's dynamic shared-memory limit when `bytes` needs it.
void allow_smem(const void* kernel, size_t bytes);

inline size_t ceil_div(size_t a, size_t b) { return (a + b - 1) / b; }
inline size_t round_up(size_t a, size_t b) { return ceil_div(a, b) * b; }
inline size_t pow2_ceil(size_t x) {
    size_t p = 1;
    while (p < x) p <<= 1;
    return p;
}

}  // namespace cuda
}  // namespace flatcoat
