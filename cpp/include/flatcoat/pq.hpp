// Product quantization with 16 centroids per sub-space (4-bit codes): codebook
// training, encoding (plain or ScaNN's anisotropic loss), the fast-scan block
// layout, and the per-ISA kernel that sums 4-bit look-ups over it.
#pragma once

#include <cstddef>  // size_t
#include <cstdint>  // uint8_t, uint16_t, uint64_t

#include "flatcoat/isa.hpp"

namespace flatcoat {

/// Centroids per sub-space: one 4-bit code per sub-quantizer.
constexpr size_t pq4_centroids_k = 16;
/// Vectors per fast-scan block.
constexpr size_t pq4_block_k = 32;

/// Trains m codebooks of 16 centroids over the sub-spaces of `x` (n x d,
/// n >= 16, m divides d): sub-space s holds dimensions [s*d/m, (s+1)*d/m).
/// One random sample of at most 16 * 256 points (std::mt19937_64(seed)) is
/// shared by the sub-spaces; each is clustered by kmeans() (plain, squared
/// distance) with seed + 1 + s. Writes `codebooks`, m x 16 x (d/m) float32.
void pq_train(const float* x, size_t n, size_t d, size_t m, size_t iterations, uint64_t seed, float* codebooks);

/// One code (0..15) per sub-space for each of the n vectors of `x` (n x d):
/// `codes` gets n x m bytes.
///
/// Plain (`originals` null or every eta 0): the nearest codeword in squared
/// distance, ties to the smaller code.
///
/// Anisotropic (ScaNN, Guo et al. 2020): with the quantization error
/// r = x - decode(codes), split into its component along the original vector
/// o (r_par = <r, o> o / |o|^2) and the rest, the loss is
/// eta * |r_par|^2 + |r_perp|^2. `x` are the residuals (original minus list
/// centroid) and `originals` the n x d originals, which give the direction.
/// Encoding starts from the plain codes and runs coordinate descent: sub-spaces
/// in decreasing order of their plain error, each tries its 16 codewords, a
/// move that increases |r_par| is skipped, the best loss decrease is kept; at
/// most 10 rounds, stopping at the first round without a change.
/// `eta` holds n weights (one per vector; eta_count == n) or one shared by all
/// (eta_count == 1); vectors with eta <= 0 keep their plain codes.
void pq_encode(const float* x, size_t n, size_t d, const float* codebooks, size_t m, const float* originals,
               const float* eta, size_t eta_count, uint8_t* codes);

/// Bytes of one fast-scan block of 32 vectors with m sub-quantizers.
inline size_t pq4_block_bytes(size_t m) { return 16 * m; }

/// Packs n x m codes (one per byte, 0..15) into ceil(n / 32) fast-scan blocks,
/// `packed` gets ceil(n/32) * 16m bytes. Layout of a block (ScaNN's plain
/// interleave, no permutation): for each sub-quantizer s in order, 16 bytes;
/// byte j holds vector j's code in its low nibble and vector j + 16's in its
/// high nibble. Sub-quantizers s and s + 1 thus fill one 32-byte AVX2 register
/// and four fill one AVX-512 register, whose 16-byte lanes index 16-entry
/// tables with pshufb / vpshufb. Vectors past n in the last block get code 0.
void pq4_pack(const uint8_t* codes, size_t n, size_t m, uint8_t* packed);

/// The inverse of pq4_pack for the first n vectors: `codes` gets n x m bytes.
void pq4_unpack(const uint8_t* packed, size_t n, size_t m, uint8_t* codes);

/// The vector (0..31) of a block whose sum the kernel writes at position p:
/// positions 0..7 hold vectors 0, 2, .., 14; 8..15 vectors 1, 3, .., 15; 16..23
/// vectors 16, 18, .., 30; 24..31 vectors 17, 19, .., 31 (the order in which
/// the u16 accumulators come out, so no shuffle is spent restoring it).
inline size_t pq4_position_vector(size_t p) { return (p & 16) | ((p & 7) << 1) | ((p >> 3) & 1); }

/// The fast-scan kernel, one per ISA (cpp/src/kernels/pq4/<isa>.cpp):
///   out[b * 32 + p] = sum over s < m of lut[s * 16 + code(block b, vector v, s)]
/// with v = pq4_position_vector(p), for the n_blocks consecutive blocks at
/// `codes`; `lut` is m x 16 u8 entries; masks[b] has bit p set where
/// out[b * 32 + p] >= bar (the caller's threshold in the u16 domain).
/// Sums are exact as long as every one is below 65536 (the caller scales the
/// table so that sum over s of max_c lut[s][c] <= 65535); every ISA returns the
/// same integers.
///
/// The family also holds the IVF training's scoring kernel (k-means
/// assignment): score_panel writes out[i * ldo + j] = <q_i, c_j> for nq
/// queries (nq x dim, row-major) and the panel_width centroids of one panel,
/// stored transposed: panel[t * panel_width + j] (zero columns pad the last
/// panel). A register-blocked outer product (each query element broadcast,
/// FMA into 2 x width centroid lanes) that runs at the FMA ceiling rather than
/// at the row-dot kernel's reduction cost; each score sums its dimensions in
/// order, so it does not depend on nq or on the thread count.
struct pq4_kernels_t {
    void (*accumulate)(const uint8_t* codes, size_t n_blocks, size_t m, const uint8_t* lut, uint16_t bar,
                       uint16_t* out, uint32_t* masks);
    void (*score_panel)(const float* q, size_t nq, const float* panel, size_t dim, float* out, size_t ldo);
    size_t panel_width;
};

FLATCOAT_KERNEL_FAMILY(pq4_kernels_t)

}  // namespace flatcoat
