"""flatcoat.muvera: Fixed Dimensional Encodings against a per-document, per-partition Python
reference of the documented transform, their approximation of MaxSim, and FDE + exact MaxSim
re-ranking against exact MaxSim.

Thresholds (stated and asserted): on ``structured_collection`` (600 documents of 20..120 clustered
128-d tokens, 30 queries of 32 tokens) the mean per-query Pearson correlation between FDE inner
products and MaxSim is >= 0.95 without a projection (0.976 measured) and >= 0.85 with
``projection=16`` (0.90); FDE + rerank=100 then exact MaxSim reaches recall@10 >= 0.98 against
exact MaxSim with ``projection=16`` (1.000 measured).
"""

from __future__ import annotations

import numpy as np
import pytest

import flatcoat
from flatcoat.muvera import FDE, encode_index, search


def unit(x):
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def structured_collection(rng, n_docs=600, dim=128, n_queries=30, q_len=32, n_topics=64):
    """ColBERT-like: unit tokens around 3 of 64 topic centres per document (noise of norm 0.5);
    a query is 32 noisy tokens (noise norm 0.3) of one document."""
    centres = unit(rng.standard_normal((n_topics, dim)))
    docs = []
    for _ in range(n_docs):
        n = int(rng.integers(20, 121))
        topics = rng.choice(n_topics, 3, replace=False)
        docs.append(unit(centres[rng.choice(topics, n)] + 0.5 * unit(rng.standard_normal((n, dim)))).astype(np.float32))
    queries = []
    for d in rng.integers(0, n_docs, n_queries):
        picked = docs[d][rng.integers(0, len(docs[d]), q_len)]
        queries.append(unit(picked + 0.3 * unit(rng.standard_normal((q_len, dim)))).astype(np.float32))
    return docs, queries


def reference_fde(bag, dim, k_sim, repetitions, projection, final_dim, seed, document, weights=None):
    """The documented transform, one token and one partition at a time (float64)."""
    parts = 2 ** k_sim
    width = dim if projection is None else projection
    x = np.asarray(bag, dtype=np.float64)
    if weights is not None:
        x = x * np.asarray(weights, dtype=np.float64)[:, None]
    blocks = []
    for r in range(repetitions):
        planes = np.random.default_rng([seed, 0, r]).standard_normal((dim, k_sim))
        codes = [sum(int(x_t @ planes[:, i] > 0) << i for i in range(k_sim)) for x_t in np.asarray(bag, np.float64)]
        cells = np.zeros((parts, dim))
        for p in range(parts):
            members = [t for t, c in enumerate(codes) if c == p]
            if members:
                cells[p] = x[members].mean(axis=0) if document else x[members].sum(axis=0)
            elif document:  # the token whose code is nearest by Hamming distance, the first on ties
                nearest = min(range(len(codes)), key=lambda t: (bin(codes[t] ^ p).count("1"), t))
                cells[p] = x[nearest]
        if projection is not None:
            matrix = np.random.default_rng([seed, 1, r]).choice(np.array([-1.0, 1.0], np.float32), (dim, projection))
            cells = cells @ (matrix.astype(np.float64) / np.sqrt(projection))
        blocks.append(cells.reshape(parts * width))
    raw = np.concatenate(blocks)
    if final_dim is None:
        return raw
    rng = np.random.default_rng([seed, 2, 0])
    bucket = rng.integers(0, final_dim, raw.size)
    sign = rng.choice(np.array([-1.0, 1.0]), raw.size)
    out = np.zeros(final_dim)
    for i in range(raw.size):
        out[bucket[i]] += sign[i] * raw[i]
    return out


@pytest.fixture
def rng():
    return np.random.default_rng(99)


# ----------------------------------------------------------------------------- the transform


@pytest.mark.parametrize("params", [
    dict(dim=7, k_sim=3, repetitions=2, projection=None, final_dim=None, seed=0),
    dict(dim=16, k_sim=2, repetitions=3, projection=5, final_dim=None, seed=4),
    dict(dim=9, k_sim=4, repetitions=2, projection=3, final_dim=40, seed=11),
    dict(dim=3, k_sim=0, repetitions=2, projection=None, final_dim=None, seed=1),  # one partition: mean / sum
    dict(dim=97, k_sim=1, repetitions=1, projection=None, final_dim=50, seed=2),
])
def test_against_the_documented_transform(params, rng):
    fde = FDE(**params)
    dim = params["dim"]
    # 1-token documents leave most partitions empty (filled); long ones fill them all
    docs = [rng.standard_normal((n, dim)).astype(np.float32) for n in (1, 2, 5, 40, 3)]
    got = fde.encode_documents(docs)
    assert got.dtype == np.float32 and got.shape == (len(docs), fde.output_dim)
    for g, d in zip(got, docs):
        np.testing.assert_allclose(g, reference_fde(d, document=True, **params), rtol=1e-5, atol=1e-5)
    queries = docs[1:4]
    weights = [rng.random(len(q)) for q in queries]
    got = fde.encode_queries(queries, weights)
    for g, q, w in zip(got, queries, weights):
        np.testing.assert_allclose(g, reference_fde(q, document=False, weights=w, **params), rtol=1e-5, atol=1e-5)


def test_query_partitions_without_tokens_stay_zero(rng):
    fde = FDE(8, k_sim=4, repetitions=1)
    q = fde.encode_queries(rng.standard_normal((1, 8)).astype(np.float32))[0].reshape(16, 8)
    assert (np.abs(q).sum(axis=1) > 0).sum() == 1  # one token: one partition holds it, the rest are 0
    d = fde.encode_documents([rng.standard_normal((1, 8)).astype(np.float32)])[0].reshape(16, 8)
    assert np.all(d == d[0])  # a one-token document fills every partition with its token


def test_inner_products_approximate_maxsim():
    docs, queries = structured_collection(np.random.default_rng(3))
    tokens, lengths = np.concatenate(docs), [len(d) for d in docs]
    exact = flatcoat.maxsim(queries, tokens, lengths)
    for params, threshold in ((dict(), 0.95), (dict(projection=16), 0.85)):
        fde = FDE(128, **params)
        ip = fde.encode_queries(queries) @ fde.encode_documents((tokens, lengths)).T
        corr = np.mean([np.corrcoef(a, b)[0, 1] for a, b in zip(ip, exact)])
        assert corr >= threshold, (params, corr)
        # biased low, never above: per repetition a document partition's average, not its maximum
        assert np.median(ip / exact) < fde.repetitions


def test_recall_of_fde_and_exact_rerank():
    """FDE (projection=16, 2,560 dims) candidates, rerank=100, exact MaxSim: recall@10 >= 0.98."""
    docs, queries = structured_collection(np.random.default_rng(3))
    ids = np.arange(1000, 1000 + len(docs))
    mv = flatcoat.MultiVectorIndex(128)
    mv.add(docs, ids=ids)
    _, truth = mv.search(queries, k=10)
    fde = FDE(128, projection=16)
    dense = encode_index(fde, docs, ids=ids, batch=128)
    scores, found = search(fde, dense, mv, queries, k=10, rerank=100)
    recall = np.mean([len(set(a.tolist()) & set(b.tolist())) / 10 for a, b in zip(found, truth)])
    assert recall >= 0.98, recall
    # the scores are exact MaxSim of the returned documents
    np.testing.assert_allclose(scores, mv.search(queries, k=10, subset=list(found))[0], rtol=1e-6)
    # an int8 index with a float copy scores the candidates exactly too
    int8 = flatcoat.MultiVectorIndex(128, storage="int8", keep_float=True)
    int8.add(docs, ids=ids)
    for a, b in zip(search(fde, dense, int8, queries[:5], k=10, rerank=100), (scores[:5], found[:5])):
        np.testing.assert_array_equal(a, b)


def test_search_forms_and_padding(rng):
    docs = [rng.standard_normal((int(n), 8)).astype(np.float32) for n in rng.integers(1, 9, 30)]
    mv = flatcoat.MultiVectorIndex(8)
    mv.add(docs)
    fde = FDE(8, k_sim=2, repetitions=3)
    dense = encode_index(fde, docs)
    one = search(fde, dense, mv, docs[4], k=5, rerank=5)
    listed = search(fde, dense, mv, [docs[4]], k=5, rerank=5)
    for a, b in zip(one, listed):
        assert a.shape == (1, 5)
        np.testing.assert_array_equal(a, b)
    assert search(fde, dense, mv, [docs[4], docs[5]], k=50, rerank=60)[1].shape == (2, 30)  # bounded by the index
    with pytest.raises(ValueError, match="rerank: must be at least k"):
        search(fde, dense, mv, docs[4], k=10, rerank=5)
    with pytest.raises(TypeError, match="fde"):
        search("fde", dense, mv, docs[4])


# ----------------------------------------------------------------------------- determinism, shapes, input


def test_deterministic_and_batch_independent(rng):
    docs = [rng.standard_normal((int(n), 32)).astype(np.float32) for n in rng.integers(1, 300, 40)]
    a, b = FDE(32, projection=8, final_dim=300, seed=5), FDE(32, projection=8, final_dim=300, seed=5)
    whole = a.encode_documents(docs)
    np.testing.assert_array_equal(whole, b.encode_documents(docs))
    np.testing.assert_array_equal(whole, a.encode_documents(docs))
    for i in (0, 17, 39):  # alone rather than in a batch: the same partitions, sums up to float32 rounding
        np.testing.assert_allclose(a.encode_documents([docs[i]])[0], whole[i], rtol=0,
                                   atol=1e-5 * np.abs(whole[i]).max())
    assert not np.allclose(whole, FDE(32, projection=8, final_dim=300, seed=6).encode_documents(docs))
    assert FDE(**a.params).params == a.params and "seed=5" in repr(a)


def test_chunked_encoding_matches(rng, monkeypatch):
    """Long inputs are encoded in chunks of documents; the chunking changes nothing."""
    import flatcoat.muvera as muvera

    docs = [rng.standard_normal((int(n), 16)).astype(np.float32) for n in rng.integers(1, 50, 60)]
    fde = FDE(16, k_sim=3, repetitions=2, projection=4)
    whole = fde.encode_documents(docs)
    monkeypatch.setattr(muvera, "_CHUNK_TOKENS", 37)
    np.testing.assert_allclose(fde.encode_documents(docs), whole, rtol=1e-6, atol=1e-6)


def test_shapes_and_forms(rng):
    fde = FDE(6, k_sim=2, repetitions=3, projection=4)
    assert (fde.partitions, fde.block_dim, fde.output_dim) == (4, 4, 48)
    assert FDE(6, k_sim=2, repetitions=3).output_dim == 72 and FDE(6, final_dim=10).output_dim == 10
    docs = rng.standard_normal((5, 7, 6)).astype(np.float32)
    as_3d = fde.encode_documents(docs)
    np.testing.assert_array_equal(as_3d, fde.encode_documents(list(docs)))
    np.testing.assert_array_equal(as_3d, fde.encode_documents((docs.reshape(35, 6), [7] * 5)))
    assert fde.encode_documents([]).shape == (0, 48)
    assert fde.encode_queries(docs[0]).shape == (1, 48)
    np.testing.assert_array_equal(fde.encode_queries(docs), fde.encode_queries(list(docs)))
    np.testing.assert_array_equal(fde.encode_queries(docs[0].astype(np.float64)), fde.encode_queries(docs[0]))


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(dim=0), ValueError, "dim"),
    (dict(dim=8.0), TypeError, "dim"),
    (dict(dim=8, k_sim=-1), ValueError, "k_sim"),
    (dict(dim=8, k_sim=17), ValueError, "k_sim"),
    (dict(dim=8, k_sim=True), TypeError, "k_sim"),
    (dict(dim=8, repetitions=0), ValueError, "repetitions"),
    (dict(dim=8, projection=0), ValueError, "projection"),
    (dict(dim=8, projection=9), ValueError, "projection: must be at most 8"),
    (dict(dim=8, k_sim=1, repetitions=1, final_dim=17), ValueError, "final_dim: must be at most 16"),
    (dict(dim=8, final_dim="64"), TypeError, "final_dim"),
    (dict(dim=8, seed=-1), ValueError, "seed"),
])
def test_bad_parameters(kwargs, error, match):
    with pytest.raises(error, match=match):
        FDE(**kwargs)


def test_bad_input(rng):
    fde = FDE(4, k_sim=1, repetitions=1)
    good = rng.standard_normal((3, 4)).astype(np.float32)
    with pytest.raises(ValueError, match="docs\\[1\\]: expected token dimension 4"):
        fde.encode_documents([good, good[:, :3]])
    with pytest.raises(ValueError, match="docs\\[0\\]: document has no tokens"):
        fde.encode_documents([good[:0]])
    with pytest.raises(ValueError, match="NaN or inf"):
        fde.encode_documents([np.full((2, 4), np.nan, np.float32)])
    with pytest.raises(ValueError, match="a 2-d array is one document"):
        fde.encode_documents(good)
    with pytest.raises(TypeError, match="not a floating type"):
        fde.encode_queries(np.ones((2, 4), dtype=np.int64))
    with pytest.raises(ValueError, match="queries: no queries given"):
        fde.encode_queries([])
    with pytest.raises(ValueError, match="query_weights"):
        fde.encode_queries(good, query_weights=np.ones(2))
    with pytest.raises(TypeError, match="fde"):
        encode_index(None, [good])
