"""GPU MaxSim (flatcoat.cuda_maxsim) against the CPU MultiVectorIndex.

Tests that need the CUDA extension and a GPU skip with the reason when either
is missing; the loading and error-message tests run everywhere. On grid-valued
data (small integers, exact in every storage and every summation order) GPU
and CPU must agree bit for bit, ties included; int8 agrees bit for bit on any
data (same codes, same scales, integer products); f32/f16 on random data agree
up to float32 rounding. Outputs are poisoned and checked fully overwritten;
every check draws its own random inputs.
"""

import subprocess
import sys

import numpy as np
import pytest

import flatcoat
from flatcoat import cuda, cuda_maxsim
from conftest import gpu

def grid_docs(rng, n_docs, dim, lo=1, hi=40):
    """Documents of lo..hi tokens with values in -3..3 (exact sums everywhere)."""
    return [rng.integers(-3, 4, size=(int(rng.integers(lo, hi + 1)), dim)).astype(np.float32) for _ in range(n_docs)]


def grid_queries(rng, nq, dim, lo=1, hi=40):
    return [rng.integers(-3, 4, size=(int(rng.integers(lo, hi + 1)), dim)).astype(np.float32) for _ in range(nq)]


def random_docs(rng, n_docs, dim, lo=5, hi=60):
    return [rng.standard_normal((int(rng.integers(lo, hi + 1)), dim)).astype(np.float32) for _ in range(n_docs)]


def cpu_and_gpu(dim, storage, docs, ids=None):
    index = flatcoat.MultiVectorIndex(dim, storage=storage)
    index.add(docs, ids=ids)
    return index, cuda_maxsim.CudaMaxSimStore.from_index(index)


def search_poisoned(store, queries, k, **options):
    """store.search into poisoned (n_queries, k) outputs; checks that every element was written."""
    nq = len(queries)
    scores = np.full((nq, k), np.nan, dtype=np.float32)
    ids = np.full((nq, k), -7, dtype=np.int64)
    out = store.search(queries, k, out=(scores, ids), **options)
    assert out[0] is scores and out[1] is ids
    assert not np.isnan(scores).any(), "a score was left unwritten"
    assert not (ids == -7).any(), "an id was left unwritten"
    return scores, ids


def structured_collection(rng, n_docs=400, dim=128, n_queries=40, q_len=32):
    """tests/test_multivector.py's ColBERT-like collection (clustered unit-norm token bags)."""

    def unit(x):
        return x / np.linalg.norm(x, axis=-1, keepdims=True)

    centres = unit(rng.standard_normal((64, dim)))
    docs = []
    for _ in range(n_docs):
        n = int(rng.integers(20, 121))
        topics = rng.choice(64, 3, replace=False)
        docs.append(unit(centres[rng.choice(topics, n)] + 0.5 * unit(rng.standard_normal((n, dim)))).astype(np.float32))
    queries = []
    for d in rng.integers(0, n_docs, n_queries):
        picked = docs[d][rng.integers(0, len(docs[d]), q_len)]
        queries.append(unit(picked + 0.3 * unit(rng.standard_normal((q_len, dim)))).astype(np.float32))
    return docs, queries


# ---------------------------------------------------------------------- everywhere

def test_importing_the_module_never_loads_the_cuda_extension():
    code = "import sys, flatcoat.cuda_maxsim; print('flatcoat._cuda' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"


def test_not_built_message_says_how_to_build(monkeypatch, fresh_extension):
    def missing():
        raise ImportError("No module named 'flatcoat._cuda'")

    monkeypatch.setattr(cuda, "_import_extension", missing)
    index = flatcoat.MultiVectorIndex(4)
    index.add([np.ones((2, 4), np.float32)])
    for call in (
        lambda: cuda_maxsim.CudaMaxSimStore.from_index(index),
        lambda: cuda_maxsim.MaxSimMirror("cuda"),
        lambda: cuda_maxsim.mirror_for("cuda:0"),
    ):
        with pytest.raises(cuda.CudaUnavailableError, match="built without its CUDA extension") as info:
            call()
        assert "FLATCOAT_CUDA=ON" in str(info.value)


def test_mirror_for_cpu_is_none_and_bad_devices_are_named():
    assert cuda_maxsim.mirror_for("cpu") is None
    for bad in ("gpu", "cuda:x", 1):
        with pytest.raises(ValueError, match="device"):
            cuda_maxsim.mirror_for(bad)
    with pytest.raises(ValueError, match="lives on a GPU"):
        cuda_maxsim.MaxSimMirror("cpu")


def test_bad_storage_is_rejected_before_touching_a_gpu():
    with pytest.raises(ValueError, match="storage"):
        cuda_maxsim.CudaMaxSimStore(4, "binary", tokens=np.zeros((1, 4), np.float32), offsets=[0, 1], ids=[0])


# ---------------------------------------------------------------------- GPU: exact on grid data

@gpu
@pytest.mark.parametrize("storage", ["f32", "f16", "int8"])
@pytest.mark.parametrize("dim", [3, 7, 64, 128, 130])
@pytest.mark.parametrize("nq", [1, 5, 40])
def test_grid_data_gives_identical_results_ties_included(storage, dim, nq, rng):
    docs = grid_docs(rng, 300, dim)
    queries = grid_queries(rng, nq, dim)
    ids = rng.permutation(10 * len(docs))[: len(docs)]  # unsorted ids: ties by id need the ranks
    index, store = cpu_and_gpu(dim, storage, docs, ids)
    for k in (1, 10, 100):
        cpu_scores, cpu_ids = index.search(queries, k)
        scores, found = search_poisoned(store, queries, k)
        np.testing.assert_array_equal(found, cpu_ids)
        np.testing.assert_array_equal(scores, cpu_scores)


@gpu
@pytest.mark.parametrize("storage", ["f32", "f16", "int8"])
def test_long_queries_and_big_batches_take_several_passes_and_groups(storage, rng):
    dim = 64
    docs = grid_docs(rng, 200, dim, 50, 300)
    queries = grid_queries(rng, 70, dim, 60, 200)  # > 64 tokens per query: several passes
    index, store = cpu_and_gpu(dim, storage, docs)
    cpu_scores, cpu_ids = index.search(queries, 20)
    scores, found = search_poisoned(store, queries, 20)
    np.testing.assert_array_equal(found, cpu_ids)
    np.testing.assert_array_equal(scores, cpu_scores)


@gpu
@pytest.mark.parametrize("storage", ["f32", "f16", "int8"])
def test_weights_and_rerank_match_the_cpu(storage, rng):
    dim = 32
    docs = grid_docs(rng, 500, dim)
    queries = grid_queries(rng, 6, dim)
    weights = [rng.integers(0, 4, size=len(q)).astype(np.float32) for q in queries]
    index, store = cpu_and_gpu(dim, storage, docs, rng.permutation(5000)[:500])
    ids = index.ids
    candidates = [np.concatenate([rng.choice(ids, 50), [-1, -1], rng.choice(ids, 5)]) for _ in queries]
    candidates[2] = np.array([-1], dtype=np.int64)  # nothing to rerank for this query
    for options in ({"query_weights": weights}, {"candidates": candidates},
                    {"candidates": candidates, "query_weights": weights}):
        cpu_scores, cpu_ids = index.search(queries, 10, **options)
        scores, found = search_poisoned(store, queries, 10, **options)
        np.testing.assert_array_equal(found, cpu_ids)
        np.testing.assert_array_equal(scores, cpu_scores)
    assert (found[2] == -1).all() and np.isneginf(scores[2]).all()


# ---------------------------------------------------------------------- GPU: random data

@gpu
@pytest.mark.parametrize("dim", [96, 128])
def test_int8_equals_the_cpu_bit_for_bit_on_any_data(dim, rng):
    docs = random_docs(rng, 400, dim)
    queries = [rng.standard_normal((32, dim)).astype(np.float32) for _ in range(9)]
    index, store = cpu_and_gpu(dim, "int8", docs)
    cpu_scores, cpu_ids = index.search(queries, 50)
    scores, found = search_poisoned(store, queries, 50)
    np.testing.assert_array_equal(found, cpu_ids)
    np.testing.assert_array_equal(scores, cpu_scores)


@gpu
@pytest.mark.parametrize("storage", ["f32", "f16"])
def test_float_storages_match_the_cpu_up_to_rounding(storage, rng):
    dim = 128
    docs = random_docs(rng, 500, dim)
    queries = [rng.standard_normal((int(rng.integers(8, 40)), dim)).astype(np.float32) for _ in range(12)]
    index, store = cpu_and_gpu(dim, storage, docs)
    k = 20
    cpu_scores, cpu_ids = index.search(queries, k)
    scores, found = search_poisoned(store, queries, k)
    scale = float(np.abs(cpu_scores).max())
    same = found == cpu_ids
    assert same.mean() >= 0.95, same.mean()
    np.testing.assert_allclose(scores, cpu_scores, rtol=1e-5, atol=1e-5 * scale)
    # Every reported score is the document's CPU MaxSim.
    lengths = index.lengths
    tokens = np.concatenate(docs)
    for i, q in enumerate(queries):
        all_scores = flatcoat.maxsim(q, tokens.astype(np.float16) if storage == "f16" else tokens, lengths)
        np.testing.assert_allclose(scores[i], all_scores[found[i]], rtol=1e-5, atol=1e-5 * scale)


@gpu
def test_int8_recall_at_10_against_f32(rng):
    docs, queries = structured_collection(rng)
    _, exact = cpu_and_gpu(128, "f32", docs)
    _, quant = cpu_and_gpu(128, "int8", docs)
    _, ref = exact.search(queries, 10)
    _, got = quant.search(queries, 10)
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(ref, got)])
    assert recall >= 0.99, recall


# ---------------------------------------------------------------------- GPU: edges, device arrays, errors

@gpu
def test_padding_single_queries_and_empty_store(rng):
    dim = 16
    docs = grid_docs(rng, 5, dim)
    index, store = cpu_and_gpu(dim, "f32", docs)
    q = grid_queries(rng, 1, dim)[0]
    scores, ids = store.search(q, 8)  # one (t, dim) query -> (k,) arrays
    assert scores.shape == (8,) and (ids[5:] == -1).all() and np.isneginf(scores[5:]).all()
    cpu_scores, cpu_ids = index.search(q, 8)
    np.testing.assert_array_equal(ids, cpu_ids)
    empty = cuda_maxsim.CudaMaxSimStore(dim, "f32", tokens=np.zeros((0, dim), np.float32),
                                        offsets=np.zeros(1, np.int64), ids=np.zeros(0, np.int64))
    scores, ids = empty.search([q, q], 3)
    assert (ids == -1).all() and np.isneginf(scores).all()


@gpu
def test_device_queries_give_device_results(rng):
    cp = pytest.importorskip("cupy", reason="device arrays need CuPy")
    dim = 64
    docs = grid_docs(rng, 200, dim)
    queries = grid_queries(rng, 4, dim, 32, 32)
    index, store = cpu_and_gpu(dim, "f16", docs)
    cpu_scores, cpu_ids = index.search(queries, 10)
    batch = cp.asarray(np.stack(queries))
    for form in (batch, [cp.asarray(q) for q in queries], (batch.reshape(-1, dim), np.full(4, 32))):
        scores, ids = store.search(form, 10)
        assert isinstance(scores, cp.ndarray) and isinstance(ids, cp.ndarray)
        np.testing.assert_array_equal(cp.asnumpy(ids), cpu_ids)
        np.testing.assert_array_equal(cp.asnumpy(scores), cpu_scores)


@gpu
def test_device_store_from_device_arrays(rng):
    cp = pytest.importorskip("cupy", reason="device arrays need CuPy")
    dim = 32
    docs = grid_docs(rng, 100, dim)
    index, _ = cpu_and_gpu(dim, "f32", docs)
    v = index._views()
    store = cuda_maxsim.CudaMaxSimStore(dim, "f32", tokens=cp.asarray(v["tokens"]), offsets=cp.asarray(v["offsets"]),
                                        ids=cp.asarray(v["ids"]))
    q = grid_queries(rng, 3, dim)
    np.testing.assert_array_equal(store.search(q, 5)[1], index.search(q, 5)[1])


@gpu
def test_mirror_follows_changes_after_invalidate(rng):
    dim = 16
    index = flatcoat.MultiVectorIndex(dim, storage="int8")
    index.add(grid_docs(rng, 50, dim))
    mirror = cuda_maxsim.mirror_for("cuda")
    q = grid_queries(rng, 2, dim)
    np.testing.assert_array_equal(mirror.search(index, q, 5)[1], index.search(q, 5)[1])
    index.remove(index.ids[:10])
    index.add(grid_docs(rng, 20, dim))
    mirror.invalidate()
    np.testing.assert_array_equal(mirror.search(index, q, 5)[1], index.search(q, 5)[1])
    cand = [index.ids[:7], index.ids[-3:]]
    np.testing.assert_array_equal(mirror.search(index, q, 5, candidates=cand)[1], index.search(q, 5, candidates=cand)[1])
    assert cuda_maxsim.mirror_for("cuda:0", mirror) is mirror


@gpu
def test_bad_queries_raise_value_errors(rng):
    dim = 8
    _, store = cpu_and_gpu(dim, "f16", grid_docs(rng, 10, dim))
    q = np.ones((3, dim), np.float32)
    with pytest.raises(ValueError, match="k: at most"):
        store.search(q, cuda.MAX_K + 1)
    with pytest.raises(ValueError, match="dimension"):
        store.search(np.ones((3, dim + 1), np.float32), 3)
    with pytest.raises(ValueError, match="not in the index"):
        store.search(q, 3, candidates=np.array([12345]))
    cp = pytest.importorskip("cupy", reason="device queries need CuPy")
    bad = cp.ones((3, dim), cp.float32)
    bad[1, 2] = cp.nan
    with pytest.raises(ValueError, match="token row 1"):
        store.search(bad, 3)
    _, again = store.search(cp.ones((3, dim), cp.float32), 3)  # the store still works
    assert int(again[0]) >= 0
