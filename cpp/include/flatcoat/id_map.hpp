// Maps user ids (int64) to row positions: open addressing with linear probing
// and backward-shift deletion, so deletes leave no tombstones and memory is
// reused. About 32 bytes per id at the maximum load factor of 1/2.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

namespace flatcoat {

class id_map_t {
   public:
    static constexpr int64_t missing_k = -1;

    size_t size() const { return size_; }
    void clear();
    void reserve(size_t n);

    /// Inserts ids[i] -> first_position + i for all i, or nothing at all: returns
    /// the index of the first id already present (in the map or earlier in the
    /// batch), or -1 when every id was inserted.
    int64_t insert_new(const int64_t* ids, size_t n, int64_t first_position);
    /// positions[i] = position of ids[i], or missing_k.
    void find(const int64_t* ids, size_t n, int64_t* positions) const;
    /// Sets the position of ids that are present (after rows move).
    void assign(const int64_t* ids, const int64_t* positions, size_t n);
    /// Removes the ids that are present.
    void erase(const int64_t* ids, size_t n);

   private:
    struct slot_t {
        int64_t id;
        int64_t position;  // missing_k marks an empty slot
    };
    size_t home(int64_t id) const;
    size_t locate(int64_t id) const;  // slot holding id, or the empty slot where it would go
    void grow_for(size_t n);
    void erase_one(int64_t id);

    std::vector<slot_t> slots_;
    size_t size_ = 0;
};

}  // namespace flatcoat
