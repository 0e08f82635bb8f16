"""The core's dense encoder (_core.encode_dense, behind DenseIndex.add and encode_rows) against
the numpy formulas it replaced: bit for bit for every storage and metric, whatever the thread
count, with bad rows named."""

import numpy as np
import pytest

import flatcoat
from flatcoat import _core
from flatcoat.dense import encode_rows


def reference_normalize(x):
    """Cosine rows as numpy computed them: float64 norms, one rounding to float32."""
    norms = np.sqrt(np.einsum("ij,ij->i", x, x, dtype=np.float64))
    return (x / norms[:, None]).astype(np.float32)


def reference_sq_norms(rows):
    return np.einsum("ij,ij->i", rows, rows, dtype=np.float64).astype(np.float32)


def reference_encode(storage, x):
    """The numpy encoder flatcoat used before the core's (float32 arithmetic throughout)."""
    out = {}
    if storage == "f32":
        codes, decoded = x, x
    elif storage == "f16":
        half = x.astype(np.float16)
        codes, decoded = half.view(np.uint16), half.astype(np.float32)
    elif storage == "bf16":  # float64 arithmetic: 8 significant bits, nearest, ties to even
        mantissa, exponent = np.frexp(x.astype(np.float64))
        decoded = np.ldexp(np.round(mantissa * 256.0), exponent - 8).astype(np.float32)
        codes = (decoded.view(np.uint32) >> np.uint32(16)).astype(np.uint16)
    elif storage == "int8":
        low = x.min(axis=1, keepdims=True)
        high = x.max(axis=1, keepdims=True)
        scale = np.maximum(high - low, np.float32(1e-30)) / np.float32(255.0)
        offset = low + np.float32(0.5) * scale
        steps = (x - offset) / scale + np.float32(0.5)
        codes = np.clip(np.floor(steps), 0, 255).astype(np.uint8)
        out["scale"], out["offset"] = scale[:, 0], offset[:, 0]
        decoded = offset + scale * codes.astype(np.float32)
    else:
        words = (x.shape[1] + 63) // 64
        bits = np.zeros((x.shape[0], words * 64), dtype=np.uint8)
        bits[:, : x.shape[1]] = x > 0
        codes, decoded = np.packbits(bits, axis=1, bitorder="little").view(np.uint64), None
    out["codes"] = codes
    if decoded is not None:
        out["sq_norms"] = reference_sq_norms(decoded)
    return out


def data(n, dim, seed=0):
    """Rows of very different scales, a constant row (int8's zero range) and a row with an exact 0."""
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal((n, dim)) * rng.uniform(1e-3, 1e3, (n, 1))).astype(np.float32)
    x[min(1, n - 1)] = 0.25
    x[0, 0] = 0.0
    return x


def assert_same_bits(found, expected, name):
    found, expected = np.ascontiguousarray(found), np.ascontiguousarray(expected)
    assert found.dtype == expected.dtype and found.shape == expected.shape, name
    mismatched = int(np.count_nonzero(found.view(np.uint8) != expected.view(np.uint8)))
    assert mismatched == 0, f"{name}: {mismatched} bytes differ"


@pytest.mark.parametrize("dim", [3, 7, 97, 384])
@pytest.mark.parametrize("storage", ["f32", "f16", "bf16", "int8", "binary"])
@pytest.mark.parametrize("metric", ["ip", "cosine", "l2"])
@pytest.mark.parametrize("keep_float", [False, True])
def test_add_stores_the_reference_encoding(dim, storage, metric, keep_float):
    x = data(700, dim)
    index = flatcoat.DenseIndex(dim, metric=metric, storage=storage, keep_float=keep_float)
    index.add(x)
    stored = index.arrays()
    rows = reference_normalize(x) if metric == "cosine" else x
    expected = reference_encode(storage, rows)
    if metric != "l2":
        expected.pop("sq_norms", None)
    if keep_float:
        expected["float_rows"] = rows
        if metric == "l2":
            expected["float_sq_norms"] = reference_sq_norms(rows)
    assert set(stored) - {"ids"} == set(expected)
    for name, want in expected.items():
        assert_same_bits(stored[name], want, name)


@pytest.mark.parametrize("storage", ["f32", "f16", "int8", "binary"])
def test_norms_within_one_ulp_of_float64(storage):
    """The core sums squares in float64 in its own fixed order: one rounding to float32 away from
    the exact norm, so at most 1 ulp from any float64 reference (equal in practice)."""
    x = data(2000, 97, seed=3)
    rows = encode_rows(storage, x, sq_norms=storage != "binary", normalize=True)
    exact = np.sqrt(np.sum(x.astype(np.float64) ** 2, axis=1))
    normalised = _core_normalised(x)
    np.testing.assert_array_max_ulp(normalised, (x / exact[:, None]).astype(np.float32), maxulp=1)
    if storage != "binary":
        decoded = flatcoat.dense.decode_rows(storage, 97, rows, np.arange(2000))
        exact_sq = np.sum(decoded.astype(np.float64) ** 2, axis=1).astype(np.float32)
        np.testing.assert_array_max_ulp(rows["sq_norms"], exact_sq, maxulp=1)


def _core_normalised(x):
    out = np.empty_like(x)
    _core.encode_dense("f32", x, out, normalize=True)
    return out


@pytest.mark.parametrize("storage", ["f32", "f16", "int8", "binary"])
def test_one_and_two_threads_identical(storage):
    x = data(3000, 97, seed=5)  # several blocks of rows
    results = []
    try:
        for threads in (1, 2):
            flatcoat.set_num_threads(threads)
            index = flatcoat.DenseIndex(97, metric="cosine", storage=storage, keep_float=True)
            index.add(x)
            results.append(index.arrays())
    finally:
        flatcoat.set_num_threads(0)
    for name in results[0]:
        assert_same_bits(results[1][name], results[0][name], name)


@pytest.mark.parametrize("storage", ["f32", "int8", "binary"])
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_first_non_finite_row_named_and_nothing_added(storage, bad):
    x = data(2000, 7)
    x[1500, 3] = bad
    x[900, 6] = bad  # in a later block than row 0 and an earlier one than row 1500
    index = flatcoat.DenseIndex(7, storage=storage, keep_float=True)
    index.add(x[:10])
    with pytest.raises(ValueError, match=r"^vectors: row 900 contains NaN or inf"):
        index.add(x, ids=np.arange(100, 2100))
    assert len(index) == 10 and 100 not in index and 1000 not in index
    index.add(x[:5], ids=[100, 101, 102, 103, 104])  # the ids of the failed call are free again
    assert len(index) == 15
    with pytest.raises(ValueError, match=r"^vectors: row 900 contains NaN or inf"):
        index.upsert(x, ids=np.arange(2000))
    assert len(index) == 15


def test_cosine_zero_row_and_f16_overflow_named():
    x = data(600, 7)
    x[400] = 0.0
    with pytest.raises(ValueError, match=r"^vectors: row 400 is all zeros and has no direction"):
        flatcoat.DenseIndex(7, metric="cosine").add(x)
    x = data(600, 7)
    x[300, 2] = 70000.0
    index = flatcoat.DenseIndex(7, storage="f16")
    with pytest.raises(ValueError, match=r"^vectors: row 300 has values beyond the float16 range"):
        index.add(x)
    assert len(index) == 0
    x[300, 2] = 65504.0  # the largest half is fine
    index.add(x)
    assert index.arrays()["codes"][300, 2] == 0x7BFF


def test_f16_rounds_to_nearest_even_like_numpy():
    """Every float16 boundary case: ties, subnormals, the largest half, signed zero."""
    halves = np.arange(0x7C00, dtype=np.uint16).view(np.float16).astype(np.float32)
    between = (halves[:-1].astype(np.float64) + halves[1:]) / 2  # exact ties
    values = np.concatenate([halves, between.astype(np.float32), np.nextafter(between.astype(np.float32), 0),
                             np.float32([65519.0, -0.0, 1e-10, 6e-8, 3e-8])])
    values = np.concatenate([values, -values]).astype(np.float32)
    dim = 5
    x = np.resize(values, (len(values) + dim - 1) // dim * dim).reshape(-1, dim)
    rows = encode_rows("f16", x)
    assert_same_bits(rows["codes"], x.astype(np.float16).view(np.uint16), "codes")


def test_empty_input():
    for storage in ("f32", "f16", "int8", "binary"):
        index = flatcoat.DenseIndex(7, storage=storage, keep_float=True, metric="l2")
        assert index.add(np.empty((0, 7), np.float32)).shape == (0,)
        assert len(index) == 0
        rows = encode_rows(storage, np.empty((0, 7), np.float32), sq_norms=storage != "binary")
        assert all(a.shape[0] == 0 for a in rows.values())


def test_batches_equal_one_add_and_growth_after_mmap(tmp_path):
    """Growth in place (a batch smaller than the rows kept), into a new array (a larger one), and
    from a read-only memory map all keep the rows."""
    x = data(5000, 97, seed=7)
    whole = flatcoat.DenseIndex(97, storage="int8", metric="l2", keep_float=True)
    whole.add(x)
    parts = flatcoat.DenseIndex(97, storage="int8", metric="l2", keep_float=True)
    for start, stop in [(0, 100), (100, 3000), (3000, 3500), (3500, 3600)]:
        parts.add(x[start:stop])
    parts.save(tmp_path / "parts")
    loaded = flatcoat.load(tmp_path / "parts", mmap=True)
    loaded.add(x[3600:])
    for name, a in whole.arrays().items():
        assert_same_bits(loaded.arrays()[name], a, name)


def test_binding_refuses_bad_outputs():
    x = data(10, 7)
    codes = np.empty((10, 7), np.uint8)
    with pytest.raises(ValueError, match="scale, offset"):
        _core.encode_dense("int8", x, codes)
    read_only = np.empty((10, 7), np.float32)
    read_only.flags.writeable = False
    with pytest.raises(ValueError, match="codes: array is read-only"):
        _core.encode_dense("f32", x, read_only)
    with pytest.raises(ValueError, match="codes: expected 10 rows"):
        _core.encode_dense("f32", x, np.empty((9, 7), np.float32))
    with pytest.raises(TypeError, match="x: expected dtype float32"):
        _core.encode_dense("f32", x.astype(np.float64), np.empty((10, 7), np.float32))
    with pytest.raises(ValueError, match="sq_norms: binary codes have none"):
        _core.encode_dense("binary", x, np.empty((10, 1), np.uint64), sq_norms=np.empty(10, np.float32))
