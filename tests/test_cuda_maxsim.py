"""GPU MaxSim (flatcoat.cuda_maxsim) against the CPU MultiVectorIndex.

Tests that need the CUDA extension and a GPU skip with the reason when either
is missing; the loading and error-message tests, and the Python layer on a
fake GPU (conftest.FakeCudaExtension), run everywhere. On grid-valued
data (small integers, exact in every storage and every summation order) GPU
and CPU must agree bit for bit, ties included; int8 agrees bit for bit on any
data (same codes, same scales, integer products); f32/f16 on random data agree
up to float32 rounding. Outputs are poisoned and checked fully overwritten;
every check draws its own random inputs.
"""

import inspect
import subprocess
import sys

import numpy as np
import pytest

import flatcoat
from flatcoat import _device, cuda, cuda_maxsim
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
    """store.search of a list of queries into poisoned (n_queries, min(k, n_docs)) outputs; checks that
    every element was written."""
    shape = (len(queries), min(k, len(store)))
    scores = np.full(shape, np.nan, dtype=np.float32)
    ids = np.full(shape, -7, dtype=np.int64)
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


def test_not_built_message_says_how_to_build(no_extension):
    index = flatcoat.MultiVectorIndex(4)
    index.add([np.ones((2, 4), np.float32)])
    for call in (
        lambda: cuda_maxsim.CudaMaxSimStore.from_index(index),
        lambda: cuda_maxsim.MultiVectorMirror("cuda"),
        lambda: _device.mirror_for("multivector", "cuda:0"),
        lambda: index.to("cuda"),
    ):
        with pytest.raises(cuda.CudaUnavailableError, match="built without its CUDA extension") as info:
            call()
        assert "FLATCOAT_CUDA=ON" in str(info.value)
    assert index.device == "cpu"


def test_mirror_for_cpu_is_none_and_bad_devices_are_named():
    assert _device.mirror_for("multivector", "cpu") is None
    for bad in ("gpu", "cuda:x"):
        with pytest.raises(ValueError, match="device"):
            _device.mirror_for("multivector", bad)
    with pytest.raises(TypeError, match="device"):
        _device.mirror_for("multivector", 1)
    with pytest.raises(ValueError, match="lives on a GPU"):
        cuda_maxsim.MultiVectorMirror("cpu")


def test_bad_arguments_are_rejected_before_touching_a_gpu(no_extension):
    tokens = np.zeros((1, 4), np.float32)
    for call, error, match in (
        (lambda: cuda_maxsim.CudaMaxSimStore(4, storage="binary", tokens=tokens, offsets=[0, 1], ids=[0]),
         ValueError, "storage"),
        (lambda: cuda_maxsim.CudaMaxSimStore(0, tokens=tokens, offsets=[0, 1], ids=[0]), ValueError, "dim"),
        (lambda: cuda_maxsim.CudaMaxSimStore(4, tokens=tokens, offsets=[0, 1], ids=[0], device="cpu"), ValueError,
         "lives on a GPU"),
    ):
        with pytest.raises(error, match=match):
            call()


def test_signatures_follow_the_conventions():
    params = list(inspect.signature(cuda_maxsim.CudaMaxSimStore).parameters.values())
    assert params[0].name == "dim" and all(p.kind is p.KEYWORD_ONLY for p in params[1:])
    search = inspect.signature(cuda_maxsim.MultiVectorMirror.search).parameters
    assert not any(p.kind is p.VAR_KEYWORD for p in search.values())
    assert search["subset"].kind is search["query_weights"].kind is inspect.Parameter.KEYWORD_ONLY


# ---------------------------------------------------------------------- everywhere: the Python layer on a fake GPU

@pytest.mark.parametrize("storage", ["f32", "f16", "int8"])
def test_store_from_index_equals_the_cpu_on_a_fake_gpu(fake_gpu, storage, rng):
    dim = 16
    docs = grid_docs(rng, 60, dim)
    index, store = cpu_and_gpu(dim, storage, docs, rng.permutation(600)[:60])  # unsorted ids: ranks break ties
    assert len(store) == 60 and store.num_tokens == index.num_tokens and store.storage == storage
    queries = grid_queries(rng, 4, dim)
    weights = [rng.integers(0, 3, size=len(q)).astype(np.float32) for q in queries]
    for k in (1, 10, 60, 10**9):
        for options in ({}, {"query_weights": weights}):
            expected = index.search(queries, k, **options)
            got = store.search(queries, k, **options)
            assert got[1].shape == (4, min(k, 60))
            np.testing.assert_array_equal(got[1], expected[1])
            np.testing.assert_array_equal(got[0], expected[0])
    one = store.search(queries[0], 5)  # one (t, dim) query is q = 1
    assert one[0].shape == one[1].shape == (1, 5)
    np.testing.assert_array_equal(one[1], index.search(queries[0], 5)[1])
    with pytest.raises(ValueError, match="^k"):
        store.search(queries, 0)
    with pytest.raises(TypeError, match="^k"):
        store.search(queries, 2.0)


def test_store_uploads_in_bounded_chunks_and_an_empty_store_searches(fake_gpu, monkeypatch, rng):
    monkeypatch.setattr(cuda, "_UPLOAD_CHUNK_BYTES", 100 * 8 * 4)
    dim = 8
    docs = grid_docs(rng, 80, dim, 10, 30)
    index, store = cpu_and_gpu(dim, "f32", docs)
    token_uploads = [u for u in fake_gpu.uploads if u[1] == "tokens"]
    assert len(token_uploads) > 1 and all(rows <= 100 for *_, rows in token_uploads)
    q = grid_queries(rng, 2, dim)
    np.testing.assert_array_equal(store.search(q, 7)[1], index.search(q, 7)[1])
    empty = cuda_maxsim.CudaMaxSimStore(dim, tokens=np.zeros((0, dim), np.float32), offsets=np.zeros(1, np.int64),
                                        ids=np.zeros(0, np.int64))
    scores, ids = empty.search(q, 3)
    assert scores.shape == ids.shape == (2, 0)


def test_multivector_index_on_a_fake_gpu_follows_changes(fake_gpu, rng, tmp_path):
    dim = 12
    index = flatcoat.MultiVectorIndex(dim, storage="int8", device="cuda")
    cpu = flatcoat.MultiVectorIndex(dim, storage="int8")
    assert index.device == "cuda:0"
    docs = grid_docs(rng, 50, dim)
    for target in (index, cpu):
        target.add(docs)
    q = grid_queries(rng, 3, dim)

    def same():
        ids = cpu.ids
        subset = [np.concatenate([ids[:7], [-1, -1]]), ids[-3:], np.array([-1], np.int64)]
        weights = [np.full(len(x), 0.5, np.float32) for x in q]
        for k, options in ((5, {}), (10**6, {}), (5, {"subset": subset}), (5, {"subset": subset, "query_weights": weights})):
            expected, got = cpu.search(q, k, **options), index.search(q, k, **options)
            np.testing.assert_array_equal(got[1], expected[1])
            np.testing.assert_array_equal(got[0], expected[0])
        restricted = index.search(q, 5, subset=subset)
        assert (restricted[1][1, 3:] == -1).all() and np.isneginf(restricted[0][2]).all()  # padded subset rows
        one = index.search(q[0], 4)
        assert one[1].shape == (1, 4)
        with pytest.raises(KeyError, match="subset"):
            index.search(q, 3, subset=[[10**6], [], []])

    same()
    searches = fake_gpu.searches
    removed, more = cpu.ids[:10], grid_docs(rng, 20, dim)
    for target in (index, cpu):
        target.remove(removed)
        target.add(more)
    same()  # the device copy follows the changes
    assert fake_gpu.searches > searches
    index.save(tmp_path / "mv")
    loaded = flatcoat.load(tmp_path / "mv", device="cuda")
    assert loaded.device == "cuda:0"
    np.testing.assert_array_equal(loaded.search(q, 3)[1], cpu.search(q, 3)[1])


def test_mirror_reads_only_its_source(fake_gpu, rng):
    dim = 8
    index = flatcoat.MultiVectorIndex(dim, storage="f16")
    index.add(grid_docs(rng, 30, dim), ids=np.arange(30) * 3)
    arrays = index.arrays()
    calls = []

    def views():
        calls.append(1)
        return arrays

    source = _device.IndexSource("multivector", dim, None, "f16", views)
    mirror = _device.mirror_for("multivector", "cuda")
    assert isinstance(mirror, cuda_maxsim.MultiVectorMirror) and mirror.device == "cuda:0"
    assert _device.mirror_for("multivector", "cuda:0", mirror) is mirror
    q = grid_queries(rng, 2, dim)
    np.testing.assert_array_equal(mirror.search(source, q, 4)[1], index.search(q, 4)[1])
    positions = (np.array([5, 1, 1, 0], np.int64), np.array([0, 3, 4], np.int64))  # resolved by an index
    restricted = mirror.search(source, q, 4, subset=positions)
    assert sorted(restricted[1][0, :2].tolist()) == [3, 15] and restricted[1][1, 0] == 0
    assert (restricted[1][:, 2:] == -1).all()
    assert mirror.search(source, q, 0)[1].shape == (2, 0)
    assert len(calls) == 1
    mirror.invalidate()
    mirror.search(source, q, 1)
    assert len(calls) == 2


def test_the_binding_checks_query_arguments_before_any_cuda_call(built_extension):
    with pytest.raises(ValueError, match="storage"):
        built_extension.MaxSimStore(0, "int4", 8, 1, 1, False)
    with pytest.raises(ValueError, match="dim: must be positive"):
        built_extension.MaxSimStore(0, "f32", 0, 1, 1, False)

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
def test_weights_and_subsets_match_the_cpu(storage, rng):
    dim = 32
    docs = grid_docs(rng, 500, dim)
    queries = grid_queries(rng, 6, dim)
    weights = [rng.integers(0, 4, size=len(q)).astype(np.float32) for q in queries]
    ids = rng.permutation(5000)[:500]
    index, store = cpu_and_gpu(dim, storage, docs, ids)
    on_gpu = flatcoat.MultiVectorIndex(dim, storage=storage, device="cuda")
    on_gpu.add(docs, ids=ids)
    scores, found = search_poisoned(store, queries, 10, query_weights=weights)
    cpu_scores, cpu_ids = index.search(queries, 10, query_weights=weights)
    np.testing.assert_array_equal(found, cpu_ids)
    np.testing.assert_array_equal(scores, cpu_scores)
    subset = [np.concatenate([rng.choice(ids, 50), [-1, -1], rng.choice(ids, 5)]) for _ in queries]
    subset[2] = np.array([-1], dtype=np.int64)  # nothing to score for this query
    for options in ({"subset": subset}, {"subset": subset, "query_weights": weights}):
        cpu_scores, cpu_ids = index.search(queries, 10, **options)
        scores, found = on_gpu.search(queries, 10, **options)
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
def test_single_queries_few_documents_and_empty_store(rng):
    dim = 16
    docs = grid_docs(rng, 5, dim)
    index, store = cpu_and_gpu(dim, "f32", docs)
    q = grid_queries(rng, 1, dim)[0]
    scores, ids = store.search(q, 8)  # one (t, dim) query: q = 1, and k' = min(k, n_docs)
    assert scores.shape == ids.shape == (1, 5) and (ids >= 0).all() and np.isfinite(scores).all()
    cpu_scores, cpu_ids = index.search(q, 8)
    np.testing.assert_array_equal(ids, cpu_ids)
    empty = cuda_maxsim.CudaMaxSimStore(dim, storage="f32", tokens=np.zeros((0, dim), np.float32),
                                        offsets=np.zeros(1, np.int64), ids=np.zeros(0, np.int64))
    scores, ids = empty.search([q, q], 3)
    assert scores.shape == ids.shape == (2, 0)


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
    weights = rng.integers(0, 3, size=(4, 32)).astype(np.float32)
    cpu_scores, cpu_ids = index.search(queries, 10, query_weights=weights)
    for w in (cp.asarray(weights), [cp.asarray(x) for x in weights], weights, cp.asarray(weights).reshape(-1)):
        scores, ids = store.search(batch, 10, query_weights=w)
        np.testing.assert_array_equal(cp.asnumpy(ids), cpu_ids)
        np.testing.assert_array_equal(cp.asnumpy(scores), cpu_scores)


@gpu
def test_device_store_from_device_arrays(rng):
    cp = pytest.importorskip("cupy", reason="device arrays need CuPy")
    dim = 32
    docs = grid_docs(rng, 100, dim)
    index, _ = cpu_and_gpu(dim, "f32", docs)
    v = index.arrays()
    store = cuda_maxsim.CudaMaxSimStore(dim, storage="f32", tokens=cp.asarray(v["tokens"]), offsets=cp.asarray(v["offsets"]),
                                        ids=cp.asarray(v["ids"]))
    q = grid_queries(rng, 3, dim)
    np.testing.assert_array_equal(store.search(q, 5)[1], index.search(q, 5)[1])


@gpu
def test_index_on_the_device_follows_changes(rng):
    dim = 16
    index = flatcoat.MultiVectorIndex(dim, storage="int8", device="cuda")
    cpu = flatcoat.MultiVectorIndex(dim, storage="int8")
    docs = grid_docs(rng, 50, dim)
    for target in (index, cpu):
        target.add(docs)
    q = grid_queries(rng, 2, dim)
    np.testing.assert_array_equal(index.search(q, 5)[1], cpu.search(q, 5)[1])
    removed, more = cpu.ids[:10], grid_docs(rng, 20, dim)
    for target in (index, cpu):
        target.remove(removed)
        target.add(more)
    np.testing.assert_array_equal(index.search(q, 5)[1], cpu.search(q, 5)[1])
    subset = [cpu.ids[:7], cpu.ids[-3:]]
    np.testing.assert_array_equal(index.search(q, 5, subset=subset)[1], cpu.search(q, 5, subset=subset)[1])
    assert index.search(q[0], 10**6)[1].shape == (1, len(cpu))  # one query, k' = min(k, n), on the GPU too


@gpu
def test_bad_queries_raise_value_errors(rng):
    dim = 8
    docs = grid_docs(rng, 5000, dim, 1, 3)
    index, store = cpu_and_gpu(dim, "f16", docs)
    q = np.ones((3, dim), np.float32)
    with pytest.raises(ValueError, match="^k: at most"):
        store.search(q, cuda.MAX_K + 1)
    with pytest.raises(ValueError, match="dimension"):
        store.search(np.ones((3, dim + 1), np.float32), 3)
    with pytest.raises(KeyError, match="subset"):
        index.to("cuda").search(q, 3, subset=np.array([123456]))
    cp = pytest.importorskip("cupy", reason="device queries need CuPy")
    bad = cp.ones((3, dim), cp.float32)
    bad[1, 2] = cp.nan
    with pytest.raises(ValueError, match="token row 1"):
        store.search(bad, 3)
    _, again = store.search(cp.ones((3, dim), cp.float32), 3)  # the store still works
    assert again.shape == (1, 3) and int(again[0, 0]) >= 0
    with pytest.raises(TypeError, match="out_ids: expected dtype int64"):
        store.search(cp.ones((3, dim), cp.float32), 3, out=(cp.empty((1, 3), cp.float32), cp.empty((1, 3), cp.int32)))


@gpu
def test_the_binding_refuses_subset_offsets_that_leave_the_subset():
    ext = cuda.require()
    store = ext.MaxSimStore(0, "f32", 4, 2, 3, False)
    store.upload("tokens", 0, np.ones((3, 4), np.float32))
    store.upload("offsets", 0, np.array([0, 1, 3], np.int64))
    store.upload("ids", 0, np.array([0, 1], np.longlong))  # int64 by numpy's equality
    q, q_offsets = np.ones((2, 4), np.float32), np.array([0, 1, 2], np.int64)
    out = (np.empty((2, 1), np.float32), np.empty((2, 1), np.int64))
    positions = np.array([0, 1, 0], np.int64)
    for bad in ([0, 100, 3], [0, 2, 1], [1, 2, 3], [0, 1, 2]):
        with pytest.raises(ValueError, match="subset_offsets"):
            store.search(q, q_offsets, None, 1, positions, np.array(bad, np.int64), *out)
    with pytest.raises(ValueError, match="subset"):
        store.search(q, q_offsets, None, 1, positions, None, *out)
    with pytest.raises(ValueError, match="subset: position 7"):
        store.search(q, q_offsets, None, 1, np.array([0, 7, 0], np.int64), np.array([0, 1, 3], np.int64), *out)
    store.search(q, q_offsets, None, 1, positions, np.array([0, 1, 3], np.int64), *out)
    assert out[1].tolist() == [[0], [0]]
