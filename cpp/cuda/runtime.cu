// Device discovery, error reporting and launch helpers.
#include <cstdio>  // std::snprintf
#include <string>

#include "common.cuh"

namespace flatcoat {
namespace cuda {

void throw_cuda(cudaError_t status, const char* call, const char* file, int line) {
    (void)cudaGetLastError();  // clear a non-sticky error so later calls start clean
    std::string where(file);
    const size_t slash = where.find_last_of('/');
    if (slash != std::string::npos) where = where.substr(slash + 1);
    throw cuda_error(std::string("CUDA error: ") + cudaGetErrorString(status) + " (" + cudaGetErrorName(status) +
                     ") in " + call + " at " + where + ":" + std::to_string(line));
}

int device_count() {
    int n = 0;
    if (cudaGetDeviceCount(&n) != cudaSuccess) {
        (void)cudaGetLastError();
        return 0;
    }
    return n;
}

std::string device_status() {
    int n = 0;
    const cudaError_t status = cudaGetDeviceCount(&n);
    if (status != cudaSuccess) {
        (void)cudaGetLastError();
        return std::string(cudaGetErrorString(status)) + " (" + cudaGetErrorName(status) + ")";
    }
    return n > 0 ? std::string() : std::string("no CUDA device is visible");
}

static void check_ordinal(int device) {
    const int n = device_count();
    if (device < 0 || device >= n)
        throw error("device: no CUDA device " + std::to_string(device) + " (" + std::to_string(n) +
                    " visible" + (n == 0 ? ": " + device_status() : std::string()) + ")");
}

std::string device_name(int device) {
    check_ordinal(device);
    cudaDeviceProp prop;
    FC_CUDA_CHECK(cudaGetDeviceProperties(&prop, device));
    char memory[32];
    std::snprintf(memory, sizeof(memory), "%.1f GiB", double(prop.totalGlobalMem) / (1024.0 * 1024.0 * 1024.0));
    return std::string(prop.name) + " (sm_" + std::to_string(prop.major) + std::to_string(prop.minor) + ", " +
           std::to_string(prop.multiProcessorCount) + " SMs, " + memory + ")";
}

int runtime_version() {
    int v = 0;
    if (cudaRuntimeGetVersion(&v) != cudaSuccess) (void)cudaGetLastError();
    return v;
}

int driver_version() {
    int v = 0;
    if (cudaDriverGetVersion(&v) != cudaSuccess) (void)cudaGetLastError();
    return v;
}

int pointer_device(const void* ptr, const std::string& name) {
    cudaPointerAttributes attributes;
    const cudaError_t status = cudaPointerGetAttributes(&attributes, ptr);
    if (status != cudaSuccess) {
        (void)cudaGetLastError();
        throw error(name + ": not a CUDA device array (" + cudaGetErrorString(status) + ")");
    }
    if (attributes.type != cudaMemoryTypeDevice && attributes.type != cudaMemoryTypeManaged)
        throw error(name + ": the __cuda_array_interface__ pointer is not device memory; pass a CUDA device array "
                           "or a numpy array");
    return attributes.device;
}

device_guard_t::device_guard_t(int device) {
    check_ordinal(device);
    FC_CUDA_CHECK(cudaGetDevice(&previous_));
    if (previous_ != device) FC_CUDA_CHECK(cudaSetDevice(device));
}

device_guard_t::~device_guard_t() {
    int current = -1;
    if (cudaGetDevice(&current) == cudaSuccess && current != previous_ && previous_ >= 0)
        (void)cudaSetDevice(previous_);
}

device_info_t current_device_info() {
    int device = 0;
    FC_CUDA_CHECK(cudaGetDevice(&device));
    device_info_t info;
    int value = 0;
    FC_CUDA_CHECK(cudaDeviceGetAttribute(&value, cudaDevAttrMultiProcessorCount, device));
    info.sms = value;
    FC_CUDA_CHECK(cudaDeviceGetAttribute(&value, cudaDevAttrMaxSharedMemoryPerBlockOptin, device));
    info.max_smem = size_t(value);
    return info;
}

void allow_smem(const void* kernel, size_t bytes) {
    if (bytes > 48 * 1024)
        FC_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(bytes)));
}

}  // namespace cuda
}  // namespace flatcoat
