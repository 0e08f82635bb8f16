"""Every kind of bad input gets a clear ValueError/TypeError that names the argument."""

import numpy as np
import pytest

import flatcoat


@pytest.fixture
def index():
    idx = flatcoat.DenseIndex(4, metric="cosine", storage="int8", keep_float=False)
    idx.add(np.random.default_rng(0).standard_normal((10, 4)).astype(np.float32))
    return idx


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(dim=0), ValueError, "dim"),
        (dict(dim=-3), ValueError, "dim"),
        (dict(dim=2.5), ValueError, "dim"),
        (dict(dim=True), ValueError, "dim"),
        (dict(dim=4, metric="dot"), ValueError, "metric"),
        (dict(dim=4, storage="int4"), ValueError, "storage"),
    ],
)
def test_bad_constructor_arguments(kwargs, error, match):
    with pytest.raises(error, match=match):
        flatcoat.DenseIndex(**kwargs)


def test_wrong_dimension(index):
    with pytest.raises(ValueError, match="vectors: expected dimension 4, got 5"):
        index.add(np.ones((2, 5), dtype=np.float32))
    with pytest.raises(ValueError, match="queries: expected dimension 4, got 3"):
        index.search(np.ones(3, dtype=np.float32))


@pytest.mark.parametrize("dtype", [np.int32, np.int64, np.uint8, np.bool_, np.complex64, object, "U3"])
def test_dtypes_that_cannot_be_cast_safely(index, dtype):
    bad = np.ones((2, 4)).astype(dtype)
    with pytest.raises(TypeError, match="vectors: dtype .* is not a floating type"):
        index.add(bad)
    with pytest.raises(TypeError, match="queries: dtype"):
        index.search(bad)


@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
def test_nan_and_inf(index, value):
    bad = np.ones((3, 4), dtype=np.float32)
    bad[2, 1] = value
    with pytest.raises(ValueError, match="vectors: row 2 contains NaN or inf"):
        index.add(bad)
    with pytest.raises(ValueError, match="queries: row 2 contains NaN or inf"):
        index.search(bad)
    assert len(index) == 10


def test_float64_overflowing_float32_is_rejected(index):
    with pytest.raises(ValueError, match="NaN or inf"):
        index.add(np.full((1, 4), 1e300))


def test_f16_overflow_is_rejected():
    idx = flatcoat.DenseIndex(2, storage="f16")
    with pytest.raises(ValueError, match="float16 range"):
        idx.add(np.array([[1e6, 0.0]], dtype=np.float32))
    assert len(idx) == 0


@pytest.mark.parametrize("shape", [(), (2, 2, 4)])
def test_wrong_rank(index, shape):
    with pytest.raises(ValueError, match="expected a 2-d array"):
        index.add(np.ones(shape, dtype=np.float32))
    with pytest.raises(ValueError, match="queries: expected a 2-d array"):
        index.search(np.ones(shape, dtype=np.float32))


def test_non_contiguous_and_read_only_arrays_are_accepted():
    rng = np.random.default_rng(1)
    big = rng.standard_normal((20, 8)).astype(np.float64)
    strided = big[::2, ::2]  # non-contiguous float64
    ro = np.ascontiguousarray(strided, dtype=np.float32)
    ro.setflags(write=False)
    idx = flatcoat.DenseIndex(4, metric="l2")
    idx.add(strided)
    idx.add(ro)
    s1, i1 = idx.search(strided[:3], k=1)
    s2, i2 = idx.search(ro[:3], k=1)
    np.testing.assert_array_equal(s1, s2)
    assert i1[:, 0].tolist() == [0, 1, 2]  # itself (distance 0) and its copy 10 later: smaller id wins
    assert not ro.flags.writeable  # never written to


def test_float16_input_is_accepted():
    idx = flatcoat.DenseIndex(3)
    idx.add(np.eye(3, dtype=np.float16))
    _, ids = idx.search(np.array([0, 0, 1], dtype=np.float16), k=1)
    assert ids.tolist() == [[2]]


@pytest.mark.parametrize("k, error", [(0, ValueError), (-1, ValueError), (2.0, TypeError), ("3", TypeError), (None, TypeError), (True, TypeError)])
def test_bad_k(index, k, error):
    with pytest.raises(error, match="k"):
        index.search(np.ones(4, dtype=np.float32), k=k)


def test_k_larger_than_the_index_and_empty_index_are_padded(index):
    scores, ids = index.search(np.ones(4, dtype=np.float32), k=15)
    assert (ids[0, :10] >= 0).all() and (ids[0, 10:] == -1).all()
    empty = flatcoat.DenseIndex(4)
    scores, ids = empty.search(np.ones((2, 4), dtype=np.float32), k=3)
    assert (ids == -1).all() and np.isneginf(scores).all()


def test_rescore_arguments(index):
    q = np.ones(4, dtype=np.float32)
    with pytest.raises(ValueError, match="keep_float=True"):
        index.search(q, k=2, rescore=10)
    kept = flatcoat.DenseIndex(4, storage="binary", keep_float=True)
    kept.add(np.eye(4, dtype=np.float32))
    with pytest.raises(ValueError, match="rescore: must be at least k"):
        kept.search(q, k=3, rescore=2)
    with pytest.raises(TypeError, match="k"):
        kept.search(q, k=3, rescore=4.5)
    _, ids = kept.search(q, k=2, rescore=100)  # deeper than the index: allowed
    assert ids.shape == (1, 2)


def test_duplicate_ids_within_a_call_and_with_the_index(index):
    x = np.ones((3, 4), dtype=np.float32)
    with pytest.raises(ValueError, match="id 20 is already in the index or repeated"):
        index.add(x, ids=[20, 21, 20])
    assert len(index) == 10 and 21 not in index  # all or nothing
    with pytest.raises(ValueError, match="id 3 is already in the index"):
        index.add(x, ids=[100, 3, 101])
    assert len(index) == 10 and 100 not in index


@pytest.mark.parametrize(
    "ids, error, match",
    [
        ([1, 2], ValueError, "expected 3 ids"),
        ([[1, 2, 3]], ValueError, "1-d"),
        ([1.0, 2.0, 3.0], TypeError, "integer"),
        (["a", "b", "c"], TypeError, "integer"),
        ([1, -1, 2], ValueError, "non-negative"),
    ],
)
def test_bad_ids(index, ids, error, match):
    with pytest.raises(error, match=match):
        index.add(np.ones((3, 4), dtype=np.float32), ids=ids)
    assert len(index) == 10


def test_removing_unknown_ids(index):
    with pytest.raises(KeyError, match="not in the index"):
        index.remove([3, 999])
    assert len(index) == 10 and 3 in index  # nothing removed
    assert index.remove(np.array([3, 3])) == 1  # repeated ids in one call count once


def test_zero_vector_under_cosine(index):
    with pytest.raises(ValueError, match="row 1 is all zeros"):
        index.add(np.array([[1, 0, 0, 0], [0, 0, 0, 0]], dtype=np.float32))
    with pytest.raises(ValueError, match="queries: row 0 is all zeros"):
        index.search(np.zeros(4, dtype=np.float32))


def test_set_isa_errors():
    with pytest.raises(ValueError, match="unknown ISA 'avx9'"):
        flatcoat._core.set_active_isa("avx9")


def test_a_failure_late_in_a_large_add_adds_nothing():
    # Encoding runs in chunks; a bad value in the last one must undo the first ones.
    idx = flatcoat.DenseIndex(2, storage="f16")
    idx.add(np.ones((3, 2), dtype=np.float32))
    x = np.ones((70_001, 2), dtype=np.float32)
    x[-1, 0] = 1e6  # beyond float16
    with pytest.raises(ValueError, match="float16 range"):
        idx.add(x)
    assert len(idx) == 3 and 3 not in idx and idx.ids.tolist() == [0, 1, 2]
    assert idx.add(np.zeros((1, 2), dtype=np.float32)).tolist() == [3]
