// Top-k selection fed straight from the scoring loops.
#pragma once

#include <algorithm>  // std::push_heap, std::nth_element, std::sort
#include <cstddef>
#include <cstdint>
#include <limits>
#include <vector>

namespace flatcoat {

/// Keeps the k best (value, row) pairs: higher value is better, and equal
/// values are ordered by the smaller user id (ids[row], or row itself when
/// ids is null), so the result is the same whatever order rows arrive in,
/// whatever the thread count.
///
/// Small k uses a binary heap. Large k (re-ranking shortlists, top-k of many
/// scores) collects candidates into a buffer of 2k and cuts it back to the k
/// best with a selection when it fills: O(1) amortised per candidate instead
/// of O(log k).
class topk_t {
   public:
    struct entry_t {
        float value;
        int64_t row;
        int64_t id;  // ids[row], kept inline: ties are common (Hamming) and must not chase pointers
    };

    topk_t() = default;
    topk_t(size_t k, const int64_t* ids) : k_(k), ids_(ids) {
        kept_.reserve(k <= heap_limit_k ? k : std::min<size_t>(2 * k, 1 << 16));
    }

    /// Values strictly below this can never enter; callers test it before push().
    float threshold() const { return threshold_; }

    void push(float value, int64_t row) {
        entry_t e{value, row, ids_ ? ids_[row] : row};
        if (k_ == 0) return;
        if (k_ > heap_limit_k) {
            kept_.push_back(e);
            if (kept_.size() >= 2 * k_) cut();
        } else if (kept_.size() < k_) {
            kept_.push_back(e);
            std::push_heap(kept_.begin(), kept_.end(), by_quality());
            if (kept_.size() == k_) threshold_ = kept_.front().value;
        } else if (better(e, kept_.front())) {
            std::pop_heap(kept_.begin(), kept_.end(), by_quality());
            kept_.back() = e;
            std::push_heap(kept_.begin(), kept_.end(), by_quality());
            threshold_ = kept_.front().value;
        }
    }

    void merge(const topk_t& other) {
        for (const entry_t& e : other.kept_)
            if (e.value >= threshold_) push(e.value, e.row);
    }

    /// The kept entries (at most k), best first.
    std::vector<entry_t> sorted() const {
        std::vector<entry_t> out(kept_);
        auto order = [this](const entry_t& a, const entry_t& b) { return better(a, b); };
        if (out.size() > k_) {
            std::nth_element(out.begin(), out.begin() + std::ptrdiff_t(k_), out.end(), order);
            out.resize(k_);
        }
        std::sort(out.begin(), out.end(), order);
        return out;
    }

   private:
    static constexpr size_t heap_limit_k = 64;

    bool better(const entry_t& a, const entry_t& b) const {
        return a.value > b.value || (a.value == b.value && a.id < b.id);
    }
    // std heap algorithms keep the "largest" on top: with better() as less-than,
    // the top is the worst kept entry, the one a newcomer must beat.
    struct by_quality_t {
        const topk_t* self;
        bool operator()(const entry_t& a, const entry_t& b) const { return self->better(a, b); }
    };
    by_quality_t by_quality() const { return by_quality_t{this}; }

    // Keeps the k best of the buffer; the k-th best's value becomes the bar.
    void cut() {
        std::nth_element(kept_.begin(), kept_.begin() + std::ptrdiff_t(k_ - 1), kept_.end(), by_quality());
        threshold_ = kept_[k_ - 1].value;
        kept_.resize(k_);
    }

    size_t k_ = 0;
    const int64_t* ids_ = nullptr;
    std::vector<entry_t> kept_;
    float threshold_ = -std::numeric_limits<float>::infinity();
};

}  // namespace flatcoat
