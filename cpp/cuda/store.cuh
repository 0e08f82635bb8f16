// What the device stores (dense.cu, maxsim.cu) and the top-k of given scores
// (dense.cu) share: zeroed device arrays, copying rows of a field in, staging
// a call's host inputs and outputs through device memory, and freeing a
// store on its own device.
#pragma once

#include <memory>  // std::unique_ptr
#include <string>
#include <vector>

#include "common.cuh"

namespace flatcoat {
namespace cuda {

/// A device array of n elements, all bytes zero (row padding must read as 0). Synchronous.
template <class T>
device_buffer_t<T> zeroed_buffer(size_t n) {
    device_buffer_t<T> b(n);
    if (b.bytes()) FC_CUDA_CHECK(cudaMemset(b.get(), 0, b.bytes()));
    return b;
}

/// Where one field of a store lives on the device.
struct field_t {
    char* base = nullptr;  ///< null: the store was created without this field
    size_t pitch = 0;      ///< bytes from one device row to the next
    size_t width = 0;      ///< bytes of data per row (the rest of the pitch stays zero)
    size_t rows = 0;       ///< rows the field holds
};

/// Copies `n` rows, `src_pitch` bytes apart, from host or device memory at
/// `src` to rows row_begin.. of field `name` (synchronous). Throws
/// flatcoat::error naming the field for rows outside it, a field the store
/// lacks, or rows that overlap.
void upload_rows(int device, const std::string& name, const field_t& field, size_t row_begin, const void* src,
                 size_t n, size_t src_pitch);

/// `src` itself when it is device memory, else a stream-ordered copy of its
/// n elements in `staging` (which must outlive the stream's use of it).
template <class T>
const T* device_input(const T* src, size_t n, bool on_device, device_buffer_t<T>& staging, cudaStream_t stream) {
    if (on_device || n == 0) return src;
    staging = device_buffer_t<T>(n, stream);
    FC_CUDA_CHECK(cudaMemcpyAsync(staging.get(), src, n * sizeof(T), cudaMemcpyHostToDevice, stream));
    return staging.get();
}

/// The outputs of one call, scores and ids (count each): kernels write device
/// memory (the caller's, or staging for host outputs), and finish() copies
/// staged results out, reads the call's "first bad row" flags back and
/// synchronises the stream. A flag left at `no_bad_row` means none.
class call_outputs_t {
   public:
    static constexpr int no_bad_row = 0x7F7F7F7F;

    call_outputs_t(float* scores, int64_t* ids, size_t count, bool on_device, size_t flags, cudaStream_t stream);

    float* scores() const { return on_device_ ? scores_ : staged_scores_.get(); }
    int64_t* ids() const { return on_device_ ? ids_ : staged_ids_.get(); }
    int* flags() const { return flags_.get(); }  ///< device, `flags` ints

    /// Returns the flags once every copy and kernel on the stream has finished.
    std::vector<int> finish();

   private:
    float* scores_;
    int64_t* ids_;
    size_t count_;
    bool on_device_;
    cudaStream_t stream_;
    device_buffer_t<float> staged_scores_;
    device_buffer_t<int64_t> staged_ids_;
    device_buffer_t<int> flags_;
};

/// Frees a store's arrays with `device` current, then restores the caller's
/// device (a destructor: never throws).
template <class impl_t>
void release_on_device(std::unique_ptr<impl_t>& impl, int device) noexcept {
    int current = -1;
    const bool switched = cudaGetDevice(&current) == cudaSuccess && current != device &&
                          cudaSetDevice(device) == cudaSuccess;
    impl.reset();
    if (switched) (void)cudaSetDevice(current);
}

}  // namespace cuda
}  // namespace flatcoat
