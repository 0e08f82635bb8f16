"""hypothesis properties: search equals the reference, and add/remove/search
sequences behave like a pure-Python model."""

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

import flatcoat
from conftest import reference_scores

# Values on a coarse grid keep float32 sums exact, so the reference ranking
# (float64, ties by smaller id) is the only correct answer.
grid = st.integers(-8, 8).map(lambda v: v / 4.0)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    data=st.data(),
    dim=st.integers(1, 20),
    n=st.integers(0, 40),
    nq=st.integers(1, 6),
    k=st.integers(1, 12),
    metric=st.sampled_from(["ip", "l2"]),
    storage=st.sampled_from(["f32", "f16"]),
)
def test_search_equals_reference(data, dim, n, nq, k, metric, storage):
    x = data.draw(hnp.arrays(np.float32, (n, dim), elements=grid))
    q = data.draw(hnp.arrays(np.float32, (nq, dim), elements=grid))
    ids = np.array(data.draw(st.lists(st.integers(0, 10**6), min_size=n, max_size=n, unique=True)), dtype=np.int64)
    index = flatcoat.DenseIndex(dim, metric=metric, storage=storage)
    index.add(x, ids=ids)
    scores, found = index.search(q, k=k)
    assert scores.shape == found.shape == (nq, min(k, n))
    ref = reference_scores(x, q, metric) if n else np.zeros((nq, 0))
    for row in range(nq):
        order = sorted(range(n), key=lambda j: (-ref[row, j], ids[j]))[:k]
        assert found[row, : len(order)].tolist() == [int(ids[j]) for j in order]
        assert (found[row, len(order) :] == -1).all()
        expected = [(-ref[row, j] if metric == "l2" else ref[row, j]) for j in order]
        np.testing.assert_allclose(scores[row, : len(order)], expected, rtol=0, atol=1e-6)


class DenseModel(RuleBasedStateMachine):
    """The index against a dict {id: vector} searched by brute force."""

    dim = 3

    @initialize(storage=st.sampled_from(["f32", "f16", "binary"]), metric=st.sampled_from(["ip", "l2"]))
    def start(self, storage, metric):
        self.storage, self.metric = storage, metric
        self.index = flatcoat.DenseIndex(self.dim, metric=metric, storage=storage, keep_float=True)
        self.model = {}
        self.next_id = 0

    @rule(rows=hnp.arrays(np.float32, st.tuples(st.integers(1, 5), st.just(3)), elements=grid), explicit=st.booleans())
    def add(self, rows, explicit):
        if explicit:
            ids = np.arange(len(rows)) * 7 + 1000 + self.next_id
        else:
            ids = np.arange(self.next_id, self.next_id + len(rows))
        got = self.index.add(rows, ids=ids if explicit else None)
        assert got.tolist() == ids.tolist()
        for i, row in zip(ids.tolist(), rows):
            self.model[i] = row
        self.next_id = max(self.model, default=-1) + 1 if self.model else self.next_id
        self.next_id = max(self.next_id, int(ids.max()) + 1)

    @precondition(lambda self: self.model)
    @rule(data=st.data())
    def remove(self, data):
        victims = data.draw(st.lists(st.sampled_from(sorted(self.model)), min_size=1, max_size=4, unique=True))
        assert self.index.remove(victims) == len(victims)
        for v in victims:
            del self.model[v]

    @rule(q=hnp.arrays(np.float32, (3,), elements=grid), k=st.integers(1, 8))
    def search(self, q, k):
        ids = np.array(sorted(self.model), dtype=np.int64)
        if self.storage == "binary":
            scores, found = self.index.search(q, k=k, rerank=max(k, len(ids)) if len(ids) else k)
        else:
            scores, found = self.index.search(q, k=k)
        assert found.shape == (1, min(k, len(ids)))
        if len(ids) == 0:
            return
        x = np.stack([self.model[i] for i in ids])
        ref = reference_scores(x, q[None], self.metric)[0]
        order = sorted(range(len(ids)), key=lambda j: (-ref[j], ids[j]))[:k]
        assert found[0, : len(order)].tolist() == ids[order].tolist()

    @invariant()
    def same_size(self):
        if hasattr(self, "index"):
            assert len(self.index) == len(self.model)
            assert sorted(self.index.ids.tolist()) == sorted(self.model)


TestDenseModel = DenseModel.TestCase
TestDenseModel.settings = settings(max_examples=60, stateful_step_count=25, deadline=None)
