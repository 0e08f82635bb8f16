"""The product quantizer and IVF search in the core (flatcoat._core): pq_train /
pq_encode (plain and anisotropic), the fast-scan layout, search_ivf over pq4
lists against a float64 numpy reference of the decoded codes (within the
stated LUT-quantization bound), recall with re-ranking, every ISA and thread
count giving the same ids, the dense list storages against exhaustive search,
the result rule and bad input."""

import numpy as np
import pytest

from flatcoat import _core
from conftest import clustered


def _usable_isas():
    return [isa for isa in _core.compiled_isas() if _core.cpu_supports(isa)]


# ----------------------------------------------------------------------------- building an index by hand


def _build(x, nlist, storage="pq4", metric="ip", m=None, seed=0, eta=0.0, remove=()):
    """The arrays search_ivf takes, built the way the design says (CSR over lists, residual pq4
    codes padded to 32 slots per list, dense rows otherwise); `remove` rows become tombstones."""
    n, dim = x.shape
    centroids = _core.kmeans(x, nlist, seed=seed, spherical=metric == "ip")
    labels = _core.assign(x, centroids, metric)
    out = dict(storage=storage, metric=metric, dim=dim, centroids=centroids, labels=labels,
               codebooks=None, scale=None, offset=None, sq_norms=None)
    ids = np.arange(n, dtype=np.int64) + 1000  # user ids differ from rows
    ids[list(remove)] = -1
    offsets, slot_ids, slot_rows, parts = [0], [], [], []
    if storage == "pq4":
        m = m or dim // 2
        residuals = (x - centroids[labels]).astype(np.float32)
        books = _core.pq_train(residuals, m, seed=seed)
        if eta:
            codes = _core.pq_encode(residuals, books, originals=x, eta=eta)
        else:
            codes = _core.pq_encode(residuals, books)
        out.update(codebooks=books, codes_flat=codes)
    for l in range(nlist):
        rows = np.flatnonzero(labels == l)
        pad = (-len(rows)) % 32 if storage == "pq4" else 0
        slot_ids += list(ids[rows]) + [-1] * pad
        slot_rows += list(rows) + [-1] * pad
        offsets.append(offsets[-1] + len(rows) + pad)
        parts.append(rows)
    order = np.concatenate(parts)
    if storage == "pq4":
        codes = np.concatenate([_core.pq4_pack(np.ascontiguousarray(out["codes_flat"][rows])) for rows in parts])
    elif storage == "f32":
        codes = x[order]
    elif storage == "f16":
        codes = x[order].astype(np.float16).view(np.uint16)
    elif storage == "int8":
        lo, hi = x[order].min(1), x[order].max(1)
        scale = ((hi - lo) / 255).astype(np.float32)
        codes = np.clip(np.round((x[order] - lo[:, None]) / scale[:, None]), 0, 255).astype(np.uint8)
        out.update(scale=scale, offset=lo.astype(np.float32))
    else:
        codes = _core.binarize(np.ascontiguousarray(x[order]))
    if storage in ("f32", "f16", "int8") and metric == "l2":
        decoded = _decode_dense(storage, codes, out["scale"], out["offset"])
        out["sq_norms"] = (decoded.astype(np.float64) ** 2).sum(1).astype(np.float32)
    out.update(codes=np.ascontiguousarray(codes), list_offsets=np.array(offsets, np.int64),
               slot_ids=np.array(slot_ids, np.int64), slot_rows=np.array(slot_rows, np.int64),
               float_rows=x, float_sq_norms=(x.astype(np.float64) ** 2).sum(1).astype(np.float32), ids=ids)
    return out


def _decode_dense(storage, codes, scale, offset):
    if storage == "f32":
        return codes
    if storage == "f16":
        return codes.view(np.float16).astype(np.float32)
    return offset[:, None] + scale[:, None] * codes.astype(np.float32)


def _search(ix, q, k, nprobe, rerank=0, keep_float=True):
    return _core.search_ivf(ix["storage"], ix["metric"], ix["dim"], ix["centroids"], ix["list_offsets"],
                            ix["codes"], ix["slot_ids"], ix["codebooks"], ix["scale"], ix["offset"],
                            ix["sq_norms"], ix["float_rows"] if keep_float else None,
                            ix["slot_rows"] if keep_float else None,
                            ix["float_sq_norms"] if keep_float else None, q, k, nprobe, rerank)


def _decoded_pq(ix):
    """float64 decoded vectors, row order: centroid + codewords."""
    books, codes = ix["codebooks"].astype(np.float64), ix["codes_flat"]
    m = books.shape[0]
    return ix["centroids"][ix["labels"]].astype(np.float64) + books[np.arange(m), codes].reshape(len(codes), -1)


def _lut_bound(ix, q, list_id):
    """m / (2a): the stated bound on |approximate - decoded| score for query q in list `list_id`."""
    books = ix["codebooks"].astype(np.float64)
    m, _, ds = books.shape
    qs = q.astype(np.float64).reshape(m, 1, ds)
    if ix["metric"] == "ip":
        table = (qs * books).sum(-1)
    else:
        r = (q - ix["centroids"][list_id]).astype(np.float64).reshape(m, 1, ds)
        table = -((r - books) ** 2).sum(-1)
    span = table.max(1) - table.min(1)
    a = min(255 / span.max(), (65535 - 0.5 * m) / span.sum())
    return m / (2 * a)


def _exact(x, q, metric):
    x, q = x.astype(np.float64), q.astype(np.float64)
    if metric == "ip":
        return q @ x.T
    return ((q * q).sum(1)[:, None] - 2 * q @ x.T + (x * x).sum(1)[None])


def _recall(found, truth):
    return np.mean([len(set(a) & set(b)) / len(b) for a, b in zip(found, truth)])


# ----------------------------------------------------------------------------- PQ training, encoding, layout


@pytest.mark.parametrize("n,m", [(1, 1), (31, 3), (32, 4), (33, 5), (100, 8), (257, 192)])
def test_pack_unpack_round_trip(n, m):
    rng = np.random.default_rng(n)
    codes = rng.integers(0, 16, (n, m), dtype=np.uint8)
    packed = _core.pq4_pack(codes)
    assert packed.shape == ((n + 31) // 32, 16 * m) and packed.dtype == np.uint8
    np.testing.assert_array_equal(_core.pq4_unpack(packed, n), codes)
    # The documented layout: per sub-quantizer 16 bytes, vector j low nibble, vector j + 16 high.
    padded = np.zeros(((n + 31) // 32 * 32, m), np.uint8)
    padded[:n] = codes
    blocks = padded.reshape(-1, 2, 16, m)  # block, half, j, s
    expect = (blocks[:, 0] | (blocks[:, 1] << 4)).transpose(0, 2, 1).reshape(len(blocks), 16 * m)
    np.testing.assert_array_equal(packed, expect)


def test_pack_rejects_codes_above_15_and_unpack_checks_n():
    with pytest.raises(ValueError, match="0..15"):
        _core.pq4_pack(np.full((3, 2), 16, np.uint8))
    with pytest.raises(ValueError, match="at most 32"):
        _core.pq4_unpack(np.zeros((1, 32), np.uint8), 33)
    with pytest.raises(ValueError, match="16 \\* m"):
        _core.pq4_unpack(np.zeros((1, 30), np.uint8), 3)


def test_train_and_plain_encode_pick_the_nearest_codeword():
    x = clustered(3000, 24, n_clusters=10, seed=1)
    books = _core.pq_train(x, 8, seed=0)
    assert books.shape == (8, 16, 3)
    np.testing.assert_array_equal(books, _core.pq_train(x, 8, seed=0))
    codes = _core.pq_encode(x, books)
    sub = x.reshape(len(x), 8, 1, 3).astype(np.float64)
    dist = ((sub - books[None].astype(np.float64)) ** 2).sum(-1)  # n, m, 16
    ref = np.argmin(dist, axis=2)
    chosen = np.take_along_axis(dist, codes[..., None].astype(np.int64), 2)[..., 0]
    best = dist.min(2)
    # The same code, or one whose float64 distance ties the best to float32 rounding.
    assert np.all((codes == ref) | (chosen - best <= 1e-6 * (1 + best)))
    # The codebooks are useful: error well below the data's own spread.
    recon = books[np.arange(8), codes].reshape(len(x), 24)
    assert ((x - recon) ** 2).sum(1).mean() < 0.3 * ((x - x.mean(0)) ** 2).sum(1).mean()
    with pytest.raises(ValueError, match="m: must divide"):
        _core.pq_train(x, 5)
    with pytest.raises(ValueError, match="16 points"):
        _core.pq_train(x[:15], 8)


def test_training_and_encoding_do_not_depend_on_the_thread_count(restore_threads):
    x = clustered(5000, 32, n_clusters=10, seed=9)
    out = []
    for threads in (1, 2):
        _core.set_num_threads(threads)
        books = _core.pq_train(x, 16, seed=3)
        out.append((books, _core.pq_encode(x, books), _core.pq_encode(x, books, originals=x, eta=15.0)))
    for a, b in zip(*out):
        np.testing.assert_array_equal(a, b)


def test_anisotropic_encoding_lowers_the_parallel_error():
    """eta > 0 trades perpendicular for parallel error: the parallel error drops clearly, the
    weighted loss eta * |r_par|^2 + |r_perp|^2 drops, and eta = 0 gives the plain codes."""
    x = clustered(4000, 32, n_clusters=20, seed=2)
    books = _core.pq_train(x, 16, seed=0)
    plain = _core.pq_encode(x, books)
    np.testing.assert_array_equal(_core.pq_encode(x, books, originals=x, eta=0.0), plain)
    eta = 383 * 0.04 / 0.96  # (d - 1) T^2 / (1 - T^2) for unit vectors, T = 0.2, d = 384 (ScaNN's setting)
    aniso = _core.pq_encode(x, books, originals=x, eta=eta)
    np.testing.assert_array_equal(
        _core.pq_encode(x, books, originals=x, eta=np.full(len(x), eta, np.float32)), aniso)

    def errors(codes):
        r = x.astype(np.float64) - books[np.arange(16), codes].reshape(len(x), 32)
        u = x / np.linalg.norm(x, axis=1, keepdims=True)
        par = (r * u).sum(1) ** 2
        return par, (r * r).sum(1) - par

    par0, perp0 = errors(plain)
    par1, perp1 = errors(aniso)
    assert par1.mean() < 0.25 * par0.mean()  # measured: 0.0044 -> 0.00013
    assert (eta * par1 + perp1).mean() < (eta * par0 + perp0).mean()
    assert np.all(eta * par1 + perp1 <= eta * par0 + perp0 + 1e-5)  # descent never makes a vector worse


# ----------------------------------------------------------------------------- pq4 search


@pytest.mark.parametrize("metric", ["ip", "l2"])
@pytest.mark.parametrize("dim,m", [(32, 16), (30, 5), (24, 24)])
def test_pq4_scores_are_the_decoded_scores_within_the_lut_bound(metric, dim, m):
    """Without rerank, each returned score is within m / (2a) (+ float rounding) of the float64
    score of the decoded vector, and every returned id is within twice that of the true k-th best
    decoded score (the scan is exact up to the table rounding). nprobe = nlist here."""
    x = clustered(2500, dim, n_clusters=15, seed=dim)
    if metric == "l2":
        x = x * 3 + 1
    ix = _build(x, 8, metric=metric, m=m)
    q = clustered(20, dim, n_clusters=15, seed=dim)[:20] + 0.01
    q = q.astype(np.float32)
    scores, ids = _search(ix, q, 10, 8)
    assert scores.shape == ids.shape == (20, 10)
    dec = _decoded_pq(ix)
    ref = _exact(dec, q, metric)
    row_of = {i: r for r, i in enumerate(ix["ids"])}
    for i in range(len(q)):
        rows = np.array([row_of[j] for j in ids[i]])
        bounds = np.array([_lut_bound(ix, q[i], ix["labels"][r]) for r in rows])
        err = np.abs(scores[i] - ref[i, rows])
        assert np.all(err <= bounds * 1.001 + 1e-4 * (1 + np.abs(ref[i, rows]))), (err, bounds)
        kth = np.sort(ref[i])[::-1][9] if metric == "ip" else np.sort(ref[i])[9]
        slack = 2 * bounds.max() + 1e-4
        assert np.all(ref[i, rows] >= kth - slack) if metric == "ip" else np.all(ref[i, rows] <= kth + slack)
        order = scores[i]
        assert np.all(np.diff(order) <= 0) if metric == "ip" else np.all(np.diff(order) >= 0)


@pytest.mark.parametrize("metric", ["ip", "l2"])
def test_pq4_recall_with_rerank(metric):
    """Clustered unit vectors, 5,000 x 64, nlist 32, nprobe 8, rerank 100: recall@10 >= 0.95
    against exact float64 search (measured about 0.99); rerank returns exact scores."""
    x = clustered(5000, 64, n_clusters=40, spread=0.5, seed=3)
    q = clustered(5100, 64, n_clusters=40, spread=0.5, seed=3)[5000:]
    ix = _build(x, 32, metric=metric)
    scores, ids = _search(ix, q, 10, 8, rerank=100)
    ex = _exact(x, q, metric)
    truth = np.argsort(-ex if metric == "ip" else ex, axis=1)[:, :10] + 1000
    assert _recall(ids, truth) >= 0.95
    rows = ids - 1000
    np.testing.assert_allclose(scores, np.take_along_axis(ex, rows, 1), rtol=1e-4, atol=1e-4)
    _, approx = _search(ix, q, 10, 8)
    assert _recall(approx, truth) >= 0.4  # codes alone, for the record (measured 0.46 ip, 0.5x l2)


def test_pq4_every_isa_and_thread_count_gives_the_same_ids(restore_isa, restore_threads):
    x = clustered(3000, 48, n_clusters=20, seed=4)
    q = clustered(3040, 48, n_clusters=20, seed=4)[3000:]
    results = {}
    for metric in ("ip", "l2"):
        ix = _build(x, 16, metric=metric)
        for isa in _usable_isas():
            _core.set_active_isa(isa)
            for threads in (1, 2):
                _core.set_num_threads(threads)
                for rerank in (0, 40):
                    results[metric, isa, threads, rerank] = _search(ix, q, 10, 5, rerank=rerank)
    for (metric, isa, threads, rerank), (scores, ids) in results.items():
        base_scores, base_ids = results[metric, "scalar", 1, rerank]
        np.testing.assert_array_equal(ids, base_ids, err_msg=str((metric, isa, threads, rerank)))
        np.testing.assert_allclose(scores, base_scores, rtol=1e-5, atol=1e-5)
        same_isa_scores, _ = results[metric, isa, 1, rerank]
        np.testing.assert_array_equal(scores, same_isa_scores)  # threads never change a score


def test_pq4_batch_equals_single_queries_and_nprobe_limits_the_lists():
    x = clustered(3000, 32, n_clusters=20, seed=5)
    q = clustered(3050, 32, n_clusters=20, seed=5)[3000:]
    ix = _build(x, 16)
    batch = _search(ix, q, 10, 4, rerank=20)
    for i in range(0, 50, 7):
        one = _search(ix, q[i:i + 1], 10, 4, rerank=20)
        np.testing.assert_array_equal(one[1], batch[1][i:i + 1])
        np.testing.assert_array_equal(one[0], batch[0][i:i + 1])
    # nprobe=1: only the list of the query's nearest centroid; nprobe is clamped to nlist.
    _, ids = _search(ix, q, 5, 1)
    best_list = np.argmax(q @ ix["centroids"].T, axis=1)
    labels_by_id = dict(zip(ix["ids"], ix["labels"]))
    for i in range(len(q)):
        assert all(labels_by_id[j] == best_list[i] for j in ids[i] if j >= 0)
    np.testing.assert_array_equal(_search(ix, q, 10, 16)[1], _search(ix, q, 10, 1000)[1])


def test_tombstones_padding_and_the_result_rule():
    x = clustered(200, 16, n_clusters=4, seed=6)
    removed = list(range(0, 200, 3))
    ix = _build(x, 4, remove=removed)
    scores, ids = _search(ix, x[:5], 300, 4)
    live = 200 - len(removed)
    assert ids.shape == (5, live)  # k' = min(k, live slots)
    assert not (set(ids.ravel()) & {1000 + r for r in removed})
    assert (ids >= 0).all()
    # Fewer than k entries in the probed lists: -1 / -inf padding (+inf for l2).
    scores, ids = _search(ix, x[:5], 100, 1)
    assert ((ids == -1) == ~np.isfinite(scores)).all() and (ids == -1).any()
    assert np.all(scores[ids == -1] == -np.inf)
    ix2 = _build(x * 2, 4, metric="l2", remove=removed)
    scores, ids = _search(ix2, x[:5] * 2, 100, 1)
    assert np.all(scores[ids == -1] == np.inf) and (ids == -1).any()
    # Every slot removed: (q, 0).
    ix3 = _build(x[:40], 2, remove=range(40))
    assert _search(ix3, x[:3], 10, 2)[1].shape == (3, 0)


# ----------------------------------------------------------------------------- dense list storages


@pytest.mark.parametrize("storage", ["f32", "f16", "int8", "binary"])
@pytest.mark.parametrize("metric", ["ip", "l2"])
def test_dense_lists_probing_every_list_equal_exhaustive_search(storage, metric):
    """nprobe = nlist over dense list storage is exhaustive search over the same codes: the same
    ids and scores as search_dense (ties by id), with and without rerank."""
    x = clustered(1500, 40, n_clusters=12, seed=7)
    if metric == "l2":
        x = (x * 2 + 0.5).astype(np.float32)
    ix = _build(x, 6, storage=storage, metric=metric)
    q = clustered(1520, 40, n_clusters=12, seed=7)[1500:]
    q = (q * 2 + 0.5).astype(np.float32) if metric == "l2" else q
    for rerank in (0, 30):
        got = _search(ix, q, 10, 6, rerank=rerank)
        ref = _core.search_dense(storage, metric, 40, ix["codes"], ix["slot_ids"], ix["sq_norms"], ix["scale"],
                                 ix["offset"], x[ix["slot_rows"]] if rerank else None,
                                 ix["float_sq_norms"][ix["slot_rows"]] if rerank else None, q, 10, rerank)
        np.testing.assert_array_equal(got[1], ref[1])
        np.testing.assert_allclose(got[0], ref[0], rtol=1e-5, atol=1e-4)
    # Fewer lists: recall stays high with rerank (binary codes of 40 bits need a deeper one).
    ex = _exact(x, q, metric)
    truth = np.argsort(-ex if metric == "ip" else ex, axis=1)[:, :10] + 1000
    _, ids = _search(ix, q, 10, 3, rerank=300 if storage == "binary" else 50)
    assert _recall(ids, truth) >= 0.85


# ----------------------------------------------------------------------------- bad input


def test_bad_input_is_named():
    x = clustered(300, 16, n_clusters=4, seed=8)
    ix = _build(x, 4)
    q = x[:2]
    with pytest.raises(ValueError, match="nprobe: must be at least 1"):
        _search(ix, q, 10, 0)
    with pytest.raises(ValueError, match="rerank: must be at least k"):
        _search(ix, q, 10, 2, rerank=5)
    with pytest.raises(ValueError, match="keep_float"):
        _search(ix, q, 10, 2, rerank=20, keep_float=False)
    with pytest.raises(ValueError, match="storage: unknown"):
        _search(dict(ix, storage="pq8"), q, 10, 2)
    bad = ix["list_offsets"].copy()
    bad[1], bad[2] = bad[2], bad[1]
    with pytest.raises(ValueError, match="not decrease|multiple of 32|list_offsets"):
        _search(dict(ix, list_offsets=bad), q, 10, 2)
    odd = ix["list_offsets"].copy()
    odd[1] -= 1
    with pytest.raises(ValueError, match="multiple of 32"):
        _search(dict(ix, list_offsets=odd), q, 10, 2)
    with pytest.raises(ValueError, match="list_offsets"):
        _search(dict(ix, list_offsets=ix["list_offsets"][:-1]), q, 10, 2)
    with pytest.raises(ValueError, match="codes"):
        _search(dict(ix, codes=ix["codes"][:, :-16]), q, 10, 2)
    with pytest.raises(ValueError, match="queries"):
        _search(ix, np.ascontiguousarray(q[:, :8]), 10, 2)
    with pytest.raises(TypeError, match="float32"):
        _search(ix, q.astype(np.float64), 10, 2)
    rows = ix["slot_rows"].copy()
    rows[rows >= 0] = 10**6
    with pytest.raises(ValueError, match="slot_rows"):
        _search(dict(ix, slot_rows=rows), q, 10, 4, rerank=20)
    with pytest.raises(ValueError, match="no lists"):
        _search(dict(ix, centroids=np.zeros((0, 16), np.float32), list_offsets=np.zeros(1, np.int64)), q, 10, 2)
