// The plumbing shared by the device stores (see store.cuh).
#include <string>
#include <vector>

#include "store.cuh"

namespace flatcoat {
namespace cuda {

void upload_rows(int device, const std::string& name, const field_t& field, size_t row_begin, const void* src,
                 size_t n, size_t src_pitch) {
    if (n == 0) return;
    if (src == nullptr) throw error(name + ": no data");
    if (row_begin > field.rows || n > field.rows - row_begin)
        throw error(name + ": rows " + std::to_string(row_begin) + ".." + std::to_string(row_begin + n) +
                    " are outside the store's " + std::to_string(field.rows));
    if (field.base == nullptr) throw error(name + ": this store was created without it");
    if (n > 1 && src_pitch < field.width) throw error(name + ": rows overlap (row pitch below the row size)");
    device_guard_t guard(device);
    // cudaMemcpyDefault: the source may be host (pageable or pinned) or device memory.
    FC_CUDA_CHECK(cudaMemcpy2D(field.base + row_begin * field.pitch, field.pitch, src,
                               n > 1 ? src_pitch : field.width, field.width, n, cudaMemcpyDefault));
}

call_outputs_t::call_outputs_t(float* scores, int64_t* ids, size_t count, bool on_device, size_t flags,
                               cudaStream_t stream)
    : scores_(scores), ids_(ids), count_(count), on_device_(on_device), stream_(stream) {
    if (!on_device) {
        staged_scores_ = device_buffer_t<float>(count, stream);
        staged_ids_ = device_buffer_t<int64_t>(count, stream);
    }
    if (flags) {
        flags_ = device_buffer_t<int>(flags, stream);
        FC_CUDA_CHECK(cudaMemsetAsync(flags_.get(), 0x7F, flags * sizeof(int), stream));  // every byte 0x7F
    }
}

std::vector<int> call_outputs_t::finish() {
    if (!on_device_ && count_) {
        FC_CUDA_CHECK(cudaMemcpyAsync(scores_, staged_scores_.get(), count_ * sizeof(float), cudaMemcpyDeviceToHost,
                                      stream_));
        FC_CUDA_CHECK(cudaMemcpyAsync(ids_, staged_ids_.get(), count_ * sizeof(int64_t), cudaMemcpyDeviceToHost,
                                      stream_));
    }
    std::vector<int> flags(flags_.size(), no_bad_row);
    if (!flags.empty())
        FC_CUDA_CHECK(cudaMemcpyAsync(flags.data(), flags_.get(), flags_.bytes(), cudaMemcpyDeviceToHost, stream_));
    FC_CUDA_CHECK(cudaStreamSynchronize(stream_));
    return flags;
}

}  // namespace cuda
}  // namespace flatcoat
