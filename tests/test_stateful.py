"""hypothesis stateful tests: add/remove/search/save/load sequences against pure-Python models.

DenseIndex in every storage (f32 and f16 compared exactly; int8 and binary
through a full-depth exact re-ranking of their float copy) and MultiVectorIndex
(f32, against a numpy MaxSim model). Values are drawn on a coarse grid
(multiples of 1/4 in [-2, 2]) so every float32 sum is exact whatever the
summation order: the model's ranking (score, then smaller id) and its scores
are the only correct answers. ``save`` snapshots the model; ``load`` (with or
without mmap) brings the index back to the last save, and the sequence then
goes on mutating the loaded index (which copies its memory maps on the first
change) and saving it over the directory it was mapped from.

``FLATCOAT_STATEFUL_EXAMPLES`` sets the number of sequences per machine (default 15).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

import flatcoat

EXAMPLES = int(os.environ.get("FLATCOAT_STATEFUL_EXAMPLES", "15"))
STATEFUL = settings(
    max_examples=EXAMPLES, stateful_step_count=25, derandomize=True, deadline=None, database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
)
grid = st.integers(-8, 8).map(lambda v: v / 4.0)


class _Persisting(RuleBasedStateMachine):
    """Shared save/load rules: the model is a dict and a next id, snapshotted on save."""

    def __init__(self):
        super().__init__()
        self.tmp = Path(tempfile.mkdtemp(prefix="flatcoat-stateful-"))
        self.saved = None  # (model copy, next_id) at the last save

    def teardown(self):
        shutil.rmtree(self.tmp, ignore_errors=True)

    @property
    def path(self) -> Path:
        return self.tmp / "idx"

    @precondition(lambda self: hasattr(self, "index"))
    @rule()
    def save(self):
        self.index.save(self.path)
        self.saved = (dict(self.model), self.next_id)
        # Only the index is left: no staging or old directories.
        assert sorted(p.name for p in self.tmp.iterdir()) == ["idx"]

    @precondition(lambda self: self.saved is not None)
    @rule(mmap=st.booleans(), verify=st.booleans())
    def load(self, mmap, verify):
        self.index = flatcoat.load(self.path, mmap=mmap, verify=verify)
        assert isinstance(self.index, self.index_type)
        self.model, self.next_id = dict(self.saved[0]), self.saved[1]
        self.check_parameters()

    def _new_ids(self, n: int, explicit: bool, gap: int) -> np.ndarray:
        if explicit:
            return np.arange(n, dtype=np.int64) * (gap + 1) + self.next_id + gap
        return np.arange(self.next_id, self.next_id + n, dtype=np.int64)

    def _added(self, ids: np.ndarray, items) -> None:
        for i, item in zip(ids.tolist(), items):
            self.model[i] = item
        self.next_id = max(self.next_id, int(ids.max()) + 1)

    @precondition(lambda self: hasattr(self, "index") and self.model)
    @rule(data=st.data())
    def remove(self, data):
        victims = data.draw(st.lists(st.sampled_from(sorted(self.model)), min_size=1, max_size=5, unique=True))
        assert self.index.remove(victims) == len(victims)
        for v in victims:
            del self.model[v]
        assert victims[0] not in self.index

    @precondition(lambda self: hasattr(self, "index"))
    @rule(unknown=st.integers(0, 10**6))
    def remove_unknown_changes_nothing(self, unknown):
        if unknown in self.model:
            return
        victims = sorted(self.model)[:1] + [unknown]
        try:
            self.index.remove(victims)
        except KeyError:
            pass
        else:
            raise AssertionError("remove of an unknown id must raise KeyError")

    @invariant()
    def same_contents(self):
        if hasattr(self, "index"):
            assert len(self.index) == len(self.model)
            assert sorted(self.index.ids.tolist()) == sorted(self.model)

    @staticmethod
    def ranked(scores: dict, k: int, smaller_is_better: bool):
        order = sorted(scores, key=lambda i: ((scores[i] if smaller_is_better else -scores[i]), i))[:k]
        return order, [scores[i] for i in order]


# ----------------------------------------------------------------------------- DenseIndex


class DenseMachine(_Persisting):
    dim = 5
    index_type = flatcoat.DenseIndex
    storage = "f32"

    @initialize(metric=st.sampled_from(["ip", "l2"]))
    def start(self, metric):
        storage = self.storage
        self.metric = metric
        # int8 and binary keep a float copy and are searched with a full-depth re-ranking.
        self.exact = storage in ("f32", "f16")
        self.index = flatcoat.DenseIndex(self.dim, metric=metric, storage=storage, keep_float=not self.exact)
        self.model, self.next_id = {}, 0

    def check_parameters(self):
        assert (self.index.storage, self.index.metric, self.index.dim) == (self.storage, self.metric, self.dim)

    @rule(rows=hnp.arrays(np.float32, st.tuples(st.integers(1, 6), st.just(5)), elements=grid),
          explicit=st.booleans(), gap=st.integers(0, 3))
    def add(self, rows, explicit, gap):
        ids = self._new_ids(len(rows), explicit, gap)
        got = self.index.add(rows, ids=ids if explicit else None)
        assert got.tolist() == ids.tolist()
        self._added(ids, [tuple(float(v) for v in row) for row in rows])

    @precondition(lambda self: hasattr(self, "index") and self.model)
    @rule(data=st.data())
    def add_existing_id_fails_atomically(self, data):
        existing = data.draw(st.sampled_from(sorted(self.model)))
        rows = np.zeros((2, self.dim), dtype=np.float32)
        try:
            self.index.add(rows, ids=[self.next_id + 50, existing])
        except ValueError:
            pass
        else:
            raise AssertionError("adding an existing id must fail")

    @rule(q=hnp.arrays(np.float32, st.tuples(st.integers(1, 3), st.just(5)), elements=grid), k=st.integers(1, 9))
    def search(self, q, k):
        if not hasattr(self, "index"):
            return
        rerank = None if self.exact else max(k, len(self.model))
        scores, ids = self.index.search(q, k=k, rerank=rerank)
        assert scores.shape == ids.shape == (len(q), min(k, len(self.model)))
        for row in range(len(q)):
            query = [float(v) for v in q[row]]
            if self.metric == "ip":
                model_scores = {i: sum(a * b for a, b in zip(query, x)) for i, x in self.model.items()}
            else:
                model_scores = {i: sum((a - b) ** 2 for a, b in zip(query, x)) for i, x in self.model.items()}
            order, expected = self.ranked(model_scores, k, smaller_is_better=self.metric == "l2")
            assert ids[row, : len(order)].tolist() == order
            assert scores[row, : len(order)].tolist() == expected
            assert (ids[row, len(order) :] == -1).all()


# ----------------------------------------------------------------------------- MultiVectorIndex


def _maxsim_model(query: np.ndarray, doc: np.ndarray) -> float:
    return float((query.astype(np.float64) @ doc.astype(np.float64).T).max(axis=1).sum())


class MultiVectorMachine(_Persisting):
    dim = 4
    index_type = flatcoat.MultiVectorIndex

    @initialize()
    def start(self):
        self.index = flatcoat.MultiVectorIndex(self.dim, storage="f32")
        self.model, self.next_id = {}, 0

    def check_parameters(self):
        assert (self.index.storage, self.index.dim) == ("f32", self.dim)

    @rule(data=st.data(), n=st.integers(1, 4), explicit=st.booleans(), gap=st.integers(0, 3), packed=st.booleans())
    def add(self, data, n, explicit, gap, packed):
        docs = [data.draw(hnp.arrays(np.float32, (data.draw(st.integers(1, 5)), self.dim), elements=grid)) for _ in range(n)]
        ids = self._new_ids(n, explicit, gap)
        arg = (np.concatenate(docs), [len(d) for d in docs]) if packed else docs
        got = self.index.add(arg, ids=ids if explicit else None)
        assert got.tolist() == ids.tolist()
        self._added(ids, docs)

    @rule(data=st.data(), nq=st.integers(1, 3), k=st.integers(1, 7))
    def search(self, data, nq, k):
        if not hasattr(self, "index"):
            return
        queries = [data.draw(hnp.arrays(np.float32, (data.draw(st.integers(1, 4)), self.dim), elements=grid)) for _ in range(nq)]
        scores, ids = self.index.search(queries, k=k)
        assert scores.shape == ids.shape == (nq, min(k, len(self.model)))
        for row, query in enumerate(queries):
            model_scores = {i: _maxsim_model(query, doc) for i, doc in self.model.items()}
            order, expected = self.ranked(model_scores, k, smaller_is_better=False)
            assert ids[row, : len(order)].tolist() == order
            assert scores[row, : len(order)].tolist() == expected
            assert (ids[row, len(order) :] == -1).all()

    @precondition(lambda self: hasattr(self, "index") and self.model)
    @rule(data=st.data(), k=st.integers(1, 4))
    def search_subset(self, data, k):
        query = data.draw(hnp.arrays(np.float32, (2, self.dim), elements=grid))
        subset = data.draw(st.lists(st.sampled_from(sorted(self.model)), min_size=1, max_size=6))
        scores, ids = self.index.search(query, k=k, subset=np.array(subset + [-1]))
        assert scores.shape == ids.shape == (1, min(k, len(self.model)))
        model_scores = {i: _maxsim_model(query, self.model[i]) for i in set(subset)}
        order, expected = self.ranked(model_scores, k, smaller_is_better=False)
        assert ids[0, : len(order)].tolist() == order
        assert scores[0, : len(order)].tolist() == expected
        assert (ids[0, len(order) :] == -1).all() and np.isneginf(scores[0, len(order) :]).all()


def _dense_machine(storage: str):
    machine = type(f"Dense{storage.upper()}Machine", (DenseMachine,), {"storage": storage})
    case = machine.TestCase
    case.settings = STATEFUL
    return case


TestDenseF32 = _dense_machine("f32")
TestDenseF16 = _dense_machine("f16")
TestDenseBinary = _dense_machine("binary")
TestDenseInt8 = _dense_machine("int8")
TestMultiVectorMachine = MultiVectorMachine.TestCase
TestMultiVectorMachine.settings = STATEFUL
