import os
import zlib

import numpy as np
import pytest

import flatcoat
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
