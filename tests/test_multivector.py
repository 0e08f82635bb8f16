"""MultiVectorIndex and flatcoat.maxsim against a float64 numpy reference.

Reference: for each (query, document), float64 ``(q @ d.T).max(axis=1) @ w``
over the tokens as stored (f32 tokens; f16 tokens rounded to half first), so
f32 and f16 must reproduce it up to float32 rounding. int8 is lossy by design
and is held to recall@10 >= 0.99 against the exact f32 ranking on the data
described in ``structured_collection``.
"""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

import flatcoat
from flatcoat._persist import IndexFormatError, save_index
from flatcoat.multivector import MultiVectorIndex, maxsim

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

STORAGES = ("f32", "f16", "int8")


# ----------------------------------------------------------------------------- helpers


def random_docs(rng, n_docs, dim, max_len=60, extra_lengths=(1, 500, 257)):
    """Gaussian token bags of 1..max_len tokens, plus documents of the given lengths
    (1 token; 500 tokens; 257, which crosses the core's 256-token block)."""
    lengths = list(rng.integers(1, max_len + 1, n_docs)) + list(extra_lengths)
    return [rng.standard_normal((n, dim)).astype(np.float32) for n in lengths]


def stored(docs, storage):
    """The tokens as the exact kinds store them (f16: rounded to half)."""
    if storage == "f16":
        return [d.astype(np.float16).astype(np.float32) for d in docs]
    return docs


def reference(query, docs, weights=None):
    """float64 MaxSim of one query against each document."""
    q = np.asarray(query, dtype=np.float64)
    w = np.ones(q.shape[0]) if weights is None else np.asarray(weights, dtype=np.float64)
    return np.array([w @ (q @ np.asarray(d, dtype=np.float64).T).max(axis=1) for d in docs])


def check_topk(scores, ids, ref, all_ids, k, rtol=1e-5):
    """Exact top-k up to ties for one result row: min(k, n) entries (a full search
    has no padding), scores match the reference for the returned ids, are sorted,
    and every returned id is at least as good as the k-th best."""
    n = len(ref)
    assert scores.shape == ids.shape == (min(k, n),)
    scale = max(1.0, float(np.abs(ref).max()))
    position = {int(i): p for p, i in enumerate(all_ids)}
    valid = ids[ids != -1]
    assert len(valid) == min(k, n) and len(set(valid.tolist())) == len(valid)
    got = ref[[position[int(i)] for i in valid]]
    np.testing.assert_allclose(scores[: len(valid)], got, rtol=0, atol=rtol * scale)
    assert np.all(np.diff(scores[: len(valid)]) <= 0)
    kth = np.sort(ref)[::-1][min(k, n) - 1]
    assert np.all(got >= kth - rtol * scale)


def build(storage, dim, docs, ids=None):
    index = MultiVectorIndex(dim, storage=storage)
    index.add(docs, ids=ids)
    return index


def structured_collection(rng, n_docs=400, dim=128, n_queries=40, q_len=32):
    """Clustered unit-norm token bags, ColBERT-like: 64 topic centres; each document
    draws its 20..120 tokens around 3 topics (noise of norm 0.5 per token), each
    query takes 32 noisy tokens (noise norm 0.3) of one document. Returns
    (docs, queries)."""

    def unit(x):
        return x / np.linalg.norm(x, axis=-1, keepdims=True)

    centres = unit(rng.standard_normal((64, dim)))
    docs = []
    for _ in range(n_docs):
        n = int(rng.integers(20, 121))
        topics = rng.choice(64, 3, replace=False)
        noise = 0.5 * unit(rng.standard_normal((n, dim)))
        docs.append(unit(centres[rng.choice(topics, n)] + noise).astype(np.float32))
    queries = []
    for d in rng.integers(0, n_docs, n_queries):
        picked = docs[d][rng.integers(0, len(docs[d]), q_len)]
        queries.append(unit(picked + 0.3 * unit(rng.standard_normal((q_len, dim)))).astype(np.float32))
    return docs, queries


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


# ----------------------------------------------------------------------------- exactness


@pytest.mark.parametrize("storage", ["f32", "f16"])
@pytest.mark.parametrize("dim", [3, 7, 96, 128])
def test_exact_topk_against_float64(storage, dim, rng):
    docs = random_docs(rng, 30, dim)
    index = build(storage, dim, docs)
    ids = np.arange(len(docs))
    for q_len in (1, 7, 8, 9, 31, 32, 33, 64):
        query = rng.standard_normal((q_len, dim)).astype(np.float32)
        ref = reference(query, stored(docs, storage))
        for k in (1, 10, len(docs) + 3):
            scores, found = index.search(query, k=k)  # one query: q = 1, k' = min(k, len(index))
            assert scores.shape == found.shape == (1, min(k, len(docs)))
            assert scores.dtype == np.float32 and found.dtype == np.int64
            check_topk(scores[0], found[0], ref, ids, k)


@pytest.mark.parametrize("storage", STORAGES)
def test_batch_equals_single_queries(storage, rng):
    dim = 96
    docs = random_docs(rng, 50, dim)
    index = build(storage, dim, docs)
    queries = [rng.standard_normal((n, dim)).astype(np.float32) for n in (1, 5, 32, 40, 64, 3)] * 7  # 42 > one batch
    scores, ids = index.search(queries, k=5)
    assert scores.shape == (len(queries), 5)
    for i, q in enumerate(queries):
        s, d = index.search(q, k=5)
        np.testing.assert_array_equal(d, ids[i : i + 1])
        np.testing.assert_array_equal(s, scores[i : i + 1])


def test_int8_scores_close_to_float(rng):
    """int8 scores carry the quantization error only: a few 1e-3 of the score's scale."""
    dim = 128
    docs = random_docs(rng, 40, dim)
    index = build("int8", dim, docs)
    query = rng.standard_normal((32, dim)).astype(np.float32)
    ref = reference(query, docs)
    scores, ids = index.search(query, k=len(docs))
    np.testing.assert_allclose(scores[0], ref[ids[0]], rtol=0, atol=0.01 * np.abs(ref).max())


def test_int8_recall_at_10(rng):
    """int8 (per-token scales, int8 queries) keeps recall@10 >= 0.99 against the
    exact f32 ranking on structured_collection (400 docs, 40 queries of 32 tokens)."""
    docs, queries = structured_collection(rng)
    exact = build("f32", 128, docs)
    quantized = build("int8", 128, docs)
    _, truth = exact.search(queries, k=10)
    _, found = quantized.search(queries, k=10)
    recall = np.mean([len(set(a.tolist()) & set(b.tolist())) / 10 for a, b in zip(found, truth)])
    assert recall >= 0.99, recall


# ----------------------------------------------------------------------------- modes


@pytest.mark.parametrize("storage", STORAGES)
def test_rerank_equals_full_search_restricted(storage, rng):
    dim = 64
    docs = random_docs(rng, 80, dim)
    user_ids = rng.permutation(10_000)[: len(docs)].astype(np.int64)
    index = build(storage, dim, docs, ids=user_ids)
    queries = [rng.standard_normal((n, dim)).astype(np.float32) for n in (4, 32, 17)]
    all_scores, all_ids = index.search(queries, k=len(docs))
    subset = [rng.choice(user_ids, size=c, replace=False) for c in (1, 20, 60)]
    scores, ids = index.search(queries, k=10, subset=subset)
    for i, cand in enumerate(subset):
        keep = np.isin(all_ids[i], cand)
        expect_ids, expect_scores = all_ids[i][keep][:10], all_scores[i][keep][:10]
        n = len(expect_ids)
        np.testing.assert_array_equal(ids[i][:n], expect_ids)
        np.testing.assert_array_equal(scores[i][:n], expect_scores)
        assert np.all(ids[i][n:] == -1) and np.all(np.isneginf(scores[i][n:]))


def test_rerank_skips_padding_and_repeats(rng):
    dim = 8
    docs = random_docs(rng, 10, dim, extra_lengths=())
    index = build("f32", dim, docs)
    query = rng.standard_normal((3, dim)).astype(np.float32)
    s1, i1 = index.search(query, k=4, subset=np.array([3, -1, 5, 3, 7, -1]))
    s2, i2 = index.search(query, k=4, subset=[3, 5, 7])
    s4, i4 = index.search(query, k=4, subset=[[3, 5, 7]])  # one id list per query, q = 1
    np.testing.assert_array_equal(i1, i2)
    np.testing.assert_array_equal(s1, s2)
    np.testing.assert_array_equal(i4, i2)
    assert i1.shape == (1, 4) and i1[0, 3] == -1 and np.isneginf(s1[0, 3])
    # a 2-d subset array for a batch
    s3, i3 = index.search([query, query], k=4, subset=np.array([[3, 5, 7], [3, 5, 7]]))
    np.testing.assert_array_equal(i3[1], i2[0])
    # an empty subset: a row of padding only
    s5, i5 = index.search(query, k=2, subset=[])
    assert i5.tolist() == [[-1, -1]] and np.all(np.isneginf(s5))


@pytest.mark.parametrize("storage", STORAGES)
def test_weighted_maxsim(storage, rng):
    dim = 32
    docs = random_docs(rng, 40, dim)
    index = build(storage, dim, docs)
    query = rng.standard_normal((12, dim)).astype(np.float32)
    weights = rng.uniform(0.1, 3.0, 12).astype(np.float32)
    ref = reference(query, stored(docs, storage), weights)
    scores, ids = index.search(query, k=len(docs), query_weights=weights)
    scores, ids = scores[0], ids[0]
    if storage == "int8":
        np.testing.assert_allclose(scores, ref[ids], rtol=0, atol=0.01 * np.abs(ref).max())
    else:
        check_topk(scores, ids, ref, np.arange(len(docs)), len(docs))
    # a batch with one weight vector per query, or all weights back to back
    s2, i2 = index.search([query, query[:5]], k=3, query_weights=[weights, weights[:5]])
    np.testing.assert_array_equal(i2[0], ids[:3])
    s3, i3 = index.search([query, query[:5]], k=3, query_weights=np.concatenate([weights, weights[:5]]))
    np.testing.assert_array_equal(i3, i2)
    np.testing.assert_array_equal(s3, s2)


def test_functional_maxsim(rng):
    dim = 7
    docs = random_docs(rng, 20, dim)
    tokens, lengths = np.concatenate(docs), [len(d) for d in docs]
    query = rng.standard_normal((9, dim)).astype(np.float32)
    ref = reference(query, docs)
    np.testing.assert_allclose(maxsim(query, tokens, lengths), ref, rtol=1e-5, atol=1e-5)
    # float64 input, a list of queries, weights
    w = rng.uniform(0, 2, 9)
    both = maxsim([query, query[:2]], tokens.astype(np.float64), np.array(lengths), query_weights=[w, w[:2]])
    assert both.shape == (2, len(docs))
    np.testing.assert_allclose(both[0], reference(query, docs, w), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(both[1], reference(query[:2], docs, w[:2]), rtol=1e-5, atol=1e-5)
    # float16 tokens are scored as stored
    half = tokens.astype(np.float16)
    np.testing.assert_allclose(
        maxsim(query, half, lengths), reference(query, stored(docs, "f16")), rtol=1e-5, atol=1e-5
    )


def test_docs_forms_agree(rng):
    dim = 5
    docs = random_docs(rng, 6, dim, extra_lengths=())
    query = rng.standard_normal((4, dim)).astype(np.float32)
    a = build("f32", dim, docs)
    b = build("f32", dim, (np.concatenate(docs), np.array([len(d) for d in docs])))
    same = np.stack([d[:1] for d in docs])  # a 3-d (n_docs, 1, dim) array
    c = build("f32", dim, same)
    np.testing.assert_array_equal(a.search(query, k=6)[1], b.search(query, k=6)[1])
    assert len(c) == 6 and c.num_tokens == 6


def test_results_do_not_depend_on_threads(rng, restore_threads):
    dim = 32
    docs = random_docs(rng, 200, dim)
    index = build("f32", dim, docs)
    queries = [rng.standard_normal((8, dim)).astype(np.float32) for _ in range(3)]
    flatcoat.set_num_threads(1)
    one = index.search(queries, k=20)
    flatcoat.set_num_threads(2)
    two = index.search(queries, k=20)
    np.testing.assert_array_equal(one[0], two[0])
    np.testing.assert_array_equal(one[1], two[1])


def test_ties_broken_by_smaller_id():
    dim = 4
    doc = np.eye(4, dtype=np.float32)[:2]
    index = MultiVectorIndex(dim)
    index.add([doc] * 5, ids=[50, 10, 40, 20, 30])
    scores, ids = index.search(np.eye(4, dtype=np.float32)[:1], k=3)
    assert ids.tolist() == [[10, 20, 30]] and scores.tolist() == [[1.0, 1.0, 1.0]]


@pytest.mark.parametrize("storage", STORAGES)
@pytest.mark.parametrize("dim", [37, 128])  # 37: int8 tails of 1 dimension; 128: whole AMX tile steps
def test_every_isa_agrees_with_scalar(storage, dim, rng, restore_isa):
    docs = random_docs(rng, 30, dim)
    index = build(storage, dim, docs)
    queries = [rng.standard_normal((n, dim)).astype(np.float32) for n in (1, 9, 33, 70)]
    weights = [rng.uniform(0.5, 1.5, len(q)).astype(np.float32) for q in queries]
    flatcoat._core.set_active_isa("scalar")
    ref_scores, ref_ids = index.search(queries, k=len(docs), query_weights=weights)
    ref_f = maxsim(queries[1], np.concatenate(docs), [len(d) for d in docs])
    tested = 0
    for isa in flatcoat._core.compiled_isas():
        if not flatcoat._core.cpu_supports(isa):
            continue
        flatcoat._core.set_active_isa(isa)
        scores, ids = index.search(queries, k=len(docs), query_weights=weights)
        if storage == "int8":  # integer products: identical on every ISA
            np.testing.assert_array_equal(scores, ref_scores)
            np.testing.assert_array_equal(ids, ref_ids)
        else:
            np.testing.assert_allclose(scores, ref_scores, rtol=1e-5, atol=1e-4)
        np.testing.assert_allclose(maxsim(queries[1], np.concatenate(docs), [len(d) for d in docs]), ref_f,
                                   rtol=1e-5, atol=1e-4)
        tested += 1
    assert tested >= 1


# ----------------------------------------------------------------------------- changes


@pytest.mark.parametrize("storage", STORAGES)
def test_remove_compacts_and_search_follows(storage, rng):
    dim = 16
    docs = random_docs(rng, 50, dim)
    index = build(storage, dim, docs)
    tokens_before = index.num_tokens
    removed = [0, 3, 4, 17, len(docs) - 1]
    assert index.remove(removed) == len(removed)
    assert len(index) == len(docs) - len(removed)
    assert index.num_tokens == tokens_before - sum(len(docs[i]) for i in removed)
    assert 3 not in index and 5 in index
    kept = [i for i in range(len(docs)) if i not in removed]
    assert index.ids.tolist() == kept  # documents keep their order
    assert index.lengths.tolist() == [len(docs[i]) for i in kept]
    query = rng.standard_normal((6, dim)).astype(np.float32)
    scores, ids = index.search(query, k=len(docs))
    assert ids.shape == (1, len(kept))
    scores, ids = scores[0], ids[0]
    ref = reference(query, stored([docs[i] for i in kept], storage))
    if storage == "int8":
        assert sorted(ids.tolist()) == kept
    else:
        check_topk(scores, ids, ref, np.array(kept), len(docs))
    # ids can be reused, rows are appended after compaction
    index.add([docs[0]], ids=[0])
    assert 0 in index and len(index) == len(kept) + 1
    with pytest.raises(KeyError, match="not in the index"):
        index.remove([999])
    assert index.remove([]) == 0


def test_add_is_all_or_nothing(rng):
    index = MultiVectorIndex(4)
    index.add([np.ones((2, 4), np.float32)], ids=[7])
    with pytest.raises(ValueError, match="already in the index"):
        index.add([np.ones((2, 4), np.float32)] * 2, ids=[8, 7])
    assert len(index) == 1 and 8 not in index
    assert index.add([np.ones((1, 4), np.float32)]).tolist() == [8]


# ----------------------------------------------------------------------------- persistence


@pytest.mark.parametrize("storage", STORAGES)
@pytest.mark.parametrize("mmap", [True, False])
def test_save_load_round_trip(storage, mmap, rng, tmp_path):
    dim = 24
    docs = random_docs(rng, 30, dim)
    index = build(storage, dim, docs, ids=np.arange(100, 100 + len(docs)))
    index.remove([101, 120])
    path = tmp_path / "mv"
    index.save(path)
    loaded = flatcoat.load(path, mmap=mmap)
    assert isinstance(loaded, MultiVectorIndex)
    assert (loaded.dim, loaded.storage, len(loaded), loaded.num_tokens) == (dim, storage, len(index), index.num_tokens)
    np.testing.assert_array_equal(loaded.ids, index.ids)
    np.testing.assert_array_equal(loaded.lengths, index.lengths)
    query = rng.standard_normal((5, dim)).astype(np.float32)
    for a, b in zip(index.search(query, k=8), loaded.search(query, k=8)):
        np.testing.assert_array_equal(a, b)
    # a memory-mapped index is searched in place, read-only, until its first change copies it
    assert all(a.flags.writeable != mmap for a in (loaded._tokens.arrays["tokens"], loaded._docs.arrays["offsets"]))
    # a loaded (possibly memory-mapped) index accepts changes; the files stay intact
    loaded.add([docs[1]])
    assert loaded._tokens.arrays["tokens"].flags.writeable and loaded._docs.arrays["offsets"].flags.writeable
    loaded.remove([102])
    assert len(loaded) == len(index)
    again = flatcoat.load(path, mmap=mmap)
    for a, b in zip(index.search(query, k=8), again.search(query, k=8)):
        np.testing.assert_array_equal(a, b)
    new_id = loaded.add([docs[2]])
    assert new_id[0] > 129  # next_id survives the round trip


def _saved(tmp_path, storage="int8"):
    rng = np.random.default_rng(5)
    index = build(storage, 8, random_docs(rng, 5, 8, extra_lengths=()))
    path = tmp_path / "mv"
    index.save(path)
    return path, index


def test_truncated_file_is_rejected(tmp_path):
    path, _ = _saved(tmp_path)
    with open(path / "tokens.npy", "r+b") as f:
        f.truncate(os.path.getsize(path / "tokens.npy") - 5)
    with pytest.raises(IndexFormatError, match="tokens.npy"):
        flatcoat.load(path)


def test_missing_file_is_rejected(tmp_path):
    path, _ = _saved(tmp_path)
    os.remove(path / "offsets.npy")
    with pytest.raises(IndexFormatError, match="offsets.npy"):
        flatcoat.load(path)


def _write_raw(tmp_path, meta_changes=None, **arrays):
    """An index directory written through the persistence layer with chosen (bad) contents."""
    rng = np.random.default_rng(2)
    tokens = rng.integers(1, 256, (6, 4)).astype(np.uint8)
    base = {
        "tokens": tokens, "offsets": np.array([0, 2, 6], np.int64), "ids": np.array([0, 1], np.int64),
        "scales": np.ones(6, np.float32),
    }
    base.update(arrays)
    meta = {"dim": 4, "storage": "int8", "count": 2, "tokens": 6, "next_id": 2}
    meta.update(meta_changes or {})
    path = tmp_path / "raw"
    save_index(path, "multivector", meta, base)
    return path


@pytest.mark.parametrize(
    "arrays, meta, match",
    [
        ({"offsets": np.array([0, 4, 2], np.int64)}, None, "offsets.npy"),          # not increasing
        ({"offsets": np.array([0, 2, 5], np.int64)}, None, "offsets.npy"),          # does not end at the token count
        ({"offsets": np.array([1, 2, 6], np.int64)}, None, "offsets.npy"),          # does not start at 0
        ({"offsets": np.array([0, 0, 6], np.int64)}, None, "offsets.npy"),          # empty document
        ({"offsets": np.array([0, 6], np.int64)}, None, "offsets.npy"),             # wrong length
        ({"ids": np.array([3, 3], np.int64)}, None, "ids.npy"),                     # duplicate ids
        ({"ids": np.array([0, 1, 2], np.int64)}, None, "ids.npy"),                  # wrong length
        ({"tokens": np.ones((6, 4), np.float32)}, None, "tokens.npy"),              # wrong dtype
        ({"scales": np.full(6, np.nan, np.float32)}, None, "scales.npy"),
        ({}, {"storage": "int4"}, "storage"),
        ({}, {"dim": 0}, "dim"),
    ],
)
def test_inconsistent_index_is_rejected(tmp_path, arrays, meta, match):
    path = _write_raw(tmp_path, meta, **arrays)
    with pytest.raises(IndexFormatError, match=match):
        flatcoat.load(path)


def test_corrupt_bytes_are_rejected(tmp_path):
    path, _ = _saved(tmp_path)
    data = bytearray((path / "tokens.npy").read_bytes())
    data[-1] ^= 0xFF
    (path / "tokens.npy").write_bytes(bytes(data))
    with pytest.raises(IndexFormatError, match="checksum"):
        flatcoat.load(path)
    manifest = json.loads((path / "manifest.json").read_text())
    assert manifest["kind"] == "multivector"


# ----------------------------------------------------------------------------- bad input


def test_bad_input_messages(rng):
    index = MultiVectorIndex(4)
    good = np.ones((3, 4), np.float32)
    cases = [
        (lambda: MultiVectorIndex(0), ValueError, "dim"),
        (lambda: MultiVectorIndex(4, storage="int4"), ValueError, "storage"),
        (lambda: index.add([good, np.ones((0, 4), np.float32)]), ValueError, r"docs\[1\].*no tokens"),
        (lambda: index.add([good, np.ones((2, 5), np.float32)]), ValueError, r"docs\[1\].*dimension 4"),
        (lambda: index.add([np.ones(4, np.float32)]), ValueError, r"docs\[0\].*2-d"),
        (lambda: index.add([np.ones((2, 2, 4), np.float32)]), ValueError, r"docs\[0\].*2-d"),
        (lambda: index.add([np.full((2, 4), np.nan, np.float32)]), ValueError, "NaN or inf"),
        (lambda: index.add([np.full((2, 4), 1e39)]), ValueError, "NaN or inf"),
        (lambda: index.add([np.ones((2, 4), np.int32)]), TypeError, "floating"),
        (lambda: index.add([[["a", "b", "c", "d"]]]), TypeError, "floating"),
        # a list is a list of documents: one matrix written as nested lists is refused, saying so
        (lambda: index.add([[1.0, 0, 0, 0], [0, 1.0, 0, 0]]), ValueError,
         r"docs\[0\].*list of documents.*\[tokens\]"),
        (lambda: index.add(good), ValueError, r"one document's \(n_tokens, dim\) matrix.*\[tokens\]"),
        (lambda: index.add(np.float32(3.0)), ValueError, "0-d"),
        (lambda: index.add(np.ones((2, 2, 2, 4), np.float32)), ValueError, "4-d"),
        (lambda: index.add(42), TypeError, "list"),
        (lambda: index.add((good, np.array([2, 2]))), ValueError, "sum to 4 but there are 3"),
        (lambda: index.add((good, np.array([3, 0]))), ValueError, "document 1 has 0 tokens"),
        (lambda: index.add((good, np.array([1.5, 1.5]))), TypeError, "integer"),
        (lambda: index.add([good], ids=[-3]), ValueError, "non-negative"),
        (lambda: index.add([good], ids=[1, 2]), ValueError, "expected 1 ids"),
        (lambda: MultiVectorIndex(4, storage="f16").add([np.full((1, 4), 1e6, np.float32)]), ValueError, "float16 range"),
    ]
    for call, error, match in cases:
        with pytest.raises(error, match=match):
            call()
    assert len(index) == 0

    index.add([good, good * 2])
    query = np.ones((2, 4), np.float32)
    cases = [
        (lambda: index.search(np.ones((0, 4), np.float32)), ValueError, "no tokens"),
        (lambda: index.search(np.ones((2, 3), np.float32)), ValueError, "dimension 4"),
        (lambda: index.search(np.ones(4, np.float32)), ValueError, "got a 1-d array"),
        (lambda: index.search(np.float32(1)), ValueError, "0-d"),
        (lambda: index.search(np.ones((1, 1, 1, 4), np.float32)), ValueError, "4-d"),
        (lambda: index.search([query, np.ones((2, 3), np.float32)]), ValueError, r"queries\[1\]"),
        (lambda: index.search([query, np.ones((0, 4), np.float32)]), ValueError, r"queries\[1\].*no tokens"),
        (lambda: index.search([]), ValueError, "no queries"),
        (lambda: index.search([[1.0, 0, 0, 0], [0, 1.0, 0, 0]]), ValueError,
         r"queries\[0\].*list of queries.*2-d numpy array"),
        (lambda: maxsim([[1.0, 0, 0, 0]], good, [3]), ValueError, r"queries\[0\].*list of queries"),
        (lambda: index.search(np.full((2, 4), np.inf, np.float32)), ValueError, "NaN or inf"),
        (lambda: index.search(query.astype(np.int64)), TypeError, "floating"),
        (lambda: index.search(query, k=0), ValueError, "k"),
        (lambda: index.search(query, k=2.5), TypeError, "k"),
        (lambda: index.search(query, subset=[0, 5]), KeyError, r"subset: 1 id\(s\) not in the index \(5\)"),
        (lambda: index.search([query, query], subset=[[0], [7]]), KeyError, r"subset.*\(7\)"),
        (lambda: index.search(query, subset=[0.5]), TypeError, "integer"),
        (lambda: index.search(query, subset=[[[0]]]), ValueError, r"subset\[0\].*1-d"),
        (lambda: index.search(query, subset=np.zeros((1, 1, 1), np.int64)), ValueError, "one id list per query"),
        (lambda: index.search(query, subset=5), TypeError, "subset"),
        (lambda: index.search([query, query], subset=[[0]]), ValueError, "one id list per query"),
        (lambda: index.search([query, query], subset=[0, 1]), ValueError, "flat list of ids restricts one query"),
        (lambda: index.search(query, query_weights=np.ones(3)), ValueError, "expected 2 weights"),
        (lambda: index.search(query, query_weights=np.array([1.0, np.nan])), ValueError, "finite"),
        (lambda: index.search([query], query_weights=[np.ones(2), np.ones(2)]), ValueError, "1 queries"),
        (lambda: maxsim(query, np.ones((3, 4), np.float32), [2]), ValueError, "sum to 2"),
        (lambda: maxsim(query, np.ones((3, 4), np.float32), [[3]]), ValueError, "1-d"),
        (lambda: maxsim(query, np.ones((3, 5), np.float32), [3]), ValueError, "dimension 5"),
        (lambda: maxsim(query, np.ones((3, 4), np.int8), [3]), TypeError, "floating"),
    ]
    for call, error, match in cases:
        with pytest.raises(error, match=match):
            call()


def test_empty_index_and_empty_collection():
    index = MultiVectorIndex(3)
    scores, ids = index.search(np.ones((2, 3), np.float32), k=2)
    assert scores.shape == ids.shape == (1, 0) and scores.dtype == np.float32 and ids.dtype == np.int64
    scores, ids = index.search([np.ones((2, 3), np.float32)] * 4, k=10**8)
    assert scores.shape == ids.shape == (4, 0)
    assert index.add([]).size == 0
    assert maxsim(np.ones((1, 3), np.float32), np.ones((0, 3), np.float32), []).shape == (0,)


def test_core_rejects_inconsistent_views():
    """The bindings check sizes themselves; a Python caller of _core gets a clear error."""
    tokens = np.ones((4, 2), np.float32)
    q = np.ones((1, 2), np.float32)
    qo = np.array([0, 1], np.int64)
    ids = np.arange(2, dtype=np.int64)
    with pytest.raises(ValueError, match="strictly increasing"):
        flatcoat._core.search_maxsim("f32", 2, tokens, np.array([0, 0, 4], np.int64), None, ids, q, qo, None, 1)
    with pytest.raises(ValueError, match="last offset"):
        flatcoat._core.search_maxsim("f32", 2, tokens, np.array([0, 1, 3], np.int64), None, ids, q, qo, None, 1)
    with pytest.raises(ValueError, match="scales"):
        flatcoat._core.search_maxsim("int8", 2, tokens.astype(np.uint8), np.array([0, 1, 4], np.int64), None,
                                     ids, q, qo, None, 1)
    with pytest.raises(ValueError, match="outside"):
        flatcoat._core.search_maxsim("f32", 2, tokens, np.array([0, 1, 4], np.int64), None, ids, q, qo, None, 1,
                                     np.array([2], np.int64), np.array([0, 1], np.int64))
    with pytest.raises(TypeError, match="dtype"):
        flatcoat._core.search_maxsim("f16", 2, tokens, np.array([0, 1, 4], np.int64), None, ids, q, qo, None, 1)


# ----------------------------------------------------------------------------- property


@settings(max_examples=60, deadline=None)
@given(
    st.integers(1, 9),  # dim
    st.lists(st.integers(1, 7), min_size=1, max_size=6),  # document lengths
    st.integers(1, 10),  # query tokens
    st.integers(0, 2**32 - 1),
)
def test_search_equals_reference_property(dim, lengths, q_len, seed):
    rng = np.random.default_rng(seed)
    docs = [rng.standard_normal((n, dim)).astype(np.float32) for n in lengths]
    query = rng.standard_normal((q_len, dim)).astype(np.float32)
    index = build("f32", dim, docs)
    scores, ids = index.search(query, k=len(docs))
    check_topk(scores[0], ids[0], reference(query, docs), np.arange(len(docs)), len(docs))
    np.testing.assert_allclose(maxsim(query, np.concatenate(docs), lengths), reference(query, docs),
                               rtol=1e-5, atol=1e-5)


@pytest.mark.skipif("genoa" not in [i for i in flatcoat._core.compiled_isas() if flatcoat._core.cpu_supports(i)],
                    reason="the tile emulation runs on genoa's kernels")
@pytest.mark.parametrize("dim", [64, 128, 100])  # whole 64-byte tile steps, and not (the vector kernel's)
def test_int8_tile_kernel_gives_the_vector_kernels_scores(dim, rng, restore_isa):
    """The sapphirerapids int8 MaxSim on emulated tiles: bit for bit the vector kernel's scores (the same
    integer sums, finished by the same float operations), for documents shorter and longer than a tile and
    queries of one, two and three 16-token panels."""
    docs = random_docs(rng, 40, dim, extra_lengths=(1, 15, 16, 17, 32, 257))
    index = build("int8", dim, docs)
    a = index.arrays()
    flatcoat._core.set_active_isa("genoa")
    for n_tokens in (1, 16, 33):
        q = rng.standard_normal((n_tokens, dim)).astype(np.float32)
        q_offsets = np.array([0, n_tokens], np.int64)
        args = ("int8", dim, a["tokens"], a["offsets"], a["scales"], q, q_offsets, None)
        tiles = flatcoat._core.maxsim_scores(*args, emulate_tiles=True)
        np.testing.assert_array_equal(tiles, flatcoat._core.maxsim_scores(*args))
        if n_tokens >= 16:  # as test_int8_scores_close_to_float: the quantization error of many tokens' maxima
            ref = reference(q, docs)
            np.testing.assert_allclose(tiles[0], ref, rtol=0, atol=0.01 * np.abs(ref).max())
