// Encoding of dense rows for storage: the one encoder of the exhaustive codecs
// (DenseIndex, IVFIndex lists), run in the core's thread pool and writing
// straight into caller-allocated outputs, so an add needs no float temporary
// the size of its input.
#pragma once

#include <cstddef>  // size_t
#include <cstdint>  // uint16_t

#include "flatcoat/common.hpp"  // codec_t, error

namespace flatcoat {

/// Where encode_dense writes; every array has `n` rows. A null pointer is an
/// output not wanted, except where marked required.
struct dense_encode_out_t {
    /// Required: n codes in the layout of `codec`: f32 `dim` floats, f16 `dim`
    /// IEEE half bits, int8 `dim` bytes, binary binary_words(dim) uint64 words.
    void* codes = nullptr;
    /// int8, required there: per row, x ~ offset + scale * code.
    float* scale = nullptr;
    float* offset = nullptr;
    /// Squared norms of the decoded rows (what the l2 scan subtracts); not for binary.
    float* sq_norms = nullptr;
    /// A float32 copy of the rows (normalised when asked), n x dim.
    float* float_rows = nullptr;
    /// Squared norms of the float32 rows.
    float* float_sq_norms = nullptr;
};

/// Encodes n float32 rows `x` (n x dim) as `codec` into `out`, in parallel over
/// row blocks; results do not depend on the thread count.
///
/// With `normalize` each row is first divided by its L2 norm (float64 sum of
/// squares, rounded once to float32), as cosine indexes store it; the codes are
/// those of the normalised row.
///
/// Codecs, each exactly as the Python reference in flatcoat/dense.py computed it
/// in numpy (float32 arithmetic, no fused multiply-add):
///  - f16: round to nearest even;
///  - int8: 255 steps over the row's own [min, max], decoded at step centres:
///    scale = max(max - min, 1e-30) / 255, offset = min + scale / 2,
///    code = clip(floor((x - offset) / scale + 0.5), 0, 255);
///  - binary: sign bits (binarize in dense_search.hpp).
/// Squared norms sum float64 squares in a fixed order, then round to float32.
///
/// Throws flatcoat::error, naming the first offending row, for a row holding
/// NaN or inf; else for an all-zero row under `normalize`; else for an f16 row
/// beyond the float16 range. Outputs are then partly written.
void encode_dense(codec_t codec, const float* x, size_t n, size_t dim, bool normalize, const dense_encode_out_t& out);

/// IEEE half bits of a float32, rounded to nearest even (inf beyond the range).
uint16_t float_to_half(float value);
/// The float32 value of IEEE half bits (exact).
float half_to_float(uint16_t bits);

}  // namespace flatcoat
