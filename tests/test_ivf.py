"""IVFIndex: the train rule, add/remove/tombstones, search against exact float64 numpy, the result
rule, persistence with a memory-mapped float copy, bad input and concurrency.

Where a core function of the IVF API is not in this build of ``flatcoat._core``
the index runs on ``REF`` below (a float64 numpy version of the same functions,
with a plain pq4 packing of its own), so the Python layer is tested either way;
where the core has them, ``REF.search_ivf`` is the reference the core's results
are checked against.
"""

from __future__ import annotations

import threading
import types

import numpy as np
import pytest

import flatcoat
from flatcoat import _core, ivf as ivf_module
from flatcoat.ivf import IVFIndex, default_m, default_nlist

from conftest import clustered, reference_scores

_API = ("kmeans", "assign", "pq_train", "pq_encode", "pq4_pack", "pq4_unpack", "search_ivf")
HAVE_CORE = all(hasattr(_core, name) for name in _API)
STORAGES = ("pq4", "f32", "f16", "int8", "binary")


# ----------------------------------------------------------------------------- a numpy reference of the core API


def _topk_order(scores, ids, k, larger_better=True):
    """Positions of the k best, ties by the smaller id."""
    key = -scores if larger_better else scores
    return np.lexsort((ids, key))[:k]


def _ref_kmeans(x, k, *, iterations=10, seed=0, spherical=False, max_points_per_centroid=256):
    x = np.asarray(x, dtype=np.float64)
    n = x.shape[0]
    if n < k:
        raise ValueError(f"kmeans: n ({n}) < k ({k})")
    rng = np.random.default_rng(seed)
    if n > k * max_points_per_centroid:
        x = x[rng.choice(n, k * max_points_per_centroid, replace=False)]
    c = x[rng.choice(x.shape[0], k, replace=False)].copy()
    for _ in range(iterations):
        a = _ref_assign(x, c, "ip" if spherical else "l2")
        counts = np.bincount(a, minlength=k)
        sums = np.zeros_like(c)
        np.add.at(sums, a, x)
        for j in np.flatnonzero(counts == 0):  # split the largest cluster
            big = int(np.argmax(counts))
            sums[j] = sums[big] / counts[big] * (1 + 1e-3)
            counts[j] = 1
        c = sums / np.maximum(counts, 1)[:, None]
        if spherical:
            c /= np.maximum(np.linalg.norm(c, axis=1, keepdims=True), 1e-30)
    return c.astype(np.float32)


def _ref_assign(x, centroids, metric):
    x, c = np.asarray(x, np.float64), np.asarray(centroids, np.float64)
    s = x @ c.T if metric == "ip" else -((c * c).sum(1)[None, :] - 2 * x @ c.T)
    return np.argmax(s, axis=1).astype(np.int64)  # first maximum: ties by the smaller index


def _ref_pq_train(x, m, *, iterations=10, seed=0):
    x = np.asarray(x, np.float32)
    d = x.shape[1] // m
    return np.stack([_ref_kmeans(np.ascontiguousarray(x[:, j * d:(j + 1) * d]), 16, iterations=iterations, seed=seed + j)
                     for j in range(m)])


def _ref_pq_encode(x, codebooks, *, originals=None, eta=0.0):
    m, _, d = codebooks.shape
    x = np.asarray(x, np.float64)
    codes = np.empty((x.shape[0], m), np.uint8)
    for j in range(m):
        sub = x[:, j * d:(j + 1) * d]
        cb = codebooks[j].astype(np.float64)
        dist = (sub * sub).sum(1)[:, None] - 2 * sub @ cb.T + (cb * cb).sum(1)[None, :]
        codes[:, j] = np.argmin(dist, axis=1)
    return codes


def _ref_pack(codes):
    """A plain layout: in block b, pair p's byte i = code[32 b + i, 2 p] | code[32 b + i, 2 p + 1] << 4;
    an odd last sub-quantizer takes 16 bytes: byte i = code[32 b + i, m - 1] | code[32 b + 16 + i, m - 1] << 4."""
    n, m = codes.shape
    blocks = -(-n // 32)
    c = np.zeros((blocks * 32, m), np.uint8)
    c[:n] = codes
    c = c.reshape(blocks, 32, m)
    pairs = m // 2
    out = np.zeros((blocks, 16 * m), np.uint8)
    p = c[:, :, : 2 * pairs].reshape(blocks, 32, pairs, 2)
    out[:, : 32 * pairs] = (p[..., 0] | (p[..., 1] << 4)).transpose(0, 2, 1).reshape(blocks, -1)
    if m % 2:
        out[:, 32 * pairs:] = c[:, :16, m - 1] | (c[:, 16:, m - 1] << 4)
    return out


def _ref_unpack(packed, n):
    blocks, width = packed.shape
    m = width // 16
    pairs = m // 2
    codes = np.zeros((blocks, 32, m), np.uint8)
    p = packed[:, : 32 * pairs].reshape(blocks, pairs, 32).transpose(0, 2, 1)
    codes[:, :, : 2 * pairs] = np.stack([p & 15, p >> 4], axis=-1).reshape(blocks, 32, 2 * pairs)
    if m % 2:
        last = packed[:, 32 * pairs:]
        codes[:, :16, m - 1], codes[:, 16:, m - 1] = last & 15, last >> 4
    return np.ascontiguousarray(codes.reshape(blocks * 32, m)[:n])


def decoded_slots(storage, dim, centroids, list_offsets, codes, codebooks, scale, offset, unpack):
    """float64 (total_slots, dim) vectors the codes stand for (binary: +-1 signs)."""
    total = int(list_offsets[-1])
    if storage == "pq4":
        c = unpack(codes, total)
        m = codebooks.shape[0]
        res = np.concatenate([codebooks[j].astype(np.float64)[c[:, j]] for j in range(m)], axis=1)
        lists = np.searchsorted(list_offsets, np.arange(total), side="right") - 1
        return res + centroids.astype(np.float64)[lists]
    if storage == "f32":
        return codes.astype(np.float64)
    if storage == "f16":
        return codes.view(np.float16).astype(np.float64)
    if storage == "int8":
        return offset[:, None].astype(np.float64) + scale[:, None].astype(np.float64) * codes
    bits = np.unpackbits(codes.view(np.uint8).reshape(total, -1), axis=1, bitorder="little")[:, :dim]
    return np.where(bits > 0, 1.0, -1.0)


def _ref_search_ivf(storage, metric, dim, centroids, list_offsets, codes, slot_ids, codebooks, scale, offset,
                    sq_norms, float_rows, slot_rows, float_sq_norms, queries, k, nprobe, rerank, unpack=_ref_unpack):
    q = np.asarray(queries, np.float64)
    c = centroids.astype(np.float64)
    coarse = q @ c.T if metric == "ip" else -(((q[:, None, :] - c[None]) ** 2).sum(-1))
    decoded = decoded_slots(storage, dim, centroids, list_offsets, codes, codebooks, scale, offset, unpack)
    larger = metric == "ip" or (storage == "binary" and metric != "l2")
    if storage == "binary":
        qs = np.where(q > 0, 1.0, -1.0)
        approx = qs @ decoded.T if metric == "ip" else (dim - qs @ decoded.T) / 2  # dim - 2 h, or h
    elif metric == "ip":
        approx = q @ decoded.T
    else:
        approx = ((q[:, None, :] - decoded[None]) ** 2).sum(-1)
    live_total = int((slot_ids >= 0).sum())
    kk = min(k, live_total)
    fill = -np.inf if metric == "ip" else np.inf
    out_s = np.full((q.shape[0], kk), fill, np.float32)
    out_i = np.full((q.shape[0], kk), -1, np.int64)
    for r in range(q.shape[0]):
        lists = np.lexsort((np.arange(c.shape[0]), -coarse[r]))[:nprobe]
        slots = np.concatenate([np.arange(list_offsets[l], list_offsets[l + 1]) for l in lists]).astype(np.int64)
        slots = slots[slot_ids[slots] >= 0]
        ids = slot_ids[slots]
        s = approx[r, slots]
        order = _topk_order(s, ids, rerank if rerank else kk, larger)
        if rerank:
            slots, ids = slots[order], ids[order]
            x = float_rows[slot_rows[slots]].astype(np.float64)
            s = x @ q[r] if metric == "ip" else ((x - q[r]) ** 2).sum(1)
            order = _topk_order(s, ids, kk, metric == "ip")
        out_s[r, : order.size] = s[order]
        out_i[r, : order.size] = ids[order]
    return out_s, out_i


REF = types.SimpleNamespace(kmeans=_ref_kmeans, assign=_ref_assign, pq_train=_ref_pq_train, pq_encode=_ref_pq_encode,
                            pq4_pack=_ref_pack, pq4_unpack=_ref_unpack, search_ivf=_ref_search_ivf)


@pytest.fixture(autouse=True)
def core_or_reference(monkeypatch):
    """The index's _core: the real module, with the reference standing in for what it lacks."""
    if not HAVE_CORE:
        shim = types.SimpleNamespace(**{name: getattr(_core, name) for name in dir(_core) if not name.startswith("__")})
        for name in _API:
            if not hasattr(_core, name):
                setattr(shim, name, getattr(REF, name))
        monkeypatch.setattr(ivf_module, "_core", shim)
    yield


def reference(index, queries, k, nprobe, rerank=0):
    """REF.search_ivf over the index's own arrays (with the core's pq4 unpacking)."""
    a = index.arrays()
    q = np.asarray(queries, np.float32).reshape(-1, index.dim)
    if index.metric == "cosine":
        q = q / np.linalg.norm(q, axis=1, keepdims=True)
    return _ref_search_ivf(
        index.storage, "l2" if index.metric == "l2" else "ip", index.dim, a["centroids"], a["list_offsets"], a["codes"],
        a["slot_ids"], a.get("codebooks"), a.get("scale"), a.get("offset"), a.get("sq_norms"), a.get("float_rows"),
        a.get("slot_rows"), a.get("float_sq_norms"), q, min(k, len(index)), min(nprobe, index.nlist), rerank,
        unpack=ivf_module._core.pq4_unpack,
    )


# ----------------------------------------------------------------------------- data


def data(n=2000, dim=32, n_queries=20, seed=0):
    x = clustered(n + n_queries, dim, n_clusters=20, spread=0.5, seed=seed)
    return x[:n], x[n:]


def exact_ids(x, q, metric, k):
    s = reference_scores(x, q, metric)
    return np.argsort(-s, axis=1, kind="stable")[:, :k]


def recall(found, truth):
    return float(np.mean([len(set(f.tolist()) & set(t.tolist())) / len(t) for f, t in zip(found, truth)]))


def built(storage="pq4", metric="ip", n=2000, dim=32, nlist=16, **kw):
    x, q = data(n, dim)
    index = IVFIndex(dim, metric=metric, storage=storage, nlist=nlist, **kw)
    index.add(x)
    return index, x, q


def test_reference_packing_round_trips():
    rng = np.random.default_rng(0)
    for n, m in ((1, 1), (31, 3), (32, 4), (77, 5), (100, 16)):
        codes = rng.integers(0, 16, (n, m)).astype(np.uint8)
        packed = _ref_pack(codes)
        assert packed.shape == (-(-n // 32), 16 * m)
        np.testing.assert_array_equal(_ref_unpack(packed, n), codes)
        if HAVE_CORE:
            np.testing.assert_array_equal(_core.pq4_unpack(_core.pq4_pack(codes), n), codes)


# ----------------------------------------------------------------------------- defaults and the train rule


def test_defaults():
    assert default_nlist(1_242_251) == 2229  # round(2 sqrt(N)), ScaNN's number of leaves at this size
    assert default_nlist(1000) == 25 and default_nlist(100) == 2 and default_nlist(1) == 1
    assert default_m(384) == 192 and default_m(15) == 5 and default_m(7) == 1 and default_m(1) == 1
    index = IVFIndex(384)
    assert (index.metric, index.storage, index.keep_float, index.m, index.nlist, index.device) == \
        ("ip", "pq4", True, 192, None, "cpu")
    assert index.anisotropic_threshold is None and not index.is_trained
    assert IVFIndex(8, storage="f32").m is None
    assert ivf_module.DEFAULT_NPROBE == 32 and ivf_module.MIN_TRAIN == 256


def test_first_add_trains_on_its_own_vectors_when_large_enough():
    x, _ = data(600, 16)
    index = IVFIndex(16)  # nlist=None: default_nlist(600) lists
    with pytest.raises(ValueError, match=r"call train\(\) with more vectors"):
        index.add(x[:255])  # fewer than max(nlist or 1, 256)
    assert len(index) == 0 and not index.is_trained and 0 not in index
    index.add(x)
    assert index.is_trained and index.nlist == default_nlist(600) and len(index) == 600
    # nlist above 256: the first add needs nlist vectors
    big = IVFIndex(16, nlist=300)
    with pytest.raises(ValueError, match=r"max\(nlist or 1, 256\) = 300"):
        big.add(x[:299])
    big.add(x[:300])
    assert big.nlist == 300


def test_explicit_train_then_small_adds():
    x, q = data(1000, 16)
    index = IVFIndex(16, nlist=8)
    index.train(x)
    assert index.is_trained and len(index) == 0 and index.nlist == 8
    assert index.search(q, k=5)[1].shape == (q.shape[0], 0)  # trained, empty: (q, 0)
    index.add(x[:3])
    index.add(x[3:10])
    assert len(index) == 10 and sorted(index.ids.tolist()) == list(range(10))
    with pytest.raises(ValueError, match="already holds vectors"):
        index.train(x)
    with pytest.raises(ValueError, match="at least nlist"):
        IVFIndex(16, nlist=50).train(x[:49])
    with pytest.raises(ValueError, match="at least 16"):
        IVFIndex(16, nlist=2).train(x[:10])
    IVFIndex(16, storage="f32", nlist=2).train(x[:10])  # only pq4 needs 16 for its codebooks


def test_untrained_index_searches_as_an_empty_index():
    index = IVFIndex(8)
    scores, ids = index.search(np.ones(8, np.float32), k=3)
    assert scores.shape == ids.shape == (1, 0) and scores.dtype == np.float32 and ids.dtype == np.int64
    with pytest.raises(ValueError, match="dimension 8"):
        index.search(np.ones(7, np.float32))


@pytest.mark.parametrize("metric", ["ip", "cosine", "l2"])
def test_add_assigns_each_vector_to_its_nearest_centroid(metric):
    index, x, _ = built("f32", metric, n=1500, dim=16, nlist=12)
    a = index.arrays()
    c = a["centroids"].astype(np.float64)
    if metric != "l2":  # spherical k-means: unit centroids
        np.testing.assert_allclose(np.linalg.norm(c, axis=1), 1, atol=1e-5)
    live = np.flatnonzero(a["slot_ids"] >= 0)
    lists = np.searchsorted(a["list_offsets"], live, side="right") - 1
    v = a["float_rows"][a["slot_rows"][live]].astype(np.float64)
    s = v @ c.T if metric != "l2" else -(((v[:, None] - c[None]) ** 2).sum(-1))
    best = s[np.arange(live.size), lists]
    assert np.all(best >= s.max(axis=1) - 1e-5)
    np.testing.assert_array_equal(index.list_sizes, np.diff(np.concatenate([[0], np.cumsum(a["slot_ids"] >= 0)])[a["list_offsets"]]))
    assert index.list_sizes.sum() == 1500


def test_layout():
    index, x, _ = built("pq4", n=1000, dim=16, nlist=8, m=4)
    a = index.arrays()
    off = a["list_offsets"]
    assert off.dtype == np.int64 and off.shape == (9,) and np.all(off % 32 == 0)
    total = int(off[-1])
    assert a["codes"].shape == (total // 32, 16 * 4) and a["codes"].dtype == np.uint8
    assert a["codebooks"].shape == (4, 16, 4) and a["centroids"].shape == (8, 16)
    assert a["slot_ids"].shape == a["slot_rows"].shape == (total,)
    assert np.array_equal(a["slot_ids"] >= 0, a["slot_rows"] >= 0)
    assert sorted(a["slot_ids"][a["slot_ids"] >= 0].tolist()) == list(range(1000))
    # each slot's row holds its own vector (ids are automatic: id == row here)
    live = a["slot_ids"] >= 0
    np.testing.assert_array_equal(a["slot_rows"][live], a["slot_ids"][live])
    np.testing.assert_array_equal(a["float_rows"], x)
    unpacked = ivf_module._core.pq4_unpack(a["codes"], total)
    assert unpacked.shape == (total, 4) and unpacked.max() <= 15
    for storage in ("f32", "f16", "int8", "binary"):
        a = built(storage, "l2", n=400, dim=16, nlist=4)[0].arrays()
        assert int(a["list_offsets"][-1]) == 400  # no padding
        assert ("scale" in a) == ("offset" in a) == (storage == "int8")
        assert ("sq_norms" in a) == (storage != "binary")
        assert a["float_sq_norms"].shape == (400,)


# ----------------------------------------------------------------------------- search


@pytest.mark.parametrize("storage", STORAGES)
@pytest.mark.parametrize("metric", ["ip", "cosine", "l2"])
def test_nprobe_nlist_is_the_exhaustive_search_over_the_same_codes(storage, metric):
    """Every storage x metric against REF (float64 over the decoded codes): with rerank the ids are
    exact (up to float32 ties); without, the scores agree within the codes' scoring error."""
    index, x, q = built(storage, metric, n=800, dim=16, nlist=8)
    ref_s, ref_i = reference(index, q, 10, index.nlist, rerank=40)
    s, i = index.search(q, k=10, nprobe=index.nlist, rerank=40)
    assert s.shape == i.shape == (q.shape[0], 10)
    np.testing.assert_allclose(s, ref_s, rtol=1e-4, atol=1e-4)
    assert recall(i, ref_i) >= 0.99
    s, i = index.search(q, k=10, nprobe=1000)  # clamped to nlist: the same
    ref_s, ref_i = reference(index, q, 10, index.nlist)
    # pq4 scores come from 8-bit lookup tables (measured: within 0.009 of the decoded codes' float64
    # scores here, for scores of magnitude <= 1); the other codecs score their codes in float32
    tol = 0.02 if storage == "pq4" else 1e-3 * max(1.0, float(np.abs(ref_s).max()))
    np.testing.assert_allclose(s, ref_s, atol=tol)
    assert recall(i, ref_i) >= (0.9 if storage == "pq4" else 0.95)
    all_s, all_i = reference(index, q, len(index), index.nlist)  # every id's score from its codes
    for row in range(q.shape[0]):
        of = dict(zip(all_i[row].tolist(), all_s[row].tolist()))
        np.testing.assert_allclose(s[row], [of[j] for j in i[row]], atol=tol)


@pytest.mark.parametrize("dim, m", [(7, None), (15, None), (15, 3), (12, 12), (3, 1)])
def test_odd_dims_and_sub_quantizer_counts(dim, m):
    """pq4 for odd dims (m = 1 and 5 sub-quantizers by default: an odd m fills half a 32-byte pair)
    and one dimension per sub-quantizer: probing every list and re-ranking everything is exact."""
    x, q = data(600, dim)
    index = IVFIndex(dim, nlist=5, m=m)
    index.add(x)
    assert index.m == (m or default_m(dim)) and index.arrays()["codes"].shape[1] == 16 * index.m
    s, i = index.search(q, k=10, nprobe=5, rerank=600)
    np.testing.assert_array_equal(i, exact_ids(x, q, "ip", 10))
    ref_s, ref_i = reference(index, q, 10, 5)
    got_s, got_i = index.search(q, k=10, nprobe=5)
    np.testing.assert_allclose(got_s, ref_s, atol=0.05)


@pytest.mark.parametrize("storage", STORAGES)
def test_recall_against_exact_float64(storage):
    """recall@10 against exact float64 search, 4000 clustered 32-d vectors, 32 lists, nprobe 8:
    with rerank=100 >= 0.9 for every storage but binary (32 sign bits say little: rerank=400 there)."""
    index, x, q = built(storage, "ip", n=4000, dim=32, nlist=32)
    truth = exact_ids(x, q, "ip", 10)
    depth = 400 if storage == "binary" else 100
    _, i = index.search(q, k=10, nprobe=8, rerank=depth)
    assert recall(i, truth) >= 0.9, storage
    _, i_all = index.search(q, k=10, nprobe=32, rerank=depth)
    assert recall(i_all, truth) >= recall(i, truth) - 1e-9


def test_pq4_recall_thresholds():
    """pq4, 4000 clustered 32-d unit vectors, nlist 32, m 16: recall@10 without rerank >= 0.4 at
    nprobe 32; with rerank 50 at nprobe 8 >= 0.9; nprobe 1 < nprobe 8 (the probes matter)."""
    index, x, q = built("pq4", "ip", n=4000, dim=32, nlist=32)
    truth = exact_ids(x, q, "ip", 10)
    assert recall(index.search(q, k=10, nprobe=32)[1], truth) >= 0.4
    assert recall(index.search(q, k=10, nprobe=8, rerank=50)[1], truth) >= 0.9
    assert recall(index.search(q, k=10, nprobe=1, rerank=50)[1], truth) < \
        recall(index.search(q, k=10, nprobe=8, rerank=50)[1], truth) + 1e-9


def test_result_rule_and_padding():
    index, x, q = built("pq4", n=1000, dim=16, nlist=20)
    for queries, nq in ((q[0], 1), (q[:1], 1), (q, q.shape[0]), (q.tolist(), q.shape[0])):
        s, i = index.search(queries, k=5)
        assert s.shape == i.shape == (nq, 5) and s.dtype == np.float32 and i.dtype == np.int64
    s, i = index.search(q, k=10**9, nprobe=1)  # k' = len(index); one list holds fewer: padded
    assert s.shape == (q.shape[0], 1000)
    assert np.all((i == -1) == np.isneginf(s)) and (i == -1).any()
    for row in range(q.shape[0]):
        valid = i[row][i[row] >= 0]
        assert len(set(valid.tolist())) == valid.size and np.all(i[row][valid.size:] == -1)
        assert np.all(np.diff(s[row][: valid.size]) <= 1e-6)  # best first
    lindex, _, _ = built("f32", "l2", n=600, dim=16, nlist=12)
    s, i = lindex.search(q, k=600, nprobe=1)
    assert np.all((i == -1) == np.isposinf(s)) and (i == -1).any()
    assert np.all(np.diff(s[0][i[0] >= 0]) >= -1e-6)  # l2: smallest first


def test_ties_by_smaller_id():
    x = np.tile(np.eye(8, dtype=np.float32), (40, 1))  # each direction 40 times
    index = IVFIndex(8, storage="f32", nlist=8)
    ids = index.add(x, ids=np.arange(320)[::-1] * 3)
    s, i = index.search(np.eye(8, dtype=np.float32)[:1], k=5, nprobe=8)
    same = np.sort(ids[np.flatnonzero(x[:, 0] == 1)])[:5]
    np.testing.assert_array_equal(i[0], same)


def test_nprobe_and_rerank_are_per_call():
    index, x, q = built("pq4", n=1000, dim=16, nlist=16)
    a = index.search(q, k=10, nprobe=2)
    index.search(q, k=10, nprobe=16, rerank=50)
    b = index.search(q, k=10, nprobe=2)
    np.testing.assert_array_equal(a[1], b[1])
    # nprobe=None is min(nlist, 32)
    np.testing.assert_array_equal(index.search(q, k=10)[1], index.search(q, k=10, nprobe=16)[1])


@pytest.mark.skipif(not HAVE_CORE, reason="thread counts are the core's")
def test_results_identical_for_every_thread_count():
    index, x, q = built("pq4", n=2000, dim=32, nlist=16)
    before = flatcoat.get_num_threads()
    try:
        out = []
        for threads in (1, 2):
            flatcoat.set_num_threads(threads)
            fresh = IVFIndex(32, nlist=16)
            fresh.add(x)
            out.append((fresh.arrays()["centroids"], fresh.search(q, k=10, nprobe=4), fresh.search(q, k=10, rerank=30)))
    finally:
        flatcoat.set_num_threads(before)
    np.testing.assert_array_equal(out[0][0], out[1][0])
    for a, b in zip(out[0][1:], out[1][1:]):
        np.testing.assert_array_equal(a[0], b[0])
        np.testing.assert_array_equal(a[1], b[1])


@pytest.mark.skipif(not HAVE_CORE, reason="ISAs are the core's")
@pytest.mark.parametrize("storage", STORAGES)
def test_every_isa_gives_the_same_results(storage, restore_isa):
    index, x, q = built(storage, "ip", n=1500, dim=24, nlist=8)
    isas = [isa for isa in _core.compiled_isas() if _core.cpu_supports(isa)]
    results = []
    for isa in isas:
        _core.set_active_isa(isa)
        results.append((isa, index.search(q, k=10, nprobe=3), index.search(q, k=10, nprobe=3, rerank=40)))
    for isa, plain, reranked in results[1:]:
        np.testing.assert_array_equal(plain[1], results[0][1][1], err_msg=isa)
        np.testing.assert_array_equal(reranked[1], results[0][2][1], err_msg=isa)
        np.testing.assert_allclose(plain[0], results[0][1][0], rtol=1e-5, atol=1e-5, err_msg=isa)


@pytest.mark.skipif(not HAVE_CORE, reason="anisotropic encoding is the core's")
def test_anisotropic_quantization_builds_and_searches():
    x, q = data(3000, 32)
    truth = exact_ids(x, q, "ip", 10)
    found = {}
    for t in (None, 0.2):
        index = IVFIndex(32, nlist=16, anisotropic_threshold=t)
        index.add(x)
        found[t] = recall(index.search(q, k=10, nprobe=16)[1], truth)
        assert recall(index.search(q, k=10, nprobe=16, rerank=100)[1], truth) >= 0.9
    assert found[0.2] >= found[None] - 0.15, found


# ----------------------------------------------------------------------------- ids, remove, tombstones


def test_ids_membership_and_automatic_ids():
    index, x, _ = built("f32", n=400, dim=16, nlist=4)
    assert 0 in index and 399 in index and 400 not in index and "0" not in index and True not in index
    assert index.add(x[:2]).tolist() == [400, 401]
    assert index.add(x[:1], ids=[10**6]).tolist() == [10**6]
    assert index.add(x[:1]).tolist() == [10**6 + 1]
    with pytest.raises(ValueError, match="already in the index"):
        index.add(x[:2], ids=[5, 10**7])
    assert 10**7 not in index and len(index) == 404  # all or nothing
    with pytest.raises(ValueError, match="repeated"):
        index.add(x[:2], ids=[10**7, 10**7])
    index.add(x[:1], ids=[2**63 - 1])
    with pytest.raises(ValueError, match="no automatic ids left"):
        index.add(x[:2])


@pytest.mark.parametrize("storage", ["pq4", "int8"])
def test_remove_tombstones_and_compaction(storage):
    index, x, q = built(storage, n=1000, dim=16, nlist=8)
    total = index.arrays()["slot_ids"].size
    with pytest.raises(KeyError, match="not in the index"):
        index.remove([3, 5000])
    assert 3 in index and len(index) == 1000
    gone = np.arange(0, 200, 2)
    assert index.remove(gone) == 100
    a = index.arrays()
    assert a["slot_ids"].size == total and (a["slot_ids"] == -1).sum() >= 100  # tombstones, not yet compacted
    assert len(index) == 900 and all(int(g) not in index for g in gone) and 1 in index
    s, i = index.search(q, k=900, nprobe=8, rerank=900)
    assert not np.isin(i, gone).any() and set(i[0].tolist()) == set(range(1000)) - set(gone.tolist())
    assert index.remove(np.arange(200, 500)) == 300  # past a quarter of the slots: compacted
    a = index.arrays()
    assert (a["slot_ids"] >= 0).sum() == 600 and a["float_rows"].shape[0] == 600
    live = a["slot_ids"] >= 0
    np.testing.assert_array_equal(a["float_rows"][a["slot_rows"][live]], x[a["slot_ids"][live]])
    assert set(index.ids.tolist()) == set(range(1000)) - set(gone.tolist()) - set(range(200, 500))
    s, i = index.search(q, k=10, nprobe=8, rerank=50)
    truth = exact_ids(x[sorted(index.ids)], q, "ip", 10)
    assert recall(i, np.array(sorted(index.ids))[truth]) >= 0.9
    # add after removals: the lists are rebuilt without tombstones
    index.remove([501])
    index.add(x[:5], ids=[0, 2, 4, 6, 8])
    assert (index.arrays()["slot_ids"] >= 0).sum() == len(index) == 604
    assert index.remove([]) == 0


def test_removed_rows_do_not_pile_up_over_remove_add_cycles():
    index, x, q = built("pq4", n=400, dim=16, nlist=4)
    for cycle in range(6):
        gone = index.ids[:60]
        index.remove(gone)  # 60 of >= 400 slots: below a quarter, tombstones stay
        index.add(x[:60], ids=10_000 + cycle * 100 + np.arange(60))  # the add drops the tombstones
        rows = index.arrays()["float_rows"].shape[0]
        assert rows - len(index) <= 0.25 * rows and len(index) == 400  # removed rows: at most a quarter
    a = index.arrays()
    live = a["slot_ids"] >= 0
    np.testing.assert_array_equal(a["float_rows"][a["slot_rows"][live]],
                                  x[np.where(a["slot_ids"][live] >= 10_000, (a["slot_ids"][live] - 10_000) % 100,
                                             a["slot_ids"][live])])


def test_remove_everything():
    index, x, q = built("pq4", n=300, dim=8, nlist=4)
    index.remove(index.ids)
    assert len(index) == 0
    assert index.search(q, k=3)[1].shape == (q.shape[0], 0)
    index.add(x[:10])
    assert len(index) == 10 and index.search(q, k=3, nprobe=4)[1].shape == (q.shape[0], 3)


# ----------------------------------------------------------------------------- persistence


@pytest.mark.parametrize("storage, metric", [("pq4", "ip"), ("pq4", "l2"), ("int8", "cosine"), ("binary", "ip"), ("f16", "l2")])
def test_save_load_round_trip(tmp_path, storage, metric):
    index, x, q = built(storage, metric, n=700, dim=16, nlist=8)
    index.remove([1, 2, 3])
    expected = index.search(q, k=10, nprobe=3, rerank=30), index.search(q, k=10, nprobe=8)
    index.save(tmp_path / "ivf")
    assert (index.arrays()["slot_ids"] == -1).sum() < 32 * 8 or storage != "pq4"  # compacted by save
    for mmap in (True, False):
        loaded = flatcoat.load(tmp_path / "ivf", mmap=mmap)
        assert isinstance(loaded, IVFIndex) and repr(loaded) == repr(index)
        assert len(loaded) == 697 and 1 not in loaded and 4 in loaded
        got = loaded.search(q, k=10, nprobe=3, rerank=30), loaded.search(q, k=10, nprobe=8)
        for e, g in zip(expected, got):
            np.testing.assert_array_equal(e[1], g[1])
            np.testing.assert_array_equal(e[0], g[0])
        for name, a in index.arrays().items():
            np.testing.assert_array_equal(a, loaded.arrays()[name], err_msg=name)
    assert loaded.add(x[:1]).tolist() == [700]


def test_mmap_keeps_the_candidate_side_on_disk_and_the_codes_resident(tmp_path):
    index, x, q = built("pq4", n=1000, dim=32, nlist=8)
    index.save(tmp_path / "ivf")
    loaded = flatcoat.load(tmp_path / "ivf", mmap=True)
    lists = loaded._lists
    assert not ivf_module._is_mapped(lists["codes"]) and not ivf_module._is_mapped(lists["list_offsets"])
    assert ivf_module._is_mapped(lists["slot_ids"])  # read only for candidates, never streamed
    assert ivf_module._is_mapped(loaded._floats.view("float_rows"))
    a = loaded.arrays()
    candidate_bytes = 1000 * 32 * 4 + a["slot_rows"].nbytes + a["slot_ids"].nbytes
    assert loaded.nbytes == index.nbytes
    assert loaded.resident_nbytes == loaded.nbytes - candidate_bytes
    assert index.resident_nbytes == index.nbytes  # in memory: everything is resident
    # pq4 with m = dim / 2 = 16: m / 2 = 8 bytes of codes per vector, plus padding (at most 31
    # slots of 16 bytes per list), centroids, codebooks and offsets
    per_vector = loaded.resident_nbytes / len(loaded)
    assert 8 <= per_vector <= 8 + (8 * 31 * 16 + 8 * 32 * 4 + 16 * 16 * 2 * 4 + 9 * 8) / 1000
    s, i = loaded.search(q, k=10, rerank=40)
    np.testing.assert_array_equal(i, index.search(q, k=10, rerank=40)[1])
    loaded.remove([0])  # a tombstone: the float copy stays mapped
    assert ivf_module._is_mapped(loaded._floats.view("float_rows"))
    loaded.add(x[:2], ids=[5000, 5001])  # a change of the float copy: copied into memory
    assert not ivf_module._is_mapped(loaded._floats.view("float_rows"))
    assert loaded.resident_nbytes == loaded.nbytes
    flatcoat.load(tmp_path / "ivf").search(q, k=3)  # the saved directory is unchanged


def test_cpu_only_for_now(tmp_path):
    index, _, _ = built("f16", n=300, dim=8, nlist=2)
    assert index.to("cpu") is index and index.device == "cpu"
    with pytest.raises(ValueError, match="CPU only"):
        index.to("cuda:0")
    index.save(tmp_path / "i")
    with pytest.raises(ValueError, match="CPU only"):
        flatcoat.load(tmp_path / "i", device="cuda")


def test_untrained_index_round_trips(tmp_path):
    IVFIndex(8, storage="f16", nlist=4, keep_float=False).save(tmp_path / "u")
    loaded = flatcoat.load(tmp_path / "u")
    assert not loaded.is_trained and loaded.nlist == 4 and loaded.storage == "f16" and not loaded.keep_float
    x, _ = data(300, 8)
    loaded.add(x)
    assert loaded.is_trained and len(loaded) == 300


def test_inconsistent_directories_are_index_format_errors(tmp_path):
    import json
    index, _, _ = built("pq4", n=500, dim=8, nlist=4)
    index.save(tmp_path / "ivf")
    manifest = tmp_path / "ivf" / "manifest.json"
    good = manifest.read_text()
    for change, match in (
        (lambda m: m["meta"].update(count=499), "live slots"),
        (lambda m: m["meta"].update(m=3), "invalid parameters"),
        (lambda m: m["meta"].pop("nlist"), "lacks 'nlist'"),
        (lambda m: m["files"].pop("codebooks"), "codebooks.npy: missing"),
    ):
        m = json.loads(good)
        change(m)
        manifest.write_text(json.dumps(m))
        with pytest.raises(flatcoat.IndexFormatError, match=match):
            flatcoat.load(tmp_path / "ivf")
    manifest.write_text(good)
    flatcoat.load(tmp_path / "ivf")


def _rewrite_array(path, name, array):
    """Replaces ``name``.npy and makes the manifest agree (size, CRC, dtype, shape): the index's own checks run."""
    import json
    import zlib
    file = path / f"{name}.npy"
    np.save(file, array)
    data = file.read_bytes()
    m = json.loads((path / "manifest.json").read_text())
    m["files"][name].update(size=len(data), crc32=zlib.crc32(data), dtype=array.dtype.str, shape=list(array.shape))
    (path / "manifest.json").write_text(json.dumps(m))


@pytest.mark.parametrize("name, change, match", [
    ("slot_rows", lambda a: np.where(a == 3, 10_000, a), "rows beyond"),
    ("slot_rows", lambda a: np.where(a == 3, 4, a), "used twice"),
    ("slot_rows", lambda a: np.where(a == 3, -1, a), "a row for every live slot"),
    ("slot_ids", lambda a: np.where(a == 3, 4, a), "appears twice"),
    ("slot_ids", lambda a: np.where(a == 3, -5, a), "non-negative"),
    ("list_offsets", lambda a: a[::-1].copy(), "start at 0"),
    ("list_offsets", lambda a: np.where(np.arange(a.size) == 1, a[1] + 1, a), "multiples of 32"),
    ("codes", lambda a: a[:-1].copy(), "codes.npy: expected"),
    ("centroids", lambda a: a[:, :-1].copy(), "centroids.npy: expected"),
    ("codebooks", lambda a: np.full_like(a, np.nan), "not finite"),
    ("slot_ids", lambda a: a.astype(np.int32), "slot_ids.npy: expected"),
])
def test_inconsistent_arrays_are_index_format_errors(tmp_path, name, change, match):
    index, _, _ = built("pq4", n=500, dim=8, nlist=4)
    index.save(tmp_path / "ivf")
    _rewrite_array(tmp_path / "ivf", name, change(np.load(tmp_path / "ivf" / f"{name}.npy")))
    with pytest.raises(flatcoat.IndexFormatError, match=match):
        flatcoat.load(tmp_path / "ivf")


# ----------------------------------------------------------------------------- bad input


def test_constructor_checks():
    with pytest.raises(TypeError):
        IVFIndex(8, "ip")
    with pytest.raises(TypeError, match="dim"):
        IVFIndex(8.0)
    with pytest.raises(ValueError, match="metric"):
        IVFIndex(8, metric="dot")
    with pytest.raises(ValueError, match="storage"):
        IVFIndex(8, storage="pq8")
    with pytest.raises(ValueError, match="nlist"):
        IVFIndex(8, nlist=0)
    with pytest.raises(TypeError, match="nlist"):
        IVFIndex(8, nlist=4.0)
    with pytest.raises(TypeError, match="keep_float"):
        IVFIndex(8, keep_float="no")
    with pytest.raises(ValueError, match="m: must divide dim"):
        IVFIndex(8, m=3)
    with pytest.raises(ValueError, match="only for storage='pq4'"):
        IVFIndex(8, storage="f32", m=4)
    with pytest.raises(ValueError, match="anisotropic_threshold"):
        IVFIndex(8, metric="l2", anisotropic_threshold=0.2)
    with pytest.raises(ValueError, match="anisotropic_threshold"):
        IVFIndex(8, storage="int8", anisotropic_threshold=0.2)
    with pytest.raises(ValueError, match="anisotropic_threshold"):
        IVFIndex(8, anisotropic_threshold=-1)
    with pytest.raises(TypeError, match="anisotropic_threshold"):
        IVFIndex(8, anisotropic_threshold="0.2")
    with pytest.raises(ValueError, match="CPU only"):
        IVFIndex(8, device="cuda")
    with pytest.raises(TypeError, match="device"):
        IVFIndex(8, device=0)
    assert IVFIndex(8, m=np.int64(2), nlist=np.int32(3), keep_float=np.bool_(False)).m == 2


def test_search_checks():
    index, x, q = built("pq4", n=400, dim=16, nlist=4, keep_float=False)
    with pytest.raises(ValueError, match="nprobe: must be at least 1"):
        index.search(q, nprobe=0)
    with pytest.raises(ValueError, match="nprobe"):
        index.search(q, nprobe=-3)
    with pytest.raises(TypeError, match="nprobe"):
        index.search(q, nprobe=2.0)
    with pytest.raises(TypeError, match="nprobe"):
        index.search(q, nprobe=True)
    with pytest.raises(ValueError, match="k: must be at least 1"):
        index.search(q, k=0)
    with pytest.raises(ValueError, match="keep_float=True"):
        index.search(q, k=5, rerank=10)
    with pytest.raises(ValueError, match="dimension 16"):
        index.search(np.ones((2, 15), np.float32))
    with pytest.raises(ValueError, match="NaN"):
        index.search(np.full(16, np.nan, np.float32))
    with pytest.raises(TypeError, match="floating"):
        index.search(np.ones(16, np.int32))
    with pytest.raises(ValueError, match="dimension 16"):
        index.add(np.ones((3, 8), np.float32))
    with pytest.raises(TypeError):
        index.search(q, 5, 2)  # nprobe is keyword-only
    windex, _, _ = built("pq4", n=400, dim=16, nlist=4)
    with pytest.raises(ValueError, match="rerank: must be at least k"):
        windex.search(q, k=10, rerank=5)
    with pytest.raises(ValueError, match="all zeros"):
        IVFIndex(4, metric="cosine").search(np.zeros(4, np.float32))


# ----------------------------------------------------------------------------- concurrency


def test_concurrent_searches_with_an_add():
    index, x, q = built("pq4", n=2000, dim=32, nlist=16)
    extra = data(600, 32, seed=3)[0]
    errors, results = [], []

    def searcher():
        try:
            for _ in range(15):
                s, i = index.search(q, k=10, nprobe=4, rerank=20)
                assert s.shape == (q.shape[0], 10) and (i >= 0).all()
                results.append(i)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=searcher) for _ in range(3)]
    for t in threads:
        t.start()
    index.add(extra[:300])
    index.remove(np.arange(50))
    index.add(extra[300:])
    for t in threads:
        t.join()
    assert not errors, errors
    assert len(index) == 2550 and len(results) == 45
    truth_after = index.search(q, k=10, nprobe=4, rerank=20)[1]
    assert not np.isin(truth_after, np.arange(50)).any()


def test_concurrent_searches_with_their_own_nprobe_and_rerank():
    """nprobe and rerank are per call: threads searching with different ones get what each would alone."""
    index, x, q = built("pq4", n=2000, dim=32, nlist=16)
    settings = [(1, None), (4, 20), (16, 100), (8, None)]
    alone = {st: index.search(q, k=10, nprobe=st[0], rerank=st[1]) for st in settings}
    errors = []

    def searcher(st):
        try:
            for _ in range(10):
                s, i = index.search(q, k=10, nprobe=st[0], rerank=st[1])
                np.testing.assert_array_equal(i, alone[st][1])
                np.testing.assert_array_equal(s, alone[st][0])
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=searcher, args=(st,)) for st in settings]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors


def test_repr_and_nbytes():
    index, _, _ = built("pq4", n=500, dim=16, nlist=4)
    assert repr(index) == "IVFIndex(dim=16, metric='ip', storage='pq4', nlist=4, m=8, keep_float=True, count=500)"
    a = index.arrays()
    assert index.nbytes == sum(v.nbytes for v in a.values())
    a["codes"][:] = 0  # copies
    assert index.arrays()["codes"].any()
