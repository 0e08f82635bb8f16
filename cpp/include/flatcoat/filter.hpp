// The filter bitset: which storage positions (dense rows, IVF slots,
// multi-vector documents) a search may return. One place for reading it.
#pragma once

#include <cstddef>  // size_t
#include <cstdint>  // uint64_t, int64_t
#include <vector>

namespace flatcoat {

/// A read-only view of an allow-list over positions [0, bits): position p is
/// allowed iff bit (p % 64) of words[p / 64] is set (least significant bit
/// first), the layout of `np.packbits(mask, bitorder="little")` viewed as
/// little-endian uint64. `words` holds ceil(bits / 64) words; bits past
/// `bits` are ignored. `words == nullptr` is no filter: everything allowed.
/// Nothing here is owned.
struct filter_t {
    const uint64_t* words = nullptr;
    size_t bits = 0;

    /// True when a bitset is given (false: no filter).
    bool active() const { return words != nullptr; }

    /// Whether position p (< bits) may be returned.
    bool allowed(size_t p) const { return words == nullptr || ((words[p >> 6] >> (p & 63)) & 1u) != 0; }

    /// The word holding positions [64 w, 64 w + 64) restricted to [begin, end): its other bits cleared.
    uint64_t word_in(size_t w, size_t begin, size_t end) const {
        uint64_t word = words[w];
        const size_t lo = w * 64;
        if (begin > lo) word &= ~uint64_t(0) << (begin - lo);
        if (end < lo + 64) word &= (uint64_t(1) << (end - lo)) - 1;
        return word;
    }

    /// Allowed positions in [begin, end) (end <= bits); end - begin without a filter.
    size_t count(size_t begin, size_t end) const {
        if (words == nullptr) return end - begin;
        if (begin >= end) return 0;
        size_t n = 0;
        for (size_t w = begin / 64; w <= (end - 1) / 64; ++w) n += size_t(__builtin_popcountll(word_in(w, begin, end)));
        return n;
    }
    /// Allowed positions in [0, bits).
    size_t count() const { return count(0, bits); }

    /// Whether any position of [begin, end) is allowed (stops at the first set word).
    bool any(size_t begin, size_t end) const {
        if (words == nullptr) return begin < end;
        if (begin >= end) return false;
        for (size_t w = begin / 64; w <= (end - 1) / 64; ++w)
            if (word_in(w, begin, end) != 0) return true;
        return false;
    }

    /// Calls f(p) for every allowed position p of [begin, end), ascending.
    template <class f_t>
    void for_each(size_t begin, size_t end, f_t&& f) const {
        if (begin >= end) return;
        if (words == nullptr) {
            for (size_t p = begin; p < end; ++p) f(p);
            return;
        }
        for (size_t w = begin / 64; w <= (end - 1) / 64; ++w) {
            uint64_t word = word_in(w, begin, end);
            while (word != 0) {
                f(w * 64 + size_t(__builtin_ctzll(word)));
                word &= word - 1;
            }
        }
    }

    /// The allowed positions of [begin, end), ascending.
    std::vector<int64_t> positions(size_t begin, size_t end) const {
        std::vector<int64_t> out;
        out.reserve(count(begin, end));
        for_each(begin, end, [&](size_t p) { out.push_back(int64_t(p)); });
        return out;
    }
    std::vector<int64_t> positions() const { return positions(0, bits); }
};

}  // namespace flatcoat
