import importlib
import os
import zlib

import numpy as np
import pytest

import flatcoat
import flatcoat._storage
from flatcoat import cuda


def clustered(n, dim, n_clusters=100, spread=0.3, seed=0):
    """Unit vectors around `n_clusters` random unit centres (Gaussian noise of `spread` per unit norm)."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((n_clusters, dim))
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    x = centres[rng.integers(0, n_clusters, n)] + rng.standard_normal((n, dim)) * spread / np.sqrt(dim)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x.astype(np.float32)


def reference_scores(x, q, metric):
    """float64 scores, larger is better (negated squared distance for l2)."""
    x = np.asarray(x, dtype=np.float64)
    q = np.asarray(q, dtype=np.float64)
    if metric == "cosine":
        x = x / np.linalg.norm(x, axis=1, keepdims=True)
        q = q / np.linalg.norm(q, axis=1, keepdims=True)
    if metric == "l2":
        return -((q * q).sum(1)[:, None] - 2 * q @ x.T + (x * x).sum(1)[None, :])
    return q @ x.T


def reference_topk(scores, ids, k):
    """Top-k by score, ties by smaller id (what flatcoat promises)."""
    order = np.lexsort((np.broadcast_to(ids, scores.shape), -scores), axis=1)[:, :k]
    return np.take_along_axis(scores, order, 1), ids[order]


def assert_exact_topk(found_ids, ref_scores, ids, k, tol):
    """Every returned id must score within `tol` of the reference's k-th best (exact up to ties)."""
    n = ref_scores.shape[1]
    position = {int(i): p for p, i in enumerate(ids)}
    kth = np.sort(ref_scores, axis=1)[:, ::-1][:, min(k, n) - 1]
    for row, found in enumerate(found_ids):
        valid = [int(i) for i in found if i != -1]
        assert len(valid) == min(k, n)
        assert len(set(valid)) == len(valid)
        got = ref_scores[row, [position[i] for i in valid]]
        assert np.all(got >= kth[row] - tol), (row, got, kth[row])


@pytest.fixture
def restore_isa():
    before = flatcoat._core.active_isa()
    yield
    flatcoat._core.set_active_isa(before)


@pytest.fixture
def restore_threads():
    before = flatcoat.get_num_threads()
    yield
    flatcoat.set_num_threads(0 if before == flatcoat.info()["hardware_threads"] else before)


DATA_DIR = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data")


# ---------------------------------------------------------------------- GPU tests

GPU_REASON = cuda.unavailable_reason()  # None where flatcoat._cuda is built and a device is visible


def gpu(test):
    """Marks a test as needing a GPU; skips it, saying why, where there is none."""
    return pytest.mark.gpu(pytest.mark.skipif(GPU_REASON is not None, reason=f"needs a GPU: {GPU_REASON}")(test))


@pytest.fixture
def rng(request):
    """A generator seeded by the test's own id: fresh inputs per check, reproducible."""
    return np.random.default_rng(zlib.crc32(request.node.nodeid.encode()))


@pytest.fixture
def fresh_extension():
    """Forgets the loaded CUDA extension before and after the test."""
    cuda._reset()
    yield
    cuda._reset()


@pytest.fixture
def no_extension(monkeypatch, fresh_extension):
    """flatcoat.cuda as on a CPU-only install: importing flatcoat._cuda fails."""

    def missing():
        raise ImportError("No module named 'flatcoat._cuda'")

    monkeypatch.setattr(cuda, "_import_extension", missing)


@pytest.fixture
def built_extension():
    """The real flatcoat._cuda where it is built (no GPU needed): its argument checks run before any CUDA call."""
    try:
        return importlib.import_module("flatcoat._cuda")
    except ImportError as exc:
        pytest.skip(f"needs flatcoat._cuda built (FLATCOAT_CUDA=ON): {exc}")


# ---------------------------------------------------------------------- a fake GPU for the Python layer

class FakeCudaExtension:
    """Stands in for flatcoat._cuda on one fake device: the stores keep what is uploaded in numpy
    arrays and search them with the CPU core, so the Python layer (validation, id order, uploads in
    chunks, the result rule, mirrors) is tested exactly where no GPU is. It asserts what the real
    kernels assume: ids uploaded in ascending order, C-contiguous host arrays, outputs of the shape
    the call asks for."""

    max_k = 4096

    def __init__(self):
        self.uploads = []  # (store kind, field, row_begin, rows) per upload call
        self.searches = 0

    def device_count(self):
        return 1

    def device_status(self):
        return ""

    def driver_version(self):
        return 13000

    def device_name(self, device):
        return "fake GPU"

    def _take(self, kind, arrays, field, row_begin, src):
        assert isinstance(src, np.ndarray) and src.flags.c_contiguous, field
        self.uploads.append((kind, field, row_begin, src.shape[0]))
        arrays[field][row_begin : row_begin + src.shape[0]] = src

    def DenseStore(self, device, storage, dim, rows, has_sq_norms, has_float_rows, has_float_sq_norms):
        ext = self
        row_shape, dtype = flatcoat._storage.dense_code_layout(storage, dim)
        fields = {"codes": (row_shape, dtype), "ids": ((), np.int64)}
        if storage == "int8":
            fields.update(scale=((), np.float32), offset=((), np.float32))
        if has_sq_norms:
            fields["sq_norms"] = ((), np.float32)
        if has_float_rows:
            fields["float_rows"] = ((dim,), np.float32)
        if has_float_sq_norms:
            fields["float_sq_norms"] = ((), np.float32)

        class Store:
            arrays = {name: np.zeros((rows,) + shape, dtype) for name, (shape, dtype) in fields.items()}
            nbytes = sum(a.nbytes for a in arrays.values())

            def upload(self, field, row_begin, src):
                ext._take("dense", self.arrays, field, row_begin, src)

            def search(self, queries, k, metric, rerank, normalize, half_queries, path, out_scores, out_ids, stream=0):
                ids = self.arrays["ids"]
                assert bool(np.all(ids[1:] > ids[:-1])), "rows must be uploaded in ascending id order"
                assert 0 < k <= min(ext.max_k, rows) and (rerank == 0 or k <= rerank <= rows)
                assert out_scores.shape == out_ids.shape == (queries.shape[0], k)
                ext.searches += 1
                a = self.arrays
                scores, found = flatcoat._core.search_dense(
                    storage, metric, dim, a["codes"], ids, a.get("sq_norms"), a.get("scale"), a.get("offset"),
                    a.get("float_rows"), a.get("float_sq_norms"), queries, k, rerank)
                out_scores[...], out_ids[...] = scores, found

        return Store()

    def MaxSimStore(self, device, storage, dim, docs, tokens, has_ranks):
        ext = self
        fields = {"tokens": ((dim,), flatcoat._storage.multivector_token_dtype(storage)),
                  "offsets": ((), np.int64), "ids": ((), np.int64)}
        if storage == "int8":
            fields["scales"] = ((), np.float32)
        if has_ranks:
            fields["ranks"] = ((), np.uint32)

        class Store:
            arrays = {name: np.zeros(((docs + 1) if name == "offsets" else tokens if name in ("tokens", "scales")
                                      else docs,) + shape, dtype) for name, (shape, dtype) in fields.items()}
            nbytes = sum(a.nbytes for a in arrays.values())

            def upload(self, field, row_begin, src):
                ext._take("maxsim", self.arrays, field, row_begin, src)

            def search(self, q, offsets, weights, k, subset, subset_offsets, out_scores, out_ids, stream=0):
                a = self.arrays
                sorted_ids = a["ids"]  # in rank order: ascending
                assert bool(np.all(sorted_ids[1:] > sorted_ids[:-1])), "ids must be uploaded in rank order"
                assert 0 < k <= min(ext.max_k, docs)
                assert out_scores.shape == out_ids.shape == (offsets.size - 1, k)
                ext.searches += 1
                ids = sorted_ids[a["ranks"]] if has_ranks else sorted_ids  # per document position
                scores, found = flatcoat._core.search_maxsim(
                    storage, dim, a["tokens"], a["offsets"], a.get("scales"), ids, q, offsets, weights, k,
                    subset, subset_offsets)
                out_scores[...], out_ids[...] = scores, found

        return Store()

    def topk(self, device, scores, k, out_values, out_indices, stream=0):
        assert 0 < k <= min(self.max_k, scores.shape[1]) and out_values.shape == (scores.shape[0], k)
        order = np.lexsort((np.broadcast_to(np.arange(scores.shape[1]), scores.shape), -scores), axis=1)[:, :k]
        out_values[...], out_indices[...] = np.take_along_axis(scores, order, 1), order


@pytest.fixture
def fake_gpu(monkeypatch, fresh_extension):
    """flatcoat.cuda on a FakeCudaExtension (see there); yields the fake."""
    fake = FakeCudaExtension()
    monkeypatch.setattr(cuda, "_import_extension", lambda: fake)
    yield fake
