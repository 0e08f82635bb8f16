"""DenseIndex against float64 numpy references, for every storage and metric."""

import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

import flatcoat
from conftest import assert_exact_topk, clustered, reference_scores, reference_topk

METRICS = ["ip", "cosine", "l2"]
DIMS = [1, 3, 7, 97, 384, 768]


def random_data(n, dim, seed):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, dim)).astype(np.float32)


def bfloat16_reference(x):
    """float32 ``x`` rounded to bfloat16 (8 significant bits, nearest, ties to even), in float64 arithmetic."""
    x = np.asarray(x, dtype=np.float64)
    mantissa, exponent = np.frexp(x)  # x = mantissa * 2**exponent, 0.5 <= |mantissa| < 1
    return np.ldexp(np.round(mantissa * 256.0), exponent - 8).astype(np.float32)  # np.round: ties to even


def stored_values(x, storage, metric):
    """The vectors as the index stores them (f16 rounds), so 'exact' means exact over what is stored."""
    x = np.asarray(x, dtype=np.float32)
    if metric == "cosine":
        x = (x / np.linalg.norm(x.astype(np.float64), axis=1, keepdims=True)).astype(np.float32)
    if storage == "f16":
        x = x.astype(np.float16).astype(np.float32)
    if storage == "bf16":
        x = bfloat16_reference(x)
    return x


@pytest.mark.parametrize("storage", ["f32", "f16", "bf16"])
@pytest.mark.parametrize("metric", METRICS)
@pytest.mark.parametrize("dim", DIMS)
@pytest.mark.parametrize("nq", [1, 64])
def test_exact_storages_return_the_exact_topk(storage, metric, dim, nq):
    n, k = 700, 10
    x = random_data(n, dim, seed=dim)
    q = random_data(nq, dim, seed=dim + 1)
    index = flatcoat.DenseIndex(dim, metric=metric, storage=storage)
    ids = index.add(x)
    scores, found = index.search(q, k=k)
    assert scores.shape == (nq, k) and found.shape == (nq, k)
    assert scores.dtype == np.float32 and found.dtype == np.int64
    # Cosine: the index normalises, then stores (f16 rounds after normalising).
    qn = stored_values(q, "f32", metric)
    ref = reference_scores(stored_values(x, storage, metric), qn, "ip" if metric == "cosine" else metric)
    # Ties within float32 rounding may swap; anything else is a bug.
    tol = 1e-4 * max(1.0, float(np.abs(ref).max()))
    assert_exact_topk(found, ref, ids, k, tol)
    # Returned scores are the reference scores of the returned ids.
    got = np.take_along_axis(ref, found, 1)
    expected = -got if metric == "l2" else got
    np.testing.assert_allclose(scores, expected, rtol=1e-4, atol=tol)
    # Best first.
    order = -scores if metric != "l2" else scores
    assert np.all(np.diff(order, axis=1) >= 0)


@pytest.mark.parametrize("metric", METRICS)
def test_int8_recall_is_at_least_faiss_sq8(metric):
    faiss = pytest.importorskip("faiss")
    # Clustered unit vectors (100 clusters, 384 dims): neighbours 10 and 11 often
    # differ by about 0.001 in score, so 8 bits cannot keep every top-10 exactly.
    n, dim, k = 20000, 384, 10
    x = clustered(n, dim, seed=1)
    q = clustered(1000, dim, seed=2)
    ref = reference_scores(x, q, metric)
    _, truth = reference_topk(ref, np.arange(n), k)

    index = flatcoat.DenseIndex(dim, metric=metric, storage="int8", keep_float=True)
    index.add(x)
    _, found = index.search(q, k=k)
    recall = np.mean([len(set(a) & set(b)) / k for a, b in zip(found, truth)])

    faiss_metric = faiss.METRIC_L2 if metric == "l2" else faiss.METRIC_INNER_PRODUCT
    sq = faiss.IndexScalarQuantizer(dim, faiss.ScalarQuantizer.QT_8bit, faiss_metric)
    xf = x.copy()
    qf = q.copy()
    if metric == "cosine":
        faiss.normalize_L2(xf)
        faiss.normalize_L2(qf)
    sq.train(xf)
    sq.add(xf)
    _, faiss_found = sq.search(qf, k)
    faiss_recall = np.mean([len(set(a) & set(b)) / k for a, b in zip(faiss_found, truth)])
    # Per-vector ranges lose less than SQ8's per-dimension ranges on this data
    # (bench/int8_scale.py: 0.975 vs 0.966 at 1M vectors).
    print(f"int8 recall@10 {recall:.4f}, FAISS SQ8 {faiss_recall:.4f}")
    assert recall >= faiss_recall, (recall, faiss_recall)
    assert recall >= 0.96

    _, reranked = index.search(q, k=k, rerank=50)
    recall_reranked = np.mean([len(set(a) & set(b)) / k for a, b in zip(reranked, truth)])
    assert recall_reranked >= 0.99, recall_reranked


def numpy_binary_rerank(x, q, metric, k, depth):
    """Sign-bit Hamming scan, the `depth` best (ties by smaller id), exact float re-ranking."""
    xs, qs = stored_values(x, "f32", metric), stored_values(q, "f32", metric)
    xb, qb = xs > 0, qs > 0
    hamming = (qb[:, None, :] != xb[None, :, :]).sum(-1)
    ids = np.arange(len(x))
    first_stage = np.lexsort((np.broadcast_to(ids, hamming.shape), hamming), axis=1)[:, :depth]
    exact = reference_scores(x, q, metric)
    out = []
    for row, cand in enumerate(first_stage):
        s = exact[row, cand]
        order = np.lexsort((cand, -s))[:k]
        out.append(cand[order])
    return np.array(out)


@pytest.mark.parametrize("metric", METRICS)
@pytest.mark.parametrize("dim", [7, 97, 384])
def test_binary_rerank_matches_numpy_sign_scan(metric, dim):
    n, k, depth = 3000, 10, 100
    x = clustered(n, dim, n_clusters=30, seed=3)
    q = clustered(32, dim, n_clusters=30, seed=4)
    index = flatcoat.DenseIndex(dim, metric=metric, storage="binary", keep_float=True)
    index.add(x)
    _, found = index.search(q, k=k, rerank=depth)
    expected = numpy_binary_rerank(x, q, metric, k, depth)
    agreement = np.mean([len(set(a) & set(b)) / k for a, b in zip(found, expected)])
    assert agreement >= 0.99, agreement  # differences only from float32 vs float64 near-ties


def test_binary_scores_without_rerank_are_hamming_based():
    dim = 70
    x = random_data(50, dim, 5)
    q = random_data(3, dim, 6)
    for metric in ["ip", "l2"]:
        index = flatcoat.DenseIndex(dim, metric=metric, storage="binary")
        index.add(x)
        scores, found = index.search(q, k=50)
        hamming = ((q[:, None, :] > 0) != (x[None, :, :] > 0)).sum(-1)
        got = np.take_along_axis(hamming, found, 1)
        expected = dim - 2 * got if metric == "ip" else got
        np.testing.assert_array_equal(scores, expected.astype(np.float32))
        # sorted by Hamming distance, ties by smaller id
        keys = np.stack([got, found], -1)
        for row in keys:
            assert [tuple(r) for r in row] == sorted(tuple(r) for r in row)


@pytest.mark.parametrize("storage", ["f32", "f16", "bf16", "int8", "binary"])
@pytest.mark.parametrize("dim", [97, 128])  # 128: whole 64-byte steps, which the AMX tiles take
def test_every_isa_agrees_with_scalar(storage, dim, restore_isa):
    k = 10
    x = clustered(2000, dim, seed=7)
    q = clustered(33, dim, seed=8)  # 33: full 4-query blocks plus a tail, and >= the widening batch
    index = flatcoat.DenseIndex(dim, metric="l2", storage=storage, keep_float=True)
    index.add(x)
    flatcoat._core.set_active_isa("scalar")
    base_scores, base_ids = index.search(q, k=k)
    base_single = index.search(q[0], k=k)
    for isa in flatcoat.info()["compiled_isas"]:
        if not flatcoat._core.cpu_supports(isa):
            continue
        flatcoat._core.set_active_isa(isa)
        scores, ids = index.search(q, k=k)
        np.testing.assert_allclose(scores, base_scores, rtol=1e-5, atol=1e-5)
        # ids may differ only where two scores tie within rounding
        differ = ids != base_ids
        if differ.any():
            gaps = np.abs(np.diff(base_scores, axis=1)).min(axis=1)
            assert np.all(gaps[differ.any(axis=1)] < 1e-5), isa
        single = index.search(q[0], k=k)
        np.testing.assert_allclose(single[0], base_single[0], rtol=1e-5, atol=1e-5)


def test_scores_do_not_depend_on_batch_or_threads(restore_threads):
    dim = 384
    x = clustered(5000, dim, seed=9)
    q = clustered(70, dim, seed=10)
    for storage in ["f32", "f16", "bf16", "int8"]:
        index = flatcoat.DenseIndex(dim, storage=storage)
        index.add(x)
        flatcoat.set_num_threads(2)
        batch = index.search(q, k=20)
        flatcoat.set_num_threads(1)
        single = [index.search(row, k=20) for row in q]
        np.testing.assert_array_equal(batch[1], np.concatenate([s[1] for s in single]))
        np.testing.assert_array_equal(batch[0], np.concatenate([s[0] for s in single]))


def test_ties_are_broken_by_smaller_id():
    x = np.ones((10, 4), dtype=np.float32)
    index = flatcoat.DenseIndex(4)
    index.add(x, ids=[50, 3, 41, 7, 9, 100, 2, 8, 60, 1])
    _, ids = index.search(np.ones(4, dtype=np.float32), k=4)
    assert ids.tolist() == [[1, 2, 3, 7]]


@pytest.mark.parametrize("metric", METRICS)
def test_results_never_have_more_columns_than_the_index(metric):
    """(q, min(k, len(index))): an empty index gives (q, 0), a small one all it has, best first."""
    index = flatcoat.DenseIndex(3, metric=metric)
    q = np.ones((2, 3), dtype=np.float32)
    scores, ids = index.search(q, k=4)  # empty index
    assert scores.shape == ids.shape == (2, 0) and scores.dtype == np.float32 and ids.dtype == np.int64
    index.add(np.eye(3, dtype=np.float32) * np.array([[1], [2], [3]], dtype=np.float32))
    scores, ids = index.search(q, k=5)
    assert scores.shape == ids.shape == (2, 3)
    # ip: the longest vector first; l2 from (1, 1, 1): the shortest; cosine: a tie, smaller id first
    assert ids.tolist() == ([[2, 1, 0]] * 2 if metric == "ip" else [[0, 1, 2]] * 2)
    assert np.isfinite(scores).all()
    one = index.search(q[0], k=2)  # one (dim,) query is q = 1
    assert one[0].shape == one[1].shape == (1, 2)


def test_add_remove_and_ids():
    dim = 8
    rng = np.random.default_rng(11)
    x = rng.standard_normal((100, dim)).astype(np.float32)
    index = flatcoat.DenseIndex(dim, metric="l2")
    assert index.add(x[:50]).tolist() == list(range(50))
    assert index.add(x[50:], ids=np.arange(1000, 1050)).tolist() == list(range(1000, 1050))
    assert len(index) == 100
    assert index.add(x[:1]).tolist() == [1050]  # default ids continue after the largest
    assert index.remove([0, 1000, 1050]) == 3
    assert len(index) == 98 and 0 not in index and 1 in index
    # every remaining vector finds itself first
    remaining = index.ids
    expected = {i: x[i] if i < 50 else x[i - 1000 + 50] for i in remaining.tolist()}
    _, found = index.search(np.stack([expected[i] for i in remaining.tolist()]), k=1)
    assert found[:, 0].tolist() == remaining.tolist()
    with pytest.raises(KeyError, match="not in the index"):
        index.remove([0])
    assert len(index) == 98


def test_concurrent_searches_equal_serial_results():
    dim = 64
    x = clustered(20000, dim, seed=12)
    q = clustered(64, dim, seed=13)
    index = flatcoat.DenseIndex(dim, storage="int8", keep_float=True)
    index.add(x)
    serial = [index.search(q[i : i + 8], k=10, rerank=30) for i in range(0, 64, 8)]
    with ThreadPoolExecutor(8) as pool:
        for _ in range(3):
            parallel = list(pool.map(lambda i: index.search(q[i : i + 8], k=10, rerank=30), range(0, 64, 8)))
            for a, b in zip(serial, parallel):
                np.testing.assert_array_equal(a[0], b[0])
                np.testing.assert_array_equal(a[1], b[1])


def test_search_during_add_and_remove_sees_a_consistent_index():
    dim = 16
    base = clustered(4000, dim, seed=14)
    index = flatcoat.DenseIndex(dim)
    index.add(base)
    extra = clustered(2000, dim, seed=15)
    stop = threading.Event()
    errors = []

    def writer():
        next_id = 10_000
        while not stop.is_set():
            ids = index.add(extra[:200], ids=np.arange(next_id, next_id + 200))
            index.remove(ids)
            next_id += 200

    def reader():
        try:
            for _ in range(200):
                scores, ids = index.search(base[:4], k=1)
                # each base vector is its own best match whatever the writer is doing
                assert ids[:, 0].tolist() == [0, 1, 2, 3]
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    w = threading.Thread(target=writer)
    w.start()
    readers = [threading.Thread(target=reader) for _ in range(3)]
    for r in readers:
        r.start()
    for r in readers:
        r.join()
    stop.set()
    w.join()
    assert not errors, errors
    assert len(index) == 4000


def test_large_k_and_k_equal_to_len():
    x = random_data(300, 5, 16)
    index = flatcoat.DenseIndex(5)
    index.add(x)
    scores, ids = index.search(x[:2], k=300)
    assert sorted(ids[0].tolist()) == list(range(300))
    ref = reference_scores(x, x[:2], "ip")
    np.testing.assert_allclose(np.sort(scores, axis=1), np.sort(ref, axis=1), rtol=1e-5, atol=1e-5)


def test_info_and_threads(restore_threads):
    info = flatcoat.info()
    assert info["version"] == flatcoat.__version__
    assert info["isa"] in info["compiled_isas"] and info["detected_isa"] in info["compiled_isas"]
    assert info["cuda_compiled"] in (True, False)
    flatcoat.set_num_threads(1)
    assert flatcoat.get_num_threads() == 1 and flatcoat.info()["threads"] == 1
    with pytest.raises(ValueError):
        flatcoat.set_num_threads(-1)


def test_flatcoat_isa_environment_variable_forces_a_level():
    import os
    import subprocess
    import sys

    env = dict(os.environ, FLATCOAT_ISA="scalar", PYTHONPATH=os.pathsep.join(sys.path))
    out = subprocess.run([sys.executable, "-c", "import flatcoat; print(flatcoat.info()['isa'])"],
                         capture_output=True, text=True, env=env, check=True)
    assert out.stdout.strip() == "scalar"
    env["FLATCOAT_ISA"] = "avx9"
    bad = subprocess.run([sys.executable, "-c", "import flatcoat"], capture_output=True, text=True, env=env)
    assert bad.returncode != 0 and "unknown ISA 'avx9'" in bad.stderr


def test_bfloat16_codes_round_to_nearest_even():
    from flatcoat.dense import from_bfloat16
    rng = np.random.default_rng(5)
    x = (rng.standard_normal(100_000) * np.exp2(rng.integers(-60, 60, 100_000))).astype(np.float32)
    # exact ties: 1 + 2**-8 sits halfway between 1 and 1 + 2**-7, so it goes to the even 1
    ties = np.array([1 + 2**-8, 1 + 3 * 2**-8, -(1 + 2**-8), 0.0, -0.0], dtype=np.float32)
    x = np.concatenate([x, ties]).reshape(-1, 5)
    index = flatcoat.DenseIndex(5, storage="bf16")
    index.add(x)
    codes = index.arrays()["codes"]
    assert codes.dtype == np.uint16
    np.testing.assert_array_equal(from_bfloat16(codes), bfloat16_reference(x))
    np.testing.assert_array_equal(from_bfloat16(codes[-1]), [1.0, 1 + 2**-6, -1.0, 0.0, -0.0])


def test_bfloat16_storage_is_half_the_bytes_and_refuses_overflow():
    dim = 64
    x = random_data(100, dim, seed=3)
    index = flatcoat.DenseIndex(dim, storage="bf16")
    index.add(x)
    assert index.nbytes < 100 * dim * 2 + 100 * 8 + 4096
    got, _ = index.get([5])
    np.testing.assert_array_equal(got[0], bfloat16_reference(x[5]))
    with pytest.raises(ValueError, match="bfloat16 range"):
        index.add(np.full((1, dim), 3.4e38, dtype=np.float32))
    assert len(index) == 100
