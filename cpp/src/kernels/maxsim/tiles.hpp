// The int8 MaxSim kernel on tiles (sapphirerapids; kernels/tiles.hpp): 16
// document tokens (an A tile, codes read in place) by two query panels (B
// tiles, as packed) per block; the int32 block is stored and each of its rows
// finished as the vector kernel finishes its accumulators (+ the query's
// bias, then the token's scale), so the maxima are the vector kernel's bit
// for bit: the sums are the same integers and the float operations the same.
#pragma once

#include <cstddef>
#include <cstdint>

#include "kernels/maxsim/maxsim.hpp"
#include "kernels/tiles.hpp"

namespace flatcoat {
namespace kernels {

template <class S, class T>
void tile_maxsim_max_u8(const int8_t* q, size_t n_panels, const int32_t* q_bias, const uint8_t* x,
                        const float* x_scale, size_t n_tok, size_t dim, float* maxima) {
    static_assert(S::width == tile_rows, "a panel is 16 query tokens: one tile's columns");
    // Dimensions short of a whole 64-byte step, and short documents, stay on the vector kernel.
    if (dim % tile_row_bytes != 0 || n_tok < tile_rows)
        return maxsim_max_u8<S>(q, n_panels, q_bias, x, x_scale, n_tok, dim, maxima);
    const size_t steps = dim / tile_row_bytes, panel_bytes = steps * tile_rows * tile_row_bytes;
    const unsigned char* panels = reinterpret_cast<const unsigned char*>(q);
    alignas(64) int32_t block[tile_rows][2 * tile_rows];  // 16 tokens x 2 panels of sums
    T::configure();
    size_t j = 0;
    for (; j + tile_rows <= n_tok; j += tile_rows) {
        for (size_t v = 0; v < n_panels; v += 2) {
            const size_t count = v + 2 <= n_panels ? 2 : 1;
            if (count == 2)
                tile_micro<T, int32_t, 1, 2>(panels + v * panel_bytes, panel_bytes, x + j * dim, dim, steps,
                                             reinterpret_cast<unsigned char*>(block), sizeof block[0]);
            else
                tile_micro<T, int32_t, 1, 1>(panels + v * panel_bytes, panel_bytes, x + j * dim, dim, steps,
                                             reinterpret_cast<unsigned char*>(block), sizeof block[0]);
            for (size_t p = 0; p < count; ++p) {
                float* m_out = maxima + (v + p) * S::width;
                const typename S::vi bias = S::load_i(q_bias + (v + p) * S::width);
                typename S::vf m = S::load(m_out);
                for (size_t r = 0; r < tile_rows; ++r) {
                    const typename S::vi sums = S::add_i(S::load_i(&block[r][p * tile_rows]), bias);
                    m = S::max(m, u8_path_t<S>::finish(sums, x_scale, j + r));
                }
                S::store(m_out, m);
            }
        }
    }
    T::release();
    if (j < n_tok) maxsim_max_u8<S>(q, n_panels, q_bias, x + j * dim, x_scale + j, n_tok - j, dim, maxima);
}

}  // namespace kernels
}  // namespace flatcoat
