"""Every kind of bad input gets a clear ValueError/TypeError that names the argument."""

import time

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
        (dict(dim=2.5), TypeError, "dim"),
        (dict(dim=True), TypeError, "dim"),
        (dict(dim="4"), TypeError, "dim"),
        (dict(dim=4, metric="dot"), ValueError, "metric"),
        (dict(dim=4, metric=None), TypeError, "metric"),
        (dict(dim=4, storage="int4"), ValueError, "storage"),
        (dict(dim=4, keep_float="no"), TypeError, "keep_float"),
        (dict(dim=4, keep_float=1), TypeError, "keep_float"),
        (dict(dim=4, device="gpu"), ValueError, "device"),
        (dict(dim=4, device=0), TypeError, "device"),
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


def test_k_larger_than_the_index_and_empty_index(index):
    scores, ids = index.search(np.ones(4, dtype=np.float32), k=15)
    assert scores.shape == ids.shape == (1, 10) and (ids >= 0).all()
    empty = flatcoat.DenseIndex(4)
    scores, ids = empty.search(np.ones((2, 4), dtype=np.float32), k=3)
    assert scores.shape == ids.shape == (2, 0)


@pytest.mark.parametrize("k", [10**8, 2**62, 2**63 - 1, np.int64(2**62)])
def test_a_huge_k_is_bounded_by_the_index_size(index, k):
    """Work and memory follow the index (10 vectors), not k: no 1 GB output, no numpy "array is too big"."""
    start = time.perf_counter()
    scores, ids = index.search(np.ones((3, 4), dtype=np.float32), k=k)
    assert time.perf_counter() - start < 1.0
    assert scores.shape == ids.shape == (3, 10)
    kept = flatcoat.DenseIndex(4, storage="int8", keep_float=True)
    kept.add(np.eye(4, dtype=np.float32))
    scores, ids = kept.search(np.ones(4, dtype=np.float32), k=k, rerank=k)
    assert scores.shape == (1, 4)


def test_k_beyond_int64_names_k(index):
    with pytest.raises(ValueError, match="^k: must be at most"):
        index.search(np.ones(4, dtype=np.float32), k=2**63)


def test_rerank_arguments(index):
    q = np.ones(4, dtype=np.float32)
    with pytest.raises(ValueError, match="keep_float=True"):
        index.search(q, k=2, rerank=10)
    kept = flatcoat.DenseIndex(4, storage="binary", keep_float=True)
    kept.add(np.eye(4, dtype=np.float32))
    with pytest.raises(ValueError, match="rerank: must be at least k"):
        kept.search(q, k=3, rerank=2)
    with pytest.raises(TypeError, match="^rerank: expected an integer"):
        kept.search(q, k=3, rerank=4.5)
    with pytest.raises(ValueError, match="^rerank: must be at least 1"):  # names rerank, not k
        kept.search(q, k=5, rerank=0)
    with pytest.raises(TypeError, match="positional"):
        kept.search(q, 3, 4)  # rerank is keyword-only
    _, ids = kept.search(q, k=2, rerank=100)  # deeper than the index: allowed, bounded by it
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


@pytest.mark.parametrize("other", [5.7, 5.0, "a", "5", None, True, np.bool_(True), [5], (5,), np.array(5), 2**70, -1])
def test_membership_of_anything_but_a_present_integer_id_is_false(other):
    idx = flatcoat.DenseIndex(2)
    idx.add(np.ones((6, 2), dtype=np.float32))  # ids 0..5, so 5.7 would truncate to a present id
    assert (other in idx) is False


def test_membership_of_integers():
    idx = flatcoat.DenseIndex(2)
    idx.add(np.ones((2, 2), dtype=np.float32), ids=[5, 2**63 - 1])
    assert 5 in idx and np.int64(5) in idx and np.uint64(2**63 - 1) in idx and 2**63 - 1 in idx
    assert 4 not in idx and np.int32(4) not in idx


def test_automatic_ids_after_the_largest_id_run_out_with_a_clear_error():
    idx = flatcoat.DenseIndex(2)
    x = np.ones((1, 2), dtype=np.float32)
    idx.add(x, ids=[2**63 - 2])
    assert idx.add(x).tolist() == [2**63 - 1]
    with pytest.raises(ValueError, match="^ids: no automatic ids left.*pass ids= explicitly"):
        idx.add(x)
    assert len(idx) == 2 and idx.add(x, ids=[7]).tolist() == [7]  # explicit ids still work
    with pytest.raises(ValueError, match="^ids: ids must fit in int64"):
        idx.add(x, ids=[2**64])
    with pytest.raises(ValueError, match="^ids: ids must fit in int64"):
        idx.remove(2**70)


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


def test_nan_is_found_in_a_later_chunk_of_rows(monkeypatch):
    """The finite check walks row chunks (bounded temporaries) and still names the first bad row."""
    from flatcoat import _validate

    monkeypatch.setattr(_validate, "_FINITE_CHUNK_BYTES", 64)  # 8 rows of 8 dims per chunk
    x = np.ones((100, 8), dtype=np.float32)
    x[77, 3], x[90, 0] = np.nan, np.inf
    with pytest.raises(ValueError, match="vectors: row 77 contains NaN or inf"):
        flatcoat.DenseIndex(8).add(x)
