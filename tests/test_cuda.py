"""GPU search (flatcoat.cuda) against the CPU path.

Every test that needs the CUDA extension and a GPU skips with the reason when
either is missing; the tests of the error messages and of lazy loading run
everywhere. Outputs are poisoned before each GPU call and checked to be fully
overwritten; every check draws its own random inputs.
"""

import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

import flatcoat
from flatcoat import cuda
from conftest import assert_exact_topk, clustered, gpu, reference_scores, reference_topk

def small_ints(rng, n, dim):
    """Values in -3..3: every product and sum is exact in float32 and float16, so ties are real ties."""
    return rng.integers(-3, 4, size=(n, dim)).astype(np.float32)


def stored_values(x, storage, metric):
    """The vectors as the index stores them (normalised for cosine, then rounded to f16)."""
    if metric == "cosine":
        x = (x / np.linalg.norm(x.astype(np.float64), axis=1, keepdims=True)).astype(np.float32)
    return x.astype(np.float16).astype(np.float32) if storage == "f16" else x


def search_poisoned(store, queries, k, **options):
    """store.search into poisoned outputs of the queries' kind; checks that every element was written."""
    nq = 1 if queries.ndim == 1 else queries.shape[0]
    on_device = not isinstance(queries, np.ndarray)
    xp = __import__("cupy") if on_device else np
    scores = xp.full((nq, k), np.nan, dtype=np.float32)
    ids = xp.full((nq, k), -7, dtype=np.int64)
    out = store.search(queries, k, out=(scores, ids), **options)
    assert out[0] is scores and out[1] is ids
    s, i = (xp.asnumpy(scores), xp.asnumpy(ids)) if on_device else (scores, ids)
    assert not np.isnan(s).any(), "a score was left unwritten"
    assert not (i == -7).any(), "an id was left unwritten"
    return s, i


def cpu_and_gpu(dim, metric, storage, x, ids=None, keep_float=False):
    index = flatcoat.DenseIndex(dim, metric=metric, storage=storage, keep_float=keep_float)
    index.add(x, ids=ids)
    return index, cuda.CudaDenseStore.from_index(index)


def assert_padded(scores, ids, metric, valid):
    pad = np.inf if metric == "l2" else -np.inf
    assert (ids[:, valid:] == -1).all() and (scores[:, valid:] == pad).all()
    assert (ids[:, :valid] >= 0).all() and np.isfinite(scores[:, :valid]).all()


# ---------------------------------------------------------------------- everywhere: availability and messages

def test_cpu_import_never_loads_the_cuda_extension():
    code = "import sys, flatcoat, flatcoat.cuda; flatcoat.cuda.MAX_K; print('flatcoat._cuda' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"


def test_module_not_built_message_says_how_to_build(monkeypatch, fresh_extension):
    def missing():
        raise ImportError("No module named 'flatcoat._cuda'")

    monkeypatch.setattr(cuda, "_import_extension", missing)
    assert not cuda.available() and cuda.device_count() == 0
    for call in (
        lambda: cuda.require(),
        lambda: cuda.CudaDenseStore(4, codes=np.zeros((1, 4), np.float32), ids=[0]),
        lambda: cuda.topk(np.zeros(8, np.float32), 2),
        lambda: cuda.DenseMirror("cuda"),
    ):
        with pytest.raises(cuda.CudaUnavailableError, match="built without its CUDA extension") as info:
            call()
        assert "FLATCOAT_CUDA=ON" in str(info.value) and "No module named" in str(info.value)
    assert issubclass(cuda.CudaUnavailableError, RuntimeError)


class _FakeExtension:
    def __init__(self, count, status, driver):
        self._count, self._status, self._driver = count, status, driver

    def device_count(self):
        return self._count

    def device_status(self):
        return self._status

    def driver_version(self):
        return self._driver


def test_no_gpu_message_names_the_cause(monkeypatch, fresh_extension):
    fake = _FakeExtension(0, "no CUDA-capable device is detected (cudaErrorNoDevice)", 12040)
    monkeypatch.setattr(cuda, "_import_extension", lambda: fake)
    assert not cuda.available()
    with pytest.raises(cuda.CudaUnavailableError) as info:
        cuda.require()
    message = str(info.value)
    assert "no CUDA device is visible" in message and "cudaErrorNoDevice" in message
    assert "CUDA_VISIBLE_DEVICES" in message and "nvidia-smi" in message


def test_missing_driver_is_named(monkeypatch, fresh_extension):
    fake = _FakeExtension(0, "CUDA driver version is insufficient for CUDA runtime version (cudaErrorInsufficientDriver)", 0)
    monkeypatch.setattr(cuda, "_import_extension", lambda: fake)
    with pytest.raises(cuda.CudaUnavailableError, match="no NVIDIA driver was found"):
        cuda.require()


def test_device_ordinal_out_of_range(monkeypatch, fresh_extension):
    monkeypatch.setattr(cuda, "_import_extension", lambda: _FakeExtension(2, "", 13000))
    assert cuda.available() and cuda.device_count() == 2
    with pytest.raises(cuda.CudaUnavailableError, match=r"no CUDA device cuda:3 \(2 visible"):
        cuda.require(3)


def test_parse_device():
    assert cuda.parse_device("cpu") is None
    assert cuda.parse_device("cuda") == 0 and cuda.parse_device("cuda:3") == 3
    for bad in ("gpu", "cuda:", "cuda:-1", 0, None):
        with pytest.raises(ValueError, match="device"):
            cuda.parse_device(bad)


def test_the_real_extension_reports_its_state_cleanly():
    reason = cuda.unavailable_reason()
    if reason is None:
        assert cuda.device_count() >= 1
    else:
        assert "built without its CUDA extension" in reason or "no CUDA device is visible" in reason


# ---------------------------------------------------------------------- GPU: exact storages equal the CPU path

@gpu
@pytest.mark.parametrize("storage,path", [("f32", "scan"), ("f16", "scan"), ("f16", "mma")])
@pytest.mark.parametrize("metric", ["ip", "cosine", "l2"])
@pytest.mark.parametrize("dim", [1, 3, 7, 97, 384])
@pytest.mark.parametrize("nq", [1, 64])
def test_exact_storages_match_the_cpu(storage, path, metric, dim, nq, rng):
    n, k = 700, 10
    x = rng.standard_normal((n, dim)).astype(np.float32)
    q = rng.standard_normal((nq, dim)).astype(np.float32)
    index, store = cpu_and_gpu(dim, metric, storage, x)
    cpu_scores, cpu_ids = index.search(q, k)
    scores, found = search_poisoned(store, q, k, path=path)
    # Exact up to float32 rounding at near-ties, like the CPU against float64.
    ref = reference_scores(stored_values(x, storage, metric), stored_values(q, "f32", metric),
                           "ip" if metric == "cosine" else metric)
    tol = 1e-4 * max(1.0, float(np.abs(ref).max()))
    assert_exact_topk(found, ref, np.arange(n), k, tol)
    same = found == cpu_ids
    np.testing.assert_allclose(scores[same], cpu_scores[same], rtol=1e-5, atol=tol)
    assert same.mean() >= 0.95, same.mean()


@gpu
@pytest.mark.parametrize("storage", ["f32", "f16", "binary"])
@pytest.mark.parametrize("metric", ["ip", "l2"])
@pytest.mark.parametrize("dim", [5, 64, 130])
@pytest.mark.parametrize("nq", [1, 3, 40])
def test_integer_data_gives_identical_results_ties_included(storage, metric, dim, nq, rng):
    # Exact sums on both sides: scores and ids (ties by smaller id) must be identical.
    # Unsorted ids exercise the store's id-order upload; nq=40 takes the tensor-core path for f16.
    n, k = 2000, 50
    x = small_ints(rng, n, dim)
    q = small_ints(rng, nq, dim)
    ids = rng.permutation(10 * n)[:n]
    index, store = cpu_and_gpu(dim, metric, storage, x, ids=ids)
    cpu_scores, cpu_ids = index.search(q, k)
    scores, found = search_poisoned(store, q, k)
    np.testing.assert_array_equal(found, cpu_ids)
    np.testing.assert_array_equal(scores, cpu_scores)


@gpu
@pytest.mark.parametrize("storage,path", [("f32", "scan"), ("f16", "scan"), ("f16", "mma"), ("int8", "mma"), ("binary", "scan")])
@pytest.mark.parametrize("k", [1, 100, 1000, 4096])
def test_large_k_matches_the_cpu(storage, path, k, rng):
    n, dim, nq = 12000, 33, 3
    x = small_ints(rng, n, dim)
    q = small_ints(rng, nq, dim)
    index, store = cpu_and_gpu(dim, "ip", storage, x, ids=rng.permutation(n) + 5)
    cpu_scores, cpu_ids = index.search(q, k)
    scores, found = search_poisoned(store, q, k, path=path)
    if storage == "int8":  # float32 sums over scaled codes, in another order: equal up to rounding
        assert (found == cpu_ids).mean() >= 0.99
        scale = float(np.abs(cpu_scores[np.isfinite(cpu_scores)]).max())
        np.testing.assert_allclose(scores, cpu_scores, rtol=1e-5, atol=1e-5 * scale)
    else:
        np.testing.assert_array_equal(found, cpu_ids)
        np.testing.assert_array_equal(scores, cpu_scores)


@gpu
@pytest.mark.parametrize("metric", ["ip", "l2"])
@pytest.mark.parametrize("storage", ["f32", "f16", "int8", "binary"])
def test_fewer_rows_than_k_are_padded_and_empty_inputs(metric, storage, rng):
    dim = 9
    x = rng.standard_normal((300, dim)).astype(np.float32)
    q = rng.standard_normal((4, dim)).astype(np.float32)
    index, store = cpu_and_gpu(dim, metric, storage, x)
    for k in (299, 300, 301, 4096):
        scores, ids = search_poisoned(store, q, k)
        assert_padded(scores, ids, metric, min(k, 300))
    empty_index, empty = cpu_and_gpu(dim, metric, storage, x[:0])
    scores, ids = search_poisoned(empty, q, 5)
    assert_padded(scores, ids, metric, 0)
    scores, ids = store.search(q[:0], 5)
    assert scores.shape == (0, 5) and ids.shape == (0, 5)
    one = store.search(q[0], 5)
    assert one[0].shape == (1, 5)


# ---------------------------------------------------------------------- GPU: quantized storages meet the CPU's bars

@gpu
@pytest.mark.parametrize("metric", ["ip", "cosine", "l2"])
@pytest.mark.parametrize("nq", [8, 1000])  # 8: the CUDA-core scan; 1000: the tensor cores
def test_int8_recall_meets_the_cpu_thresholds(metric, nq, rng):
    n, dim, k = 20000, 384, 10
    seed = int(rng.integers(1 << 30))
    x = clustered(n, dim, seed=seed)
    q = clustered(nq, dim, seed=seed + 1)
    ref = reference_scores(x, q, metric)
    _, truth = reference_topk(ref, np.arange(n), k)
    index, store = cpu_and_gpu(dim, metric, "int8", x, keep_float=True)

    def recall(found):
        return np.mean([len(set(a) & set(b)) / k for a, b in zip(found, truth)])

    _, cpu_found = index.search(q, k)
    _, found = search_poisoned(store, q, k)
    assert recall(found) >= 0.96 and recall(found) >= recall(cpu_found) - 0.002, (recall(found), recall(cpu_found))
    _, rescored = search_poisoned(store, q, k, rescore=50)
    assert recall(rescored) >= 0.99, recall(rescored)


@gpu
@pytest.mark.parametrize("metric", ["ip", "cosine", "l2"])
@pytest.mark.parametrize("dim", [7, 97, 384])
def test_binary_rescoring_equals_the_cpu(metric, dim, rng):
    n, k, depth = 3000, 10, 100
    seed = int(rng.integers(1 << 30))
    x = clustered(n, dim, n_clusters=30, seed=seed)
    q = clustered(32, dim, n_clusters=30, seed=seed + 1)
    index, store = cpu_and_gpu(dim, metric, "binary", x, keep_float=True)
    cpu_scores, cpu_ids = index.search(q, k, rescore=depth)
    scores, found = search_poisoned(store, q, k, rescore=depth)
    agreement = np.mean([len(set(a) & set(b)) / k for a, b in zip(found, cpu_ids)])
    assert agreement >= 0.99, agreement  # float32 near-ties only: both rescore in float32, in different orders
    same = found == cpu_ids
    np.testing.assert_allclose(scores[same], cpu_scores[same], rtol=1e-5, atol=1e-5)
    # The Hamming stage alone is integer arithmetic: identical.
    cpu_h = index.search(q, depth)
    gpu_h = search_poisoned(store, q, depth)
    np.testing.assert_array_equal(gpu_h[1], cpu_h[1])
    np.testing.assert_array_equal(gpu_h[0], cpu_h[0])


@gpu
def test_half_queries_trade_little_recall(rng):
    n, dim, k = 20000, 128, 10
    x = clustered(n, dim, seed=int(rng.integers(1 << 30)))
    q = clustered(256, dim, seed=int(rng.integers(1 << 30)))
    _, store = cpu_and_gpu(dim, "ip", "f16", x)
    _, exact = search_poisoned(store, q, k, path="mma")
    _, fast = search_poisoned(store, q, k, path="mma", half_queries=True)
    assert np.mean([len(set(a) & set(b)) / k for a, b in zip(exact, fast)]) >= 0.99


# ---------------------------------------------------------------------- GPU: device arrays in, device arrays out

@gpu
@pytest.mark.parametrize("metric", ["ip", "cosine", "l2"])
@pytest.mark.parametrize("storage", ["f32", "f16", "int8", "binary"])
def test_cupy_in_cupy_out(metric, storage, rng):
    cp = pytest.importorskip("cupy")
    dim, k = 65, 20
    x = rng.standard_normal((5000, dim)).astype(np.float32)
    q = rng.standard_normal((33, dim)).astype(np.float32)
    _, store = cpu_and_gpu(dim, metric, storage, x)
    host_scores, host_ids = store.search(q, k)
    scores, ids = store.search(cp.asarray(q), k)
    assert isinstance(scores, cp.ndarray) and isinstance(ids, cp.ndarray)
    assert scores.dtype == cp.float32 and ids.dtype == cp.int64 and scores.shape == (33, k)
    if metric == "cosine":
        # Normalised on the device instead of by numpy: float64 sums in another order, so the
        # float32 query may differ in its last bit.
        np.testing.assert_allclose(cp.asnumpy(scores), host_scores, rtol=1e-6, atol=1e-6)
        assert (cp.asnumpy(ids) == host_ids).mean() >= 0.99
        return
    # Same kernels on the same data.
    np.testing.assert_array_equal(cp.asnumpy(ids), host_ids)
    np.testing.assert_array_equal(cp.asnumpy(scores), host_scores)
    poisoned = search_poisoned(store, cp.asarray(q), k)
    np.testing.assert_array_equal(poisoned[1], host_ids)
    # float64 and non-contiguous device queries are converted on the device.
    wide = cp.asarray(np.asfortranarray(q.astype(np.float64)))
    np.testing.assert_array_equal(cp.asnumpy(store.search(wide, k)[1]), host_ids)


@gpu
@pytest.mark.parametrize("storage", ["f32", "f16", "int8", "binary"])
def test_store_built_from_device_arrays(storage, rng):
    cp = pytest.importorskip("cupy")
    dim, k = 40, 15
    x = rng.standard_normal((4000, dim)).astype(np.float32)
    q = rng.standard_normal((20, dim)).astype(np.float32)
    index, host_store = cpu_and_gpu(dim, "l2", storage, x, ids=rng.permutation(4000) * 3, keep_float=True)
    v = index._rows.views()
    device_store = cuda.CudaDenseStore(
        dim, "l2", storage, codes=cp.asarray(v["codes"]), ids=cp.asarray(v["ids"]),
        sq_norms=None if storage == "binary" else cp.asarray(v["sq_norms"]), scale=None if storage != "int8" else cp.asarray(v["scale"]), offset=None if storage != "int8" else cp.asarray(v["offset"]),
        float_rows=cp.asarray(v["float_rows"]), float_sq_norms=cp.asarray(v["float_sq_norms"]),
    )
    for rescore in (None, 40):
        expected = host_store.search(q, k, rescore)
        got = search_poisoned(device_store, q, k, rescore=rescore)
        np.testing.assert_array_equal(got[1], expected[1])
        np.testing.assert_array_equal(got[0], expected[0])


@gpu
def test_torch_in_torch_out(rng):
    torch = pytest.importorskip("torch")
    pytest.importorskip("cupy")
    if not torch.cuda.is_available():
        pytest.skip("torch without CUDA")
    dim, k = 48, 7
    x = rng.standard_normal((3000, dim)).astype(np.float32)
    q = rng.standard_normal((5, dim)).astype(np.float32)
    _, store = cpu_and_gpu(dim, "ip", "f16", x)
    scores, ids = store.search(torch.from_numpy(q).cuda(), k)
    assert isinstance(scores, torch.Tensor) and scores.is_cuda and ids.dtype == torch.int64
    host = store.search(q, k)
    np.testing.assert_array_equal(ids.cpu().numpy(), host[1])


@gpu
def test_bad_device_queries_are_reported(rng):
    cp = pytest.importorskip("cupy")
    dim = 16
    x = rng.standard_normal((100, dim)).astype(np.float32)
    _, store = cpu_and_gpu(dim, "cosine", "f32", x)
    q = cp.asarray(rng.standard_normal((6, dim)).astype(np.float32))
    q[4, 3] = cp.nan
    with pytest.raises(ValueError, match="row 4 contains NaN or inf"):
        store.search(q, 3)
    q[4, 3] = 0
    q[2] = 0
    with pytest.raises(ValueError, match="row 2 is all zeros"):
        store.search(q, 3)
    with pytest.raises(ValueError, match="expected dimension 16"):
        store.search(cp.zeros((2, 15), dtype=cp.float32), 3)
    with pytest.raises(TypeError, match="not a floating type"):
        store.search(cp.zeros((2, 16), dtype=cp.int32), 3)


@gpu
def test_argument_errors(rng):
    dim = 8
    x = rng.standard_normal((50, dim)).astype(np.float32)
    _, store = cpu_and_gpu(dim, "ip", "f32", x)
    q = x[:2]
    with pytest.raises(ValueError, match="at most 4096"):
        store.search(q, 4097)
    with pytest.raises(ValueError, match="keep_float"):
        store.search(q, 5, rescore=10)
    with pytest.raises(ValueError, match="tensor-core path takes f16 or int8"):
        store.search(q, 5, path="mma")
    with pytest.raises(ValueError, match="expected dimension 8"):
        store.search(np.zeros((1, 9), np.float32), 5)
    with pytest.raises(ValueError, match="NaN or inf"):
        store.search(np.full((1, 8), np.inf, np.float32), 5)


@gpu
def test_concurrent_searches_equal_serial_ones(rng):
    dim = 64
    x = clustered(20000, dim, seed=int(rng.integers(1 << 30)))
    q = clustered(64, dim, seed=int(rng.integers(1 << 30)))
    _, store = cpu_and_gpu(dim, "ip", "int8", x, keep_float=True)
    serial = [store.search(q[i : i + 8], 10, rescore=30) for i in range(0, 64, 8)]
    with ThreadPoolExecutor(8) as pool:
        parallel = list(pool.map(lambda i: store.search(q[i : i + 8], 10, rescore=30), range(0, 64, 8)))
    for a, b in zip(serial, parallel):
        np.testing.assert_array_equal(a[0], b[0])
        np.testing.assert_array_equal(a[1], b[1])


# ---------------------------------------------------------------------- GPU: top-k of given scores

@gpu
@pytest.mark.parametrize("k", [1, 7, 1000, 4096])
@pytest.mark.parametrize("m,n", [(1, 100003), (3, 5000), (2, 1)])
def test_topk_matches_a_stable_sort(k, m, n, rng):
    x = rng.integers(-50, 50, size=(m, n)).astype(np.float32)  # many ties: smaller index first
    order = np.lexsort((np.broadcast_to(np.arange(n), x.shape), -x), axis=1)[:, :k]
    valid = min(k, n)
    values = np.full((m, k), np.nan, np.float32)
    indices = np.full((m, k), -7, np.int64)
    cuda.topk(x, k, out=(values, indices))
    np.testing.assert_array_equal(indices[:, :valid], order)
    np.testing.assert_array_equal(values[:, :valid], np.take_along_axis(x, order, 1))
    assert (indices[:, valid:] == -1).all() and (values[:, valid:] == -np.inf).all()
    one_values, one_indices = cuda.topk(x[0], k)
    assert one_values.shape == (k,)
    np.testing.assert_array_equal(one_indices[:valid], order[0])


@gpu
def test_topk_on_device_arrays(rng):
    cp = pytest.importorskip("cupy")
    x = rng.standard_normal(1 << 20).astype(np.float32)
    values, indices = cuda.topk(cp.asarray(x), 100)
    assert isinstance(values, cp.ndarray)
    expected = np.argsort(-x, kind="stable")[:100]
    np.testing.assert_array_equal(cp.asnumpy(indices), expected)


# ---------------------------------------------------------------------- GPU: DenseIndex(device="cuda")


@gpu
def test_dense_index_on_the_device_follows_changes(rng, tmp_path):
    dim = 24
    x = rng.standard_normal((1000, dim)).astype(np.float32)
    index = flatcoat.DenseIndex(dim, metric="l2", storage="f16", device="cuda")
    index.add(x)
    cpu = flatcoat.DenseIndex(dim, metric="l2", storage="f16")
    cpu.add(x)
    q = x[:5]
    np.testing.assert_array_equal(index.search(q, 3)[1], cpu.search(q, 3)[1])
    index.remove([0, 1])
    cpu.remove([0, 1])
    np.testing.assert_array_equal(index.search(q, 3)[1], cpu.search(q, 3)[1])  # the device copy follows
    index.save(tmp_path / "i")
    loaded = flatcoat.load(tmp_path / "i", device="cuda")
    np.testing.assert_array_equal(loaded.search(q, 3)[1], cpu.search(q, 3)[1])
    assert loaded.to("cpu").search(q, 3)[1].tolist() == cpu.search(q, 3)[1].tolist()
