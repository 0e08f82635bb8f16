"""GPU search (flatcoat.cuda) against the CPU path.

Every test that needs the CUDA extension and a GPU skips with the reason when
either is missing. Everywhere: the error messages, lazy loading, the Python
layer on a fake GPU (conftest.FakeCudaExtension: uploads, id order, the result
rule, the mirror protocol), and where flatcoat._cuda is built the binding's own
argument checks, which run before any CUDA call. On a GPU, outputs are
poisoned before each call and checked to be fully overwritten; every check
draws its own random inputs.
"""

import inspect
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

import flatcoat
from flatcoat import _device, cuda
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
    """store.search into poisoned (q, min(k, n)) outputs of the queries' kind; checks that every element was written."""
    nq = 1 if queries.ndim == 1 else queries.shape[0]
    on_device = not isinstance(queries, np.ndarray)
    xp = __import__("cupy") if on_device else np
    shape = (nq, min(k, len(store)))
    scores = xp.full(shape, np.nan, dtype=np.float32)
    ids = xp.full(shape, -7, dtype=np.int64)
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


# ---------------------------------------------------------------------- everywhere: availability and messages

def test_cpu_import_never_loads_the_cuda_extension():
    code = "import sys, flatcoat, flatcoat.cuda; flatcoat.cuda.MAX_K; print('flatcoat._cuda' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"


def test_module_not_built_message_says_how_to_build(no_extension):
    assert not cuda.available() and cuda.device_count() == 0
    for call in (
        lambda: cuda.require(),
        lambda: cuda.CudaDenseStore(4, codes=np.zeros((1, 4), np.float32), ids=[0]),
        lambda: cuda.topk(np.zeros(8, np.float32), 2),
        lambda: cuda.DenseMirror("cuda"),
        lambda: flatcoat.DenseIndex(4, device="cuda"),
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
    with pytest.raises(cuda.CudaUnavailableError, match="cuda:3"):
        cuda.DenseMirror("cuda:3")
    for bad in (-1, 1.0, "0", True):
        with pytest.raises((TypeError, ValueError), match="device"):
            cuda.require(bad)


def test_parse_device_is_the_one_device_parser():
    assert cuda.parse_device is _device.parse_device
    assert cuda.parse_device("cpu") is None
    assert cuda.parse_device("cuda") == 0 and cuda.parse_device("cuda:3") == 3
    for bad in ("gpu", "cuda:", "cuda:-1"):
        with pytest.raises(ValueError, match="device"):
            cuda.parse_device(bad)
    for bad in (0, None):
        with pytest.raises(TypeError, match="device"):
            cuda.parse_device(bad)


def test_the_real_extension_reports_its_state_cleanly():
    reason = cuda.unavailable_reason()
    if reason is None:
        assert cuda.device_count() >= 1
    else:
        assert "built without its CUDA extension" in reason or "no CUDA device is visible" in reason


# ---------------------------------------------------------------------- everywhere: the Python layer on a fake GPU

def test_arguments_are_checked_before_looking_for_a_gpu(no_extension):
    codes = np.zeros((1, 4), np.float32)
    for call, error, match in (
        (lambda: cuda.CudaDenseStore(4, storage="int4", codes=codes, ids=[0]), ValueError, "storage"),
        (lambda: cuda.CudaDenseStore(4, metric="dot", codes=codes, ids=[0]), ValueError, "metric"),
        (lambda: cuda.CudaDenseStore(0, codes=codes, ids=[0]), ValueError, "dim"),
        (lambda: cuda.CudaDenseStore(4.0, codes=codes, ids=[0]), TypeError, "dim"),
        (lambda: cuda.CudaDenseStore(4, codes=codes, ids=[0], device="cpu"), ValueError, "lives on a GPU"),
        (lambda: cuda.DenseMirror("cpu"), ValueError, "lives on a GPU"),
        (lambda: cuda.topk(np.zeros(8, np.float32), 0), ValueError, "k"),
        (lambda: cuda.topk(np.zeros(8, np.float32), 2.5), TypeError, "k"),
    ):
        with pytest.raises(error, match=match):
            call()


def test_constructors_take_keywords_after_dim():
    for cls in (cuda.CudaDenseStore,):
        params = list(inspect.signature(cls).parameters.values())
        assert params[0].name == "dim" and all(p.kind is p.KEYWORD_ONLY for p in params[1:])


def test_mirror_search_takes_explicit_arguments():
    signature = inspect.signature(cuda.DenseMirror.search)
    assert not any(p.kind is p.VAR_KEYWORD for p in signature.parameters.values())
    assert signature.parameters["rerank"].kind is inspect.Parameter.KEYWORD_ONLY


@pytest.mark.parametrize("storage", ["f32", "f16", "int8", "binary"])
@pytest.mark.parametrize("metric", ["ip", "cosine", "l2"])
def test_store_from_index_equals_the_cpu_on_a_fake_gpu(fake_gpu, storage, metric, rng):
    dim, n = 19, 300
    x = rng.standard_normal((n, dim)).astype(np.float32)
    index = flatcoat.DenseIndex(dim, metric=metric, storage=storage, keep_float=True)
    index.add(x, ids=rng.permutation(10 * n)[:n])  # unsorted: the store uploads them in id order
    store = cuda.CudaDenseStore.from_index(index)
    assert len(store) == n and store.device == "cuda:0" and store.storage == storage
    q = rng.standard_normal((5, dim)).astype(np.float32)
    for k, rerank in ((1, None), (10, None), (10, 40), (n + 1, None), (10**8, 10**9)):
        expected = index.search(q, k, rerank=rerank)
        got = store.search(q, k, rerank=rerank)
        assert got[0].shape == got[1].shape == (5, min(k, n))  # k' = min(k, n), whatever k
        np.testing.assert_array_equal(got[1], expected[1])
        np.testing.assert_array_equal(got[0], expected[0])


def test_uploads_go_in_bounded_chunks_in_id_order(fake_gpu, monkeypatch, rng):
    monkeypatch.setattr(cuda, "_UPLOAD_CHUNK_BYTES", 64 * 8 * 4)  # 64 rows of dim 8 per step
    x = rng.standard_normal((1000, 8)).astype(np.float32)
    ids = rng.permutation(1000) + 7
    store = cuda.CudaDenseStore(8, metric="l2", codes=x, ids=ids, sq_norms=(x * x).sum(1))
    code_uploads = [u for u in fake_gpu.uploads if u[1] == "codes"]
    assert len(code_uploads) == 16 and all(rows <= 64 for *_, rows in code_uploads)
    assert [begin for _, _, begin, _ in code_uploads] == list(range(0, 1000, 64))
    order = np.argsort(ids)
    _, found = store.search(x[order[:3]], 1)
    assert found[:, 0].tolist() == ids[order[:3]].tolist()


def test_one_vector_is_one_query_and_results_never_outgrow_the_store(fake_gpu, rng):
    x = rng.standard_normal((8, 4)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)  # each vector is its own best match
    store = cuda.CudaDenseStore(4, codes=x, ids=np.arange(8))
    scores, ids = store.search(x[3], 5)
    assert scores.shape == ids.shape == (1, 5) and int(ids[0, 0]) == 3
    scores, ids = store.search(x[:2], 10**8)  # bounded by the store, not by k
    assert scores.shape == (2, 8) and sorted(ids[0].tolist()) == list(range(8))
    empty = cuda.CudaDenseStore(4, codes=x[:0], ids=np.arange(0))
    scores, ids = empty.search(x[:3], 5)
    assert scores.shape == ids.shape == (3, 0) and scores.dtype == np.float32 and ids.dtype == np.int64
    assert fake_gpu.searches == 2  # nothing to search is not a GPU call


def test_k_and_rerank_errors_name_the_argument(fake_gpu, rng):
    x = rng.standard_normal((5000, 4)).astype(np.float32)
    store = cuda.CudaDenseStore(4, codes=x, ids=np.arange(5000), float_rows=x)
    plain = cuda.CudaDenseStore(4, codes=x[:10], ids=np.arange(10))
    q = x[:2]
    for call, error, match in (
        (lambda: store.search(q, 4097), ValueError, r"^k: at most 4096 on the GPU"),
        (lambda: store.search(q, 10, rerank=4097), ValueError, r"^rerank: at most 4096 on the GPU"),
        (lambda: store.search(q, 10, rerank=5), ValueError, r"^rerank: must be at least k \(10\)"),
        (lambda: store.search(q, 10, rerank=0), ValueError, r"^rerank"),
        (lambda: store.search(q, 10, rerank=20.0), TypeError, r"^rerank"),
        (lambda: store.search(q, 0), ValueError, r"^k"),
        (lambda: store.search(q, np.float64(3)), TypeError, r"^k"),
        (lambda: plain.search(q, 5, rerank=10), ValueError, r"^rerank: .*keep_float"),
        (lambda: store.search(q, 5, path="tensor"), ValueError, r"^path"),
        (lambda: store.search(q, 5, half_queries="no"), TypeError, r"^half_queries"),
        (lambda: store.search(q, 5, out=[1, 2]), TypeError, r"^out"),
    ):
        with pytest.raises(error, match=match):
            call()
    assert store.search(q, np.int64(3))[1].shape == (2, 3)
    assert plain.search(q, 4097)[1].shape == (2, 10)  # min(k, n) is what must fit the GPU


def test_topk_follows_the_result_rule(fake_gpu, rng):
    x = rng.integers(-5, 5, size=(3, 50)).astype(np.float32)
    values, indices = cuda.topk(x[0], 7)
    assert values.shape == indices.shape == (1, 7)  # one row is m = 1
    order = np.lexsort((np.arange(50), -x[0]))[:7]
    np.testing.assert_array_equal(indices[0], order)
    values, indices = cuda.topk(x, 10**6)
    assert values.shape == (3, 50)
    values, indices = cuda.topk(x[:, :0], 3)
    assert values.shape == (3, 0)
    out = (np.empty((3, 4), np.float32), np.empty((3, 4), np.int64))
    assert cuda.topk(x, 4, out=out) is out


def test_dense_index_on_a_fake_gpu_follows_changes(fake_gpu, rng, tmp_path):
    dim = 12
    x = rng.standard_normal((500, dim)).astype(np.float32)
    index = flatcoat.DenseIndex(dim, metric="l2", storage="int8", keep_float=True, device="cuda")
    cpu = flatcoat.DenseIndex(dim, metric="l2", storage="int8", keep_float=True)
    assert index.device == "cuda:0"
    for target in (index, cpu):
        target.add(x)
    q = x[:4]

    def same():
        for k, rerank in ((3, None), (3, 30), (10**6, None)):
            expected, got = cpu.search(q, k, rerank=rerank), index.search(q, k, rerank=rerank)
            np.testing.assert_array_equal(got[1], expected[1])
            np.testing.assert_array_equal(got[0], expected[0])
        one = index.search(x[7], 2)
        assert one[1].shape == (1, 2) and int(one[1][0, 0]) == 7

    same()
    searches = fake_gpu.searches
    for target in (index, cpu):
        target.remove([0, 1, 2])
        target.add(x[:50] + 1)
    same()  # the device copy follows the changes
    assert fake_gpu.searches > searches
    index.save(tmp_path / "i")
    loaded = flatcoat.load(tmp_path / "i", device="cuda")
    assert loaded.device == "cuda:0"
    np.testing.assert_array_equal(loaded.search(q, 3)[1], cpu.search(q, 3)[1])
    assert index.to("cpu").device == "cpu"
    before = fake_gpu.searches
    np.testing.assert_array_equal(index.search(q, 3)[1], cpu.search(q, 3)[1])
    assert fake_gpu.searches == before


def test_mirror_reads_only_its_source(fake_gpu, rng):
    # No index at all: the mirror works from an IndexSource, so it cannot reach into private members.
    x = rng.standard_normal((40, 6)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    arrays = {"codes": x, "ids": np.arange(40, dtype=np.int64) * 2}
    calls = []

    def views():
        calls.append(1)
        return arrays

    source = _device.IndexSource("dense", 6, "ip", "f32", views)
    mirror = _device.mirror_for("dense", "cuda")
    assert isinstance(mirror, cuda.DenseMirror) and mirror.device == "cuda:0"
    assert _device.mirror_for("dense", "cuda:0", mirror) is mirror
    scores, ids = mirror.search(source, x[:3], 2)
    assert ids[:, 0].tolist() == [0, 2, 4] and scores.shape == (3, 2)
    mirror.search(source, x[:3], 2)
    assert len(calls) == 1  # uploaded once
    mirror.invalidate()
    assert mirror.search(source, x[:3], 0)[1].shape == (3, 0)
    assert len(calls) == 2
    with pytest.raises(ValueError, match=r"^k: at most 4096 on the GPU"):
        _device.mirror_for("dense", "cuda").search(
            _device.IndexSource("dense", 6, "ip", "f32", lambda: {"codes": np.zeros((5000, 6), np.float32),
                                                                    "ids": np.arange(5000)}), x[:1], 4097)


# ---------------------------------------------------------------------- where flatcoat._cuda is built: binding checks

class _CudaArray:
    """Something with a __cuda_array_interface__ that points nowhere: it must be refused, never read."""

    def __init__(self, shape, typestr="<f4", strides=None, readonly=False, pointer=0x1000, **extra):
        self.__cuda_array_interface__ = {"shape": shape, "typestr": typestr, "data": (pointer, readonly),
                                         "strides": strides, "version": 3, **extra}


def test_binding_refuses_wrong_objects_before_any_cuda_call(built_extension):
    ext = built_extension
    x = np.zeros((2, 8), np.float32)
    out = lambda k: (np.empty((2, k), np.float32), np.empty((2, k), np.int64))  # noqa: E731
    cases = [
        ((0, 12345, 3, *out(3)), TypeError, "scores: expected a numpy array or a CUDA device array"),
        ((0, "scores", 3, *out(3)), TypeError, "scores: expected a numpy array"),
        ((0, x.astype(np.float64), 3, *out(3)), TypeError, "scores: expected dtype float32, got float64"),
        ((0, x[0], 3, *out(3)), ValueError, "scores: expected a 2-d array, got 1-d"),
        ((0, np.zeros((2, 16), np.float32)[:, ::2], 3, *out(3)), ValueError, "scores: array is not C-contiguous"),
        ((0, x, 3, *out(4)), ValueError, "out_values: expected shape"),
        ((0, x, 3, np.empty((2, 3), np.float32), np.empty((2, 3), np.int32)), TypeError, "out_indices: expected dtype int64"),
        ((0, x, 3, np.empty((2, 3), np.float32)[:, :], 7), TypeError, "out_indices: expected a numpy array"),
        ((0, x, 3, *out(3)[:1], np.broadcast_to(np.int64(0), (2, 3))), ValueError, "out_indices"),
        ((-1, x, 3, *out(3)), ValueError, "device"),
        ((0, _CudaArray((2, 8), "<f8"), 3, *out(3)), TypeError, "scores: expected dtype float32, got float64"),
        ((0, _CudaArray((2, 8), strides=(4, 8)), 3, *out(3)), ValueError, "not C-contiguous"),
        ((0, _CudaArray((2, 8)), 3, *out(3)), ValueError, "out_values: must be a device array"),
        ((0, x, 3, _CudaArray((2, 3)), out(3)[1]), ValueError, "out_values: must be a numpy"),
        ((0, _CudaArray((2, 8)), 3, _CudaArray((2, 3), readonly=True), _CudaArray((2, 3), "<i8")), ValueError,
         "out_values: the output array is read-only"),
        ((0, _CudaArray((2, 8), pointer=0), 3, *out(3)), ValueError, "null pointer"),
        ((0, _CudaArray((2, 8), mask=object()), 3, *out(3)), ValueError, "masked"),
        ((0, type("Broken", (), {"__cuda_array_interface__": {"shape": (2, 8)}})(), 3, *out(3)), TypeError,
         "malformed"),
    ]
    for args, error, match in cases:
        with pytest.raises(error, match=match):
            ext.topk(*args)
    # numpy's dtype equality: longlong is int64 on LP64 systems, so it passes every check.
    try:
        ext.topk(0, x, 3, np.empty((2, 3), np.float32), np.empty((2, 3), np.longlong))
    except ValueError as exc:  # no GPU here: the first CUDA call says so
        assert "no CUDA device" in str(exc)
    # Well-formed but pointing nowhere: the device check asks the driver and refuses it (no crash).
    with pytest.raises(ValueError, match="scores: "):
        ext.topk(0, _CudaArray((2, 8)), 3, _CudaArray((2, 3)), _CudaArray((2, 3), "<i8"))


def test_binding_refuses_bad_store_parameters_before_any_cuda_call(built_extension):
    ext = built_extension
    with pytest.raises(ValueError, match="storage: unknown 'int4'; expected one of f32, f16, int8, binary"):
        ext.DenseStore(0, "int4", 8, 10, False, False, False)
    with pytest.raises(ValueError, match="dim: must be positive"):
        ext.DenseStore(0, "f32", 0, 10, False, False, False)
    with pytest.raises(ValueError, match="device"):
        ext.DenseStore(-1, "f32", 8, 10, False, False, False)
    with pytest.raises(ValueError, match="storage"):
        ext.MaxSimStore(0, "binary", 8, 1, 1, False)
    with pytest.raises(TypeError):
        ext.DenseStore(0, "f32", 8, 10, "no", False, False)
    assert ext.max_k == cuda.MAX_K

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
def test_k_beyond_the_rows_gives_every_row_and_empty_inputs(metric, storage, rng):
    dim = 9
    x = rng.standard_normal((300, dim)).astype(np.float32)
    q = rng.standard_normal((4, dim)).astype(np.float32)
    index, store = cpu_and_gpu(dim, metric, storage, x)
    for k in (299, 300, 301, 4096, 10**9):
        scores, ids = search_poisoned(store, q, k)
        assert scores.shape == (4, min(k, 300))  # k' = min(k, n): every row, no padding
        assert (ids >= 0).all() and np.isfinite(scores).all()
        assert all(len(set(row)) == row.size for row in ids)
        np.testing.assert_array_equal(ids, index.search(q, k)[1])
    empty_index, empty = cpu_and_gpu(dim, metric, storage, x[:0])
    scores, ids = empty.search(q, 5)
    assert scores.shape == ids.shape == (4, 0)
    scores, ids = store.search(q[:0], 5)
    assert scores.shape == (0, 5) and ids.shape == (0, 5)
    one = store.search(q[0], 5)
    assert one[0].shape == one[1].shape == (1, 5)


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
    _, reranked = search_poisoned(store, q, k, rerank=50)
    assert recall(reranked) >= 0.99, recall(reranked)


@gpu
@pytest.mark.parametrize("metric", ["ip", "cosine", "l2"])
@pytest.mark.parametrize("dim", [7, 97, 384])
def test_binary_reranking_equals_the_cpu(metric, dim, rng):
    n, k, depth = 3000, 10, 100
    seed = int(rng.integers(1 << 30))
    x = clustered(n, dim, n_clusters=30, seed=seed)
    q = clustered(32, dim, n_clusters=30, seed=seed + 1)
    index, store = cpu_and_gpu(dim, metric, "binary", x, keep_float=True)
    cpu_scores, cpu_ids = index.search(q, k, rerank=depth)
    scores, found = search_poisoned(store, q, k, rerank=depth)
    agreement = np.mean([len(set(a) & set(b)) / k for a, b in zip(found, cpu_ids)])
    assert agreement >= 0.99, agreement  # float32 near-ties only: both re-rank in float32, in different orders
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
    v = index.arrays()
    device_store = cuda.CudaDenseStore(
        dim, metric="l2", storage=storage, codes=cp.asarray(v["codes"]), ids=cp.asarray(v["ids"]),
        sq_norms=None if storage == "binary" else cp.asarray(v["sq_norms"]), scale=None if storage != "int8" else cp.asarray(v["scale"]), offset=None if storage != "int8" else cp.asarray(v["offset"]),
        float_rows=cp.asarray(v["float_rows"]), float_sq_norms=cp.asarray(v["float_sq_norms"]),
    )
    for rerank in (None, 40):
        expected = host_store.search(q, k, rerank=rerank)
        got = search_poisoned(device_store, q, k, rerank=rerank)
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
    x = rng.standard_normal((5000, dim)).astype(np.float32)
    _, store = cpu_and_gpu(dim, "ip", "f32", x)
    q = x[:2]
    with pytest.raises(ValueError, match="^k: at most 4096"):
        store.search(q, 4097)
    _, small = cpu_and_gpu(dim, "ip", "f32", x[:50])
    assert small.search(q, 4097)[1].shape == (2, 50)
    with pytest.raises(ValueError, match="^rerank: .*keep_float"):
        store.search(q, 5, rerank=10)
    with pytest.raises(ValueError, match="^path: the tensor-core path takes f16 or int8"):
        store.search(q, 5, path="mma")
    with pytest.raises(ValueError, match="expected dimension 8"):
        store.search(np.zeros((1, 9), np.float32), 5)
    with pytest.raises(ValueError, match="NaN or inf"):
        store.search(np.full((1, 8), np.inf, np.float32), 5)


@gpu
def test_wrong_outputs_are_refused_by_the_binding(rng):
    cp = pytest.importorskip("cupy")
    x = rng.standard_normal((100, 8)).astype(np.float32)
    _, store = cpu_and_gpu(8, "ip", "f32", x)
    q = cp.asarray(x[:2])
    with pytest.raises(TypeError, match="out_ids: expected dtype int64, got int32"):
        store.search(q, 3, out=(cp.empty((2, 3), cp.float32), cp.empty((2, 3), cp.int32)))
    with pytest.raises(ValueError, match="out_scores: must be a device array"):
        store.search(q, 3, out=(np.empty((2, 3), np.float32), cp.empty((2, 3), cp.int64)))
    with pytest.raises(ValueError, match="out_scores: array is not C-contiguous"):
        store.search(q, 3, out=(cp.empty((3, 2), cp.float32).T, cp.empty((2, 3), cp.int64)))
    with pytest.raises(ValueError, match="out_scores: expected shape"):
        store.search(q, 3, out=(cp.empty((2, 4), cp.float32), cp.empty((2, 3), cp.int64)))
    ext = cuda.require()
    with pytest.raises(ValueError, match="scores: the __cuda_array_interface__ pointer is not device memory"):
        ext.topk(0, type("Bogus", (), {"__cuda_array_interface__": {
            "shape": (2, 8), "typestr": "<f4", "data": (0x1000, False), "strides": None, "version": 3}})(),
            3, cp.empty((2, 3), cp.float32), cp.empty((2, 3), cp.int64))
    assert store.search(q, 3)[1].shape == (2, 3)  # the store still works


@gpu
def test_concurrent_searches_equal_serial_ones(rng):
    dim = 64
    x = clustered(20000, dim, seed=int(rng.integers(1 << 30)))
    q = clustered(64, dim, seed=int(rng.integers(1 << 30)))
    _, store = cpu_and_gpu(dim, "ip", "int8", x, keep_float=True)
    serial = [store.search(q[i : i + 8], 10, rerank=30) for i in range(0, 64, 8)]
    with ThreadPoolExecutor(8) as pool:
        parallel = list(pool.map(lambda i: store.search(q[i : i + 8], 10, rerank=30), range(0, 64, 8)))
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
    valid = min(k, n)  # k' = min(k, n)
    values = np.full((m, valid), np.nan, np.float32)
    indices = np.full((m, valid), -7, np.int64)
    cuda.topk(x, k, out=(values, indices))
    np.testing.assert_array_equal(indices, order)
    np.testing.assert_array_equal(values, np.take_along_axis(x, order, 1))
    one_values, one_indices = cuda.topk(x[0], k)
    assert one_values.shape == one_indices.shape == (1, valid)  # one row is m = 1
    np.testing.assert_array_equal(one_indices[0], order[0])


@gpu
def test_topk_on_device_arrays(rng):
    cp = pytest.importorskip("cupy")
    x = rng.standard_normal(1 << 20).astype(np.float32)
    values, indices = cuda.topk(cp.asarray(x), 100)
    assert isinstance(values, cp.ndarray) and values.shape == (1, 100)
    expected = np.argsort(-x, kind="stable")[:100]
    np.testing.assert_array_equal(cp.asnumpy(indices)[0], expected)


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
    assert index.search(x[0], 10**7)[1].shape == (1, 1000)  # one query, k' = min(k, n), on the GPU too
    index.remove([0, 1])
    cpu.remove([0, 1])
    np.testing.assert_array_equal(index.search(q, 3)[1], cpu.search(q, 3)[1])  # the device copy follows
    index.save(tmp_path / "i")
    loaded = flatcoat.load(tmp_path / "i", device="cuda")
    np.testing.assert_array_equal(loaded.search(q, 3)[1], cpu.search(q, 3)[1])
    assert loaded.to("cpu").search(q, 3)[1].tolist() == cpu.search(q, 3)[1].tolist()
