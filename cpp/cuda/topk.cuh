// Block-level top-k selection, shared by every GPU search.
//
// A candidate is one 64-bit key: the score's order-preserving bits above the
// complement of its row, so "larger key" means "higher score, then smaller
// row". Keys are unique (rows are), so selection is exact and deterministic,
// and since the dense store keeps rows in ascending id order, "smaller row" is
// "smaller id": the CPU's tie rule. Key 0 never occurs and marks "no result".
//
// Each block keeps, per query ("slot"), a candidate list in global memory and
// a threshold in shared memory: scores are pushed into the list only when they
// beat the threshold, which after the first rows rejects nearly everything.
// Blocks work in rounds of at most `round` pushes per slot; between rounds, a
// list that might overflow in the next round is sorted in shared memory
// (bitonic) and cut back to its best k, which also raises the threshold. So
// the work is one compare per score plus O(log^2 cap) per k pushes, for any k.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

namespace flatcoat {
namespace cuda {

/// Larger float -> larger unsigned, for every non-NaN float (-0 is made +0 first).
__device__ __forceinline__ uint32_t order_bits(float f) {
    if (f == 0.0f) f = 0.0f;  // -0 and +0 compare equal on the CPU, so they must tie here too
    const uint32_t u = __float_as_uint(f);
    return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}

__device__ __forceinline__ float from_order_bits(uint32_t o) {
    return __uint_as_float((o & 0x80000000u) ? (o & 0x7FFFFFFFu) : ~o);
}

__device__ __forceinline__ uint64_t make_key(float value, uint32_t row) {
    return (uint64_t(order_bits(value)) << 32) | uint64_t(~row);
}
__device__ __forceinline__ uint32_t key_row(uint64_t key) { return ~uint32_t(key); }
__device__ __forceinline__ float key_value(uint64_t key) { return from_order_bits(uint32_t(key >> 32)); }

/// The list capacity for k results when a round pushes at most `round` (a power of two) per slot:
/// a power of two >= k + round, so at least half the list is free after each cut.
inline size_t topk_capacity(size_t k, size_t round) {
    size_t c = 1;
    while (c < k + round) c <<= 1;
    return c;
}

/// Shared-memory state of a block_topk_t (declare it __shared__ in the kernel).
template <int SLOTS>
struct topk_state_t {
    unsigned count[SLOTS];
    uint64_t tau[SLOTS];  ///< a key must be larger to enter
    int pending[SLOTS];   ///< slots to sort in the current maintenance step
    int n_pending;
    int sort_size;
};

/// See the file comment. Every member function except offer() must be called
/// by all threads of the block (they contain barriers).
template <int SLOTS>
class block_topk_t {
   public:
    /// lists: slots x cap keys of global memory owned by this block; scratch:
    /// shared memory for scratch_keys keys (>= cap).
    __device__ block_topk_t(topk_state_t<SLOTS>& state, uint64_t* lists, uint64_t* scratch, int scratch_keys,
                            int slots, int k, int cap, int round)
        : st_(state), lists_(lists), scratch_(scratch), scratch_keys_(scratch_keys), slots_(slots), k_(k),
          cap_(cap), room_(cap - round) {}

    __device__ void init() {
        for (int s = threadIdx.x; s < slots_; s += blockDim.x) {
            st_.count[s] = 0;
            st_.tau[s] = 0;
        }
        __syncthreads();
    }

    /// Any thread, any time inside a round.
    __device__ __forceinline__ void offer(int slot, uint64_t key) {
        if (key > st_.tau[slot]) {
            const unsigned at = atomicAdd(&st_.count[slot], 1u);
            lists_[size_t(slot) * cap_ + at] = key;
        }
    }

    /// Between rounds: cuts back every list that the next round could overflow.
    __device__ void maintain() {
        __syncthreads();  // this round's pushes (shared counts, global lists) are visible
        if (threadIdx.x == 0) {
            int n = 0;
            for (int s = 0; s < slots_; ++s)
                if (int(st_.count[s]) > room_) st_.pending[n++] = s;
            st_.n_pending = n;
            st_.sort_size = cap_;  // count > room >= cap / 2, so the whole list is sorted
        }
        __syncthreads();
        if (st_.n_pending > 0) cut(false);
    }

    /// After the last round: list s holds its best k keys, best first, then 0 keys.
    __device__ void finish() {
        __syncthreads();
        if (threadIdx.x == 0) {
            unsigned most = 1;
            for (int s = 0; s < slots_; ++s) {
                st_.pending[s] = s;
                most = st_.count[s] > most ? st_.count[s] : most;
            }
            int p = 1;
            while (p < int(most)) p <<= 1;
            st_.n_pending = slots_;
            st_.sort_size = p;
        }
        __syncthreads();
        cut(true);
    }

    __device__ const uint64_t* list(int slot) const { return lists_ + size_t(slot) * cap_; }

   private:
    /// Sorts the pending slots' lists (as many at once as the scratch holds) and keeps the best k.
    __device__ void cut(bool final_cut) {
        const int p = st_.sort_size;
        const int n_pending = st_.n_pending;
        const int per_pass = scratch_keys_ / p;
        for (int g0 = 0; g0 < n_pending; g0 += per_pass) {
            const int groups = min(per_pass, n_pending - g0);
            for (int i = threadIdx.x; i < groups * p; i += blockDim.x) {
                const int s = st_.pending[g0 + i / p];
                const int j = i % p;
                scratch_[i] = j < int(st_.count[s]) ? lists_[size_t(s) * cap_ + j] : 0;
            }
            __syncthreads();
            sort_segments(groups * p, p);
            // Write back the best k (a final cut also writes the 0 keys after them).
            for (int i = threadIdx.x; i < groups * k_; i += blockDim.x) {
                const int g = i / k_;
                const int j = i % k_;
                const int s = st_.pending[g0 + g];
                const int kept = min(int(st_.count[s]), k_);
                if (j < kept)
                    lists_[size_t(s) * cap_ + j] = scratch_[g * p + j];
                else if (final_cut)
                    lists_[size_t(s) * cap_ + j] = 0;
            }
            __syncthreads();
            if (threadIdx.x == 0) {
                for (int g = 0; g < groups; ++g) {
                    const int s = st_.pending[g0 + g];
                    const int kept = min(int(st_.count[s]), k_);
                    st_.tau[s] = kept == k_ ? scratch_[g * p + k_ - 1] : 0;
                    st_.count[s] = unsigned(kept);
                }
            }
            __syncthreads();
        }
    }

    /// Bitonic sort, descending, of each segment of `seg` keys (a power of two) in scratch[0, total).
    __device__ void sort_segments(int total, int seg) {
        const int half_seg = seg >> 1;
        for (int size = 2; size <= seg; size <<= 1) {
            for (int stride = size >> 1; stride > 0; stride >>= 1) {
                for (int i = threadIdx.x; i < (total >> 1); i += blockDim.x) {
                    const int w = i % half_seg;
                    const int lo = 2 * w - (w & (stride - 1));  // (w / stride) * 2 * stride + w % stride
                    uint64_t* base = scratch_ + (i / half_seg) * seg;
                    const uint64_t a = base[lo];
                    const uint64_t b = base[lo + stride];
                    const bool descending = (lo & size) == 0;
                    if (descending ? a < b : a > b) {
                        base[lo] = b;
                        base[lo + stride] = a;
                    }
                }
                __syncthreads();
            }
        }
    }

    topk_state_t<SLOTS>& st_;
    uint64_t* lists_;
    uint64_t* scratch_;
    int scratch_keys_;
    int slots_;
    int k_;
    int cap_;
    int room_;
};

}  // namespace cuda
}  // namespace flatcoat
