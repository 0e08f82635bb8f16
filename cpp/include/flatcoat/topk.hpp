// Top-k selection fed straight from the scoring loops.
#pragma once

#include <algorithm>  // std::push_heap, std::sort
#include <cstddef>
#include <cstdint>
#include <limits>
#include <vector>

namespace flatcoat {

/// Keeps the k best (value, row) pairs: higher value is better, and equal
/// values are ordered by the smaller user id (ids[row], or row itself when
/// ids is null), so the result is the same whatever order rows arrive in,
/// whatever the thread count.
class topk_t {
   public:
    struct entry_t {
        float value;
        int64_t row;
    };

    topk_t() = default;
    topk_t(size_t k, const int64_t* ids) : k_(k), ids_(ids) { heap_.reserve(k < 4096 ? k : 4096); }

    /// Values strictly below this can never enter; callers test it before push().
    float threshold() const { return threshold_; }
    size_t size() const { return heap_.size(); }

    void push(float value, int64_t row) {
        entry_t e{value, row};
        if (heap_.size() < k_) {
            heap_.push_back(e);
            std::push_heap(heap_.begin(), heap_.end(), by_quality());
            if (heap_.size() == k_) threshold_ = heap_.front().value;
        } else if (k_ != 0 && better(e, heap_.front())) {
            std::pop_heap(heap_.begin(), heap_.end(), by_quality());
            heap_.back() = e;
            std::push_heap(heap_.begin(), heap_.end(), by_quality());
            threshold_ = heap_.front().value;
        }
    }

    void merge(const topk_t& other) {
        for (const entry_t& e : other.heap_)
            if (e.value >= threshold_) push(e.value, e.row);
    }

    /// The kept entries, best first.
    std::vector<entry_t> sorted() const {
        std::vector<entry_t> out(heap_);
        std::sort(out.begin(), out.end(), [this](const entry_t& a, const entry_t& b) { return better(a, b); });
        return out;
    }

   private:
    bool better(const entry_t& a, const entry_t& b) const {
        if (a.value != b.value) return a.value > b.value;
        return ids_ ? ids_[a.row] < ids_[b.row] : a.row < b.row;
    }
    // std heap algorithms keep the "largest" on top: with better() as less-than,
    // the top is the worst kept entry, the one a newcomer must beat.
    struct by_quality_t {
        const topk_t* self;
        bool operator()(const entry_t& a, const entry_t& b) const { return self->better(a, b); }
    };
    by_quality_t by_quality() const { return by_quality_t{this}; }

    size_t k_ = 0;
    const int64_t* ids_ = nullptr;
    std::vector<entry_t> heap_;
    float threshold_ = -std::numeric_limits<float>::infinity();
};

}  // namespace flatcoat
