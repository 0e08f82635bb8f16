"""Filters, attributes, get and upsert on every index kind, against exact numpy references and a
pure-Python model of the index (ids -> vector, attributes).

The filter language itself is tested in test_attributes.py, the core's bitset scan in
test_filter_core.py; here: that each index wires them up the same way (positions that move on
remove, IVF slots that move on rebuild, persistence, concurrency).
"""

from __future__ import annotations

import threading

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

import flatcoat
from conftest import clustered

DIM = 16
LANGS = ["en", "de", "fr"]


def attributes_for(ids: np.ndarray) -> list:
    """Deterministic attributes of each id, with missing values."""
    out = []
    for i in ids.tolist():
        a = {"year": 2000 + i % 25, "lang": LANGS[i % 3], "score": (i % 7) / 7.0, "open": i % 2 == 0}
        if i % 5 == 0:
            a["tags"] = ["a", "b"] if i % 10 == 0 else ["b"]
        if i % 11 == 0:
            del a["year"]  # missing
        out.append(a)
    return out


def matches(attrs: dict, f: dict) -> bool:
    """The reference predicate for the filters used here (a subset of the language)."""
    for field, cond in f.items():
        if field == "$or":
            if not any(matches(attrs, g) for g in cond):
                return False
            continue
        if not isinstance(cond, dict):
            cond = {"$eq": cond}
        for op, v in cond.items():
            if op == "$exists":
                if (field in attrs) != v:
                    return False
                continue
            if field not in attrs:
                if op in ("$ne", "$nin"):
                    continue
                return False
            x = attrs[field]
            if isinstance(x, list):
                ok = {"$eq": lambda: v in x, "$in": lambda: bool(set(v) & set(x)), "$ne": lambda: v not in x,
                      "$nin": lambda: not set(v) & set(x), "$all": lambda: set(v) <= set(x)}[op]()
            else:
                ok = {"$eq": lambda: x == v, "$ne": lambda: x != v, "$gt": lambda: x > v, "$gte": lambda: x >= v,
                      "$lt": lambda: x < v, "$lte": lambda: x <= v, "$in": lambda: x in v,
                      "$nin": lambda: x not in v}[op]()
            if not ok:
                return False
    return True


FILTERS = [
    {"year": {"$gte": 2020}},
    {"lang": {"$in": ["en", "de"]}, "open": True},
    {"$or": [{"year": {"$lt": 2003}}, {"tags": "a"}]},
    {"tags": {"$exists": True}},
    {"year": {"$ne": 2001}},
    {"lang": "fr", "score": {"$gt": 0.5}},
    {"year": 1999},  # nothing
]


def exact_filtered(x: np.ndarray, ids: np.ndarray, allowed: np.ndarray, q: np.ndarray, k: int, metric: str):
    """float64 reference: (scores, ids) of the k best allowed rows, ties by the smaller id."""
    x, q = x[allowed].astype(np.float64), q.astype(np.float64)
    sub_ids = ids[allowed]
    if metric == "l2":
        s = -((q[:, None, :] - x[None, :, :]) ** 2).sum(-1)
    else:
        s = q @ x.T
    order = np.lexsort((np.broadcast_to(sub_ids, s.shape), -s), axis=1)[:, :k]
    return np.take_along_axis(s, order, 1), sub_ids[order]


def build(kind: str, x: np.ndarray, ids: np.ndarray, attrs, **kw):
    if kind.startswith("dense-"):
        index = flatcoat.DenseIndex(DIM, storage=kind[6:], **kw)
    elif kind.startswith("ivf-"):
        index = flatcoat.IVFIndex(DIM, storage=kind[4:], nlist=8, **kw)
    else:
        index = flatcoat.MultiVectorIndex(DIM)
        index.add([v[None, :] for v in x], ids=ids, attributes=attrs)  # one-token documents: MaxSim = dot
        return index
    index.add(x, ids=ids, attributes=attrs)
    return index


KINDS = ["dense-f32", "dense-f16", "dense-int8", "ivf-f32", "multivector"]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("as_columns", [False, True])
def test_filtered_search_is_the_exact_top_k_of_the_matches(kind, as_columns):
    n = 600
    x = clustered(n, DIM, seed=1)
    ids = np.arange(n, dtype=np.int64) * 3 + 1
    attrs = attributes_for(ids)
    given_attrs = attrs
    if as_columns:
        fields = sorted({f for a in attrs for f in a})
        given_attrs = {f: [a.get(f) for a in attrs] for f in fields}
    index = build(kind, x, ids, given_attrs)
    q = clustered(5, DIM, seed=2)
    kw = {"nprobe": 8} if kind.startswith("ivf") else {}  # every list: exact
    stored = index.get(ids)[0]
    if kind == "multivector":
        stored = np.stack([d[0] for d in stored])
    for f in FILTERS + [list(ids[::7]), [10**12, int(ids[3])], []]:
        if isinstance(f, dict):
            allowed = np.array([matches(a, f) for a in attrs])
        else:
            allowed = np.isin(ids, np.asarray(f, dtype=np.int64))
        queries = [row[None, :] for row in q] if kind == "multivector" else q  # one-token queries
        scores, found = index.search(queries, k=10, filter=f, **kw)
        k = min(10, len(index))
        assert found.shape == (5, k)
        ref_scores, ref_ids = exact_filtered(stored, ids, allowed, q, k, "ip")
        m = ref_ids.shape[1]
        assert (found[:, m:] == -1).all(), f"{kind} {f}: padding only past the {m} matches"
        np.testing.assert_allclose(scores[:, :m], ref_scores, rtol=1e-4, atol=1e-4)
        if m:
            # Same set (ties may swap at float32 precision); everything returned matches.
            assert np.isin(found[:, :m], ids[allowed]).all(), f"{kind} {f}: a non-matching id was returned"
            agree = np.mean([len(set(a) & set(b)) / m for a, b in zip(found[:, :m], ref_ids)])
            assert agree >= 0.99, f"{kind} {f}: {agree}"
        assert np.array_equal(np.sort(index.matches(f)), np.sort(ids[allowed]))


@pytest.mark.parametrize("storage", ["pq4", "f32"])
def test_ivf_filter_never_pads_while_matches_exist_and_keeps_recall(storage):
    n = 8000
    x = clustered(n, DIM, n_clusters=40, seed=3)
    ids = np.arange(n, dtype=np.int64)
    bucket = np.random.default_rng(4).integers(0, 1000, n)
    index = flatcoat.IVFIndex(DIM, storage=storage, nlist=64, keep_float=True)
    index.add(x, ids=ids, attributes={"bucket": bucket})
    q = clustered(50, DIM, n_clusters=40, seed=5)
    for limit in (500, 100, 10, 1):  # selectivity 50%, 10%, 1%, 0.1%
        allowed = bucket < limit
        _, ref = exact_filtered(x, ids, allowed, q, 10, "ip")
        _, found = index.search(q, k=10, nprobe=4, rerank=100, filter={"bucket": {"$lt": limit}})
        m = ref.shape[1]
        assert (found[:, :m] >= 0).all(), f"bucket < {limit}: padded while {allowed.sum()} matches exist"
        recall = np.mean([len(set(a) & set(b)) / m for a, b in zip(found[:, :m], ref)])
        assert recall >= 0.95, f"bucket < {limit}: recall@10 {recall:.3f} < 0.95"


@pytest.mark.parametrize("kind", ["dense-f32", "dense-int8", "dense-binary", "ivf-pq4", "ivf-int8", "multivector"])
def test_get_returns_the_stored_vectors_and_attributes(kind):
    n = 400
    x = clustered(n, DIM, seed=6)
    ids = np.arange(n, dtype=np.int64) + 100
    index = build(kind, x, ids, attributes_for(ids), **({"keep_float": False} if kind.startswith("ivf") else {}))
    pick = ids[[5, 0, 399, 17]]
    vectors, attrs = index.get(pick)
    assert attrs == attributes_for(pick)
    if kind == "multivector":
        vectors = np.stack([d[0] for d in vectors])
    want = x[pick - 100]
    if kind == "dense-binary":
        np.testing.assert_array_equal(vectors, np.where(want > 0, 1.0, -1.0))
    else:
        tol = {"dense-f32": 1e-6, "multivector": 1e-6, "dense-int8": 0.02, "ivf-int8": 0.02, "ivf-pq4": 0.6}[kind]
        err = np.abs(vectors - want).max(axis=1) / np.abs(want).max(axis=1)
        assert (err <= tol).all(), f"{kind}: decoded vectors off by {err.max():.3f}"
        if kind == "ivf-pq4":  # quantized: the decode must still point the same way
            cos = (vectors * want).sum(1) / np.linalg.norm(vectors, axis=1) / np.linalg.norm(want, axis=1)
            assert (cos > 0.9).all()
    assert index.get(pick, vectors=False) == (None, attrs)
    with pytest.raises(KeyError, match="ids: 1 id"):
        index.get([100, 5])


@pytest.mark.parametrize("kind", KINDS)
def test_upsert_replaces_vector_and_attributes(kind):
    n = 300
    x = clustered(n, DIM, seed=7)
    ids = np.arange(n, dtype=np.int64)
    index = build(kind, x, ids, attributes_for(ids))
    new = clustered(3, DIM, seed=8)
    target = np.array([4, 299, 1000], dtype=np.int64)  # two replaced, one new
    attrs = [{"year": 1990}, {"lang": "xx"}, {"year": 1991, "lang": "en"}]
    if kind == "multivector":
        index.upsert([v[None, :] for v in new], ids=target, attributes=attrs)
    else:
        index.upsert(new, ids=target, attributes=attrs)
    assert len(index) == n + 1
    got, got_attrs = index.get(target)
    if kind == "multivector":
        got = np.stack([d[0] for d in got])
    np.testing.assert_allclose(got, new, atol=0.02)
    assert got_attrs == attrs  # replaced, not merged
    assert sorted(index.matches({"year": {"$lt": 2000}}).tolist()) == [4, 1000]
    kw = {"nprobe": 8} if kind.startswith("ivf") else {}
    _, found = index.search(new[:1], k=1, filter={"year": 1990}, **kw)
    assert found.tolist() == [[4]]
    with pytest.raises(ValueError, match="ids: id 4 is repeated"):
        index.upsert(np.zeros((2, DIM), np.float32) if kind != "multivector" else [np.ones((1, DIM), np.float32)] * 2,
                     ids=[4, 4])
    with pytest.raises(TypeError, match="year"):  # a type conflict changes nothing
        index.upsert(new[:1] if kind != "multivector" else [new[:1]], ids=[5], attributes=[{"year": "old"}])
    assert index.get([5])[1] == attributes_for(np.array([5]))


@pytest.mark.parametrize("kind", KINDS)
def test_attributes_survive_save_and_mmap_load_then_change(kind, tmp_path):
    n = 500
    x = clustered(n, DIM, seed=9)
    ids = np.arange(n, dtype=np.int64) * 2
    index = build(kind, x, ids, attributes_for(ids))
    index.remove(ids[10:20])
    index.save(tmp_path / "i")
    loaded = flatcoat.load(tmp_path / "i", mmap=True)
    q = clustered(3, DIM, seed=10)
    kw = {"nprobe": 8} if kind.startswith("ivf") else {}
    for f in FILTERS:
        a, b = index.search(q, k=7, filter=f, **kw), loaded.search(q, k=7, filter=f, **kw)
        np.testing.assert_array_equal(a[1], b[1])
    assert loaded.schema == index.schema
    # Changes after a mapped load copy the mapped columns first.
    extra = clustered(2, DIM, seed=11)
    docs = [v[None, :] for v in extra] if kind == "multivector" else extra
    loaded.add(docs, ids=[5001, 5003], attributes=[{"year": 3000}, {"lang": "zz"}])
    loaded.remove([0])
    assert sorted(loaded.matches({"year": {"$gte": 3000}}).tolist()) == [5001]
    assert loaded.get([2, 5003])[1] == attributes_for(np.array([2])) + [{"lang": "zz"}]


def test_filter_argument_errors():
    index = flatcoat.DenseIndex(DIM)
    index.add(clustered(50, DIM, seed=12), attributes=[{"year": 2000 + i} for i in range(50)])
    q = clustered(1, DIM, seed=13)
    with pytest.raises(TypeError, match="filter: expected a dict predicate"):
        index.search(q, filter="year > 3")
    with pytest.raises(TypeError, match="filter: an id allow-list holds integer ids"):
        index.search(q, filter=[1.5, 2.0])
    with pytest.raises(ValueError, match="filter.*yeer"):
        index.search(q, filter={"yeer": 2001})
    with pytest.raises(TypeError, match="year.*\\$gte"):
        index.search(q, filter={"year": {"$gte": "x"}})
    with pytest.raises(ValueError, match="\\$bogus"):
        index.search(q, filter={"year": {"$bogus": 1}})
    with pytest.raises(TypeError, match="attributes"):
        index.add(clustered(1, DIM, seed=14), attributes=[{"year": "two thousand"}])
    assert len(index) == 50  # the refused add added nothing


def test_concurrent_filtered_searches_and_upserts_stay_consistent():
    """Searches run while upserts move rows: every result matches its filter at some moment (each id's
    'gen' attribute only grows, and a row's attributes are read under the same lock as its vector)."""
    n = 2000
    x = clustered(n, DIM, seed=15)
    index = flatcoat.DenseIndex(DIM)
    index.add(x, attributes={"even": (np.arange(n) % 2 == 0).tolist()})
    q = clustered(8, DIM, seed=16)
    errors = []
    stop = threading.Event()

    def searcher():
        while not stop.is_set():
            _, found = index.search(q, k=20, filter={"even": True})
            ok = found[found >= 0]
            if (ok % 2).any():
                errors.append(ok[ok % 2 == 1][:3])

    threads = [threading.Thread(target=searcher) for _ in range(2)]
    for t in threads:
        t.start()
    rng = np.random.default_rng(17)
    for _ in range(40):
        pick = rng.choice(n, 20, replace=False)
        index.upsert(rng.standard_normal((20, DIM)).astype(np.float32), ids=pick,
                     attributes={"even": (pick % 2 == 0).tolist()})
        index.remove(pick[:5])
        index.add(x[pick[:5]], ids=pick[:5], attributes={"even": (pick[:5] % 2 == 0).tolist()})
    stop.set()
    for t in threads:
        t.join()
    assert not errors, f"odd ids returned for even=True: {errors[:3]}"
    assert len(index) == n


class IndexModel(RuleBasedStateMachine):
    """add / upsert / remove / search / get on an index and on a dict model; the exact indexes must agree."""

    KIND = "dense-f32"

    def __init__(self):
        super().__init__()
        self.model = {}  # id -> (vector, attributes)
        self.index = None
        self.rng = np.random.default_rng(0)

    def _vectors(self, n):
        return self.rng.standard_normal((n, DIM)).astype(np.float32)

    def _docs(self, v):
        return [r[None, :] for r in v] if self.KIND == "multivector" else v

    def _make(self):
        if self.KIND == "multivector":
            return flatcoat.MultiVectorIndex(DIM)
        if self.KIND == "ivf-f32":
            index = flatcoat.IVFIndex(DIM, storage="f32", nlist=4)
            index.train(self._vectors(300))
            return index
        return flatcoat.DenseIndex(DIM, storage="f32")

    @rule(ids=st.lists(st.integers(0, 40), min_size=1, max_size=6, unique=True),
          years=st.lists(st.one_of(st.none(), st.integers(1990, 2030)), min_size=6, max_size=6),
          replace=st.booleans())
    def write(self, ids, years, replace):
        if self.index is None:
            self.index = self._make()
        v = self._vectors(len(ids))
        attrs = [{} if y is None else {"year": y} for y in years[: len(ids)]]
        present = [i for i in ids if i in self.model]
        if replace:
            self.index.upsert(self._docs(v), ids=ids, attributes=attrs)
        elif present:
            with pytest.raises(ValueError, match="already in the index"):
                self.index.add(self._docs(v), ids=ids, attributes=attrs)
            return
        else:
            self.index.add(self._docs(v), ids=ids, attributes=attrs)
        for i, row, a in zip(ids, v, attrs):
            self.model[i] = (row, a)

    @precondition(lambda self: self.model)
    @rule(data=st.data())
    def remove(self, data):
        ids = data.draw(st.lists(st.sampled_from(sorted(self.model)), min_size=1, max_size=3, unique=True))
        assert self.index.remove(ids) == len(ids)
        for i in ids:
            del self.model[i]

    @precondition(lambda self: self.index is not None)
    @rule(limit=st.integers(1990, 2031), k=st.integers(1, 8))
    def search(self, limit, k):
        q = self._vectors(2)
        f = {"year": {"$lt": limit}}
        kw = {"nprobe": 4} if self.KIND == "ivf-f32" else {}
        if "year" not in self.index.schema:  # a field no row ever had: a typo, refused
            with pytest.raises(ValueError, match="unknown field 'year'"):
                self.index.search(q, k=k, filter=f, **kw)
            return
        scores, found = self.index.search(self._docs(q)[0] if self.KIND == "multivector" else q, k=k, filter=f, **kw)
        allowed = [i for i, (_, a) in self.model.items() if "year" in a and a["year"] < limit]
        qq = q[:1] if self.KIND == "multivector" else q
        for row in range(qq.shape[0]):
            ref = sorted(allowed, key=lambda i: (-float(self.model[i][0] @ qq[row]), i))[:k]
            got = [int(i) for i in found[row] if i >= 0]
            assert len(got) == len(ref)
            ref_scores = [float(self.model[i][0] @ qq[row]) for i in ref]
            np.testing.assert_allclose(scores[row, : len(got)], ref_scores, rtol=1e-4, atol=1e-4)

    @invariant()
    def same_content(self):
        if self.index is None:
            return
        assert len(self.index) == len(self.model)
        if self.model:
            ids = sorted(self.model)
            vectors, attrs = self.index.get(ids)
            if self.KIND == "multivector":
                vectors = np.stack([d[0] for d in vectors])
            np.testing.assert_allclose(vectors, np.stack([self.model[i][0] for i in ids]), rtol=1e-6)
            assert attrs == [self.model[i][1] for i in ids]


_STATEFUL = settings(max_examples=25, stateful_step_count=15, deadline=None,
                     suppress_health_check=[HealthCheck.too_slow])


class DenseModel(IndexModel):
    KIND = "dense-f32"


class IVFModel(IndexModel):
    KIND = "ivf-f32"


class MultiVectorModel(IndexModel):
    KIND = "multivector"


TestDenseAgainstModel = DenseModel.TestCase
TestIVFAgainstModel = IVFModel.TestCase
TestMultiVectorAgainstModel = MultiVectorModel.TestCase
for _case in (TestDenseAgainstModel, TestIVFAgainstModel, TestMultiVectorAgainstModel):
    _case.settings = _STATEFUL
